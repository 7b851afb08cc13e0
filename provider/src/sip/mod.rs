//! The SIP edge: ordinary SIP phones and trunks join the provider over UDP, TCP and TLS.
//!
//! The parts: the front door ([`message`]: framing, checks and the error answers RFC 3261 gives
//! bad requests), the non-INVITE server transactions (a retransmitted request is answered again
//! from the stored response, RFC 3261 §17.2.2), OPTIONS, the registrar ([`registrar`]: REGISTER
//! with digest authentication, [`digest`]) and calls ([`calls`]: a back-to-back user agent
//! between phones and the invitation protocol, the SDP carried as the blob, [`sdp`]). An
//! account's address of record (`sip:user@domain`) acts for a user, and so for the user's `tel:`
//! and `mailto:` URIs, through the account's gateway endpoint.

pub mod accounts;
pub mod anchor;
pub mod calls;
pub mod digest;
mod expiry;
#[doc(hidden)]
pub mod fuzz;
pub mod message;
pub mod registrar;
pub mod sdp;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use rsip::Method;
use switchyard_protocol::capabilities::Capabilities;
use switchyard_protocol::dict::Dict;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::app::App;
use crate::config::{SipConfig, SipTransport};
use crate::db::records::SipAccount;
use calls::Flow;
use digest::Digest;
use message::{Framed, Inbound, Limits, Received, StreamFramer, Transport};

