//! The call core's ports over this daemon: the call store is the database's (`db::calls`), the
//! forwarder is the federation's mutual-TLS client, the sealer the rotating seal keys.

use switchyard_calls::ports::{Candidates, Clock, Event, Forwarder, PeerFailure, Ports, Sealer};
use switchyard_calls::refusal::RefusalClass;
use switchyard_calls::{SessionState, Settings};
use switchyard_protocol::attestation::Attestation;
use switchyard_protocol::dict::Dict;
use switchyard_protocol::invitation::ForwardAction;

use crate::app::App;
use crate::db::calls::DbCallStore;
use crate::federation::peers::PeerError;
use crate::federation::Federation;
use crate::shared::now_ms;

/// The ports of one provider process, borrowed from its `App` for the length of a message.
pub struct AppPorts<'a> {
    app: &'a App,
    store: DbCallStore,
    forwarder: Option<FederationForwarder<'a>>,
}

impl<'a> AppPorts<'a> {
    pub fn new(app: &'a App) -> Self {
        AppPorts {
            app,
            store: DbCallStore::new(app.db.clone(), app.hub.clone()),
            forwarder: app
                .federation
                .as_deref()
                .map(|fed| FederationForwarder { fed }),
        }
    }
}

/// The settings the core reads, from the configuration and the endpoint CA.
pub fn settings(app_config: &crate::config::Config, endpoint_ca_pem: &str) -> Settings {
    Settings {
        provider_id: app_config.provider_id.clone(),
        ring_timeout_ms: (app_config.invitation.ring_timeout_seconds * 1000) as i64,
        push_ttl_ms: (app_config.push.ttl_seconds * 1000) as i64,
        endpoint_ca_pem: endpoint_ca_pem.to_string(),
        relay_choice: app_config.relay.calls_use,
        timestamp_window_s: app_config.federation.timestamp_window_seconds as i64,
        max_call_duration_ms: app_config
            .invitation
            .max_call_duration_seconds
            .saturating_mul(1000)
            .min(i64::MAX as u64) as i64,
    }
}

impl<'a> Ports for AppPorts<'a> {
    type Store = DbCallStore;
    type Forwarder = FederationForwarder<'a>;
    type Sealer = crate::seal::Sealer;
    type Clock = SystemClock;

    fn store(&self) -> &DbCallStore {
        &self.store
    }

    fn forwarder(&self) -> Option<&FederationForwarder<'a>> {
        self.forwarder.as_ref()
    }

    fn sealer(&self) -> &crate::seal::Sealer {
        &self.app.sealer
    }

    fn clock(&self) -> &SystemClock {
        &SystemClock
    }

    fn settings(&self) -> &Settings {
        &self.app.call_settings
    }

    fn observe(&self, event: Event) {
        match event {
            Event::Outcome(state) => {
                metrics::counter!("switchyard_calls_total", "outcome" => state.as_str())
                    .increment(1)
            }
            Event::DispatchCandidates(n) => {
                metrics::histogram!("switchyard_federation_dispatch_candidates").record(n as f64)
            }
            Event::FalsePositive(peer) => {
                metrics::counter!("switchyard_federation_false_positives_total", "peer" => peer)
                    .increment(1)
            }
            Event::AttestationLowered { peer, reason } => {
                tracing::info!(peer = %peer, reason, "a received Initiate's caller attestation was lowered");
                metrics::counter!("switchyard_caller_attestations_lowered_total", "peer" => peer, "reason" => reason)
                    .increment(1)
            }
            Event::Undelivered {
                session_id,
                peer,
                what,
                error,
            } => tracing::warn!(session = %session_id, peer = %peer, error = %error, "{what}"),
        }
    }
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        now_ms()
    }

    fn pause(&self, ms: u64) -> impl std::future::Future<Output = ()> + Send {
        tokio::time::sleep(std::time::Duration::from_millis(ms))
    }
}

impl Sealer for crate::seal::Sealer {
    fn seal(&self, state: &SessionState) -> String {
        crate::seal::Sealer::seal(self, state)
    }

    fn open(&self, token: &str) -> Result<SessionState, String> {
        crate::seal::Sealer::open(self, token).map_err(|e| e.to_string())
    }
}

/// Forwards over the federation's mutual TLS, to the member the discovery dictionary in force
/// lists, with its certificate pinned.
pub struct FederationForwarder<'a> {
    fed: &'a Federation,
}

impl Forwarder for FederationForwarder<'_> {
    async fn send(
        &self,
        to: &str,
        action: ForwardAction,
        forward: Dict,
    ) -> Result<Dict, PeerFailure> {
        let Some(member) = self.fed.member(to) else {
            return Err(PeerFailure::Undelivered(format!(
                "`{to}` is no longer a member of the federation"
            )));
        };
        let identity = self.fed.identity.current();
        self.fed
            .peers
            .request(
                &identity,
                &member,
                reqwest::Method::POST,
                action.path(),
                Some(&forward),
            )
            .await
            .map_err(|e| match &e {
                PeerError::Refused {
                    status,
                    code,
                    message,
                    ..
                } => PeerFailure::Refused {
                    code: code.clone(),
                    message: message.clone(),
                    class: match status {
                        404 => RefusalClass::NotFound,
                        409 => RefusalClass::Conflict,
                        410 => RefusalClass::Gone,
                        _ => RefusalClass::Other,
                    },
                    description: e.to_string(),
                },
                _ => PeerFailure::Undelivered(e.to_string()),
            })
    }

    fn candidates(&self, uri: &str) -> Candidates {
        let Some(directory) = self.fed.directory.current() else {
            return Candidates::NoDirectory;
        };
        let (members, skipped) = self
            .fed
            .peers
            .candidates(&directory, &self.fed.provider_id, uri);
        Candidates::Members {
            members: members.into_iter().map(|m| m.provider_id).collect(),
            skipped,
        }
    }

    fn may_host(&self, member: &str, uri: &str) -> bool {
        self.fed.peers.may_host(member, uri)
    }

    fn forward_id(&self) -> String {
        crate::shared::random_token(16)
    }

    fn attest(&self, attestation: &Attestation) -> Result<Vec<u8>, String> {
        attestation
            .sign(&self.fed.identity.current().signing_key)
            .map_err(|e| e.to_string())
    }

    fn federation_relay(&self) -> Option<String> {
        self.fed
            .directory
            .current()
            .and_then(|directory| directory.federation_relay.clone())
    }
}
