//! Daemon configuration: a TOML file, overridden by `SWITCHYARD_...` environment variables
//! ([`is_env_override`]).
//!
//! Every key is optional and documented in `docs/configuration.md`. Checking reports every error
//! with its key path instead of stopping at the first, so an operator fixes a file in one pass.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod check;
mod issue;
mod table;
#[cfg(test)]
mod tests;

pub use issue::{ConfigError, ConfigIssue};
pub use table::ENV_PREFIX;
use table::{apply_env_overrides, leaf_issues, name_overrides};

/// Whether the environment variable `name` overrides a configuration key. A key in a section is
/// spelled with `__`; a name without one overrides only a top-level key, so that the other
/// `SWITCHYARD_` variables (the admin command line's `SWITCHYARD_ADMIN_TOKEN`, which never contain
/// `__`) are not taken for unknown keys while an unknown `SWITCHYARD_X__Y` is still reported.
pub fn is_env_override(name: &str) -> bool {
    let Some(path) = name.strip_prefix(ENV_PREFIX) else {
        return false;
    };
    path.contains("__") || top_level_keys().contains(&path.to_ascii_lowercase())
}

/// The keys outside every section (`data_dir`, `provider_id`).
fn top_level_keys() -> Vec<String> {
    toml::Table::try_from(Config::default())
        .expect("configuration serializes")
        .into_iter()
        .filter(|(_, value)| !value.is_table())
        .map(|(key, _)| key)
        .collect()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Where the embedded database, generated keys and certificates live.
    pub data_dir: PathBuf,
    /// This provider's id: recorded in call records and, with federation, its identity to peers.
    pub provider_id: String,
    pub endpoint_api: EndpointApiConfig,
    pub admin: AdminConfig,
    pub database: DatabaseConfig,
    pub registry: RegistryConfig,
    pub pki: PkiConfig,
    pub invitation: InvitationConfig,
    pub push: PushConfig,
    pub federation: FederationConfig,
    pub directory: DirectoryConfig,
    pub relay: RelayConfig,
    pub sip: SipConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct EndpointApiConfig {
    pub listen: SocketAddr,
    /// PEM certificate chain for the endpoint API; empty: generate one signed by the endpoint CA.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// DNS names and IP addresses put in the generated server certificate.
    pub server_names: Vec<String>,
    pub max_body_bytes: usize,
    /// How long shutdown waits for in-flight requests before closing connections.
    pub shutdown_grace_seconds: u64,
    pub limits: HttpLimits,
}

/// What one HTTP listener allows a client (see `listener.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpLimits {
    /// Connections open at once; further clients wait in the kernel's backlog.
    pub max_connections: usize,
    /// Time a client has for the TLS handshake, and for each request's headers.
    pub header_timeout_seconds: u64,
    /// A connection that moves no byte either way for this long is closed.
    pub idle_timeout_seconds: u64,
    /// Time a client has to send a request's body.
    pub body_timeout_seconds: u64,
    /// Connections one client (an IPv4 address, an IPv6 /64) may hold at once; more are closed
    /// as they come.
    pub max_connections_per_client: usize,
    /// Requests one client may send per second, sustained; more get `429` with `Retry-After`.
    pub requests_per_second_per_client: u32,
    /// Requests one client may send at once, above the sustained rate.
    pub request_burst_per_client: u32,
}

