//! A datagram `Conn` backed by channels, for running DTLS over the shared media port.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::{mpsc, watch, Mutex};
use webrtc_util::Conn;

/// Placeholder address reported by [`PacketConn`] when no address was given (`0.0.0.0:0`).
const UNSPECIFIED: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));

/// The UDP shell's ends of a [`PacketConn`].
#[derive(Debug)]
pub struct PacketConnShell {
    /// Push every datagram the demux classifies as DTLS (first byte 20..=63, RFC 7983) here.
    pub inbound_tx: mpsc::Sender<Vec<u8>>,
    /// Datagrams DTLS wants sent; send each, unchanged, to the currently selected remote address.
    pub outbound_rx: mpsc::Receiver<Vec<u8>>,
}

/// A virtual datagram connection for DTLS, backed by channels.
///
/// `recv` yields datagrams the UDP shell pushes into [`PacketConnShell::inbound_tx`]; `send` puts
/// datagrams on [`PacketConnShell::outbound_rx`] for the shell to transmit. The shell owns the
/// socket and the choice of remote address, so DTLS never sees addresses and a path change mid-call
/// is invisible to it.
///
/// Address semantics: `local_addr()` and `remote_addr()` return whatever was given to
/// [`PacketConn::with_addrs`] (by default `0.0.0.0:0` and `None`). They are informational only:
/// the DTLS stack uses `remote_addr()` solely to default its server name, which
/// [`super::SecureChannel`] always sets explicitly. `send_to` ignores its target and `connect` is a
/// no-op, because the shell decides where datagrams go; `recv_from` reports the configured remote
/// placeholder (or `0.0.0.0:0`), not the real source of the datagram.
///
/// Backpressure: `send` waits for room in the outbound channel rather than dropping, so a stalled
/// shell stalls DTLS writes. A datagram longer than the receive buffer is truncated, as UDP would.
///
/// Closing: [`Conn::close`] (called by the DTLS layer when the channel closes) makes pending and
/// later `recv`/`send` calls fail. When the shell drops `inbound_tx`, `recv` reports the connection
/// closed once, then stays pending: the DTLS reader loop retries failed reads at once, so failing
/// forever would spin; it is cancelled when the DTLS connection is closed or dropped.
pub struct PacketConn {
    inbound: Mutex<mpsc::Receiver<Vec<u8>>>,
    outbound: mpsc::Sender<Vec<u8>>,
    local: SocketAddr,
    remote: Option<SocketAddr>,
    closed: watch::Sender<bool>,
    close_reported: AtomicBool,
}

impl std::fmt::Debug for PacketConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PacketConn")
            .field("local", &self.local)
            .field("remote", &self.remote)
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

impl PacketConn {
    /// A conn whose channels each hold up to `capacity` datagrams (at least 1), with placeholder
    /// addresses.
    pub fn new(capacity: usize) -> (Arc<PacketConn>, PacketConnShell) {
        Self::with_addrs(capacity, UNSPECIFIED, None)
    }

    /// Like [`PacketConn::new`], reporting `local` and `remote` from `local_addr()`/`remote_addr()`
    /// (for logs; they do not steer anything).
    pub fn with_addrs(
        capacity: usize,
        local: SocketAddr,
        remote: Option<SocketAddr>,
    ) -> (Arc<PacketConn>, PacketConnShell) {
        let capacity = capacity.max(1);
        let (inbound_tx, inbound_rx) = mpsc::channel(capacity);
        let (outbound_tx, outbound_rx) = mpsc::channel(capacity);
        let conn = Arc::new(PacketConn {
            inbound: Mutex::new(inbound_rx),
            outbound: outbound_tx,
            local,
            remote,
            closed: watch::Sender::new(false),
            close_reported: AtomicBool::new(false),
        });
        (
            conn,
            PacketConnShell {
                inbound_tx,
                outbound_rx,
            },
        )
    }

    /// Whether `close` was called.
    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    fn closed_error() -> webrtc_util::Error {
        webrtc_util::Error::ErrUseClosedNetworkConn
    }

    /// Report "closed" once, then never complete (see the type's docs).
    async fn closed_recv(&self) -> webrtc_util::Result<usize> {
        if self.close_reported.swap(true, Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        Err(Self::closed_error())
    }
}

#[async_trait]
impl Conn for PacketConn {
    async fn connect(&self, _addr: SocketAddr) -> webrtc_util::Result<()> {
        Ok(())
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        let mut closed = self.closed.subscribe();
        if *closed.borrow_and_update() {
            return self.closed_recv().await;
        }
        let mut inbound = self.inbound.lock().await;
        let datagram = tokio::select! {
            d = inbound.recv() => d,
            _ = closed.wait_for(|c| *c) => None,
        };
        drop(inbound);
        match datagram {
            Some(d) => {
                let n = d.len().min(buf.len());
                if n < d.len() {
                    tracing::debug!(len = d.len(), buf = buf.len(), "DTLS datagram truncated");
                }
                buf[..n].copy_from_slice(&d[..n]);
                Ok(n)
            }
            None => self.closed_recv().await,
        }
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        let n = self.recv(buf).await?;
        Ok((n, self.remote.unwrap_or(UNSPECIFIED)))
    }

    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        if self.is_closed() {
            return Err(Self::closed_error());
        }
        self.outbound
            .send(buf.to_vec())
            .await
            .map_err(|_| Self::closed_error())?;
        Ok(buf.len())
    }

    async fn send_to(&self, buf: &[u8], _target: SocketAddr) -> webrtc_util::Result<usize> {
        self.send(buf).await
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.local)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        self.remote
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        self.closed.send_replace(true);
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}
