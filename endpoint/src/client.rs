//! The endpoint side of the protocol: registration, the Requests, and the push channel
//! (WebSocket or long-poll).

use std::collections::VecDeque;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rcgen::{CertificateParams, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use switchyard_protocol::capabilities::Capabilities;
use switchyard_protocol::dict::{Dict, DictError, Encoding, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the provider answered {status}: {code}: {message}")]
    Refused {
        status: u16,
        code: String,
        message: String,
        field: Option<String>,
    },
    #[error("HTTP: {0}")]
    Http(#[from] reqwest::Error),
    #[error("WebSocket: {0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("the provider's answer is not a dictionary: {0}")]
    Answer(#[from] DictError),
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("endpoint state in {path}: {message}")]
    State { path: PathBuf, message: String },
    #[error("the push channel closed: {0}")]
    PushClosed(String),
    #[error("the provider's answer is unusable: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The provider's stable error code, if it refused the request.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Refused { code, .. } => Some(code),
            _ => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// What an endpoint keeps after registering (the key stays in the same folder, mode 0600).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EndpointIdentity {
    pub provider: String,
    pub endpoint_id: String,
    pub push_token: String,
    pub uris: Vec<String>,
    pub certificate_pem: String,
    pub ca_certificate_pem: String,
    pub key_pem: String,
    /// What the endpoint registered as able to take, which its media negotiates with. Identity
    /// files saved before this was kept were registered without capabilities, so the provider
    /// holds its defaults for them.
    #[serde(default)]
    pub capabilities: Capabilities,
}

impl EndpointIdentity {
    pub fn save(&self, dir: &Path) -> Result<(), ClientError> {
        let err = |e: std::io::Error| ClientError::State {
            path: dir.into(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(err)?;
        let path = dir.join("endpoint.json");
        let text = serde_json::to_string_pretty(self).expect("identity serializes");
        let tmp = dir.join("endpoint.json.tmp");
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(err)?;
            f.write_all(text.as_bytes()).map_err(err)?;
            f.sync_all().map_err(err)?;
        }
        std::fs::rename(&tmp, &path).map_err(err)
    }

    pub fn load(dir: &Path) -> Result<Self, ClientError> {
        let path = dir.join("endpoint.json");
        let text = std::fs::read_to_string(&path).map_err(|e| ClientError::State {
            path: path.clone(),
            message: format!("{e} (run `switchyard endpoint register` first)"),
        })?;
        serde_json::from_str(&text).map_err(|e| ClientError::State {
            path,
            message: e.to_string(),
        })
    }
}

fn tls_config(
    ca_pem: &str,
    identity: Option<(&str, &str)>,
) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| ClientError::Tls(format!("CA certificate: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| ClientError::Tls(e.to_string()))?;
    }
    // ring named here rather than installed process-wide: a library leaves that choice to the
    // program it is part of.
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ClientError::Tls(e.to_string()))?
    .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert_pem, key_pem)) => {
            let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ClientError::Tls(format!("certificate: {e}")))?;
            let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
                .map_err(|e| ClientError::Tls(format!("key: {e}")))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| ClientError::Tls(e.to_string()))?
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn http_client(tls: Arc<rustls::ClientConfig>) -> Result<reqwest::Client, ClientError> {
    Ok(reqwest::Client::builder()
        .tls_backend_preconfigured((*tls).clone())
        .timeout(Duration::from_secs(90))
        // Below the provider's header timeout (30 s by default), which closes a kept-alive
        // connection that sends no next request.
        .pool_idle_timeout(Duration::from_secs(20))
        .build()?)
}