/// What a gateway endpoint can answer: the codecs SIP phones and trunks commonly offer. The
/// phones negotiate between themselves; this only decides which calls ring the gateway.
pub fn gateway_capabilities() -> Capabilities {
    Capabilities {
        audio: true,
        video: true,
        audio_codecs: ["opus", "PCMU", "PCMA", "G722", "G729"]
            .map(String::from)
            .to_vec(),
        video_codecs: ["H264", "VP8"].map(String::from).to_vec(),
    }
}

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
    transactions: Mutex<expiry::ExpiringMap<TransactionKey, TransactionState>>,
    calls: calls::Calls,
    udp: OnceLock<Arc<UdpSocket>>,
    bound: Mutex<HashMap<Transport, SocketAddr>>,
    /// Open TCP and TLS connections by peer address: requests to a phone go back over the
    /// connection it registered or called on.
    streams: Mutex<HashMap<SocketAddr, mpsc::UnboundedSender<Vec<u8>>>>,
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
            &config.digest_algorithms,
        );
        Ok(SipEdge {
            limits: Limits {
                max_message_bytes: config.max_message_bytes,
            },
            config,
            digest,
            domains,
            app,
            transactions: Mutex::new(expiry::ExpiringMap::new(TIMER_J, MAX_TRANSACTIONS)),
            calls: calls::Calls::default(),
            udp: OnceLock::new(),
            bound: Mutex::default(),
            streams: Mutex::default(),
        })
    }

    fn local_addr(&self, transport: Transport) -> Option<SocketAddr> {
        self.bound.lock().expect("bound").get(&transport).copied()
    }

    /// Sends `bytes` over `flow`: the UDP socket, the flow's open connection, or (TCP only) a
    /// new connection to it. Failures are logged: SIP's timers deal with lost messages.
    pub(crate) async fn send(self: &Arc<Self>, flow: Flow, bytes: &[u8]) {
        match flow.transport {
            Transport::Udp => {
                if let Some(socket) = self.udp.get() {
                    if let Err(e) = socket.send_to(bytes, flow.addr).await {
                        tracing::debug!(to = %flow.addr, error = %e, "SIP UDP send failed");
                    }
                }
            }
            Transport::Tcp | Transport::Tls => {
                let open = self
                    .streams
                    .lock()
                    .expect("streams")
                    .get(&flow.addr)
                    .cloned();
                if let Some(writer) = open {
                    if writer.send(bytes.to_vec()).is_ok() {
                        return;
                    }
                }
                if flow.transport == Transport::Tls {
                    tracing::info!(to = %flow.addr, "SIP: no open TLS connection to the phone");
                    return;
                }
                match tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(flow.addr))
                    .await
                {
                    Ok(Ok(stream)) => {
                        let writer = spawn_stream(self.clone(), stream, flow.addr, Transport::Tcp);
                        let _ = writer.send(bytes.to_vec());
                    }
                    _ => {
                        tracing::info!(to = %flow.addr, "SIP: cannot connect to the phone over TCP")
                    }
                }
            }
        }
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
            let socket = bind_udp(listen, edge.config.udp_receive_buffer_bytes)
                .with_context(|| format!("binding sip.udp_listen {listen}"))?;
            udp_addr = Some(socket.local_addr()?);
            let socket = Arc::new(socket);
            let _ = edge.udp.set(socket.clone());
            tasks.push(tokio::spawn(serve_udp(edge.clone(), socket)));
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
        {
            let mut bound = edge.bound.lock().expect("bound");
            for (transport, addr) in [
                (Transport::Udp, udp_addr),
                (Transport::Tcp, tcp_addr),
                (Transport::Tls, tls_addr),
            ] {
                if let Some(addr) = addr {
                    bound.insert(transport, addr);
                }
            }
        }
        let made = edge
            .app
            .db
            .ensure_sip_gateways(&gateway_capabilities())
            .await
            .context("giving SIP accounts their gateway endpoints")?;
        if made > 0 {
            tracing::info!(made, "SIP accounts given gateway endpoints");
        }
        tasks.push(tokio::spawn(purge_contacts(edge.clone())));
        tasks.push(tokio::spawn(watch_gateways(edge.clone())));
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
        self: &Arc<Self>,
        bytes: &[u8],
        source: SocketAddr,
        transport: Transport,
    ) -> Option<Vec<u8>> {
        let inbound = match message::receive(bytes, source, transport, self.limits) {
            Received::Request(inbound) => inbound,
            Received::Response(response) => {
                self.on_response(*response);
                return None;
            }
            Received::Answered(answer) => {
                metrics::counter!("switchyard_sip_refused_total").increment(1);
                return Some(answer);
            }
            Received::Dropped(why) => {
                tracing::debug!(%source, why, "SIP message dropped");
                return None;
            }
        };
        metrics::counter!("switchyard_sip_requests_total", "method" => inbound.method.to_string())
            .increment(1);
        match inbound.method {
            Method::Invite => return self.on_invite(inbound).await,
            Method::Ack => {
                self.on_ack(inbound);
                return None;
            }
            _ => {}
        }
        let key = match message::top_branch(&inbound.request) {
            Some(branch) => (branch, inbound.method.to_string(), source),
            None => return None,
        };
        {
            let mut transactions = self.transactions.lock().expect("transactions lock");
            let now = Instant::now();
            match transactions.get(&key, now) {
                Some(TransactionState::Proceeding) => return None,
                Some(TransactionState::Completed(answer)) => return Some(answer.clone()),
                None => {}
            }
            transactions.insert(key.clone(), TransactionState::Proceeding, now);
        }
        let answer = self.dispatch(&inbound).await;
        {
            let mut transactions = self.transactions.lock().expect("transactions lock");
            if transport.is_stream() {
                // Reliable transports retransmit nothing (Timer J is 0).
                transactions.remove(&key);
            } else {
                transactions.insert(
                    key,
                    TransactionState::Completed(answer.clone()),
                    Instant::now(),
                );
            }
        }
        if inbound.method == Method::Cancel && answer.starts_with(b"SIP/2.0 200") {
            // The CANCEL's 200 goes out before the INVITE's 487 that its call task sends next.
            let flow = Flow {
                transport,
                addr: source,
            };
            self.send(flow, &answer).await;
            self.cancel_invite(inbound);
            return None;
        }
        Some(answer)
    }

    async fn dispatch(&self, inbound: &Inbound) -> Vec<u8> {
        match inbound.method {
            Method::Register => self.register(inbound).await,
            Method::Cancel | Method::Bye | Method::Update => self.on_call_request(inbound).await,
            Method::Options => message::response(
                &inbound.request,
                inbound.source,
                200,
                "OK",
                &message::new_tag(6),
                vec![message::allow_header()],
            ),
            // The front door lets through only the methods in `message::ALLOWED`.
            _ => message::response(
                &inbound.request,
                inbound.source,
                405,
                "Method Not Allowed",
                &message::new_tag(6),
                vec![message::allow_header()],
            ),
        }
    }
}

