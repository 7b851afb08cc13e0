//! The HTTP relay, for endpoints whose network blocks UDP and lets only HTTPS reach their
//! provider. It is served on the endpoint API (mutual TLS):
//!
//! * `GET /v1/media-relay` (WebSocket): one binary message is one frame; the server sends
//!   ALLOCATED first, then DATA frames; closing the WebSocket frees the allocation.
//! * `POST /v1/media-relay` (long-poll): creates an allocation, answers `{id, address}`;
//!   `POST /v1/media-relay/{id}/send`, `GET /v1/media-relay/{id}/recv?wait=MS` and
//!   `DELETE /v1/media-relay/{id}` carry frames each prefixed by its length (`u16` big-endian).
//!
//! An allocation is a UDP socket bound on the relay's IP (as the TURN relay binds its relayed
//! sockets: on the IP of `relay.listen`, announced with `relay.relay_address`); peers are
//! filtered by the TURN relay's [`PeerPolicy`]. Frames are encoded and decoded by
//! [`switchyard_protocol::relay_frame`], as on the endpoint's side.
//!
//! Like the TURN relay, it carries media the endpoints encrypted end to end.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde::Deserialize;
use switchyard_protocol::dict::Dict;
use switchyard_protocol::relay_frame::{
    append_length_prefixed, split_length_prefixed, Datagram, Frame, FrameError, MAX_RECV_WAIT_MS,
};
use tokio::net::UdpSocket;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The WebSocket client the tests and tools use to reach `GET /v1/media-relay`.
pub use ::tokio_tungstenite;

use super::policy::PeerPolicy;
use crate::app::App;
use crate::auth::AuthEndpoint;
use crate::config::Config;
use crate::wire::{encoding_of, ApiError, Reply};

/// Frames queued per long-poll allocation; the oldest is dropped beyond this.
pub const QUEUE_LIMIT: usize = 1024;
/// A long-poll allocation neither polled nor sent on for this long is freed.
pub const IDLE: Duration = Duration::from_secs(30);
/// The largest UDP datagram.
const DATAGRAM: usize = 65_535;

/// The datagrams of a long-poll send body, or why it is malformed: one bad frame refuses all.
fn datagrams_of(body: &[u8]) -> Result<Vec<Datagram<'_>>, FrameError> {
    split_length_prefixed(body)
        .map(|frame| frame.and_then(Datagram::decode))
        .collect()
}

/// The HTTP relay's state: per-endpoint allocation counts and the long-poll allocations.
pub struct HttpRelay {
    bind_ip: IpAddr,
    public_ip: IpAddr,
    policy: PeerPolicy,
    per_endpoint: u32,
    counts: Mutex<HashMap<String, u32>>,
    polled: Mutex<HashMap<String, Arc<PolledAllocation>>>,
}

impl HttpRelay {
    pub fn new(config: &Config) -> Arc<HttpRelay> {
        metrics::gauge!("switchyard_http_relay_allocations").set(0.0);
        Arc::new(HttpRelay {
            bind_ip: config.relay.listen.ip(),
            public_ip: config.relay_public_ip(),
            policy: PeerPolicy {
                allow_loopback: config.relay.allow_loopback_peers,
                allow_private: config.relay.allow_private_peers,
            },
            per_endpoint: config.relay.max_allocations_per_endpoint,
            counts: Mutex::new(HashMap::new()),
            polled: Mutex::new(HashMap::new()),
        })
    }

