//! Datagrams queued by one task and read by another as if from a socket: how the relayed
//! connections (the TURN client's view of the shared media port, the HTTP relay tunnel) hand
//! what arrives to their `Conn::recv_from`.

use std::net::SocketAddr;

use tokio::sync::{mpsc, Mutex};

/// The reading end of a queue of `(datagram, source)` pairs.
pub struct DatagramInbox(Mutex<mpsc::Receiver<(Vec<u8>, SocketAddr)>>);

impl DatagramInbox {
    pub fn new(queue: mpsc::Receiver<(Vec<u8>, SocketAddr)>) -> Self {
        DatagramInbox(Mutex::new(queue))
    }

    /// The next datagram copied into `buf` (truncated to it, as UDP would) and its source; the
    /// connection is closed once every sender is gone.
    pub async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        match self.0.lock().await.recv().await {
            Some((datagram, from)) => {
                let n = datagram.len().min(buf.len());
                buf[..n].copy_from_slice(&datagram[..n]);
                Ok((n, from))
            }
            None => Err(webrtc_util::Error::ErrUseClosedNetworkConn),
        }
    }
}
