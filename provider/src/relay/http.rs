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
//! filtered by the TURN relay's [`PeerPolicy`]. Frames:
//!
//! * `ADDR` = family (1 byte: 4 or 6) ++ IP (4 or 16 bytes) ++ port (2 bytes, big-endian);
//! * `0x01 ALLOCATED` ++ `ADDR` (server → endpoint): the allocation's public address;
//! * `0x02 DATA` ++ `ADDR` ++ payload: endpoint → server, send to `ADDR`; server → endpoint,
//!   arrived from `ADDR`.
//!
//! Like the TURN relay, it carries media the endpoints encrypted end to end.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
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
use tokio::net::UdpSocket;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The WebSocket client the tests and tools use to reach `GET /v1/media-relay`.
pub use ::tokio_tungstenite;

use super::filter::PeerPolicy;
use crate::app::App;
use crate::auth::AuthEndpoint;
use crate::config::Config;
use crate::wire::{encoding_of, ApiError, Reply};

/// Frame type: the allocation's public address (server → endpoint).
pub const ALLOCATED: u8 = 0x01;
/// Frame type: a datagram to or from a peer.
pub const DATA: u8 = 0x02;
/// Frames queued per long-poll allocation; the oldest is dropped beyond this.
pub const QUEUE_LIMIT: usize = 1024;
/// The longest `wait` of `GET /v1/media-relay/{id}/recv`, in milliseconds.
pub const MAX_WAIT_MS: u64 = 25_000;
/// A long-poll allocation neither polled nor sent on for this long is freed.
pub const IDLE: Duration = Duration::from_secs(30);
/// The largest UDP datagram.
const DATAGRAM: usize = 65_535;

/// Encodes an address as `ADDR`; IPv4-mapped IPv6 addresses are written as IPv4.
pub fn encode_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    match addr.ip().to_canonical() {
        IpAddr::V4(v4) => {
            out.push(4);
            out.extend_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            out.push(6);
            out.extend_from_slice(&v6.octets());
        }
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
}

/// Decodes an `ADDR` at the start of `bytes`; returns it and the rest.
pub fn decode_addr(bytes: &[u8]) -> Option<(SocketAddr, &[u8])> {
    let (&family, rest) = bytes.split_first()?;
    let (ip, rest) = match family {
        4 if rest.len() >= 4 => {
            let octets: [u8; 4] = rest[..4].try_into().ok()?;
            (IpAddr::V4(Ipv4Addr::from(octets)), &rest[4..])
        }
        6 if rest.len() >= 16 => {
            let octets: [u8; 16] = rest[..16].try_into().ok()?;
            (IpAddr::V6(Ipv6Addr::from(octets)), &rest[16..])
        }
        _ => return None,
    };
    if rest.len() < 2 {
        return None;
    }
    let port = u16::from_be_bytes([rest[0], rest[1]]);
    Some((SocketAddr::new(ip, port), &rest[2..]))
}

/// `0x01 ALLOCATED ++ ADDR`.
pub fn allocated_frame(addr: SocketAddr) -> Vec<u8> {
    let mut frame = vec![ALLOCATED];
    encode_addr(&mut frame, addr);
    frame
}

/// `0x02 DATA ++ ADDR ++ payload`.
pub fn data_frame(addr: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 19);
    frame.push(DATA);
    encode_addr(&mut frame, addr);
    frame.extend_from_slice(payload);
    frame
}

/// Parses a DATA frame sent by an endpoint: its destination and payload. Anything else
/// (another type, a truncated or unknown address family, nothing at all) is malformed.
pub fn parse_data_frame(frame: &[u8]) -> Option<(SocketAddr, &[u8])> {
    match frame.split_first() {
        Some((&DATA, rest)) => decode_addr(rest),
        _ => None,
    }
}

/// Splits a long-poll body: frames each prefixed by its length (2 bytes, big-endian).
/// `None` if a length runs past the end or is zero.
pub fn split_frames(mut body: &[u8]) -> Option<Vec<&[u8]>> {
    let mut frames = Vec::new();
    while !body.is_empty() {
        if body.len() < 2 {
            return None;
        }
        let len = usize::from(u16::from_be_bytes([body[0], body[1]]));
        if len == 0 || body.len() < 2 + len {
            return None;
        }
        frames.push(&body[2..2 + len]);
        body = &body[2 + len..];
    }
    Some(frames)
}