    /// Binds a new allocation for `endpoint`, within its quota.
    async fn allocate(self: &Arc<Self>, endpoint: &str) -> Result<Allocation, ApiError> {
        {
            let mut counts = self.counts.lock().expect("http relay counts");
            let count = counts.entry(endpoint.to_string()).or_insert(0);
            if *count >= self.per_endpoint {
                metrics::counter!("switchyard_http_relay_refused_allocations_total").increment(1);
                return Err(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "quota-exceeded",
                    format!(
                        "this endpoint already holds {} HTTP relay allocations",
                        self.per_endpoint
                    ),
                ));
            }
            *count += 1;
        }
        metrics::gauge!("switchyard_http_relay_allocations").increment(1.0);
        let slot = Slot {
            relay: self.clone(),
            endpoint: endpoint.to_string(),
        };
        let socket = UdpSocket::bind(SocketAddr::new(self.bind_ip, 0))
            .await
            .map_err(ApiError::internal)?;
        let mut public = socket.local_addr().map_err(ApiError::internal)?;
        public.set_ip(self.public_ip);
        tracing::debug!(%endpoint, %public, "http relay allocation");
        Ok(Allocation {
            socket,
            public,
            policy: self.policy,
            _slot: slot,
        })
    }

    fn polled(&self, id: &str, endpoint: &str) -> Result<Arc<PolledAllocation>, ApiError> {
        self.polled
            .lock()
            .expect("http relay allocations")
            .get(id)
            .filter(|a| a.endpoint == endpoint)
            .cloned()
            .ok_or_else(unknown_allocation)
    }

    fn forget(&self, id: &str) -> Option<Arc<PolledAllocation>> {
        self.polled
            .lock()
            .expect("http relay allocations")
            .remove(id)
    }
}

/// One allocation's hold on its endpoint's quota, released when the allocation ends.
struct Slot {
    relay: Arc<HttpRelay>,
    endpoint: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.relay.counts.lock().expect("http relay counts");
        if let Some(count) = counts.get_mut(&self.endpoint) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.endpoint);
            }
        }
        metrics::gauge!("switchyard_http_relay_allocations").decrement(1.0);
    }
}

/// A bound UDP socket relaying for one endpoint.
struct Allocation {
    socket: UdpSocket,
    public: SocketAddr,
    policy: PeerPolicy,
    _slot: Slot,
}

fn refused(direction: &'static str) {
    metrics::counter!("switchyard_http_relay_peer_refused_total", "direction" => direction)
        .increment(1);
}

impl Allocation {
    /// Sends `payload` to `peer` if the policy allows it; a refused peer is dropped silently.
    async fn send_to(&self, peer: SocketAddr, payload: &[u8]) {
        if !self.policy.permits(peer.ip()) {
            refused("to-peer");
            return;
        }
        let target = match (peer.ip(), self.socket.local_addr()) {
            (IpAddr::V4(v4), Ok(SocketAddr::V6(_))) => {
                SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), peer.port())
            }
            _ => peer,
        };
        match self.socket.send_to(payload, target).await {
            Ok(n) => {
                metrics::counter!("switchyard_http_relay_bytes_total", "direction" => "to-peer")
                    .increment(n as u64)
            }
            Err(e) => tracing::debug!(%peer, error = %e, "http relay: sending to a peer failed"),
        }
    }

    /// The next datagram from a permitted peer, as a DATA frame.
    async fn recv_frame(&self, buf: &mut [u8]) -> std::io::Result<Vec<u8>> {
        loop {
            let (n, from) = self.socket.recv_from(buf).await?;
            if !self.policy.permits(from.ip()) {
                refused("from-peer");
                continue;
            }
            metrics::counter!("switchyard_http_relay_bytes_total", "direction" => "from-peer")
                .increment(n as u64);
            let datagram = Datagram::new(from, &buf[..n]).map_err(std::io::Error::other)?;
            return Ok(datagram.encode());
        }
    }
}

/// A long-poll allocation: the frames waiting for the endpoint's next `recv`.
struct PolledAllocation {
    endpoint: String,
    allocation: Allocation,
    /// Each frame already prefixed by its length, as `recv` answers them.
    queue: Mutex<VecDeque<Vec<u8>>>,
    arrived: Notify,
    last_used: Mutex<Instant>,
    stop: CancellationToken,
}

impl PolledAllocation {
    fn touch(&self) {
        *self.last_used.lock().expect("http relay last use") = Instant::now();
    }

    fn drain(&self) -> Vec<Vec<u8>> {
        self.queue
            .lock()
            .expect("http relay queue")
            .drain(..)
            .collect()
    }
}

