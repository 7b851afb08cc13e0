//! The SIP edge: ordinary SIP phones and trunks join the provider over UDP, TCP and TLS.
//!
//! What runs today is the front door ([`message`]: framing, checks and the error answers RFC
//! 3261 gives bad requests), the non-INVITE server transactions (a retransmitted request is
//! answered again from the stored response, RFC 3261 §17.2.2), OPTIONS, and the registrar
//! ([`registrar`]: REGISTER with digest authentication, [`digest`]). An account's address of
//! record (`sip:user@domain`) acts for a user, and so for the user's `tel:` and `mailto:` URIs.
//! Calls (INVITE and the rest) are refused with `405` and `Allow: REGISTER, OPTIONS` until the
//! edge translates them to the invitation protocol.

pub mod accounts;
pub mod digest;
#[doc(hidden)]
pub mod fuzz;
pub mod message;
pub mod registrar;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use rsip::Method;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;

use crate::app::App;
use crate::config::{SipConfig, SipTransport};
use digest::Digest;
use message::{Framed, Inbound, Limits, Received, StreamFramer, Transport};

/// RFC 3261 Timer J (64 × T1): how long a completed non-INVITE transaction absorbs
/// retransmissions over UDP.
const TIMER_J: Duration = Duration::from_secs(32);
/// A stream connection idle this long is closed (phones re-register well within it, and send
/// CRLF keep-alives, RFC 5626).
const STREAM_IDLE: Duration = Duration::from_secs(15 * 60);
/// A TLS handshake not done by then is given up.
const TLS_HANDSHAKE: Duration = Duration::from_secs(10);
/// Completed transactions remembered at most; the oldest are forgotten first.
const MAX_TRANSACTIONS: usize = 100_000;

/// A server transaction, by its top Via branch, method and source.
type TransactionKey = (String, String, SocketAddr);

/// What a server transaction has got to: still being handled (retransmissions are absorbed), or
/// answered (they get the answer again).
enum TransactionState {
    Proceeding,
    Completed(Vec<u8>),
}

pub struct SipEdge {
    app: Arc<App>,
    config: SipConfig,
    digest: Digest,
    domains: Vec<String>,
    limits: Limits,
    transactions: Mutex<HashMap<TransactionKey, (Instant, TransactionState)>>,
}

/// The running edge: its bound addresses and tasks.
pub struct SipListeners {
    pub udp_addr: Option<SocketAddr>,
    pub tcp_addr: Option<SocketAddr>,
    pub tls_addr: Option<SocketAddr>,
    pub edge: Arc<SipEdge>,
    tasks: Vec<JoinHandle<()>>,
}

