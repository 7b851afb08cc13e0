//! The edge's sockets: a UDP socket, and TCP and TLS listeners with a reader and a writer task
//! per connection (the writer also carries the edge's own requests to the phone on it). What
//! comes in is answered by a [`Handler`] (the edge); what the edge sends goes out through
//! [`Sockets::send`].

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::message::{Framed, StreamFramer, Transport};
use super::outbound::Flow;
use crate::config::{SipConfig, SipTransport};

/// A stream connection idle this long is closed (phones re-register well within it, and send
/// CRLF keep-alives, RFC 5626).
const STREAM_IDLE: Duration = Duration::from_secs(15 * 60);
/// A TLS handshake not done by then is given up.
const TLS_HANDSHAKE: Duration = Duration::from_secs(10);
/// A write to a connection that makes no progress for this long closes it.
const WRITE_STALL: Duration = Duration::from_secs(10);

/// What answers the messages that come in: one message in, at most one answer out.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        self: Arc<Self>,
        bytes: Vec<u8>,
        source: SocketAddr,
        transport: Transport,
    ) -> Pin<Box<dyn Future<Output = Option<Vec<u8>>> + Send>>;
}

/// The addresses the edge listens on.
#[derive(Debug, Clone, Copy, Default)]
pub struct Bound {
    pub udp: Option<SocketAddr>,
    pub tcp: Option<SocketAddr>,
    pub tls: Option<SocketAddr>,
}

pub struct Sockets {
    max_message_bytes: usize,
    write_queue: usize,
    udp: OnceLock<Arc<UdpSocket>>,
    bound: Mutex<HashMap<Transport, SocketAddr>>,
    /// Open TCP and TLS connections by peer address: requests to a phone go back over the
    /// connection it registered or called on.
    streams: Mutex<HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>>,
    /// What answers the messages on connections the edge opens itself (weak: the handler holds
    /// these sockets).
    handler: OnceLock<Weak<dyn Handler>>,
}

impl Sockets {
    /// Forgets the connection to `peer` if `writer` is still the one registered for it.
    fn forget_stream(&self, peer: SocketAddr, writer: &mpsc::Sender<Vec<u8>>) {
        let mut streams = self.streams.lock().expect("streams");
        if streams.get(&peer).is_some_and(|t| t.same_channel(writer)) {
            streams.remove(&peer);
        }
    }

    /// `write_queue`: messages queued for one connection's writer; a peer that lets more pile
    /// up does not read and loses the connection (`sip.tcp_write_queue_messages`).
    pub fn new(max_message_bytes: usize, write_queue: usize) -> Sockets {
        Sockets {
            max_message_bytes,
            write_queue,
            udp: OnceLock::new(),
            bound: Mutex::default(),
            streams: Mutex::default(),
            handler: OnceLock::new(),
        }
    }

    /// Binds `sip.udp_listen`, `sip.tcp_listen` and `sip.tls_listen` (as `sip.transports` says)
    /// and serves them with `handler`; TLS with `tls`, the server side only (phones present no
    /// certificate). Returns the bound addresses and the serving tasks.
    pub async fn listen(
        self: &Arc<Self>,
        handler: Arc<dyn Handler>,
        config: &SipConfig,
        tls: Arc<rustls::ServerConfig>,
    ) -> anyhow::Result<(Bound, Vec<JoinHandle<()>>)> {
        let _ = self.handler.set(Arc::downgrade(&handler));
        let mut tasks = Vec::new();
        let mut bound = Bound::default();
        let serves = |t: SipTransport| config.transports.contains(&t);
        if serves(SipTransport::Udp) {
            let listen = config.udp_listen;
            let socket = bind_udp(listen, config.udp_receive_buffer_bytes)
                .with_context(|| format!("binding sip.udp_listen {listen}"))?;
            bound.udp = Some(socket.local_addr()?);
            let socket = Arc::new(socket);
            let _ = self.udp.set(socket.clone());
            tasks.push(tokio::spawn(serve_udp(handler.clone(), socket)));
        }
        if serves(SipTransport::Tcp) {
            let listen = config.tcp_listen;
            let listener = TcpListener::bind(listen)
                .await
                .with_context(|| format!("binding sip.tcp_listen {listen}"))?;
            bound.tcp = Some(listener.local_addr()?);
            tasks.push(tokio::spawn(serve_tcp(
                self.clone(),
                handler.clone(),
                listener,
                None,
            )));
        }
        if serves(SipTransport::Tls) {
            let listen = config.tls_listen;
            let listener = TcpListener::bind(listen)
                .await
                .with_context(|| format!("binding sip.tls_listen {listen}"))?;
            bound.tls = Some(listener.local_addr()?);
            let acceptor = tokio_rustls::TlsAcceptor::from(tls);
            tasks.push(tokio::spawn(serve_tcp(
                self.clone(),
                handler.clone(),
                listener,
                Some(acceptor),
            )));
        }
        {
            let mut addrs = self.bound.lock().expect("bound");
            for (transport, addr) in [
                (Transport::Udp, bound.udp),
                (Transport::Tcp, bound.tcp),
                (Transport::Tls, bound.tls),
            ] {
                if let Some(addr) = addr {
                    addrs.insert(transport, addr);
                }
            }
        }
        Ok((bound, tasks))
    }

    fn local_addr(&self, transport: Transport) -> Option<SocketAddr> {
        self.bound.lock().expect("bound").get(&transport).copied()
    }

