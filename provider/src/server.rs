//! Starting and stopping a provider: storage, keys, the two listeners (endpoint API over mutual
//! TLS, admin API over plain HTTP on loopback by default) and the background sweeps.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use switchyard_protocol::uri::Canonicalizer;
use tokio::net::TcpListener;

use crate::listener::Listener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::app::App;
use crate::config::Config;
use crate::db::Db;
use crate::pki::{self, EndpointCa};
use crate::push::PushHub;
use crate::seal::Sealer;

/// A running provider.
pub struct Provider {
    pub endpoint_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The federation listener, when `federation.enabled`.
    pub federation_addr: Option<SocketAddr>,
    /// The directory role's listener, when `directory.file` is set.
    pub directory_addr: Option<SocketAddr>,
    /// The TURN relay's UDP address, when `relay.enabled`.
    pub relay_addr: Option<SocketAddr>,
    /// The SIP edge's UDP, TCP and TLS addresses, when `sip.enabled` (and the transport is on).
    pub sip_udp_addr: Option<SocketAddr>,
    pub sip_tcp_addr: Option<SocketAddr>,
    pub sip_tls_addr: Option<SocketAddr>,
    pub app: Arc<App>,
    relay: Option<Arc<crate::relay::Relay>>,
    sip: Option<crate::sip::SipListeners>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// The Prometheus recorder is process-wide; every provider in the process shares it.
fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).expect("no other metrics recorder is installed");
            handle
        })
        .clone()
}

