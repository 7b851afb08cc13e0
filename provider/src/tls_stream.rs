//! Server-side TLS for the HTTP listeners, over rustls' unbuffered API
//! ([`rustls::server::UnbufferedServerConnection`]): rustls does the handshake, the record
//! layer and every check, as with `tokio-rustls`; this module only owns the buffers and moves
//! bytes between them and the socket.
//!
//! Why not `tokio-rustls`: rustls' buffered connection keeps a 4 KiB record buffer from its
//! first read for as long as the connection lives (rustls 0.23 sizes it to `used + 4096` before
//! every read and never below). An idle push WebSocket spends most of its life between records,
//! and 100,000 of them held 400 MB of empty buffers (`docs/benchmarks.md`, "Memory per idle push
//! WebSocket"). Here every buffer is freed as soon as it is empty: received bytes are read into
//! a buffer on the stack and kept only while a record is incomplete, decrypted bytes until the
//! reader took them, encrypted bytes until the socket took them.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, InsufficientSizeError,
    UnbufferedStatus, WriteTraffic,
};
use rustls::{CommonState, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes read from the socket at once (on the stack): a whole record of the largest size.
const READ_CHUNK: usize = 5 + 16 * 1024 + 256;

/// Plaintext taken by one write: one record's worth, so that at most about one record of
/// encrypted bytes waits for the socket.
const WRITE_CHUNK: usize = 16 * 1024;

/// The most received bytes held unprocessed after the handshake: one record of the largest size
/// rustls takes (a header and 18 KiB), as its buffered connection holds. A client cannot make the
/// server keep more by leaving a record incomplete.
const MAX_RECORD: usize = 5 + 16 * 1024 + 2048;

/// The most held during the handshake, while rustls joins a handshake message that spans records
/// (a client's certificate chain): 64 KiB, as its buffered connection allows.
const MAX_HANDSHAKE_MESSAGE: usize = 0xffff;

/// A server-side TLS connection over `S`, after its handshake ([`TlsStream::accept`]).
pub struct TlsStream<S> {
    io: S,
    conn: UnbufferedServerConnection,
    /// Received TLS bytes not yet processed: part of a record (or of a handshake message).
    incoming: Vec<u8>,
    /// Encoded TLS bytes not yet written, from `sent` on.
    outgoing: Vec<u8>,
    sent: usize,
    /// Decrypted bytes not yet read, from `plaintext_read` on.
    plaintext: Vec<u8>,
    plaintext_read: usize,
    /// The peer sent close_notify: reads end.
    peer_closed: bool,
    /// The socket's read side ended.
    eof: bool,
    /// close_notify is queued: no more writes.
    closing: bool,
    /// What ended the connection; the alert rustls queued for the peer goes out first.
    failed: Option<rustls::Error>,
}

/// What [`TlsStream::drive`] is asked to do once rustls lets application data be written.
enum Want<'a> {
    Nothing,
    Write(&'a [u8]),
    Close,
}

/// Where [`TlsStream::drive`] stopped.
#[derive(Debug, PartialEq, Eq)]
enum Reached {
    /// The handshake needs more bytes from the peer.
    NeedData,
    /// Application data may be written (the handshake may still wait for the client's last
    /// flight: see `is_handshaking`).
    Traffic,
    /// Both sides sent close_notify.
    Closed,
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream<S> {
    /// Runs the server side of a TLS handshake on `io` with `config`.
    pub async fn accept(io: S, config: Arc<ServerConfig>) -> io::Result<Self> {
        let mut tls = Self::new(io, config)?;
        std::future::poll_fn(|cx| tls.poll_handshake(cx)).await?;
        Ok(tls)
    }

    fn new(io: S, config: Arc<ServerConfig>) -> io::Result<Self> {
        Ok(TlsStream {
            io,
            conn: UnbufferedServerConnection::new(config).map_err(tls_error)?,
            incoming: Vec::new(),
            outgoing: Vec::new(),
            sent: 0,
            plaintext: Vec::new(),
            plaintext_read: 0,
            peer_closed: false,
            eof: false,
            closing: false,
            failed: None,
        })
    }

    /// The connection's negotiated state: the client's certificates, the ALPN protocol, ….
    pub fn session(&self) -> &CommonState {
        &self.conn
    }

    /// The socket under the TLS.
    pub fn get_ref(&self) -> &S {
        &self.io
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let reached = self.drive(Want::Nothing);
            ready!(self.poll_send(cx))?;
            if let Some(e) = &self.failed {
                return Poll::Ready(Err(tls_error(e.clone())));
            }
            if reached == Some(Reached::Traffic) && !self.conn.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            if self.eof || self.peer_closed || reached == Some(Reached::Closed) {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "tls handshake eof",
                )));
            }
            ready!(self.poll_receive(cx))?;
        }
    }

    /// Lets rustls process what was received and queue what it has to send, until it needs
    /// more bytes or lets application data be written (then does what `want` asks). None once
    /// the connection failed (`failed`).
    fn drive(&mut self, mut want: Want<'_>) -> Option<Reached> {
        if self.failed.is_some() {
            return None;
        }
        loop {
            let UnbufferedStatus { mut discard, state } =
                self.conn.process_tls_records(&mut self.incoming);
            let step = match state {
                Err(e) => Err(e),
                Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                    let mut step = Ok(None);
                    while let Some(record) = traffic.next_record() {
                        match record {
                            Ok(record) => {
                                discard += record.discard;
                                self.plaintext.extend_from_slice(record.payload);
                            }
                            Err(e) => {
                                step = Err(e);
                                break;
                            }
                        }
                    }
                    step
                }
                Ok(ConnectionState::PeerClosed) => {
                    self.peer_closed = true;
                    Ok(None)
                }
                Ok(ConnectionState::Closed) => {
                    self.peer_closed = true;
                    Ok(Some(Reached::Closed))
                }
                Ok(ConnectionState::EncodeTlsData(mut data)) => {
                    encode_into(&mut self.outgoing, &mut data).map(|()| None)
                }
                // What was encoded is in `outgoing`, which goes out in order before anything
                // encoded after it.
                Ok(ConnectionState::TransmitTlsData(data)) => {
                    data.done();
                    Ok(None)
                }
                Ok(ConnectionState::BlockedHandshake) => Ok(Some(Reached::NeedData)),
                Ok(ConnectionState::WriteTraffic(mut traffic)) => {
                    match std::mem::replace(&mut want, Want::Nothing) {
                        Want::Nothing => Ok(()),
                        Want::Write(data) => encrypt_into(&mut self.outgoing, &mut traffic, data),
                        Want::Close => close_notify_into(&mut self.outgoing, &mut traffic),
                    }
                    .map(|()| Some(Reached::Traffic))
                }
                // The listeners' configurations accept no early data (`max_early_data_size` is
                // 0), so rustls never offers it.
                Ok(ConnectionState::ReadEarlyData(_)) => {
                    Err(rustls::Error::General("unexpected early data".to_string()))
                }
                Ok(other) => Err(rustls::Error::General(format!(
                    "unexpected TLS state {other:?}"
                ))),
            };
            self.discard(discard);
            match step {
                Ok(Some(reached)) => return Some(reached),
                Ok(None) => {}
                Err(e) => {
                    self.fail(e);
                    return None;
                }
            }
        }
    }

    /// Records `error`, after queueing the alert rustls has for the peer, if any.
    fn fail(&mut self, error: rustls::Error) {
        // The alert is the one message queued since `drive` last asked: rustls hands it out
        // before it looks at `incoming` again (which must be given as it stands: its handshake
        // deframer refers to positions in it). Asked once only: looking again would process the
        // bytes that failed a second time.
        let UnbufferedStatus { discard, state } = self.conn.process_tls_records(&mut self.incoming);
        if let Ok(ConnectionState::EncodeTlsData(mut data)) = state {
            let _ = encode_into(&mut self.outgoing, &mut data);
        }
        self.discard(discard);
        self.failed = Some(error);
    }

    /// Drops `n` processed bytes from the front of `incoming`; frees it once empty.
    fn discard(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        if n >= self.incoming.len() {
            self.incoming = Vec::new();
        } else {
            self.incoming.drain(..n);
        }
    }

    /// Reads what the socket has into `incoming` (or notes its end in `eof`), never past its
    /// limit: what rustls left there is a part it cannot process yet, so a full buffer is a
    /// message larger than the limit.
    fn poll_receive(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let limit = if self.conn.is_handshaking() {
            MAX_HANDSHAKE_MESSAGE
        } else {
            MAX_RECORD
        };
        let room = limit.saturating_sub(self.incoming.len()).min(READ_CHUNK);
        if room == 0 {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "TLS message too large",
            )));
        }
        let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut buf = ReadBuf::uninit(&mut chunk[..room]);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf))?;
        if buf.filled().is_empty() {
            self.eof = true;
        } else {
            // Exactly: `extend_from_slice` alone may double the capacity past the limit.
            self.incoming.reserve_exact(buf.filled().len());
            self.incoming.extend_from_slice(buf.filled());
        }
        Poll::Ready(Ok(()))
    }

    /// Writes `outgoing` to the socket; frees it once all is written.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.outgoing.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.outgoing[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        if self.outgoing.capacity() > 0 {
            self.outgoing = Vec::new();
            self.sent = 0;
        }
        Poll::Ready(Ok(()))
    }

    /// After a failure: sends the alert (so the client learns why), then gives the error.
    fn poll_failed(&mut self, cx: &mut Context<'_>) -> Option<Poll<io::Error>> {
        let error = tls_error(self.failed.clone()?);
        Some(match self.poll_send(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(_) => Poll::Ready(error),
        })
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.plaintext_read < this.plaintext.len() {
                let available = &this.plaintext[this.plaintext_read..];
                let n = available.len().min(buf.remaining());
                buf.put_slice(&available[..n]);
                this.plaintext_read += n;
                if this.plaintext_read == this.plaintext.len() {
                    this.plaintext = Vec::new();
                    this.plaintext_read = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if let Some(poll) = this.poll_failed(cx) {
                return poll.map(Err);
            }
            if this.peer_closed {
                return Poll::Ready(Ok(()));
            }
            // No writing to the socket here (bar a failure's alert): it keeps one write waker,
            // and a reader's would replace that of a writer waiting in another task, which
            // would then never wake. Nothing reading queues is needed before the peer sends on
            // (rustls sends a key update's answer with the next data); a write or flush sends it.
            if this.eof {
                // As tokio-rustls: the peer closed the socket without close_notify.
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed connection without sending TLS close_notify",
                )));
            }
            ready!(this.poll_receive(cx))?;
            this.drive(Want::Nothing);
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(poll) = this.poll_failed(cx) {
            return poll.map(Err);
        }
        // What an earlier write encrypted goes first: at most one write's worth waits.
        ready!(this.poll_send(cx))?;
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.closing {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "TLS close_notify already sent",
            )));
        }
        let n = data.len().min(WRITE_CHUNK);
        match this.drive(Want::Write(&data[..n])) {
            Some(Reached::Traffic) => {}
            Some(_) => {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    "TLS connection not open for writing",
                )))
            }
            None => return this.poll_failed(cx).expect("failed").map(Err),
        }
        // Sent now as far as the socket takes it; the rest before the next write or flush.
        if let Poll::Ready(Err(e)) = this.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.closing && this.failed.is_none() {
            this.closing = true;
            this.drive(Want::Close);
        }
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

