//! A minimal SIP user agent for the SIP edge tests: builds requests by hand, sends them over UDP
//! or TCP, reads the answers, and answers digest challenges (RFC 7616, computed here, so the
//! edge's own digest code is not what checks itself).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::{test_config, Harness, WAIT};

/// A parsed SIP response.
#[derive(Debug, Clone)]
pub struct SipResponse {
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub text: String,
}

impl SipResponse {
    pub fn parse(bytes: &[u8]) -> anyhow::Result<SipResponse> {
        let text = String::from_utf8(bytes.to_vec()).context("response is not UTF-8")?;
        let mut lines = text.split("\r\n");
        let first = lines.next().unwrap_or("");
        let mut parts = first.splitn(3, ' ');
        if parts.next() != Some("SIP/2.0") {
            bail!("not a SIP response: {first}");
        }
        let status = parts.next().unwrap_or("").parse()?;
        let reason = parts.next().unwrap_or("").to_string();
        let headers = lines
            .take_while(|l| !l.is_empty())
            .filter_map(|l| {
                let (k, v) = l.split_once(':')?;
                Some((k.trim().to_string(), v.trim().to_string()))
            })
            .collect();
        Ok(SipResponse {
            status,
            reason,
            headers,
            text,
        })
    }

    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.all(name).into_iter().next()
    }
}

/// A byte stream to the edge: TCP, or TLS over it.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// One transport to the edge.
pub enum SipTransport {
    Udp(UdpSocket, SocketAddr),
    Stream {
        io: Box<dyn Stream>,
        local: SocketAddr,
        tls: bool,
        /// Bytes read past the last message returned.
        pending: Vec<u8>,
    },
}

impl SipTransport {
    pub async fn udp(server: SocketAddr) -> anyhow::Result<SipTransport> {
        Ok(SipTransport::Udp(
            UdpSocket::bind("127.0.0.1:0").await?,
            server,
        ))
    }

    pub async fn tcp(server: SocketAddr) -> anyhow::Result<SipTransport> {
        let stream = TcpStream::connect(server).await?;
        Ok(SipTransport::Stream {
            local: stream.local_addr()?,
            io: Box::new(stream),
            tls: false,
            pending: Vec::new(),
        })
    }

    /// TLS to `server`, trusting only `ca_pem` and checking the certificate names `server`'s IP.
    pub async fn tls(server: SocketAddr, ca_pem: &str) -> anyhow::Result<SipTransport> {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(cert?)?;
        }
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let stream = TcpStream::connect(server).await?;
        let local = stream.local_addr()?;
        let name = rustls::pki_types::ServerName::from(server.ip());
        let stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
            .connect(name, stream)
            .await?;
        Ok(SipTransport::Stream {
            io: Box::new(stream),
            local,
            tls: true,
            pending: Vec::new(),
        })
    }

    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(match self {
            SipTransport::Udp(socket, _) => socket.local_addr()?,
            SipTransport::Stream { local, .. } => *local,
        })
    }

    /// The transport as a Via names it.
    pub fn name(&self) -> &'static str {
        match self {
            SipTransport::Udp(..) => "UDP",
            SipTransport::Stream { tls: false, .. } => "TCP",
            SipTransport::Stream { tls: true, .. } => "TLS",
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        match self {
            SipTransport::Udp(socket, server) => {
                socket.send_to(bytes, *server).await?;
            }
            SipTransport::Stream { io, .. } => io.write_all(bytes).await?,
        }
        Ok(())
    }

    /// The next message, within `wait`; None if nothing came.
    pub async fn receive(&mut self, wait: Duration) -> anyhow::Result<Option<Vec<u8>>> {
        let mut buf = vec![0u8; 65_536];
        match self {
            SipTransport::Udp(socket, _) => {
                match tokio::time::timeout(wait, socket.recv_from(&mut buf)).await {
                    Ok(received) => Ok(Some(buf[..received?.0].to_vec())),
                    Err(_) => Ok(None),
                }
            }
            SipTransport::Stream {
                io: stream,
                pending,
                ..
            } => {
                // One message at a time: read until the header block and its Content-Length,
                // keeping what follows for the next call.
                let data = pending;
                let deadline = tokio::time::Instant::now() + wait;
                loop {
                    if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&data[..end]).to_string();
                        let length: usize = head
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.trim()
                                    .eq_ignore_ascii_case("Content-Length")
                                    .then(|| v.trim().parse().ok())?
                            })
                            .unwrap_or(0);
                        if data.len() >= end + 4 + length {
                            return Ok(Some(data.drain(..end + 4 + length).collect()));
                        }
                    }
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    match tokio::time::timeout(left, stream.read(&mut buf)).await {
                        Ok(Ok(0)) => bail!("the edge closed the connection"),
                        Ok(Ok(n)) => data.extend_from_slice(&buf[..n]),
                        Ok(Err(e)) => return Err(e.into()),
                        Err(_) => return Ok(None),
                    }
                }
            }
        }
    }

    /// Sends a request and reads its response.
    pub async fn exchange(&mut self, bytes: &[u8]) -> anyhow::Result<SipResponse> {
        self.send(bytes).await?;
        match self.receive(WAIT).await? {
            Some(answer) => SipResponse::parse(&answer),
            None => bail!("no answer within {WAIT:?}"),
        }
    }
}