/// Installs ring as rustls' process-wide crypto provider (several crates could otherwise each
/// pull in a different one, and rustls would refuse to choose).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl Provider {
    pub async fn start(config: Config) -> anyhow::Result<Provider> {
        install_crypto_provider();
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating data_dir {}", config.data_dir.display()))?;
        let admin_token = pki::load_or_create_secret(&config.admin_token_path(), "admin token")?;
        let (ca_cert, ca_key) = config.endpoint_ca_paths();
        let ca = EndpointCa::load_or_create(&ca_cert, &ca_key, &config.provider_id)
            .context("loading the endpoint CA")?;
        let (chain, key) = match (&config.endpoint_api.tls_cert, &config.endpoint_api.tls_key) {
            (Some(cert), Some(key)) => (
                switchyard_protocol::pki::load_certs(cert)?,
                switchyard_protocol::pki::load_key(key)?,
            ),
            _ => ca.issue_server(&config.endpoint_api.server_names)?,
        };
        let sip_tls = sip_tls_config(&config, &chain, &key)?;
        let tls = ca.server_config(chain, key)?;
        let db = Db::connect(&config.database_url(), config.database.max_connections)
            .await
            .with_context(|| format!("opening the database {}", redact(&config.database_url())))?;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let federation = if config.federation.enabled {
            Some(Arc::new(
                crate::federation::Federation::new(&config, db.clone(), shutdown_rx.clone())
                    .context("loading the federation certificate")?,
            ))
        } else {
            None
        };
        let sealer = Sealer::default();
        sealer
            .refresh(&db, rotation_ms(&config))
            .await
            .context("loading sealing keys")?;

        let endpoint_listener = TcpListener::bind(config.endpoint_api.listen)
            .await
            .with_context(|| {
                format!("binding endpoint_api.listen {}", config.endpoint_api.listen)
            })?;
        let admin_listener = TcpListener::bind(config.admin.listen)
            .await
            .with_context(|| format!("binding admin.listen {}", config.admin.listen))?;
        let endpoint_addr = endpoint_listener.local_addr()?;
        let admin_addr = admin_listener.local_addr()?;
        let federation_listener = match &federation {
            Some(_) => Some(
                TcpListener::bind(config.federation.listen)
                    .await
                    .with_context(|| {
                        format!("binding federation.listen {}", config.federation.listen)
                    })?,
            ),
            None => None,
        };
        let directory_listener = match &config.directory.file {
            Some(_) => Some(
                TcpListener::bind(config.directory.listen)
                    .await
                    .with_context(|| {
                        format!("binding directory.listen {}", config.directory.listen)
                    })?,
            ),
            None => None,
        };
        let federation_addr = federation_listener
            .as_ref()
            .map(|l| l.local_addr())
            .transpose()?;
        let directory_addr = directory_listener
            .as_ref()
            .map(|l| l.local_addr())
            .transpose()?;

        let relay = if config.relay.enabled {
            Some(Arc::new(
                crate::relay::Relay::start(&config, db.clone(), federation.clone())
                    .await
                    .context("starting the relay")?,
            ))
        } else {
            None
        };
        let relay_addr = relay.as_ref().map(|r| r.addr);

        let app = Arc::new(App {
            canonicalizer: Canonicalizer::new(config.registry.default_country_code),
            call_settings: crate::invitation::ports::settings(&config, ca.cert_pem()),
            config,
            db,
            sealer,
            hub: Arc::new(PushHub::default()),
            ca,
            admin_token,
            login_limiter: Default::default(),
            federation,
            metrics: metrics_handle(),
            shutdown: shutdown_rx.clone(),
        });
        let mut tasks = Vec::new();
        let mut endpoint_router = crate::api::router(app.clone()).fallback(crate::api::not_found);
        if let Some(relay) = &relay {
            endpoint_router =
                endpoint_router
                    .layer(axum::Extension(relay.clone()))
                    .layer(axum::Extension(crate::relay::http::HttpRelay::new(
                        &app.config,
                    )));
        }
        let grace = Duration::from_secs(app.config.endpoint_api.shutdown_grace_seconds);
        tasks.push(tokio::spawn(
            Listener {
                name: "endpoint",
                limits: app.config.endpoint_api.limits,
                grace,
            }
            .serve(
                endpoint_listener,
                Some(Box::new(move || tls.clone())),
                endpoint_router,
                shutdown_rx.clone(),
            ),
        ));
        if let (Some(fed), Some(listener)) = (app.federation.clone(), federation_listener) {
            let mut router = crate::federation::routes::router(app.clone());
            if let Some(relay) = &relay {
                router = router.layer(axum::Extension(relay.clone()));
            }
            let current = fed.clone();
            tasks.push(tokio::spawn(
                Listener {
                    name: "federation",
                    limits: app.config.federation.limits,
                    grace,
                }
                .serve(
                    listener,
                    Some(Box::new(move || current.identity.current().server.clone())),
                    router,
                    shutdown_rx.clone(),
                ),
            ));
            tasks.extend(fed.spawn_tasks());
            tasks.push(tokio::spawn(reload_on_sighup(app.clone())));
        }
        if let (Some(file), Some(listener)) =
            (app.config.directory.file.clone(), directory_listener)
        {
            let router = crate::federation::directory_host::directory_router(file);
            tasks.push(tokio::spawn(
                Listener {
                    name: "directory",
                    limits: app.config.directory.limits,
                    grace,
                }
                .serve(listener, None, router, shutdown_rx.clone()),
            ));
        }
        let mut admin = crate::admin::router(app.clone());
        if let Some(relay) = &relay {
            admin = admin.layer(axum::Extension(relay.clone()));
        }
        tasks.push(tokio::spawn(
            Listener {
                name: "admin",
                limits: app.config.admin.limits,
                grace,
            }
            .serve(admin_listener, None, admin, shutdown_rx.clone()),
        ));
        tasks.push(tokio::spawn(sweep(app.clone())));
        tasks.push(tokio::spawn(crate::push::replicas::watch_channels(
            app.db.clone(),
            app.hub.clone(),
            Duration::from_millis(app.config.push.recheck_interval_ms),
            shutdown_rx.clone(),
        )));
        let sip = if app.config.sip.enabled {
            Some(
                crate::sip::SipEdge::new(app.clone())
                    .context("setting up the SIP edge")?
                    .start(sip_tls)
                    .await?,
            )
        } else {
            None
        };
        let (sip_udp_addr, sip_tcp_addr, sip_tls_addr) = sip
            .as_ref()
            .map_or((None, None, None), |s| (s.udp_addr, s.tcp_addr, s.tls_addr));
        tracing::info!(%endpoint_addr, %admin_addr, ?federation_addr, ?directory_addr, ?relay_addr, ?sip_udp_addr, ?sip_tcp_addr, ?sip_tls_addr, provider = %app.config.provider_id, "provider started");
        Ok(Provider {
            endpoint_addr,
            admin_addr,
            federation_addr,
            directory_addr,
            relay_addr,
            sip_udp_addr,
            sip_tcp_addr,
            sip_tls_addr,
            app,
            relay,
            sip,
            shutdown: shutdown_tx,
            tasks,
        })
    }

    /// The TURN relay, when `relay.enabled`.
    pub fn relay(&self) -> Option<&Arc<crate::relay::Relay>> {
        self.relay.as_ref()
    }

    /// Stops accepting, lets in-flight requests finish (up to the grace period), closes push
    /// channels, and closes the database.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        if let Some(sip) = &self.sip {
            sip.stop();
        }
        for task in self.tasks {
            let _ = task.await;
        }
        if let Some(relay) = &self.relay {
            relay.shutdown().await;
        }
        self.app.db.close().await;
        tracing::info!("provider stopped");
    }
}