/// Reads the allocation's socket into its queue until it is deleted, left idle, or the provider
/// stops.
async fn pump(relay: Arc<HttpRelay>, id: String, alloc: Arc<PolledAllocation>, app: Arc<App>) {
    let mut shutdown = app.shutdown.clone();
    let mut buf = vec![0u8; DATAGRAM];
    let mut idle_check = tokio::time::interval(Duration::from_secs(1));
    idle_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            frame = alloc.allocation.recv_frame(&mut buf) => match frame {
                Ok(frame) => {
                    let mut prefixed = Vec::with_capacity(2 + frame.len());
                    if let Err(e) = append_length_prefixed(&mut prefixed, &frame) {
                        // Only an IPv6 datagram of nearly 64 KiB makes a frame too long to prefix.
                        tracing::debug!(error = %e, "http relay: datagram too long to poll");
                        metrics::counter!("switchyard_http_relay_frames_dropped_total")
                            .increment(1);
                        continue;
                    }
                    let mut queue = alloc.queue.lock().expect("http relay queue");
                    if queue.len() >= QUEUE_LIMIT {
                        queue.pop_front();
                        metrics::counter!("switchyard_http_relay_frames_dropped_total").increment(1);
                    }
                    queue.push_back(prefixed);
                    drop(queue);
                    alloc.arrived.notify_waiters();
                }
                Err(e) => tracing::debug!(error = %e, "http relay: receiving failed"),
            },
            _ = idle_check.tick() => {
                let last = *alloc.last_used.lock().expect("http relay last use");
                if last.elapsed() >= IDLE {
                    tracing::debug!(endpoint = %alloc.endpoint, "http relay: idle allocation freed");
                    break;
                }
            }
            _ = alloc.stop.cancelled() => break,
            _ = crate::shared::shutting_down(&mut shutdown) => break,
        }
    }
    alloc.stop.cancel();
    relay.forget(&id);
}

fn unknown_allocation() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not-found",
        "no such HTTP relay allocation",
    )
}

fn malformed(e: FrameError) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "malformed-frame",
        format!("a frame is malformed: {e}"),
    )
}

fn observe(action: &'static str, result: &Result<(), ApiError>) {
    let outcome = match result {
        Ok(()) => "ok",
        Err(e) => e.code,
    };
    metrics::counter!("switchyard_requests_total", "action" => action, "outcome" => outcome)
        .increment(1);
}

fn fail(headers: &HeaderMap, action: &'static str, e: ApiError) -> Response {
    observe(action, &Err(e.clone()));
    Reply {
        encoding: encoding_of(headers),
        result: Err(e),
    }
    .into_response()
}

type RelayExt = Option<Extension<Arc<HttpRelay>>>;

/// The relay, or the `relay-disabled` refusal.
fn relay_in(relay: RelayExt) -> Result<Arc<HttpRelay>, ApiError> {
    relay
        .map(|Extension(relay)| relay)
        .ok_or_else(super::relay_disabled)
}

/// A new allocation for `endpoint`, and the relay holding it.
async fn allocation_in(
    relay: RelayExt,
    endpoint: &str,
) -> Result<(Arc<HttpRelay>, Allocation), ApiError> {
    let relay = relay_in(relay)?;
    let allocation = relay.allocate(endpoint).await?;
    Ok((relay, allocation))
}

/// The long-poll allocation `id` of `endpoint`.
fn polled_in(relay: RelayExt, id: &str, endpoint: &str) -> Result<Arc<PolledAllocation>, ApiError> {
    relay_in(relay)?.polled(id, endpoint)
}

/// `GET /v1/media-relay`: a WebSocket carrying one allocation.
pub async fn websocket_route(
    State(app): State<Arc<App>>,
    relay: RelayExt,
    auth: AuthEndpoint,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let (_, allocation) = match allocation_in(relay, &auth.endpoint.id).await {
        Ok(allocated) => allocated,
        Err(e) => return fail(&headers, "media-relay", e),
    };
    observe("media-relay", &Ok(()));
    let endpoint_id = auth.endpoint.id.clone();
    upgrade
        .max_message_size(DATAGRAM + 32)
        .on_upgrade(move |socket| async move {
            if let Err(reason) = serve_websocket(&app, &endpoint_id, allocation, socket).await {
                tracing::debug!(endpoint = %endpoint_id, %reason, "http relay websocket closed");
            }
        })
}