pub fn md5_hex(input: &str) -> String {
    use md5::Digest;
    hex::encode(md5::Md5::digest(input.as_bytes()))
}

pub fn sha256_hex(input: &str) -> String {
    hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        input.as_bytes(),
    ))
}

/// The parameters of one `WWW-Authenticate: Digest` challenge.
pub fn challenge_params(challenge: &str) -> Vec<(String, String)> {
    challenge
        .trim_start_matches("Digest")
        .split(',')
        .filter_map(|p| {
            let (k, v) = p.split_once('=')?;
            Some((k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        })
        .collect()
}

/// An `Authorization` value answering `challenge` for `method uri` (qop=auth, RFC 7616 §3.4).
pub fn authorization(
    challenge: &str,
    username: &str,
    password: &str,
    method: &str,
    uri: &str,
    nc: u32,
) -> String {
    let params = challenge_params(challenge);
    let get = |k: &str| {
        params
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let (realm, nonce, algorithm) = (get("realm"), get("nonce"), get("algorithm"));
    let hash = |s: &str| {
        if algorithm.eq_ignore_ascii_case("SHA-256") {
            sha256_hex(s)
        } else {
            md5_hex(s)
        }
    };
    let ha1 = hash(&format!("{username}:{realm}:{password}"));
    let ha2 = hash(&format!("{method}:{uri}"));
    let cnonce = "0a4f113b";
    let nc = format!("{nc:08x}");
    let response = hash(&format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"));
    format!(
        "Digest username=\"{username}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", \
         response=\"{response}\", algorithm={algorithm}, cnonce=\"{cnonce}\", qop=auth, nc={nc}"
    )
}

/// Where a test user agent sends from: the Via of its requests.
#[derive(Debug, Clone, Copy)]
pub struct Ua {
    pub transport: &'static str,
    pub local: SocketAddr,
}

impl Ua {
    pub fn of(transport: &SipTransport) -> anyhow::Result<Ua> {
        Ok(Ua {
            transport: transport.name(),
            local: transport.local_addr()?,
        })
    }

    /// A REGISTER for `aor` at `domain`, with `extra` header lines (each ending in CRLF).
    pub fn register(
        &self,
        domain: &str,
        aor: &str,
        call_id: &str,
        cseq: u32,
        branch: &str,
        extra: &str,
    ) -> Vec<u8> {
        format!(
            "REGISTER sip:{domain} SIP/2.0\r\n\
             Via: SIP/2.0/{transport} {local};branch=z9hG4bK{branch};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <{aor}>;tag=reg{branch}\r\n\
             To: <{aor}>\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: {cseq} REGISTER\r\n\
             User-Agent: switchyard-tests\r\n\
             {extra}Content-Length: 0\r\n\r\n",
            transport = self.transport,
            local = self.local,
        )
        .into_bytes()
    }
}

/// A sipp scenario of `tests/interop/sipp`.
pub fn sipp_scenario(name: &str) -> std::path::PathBuf {
    crate::manifest_dir().join(format!("interop/sipp/{name}.xml"))
}

/// A loopback port that is free for both UDP and TCP at the moment: sipp binds its transport's
/// socket on it, and a port free for UDP may be taken for TCP.
pub fn free_sip_port() -> u16 {
    loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("a free UDP port");
        let port = udp.local_addr().expect("a bound socket").port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Alice ([`crate::federation::ALICE`]) with SIP account `sip:alice@a.test` at a.test and Bob
/// ([`crate::federation::BOB`]) with `sip:bob@b.test` at b.test, both with `password` and no
/// native endpoint, their filters exchanged.
pub async fn sip_alice_and_bob(
    fed: &crate::federation::TestFederation,
    password: &str,
) -> anyhow::Result<()> {
    for (id, name, uri, aor) in [
        (
            "a.test",
            "Alice",
            crate::federation::ALICE,
            "sip:alice@a.test",
        ),
        ("b.test", "Bob", crate::federation::BOB, "sip:bob@b.test"),
    ] {
        let h = fed.provider(id);
        let user = h.add_user(name, &[uri]).await?;
        add_account(h, &user, aor, password).await?;
    }
    fed.sync().await
}

/// Gives `user_id` the SIP account `aor` through the admin API.
pub async fn add_account(
    h: &Harness,
    user_id: &str,
    aor: &str,
    password: &str,
) -> anyhow::Result<()> {
    let (status, body) = h
        .admin_call(
            reqwest::Method::POST,
            &format!("/admin/v1/users/{user_id}/sip-accounts"),
            Some(serde_json::json!({"aor": aor, "password": password})),
        )
        .await?;
    if status != 200 {
        bail!("adding SIP account {aor}: {status} {body}");
    }
    Ok(())
}

/// A provider with its SIP edge on loopback (UDP, TCP and TLS, port 0), serving `domain`, and a user
/// with `uris` and a SIP account `sip:<user>@<domain>`.
pub struct SipProvider {
    pub h: Harness,
    pub udp: SocketAddr,
    pub tcp: SocketAddr,
    pub tls: SocketAddr,
    pub user_id: String,
}

impl SipProvider {
    pub async fn start(
        domain: &str,
        user: &str,
        password: &str,
        uris: &[&str],
        tune: impl FnOnce(&mut switchyard_provider::Config),
    ) -> anyhow::Result<SipProvider> {
        let (mut config, dir) = test_config().await?;
        config.provider_id = domain.into();
        crate::enable_sip_on_loopback(&mut config)?;
        tune(&mut config);
        let h = Harness::start_with(config, dir).await?;
        let user_id = h.add_user(user, uris).await?;
        let provider = SipProvider {
            udp: h.provider.sip_udp_addr.context("SIP over UDP")?,
            tcp: h.provider.sip_tcp_addr.context("SIP over TCP")?,
            tls: h.provider.sip_tls_addr.context("SIP over TLS")?,
            h,
            user_id,
        };
        provider
            .add_account(&format!("sip:{user}@{domain}"), password)
            .await?;
        Ok(provider)
    }

    pub async fn add_account(&self, aor: &str, password: &str) -> anyhow::Result<()> {
        add_account(&self.h, &self.user_id, aor, password).await
    }

    /// The registered contacts of the user's accounts, as the admin API lists them.
    pub async fn contacts(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        let (_, body) = self
            .h
            .admin_call(
                reqwest::Method::GET,
                &format!("/admin/v1/users/{}/sip-accounts", self.user_id),
                None,
            )
            .await?;
        Ok(body["sip_accounts"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|a| a["contacts"].as_array().cloned().unwrap_or_default())
            .collect())
    }
}