/// Joins frames each prefixed by its length (2 bytes, big-endian).
pub fn join_frames<'a>(frames: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for frame in frames {
        out.extend_from_slice(&(frame.len() as u16).to_be_bytes());
        out.extend_from_slice(frame);
    }
    out
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
            return Ok(data_frame(from, &buf[..n]));
        }
    }
}

/// A long-poll allocation: the frames waiting for the endpoint's next `recv`.
struct PolledAllocation {
    endpoint: String,
    allocation: Allocation,
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
                    let mut queue = alloc.queue.lock().expect("http relay queue");
                    if queue.len() >= QUEUE_LIMIT {
                        queue.pop_front();
                        metrics::counter!("switchyard_http_relay_frames_dropped_total").increment(1);
                    }
                    queue.push_back(frame);
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
            _ = crate::app::shutting_down(&mut shutdown) => break,
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

fn malformed() -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "malformed-frame",
        "a frame is malformed",
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
        .send(Message::Binary(allocated_frame(allocation.public).into()))
        .await
        .is_err()
    {
        return Ok(());
    }
    loop {
        tokio::select! {
            message = socket.recv() => match message {
                Some(Ok(Message::Binary(frame))) => match parse_data_frame(&frame) {
                    Some((peer, payload)) => allocation.send_to(peer, payload).await,
                    None => {
                        close(&mut socket, 1007, "malformed-frame").await;
                        return Err("malformed frame".into());
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
            _ = crate::app::shutting_down(&mut shutdown) => {
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
    let id = crate::registry::random_token(24);
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
    let parsed = split_frames(&bytes).and_then(|frames| {
        frames
            .into_iter()
            .map(parse_data_frame)
            .collect::<Option<Vec<_>>>()
    });
    let Some(datagrams) = parsed else {
        return fail(&headers, "media-relay-send", malformed());
    };
    for (peer, payload) in datagrams {
        alloc.allocation.send_to(peer, payload).await;
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
        Ok(Query(p)) => p.wait.unwrap_or(0).min(MAX_WAIT_MS),
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
            _ = crate::app::shutting_down(&mut shutdown) => break Vec::new(),
        }
    };
    alloc.touch();
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/octet-stream")],
        join_frames(frames.iter().map(Vec::as_slice)),
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
    fn frames_round_trip() {
        let v4: SocketAddr = "192.0.2.7:4242".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::1]:9".parse().unwrap();
        let frame = data_frame(v4, b"hi");
        assert_eq!(frame, [2, 4, 192, 0, 2, 7, 0x10, 0x92, b'h', b'i']);
        assert_eq!(parse_data_frame(&frame), Some((v4, &b"hi"[..])));
        let frame = data_frame(v6, b"");
        assert_eq!(frame.len(), 1 + 1 + 16 + 2);
        assert_eq!(parse_data_frame(&frame), Some((v6, &b""[..])));
        assert_eq!(allocated_frame(v4), [1, 4, 192, 0, 2, 7, 0x10, 0x92]);
        let mapped: SocketAddr = "[::ffff:192.0.2.7]:4242".parse().unwrap();
        assert_eq!(data_frame(mapped, b"hi"), data_frame(v4, b"hi"));
        assert_eq!(parse_data_frame(&allocated_frame(v4)), None);
        assert_eq!(parse_data_frame(&[2, 4, 1, 2, 3]), None);
        assert_eq!(parse_data_frame(&[2, 5, 1, 2, 3, 4, 0, 1]), None);
        assert_eq!(parse_data_frame(&[]), None);
    }

    #[test]
    fn length_prefixed_bodies() {
        let a = [2u8, 4, 1, 2, 3, 4, 0, 1, 9];
        let joined = join_frames([&a[..], &a[..3]]);
        assert_eq!(&joined[..2], &[0, 9]);
        assert_eq!(split_frames(&joined), Some(vec![&a[..], &a[..3]]));
        assert_eq!(split_frames(&[]), Some(vec![]));
        assert_eq!(split_frames(&[0]), None);
        assert_eq!(split_frames(&[0, 0]), None);
        assert_eq!(split_frames(&[0, 3, 1, 2]), None);
    }
}
