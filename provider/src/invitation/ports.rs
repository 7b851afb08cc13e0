//! The call core's ports over this daemon: the call store is the database (a write unit is one
//! write transaction, whose pushes wake this replica's push channels once it commits), the
//! forwarder is the federation's mutual-TLS client, the sealer the rotating seal keys.

use switchyard_calls::ports::{
    CallChange, CallStore, Candidates, Clock, Endpoint, Event, Forwarder, PeerFailure, Ports,
    Sealer, StoreFailure, WriteUnit,
};
use switchyard_calls::refusal::RefusalClass;
use switchyard_calls::{CallRecord, CallState, SessionState, Settings};
use switchyard_protocol::attestation::Attestation;
use switchyard_protocol::dict::{Dict, Encoding};
use switchyard_protocol::invitation::{EndReason, ForwardAction, Push};

use crate::app::App;
use crate::db::{self, EndpointRecord, StoreError, WriteTx};
use crate::federation::peers::PeerError;
use crate::federation::Federation;
use crate::push::Outbox;

/// The ports of one provider process, borrowed from its `App` for the length of a message.
pub struct AppPorts<'a> {
    app: &'a App,
    forwarder: Option<FederationForwarder<'a>>,
}

impl<'a> AppPorts<'a> {
    pub fn new(app: &'a App) -> Self {
        AppPorts {
            app,
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
    }
}

fn failure(e: StoreError) -> StoreFailure {
    Box::new(e)
}

fn sql(e: sqlx::Error) -> StoreFailure {
    failure(e.into())
}

pub fn endpoint_of(record: &EndpointRecord) -> Endpoint {
    Endpoint {
        id: record.id.clone(),
        push_token: record.push_token.clone(),
        capabilities: record.capabilities.clone(),
    }
}

impl<'a> Ports for AppPorts<'a> {
    type Store = App;
    type Forwarder = FederationForwarder<'a>;
    type Sealer = crate::seal::Sealer;
    type Clock = SystemClock;

    fn store(&self) -> &App {
        self.app
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
        db::now_ms()
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

impl CallStore for App {
    type Unit<'a> = DbUnit<'a>;

    async fn begin(&self) -> Result<DbUnit<'_>, StoreFailure> {
        Ok(DbUnit {
            tx: self.db.begin_write().await.map_err(failure)?,
            outbox: Outbox::default(),
            app: self,
        })
    }

    async fn call(&self, session_id: &str) -> Result<Option<CallRecord>, StoreFailure> {
        self.db.call(session_id).await.map_err(failure)
    }

    async fn hosts(&self, uri: &str) -> Result<bool, StoreFailure> {
        Ok(self
            .db
            .user_id_for_uri(uri)
            .await
            .map_err(failure)?
            .is_some())
    }

    async fn endpoints_for(&self, uri: &str) -> Result<Vec<Endpoint>, StoreFailure> {
        let records = self.db.endpoints_for_uri(uri).await.map_err(failure)?;
        Ok(records.iter().map(endpoint_of).collect())
    }

    async fn claim_forward_id(
        &self,
        provider: &str,
        forward_id: &str,
    ) -> Result<bool, StoreFailure> {
        self.db
            .record_forward_nonce(provider, forward_id)
            .await
            .map_err(failure)
    }
}

/// One write transaction, and the push channels to wake once it commits.
pub struct DbUnit<'a> {
    tx: WriteTx,
    outbox: Outbox,
    app: &'a App,
}

impl WriteUnit for DbUnit<'_> {
    async fn call(&mut self, session_id: &str) -> Result<Option<CallRecord>, StoreFailure> {
        db::call_in(&mut self.tx, session_id).await.map_err(failure)
    }

    async fn insert_call(&mut self, record: &CallRecord) -> Result<bool, StoreFailure> {
        match db::insert_call(&mut self.tx, record).await {
            Ok(()) => Ok(true),
            Err(StoreError::Conflict(_)) => Ok(false),
            Err(e) => Err(failure(e)),
        }
    }

    async fn transition(
        &mut self,
        session_id: &str,
        from: &[CallState],
        to: CallState,
        change: CallChange<'_>,
    ) -> Result<bool, StoreFailure> {
        db::transition_call(
            &mut self.tx,
            session_id,
            from,
            to,
            db::CallChange {
                reason: change.reason.map(EndReason::as_str),
                answered_by: change.answered_by,
            },
        )
        .await
        .map_err(failure)
    }

    async fn reject(
        &mut self,
        session_id: &str,
        party: &str,
        reason: &str,
        final_reason: EndReason,
    ) -> Result<(bool, i64), StoreFailure> {
        db::reject_and_end_if_last(
            &mut self.tx,
            session_id,
            party,
            reason,
            final_reason.as_str(),
        )
        .await
        .map_err(failure)
    }

    async fn rejections(
        &mut self,
        session_id: &str,
    ) -> Result<Vec<(String, String)>, StoreFailure> {
        db::rejection_reasons(&mut self.tx, session_id)
            .await
            .map_err(failure)
    }

    async fn delete_call(&mut self, session_id: &str) -> Result<(), StoreFailure> {
        db::delete_call(&mut self.tx, session_id)
            .await
            .map_err(failure)
    }

    async fn push(
        &mut self,
        endpoint_id: &str,
        push: &Push,
        ttl_ms: i64,
    ) -> Result<bool, StoreFailure> {
        self.outbox
            .push(&mut self.tx, endpoint_id, &push.to_dict(), ttl_ms)
            .await
            .map_err(failure)
    }

    async fn forward_answer(
        &mut self,
        provider: &str,
        session_id: &str,
        action: ForwardAction,
    ) -> Result<Option<Dict>, StoreFailure> {
        let earlier = db::forward_result(&mut self.tx, provider, session_id, action.as_str())
            .await
            .map_err(failure)?;
        earlier
            .map(|(_, body)| {
                Dict::decode(body.as_bytes(), Encoding::Json)
                    .map_err(|e| failure(StoreError::Corrupt(format!("kept Forward answer: {e}"))))
            })
            .transpose()
    }

    async fn save_forward_answer(
        &mut self,
        provider: &str,
        session_id: &str,
        action: ForwardAction,
        answer: &Dict,
    ) -> Result<(), StoreFailure> {
        let body = String::from_utf8(answer.encode(Encoding::Json))
            .map_err(|e| failure(StoreError::Corrupt(e.to_string())))?;
        db::save_forward_result(
            &mut self.tx,
            provider,
            session_id,
            action.as_str(),
            200,
            &body,
        )
        .await
        .map_err(failure)
    }

    async fn commit(self) -> Result<(), StoreFailure> {
        self.tx.commit().await.map_err(sql)?;
        self.outbox.wake(&self.app.hub);
        Ok(())
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
