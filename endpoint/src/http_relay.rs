//! The endpoint's side of the provider's HTTP relay: an allocation reached over HTTPS, for
//! networks that let no UDP out. Over a WebSocket (`GET /v1/media-relay`), or, where upgrades
//! are blocked too, over long-polls (`POST /v1/media-relay`, then `.../send` and `.../recv`).
//! Either way it is a `webrtc_util::Conn`, so the media session uses it like any relayed socket;
//! DTLS and SRTP run end to end inside it. Frames are encoded and decoded by
//! [`switchyard_protocol::relay_frame`], as on the provider's side.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::{SinkExt, StreamExt};
use switchyard_media::inbox::DatagramInbox;
use switchyard_protocol::relay_frame::{
    append_length_prefixed, split_length_prefixed, Datagram, Frame,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use webrtc_util::Conn;

use crate::client::{ClientError, EndpointClient};

/// How long one long-poll waits for data before it is asked again.
const POLL_WAIT_MS: u64 = 20_000;
/// Most bytes of datagrams one long-poll send carries (within the endpoint API's default body
/// limit of 64 KiB).
const SEND_BATCH_BYTES: usize = 48 * 1024;

/// How the tunnel reaches the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum TunnelMode {
    WebSocket,
    LongPoll,
}

/// A DATA frame's payload and source, as the inbox takes them; other frames are dropped.
fn inbound_datagram(frame: &[u8]) -> Option<(Vec<u8>, SocketAddr)> {
    match Datagram::decode(frame) {
        Ok(datagram) => Some((datagram.payload().to_vec(), datagram.peer())),
        Err(e) => {
            tracing::debug!(error = %e, "HTTP relay: a malformed frame from the provider dropped");
            None
        }
    }
}

/// An allocation at the provider's HTTP relay. Sending only queues the frame: a writer task
/// carries it (over the WebSocket, or batched into long-poll sends), so a slow HTTP round trip
/// never holds up the media loop, as sending on a UDP socket would not.
pub struct HttpRelayConn {
    address: SocketAddr,
    outbound: mpsc::UnboundedSender<Vec<u8>>,
    /// For long-polls: how to free the allocation on close.
    delete: Option<(reqwest::Client, String)>,
    inbound: DatagramInbox,
    tasks: Vec<JoinHandle<()>>,
}

impl HttpRelayConn {
    /// Opens an allocation at `client`'s provider.
    pub async fn open(
        client: &EndpointClient,
        mode: TunnelMode,
    ) -> Result<Arc<HttpRelayConn>, ClientError> {
        match mode {
            TunnelMode::WebSocket => Self::open_websocket(client).await,
            TunnelMode::LongPoll => Self::open_long_poll(client).await,
        }
    }

    async fn open_websocket(client: &EndpointClient) -> Result<Arc<HttpRelayConn>, ClientError> {
        let url = format!(
            "{}/v1/media-relay",
            client.identity.provider.replacen("https://", "wss://", 1)
        );
        let (socket, _) = tokio_tungstenite::connect_async_tls_with_config(
            url.into_client_request()?,
            None,
            false,
            Some(tokio_tungstenite::Connector::Rustls(client.tls_config())),
        )
        .await?;
        let (mut sink, mut stream) = socket.split();
        let address = loop {
            match stream.next().await {
                Some(Ok(Message::Binary(frame))) => match Frame::decode(&frame) {
                    Ok(Frame::Allocated(address)) => break address,
                    Ok(Frame::Data(_)) => {
                        return Err(ClientError::Protocol("expected ALLOCATED, got DATA".into()))
                    }
                    Err(e) => {
                        return Err(ClientError::Protocol(format!(
                            "a malformed frame where ALLOCATED was expected: {e}"
                        )))
                    }
                },
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(other)) => {
                    return Err(ClientError::Protocol(format!(
                        "expected ALLOCATED, got {other:?}"
                    )))
                }
                Some(Err(e)) => return Err(e.into()),
                None => {
                    return Err(ClientError::Protocol(
                        "the relay closed before allocating".into(),
                    ))
                }
            }
        };
        let (inbound_tx, inbound) = mpsc::channel(1024);
        let (outbound, mut outbound_rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let reader = tokio::spawn(async move {
            while let Some(Ok(message)) = stream.next().await {
                if let Message::Binary(frame) = message {
                    if let Some(datagram) = inbound_datagram(&frame) {
                        // Full: drop, as a congested UDP path would.
                        let _ = inbound_tx.try_send(datagram);
                    }
                }
            }
        });
        let writer = tokio::spawn(async move {
            while let Some(frame) = outbound_rx.recv().await {
                if sink.send(Message::Binary(frame.into())).await.is_err() {
                    return;
                }
            }
            let _ = sink.close().await;
        });
        Ok(Arc::new(HttpRelayConn {
            address,
            outbound,
            delete: None,
            inbound: DatagramInbox::new(inbound),
            tasks: vec![reader, writer],
        }))
    }