async fn exchange(
    request: reqwest::RequestBuilder,
    encoding: Encoding,
) -> Result<Dict, ClientError> {
    let response = request
        .header(reqwest::header::ACCEPT, encoding.content_type())
        .send()
        .await?;
    let status = response.status();
    // The body is in the encoding its header names: a refusal made before the request reached
    // the application (a `429` from the rate limit) is JSON whatever was asked for.
    let body_encoding = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| Encoding::from_content_type(Some(v)).ok())
        .unwrap_or(encoding);
    let bytes = response.bytes().await?;
    let decoded = Dict::decode(&bytes, body_encoding);
    if status.is_success() {
        return Ok(decoded?);
    }
    match decoded {
        Ok(dict) => Err(ClientError::Refused {
            status: status.as_u16(),
            code: dict.opt_str("error")?.unwrap_or("unknown").to_string(),
            message: dict.opt_str("message")?.unwrap_or("").to_string(),
            field: dict.opt_str("field")?.map(str::to_string),
        }),
        // Not a dictionary (a proxy's error page): the status alone says what happened.
        Err(_) => Err(ClientError::Refused {
            status: status.as_u16(),
            code: "unknown".to_string(),
            message: String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned(),
            field: None,
        }),
    }
}

/// Registers a new endpoint with a provisioning code; the key is made here and never leaves.
pub async fn register(
    provider: &str,
    ca_pem: &str,
    uri: &str,
    code: &str,
    name: &str,
    capabilities: Option<Capabilities>,
    encoding: Encoding,
) -> Result<EndpointIdentity, ClientError> {
    let key = KeyPair::generate().map_err(|e| ClientError::Tls(e.to_string()))?;
    let csr = CertificateParams::default()
        .serialize_request(&key)
        .and_then(|r| r.pem())
        .map_err(|e| ClientError::Tls(e.to_string()))?;
    let mut body = Dict::new()
        .with("uri", uri)
        .with("code", code)
        .with("csr", csr)
        .with("name", name);
    if let Some(caps) = &capabilities {
        body.insert(
            "capabilities",
            Dict::new()
                .with("audio", caps.audio)
                .with("video", caps.video)
                .with("audio-codecs", caps.audio_codecs.clone())
                .with("video-codecs", caps.video_codecs.clone()),
        );
    }
    let http = http_client(tls_config(ca_pem, None)?)?;
    let request = http
        .post(format!("{}/v1/register", provider.trim_end_matches('/')))
        .header(reqwest::header::CONTENT_TYPE, encoding.content_type())
        .body(body.encode(encoding));
    let answer = exchange(request, encoding).await?;
    Ok(EndpointIdentity {
        provider: provider.trim_end_matches('/').to_string(),
        endpoint_id: answer.str("endpoint-id")?.to_string(),
        push_token: answer.str("push-token")?.to_string(),
        uris: answer.string_array("uris")?,
        certificate_pem: answer.str("certificate")?.to_string(),
        ca_certificate_pem: answer.str("ca-certificate")?.to_string(),
        key_pem: key.serialize_pem(),
        capabilities: capabilities.unwrap_or_default(),
    })
}

/// How pushes reach the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum PushMode {
    WebSocket,
    LongPoll,
}

pub struct EndpointClient {
    pub identity: EndpointIdentity,
    http: reqwest::Client,
    tls: Arc<rustls::ClientConfig>,
    pub encoding: Encoding,
}

impl EndpointClient {
    pub fn new(identity: EndpointIdentity, encoding: Encoding) -> Result<Self, ClientError> {
        let tls = tls_config(
            &identity.ca_certificate_pem,
            Some((&identity.certificate_pem, &identity.key_pem)),
        )?;
        Ok(EndpointClient {
            http: http_client(tls.clone())?,
            tls,
            identity,
            encoding,
        })
    }

    /// The TLS configuration presenting this endpoint's certificate.
    pub fn tls_config(&self) -> Arc<rustls::ClientConfig> {
        self.tls.clone()
    }

    /// The HTTP client presenting this endpoint's certificate, for requests of one's own making.
    pub fn raw_http(&self) -> reqwest::Client {
        self.http.clone()
    }

    /// The endpoint's first URI: what it calls from by default.
    pub fn primary_uri(&self) -> &str {
        &self.identity.uris[0]
    }

    /// Sends a raw Request dictionary to `/v1/{action}`.
    pub async fn request(&self, action: &str, body: &Dict) -> Result<Dict, ClientError> {
        let request = self
            .http
            .post(format!("{}/v1/{action}", self.identity.provider))
            .header(reqwest::header::CONTENT_TYPE, self.encoding.content_type())
            .body(body.encode(self.encoding));
        exchange(request, self.encoding).await
    }

