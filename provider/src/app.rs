//! The state shared by every request of one provider process.

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use switchyard_protocol::uri::Canonicalizer;
use tokio::sync::watch;

use crate::config::Config;
use crate::db::Db;
use crate::federation::Federation;
use crate::pki::EndpointCa;
use crate::push::PushHub;
use crate::registry::Registry;
use crate::seal::Sealer;

pub struct App {
    pub config: Config,
    pub db: Db,
    pub sealer: Sealer,
    /// Shared with the call store, which wakes push channels when its transactions commit.
    pub hub: Arc<PushHub>,
    pub ca: EndpointCa,
    pub canonicalizer: Canonicalizer,
    pub admin_token: String,
    /// Failed operator logins, for rate limiting.
    pub login_limiter: crate::operators::LoginLimiter,
    /// Present when `federation.enabled`.
    pub federation: Option<std::sync::Arc<Federation>>,
    pub metrics: PrometheusHandle,
    /// What the call core reads of the configuration and the endpoint CA.
    pub call_settings: switchyard_calls::Settings,
    /// Turns true when the provider begins shutting down; long-lived channels close on it.
    pub shutdown: watch::Receiver<bool>,
}

impl crate::wire::BodyLimit for App {
    fn max_body_bytes(&self) -> usize {
        self.config.endpoint_api.max_body_bytes
    }

    fn body_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.config.endpoint_api.limits.body_timeout_seconds)
    }

    fn listener(&self) -> &'static str {
        "endpoint"
    }
}

impl App {
    pub fn registry(&self) -> Registry<'_> {
        Registry {
            db: &self.db,
            hub: &self.hub,
            ca: &self.ca,
            canonicalizer: &self.canonicalizer,
            config: &self.config.registry,
            federation: self.federation.as_deref(),
        }
    }
}
