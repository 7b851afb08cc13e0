//! The HTTP listeners (endpoint API, federation, admin, directory), TLS or plain, each bounded:
//! at most `max_connections` open at once (further clients wait in the kernel's backlog), the
//! TLS handshake and a request's headers within `header_timeout_seconds` (on HTTP/2, a next
//! request within it too), and a connection that moves no byte either way for
//! `idle_timeout_seconds` closed. Without these a slow client holds a connection, and its file
//! descriptor, for ever; enough of them stop the provider. Each client address is held to its
//! own share of connections and to a request rate ([`crate::client_limits`]), so one client
//! cannot take the listener's whole capacity.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use tower::ServiceExt;

use crate::auth::PeerCertificate;
use crate::client_limits::{
    retry_after_seconds, ClientLimits, ClientLimitsConfig, ConnectionSlot, Refused,
};
use crate::config::HttpLimits;
use crate::tls_stream::TlsStream;

/// Requests one HTTP/2 connection may have open at once; a client with more waits for a free
/// stream. Set here rather than left to hyper's default, so that what one client can have in
/// flight is `max_connections_per_client` times this, by decision.
const MAX_STREAMS_PER_CONNECTION: u32 = 100;

/// The TLS configuration for the next connection: fixed for the endpoint API, the current
/// federation identity for the federation listener (so a reload applies to new connections while
/// open ones carry on).
pub type TlsSource = Box<dyn Fn() -> Arc<ServerConfig> + Send + Sync>;

/// One listener: its name in logs and metrics, its limits, and how long shutdown waits.
pub struct Listener {
    pub name: &'static str,
    pub limits: HttpLimits,
    pub grace: Duration,
}

impl Listener {
    /// Serves `router` on `listener` until `shutdown` turns true, then lets in-flight requests
    /// finish for the grace period. With `tls`, each request carries the client's certificate
    /// ([`PeerCertificate`]); every request carries `ConnectInfo<SocketAddr>`.
    pub async fn serve(
        self,
        listener: TcpListener,
        tls: Option<TlsSource>,
        router: axum::Router,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let slots = Arc::new(Semaphore::new(self.limits.max_connections));
        let header_timeout = Duration::from_secs(self.limits.header_timeout_seconds);
        let idle_timeout = Duration::from_secs(self.limits.idle_timeout_seconds);
        let name = self.name;
        let clients = ClientLimits::new(ClientLimitsConfig {
            max_connections: self.limits.max_connections_per_client,
            requests_per_second: f64::from(self.limits.requests_per_second_per_client),
            burst: f64::from(self.limits.request_burst_per_client),
        });
        loop {
            let slot = match slots.clone().try_acquire_owned() {
                Ok(slot) => slot,
                Err(_) => {
                    metrics::counter!("switchyard_http_connections_at_cap_total", "listener" => name)
                        .increment(1);
                    tokio::select! {
                        slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
                        _ = crate::shared::shutting_down(&mut shutdown) => break,
                    }
                }
            };
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(listener = name, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = crate::shared::shutting_down(&mut shutdown) => break,
            };
            let client_slot = match clients.connect(peer.ip(), std::time::Instant::now()) {
                Ok(slot) => slot,
                Err(_) => {
                    metrics::counter!("switchyard_http_refused_total", "listener" => name, "reason" => "client-connections")
                        .increment(1);
                    tracing::debug!(listener = name, %peer, "client at its connection limit; closed");
                    continue;
                }
            };
            let clients = clients.clone();
            let tls_config = tls.as_ref().map(|tls| tls());
            let router = router.clone();
            let watcher = graceful.watcher();
            tokio::spawn(async move {
                let activity = Activity::new();
                let stream = Watched {
                    inner: stream,
                    activity: activity.clone(),
                    _slot: slot,
                    _client_slot: client_slot,
                };
                let (io, cert, http2) = match tls_config {
                    Some(config) => {
                        let tls = match tokio::time::timeout(
                            header_timeout,
                            TlsStream::accept(stream, config),
                        )
                        .await
                        {
                            Ok(Ok(tls)) => tls,
                            Ok(Err(e)) => {
                                tracing::debug!(listener = name, %peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                metrics::counter!("switchyard_http_timeouts_total", "listener" => name, "phase" => "handshake")
                                    .increment(1);
                                return;
                            }
                        };
                        let session = tls.session();
                        let cert = session
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .map(|c| Arc::new(c.clone().into_owned()));
                        let http2 = session.alpn_protocol() == Some(b"h2");
                        (Io::Tls(Box::new(tls)), cert, http2)
                    }
                    None => (Io::Plain(stream), None, false),
                };
                let peer_cert = PeerCertificate(cert);
                let open_requests = http2.then(OpenRequests::new);
                let counted = open_requests.clone();
                let service = hyper::service::service_fn(
                    move |mut req: hyper::Request<hyper::body::Incoming>| {
                        let limited = clients.request(peer.ip(), std::time::Instant::now());
                        req.extensions_mut().insert(peer_cert.clone());
                        req.extensions_mut()
                            .insert(axum::extract::ConnectInfo(peer));
                        let router = router.clone();
                        let open = counted.as_ref().map(OpenRequests::start);
                        async move {
                            if let Err(Refused::Rate(wait)) = limited {
                                metrics::counter!("switchyard_http_refused_total", "listener" => name, "reason" => "client-rate")
                                    .increment(1);
                                return Ok::<_, std::convert::Infallible>(rate_limited(wait));
                            }
                            let response = router.oneshot(req.map(axum::body::Body::new)).await?;
                            Ok(match open {
                                // Open until its answer's body is sent (or dropped).
                                Some(open) => response.map(|body| {
                                    axum::body::Body::new(body.map_frame(move |frame| {
                                        let _open = &open;
                                        frame
                                    }))
                                }),
                                None => response,
                            })
                        }
                    },
                );
                let mut builder = auto::Builder::new(TokioExecutor::new());
                builder
                    .http1()
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_timeout);
                builder
                    .http2()
                    .timer(TokioTimer::new())
                    .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION);
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
                let conn = watcher.watch(conn.into_owned());
                tokio::select! {
                    result = conn => if let Err(e) = result {
                        tracing::debug!(listener = name, %peer, error = %e, "connection ended with an error");
                    },
                    _ = activity.idle_for(idle_timeout) => {
                        metrics::counter!("switchyard_http_timeouts_total", "listener" => name, "phase" => "idle")
                            .increment(1);
                        tracing::debug!(listener = name, %peer, "idle connection closed");
                    }
                    _ = none_open_for(open_requests.as_ref(), header_timeout) => {
                        metrics::counter!("switchyard_http_timeouts_total", "listener" => name, "phase" => "no-request")
                            .increment(1);
                        tracing::debug!(listener = name, %peer, "HTTP/2 connection without a request closed");
                    }
                }
            });
        }
        drop(listener);
        if tokio::time::timeout(self.grace, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(
                listener = name,
                "grace period over; closing remaining connections"
            );
        }
    }
}