    fn base(&self, session_id: &str, self_uri: &str) -> Dict {
        Dict::new()
            .with("session-id", session_id)
            .with("self-uri", self_uri)
            .with("self-token", self.identity.push_token.as_str())
    }

    pub async fn initiate(
        &self,
        session_id: &str,
        peer_uri: &str,
        blob: &[u8],
        media: &[&str],
    ) -> Result<Dict, ClientError> {
        let body = self
            .base(session_id, self.primary_uri())
            .with("self-blob", blob.to_vec())
            .with("peer-uri", peer_uri)
            .with(
                "media",
                media.iter().map(|m| m.to_string()).collect::<Vec<_>>(),
            );
        self.request("initiate", &body).await
    }

    /// Answers fields common to Accept and Reject from an Initiate Push.
    fn answer_body(&self, push: &Dict, blob: &[u8]) -> Result<Dict, ClientError> {
        Ok(self
            .base(push.str("session-id")?, push.str("self-uri")?)
            .with("self-blob", blob.to_vec())
            .with("peer-uri", push.str("peer-uri")?)
            .with("peer-token", push.str("peer-token")?)
            .with("peer-blob", push.opt_data("peer-blob")?.unwrap_or_default())
            .with("state", push.str("state")?))
    }

    pub async fn accept(&self, initiate_push: &Dict, blob: &[u8]) -> Result<Dict, ClientError> {
        let body = self.answer_body(initiate_push, blob)?;
        self.request("accept", &body).await
    }

    pub async fn reject(
        &self,
        initiate_push: &Dict,
        reason: &str,
        text: Option<&str>,
    ) -> Result<Dict, ClientError> {
        let mut body = self.answer_body(initiate_push, &[])?.with("reason", reason);
        if let Some(text) = text {
            body.insert("reason-text", text);
        }
        self.request("reject", &body).await
    }

    /// Cancels (or hangs up) a call; `state` is the latest state token this side holds.
    pub async fn cancel(
        &self,
        session_id: &str,
        self_uri: &str,
        peer_uri: &str,
        state: &str,
    ) -> Result<Dict, ClientError> {
        let body = self
            .base(session_id, self_uri)
            .with("peer-uri", peer_uri)
            .with("state", state);
        self.request("cancel", &body).await
    }

    /// Short-lived credentials at the relay of `relay_provider` (this provider's own, or another
    /// member's, fetched by this provider), or at the relay this provider chooses for a new call
    /// when None. None when there is no relay to use: this provider runs none, or it is chosen
    /// only with the answer (the callee's provider's).
    pub async fn relay_credentials(
        &self,
        relay_provider: Option<&str>,
    ) -> Result<Option<RelayGrant>, ClientError> {
        let body = match relay_provider {
            Some(provider) => Dict::new().with("relay-provider", provider),
            None => Dict::new(),
        };
        let answer = match self.request("relay-credentials", &body).await {
            Ok(answer) => answer,
            Err(ClientError::Refused { code, .. }) if code == "relay-disabled" => return Ok(None),
            Err(e) => return Err(e),
        };
        if answer.opt_bool("deferred")? == Some(true) {
            return Ok(None);
        }
        let uris = answer.string_array("uris")?;
        let address = uris
            .iter()
            .find_map(|uri| {
                uri.strip_prefix("turn:")
                    .and_then(|rest| rest.split('?').next())
                    .and_then(|hostport| hostport.parse().ok())
            })
            .ok_or_else(|| ClientError::Protocol(format!("no usable turn: URI in {uris:?}")))?;
        Ok(Some(RelayGrant {
            provider: answer.str("relay-provider")?.to_string(),
            server: switchyard_media::session::RelayServer {
                address,
                username: answer.str("username")?.to_string(),
                password: answer.str("password")?.to_string(),
                realm: answer.str("realm")?.to_string(),
            },
        }))
    }