/// The SIP edge's TLS server configuration: `sip.tls_cert`/`sip.tls_key`, else the endpoint API's
/// chain; no client certificates (phones have none) and no ALPN.
fn sip_tls_config(
    config: &Config,
    chain: &[rustls::pki_types::CertificateDer<'static>],
    key: &rustls::pki_types::PrivateKeyDer<'static>,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let (chain, key) = match (&config.sip.tls_cert, &config.sip.tls_key) {
        (Some(cert), Some(key)) => (
            switchyard_protocol::pki::load_certs(cert)?,
            switchyard_protocol::pki::load_key(key)?,
        ),
        _ => (chain.to_vec(), key.clone_key()),
    };
    let tls = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the SIP edge's TLS certificate")?;
    Ok(Arc::new(tls))
}

fn rotation_ms(config: &Config) -> i64 {
    (config.invitation.seal_key_rotation_seconds * 1000) as i64
}

/// Hides a database password in logs and errors.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_string(),
    }
}

/// On SIGHUP, reloads the federation certificate and key.
async fn reload_on_sighup(app: Arc<App>) {
    let Ok(mut hangup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
    else {
        tracing::warn!(
            "cannot listen for SIGHUP; certificate files are still checked periodically"
        );
        return;
    };
    let mut shutdown = app.shutdown.clone();
    let Some(fed) = app.federation.clone() else {
        return;
    };
    loop {
        tokio::select! {
            _ = hangup.recv() => {}
            _ = crate::shared::shutting_down(&mut shutdown) => return,
        }
        match fed.identity.reload() {
            Ok(()) => tracing::info!("SIGHUP: federation certificate reloaded"),
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: the federation certificate does not load; keeping the previous one")
            }
        }
    }
}

/// Periodic work: ring timeouts, expired pushes, key rotation, the endpoint gauge.
async fn sweep(app: Arc<App>) {
    let mut shutdown = app.shutdown.clone();
    let mut tick = tokio::time::interval(Duration::from_millis(
        app.config.invitation.sweep_interval_ms,
    ));
    let mut last_rotation_check: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = crate::shared::shutting_down(&mut shutdown) => return,
        }
        if let Err(e) = crate::invitation::expire_overdue_calls(&app).await {
            tracing::warn!(error = %e, "expiring overdue calls failed");
        }
        if let Err(e) = crate::invitation::end_overlong_calls(&app).await {
            tracing::warn!(error = %e, "ending calls past the maximum call duration failed");
        }
        match app.db.delete_expired_pushes().await {
            Ok(n) if n > 0 => metrics::counter!("switchyard_pushes_expired_total").increment(n),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "deleting expired pushes failed"),
        }
        if last_rotation_check.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
            last_rotation_check = Some(tokio::time::Instant::now());
            if let Err(e) = app.sealer.refresh(&app.db, rotation_ms(&app.config)).await {
                tracing::warn!(error = %e, "rotating sealing keys failed");
            }
            app.registry().refresh_endpoint_gauge().await;
            if let Err(e) = app
                .db
                .purge_expired_operator_sessions(crate::shared::now_ms())
                .await
            {
                tracing::warn!(error = %e, "purging expired operator sessions failed");
            }
        }
    }
}
