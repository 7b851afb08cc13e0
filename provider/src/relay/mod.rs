//! The TURN relay (RFC 8656 over UDP: Allocate, Refresh, CreatePermission, ChannelBind,
//! Send/Data indications, ChannelData), built on the webrtc-rs `turn` server.
//!
//! The relay carries what endpoints already encrypted end to end (SRTP); it sees addresses and
//! sizes, never media in the clear. Only registered endpoints get credentials
//! (`POST /v1/relay-credentials`, see [`auth`]); allocations are counted per endpoint and in
//! total, and peers are filtered by address class (see [`filter`]).

pub mod auth;
pub mod choice;
pub mod filter;
pub mod http;
pub mod nonces;
pub mod policy;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use switchyard_protocol::dict::Dict;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use turn::server::config::{ConnConfig, ServerConfig};
use turn::server::Server;

/// The `turn` and `webrtc-util` crates the relay is built on, for clients in tests and tools.
pub use ::turn;
pub use ::webrtc_util;

/// A TURN client of `server` on `conn`, already listening: how the tests and the relay benchmark
/// drive a relay.
pub async fn turn_client(
    server: SocketAddr,
    username: &str,
    password: &str,
    realm: &str,
    conn: Arc<dyn webrtc_util::Conn + Send + Sync>,
) -> Result<turn::client::Client, turn::Error> {
    let client = turn::client::Client::new(turn::client::ClientConfig {
        stun_serv_addr: server.to_string(),
        turn_serv_addr: server.to_string(),
        username: username.into(),
        password: password.into(),
        realm: realm.into(),
        software: String::new(),
        rto_in_ms: 0,
        conn,
        vnet: None,
    })
    .await?;
    client.listen().await?;
    Ok(client)
}
use crate::client_limits::{ClientLimits, ClientLimitsConfig};
use crate::config::Config;
use crate::db::Db;
use auth::{unix_now, RelayState, RestAuth};
use filter::{ListenerConn, QuotaGenerator};
use policy::PeerPolicy;

/// The refusal of relay requests to a provider that runs no relay.
pub(crate) fn relay_disabled() -> crate::wire::ApiError {
    crate::wire::ApiError::new(
        axum::http::StatusCode::NOT_FOUND,
        "relay-disabled",
        "this provider runs no relay",
    )
}

/// A running relay.
pub struct Relay {
    /// The UDP address the TURN server is bound to.
    pub addr: SocketAddr,
    /// The address put in `turn:` URIs: the relay address with the bound port.
    pub public_addr: SocketAddr,
    pub state: Arc<RelayState>,
    ttl: u64,
    server: Arc<Server>,
    stop: CancellationToken,
    recheck: Mutex<Option<JoinHandle<()>>>,
}

impl Relay {
    /// Binds `relay.listen` and starts serving, with the revocation re-check in the background.
    pub async fn start(
        config: &Config,
        db: Db,
        federation: Option<Arc<crate::federation::Federation>>,
    ) -> anyhow::Result<Relay> {
        let relay = &config.relay;
        let secret =
            crate::pki::load_or_create_secret(&config.relay_secret_path(), "relay secret")?
                .into_bytes();
        let state = Arc::new(RelayState::new(
            secret,
            config.relay_realm().to_string(),
            PeerPolicy {
                allow_loopback: relay.allow_loopback_peers,
                allow_private: relay.allow_private_peers,
            },
            auth::Quotas {
                per_endpoint: relay.max_allocations_per_endpoint,
                per_member: relay.max_allocations_per_member,
                total: relay.max_allocations,
                lookups_at_once: relay.max_endpoint_lookups,
                known_endpoints: relay.max_known_endpoints,
            },
            Some(auth::Standing { db, federation }),
            relay.credential_ttl_seconds,
        ));
        let socket = UdpSocket::bind(relay.listen)
            .await
            .with_context(|| format!("binding relay.listen {}", relay.listen))?;
        let addr = socket.local_addr()?;
        let public_ip = config.relay_public_ip();
        let server = Server::new(ServerConfig {
            conn_configs: vec![ConnConfig {
                conn: Arc::new(ListenerConn::new(
                    socket,
                    state.clone(),
                    ClientLimits::new(ClientLimitsConfig {
                        max_connections: usize::MAX,
                        requests_per_second: f64::from(relay.allocations_per_second_per_source),
                        burst: f64::from(relay.allocation_burst_per_source),
                    }),
                )),
                relay_addr_generator: Box::new(QuotaGenerator {
                    state: state.clone(),
                    bind_ip: relay.listen.ip(),
                    public_ip,
                }),
            }],
            realm: state.realm.clone(),
            auth_handler: Arc::new(RestAuth(state.clone())),
            channel_bind_timeout: Duration::ZERO,
            alloc_close_notify: None,
        })
        .await
        .context("starting the TURN server")?;
        let server = Arc::new(server);
        metrics::gauge!("switchyard_relay_allocations").set(0.0);
        let stop = CancellationToken::new();
        let recheck = tokio::spawn(recheck_endpoints(
            state.clone(),
            server.clone(),
            Duration::from_millis(config.push.recheck_interval_ms),
            stop.clone(),
        ));
        tracing::info!(%addr, %public_ip, realm = %state.realm, "relay started");
        Ok(Relay {
            addr,
            public_addr: SocketAddr::new(public_ip, addr.port()),
            state,
            ttl: relay.credential_ttl_seconds,
            server,
            stop,
            recheck: Mutex::new(Some(recheck)),
        })
    }

    /// Fresh credentials for an authenticated endpoint, as the credentials route answers them.
    pub fn credentials(&self, endpoint_id: &str) -> Dict {
        let (username, password) = self.state.issue(endpoint_id, unix_now() + self.ttl);
        let uri = format!("turn:{}?transport=udp", self.public_addr);
        metrics::counter!("switchyard_relay_credentials_issued_total").increment(1);
        Dict::new()
            .with("username", username)
            .with("password", password)
            .with("ttl", self.ttl as i64)
            .with("uris", vec![uri])
            .with("realm", self.state.realm.as_str())
    }

    /// Closes every allocation and the listener.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        let task = self.recheck.lock().expect("relay task lock").take();
        if let Some(task) = task {
            let _ = task.await;
        }
        if let Err(e) = self.server.close().await {
            tracing::warn!(error = %e, "closing the relay failed");
        }
        tracing::info!("relay stopped");
    }
}

async fn recheck_endpoints(
    state: Arc<RelayState>,
    server: Arc<Server>,
    every: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        for username in state.recheck().await {
            if let Err(e) = server.delete_allocations_by_username(username).await {
                tracing::warn!(error = %e, "relay: deleting a revoked endpoint's allocations failed");
            }
        }
    }
}