    async fn open_long_poll(client: &EndpointClient) -> Result<Arc<HttpRelayConn>, ClientError> {
        let answer = client
            .request("media-relay", &switchyard_protocol::dict::Dict::new())
            .await?;
        let id = answer.str("id")?.to_string();
        let address: SocketAddr = answer
            .str("address")?
            .parse()
            .map_err(|e| ClientError::Protocol(format!("allocation address: {e}")))?;
        let base = format!("{}/v1/media-relay/{id}", client.identity.provider);
        let http = client.raw_http();
        let (inbound_tx, inbound) = mpsc::channel(1024);
        let recv_url = format!("{base}/recv?wait={POLL_WAIT_MS}");
        let poller = {
            let http = http.clone();
            tokio::spawn(async move {
                loop {
                    let response = http
                        .get(&recv_url)
                        .timeout(Duration::from_millis(POLL_WAIT_MS + 10_000))
                        .send()
                        .await;
                    let body = match response {
                        Ok(r) if r.status().is_success() => match r.bytes().await {
                            Ok(body) => body,
                            Err(_) => continue,
                        },
                        Ok(r) => {
                            tracing::warn!(status = %r.status(), "HTTP relay poll refused; the allocation is gone");
                            return;
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "HTTP relay poll failed; polling again");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            continue;
                        }
                    };
                    for frame in split_length_prefixed(&body) {
                        let datagram = match frame {
                            Ok(frame) => inbound_datagram(frame),
                            Err(e) => {
                                tracing::debug!(error = %e, "HTTP relay: malformed poll answer");
                                None
                            }
                        };
                        if let Some(datagram) = datagram {
                            let _ = inbound_tx.try_send(datagram);
                        }
                    }
                }
            })
        };
        let (outbound, mut outbound_rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let writer = {
            let http = http.clone();
            let send_url = format!("{base}/send");
            tokio::spawn(async move {
                while let Some(first) = outbound_rx.recv().await {
                    // Whatever queued up during the last send goes in this one.
                    let mut body = Vec::new();
                    let mut next = Some(first);
                    while let Some(frame) = next.take() {
                        if let Err(e) = append_length_prefixed(&mut body, &frame) {
                            // Lost, as a datagram too big for its path is.
                            tracing::debug!(error = %e, "HTTP relay: dropped a datagram too long");
                        }
                        if body.len() < SEND_BATCH_BYTES {
                            next = outbound_rx.try_recv().ok();
                        }
                    }
                    if body.is_empty() {
                        continue;
                    }
                    let response = http
                        .post(&send_url)
                        .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                        .body(body)
                        .send()
                        .await;
                    match response {
                        Ok(r) if r.status().is_success() => {}
                        Ok(r) => {
                            tracing::warn!(status = %r.status(), "HTTP relay send refused; the allocation is gone");
                            return;
                        }
                        // Lost, as datagrams on a congested path are.
                        Err(e) => tracing::debug!(error = %e, "HTTP relay send failed"),
                    }
                }
            })
        };
        Ok(Arc::new(HttpRelayConn {
            address,
            outbound,
            delete: Some((http, base)),
            inbound: DatagramInbox::new(inbound),
            tasks: vec![poller, writer],
        }))
    }
}

#[async_trait]
impl Conn for HttpRelayConn {
    async fn connect(&self, _addr: SocketAddr) -> webrtc_util::Result<()> {
        Ok(())
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        Ok(self.recv_from(buf).await?.0)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        self.inbound.recv_from(buf).await
    }

    async fn send(&self, _buf: &[u8]) -> webrtc_util::Result<usize> {
        Err(webrtc_util::Error::Other(
            "an HTTP relay allocation needs a destination".into(),
        ))
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        let datagram =
            Datagram::new(target, buf).map_err(|e| webrtc_util::Error::Other(e.to_string()))?;
        self.outbound
            .send(datagram.encode())
            .map_err(|_| webrtc_util::Error::ErrUseClosedNetworkConn)?;
        Ok(buf.len())
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.address)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        for task in &self.tasks {
            task.abort();
        }
        if let Some((http, url)) = &self.delete {
            let _ = http.delete(url).send().await;
        }
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}