/// Lets `write` fill up to `size` more bytes at the end of `out`, and keeps what it wrote
/// (nothing when it fails).
fn append_with<E>(
    out: &mut Vec<u8>,
    size: usize,
    write: impl FnOnce(&mut [u8]) -> Result<usize, E>,
) -> Result<(), E> {
    let start = out.len();
    out.resize(start + size, 0);
    let written = write(&mut out[start..]);
    out.truncate(start + *written.as_ref().unwrap_or(&0));
    written.map(|_| ())
}

/// Appends the handshake record (or alert) rustls has ready to `out`.
fn encode_into<D>(out: &mut Vec<u8>, data: &mut EncodeTlsData<'_, D>) -> Result<(), rustls::Error> {
    let size = match data.encode(&mut []) {
        Ok(_) => return Ok(()),
        Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
            required_size
        }
        Err(e) => return Err(rustls::Error::General(e.to_string())),
    };
    append_with(out, size, |buf| data.encode(buf))
        .map_err(|e| rustls::Error::General(e.to_string()))
}

/// Appends `data`, encrypted, to `out`.
fn encrypt_into<D>(
    out: &mut Vec<u8>,
    traffic: &mut WriteTraffic<'_, D>,
    data: &[u8],
) -> Result<(), rustls::Error> {
    // Room for the records' headers, content types and tags (22 to 29 bytes a record).
    let mut size = data.len() + 64 * (data.len() / (16 * 1024) + 1);
    loop {
        match append_with(out, size, |buf| traffic.encrypt(data, buf)) {
            Ok(()) => return Ok(()),
            Err(EncryptError::InsufficientSize(InsufficientSizeError { required_size }))
                if required_size > size =>
            {
                size = required_size
            }
            Err(EncryptError::EncryptExhausted) => return Err(rustls::Error::EncryptError),
            Err(e) => return Err(rustls::Error::General(e.to_string())),
        }
    }
}