/// The SIP UDP socket, with the receive buffer asked for (or what the kernel allows of it).
fn bind_udp(listen: SocketAddr, receive_buffer: usize) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(listen),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    socket.set_recv_buffer_size(receive_buffer)?;
    // Linux reports twice what it grants (the bookkeeping overhead is included).
    let granted = socket.recv_buffer_size()?;
    if granted < receive_buffer {
        tracing::warn!(
            asked = receive_buffer,
            granted,
            "SIP UDP receive buffer smaller than sip.udp_receive_buffer_bytes (raise net.core.rmem_max)"
        );
    }
    socket.bind(&listen.into())?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket.into())
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
                        spawn_stream(edge, stream, source, Transport::Tcp);
                    }
                    Some(acceptor) => {
                        tokio::spawn(async move {
                            match tokio::time::timeout(TLS_HANDSHAKE, acceptor.accept(stream)).await
                            {
                                Ok(Ok(stream)) => {
                                    spawn_stream(edge, stream, source, Transport::Tls);
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

/// Serves a connection: a writer task fed by a channel (registered for the edge's own requests
/// to this peer) and a reader answering messages in order. Returns the writer's channel.
fn spawn_stream<S: AsyncRead + AsyncWrite + Send + 'static>(
    edge: Arc<SipEdge>,
    stream: S,
    peer: SocketAddr,
    transport: Transport,
) -> mpsc::UnboundedSender<Vec<u8>> {
    let (reader, mut writer) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    edge.streams
        .lock()
        .expect("streams")
        .insert(peer, tx.clone());
    tokio::spawn(async move {
        while let Some(bytes) = rx.recv().await {
            if writer.write_all(&bytes).await.is_err() {
                return;
            }
        }
    });
    let answers = tx.clone();
    let registered = tx.clone();
    tokio::spawn(async move {
        read_stream(edge.clone(), reader, peer, transport, answers).await;
        let mut streams = edge.streams.lock().expect("streams");
        if streams
            .get(&peer)
            .is_some_and(|t| t.same_channel(&registered))
        {
            streams.remove(&peer);
        }
    });
    tx
}

/// Reads messages off a connection and answers each in order through `answers`.
async fn read_stream<R: AsyncRead + Unpin>(
    edge: Arc<SipEdge>,
    mut reader: R,
    source: SocketAddr,
    transport: Transport,
    answers: mpsc::UnboundedSender<Vec<u8>>,
) {
    let mut framer = StreamFramer::default();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match tokio::time::timeout(STREAM_IDLE, reader.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => return,
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                tracing::debug!(%source, error = %e, "SIP stream read failed");
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
                if answers.send(answer).is_err() {
                    return;
                }
            }
        }
    }
}

/// Starts reading the pushes of every SIP account's gateway endpoint, and of accounts added
/// later (looked for once a second).
async fn watch_gateways(edge: Arc<SipEdge>) {
    let mut watched: HashMap<String, JoinHandle<()>> = HashMap::new();
    let mut since = i64::MIN;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        watched.retain(|_, task| !task.is_finished());
        match edge.app.db.sip_gateways_since(since).await {
            Ok(accounts) => {
                for account in accounts {
                    since = since.max(account.created_at - 1);
                    let Some(endpoint) = account.endpoint_id.clone() else {
                        continue;
                    };
                    if watched.contains_key(&endpoint) {
                        continue;
                    }
                    let task = tokio::spawn(gateway_pushes(edge.clone(), account));
                    watched.insert(endpoint, task);
                }
            }
            Err(e) => tracing::warn!(error = %e, "SIP edge: reading gateway endpoints"),
        }
    }
}

/// Takes the pushes of one account's gateway endpoint off its queue and acts on them: an
/// Initiate starts a call to the account's phones; the rest go to the call they belong to. A
/// push for a call another replica holds is left for it.
async fn gateway_pushes(edge: Arc<SipEdge>, account: SipAccount) {
    let Some(endpoint) = account.endpoint_id.clone() else {
        return;
    };
    let mut signal = edge.app.hub.subscribe(&endpoint);
    let mut shutdown = edge.app.shutdown.clone();
    loop {
        // The database closes once the provider has shut down: stop reading before that.
        if signal.borrow().revoked || *shutdown.borrow() {
            break;
        }
        match edge.app.db.pending_pushes(&endpoint, 0, 100).await {
            Ok(pushes) => {
                for stored in pushes {
                    let Ok(push) = Dict::decode(
                        stored.body.as_bytes(),
                        switchyard_protocol::dict::Encoding::Plist,
                    ) else {
                        continue;
                    };
                    edge.on_gateway_push(&account, &endpoint, stored.seq, push)
                        .await;
                }
            }
            Err(_) if *shutdown.borrow() => break,
            Err(e) => tracing::warn!(error = %e, "SIP edge: reading a gateway's pushes"),
        }
        // Woken by this replica's pushes at once; other replicas' are found within a second.
        tokio::select! {
            _ = tokio::time::timeout(Duration::from_secs(1), signal.changed()) => {}
            _ = crate::shared::shutting_down(&mut shutdown) => break,
        }
    }
    edge.app.hub.release(&endpoint);
}

impl SipEdge {
    async fn on_gateway_push(
        self: &Arc<Self>,
        account: &SipAccount,
        endpoint: &str,
        seq: i64,
        push: Dict,
    ) {
        let session = push.str("session-id").unwrap_or_default();
        let leg = calls::leg_key(session, endpoint);
        let initiate = push.str("action") == Ok("initiate");
        if !initiate && !self.calls.has_leg(&leg) {
            return;
        }
        match self.app.db.claim_push(endpoint, seq).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(error = %e, "SIP edge: claiming a push");
                return;
            }
        }
        if initiate {
            self.start_incoming(account.clone(), push).await;
        } else {
            self.calls.send_event(&leg, calls::Event::Push(push));
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
            .purge_expired_sip_contacts(crate::shared::now_ms())
            .await
        {
            tracing::warn!(error = %e, "purging expired SIP contacts failed");
        }
    }
}