    /// Sends a new blob to the other party of a call (a late relay allocation, a new path).
    pub async fn update(
        &self,
        session_id: &str,
        self_uri: &str,
        peer_uri: &str,
        state: &str,
        blob: &[u8],
    ) -> Result<Dict, ClientError> {
        let body = self
            .base(session_id, self_uri)
            .with("peer-uri", peer_uri)
            .with("self-blob", blob.to_vec())
            .with("state", state);
        self.request("update", &body).await
    }

    pub async fn push_channel(&self, mode: PushMode) -> Result<PushChannel, ClientError> {
        match mode {
            PushMode::WebSocket => {
                let ws_url = format!(
                    "{}/v1/push?encoding={}",
                    self.identity.provider.replacen("https://", "wss://", 1),
                    if self.encoding == Encoding::Json {
                        "json"
                    } else {
                        "plist"
                    }
                );
                let request = ws_url.into_client_request()?;
                let (socket, _) = tokio_tungstenite::connect_async_tls_with_config(
                    request,
                    None,
                    false,
                    Some(tokio_tungstenite::Connector::Rustls(self.tls.clone())),
                )
                .await?;
                Ok(PushChannel::WebSocket {
                    socket: Box::new(socket),
                    encoding: self.encoding,
                    received: None,
                })
            }
            PushMode::LongPoll => Ok(PushChannel::LongPoll {
                http: self.http.clone(),
                provider: self.identity.provider.clone(),
                encoding: self.encoding,
                after: None,
                buffered: VecDeque::new(),
                polling: None,
            }),
        }
    }
}

type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// TURN credentials, and the provider whose relay they are for.
#[derive(Debug, Clone)]
pub struct RelayGrant {
    pub provider: String,
    pub server: switchyard_media::session::RelayServer,
}

/// The next push on the WebSocket, skipping frames that carry none; None at the deadline.
/// Dropped at its await, it loses nothing: the socket keeps what it has not handed over.
async fn receive_push(
    socket: &mut WsStream,
    encoding: Encoding,
    deadline: tokio::time::Instant,
) -> Result<Option<Dict>, ClientError> {
    loop {
        let message = match tokio::time::timeout_at(deadline, socket.next()).await {
            Err(_) => return Ok(None),
            Ok(None) => return Err(ClientError::PushClosed("connection closed".into())),
            Ok(Some(m)) => m?,
        };
        let bytes = match message {
            Message::Text(t) => t.as_bytes().to_vec(),
            Message::Binary(b) => b.to_vec(),
            Message::Close(frame) => {
                return Err(ClientError::PushClosed(
                    frame
                        .map(|f| format!("{} {}", u16::from(f.code), f.reason))
                        .unwrap_or_default(),
                ))
            }
            _ => continue,
        };
        return Ok(Some(Dict::decode(&bytes, encoding)?));
    }
}

/// A long-poll under way: the provider's answer.
type Poll = Pin<Box<dyn Future<Output = Result<Dict, ClientError>> + Send>>;

/// A stream of pushes. Over the WebSocket a push is acknowledged as it is received; over
/// long-poll, by the next poll (or `ack`), so pushes not yet handled are delivered again.
///
/// [`PushChannel::next`] may be dropped at any await (in a `select!`) without losing a push
/// or sending a request twice: what it was waiting for is kept for the next call.
pub enum PushChannel {
    WebSocket {
        socket: Box<WsStream>,
        encoding: Encoding,
        /// A push received and its id, held until its acknowledgement is sent.
        received: Option<(i64, Dict)>,
    },
    LongPoll {
        http: reqwest::Client,
        provider: String,
        encoding: Encoding,
        after: Option<i64>,
        buffered: VecDeque<Dict>,
        polling: Option<Poll>,
    },
}