async fn close(socket: &mut WebSocket, code: u16, reason: &str) {
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        })))
        .await;
}

async fn serve_websocket(
    app: &Arc<App>,
    endpoint_id: &str,
    allocation: Allocation,
    mut socket: WebSocket,
) -> Result<(), String> {
    let mut shutdown = app.shutdown.clone();
    let mut recheck =
        tokio::time::interval(Duration::from_millis(app.config.push.recheck_interval_ms));
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = vec![0u8; DATAGRAM];
    if socket
        .send(Message::Binary(
            Frame::Allocated(allocation.public).encode().into(),
        ))
        .await
        .is_err()
    {
        return Ok(());
    }
    loop {
        tokio::select! {
            message = socket.recv() => match message {
                Some(Ok(Message::Binary(frame))) => match Datagram::decode(&frame) {
                    Ok(datagram) => allocation.send_to(datagram.peer(), datagram.payload()).await,
                    Err(e) => {
                        close(&mut socket, 1007, "malformed-frame").await;
                        return Err(format!("malformed frame: {e}"));
                    }
                },
                Some(Ok(Message::Text(_))) => {
                    close(&mut socket, 1003, "malformed-frame: frames are binary messages").await;
                    return Err("text message".into());
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return Ok(()),
                Some(Ok(_)) => {}
            },
            frame = allocation.recv_frame(&mut buf) => match frame {
                Ok(frame) => {
                    if socket.send(Message::Binary(frame.into())).await.is_err() {
                        return Ok(());
                    }
                }
                Err(e) => tracing::debug!(error = %e, "http relay: receiving failed"),
            },
            _ = recheck.tick() => {
                if !app.db.endpoint_is_active(endpoint_id).await.unwrap_or(true) {
                    close(&mut socket, 4003, "endpoint revoked").await;
                    return Err("endpoint revoked".into());
                }
            }
            _ = crate::shared::shutting_down(&mut shutdown) => {
                close(&mut socket, 1001, "provider shutting down").await;
                return Ok(());
            }
        }
    }
}

/// `POST /v1/media-relay`: a long-poll allocation, answered as `{id, address}`.
pub async fn create_route(
    State(app): State<Arc<App>>,
    relay: RelayExt,
    auth: AuthEndpoint,
    headers: HeaderMap,
) -> Response {
    let (relay, allocation) = match allocation_in(relay, &auth.endpoint.id).await {
        Ok(allocated) => allocated,
        Err(e) => return fail(&headers, "media-relay", e),
    };
    let id = crate::shared::random_token(24);
    let address = allocation.public.to_string();
    let polled = Arc::new(PolledAllocation {
        endpoint: auth.endpoint.id.clone(),
        allocation,
        queue: Mutex::new(VecDeque::new()),
        arrived: Notify::new(),
        last_used: Mutex::new(Instant::now()),
        stop: CancellationToken::new(),
    });
    relay
        .polled
        .lock()
        .expect("http relay allocations")
        .insert(id.clone(), polled.clone());
    tokio::spawn(pump(relay.clone(), id.clone(), polled, app));
    observe("media-relay", &Ok(()));
    Reply {
        encoding: encoding_of(&headers),
        result: Ok(Dict::new().with("id", id).with("address", address)),
    }
    .into_response()
}

/// `POST /v1/media-relay/{id}/send`: length-prefixed DATA frames, all sent or none.
pub async fn send_route(
    State(app): State<Arc<App>>,
    relay: RelayExt,
    auth: AuthEndpoint,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let alloc = match polled_in(relay, &id, &auth.endpoint.id) {
        Ok(a) => a,
        Err(e) => return fail(&headers, "media-relay-send", e),
    };
    alloc.touch();
    let limit = app.config.endpoint_api.max_body_bytes.max(DATAGRAM + 64);
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(_) => {
            let e = ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body-too-large",
                format!("the body exceeds {limit} bytes"),
            );
            return fail(&headers, "media-relay-send", e);
        }
    };
    let datagrams = match datagrams_of(&bytes) {
        Ok(datagrams) => datagrams,
        Err(e) => return fail(&headers, "media-relay-send", malformed(e)),
    };
    for datagram in datagrams {
        alloc
            .allocation
            .send_to(datagram.peer(), datagram.payload())
            .await;
    }
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize)]
pub struct RecvParams {
    /// Milliseconds to wait for a frame when none is queued (at most 25,000).
    #[serde(default)]
    wait: Option<u64>,
}