impl HttpLimits {
    /// A listener's limits: each client may hold an eighth of its connections (at least 16)
    /// and send `rate` requests a second with bursts of twice that.
    fn with_connections(max_connections: usize, rate: u32) -> Self {
        HttpLimits {
            max_connections,
            header_timeout_seconds: 30,
            idle_timeout_seconds: 120,
            body_timeout_seconds: 30,
            max_connections_per_client: (max_connections / 8).max(16),
            requests_per_second_per_client: rate,
            request_burst_per_client: rate.saturating_mul(2),
        }
    }
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits::with_connections(1024, 20)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// File holding the bearer token; empty: `<data_dir>/admin-token`, generated on first start.
    pub token_file: Option<PathBuf>,
    pub max_body_bytes: usize,
    /// Largest CSV accepted by the bulk import.
    pub max_import_bytes: u64,
    pub limits: HttpLimits,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct DatabaseConfig {
    /// `sqlite:PATH` or `postgres://...`; empty: `sqlite:<data_dir>/switchyard.db`.
    pub url: Option<String>,
    pub max_connections: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RegistryConfig {
    /// Country calling code assumed for `tel:` numbers written without `+`; unset: such numbers are refused.
    pub default_country_code: Option<u16>,
    pub provisioning_code_ttl_seconds: u64,
    pub endpoint_certificate_days: u32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PkiConfig {
    /// Endpoint CA certificate and key (PEM); empty: `<data_dir>/endpoint-ca.pem` / `.key`, generated.
    pub endpoint_ca_cert: Option<PathBuf>,
    pub endpoint_ca_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct InvitationConfig {
    pub ring_timeout_seconds: u64,
    /// An answered call is ended after this long, so one whose hang-up never arrived (a Cancel
    /// Forward lost for good) does not stay answered forever.
    pub max_call_duration_seconds: u64,
    /// How often a new sealing key is made; the previous one stays valid for one more period.
    pub seal_key_rotation_seconds: u64,
    /// How often expired invitations and pushes are swept.
    pub sweep_interval_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct PushConfig {
    /// How long a push waits for an offline endpoint.
    pub ttl_seconds: u64,
    /// Longest wait of one `GET /v1/push/poll`.
    pub long_poll_max_seconds: u64,
    /// How often the replica looks for pushes queued and endpoints revoked by other replicas,
    /// for its open push channels (`push::replicas`), and the relay for revoked endpoints.
    pub recheck_interval_ms: u64,
}

/// Joining a federation: mutual TLS with the other members, the discovery dictionary, Bloom
/// filters and forwarded invitations.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct FederationConfig {
    /// Off: the provider serves its own users only and the keys below are not used.
    pub enabled: bool,
    /// Where peers reach this provider (mutual TLS).
    pub listen: SocketAddr,
    /// The federation CA certificate (PEM): peers' certificates and the discovery signature are
    /// checked against it.
    pub ca_cert: Option<PathBuf>,
    /// This provider's federation certificate chain and key (PEM), from `switchyard ca
    /// issue-provider`; reloaded on SIGHUP or when the files change.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Where the signed discovery dictionary is published (`https://` or `http://`).
    pub bootstrap_uri: Option<String>,
    /// How often the discovery dictionary is fetched again.
    pub directory_refresh_seconds: u64,
    /// Encoding of the dictionaries this provider sends to peers: `plist` or `json`.
    pub encoding: WireEncoding,
    /// How long a Forward or filter request to one peer may take.
    pub request_timeout_ms: u64,
    /// Forwards whose timestamp is further than this from the local clock are refused.
    pub timestamp_window_seconds: u64,
    /// Consecutive failures after which a peer is skipped (circuit open)...
    pub breaker_failures: u32,
    /// ...for this long; then requests go through again, and the next failure reopens it.
    pub breaker_open_seconds: u64,
    /// The false-positive rate this provider's filter is sized for.
    pub bloom_false_positive_rate: f64,
    /// The filter is rebuilt at least this often (a new generation only if it changed)...
    pub bloom_rebuild_seconds: u64,
    /// ...and after this many registry changes made through this process.
    pub bloom_rebuild_changes: u64,
    /// How often peers' filters are pulled even without a notification.
    pub bloom_pull_seconds: u64,
    /// How often the certificate files are checked for changes.
    pub cert_check_seconds: u64,
    /// Largest filter accepted from a peer.
    pub max_filter_bytes: u64,
    /// A peer's filter implying a higher false-positive rate (from its share of set bits) is
    /// refused, unless the discovery dictionary sets the federation's own limit.
    pub peer_filter_max_false_positive_rate: f64,
    /// The most members one Initiate is forwarded to.
    pub max_dispatch_candidates: usize,
    /// Largest answer read from a peer to anything but a filter pull.
    pub max_answer_bytes: usize,
    /// Largest request body read from a peer (a Forward wraps what an endpoint sent, up to
    /// `endpoint_api.max_body_bytes`, in an envelope).
    pub max_body_bytes: usize,
    /// What the federation listener allows each peer connection.
    pub limits: HttpLimits,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WireEncoding {
    Plist,
    Json,
}

/// The "directory" role: publishing the signed discovery dictionary at a bootstrap URI.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct DirectoryConfig {
    /// The signed dictionary from `switchyard federation sign`; unset: the role is off. The file is
    /// read on every request, so publishing a new version is replacing the file.
    pub file: Option<PathBuf>,
    /// Plain HTTP: the dictionary is signed, so the transport needs no protection of its own.
    pub listen: SocketAddr,
    pub limits: HttpLimits,
}

/// The TURN relay (RFC 8656, UDP) endpoints use when no direct path works; they get short-lived
/// credentials from `POST /v1/relay-credentials`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RelayConfig {
    /// Off: no relay is started and `POST /v1/relay-credentials` answers 404.
    pub enabled: bool,
    /// The UDP address the TURN server listens on; relayed sockets are bound on its IP.
    pub listen: SocketAddr,
    /// The IP put in relayed addresses and in the `turn:` URIs; unset: the listen IP, or
    /// 127.0.0.1 when that is unspecified (0.0.0.0 / ::).
    pub relay_address: Option<IpAddr>,
    /// The TURN realm; unset: `provider_id`.
    pub realm: Option<String>,
    /// How long issued credentials stay valid.
    pub credential_ttl_seconds: u64,
    /// Live allocations one endpoint may hold at once.
    pub max_allocations_per_endpoint: u32,
    /// Live allocations the endpoints of one other member may hold together.
    pub max_allocations_per_member: u32,
    /// Live allocations on this relay at once.
    pub max_allocations: u32,
    /// Database look-ups of endpoints the relay does not know yet, running at once; packets
    /// for further unknown endpoints are refused unseen while they run.
    pub max_endpoint_lookups: usize,
    /// Endpoints whose standing the relay remembers; past it, endpoints found inactive are not
    /// remembered (active ones always are).
    pub max_known_endpoints: usize,
    /// Allocate requests with credentials one source (an IPv4 address, an IPv6 /64) may send
    /// per second, sustained; more are answered `486 Allocation Quota Reached`.
    pub allocations_per_second_per_source: u32,
    /// Allocate requests one source may send at once above the sustained rate.
    pub allocation_burst_per_source: u32,
    /// Relaying to or from 127.0.0.0/8 and ::1.
    pub allow_loopback_peers: bool,
    /// Relaying to or from private (RFC 1918, RFC 6598, ULA) and link-local addresses.
    pub allow_private_peers: bool,
    /// File holding the credential secret; unset: `<data_dir>/relay-secret`, generated.
    pub secret: Option<PathBuf>,
    /// The relay the calls this provider's endpoints place use: this provider's, the callee's
    /// provider's, or the federation-wide one the discovery dictionary names.
    pub calls_use: switchyard_protocol::invitation::RelayChoice,
}

/// The SIP edge, for ordinary SIP phones and trunks: a registrar with digest authentication.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct SipConfig {
    /// Off: no SIP port is opened.
    pub enabled: bool,
    /// The transports served: `udp`, `tcp`, or both.
    pub transports: Vec<SipTransport>,
    /// UDP address of the SIP edge.
    pub udp_listen: SocketAddr,
    /// TCP address of the SIP edge.
    pub tcp_listen: SocketAddr,
    /// TLS address of the SIP edge (`sips:`, RFC 3261 §26.2).
    pub tls_listen: SocketAddr,
    /// PEM certificate chain and key for SIP over TLS; unset: the endpoint API's.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// The domains whose addresses of record this registrar serves; empty: `provider_id`.
    pub domains: Vec<String>,
    /// The digest realm; unset: the first domain.
    pub realm: Option<String>,
    /// Shortest registration accepted (423 Interval Too Brief below it).
    pub min_expires_seconds: u64,
    /// Longest registration granted (longer requests are shortened to it).
    pub max_expires_seconds: u64,
    /// Registration time when the REGISTER asks for none.
    pub default_expires_seconds: u64,
    /// Contacts one address of record may have registered at once.
    pub max_contacts_per_aor: u32,
    /// How long a digest nonce is good for (a later answer gets a stale challenge).
    pub nonce_lifetime_seconds: u64,
    /// Largest SIP message accepted (413 above it).
    pub max_message_bytes: usize,
    /// File holding the nonce key; unset: `<data_dir>/sip-secret`, generated. Replicas share it.
    pub secret: Option<PathBuf>,
    /// The digest algorithms challenged with, one challenge each, in this order (`MD5`,
    /// `SHA-256`); answers in others are refused. MD5 comes first by default: many phones read
    /// only the first challenge, and some (libre-based ones such as baresip 1.0) give up when
    /// any challenge names an algorithm they lack, so such fleets list `MD5` alone.
    pub digest_algorithms: Vec<crate::sip::digest::Algorithm>,
    /// Which calls get their media anchored at the edge (`sip::anchor`): `auto`, those whose SDP
    /// offer has no ICE; `always`; `never`.
    pub anchor_media: AnchorMedia,
    /// The address anchored media is received on, as SDP names it; unset: the IP `udp_listen`
    /// is bound to (or, for `0.0.0.0`, the local address towards the phone).
    pub media_address: Option<std::net::IpAddr>,
    /// Receive buffer of the SIP UDP socket: a burst of calls must not overflow it (the kernel
    /// caps it at net.core.rmem_max).
    pub udp_receive_buffer_bytes: usize,
    /// Requests one source (an IPv4 address, an IPv6 /64) may send per second, sustained; more
    /// are answered `503` with `Retry-After` (ACKs are never held back).
    pub requests_per_second_per_source: u32,
    /// Requests one source may send at once above the sustained rate.
    pub request_burst_per_source: u32,
    /// INVITE transactions open at once; a new INVITE beyond them is answered `503`.
    pub max_invites_in_progress: usize,
    /// Completed non-INVITE transactions remembered for retransmissions (Timer J).
    pub max_completed_transactions: usize,
    /// The bytes of their answers kept at most.
    pub max_completed_transaction_bytes: usize,
    /// Messages queued for one TCP or TLS connection; a peer that lets more pile up does not
    /// read and loses the connection.
    pub tcp_write_queue_messages: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AnchorMedia {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SipTransport {
    Udp,
    Tcp,
    Tls,
}

impl Default for SipConfig {
    fn default() -> Self {
        SipConfig {
            enabled: false,
            transports: vec![SipTransport::Udp, SipTransport::Tcp],
            udp_listen: "0.0.0.0:5060".parse().expect("literal address"),
            tcp_listen: "0.0.0.0:5060".parse().expect("literal address"),
            tls_listen: "0.0.0.0:5061".parse().expect("literal address"),
            tls_cert: None,
            tls_key: None,
            domains: Vec::new(),
            realm: None,
            min_expires_seconds: 60,
            max_expires_seconds: 3600,
            default_expires_seconds: 3600,
            max_contacts_per_aor: 10,
            nonce_lifetime_seconds: 300,
            max_message_bytes: 16 * 1024,
            secret: None,
            digest_algorithms: vec![
                crate::sip::digest::Algorithm::Md5,
                crate::sip::digest::Algorithm::Sha256,
            ],
            anchor_media: AnchorMedia::Auto,
            media_address: None,
            udp_receive_buffer_bytes: 4 * 1024 * 1024,
            requests_per_second_per_source: 500,
            request_burst_per_source: 1000,
            max_invites_in_progress: 100_000,
            max_completed_transactions: 100_000,
            max_completed_transaction_bytes: 32 << 20,
            tcp_write_queue_messages: 64,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `switchyard_provider=debug,info`.
    pub level: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("/var/lib/switchyard"),
            provider_id: "provider.invalid".into(),
            endpoint_api: EndpointApiConfig::default(),
            admin: AdminConfig::default(),
            database: DatabaseConfig::default(),
            registry: RegistryConfig::default(),
            pki: PkiConfig::default(),
            invitation: InvitationConfig::default(),
            push: PushConfig::default(),
            federation: FederationConfig::default(),
            directory: DirectoryConfig::default(),
            relay: RelayConfig::default(),
            sip: SipConfig::default(),
            log: LogConfig::default(),
        }
    }
}

impl Default for EndpointApiConfig {
    fn default() -> Self {
        EndpointApiConfig {
            listen: "0.0.0.0:7443".parse().expect("literal address"),
            tls_cert: None,
            tls_key: None,
            server_names: vec!["localhost".into(), "127.0.0.1".into()],
            max_body_bytes: 64 * 1024,
            shutdown_grace_seconds: 10,
            limits: HttpLimits::with_connections(16_384, 200),
        }
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: "127.0.0.1:7080".parse().expect("literal address"),
            token_file: None,
            max_body_bytes: 64 * 1024,
            max_import_bytes: 1 << 30,
            limits: HttpLimits::with_connections(256, 100),
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: None,
            max_connections: 8,
        }
    }
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            default_country_code: None,
            provisioning_code_ttl_seconds: 7 * 24 * 3600,
            endpoint_certificate_days: 365,
        }
    }
}

impl Default for InvitationConfig {
    fn default() -> Self {
        InvitationConfig {
            ring_timeout_seconds: 60,
            max_call_duration_seconds: 4 * 3600,
            seal_key_rotation_seconds: 24 * 3600,
            sweep_interval_ms: 1000,
        }
    }
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            ttl_seconds: 60,
            long_poll_max_seconds: 30,
            recheck_interval_ms: 2000,
        }
    }
}

