//! The invitation protocol's flows, written once against the ports: the local flow (a Request
//! from an endpoint here), the originator's (the caller is here, the callee elsewhere) and the
//! answerer's (this provider rings for another's caller). Each opens a write unit, reads the
//! call record, asks [`crate::rules`], writes the change and its pushes, commits, and only then
//! sends Forwards.

mod answerer;
mod local;
mod originator;
mod received;

use switchyard_protocol::invitation::{
    CancelPush, CancelReason, EndReason, ForwardCancelReason, InitiateRequest, MessageError, Push,
    RejectPush, RejectReason, RelayChoice, SessionId,
};

pub use crate::ports::Settings;

use switchyard_protocol::pki;

use crate::ports::{CallChange, Endpoint, Event, Ports, Sender, StoreFailure, WriteUnit};
use crate::record::CallState;
use crate::refusal::{Refusal, RefusalCode};
use crate::rules::CancelPlan;
use crate::session::SessionState;

/// What a flow ends with when it does not answer: a refusal for the sender, or a store failure
/// (an internal error; the message may be retried).
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("store: {0}")]
    Store(StoreFailure),
}

impl From<StoreFailure> for CallError {
    fn from(e: StoreFailure) -> CallError {
        CallError::Store(e)
    }
}

impl From<MessageError> for CallError {
    fn from(e: MessageError) -> CallError {
        CallError::Refused(e.into())
    }
}

pub type CallResult<T> = Result<T, CallError>;

/// Work a flow leaves for after its answer: Forwards the sender need not wait for.
#[derive(Debug, Clone, PartialEq)]
pub enum Deferred {
    /// Cancel Forwards to providers that rang (another answered, or the caller left).
    CancelProviders {
        session_id: SessionId,
        providers: Vec<String>,
        reason: ForwardCancelReason,
    },
    /// A Cancel Forward to the originator of a call this provider rang for.
    CancelOrigin {
        state: Box<SessionState>,
        reason: ForwardCancelReason,
    },
}

/// The call core of one provider, over its ports.
pub struct Core<P: Ports> {
    pub ports: P,
}

impl<P: Ports> Core<P> {
    pub fn new(ports: P) -> Self {
        Core { ports }
    }

    fn settings(&self) -> &Settings {
        self.ports.settings()
    }

    fn now_ms(&self) -> i64 {
        crate::ports::Clock::now_ms(self.ports.clock())
    }

    fn seal(&self, state: &SessionState) -> String {
        crate::ports::Sealer::seal(self.ports.sealer(), state)
    }

    /// Opens a sealed state carried in `field`, checking it belongs to the session.
    fn open(&self, token: &str, session_id: &str, field: &str) -> Result<SessionState, Refusal> {
        let state = crate::ports::Sealer::open(self.ports.sealer(), token)
            .map_err(|e| Refusal::field(field, e))?;
        state.check_session(session_id, field)?;
        Ok(state)
    }

    fn observe(&self, event: Event) {
        self.ports.observe(event);
    }

    /// The provider whose relay serves a call between these two providers.
    fn relay_provider(&self, choice: RelayChoice, caller: &str, callee: &str) -> String {
        let federation_relay = self
            .ports
            .forwarder()
            .and_then(crate::ports::Forwarder::federation_relay);
        choice.provider(caller, callee, federation_relay.as_deref())
    }
}

/// Records `party`'s rejection of a ringing call (an endpoint here, or a provider it was
/// forwarded to) and, when no party is left ringing, ends the call as rejected with
/// `final_reason`. Returns whether this rejection ended the call, and how many parties still ring.
async fn reject_and_end_if_last<U: WriteUnit>(
    unit: &mut U,
    session_id: &str,
    party: &str,
    reason: &str,
    final_reason: EndReason,
) -> Result<(bool, i64), StoreFailure> {
    let (new, rejections, parties) = unit.record_rejection(session_id, party, reason).await?;
    let ended = new
        && rejections >= parties
        && unit
            .transition(
                session_id,
                &[CallState::Ringing],
                CallState::Rejected,
                CallChange {
                    reason: Some(final_reason),
                    ..Default::default()
                },
            )
            .await?;
    Ok((ended, (parties - rejections).max(0)))
}

