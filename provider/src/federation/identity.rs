//! This provider's federation identity: the federation CA, its own certificate and key, and the
//! mutual-TLS configurations built from them. Reloaded as a whole on SIGHUP or when a file
//! changes; a reload that fails keeps the previous identity, so a half-copied file never takes a
//! provider out of the federation. Connections already open keep their TLS session, so calls in
//! flight are not dropped.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use switchyard_protocol::pki::{self, PkiError, SigningKey};

use crate::config::FederationConfig;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("federation.{key} is not set")]
    Missing { key: &'static str },
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("building the federation HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// Everything derived from the three PEM files at one moment.
pub struct Identity {
    ca_pem: String,
    chain: Vec<rustls_pki_types::CertificateDer<'static>>,
    key: rustls_pki_types::PrivateKeyDer<'static>,
    timeout: Duration,
    /// Per peer certificate: a client that talks only to the server presenting it.
    pinned: std::sync::Mutex<std::collections::HashMap<String, reqwest::Client>>,
    pub ca_der: Vec<u8>,
    /// Checks the certificates peers present on each request, against this identity's CA.
    pub peers: pki::ProviderCertVerifier,
    pub cert_der: Vec<u8>,
    pub fingerprint: String,
    pub not_after: i64,
    pub signing_key: SigningKey,
    pub server: Arc<rustls::ServerConfig>,
    /// Presents this provider's certificate and trusts any server certificate from the federation
    /// CA: for the bootstrap URI, whose answer is signed anyway.
    pub http: reqwest::Client,
}

impl Identity {
    /// A client for the member whose certificate has SHA-256 `fingerprint`: the handshake fails
    /// against any other server, before a request is sent. A member whose listed certificate
    /// changes gets a new client, so no connection made to its old certificate is reused.
    pub fn client_for(&self, fingerprint: &str) -> Result<reqwest::Client, IdentityError> {
        let mut pinned = self.pinned.lock().expect("client cache lock");
        if let Some(client) = pinned.get(fingerprint) {
            return Ok(client.clone());
        }
        let config = pki::pinned_client_config(
            &self.ca_pem,
            self.chain.clone(),
            self.key.clone_key(),
            fingerprint,
        )?;
        let client = http_client(&config, self.timeout)?;
        pinned.insert(fingerprint.to_string(), client.clone());
        Ok(client)
    }
}

fn http_client(
    config: &rustls::ClientConfig,
    timeout: Duration,
) -> Result<reqwest::Client, IdentityError> {
    Ok(reqwest::Client::builder()
        .tls_backend_preconfigured(config.clone())
        .timeout(timeout)
        .connect_timeout(timeout)
        // Below the header timeout of Switchyard's listeners (30 s by default), which also
        // closes a kept-alive connection that sends no next request: a client that reuses a
        // connection the server is closing loses the request.
        .pool_idle_timeout(Duration::from_secs(20))
        // Every Forward to a peer shares its one HTTP/2 connection, so a connection that went
        // dead without a reset (a partition, a firewall that dropped its state) must be found
        // and dropped, or every later Forward would time out on it: while requests are open it
        // is pinged, and closed when a ping goes unanswered for a request's timeout.
        .http2_keep_alive_interval(timeout)
        .http2_keep_alive_timeout(timeout)
        .build()?)
}

struct Files {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Files {
    fn stamp(&self) -> Vec<Option<SystemTime>> {
        [&self.ca, &self.cert, &self.key]
            .iter()
            .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .collect()
    }
}

pub struct IdentityCell {
    provider_id: String,
    files: Files,
    timeout: Duration,
    current: RwLock<(Arc<Identity>, Vec<Option<SystemTime>>)>,
}

fn required<'a>(value: &'a Option<PathBuf>, key: &'static str) -> Result<&'a Path, IdentityError> {
    value.as_deref().ok_or(IdentityError::Missing { key })
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

impl IdentityCell {
    pub fn load(config: &FederationConfig, provider_id: &str) -> Result<Self, IdentityError> {
        let files = Files {
            ca: required(&config.ca_cert, "ca_cert")?.to_path_buf(),
            cert: required(&config.cert, "cert")?.to_path_buf(),
            key: required(&config.key, "key")?.to_path_buf(),
        };
        let timeout = Duration::from_millis(config.request_timeout_ms);
        let stamp = files.stamp();
        let identity = build(&files, provider_id, timeout)?;
        Ok(IdentityCell {
            provider_id: provider_id.to_string(),
            files,
            timeout,
            current: RwLock::new((Arc::new(identity), stamp)),
        })
    }

    pub fn current(&self) -> Arc<Identity> {
        self.current.read().expect("identity lock").0.clone()
    }

    /// Reads the files again and switches to them if they make a valid identity.
    pub fn reload(&self) -> Result<(), IdentityError> {
        let stamp = self.files.stamp();
        let identity = build(&self.files, &self.provider_id, self.timeout)?;
        tracing::info!(
            fingerprint = %identity.fingerprint,
            not_after = identity.not_after,
            "federation certificate loaded"
        );
        *self.current.write().expect("identity lock") = (Arc::new(identity), stamp);
        Ok(())
    }

    /// Reloads when a file's modification time changed since the last load.
    pub fn reload_if_changed(&self) -> Result<bool, IdentityError> {
        let changed = self.current.read().expect("identity lock").1 != self.files.stamp();
        if changed {
            self.reload()?;
        }
        Ok(changed)
    }
}

fn build(files: &Files, provider_id: &str, timeout: Duration) -> Result<Identity, IdentityError> {
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|e| IdentityError::Invalid {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    };
    let ca_pem = read(&files.ca)?;
    let ca_der = pki::certs_from_pem(&ca_pem)?[0].to_vec();
    let chain = pki::load_certs(&files.cert)?;
    let key = pki::load_key(&files.key)?;
    let signing_key = SigningKey::from_pem(&read(&files.key)?)?;
    let identity = pki::verify_provider_cert(&chain[0], &ca_der, unix_now()).map_err(|e| {
        IdentityError::Invalid {
            path: files.cert.clone(),
            message: e.to_string(),
        }
    })?;
    if identity.provider_id != provider_id {
        return Err(IdentityError::Invalid {
            path: files.cert.clone(),
            message: format!(
                "this is the certificate of provider `{}`, but provider_id is `{provider_id}`",
                identity.provider_id
            ),
        });
    }
    let probe = b"switchyard key check";
    let signature = signing_key.sign(probe)?;
    if pki::verify_signature(&chain[0], probe, &signature).is_err() {
        return Err(IdentityError::Invalid {
            path: files.key.clone(),
            message: format!("this key does not belong to {}", files.cert.display()),
        });
    }
    let server = pki::server_config(&ca_pem, chain.clone(), key.clone_key())?;
    let client = pki::client_config(&ca_pem, chain.clone(), key.clone_key())?;
    let http = http_client(&client, timeout)?;
    Ok(Identity {
        ca_pem,
        chain: chain.clone(),
        key,
        timeout,
        pinned: Default::default(),
        peers: pki::ProviderCertVerifier::new(ca_der.clone())?,
        ca_der,
        cert_der: chain[0].to_vec(),
        fingerprint: identity.sha256_fingerprint,
        not_after: identity.not_after,
        signing_key,
        server,
        http,
    })
}