    /// Where the edge says it is, for the Via and Contact of what it sends over `flow`.
    pub fn sent_by(&self, flow: Flow) -> String {
        let listen = self.local_addr(flow.transport);
        let ip = match listen.map(|a| a.ip()) {
            Some(ip) if !ip.is_unspecified() => ip,
            _ => local_ip_toward(flow.addr),
        };
        let port = listen.map_or(5060, |a| a.port());
        SocketAddr::new(ip, port).to_string()
    }

    /// Sends `bytes` over `flow`: the UDP socket, the flow's open connection, or (TCP only) a
    /// new connection to it. Failures are logged: SIP's timers deal with lost messages.
    pub async fn send(self: &Arc<Self>, flow: Flow, bytes: &[u8]) {
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
                    match writer.try_send(bytes.to_vec()) {
                        Ok(()) => return,
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            // The phone does not read what it is sent: the connection is given up
                            // rather than queueing without bound.
                            metrics::counter!("switchyard_sip_refused_total", "reason" => "write-queue-full")
                                .increment(1);
                            tracing::info!(to = %flow.addr, "SIP: the phone reads nothing; dropping its connection");
                            self.forget_stream(flow.addr, &writer);
                            return;
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => {}
                    }
                }
                if flow.transport == Transport::Tls {
                    tracing::info!(to = %flow.addr, "SIP: no open TLS connection to the phone");
                    return;
                }
                let Some(handler) = self.handler.get().and_then(Weak::upgrade) else {
                    // The edge is gone: the process is stopping.
                    return;
                };
                match tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(flow.addr))
                    .await
                {
                    Ok(Ok(stream)) => {
                        let writer =
                            spawn_stream(self.clone(), handler, stream, flow.addr, Transport::Tcp);
                        let _ = writer.try_send(bytes.to_vec());
                    }
                    _ => {
                        tracing::info!(to = %flow.addr, "SIP: cannot connect to the phone over TCP")
                    }
                }
            }
        }
    }
}

/// The local address the system would send from to reach `peer` (no packet is sent).
pub fn local_ip_toward(peer: SocketAddr) -> std::net::IpAddr {
    let unspecified: SocketAddr = if peer.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    std::net::UdpSocket::bind(unspecified)
        .and_then(|s| {
            s.connect(peer)?;
            s.local_addr()
        })
        .map(|a| a.ip())
        .unwrap_or(unspecified.ip())
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

async fn serve_udp(handler: Arc<dyn Handler>, socket: Arc<UdpSocket>) {
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
        let (handler, socket) = (handler.clone(), socket.clone());
        tokio::spawn(async move {
            if let Some(answer) = handler.handle(bytes, source, Transport::Udp).await {
                if let Err(e) = socket.send_to(&answer, source).await {
                    tracing::debug!(%source, error = %e, "SIP UDP send failed");
                }
            }
        });
    }
}

/// Accepts connections, each served by a task of its own (after its TLS handshake, for TLS).
async fn serve_tcp(
    sockets: Arc<Sockets>,
    handler: Arc<dyn Handler>,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, source)) => {
                let (sockets, handler) = (sockets.clone(), handler.clone());
                match tls.clone() {
                    None => {
                        spawn_stream(sockets, handler, stream, source, Transport::Tcp);
                    }
                    Some(acceptor) => {
                        tokio::spawn(async move {
                            match tokio::time::timeout(TLS_HANDSHAKE, acceptor.accept(stream)).await
                            {
                                Ok(Ok(stream)) => {
                                    spawn_stream(sockets, handler, stream, source, Transport::Tls);
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
    sockets: Arc<Sockets>,
    handler: Arc<dyn Handler>,
    stream: S,
    peer: SocketAddr,
    transport: Transport,
) -> mpsc::Sender<Vec<u8>> {
    let (reader, mut writer) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(sockets.write_queue);
    sockets
        .streams
        .lock()
        .expect("streams")
        .insert(peer, tx.clone());
    tokio::spawn(async move {
        while let Some(bytes) = rx.recv().await {
            match tokio::time::timeout(WRITE_STALL, writer.write_all(&bytes)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return,
                Err(_) => {
                    tracing::info!(%peer, "SIP: a write stalled; closing the connection");
                    return;
                }
            }
        }
    });
    let answers = tx.clone();
    let registered = tx.clone();
    tokio::spawn(async move {
        let max_message_bytes = sockets.max_message_bytes;
        read_stream(handler, max_message_bytes, reader, peer, transport, answers).await;
        sockets.forget_stream(peer, &registered);
    });
    tx
}

/// Reads messages off a connection and answers each in order through `answers`.
async fn read_stream<R: AsyncRead + Unpin>(
    handler: Arc<dyn Handler>,
    max_message_bytes: usize,
    mut reader: R,
    source: SocketAddr,
    transport: Transport,
    answers: mpsc::Sender<Vec<u8>>,
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
        while let Some(framed) = framer.next(max_message_bytes) {
            let answer = match framed {
                Framed::Message(message) => {
                    handler.clone().handle(message, source, transport).await
                }
                Framed::Ping => Some(b"\r\n".to_vec()),
                Framed::Broken(why) => {
                    tracing::info!(%source, why, transport = transport.as_str(), "SIP connection closed");
                    return;
                }
            };
            if let Some(answer) = answer {
                // A client that sends but never reads fills its queue: it is cut off.
                if answers.try_send(answer).is_err() {
                    tracing::info!(%source, "SIP: the peer reads no answers; closing the connection");
                    return;
                }
            }
        }
    }
}