impl Default for FederationConfig {
    fn default() -> Self {
        FederationConfig {
            enabled: false,
            listen: "0.0.0.0:8443".parse().expect("literal address"),
            ca_cert: None,
            cert: None,
            key: None,
            bootstrap_uri: None,
            directory_refresh_seconds: 300,
            encoding: WireEncoding::Plist,
            request_timeout_ms: 3000,
            timestamp_window_seconds: 300,
            breaker_failures: 5,
            breaker_open_seconds: 30,
            bloom_false_positive_rate: 0.001,
            bloom_rebuild_seconds: 300,
            bloom_rebuild_changes: 100,
            bloom_pull_seconds: 300,
            cert_check_seconds: 10,
            max_filter_bytes: 256 << 20,
            peer_filter_max_false_positive_rate: 0.01,
            max_dispatch_candidates: 16,
            max_answer_bytes: 1 << 20,
            max_body_bytes: 128 * 1024,
            limits: HttpLimits::with_connections(4096, 5000),
        }
    }
}

impl Default for DirectoryConfig {
    fn default() -> Self {
        DirectoryConfig {
            file: None,
            listen: "0.0.0.0:8080".parse().expect("literal address"),
            limits: HttpLimits::default(),
        }
    }
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            enabled: false,
            listen: "0.0.0.0:3478".parse().expect("literal address"),
            relay_address: None,
            realm: None,
            credential_ttl_seconds: 600,
            max_allocations_per_endpoint: 4,
            max_allocations_per_member: 1_000,
            max_allocations: 10_000,
            max_endpoint_lookups: 256,
            max_known_endpoints: 100_000,
            allocations_per_second_per_source: 10,
            allocation_burst_per_source: 20,
            allow_loopback_peers: false,
            allow_private_peers: false,
            secret: None,
            calls_use: Default::default(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

impl Config {
    /// Reads a file and applies the process environment's overrides.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml_with_env(&text, std::env::vars())
    }

    /// Parses TOML text, applies `SWITCHYARD_...` overrides from `env`, and checks everything.
    pub fn from_toml_with_env(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            ConfigError::Invalid(vec![ConfigIssue {
                key: String::new(),
                message: format!("not valid TOML: {}", e.to_string().trim()),
            }])
        })?;
        let mut issues = Vec::new();
        let overrides = apply_env_overrides(
            &mut table,
            env.into_iter()
                .filter(|(name, _)| is_env_override(name))
                .collect(),
            &mut issues,
        );
        issues.extend(name_overrides(leaf_issues::<Config>(&table), &overrides));
        if !issues.is_empty() {
            return Err(ConfigError::Invalid(issues));
        }
        let config: Config =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| {
                    ConfigError::Invalid(vec![ConfigIssue {
                        key: String::new(),
                        message: e.message().to_string(),
                    }])
                })?;
        let issues = name_overrides(config.semantic_issues(), &overrides);
        if issues.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(issues))
        }
    }

    pub fn database_url(&self) -> String {
        match &self.database.url {
            Some(url) => url.clone(),
            None => format!("sqlite:{}", self.data_dir.join("switchyard.db").display()),
        }
    }

    pub fn admin_token_path(&self) -> PathBuf {
        self.admin
            .token_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("admin-token"))
    }

    pub fn sip_secret_path(&self) -> PathBuf {
        self.sip
            .secret
            .clone()
            .unwrap_or_else(|| self.data_dir.join("sip-secret"))
    }

    /// `sip.domains`, lowercased; `provider_id` when none are listed.
    pub fn sip_domains(&self) -> Vec<String> {
        if self.sip.domains.is_empty() {
            vec![self.provider_id.to_ascii_lowercase()]
        } else {
            self.sip
                .domains
                .iter()
                .map(|d| d.to_ascii_lowercase())
                .collect()
        }
    }

    /// `sip.realm`, else the first domain.
    pub fn sip_realm(&self) -> &str {
        match &self.sip.realm {
            Some(realm) => realm,
            None => self
                .sip
                .domains
                .first()
                .map(String::as_str)
                .unwrap_or(&self.provider_id),
        }
    }

    pub fn relay_secret_path(&self) -> PathBuf {
        self.relay
            .secret
            .clone()
            .unwrap_or_else(|| self.data_dir.join("relay-secret"))
    }

    /// The IP put in relayed addresses: `relay.relay_address`, else the listen IP, else 127.0.0.1.
    pub fn relay_public_ip(&self) -> IpAddr {
        match self.relay.relay_address {
            Some(ip) => ip,
            None if !self.relay.listen.ip().is_unspecified() => self.relay.listen.ip(),
            None => IpAddr::V4(Ipv4Addr::LOCALHOST),
        }
    }

    pub fn relay_realm(&self) -> &str {
        self.relay.realm.as_deref().unwrap_or(&self.provider_id)
    }

    pub fn endpoint_ca_paths(&self) -> (PathBuf, PathBuf) {
        match (&self.pki.endpoint_ca_cert, &self.pki.endpoint_ca_key) {
            (Some(cert), Some(key)) => (cert.clone(), key.clone()),
            _ => (
                self.data_dir.join("endpoint-ca.pem"),
                self.data_dir.join("endpoint-ca.key"),
            ),
        }
    }

    /// The configuration as TOML, every key with its value (defaults included).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("configuration serializes")
    }
}