/// Appends a close_notify alert to `out`.
fn close_notify_into<D>(
    out: &mut Vec<u8>,
    traffic: &mut WriteTraffic<'_, D>,
) -> Result<(), rustls::Error> {
    // A record header, the alert, its content type and a tag: well under 64 bytes.
    append_with(out, 64, |buf| traffic.queue_close_notify(buf))
        .map_err(|e| rustls::Error::General(e.to_string()))
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct Pki {
        ca: CertificateDer<'static>,
        server: (CertificateDer<'static>, PrivateKeyDer<'static>),
        client: (CertificateDer<'static>, PrivateKeyDer<'static>),
    }

    fn pki() -> Pki {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf = |name: &str| {
            let key = rcgen::KeyPair::generate().unwrap();
            let params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
            let cert = params.signed_by(&key, &issuer).unwrap();
            (
                cert.der().clone(),
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
        };
        Pki {
            ca: ca.der().clone(),
            server: leaf("server.test"),
            client: leaf("client.test"),
        }
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn roots(pki: &Pki) -> Arc<rustls::RootCertStore> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki.ca.clone()).unwrap();
        Arc::new(roots)
    }

    fn server_config(
        pki: &Pki,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Arc<ServerConfig> {
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots(pki), provider())
                .build()
                .unwrap();
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![pki.server.0.clone()], pki.server.1.clone_key())
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }

    fn connector(pki: &Pki, with_cert: bool) -> tokio_rustls::TlsConnector {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots(pki));
        let mut config = if with_cert {
            builder
                .with_client_auth_cert(vec![pki.client.0.clone()], pki.client.1.clone_key())
                .unwrap()
        } else {
            builder.with_no_client_auth()
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }

    fn name() -> ServerName<'static> {
        ServerName::try_from("server.test").unwrap()
    }

    #[tokio::test]
    async fn data_goes_both_ways_and_the_buffers_are_freed_when_idle() {
        for versions in [
            &[&rustls::version::TLS13][..],
            &[&rustls::version::TLS12][..],
        ] {
            let pki = pki();
            let (client_io, server_io) = tokio::io::duplex(4096);
            let config = server_config(&pki, versions);
            let server = tokio::spawn(async move {
                let mut tls = TlsStream::accept(server_io, config).await.unwrap();
                let session = tls.session();
                assert_eq!(session.peer_certificates().unwrap().len(), 1);
                assert_eq!(session.alpn_protocol(), Some(&b"http/1.1"[..]));
                // Echoes what it reads, in small reads, until close_notify.
                let mut buf = [0u8; 1000];
                loop {
                    let n = tls.read(&mut buf).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    tls.write_all(&buf[..n]).await.unwrap();
                    tls.flush().await.unwrap();
                }
                assert_eq!(
                    (
                        tls.incoming.capacity(),
                        tls.outgoing.capacity(),
                        tls.plaintext.capacity()
                    ),
                    (0, 0, 0),
                    "nothing held between records"
                );
                tls.shutdown().await.unwrap();
            });
            let mut client = connector(&pki, true)
                .connect(name(), client_io)
                .await
                .unwrap();
            let sent: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
            let (mut read, mut write) = tokio::io::split(&mut client);
            let writer = async {
                write.write_all(&sent).await.unwrap();
                write.flush().await.unwrap();
            };
            let mut echoed = vec![0u8; sent.len()];
            let reader = read.read_exact(&mut echoed);
            let ((), got) = tokio::join!(writer, reader);
            got.unwrap();
            assert!(echoed == sent, "{versions:?}: echoed in order");
            client.shutdown().await.unwrap();
            let mut rest = Vec::new();
            client.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty());
            server.await.unwrap();
        }
    }

    fn assert_read_buffer_within(tls: &TlsStream<tokio::io::DuplexStream>, limit: usize) {
        let held = tls.incoming.capacity();
        assert!(held <= limit, "{held} bytes held, more than {limit}");
    }

    /// A server and a client (its socket reachable with `get_mut().0`) after their handshake.
    async fn connected(
        pki: &Pki,
    ) -> (
        TlsStream<tokio::io::DuplexStream>,
        tokio_rustls::client::TlsStream<tokio::io::DuplexStream>,
    ) {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let config = server_config(pki, &[&rustls::version::TLS13]);
        let (server, client) = tokio::join!(
            TlsStream::accept(server_io, config),
            connector(pki, true).connect(name(), client_io)
        );
        (server.unwrap(), client.unwrap())
    }

    #[tokio::test]
    async fn after_the_handshake_the_read_buffer_holds_at_most_one_record() {
        let pki = pki();
        let (mut tls, mut client) = connected(&pki).await;
        // An application data record of the largest size rustls takes, all but its last byte:
        // what a client can make the server hold.
        let mut record = vec![0x17, 0x03, 0x03];
        record.extend_from_slice(&((MAX_RECORD - 5 - 1) as u16).to_be_bytes());
        record.resize(MAX_RECORD - 2, 0);
        client.get_mut().0.write_all(&record).await.unwrap();
        let read = tokio::time::timeout(
            std::time::Duration::from_millis(200),
            tls.read(&mut [0u8; 10]),
        )
        .await;
        assert!(read.is_err(), "the record is incomplete: {read:?}");
        assert_read_buffer_within(&tls, MAX_RECORD);
    }

    #[tokio::test]
    async fn the_handshake_holds_at_most_64_kib_of_a_message() {
        let pki = pki();
        let (mut client_io, server_io) = tokio::io::duplex(128 * 1024);
        let mut tls =
            TlsStream::new(server_io, server_config(&pki, &[&rustls::version::TLS13])).unwrap();
        // A ClientHello announcing 64 KiB - 1, in records of 16 KiB that rustls joins.
        let mut raw = Vec::new();
        for i in 0..4 {
            raw.extend_from_slice(&[0x16, 0x03, 0x01, 0x40, 0x00]);
            let start = raw.len();
            raw.resize(start + 16 * 1024, 0);
            if i == 0 {
                raw[start..start + 4].copy_from_slice(&[0x01, 0x00, 0xff, 0xff]);
            }
        }
        client_io.write_all(&raw).await.unwrap();
        let handshake = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            std::future::poll_fn(|cx| tls.poll_handshake(cx)),
        )
        .await
        .expect("refused, not waiting for more");
        assert_eq!(
            handshake.unwrap_err().kind(),
            io::ErrorKind::InvalidData,
            "too large"
        );
        assert_read_buffer_within(&tls, MAX_HANDSHAKE_MESSAGE);
    }

    #[tokio::test]
    async fn reading_does_not_take_the_wakeup_of_a_blocked_writer() {
        let pki = pki();
        let (tls, mut client) = connected(&pki).await;
        // Reader and writer in separate tasks, as with `tokio::io::split`: the socket keeps
        // one waker a direction.
        let (mut read, mut write) = tokio::io::split(tls);
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 100];
            while read.read(&mut buf).await.unwrap() > 0 {}
        });
        let sent: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let to_send = sent.clone();
        let writer = tokio::spawn(async move {
            write.write_all(&to_send).await.unwrap();
            write.flush().await.unwrap();
        });
        // The writer waits for the client to read; the reader reads on meanwhile.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        client.write_all(b"ping").await.unwrap();
        client.flush().await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let mut got = vec![0u8; sent.len()];
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            client.read_exact(&mut got),
        )
        .await
        .expect("the writer went on")
        .unwrap();
        assert!(got == sent);
        writer.await.unwrap();
        reader.abort();
    }

    #[tokio::test]
    async fn a_key_update_the_client_asks_for_is_answered_before_the_next_data() {
        let pki = pki();
        let (mut tls, mut client) = connected(&pki).await;
        client.get_mut().1.refresh_traffic_keys().unwrap();
        client.write_all(b"ping").await.unwrap();
        client.flush().await.unwrap();
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        tls.write_all(b"pong").await.unwrap();
        tls.flush().await.unwrap();
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong", "read with the client's new keys");
    }

    #[tokio::test]
    async fn a_client_without_a_certificate_is_refused_with_an_alert() {
        let pki = pki();
        let (client_io, server_io) = tokio::io::duplex(4096);
        let config = server_config(&pki, &[&rustls::version::TLS13]);
        let server = tokio::spawn(async move { TlsStream::accept(server_io, config).await });
        let mut client = connector(&pki, false)
            .connect(name(), client_io)
            .await
            .unwrap();
        // TLS 1.3: the client learns of the refusal on its first read.
        let err = client.read(&mut [0u8; 10]).await.unwrap_err();
        assert!(
            err.to_string().contains("CertificateRequired"),
            "the alert reached the client: {err}"
        );
        let err = server.await.unwrap().err().expect("refused");
        assert!(err.to_string().contains("certificate"), "{err}");
    }

    #[tokio::test]
    async fn an_unclean_end_is_an_error_and_garbage_fails_the_connection() {
        let pki = pki();
        let (client_io, server_io) = tokio::io::duplex(4096);
        let config = server_config(&pki, &[&rustls::version::TLS13]);
        let (accepted, handshake_done) = tokio::sync::oneshot::channel();
        let server = tokio::spawn(async move {
            let mut tls = TlsStream::accept(server_io, config).await.unwrap();
            accepted.send(()).unwrap();
            let mut buf = [0u8; 10];
            tls.read(&mut buf).await
        });
        let client = connector(&pki, true)
            .connect(name(), client_io)
            .await
            .unwrap();
        handshake_done.await.unwrap();
        drop(client);
        let err = server.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);

        let (mut client_io, server_io) = tokio::io::duplex(4096);
        let config = server_config(&pki, &[&rustls::version::TLS13]);
        let server = tokio::spawn(async move { TlsStream::accept(server_io, config).await });
        client_io
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let err = server.await.unwrap().err().expect("not TLS");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    }
}