/// `429` for a client over its request rate, before the request reaches the application: an
/// error dictionary in JSON (every Switchyard client reads it) and `Retry-After` in whole
/// seconds, at least one.
fn rate_limited(wait: Duration) -> axum::response::Response {
    let retry_after = retry_after_seconds(wait);
    let body = serde_json::json!({
        "error": "rate-limited",
        "message": format!("too many requests from this client; retry after {retry_after} s"),
    });
    axum::response::Response::builder()
        .status(axum::http::StatusCode::TOO_MANY_REQUESTS)
        .header(axum::http::header::RETRY_AFTER, retry_after)
        .header(axum::http::header::CONTENT_TYPE, "application/json")
        .body(axum::body::Body::from(body.to_string()))
        .expect("a static response")
}

/// When a connection last moved a byte, in milliseconds since it was opened.
#[derive(Clone)]
struct Activity {
    opened: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    fn new() -> Self {
        Activity {
            opened: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    fn touch(&self) {
        let now = self.opened.elapsed().as_millis() as u64;
        self.last_ms.store(now, Ordering::Relaxed);
    }

    /// Resolves once no byte has moved for `limit`. An upgraded connection (a WebSocket) has
    /// left hyper by then; it keeps its own keep-alive and is not cut here.
    async fn idle_for(&self, limit: Duration) {
        loop {
            let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let idle = self.opened.elapsed().saturating_sub(last);
            if idle >= limit {
                return;
            }
            tokio::time::sleep(limit - idle).await;
        }
    }
}

/// The requests open on an HTTP/2 connection, and since when none has been. HTTP/1.1's header
/// timeout closes a kept-alive connection that sends no next request; hyper's HTTP/2 server has
/// no such limit, and a client's PINGs would keep [`Activity`] from ever seeing it idle, so a
/// client could hold a connection (and its slot) for ever without asking anything.
#[derive(Clone)]
struct OpenRequests {
    state: Arc<std::sync::Mutex<(usize, Instant)>>,
}

impl OpenRequests {
    fn new() -> Self {
        OpenRequests {
            state: Arc::new(std::sync::Mutex::new((0, Instant::now()))),
        }
    }

    fn start(&self) -> OpenRequest {
        self.state.lock().expect("open requests lock").0 += 1;
        OpenRequest(self.clone())
    }
}

/// One open request; dropped when its answer is done.
struct OpenRequest(OpenRequests);

impl Drop for OpenRequest {
    fn drop(&mut self) {
        let mut state = self.0.state.lock().expect("open requests lock");
        state.0 -= 1;
        if state.0 == 0 {
            state.1 = Instant::now();
        }
    }
}

/// Resolves once no request has been open on the connection for `limit`; never without
/// `requests` (HTTP/1.1 and plain connections, which hyper's header timeout covers).
async fn none_open_for(requests: Option<&OpenRequests>, limit: Duration) {
    let Some(requests) = requests else {
        return std::future::pending().await;
    };
    loop {
        let (open, since) = *requests.state.lock().expect("open requests lock");
        let wait = if open == 0 {
            match limit.checked_sub(since.elapsed()) {
                Some(left) if !left.is_zero() => left,
                _ => return,
            }
        } else {
            limit
        };
        tokio::time::sleep(wait).await;
    }
}

/// A stream that records its activity and holds its listener's connection slot: the slot is
/// freed when the stream is dropped, also after an upgrade hands it to a WebSocket.
struct Watched<S> {
    inner: S,
    activity: Activity,
    _slot: tokio::sync::OwnedSemaphorePermit,
    _client_slot: ConnectionSlot,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

type WatchedTcp = Watched<tokio::net::TcpStream>;

/// A connection, with or without TLS.
enum Io {
    Plain(WatchedTcp),
    Tls(Box<TlsStream<WatchedTcp>>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, data),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, data),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_only_when_no_byte_moved_for_the_whole_limit() {
        let activity = Activity::new();
        let limit = Duration::from_secs(3);
        let watch = activity.clone();
        let idle = tokio::spawn(async move { watch.idle_for(limit).await });
        tokio::time::sleep(Duration::from_secs(2)).await;
        activity.touch();
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(!idle.is_finished(), "a byte 2 s ago");
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        assert!(idle.is_finished(), "3.1 s without a byte");
    }
}