impl SipListeners {
    pub fn stop(&self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl SipEdge {
    pub fn new(app: Arc<App>) -> anyhow::Result<SipEdge> {
        let config = app.config.sip.clone();
        let secret =
            crate::pki::load_or_create_secret(&app.config.sip_secret_path(), "SIP secret")?;
        let domains = app.config.sip_domains();
        let digest = Digest::new(
            app.config.sip_realm(),
            secret.as_bytes(),
            config.nonce_lifetime_seconds,
        );
        Ok(SipEdge {
            limits: Limits {
                max_message_bytes: config.max_message_bytes,
            },
            config,
            digest,
            domains,
            app,
            transactions: Mutex::default(),
        })
    }

    /// Whether `domain` is one of `sip.domains`.
    fn serves(&self, domain: &str) -> bool {
        self.domains.iter().any(|d| d.eq_ignore_ascii_case(domain))
    }

    /// Binds `sip.udp_listen`, `sip.tcp_listen` and `sip.tls_listen` (as `sip.transports` says)
    /// and serves them; TLS with `tls`, the server side only (phones present no certificate).
    pub async fn start(self, tls: Arc<rustls::ServerConfig>) -> anyhow::Result<SipListeners> {
        let edge = Arc::new(self);
        let mut tasks = Vec::new();
        let mut udp_addr = None;
        let mut tcp_addr = None;
        let mut tls_addr = None;
        let serves = |t: SipTransport| edge.config.transports.contains(&t);
        if serves(SipTransport::Udp) {
            let listen = edge.config.udp_listen;
            let socket = UdpSocket::bind(listen)
                .await
                .with_context(|| format!("binding sip.udp_listen {listen}"))?;
            udp_addr = Some(socket.local_addr()?);
            tasks.push(tokio::spawn(serve_udp(edge.clone(), Arc::new(socket))));
        }
        if serves(SipTransport::Tcp) {
            let listen = edge.config.tcp_listen;
            let listener = TcpListener::bind(listen)
                .await
                .with_context(|| format!("binding sip.tcp_listen {listen}"))?;
            tcp_addr = Some(listener.local_addr()?);
            tasks.push(tokio::spawn(serve_tcp(edge.clone(), listener, None)));
        }
        if serves(SipTransport::Tls) {
            let listen = edge.config.tls_listen;
            let listener = TcpListener::bind(listen)
                .await
                .with_context(|| format!("binding sip.tls_listen {listen}"))?;
            tls_addr = Some(listener.local_addr()?);
            let acceptor = tokio_rustls::TlsAcceptor::from(tls);
            tasks.push(tokio::spawn(serve_tcp(
                edge.clone(),
                listener,
                Some(acceptor),
            )));
        }
        tasks.push(tokio::spawn(purge_contacts(edge.clone())));
        tracing::info!(?udp_addr, ?tcp_addr, ?tls_addr, domains = ?edge.domains, realm = edge.digest.realm(), "SIP edge started");
        Ok(SipListeners {
            udp_addr,
            tcp_addr,
            tls_addr,
            edge,
            tasks,
        })
    }

    /// One message in, at most one answer out.
    pub async fn handle(
        &self,
        bytes: &[u8],
        source: SocketAddr,
        transport: Transport,
    ) -> Option<Vec<u8>> {
        let inbound = match message::receive(bytes, source, transport, self.limits) {
            Received::Request(inbound) => inbound,
            Received::Answered(answer) => {
                metrics::counter!("switchyard_sip_refused_total").increment(1);
                return Some(answer);
            }
            Received::Dropped(why) => {
                tracing::debug!(%source, why, "SIP message dropped");
                return None;
            }
        };
        let key = match message::top_branch(&inbound.request) {
            Some(branch) => (branch, inbound.method.to_string(), source),
            None => return None,
        };
        {
            let mut transactions = self.transactions.lock().expect("transactions lock");
            let now = Instant::now();
            if transactions.len() >= MAX_TRANSACTIONS {
                transactions.retain(|_, (at, _)| now.duration_since(*at) < TIMER_J);
            }
            match transactions.get(&key) {
                Some((at, _)) if now.duration_since(*at) >= TIMER_J => {}
                Some((_, TransactionState::Proceeding)) => return None,
                Some((_, TransactionState::Completed(answer))) => return Some(answer.clone()),
                None => {}
            }
            transactions.insert(key.clone(), (now, TransactionState::Proceeding));
        }
        let answer = self.dispatch(&inbound).await;
        metrics::counter!("switchyard_sip_requests_total", "method" => inbound.method.to_string())
            .increment(1);
        let mut transactions = self.transactions.lock().expect("transactions lock");
        if transport.is_stream() {
            // Reliable transports retransmit nothing (Timer J is 0).
            transactions.remove(&key);
        } else {
            transactions.insert(
                key,
                (Instant::now(), TransactionState::Completed(answer.clone())),
            );
        }
        Some(answer)
    }

    async fn dispatch(&self, inbound: &Inbound) -> Vec<u8> {
        match inbound.method {
            Method::Register => self.register(inbound).await,
            Method::Options => message::response(
                &inbound.request,
                inbound.source,
                200,
                "OK",
                &crate::registry::random_token(8),
                vec![message::allow_header()],
            ),
            // The front door lets through only the methods in `message::ALLOWED`.
            _ => message::response(
                &inbound.request,
                inbound.source,
                405,
                "Method Not Allowed",
                &crate::registry::random_token(8),
                vec![message::allow_header()],
            ),
        }
    }
}

async fn serve_udp(edge: Arc<SipEdge>, socket: Arc<UdpSocket>) {
    // Whole datagrams, so an oversized one can still be answered with 413.
    let mut buf = vec![0u8; 65_536];
    loop {
        let (n, source) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(e) => {
                tracing::warn!(error = %e, "SIP UDP receive failed");
                continue;
            }
        };
        let bytes = buf[..n].to_vec();
        let (edge, socket) = (edge.clone(), socket.clone());
        tokio::spawn(async move {
            if let Some(answer) = edge.handle(&bytes, source, Transport::Udp).await {
                if let Err(e) = socket.send_to(&answer, source).await {
                    tracing::debug!(%source, error = %e, "SIP UDP send failed");
                }
            }
        });
    }
}

/// Accepts connections, each served by a task of its own (after its TLS handshake, for TLS).
async fn serve_tcp(
    edge: Arc<SipEdge>,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, source)) => {
                let edge = edge.clone();
                match tls.clone() {
                    None => {
                        tokio::spawn(serve_stream(edge, stream, source, Transport::Tcp));
                    }
                    Some(acceptor) => {
                        tokio::spawn(async move {
                            match tokio::time::timeout(TLS_HANDSHAKE, acceptor.accept(stream)).await
                            {
                                Ok(Ok(stream)) => {
                                    serve_stream(edge, stream, source, Transport::Tls).await
                                }
                                Ok(Err(e)) => {
                                    tracing::info!(%source, error = %e, "SIP TLS handshake failed")
                                }
                                Err(_) => tracing::info!(%source, "SIP TLS handshake timed out"),
                            }
                        });
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "SIP TCP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One connection: messages framed off the stream, answered in order on it.
async fn serve_stream<S: AsyncRead + AsyncWrite + Unpin>(
    edge: Arc<SipEdge>,
    mut stream: S,
    source: SocketAddr,
    transport: Transport,
) {
    let mut framer = StreamFramer::default();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match tokio::time::timeout(STREAM_IDLE, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => return,
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                tracing::debug!(%source, error = %e, "SIP TCP read failed");
                return;
            }
        };
        framer.push(&buf[..n]);
        while let Some(framed) = framer.next(edge.limits.max_message_bytes) {
            let answer = match framed {
                Framed::Message(message) => edge.handle(&message, source, transport).await,
                Framed::Ping => Some(b"\r\n".to_vec()),
                Framed::Broken(why) => {
                    tracing::info!(%source, why, transport = transport.as_str(), "SIP connection closed");
                    return;
                }
            };
            if let Some(answer) = answer {
                if stream.write_all(&answer).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Deletes expired contacts once a minute.
async fn purge_contacts(edge: Arc<SipEdge>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        if let Err(e) = edge
            .app
            .db
            .purge_expired_sip_contacts(crate::db::now_ms())
            .await
        {
            tracing::warn!(error = %e, "purging expired SIP contacts failed");
        }
    }
}