/// The Reject Push telling the caller that its Initiate rings nobody.
fn reject_to_caller(
    request: &InitiateRequest,
    caller: &Endpoint,
    reason: RejectReason,
    text: String,
    sealed: &str,
) -> Push {
    Push::Reject(RejectPush {
        session_id: request.session_id.clone(),
        self_uri: request.self_uri.clone(),
        self_token: caller.push_token.clone(),
        peer_uri: request.peer_uri.clone(),
        peer_token: None,
        peer_blob: None,
        peer_provider: None,
        reason,
        reason_text: Some(text),
        state: Some(sealed.to_string()),
    })
}

/// Carries out a cancel's plan in `unit`: the record's transition and the Cancel Pushes. The
/// plan was made from the call as read in this unit, which may have moved on since (another
/// transaction answered or ended it: PostgreSQL reads committed, it does not lock); then
/// nothing is cancelled and the call is refused as gone.
async fn apply_cancel<U: WriteUnit>(
    unit: &mut U,
    session_id: &SessionId,
    plan: &CancelPlan,
    ttl_ms: i64,
) -> CallResult<()> {
    let sid = session_id.as_str();
    let moved = unit
        .transition(
            sid,
            &[plan.from],
            plan.to,
            CallChange {
                reason: Some(plan.why),
                ..Default::default()
            },
        )
        .await?;
    if !moved {
        let current = unit.call(sid).await?.map(|c| c.state);
        return Err(Refusal::call_gone(current).into());
    }
    push_cancels(unit, session_id, &plan.pushes, ttl_ms).await?;
    Ok(())
}

/// Queues a Cancel Push for each of `pushes` (endpoint, self-uri, peer-uri, reason).
async fn push_cancels<U: WriteUnit>(
    unit: &mut U,
    session_id: &SessionId,
    pushes: &[(String, String, String, CancelReason)],
    ttl_ms: i64,
) -> Result<(), StoreFailure> {
    for (endpoint, self_uri, peer_uri, reason) in pushes {
        let push = Push::Cancel(CancelPush {
            session_id: session_id.clone(),
            self_uri: self_uri.clone(),
            peer_uri: peer_uri.clone(),
            reason: *reason,
        });
        unit.push(endpoint, &push, ttl_ms).await?;
    }
    Ok(())
}

/// The session id of a stored record: checked when the call was made, so a bad one means the
/// store is corrupt.
fn session_id_of(id: &str) -> Result<SessionId, StoreFailure> {
    SessionId::parse(id).map_err(|e| format!("stored session id `{id}`: {e}").into())
}

pub(super) fn duplicate_session(session_id: &str) -> Refusal {
    Refusal::new(
        RefusalCode::DuplicateSession,
        format!("session `{session_id}` already exists"),
    )
}

/// The endpoint CA a sender presents for its endpoints, if it is the one the discovery
/// dictionary pins for it; no CA is no claim (a SIP phone's call has no DTLS identity).
pub(super) fn pinned_ca<'a>(
    sender: &Sender,
    ca: Option<&'a String>,
    field: &str,
) -> Result<Option<&'a String>, Refusal> {
    let Some(pem) = ca else {
        return Ok(None);
    };
    let fingerprint =
        pki::pem_fingerprint(pem).map_err(|e| Refusal::field(field, e.to_string()))?;
    if fingerprint != sender.endpoint_ca_sha256 {
        return Err(Refusal::new(
            RefusalCode::EndpointCaMismatch,
            format!(
                "`{field}` ({fingerprint}) is not the endpoint CA the discovery dictionary pins for `{}` ({})",
                sender.provider_id, sender.endpoint_ca_sha256
            ),
        ));
    }
    Ok(Some(pem))
}