/// `GET /v1/media-relay/{id}/recv?wait=MS`: every queued frame, length-prefixed, as soon as one
/// is queued, else an empty body after `wait` ms.
pub async fn recv_route(
    State(app): State<Arc<App>>,
    relay: RelayExt,
    auth: AuthEndpoint,
    Path(id): Path<String>,
    headers: HeaderMap,
    params: Result<Query<RecvParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let alloc = match polled_in(relay, &id, &auth.endpoint.id) {
        Ok(a) => a,
        Err(e) => return fail(&headers, "media-relay-recv", e),
    };
    let wait = match params {
        Ok(Query(p)) => p.wait.unwrap_or(0).min(MAX_RECV_WAIT_MS),
        Err(e) => {
            return fail(
                &headers,
                "media-relay-recv",
                ApiError::field("wait", e.body_text()),
            )
        }
    };
    alloc.touch();
    let deadline = Instant::now() + Duration::from_millis(wait);
    let mut shutdown = app.shutdown.clone();
    let frames = loop {
        let arrived = alloc.arrived.notified();
        tokio::pin!(arrived);
        arrived.as_mut().enable();
        let frames = alloc.drain();
        if !frames.is_empty() || Instant::now() >= deadline {
            break frames;
        }
        tokio::select! {
            _ = arrived => {}
            _ = tokio::time::sleep_until(deadline) => {}
            _ = alloc.stop.cancelled() => break alloc.drain(),
            _ = crate::shared::shutting_down(&mut shutdown) => break Vec::new(),
        }
    };
    alloc.touch();
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/octet-stream")],
        frames.concat(),
    )
        .into_response()
}

/// `DELETE /v1/media-relay/{id}`: frees the allocation.
pub async fn delete_route(
    relay: RelayExt,
    auth: AuthEndpoint,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let relay = match relay_in(relay) {
        Ok(relay) => relay,
        Err(e) => return fail(&headers, "media-relay-delete", e),
    };
    if let Err(e) = relay.polled(&id, &auth.endpoint.id) {
        return fail(&headers, "media-relay-delete", e);
    }
    if let Some(alloc) = relay.forget(&id) {
        alloc.stop.cancel();
    }
    StatusCode::NO_CONTENT.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_bodies_are_all_or_nothing() {
        let peer: SocketAddr = "192.0.2.7:4242".parse().unwrap();
        let one = Datagram::new(peer, b"one").unwrap();
        let two = Datagram::new(peer, b"two").unwrap();
        let mut body = Vec::new();
        for frame in [one.encode(), two.encode()] {
            append_length_prefixed(&mut body, &frame).unwrap();
        }
        assert_eq!(datagrams_of(&body), Ok(vec![one, two]));
        assert_eq!(datagrams_of(&[]), Ok(vec![]));

        let mut with_allocated = body.clone();
        append_length_prefixed(&mut with_allocated, &Frame::Allocated(peer).encode()).unwrap();
        assert!(matches!(
            datagrams_of(&with_allocated),
            Err(FrameError::NotData(_))
        ));
        let mut cut_short = body;
        cut_short.pop();
        assert!(matches!(
            datagrams_of(&cut_short),
            Err(FrameError::LengthOverrun { .. })
        ));
    }
}