impl PushChannel {
    /// The next push, waiting at most `timeout`; None when nothing arrived in time.
    pub async fn next(&mut self, timeout: Duration) -> Result<Option<Dict>, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        match self {
            PushChannel::WebSocket {
                socket,
                encoding,
                received,
            } => {
                let (id, _) = match received {
                    Some(held) => held,
                    None => {
                        let Some(push) = receive_push(socket, *encoding, deadline).await? else {
                            return Ok(None);
                        };
                        // A push without an id came from the provider's memory, not its queue:
                        // there is nothing to acknowledge.
                        let Some(id) = push.opt_int("push-id")? else {
                            return Ok(Some(push));
                        };
                        received.insert((id, push))
                    }
                };
                let ack = Dict::new().with("ack", *id).encode(*encoding);
                socket
                    .send(Message::Text(String::from_utf8(ack).expect("UTF-8").into()))
                    .await?;
                Ok(received.take().map(|(_, push)| push))
            }
            PushChannel::LongPoll {
                http,
                provider,
                encoding,
                after,
                buffered,
                polling,
            } => loop {
                if let Some(push) = buffered.pop_front() {
                    return Ok(Some(push));
                }
                let poll = polling.get_or_insert_with(|| {
                    // At least a second: the provider waits in whole seconds, and polls that do
                    // not wait would follow one another (and meet its rate limit). A poll still
                    // under way at the deadline is taken up by the next call.
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    let wait = left.as_secs().clamp(1, 25);
                    let mut url = format!(
                        "{provider}/v1/push/poll?wait={wait}&encoding={}",
                        if *encoding == Encoding::Json {
                            "json"
                        } else {
                            "plist"
                        }
                    );
                    if let Some(after) = after {
                        url.push_str(&format!("&after={after}"));
                    }
                    Box::pin(exchange(http.get(url), *encoding))
                });
                let Ok(answer) = tokio::time::timeout_at(deadline, poll).await else {
                    return Ok(None);
                };
                *polling = None;
                let answer = answer?;
                let pushes = answer.array("pushes")?;
                *after = Some(answer.int("last-push-id")?);
                buffered.extend(pushes.iter().filter_map(|push| match push {
                    Value::Dict(d) => Some(d.clone()),
                    _ => None,
                }));
                if buffered.is_empty() && tokio::time::Instant::now() >= deadline {
                    return Ok(None);
                }
            },
        }
    }

    /// Waits for a push with the given `action`, skipping others; None on timeout.
    pub async fn next_action(
        &mut self,
        action: &str,
        timeout: Duration,
    ) -> Result<Option<Dict>, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await? {
                None => return Ok(None),
                Some(push) if push.opt_str("action")? == Some(action) => return Ok(Some(push)),
                Some(_) => continue,
            }
        }
    }

    /// Acknowledges what was received so far (long-poll only needs it before closing).
    pub async fn ack(&mut self) -> Result<(), ClientError> {
        if let PushChannel::LongPoll {
            http,
            provider,
            encoding,
            after: Some(after),
            ..
        } = self
        {
            let url = format!("{provider}/v1/push/poll?wait=0&after={after}");
            exchange(http.get(url), *encoding).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(capabilities: Capabilities) -> EndpointIdentity {
        EndpointIdentity {
            provider: "https://provider.test".into(),
            endpoint_id: "ep1".into(),
            push_token: "token".into(),
            uris: vec!["mailto:bob@example.com".into()],
            certificate_pem: "cert".into(),
            ca_certificate_pem: "ca".into(),
            key_pem: "key".into(),
            capabilities,
        }
    }

    #[test]
    fn identity_keeps_its_capabilities_and_old_files_load_with_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let audio_only = Capabilities {
            video: false,
            ..Capabilities::default()
        };
        identity(audio_only.clone()).save(dir.path()).unwrap();
        assert_eq!(
            EndpointIdentity::load(dir.path()).unwrap().capabilities,
            audio_only
        );

        // A file saved before capabilities were kept: the endpoint registered without any, so
        // the provider holds its defaults.
        let mut old = serde_json::to_value(identity(audio_only)).unwrap();
        old.as_object_mut().unwrap().remove("capabilities");
        std::fs::write(dir.path().join("endpoint.json"), old.to_string()).unwrap();
        let loaded = EndpointIdentity::load(dir.path()).unwrap();
        assert_eq!(loaded.capabilities, Capabilities::default());
        assert_eq!(loaded.endpoint_id, "ep1");
    }
}
