//! The answerer's flow: another member forwarded a call here, and this provider rings its
//! endpoints of the callee. Its own record counts its endpoints; what they do goes back to the
//! originator, which arbitrates.

use switchyard_protocol::attestation::{Attestation, Level};
use switchyard_protocol::dict::Dict;
use switchyard_protocol::invitation::{
    AcceptForward, CancelForward, CancelReason, EndReason, Envelope, ForwardAction,
    ForwardCancelReason, InitiateAnswer, InitiateForward, InitiatePush, Push, RejectForward,
    RejectReason, SessionId,
};

use super::originator::Opened;
use super::{duplicate_session, pinned_ca, push_cancels, CallResult, Core, Deferred};
use crate::ports::{
    CallChange, CallStore, Clock, Endpoint, Event, Forwarder, PeerFailure, Ports, Sender, WriteUnit,
};
use crate::record::CallState;
use crate::refusal::{Refusal, RefusalClass, RefusalCode};
use crate::rules::{self, PeerAnswer};
use crate::session::SessionState;

impl<P: Ports> Core<P> {
    /// Runs what a flow deferred.
    pub async fn run_deferred(&self, work: Deferred) {
        match work {
            Deferred::CancelProviders {
                session_id,
                providers,
                reason,
            } => {
                self.cancel_to_providers(&session_id, &providers, reason)
                    .await
            }
            Deferred::CancelOrigin { state, reason } => self.cancel_to_origin(&state, reason).await,
        }
    }

    /// `POST /federation/v1/initiate`: ring this provider's endpoints of the callee.
    pub async fn receive_initiate(
        &self,
        sender: &Sender,
        forward: InitiateForward,
    ) -> CallResult<Dict> {
        let envelope = &forward.envelope;
        self.check_window(envelope)?;
        let now = self.now_ms();
        if forward.ring_deadline <= now {
            return Err(Refusal::field("ring-deadline", "ring-deadline has passed").into());
        }
        let deadline = forward
            .ring_deadline
            .min(now + self.settings().ring_timeout_ms);
        let caller_ca = pinned_ca(sender, forward.caller_ca.as_ref(), "caller-ca")?;
        let attestation = match &forward.attestation {
            None => None,
            Some((level, signature)) => {
                Attestation {
                    session_id: envelope.session_id.to_string(),
                    caller_uri: forward.caller_uri.clone(),
                    callee_uri: forward.callee_uri.clone(),
                    provider_id: sender.provider_id.clone(),
                    timestamp: envelope.timestamp,
                    level: *level,
                }
                .verify(
                    signature,
                    &sender.cert_der,
                    now.div_euclid(1000),
                    self.settings().timestamp_window_s,
                )
                .map_err(|e| Refusal::new(RefusalCode::BadAttestation, e.to_string()))?;
                Some(*level)
            }
        };
        self.claim(sender, envelope).await?;
        let store = self.ports.store();
        // Read before the unit: a unit waiting for a second pooled connection could exhaust
        // the pool under load.
        if !store.hosts(&forward.callee_uri).await? {
            return Err(Refusal::new(
                RefusalCode::UnknownPeer,
                format!("{} is not hosted here", forward.callee_uri),
            )
            .into());
        }
        let attestation = self
            .caller_attestation(sender, &forward.caller_uri, attestation)
            .await?;
        let candidates = store.endpoints_for(&forward.callee_uri).await?;
        let (rung, unsupported): (Vec<Endpoint>, _) = rules::who_rings(
            candidates,
            |e| &e.capabilities,
            &forward.caller_capabilities,
            &forward.media,
        );
        let sid = &envelope.session_id;
        let mut unit = match self
            .open_forward(sender, sid, ForwardAction::Initiate)
            .await?
        {
            Opened::Fresh(unit) => unit,
            Opened::Retried(answer) => return Ok(answer),
        };
        let refusal = rung
            .is_empty()
            .then(|| rules::nobody_rang(unsupported.as_ref()));
        let own = &self.settings().provider_id;
        let state = SessionState {
            sid: sid.to_string(),
            caller_uri: forward.caller_uri.clone(),
            caller_token: forward.caller_token.clone(),
            caller_endpoint: String::new(),
            callee_uri: forward.callee_uri.clone(),
            rung: rung.iter().map(|e| e.id.clone()).collect(),
            media: forward.media.clone(),
            providers: vec![sender.provider_id.clone(), own.clone()],
            deadline,
            origin: Some(sender.provider_id.clone()),
            origin_state: Some(forward.origin_state.clone()),
            relay_choice: forward.relay_choice,
        };
        let relay_provider = self.relay_provider(forward.relay_choice, &sender.provider_id, own);
        let sealed = self.seal(&state);
        let record = state.opening_record(
            state.rung.len() as i64,
            refusal.as_ref().map(|(r, _)| *r),
            now,
        );
        if !unit.insert_call(&record).await? {
            return Err(duplicate_session(sid.as_str()).into());
        }
        let ttl = self.settings().push_ttl_ms.min(deadline - now);
        for callee in &rung {
            let push = Push::Initiate(InitiatePush {
                session_id: sid.clone(),
                self_uri: forward.callee_uri.clone(),
                self_token: callee.push_token.clone(),
                peer_uri: forward.caller_uri.clone(),
                peer_token: forward.caller_token.clone(),
                peer_blob: forward.caller_blob.clone(),
                peer_capabilities: forward.caller_capabilities.clone(),
                peer_ca: caller_ca.cloned(),
                peer_attestation: attestation,
                peer_provider: Some(sender.provider_id.clone()),
                relay_provider: relay_provider.clone(),
                media: forward.media.clone(),
                ring_deadline: deadline,
                state: sealed.clone(),
            });
            unit.push(&callee.id, &push, ttl).await?;
        }
        let answer = InitiateAnswer {
            answering_provider: own.clone(),
            rung: rung.len() as i64,
            refusal: refusal.map(|(reason, text)| (reason, Some(text))),
        };
        let rejected = answer.refusal.is_some();
        let answer = self
            .finish_forward(
                unit,
                sender,
                sid,
                ForwardAction::Initiate,
                answer.to_dict(sid),
            )
            .await?;
        if rejected {
            self.observe(Event::Outcome(CallState::Rejected));
        }
        Ok(answer)
    }

    /// How far the callee is told to trust a received Initiate's caller: the level the sender
    /// signed, lowered when the sender may not present that caller. A caller this provider
    /// hosts itself is never another member's to vouch for; a full attestation needs the
    /// caller in the sender's filter, as a provider hosting it would have it.
    async fn caller_attestation(
        &self,
        sender: &Sender,
        caller_uri: &str,
        signed: Option<Level>,
    ) -> CallResult<Option<Level>> {
        let Some(level) = signed else {
            return Ok(None);
        };
        let lowered = |reason: &'static str| {
            self.observe(Event::AttestationLowered {
                peer: sender.provider_id.clone(),
                reason,
            })
        };
        if self.ports.store().hosts(caller_uri).await? {
            lowered("caller-hosted-here");
            return Ok(None);
        }
        let in_filter = self
            .ports
            .forwarder()
            .is_some_and(|forwarder| forwarder.may_host(&sender.provider_id, caller_uri));
        if level == Level::Full && !in_filter {
            lowered("caller-not-in-sender-filter");
            return Ok(Some(Level::Partial));
        }
        Ok(Some(level))
    }

    /// After a local endpoint won the race here: ask the originator, which arbitrates between
    /// providers. If another provider won (or the originator cannot be reached) the call is
    /// over here too. What it defers is a Cancel to the originator when the answer was lost.
    pub(super) async fn accept_forwarded(
        &self,
        state: &SessionState,
        me: &Endpoint,
        blob: Vec<u8>,
    ) -> (CallResult<()>, Option<Deferred>) {
        match self.confirm_accept(state, me, blob).await {
            Ok((None, deferred)) => (Ok(()), deferred),
            Ok((Some(refusal), deferred)) => (Err(refusal.into()), deferred),
            Err(e) => (Err(e), None),
        }
    }

    async fn confirm_accept(
        &self,
        state: &SessionState,
        me: &Endpoint,
        blob: Vec<u8>,
    ) -> CallResult<(Option<Refusal>, Option<Deferred>)> {
        let session_id = SessionId::parse(&state.sid)?;
        let (Some(origin), Some(forwarder)) = (state.origin.as_deref(), self.ports.forwarder())
        else {
            return Err(super::CallError::Store(
                "a forwarded call without federation".into(),
            ));
        };
        let sent = self
            .send_to_origin(
                forwarder,
                origin,
                &session_id,
                ForwardAction::Accept,
                |envelope| {
                    AcceptForward {
                        envelope,
                        answering_provider: self.settings().provider_id.clone(),
                        origin_state: state.origin_state.clone().unwrap_or_default(),
                        callee_uri: state.callee_uri.clone(),
                        callee_token: me.push_token.clone(),
                        callee_blob: blob.clone(),
                        callee_ca: Some(self.settings().endpoint_ca_pem.clone()),
                    }
                    .to_dict()
                },
            )
            .await;
        let answer = match sent {
            Ok(_) => PeerAnswer::Confirmed,
            Err(PeerFailure::Refused {
                code,
                message,
                class,
                description,
            }) => PeerAnswer::Refused {
                code,
                message,
                gone: class == RefusalClass::Gone,
                description,
            },
            Err(PeerFailure::Undelivered(why)) => PeerAnswer::Unconfirmed(why),
        };
        let outcome = rules::origin_answer(&answer);
        let push_reason = match &outcome {
            None => CancelReason::AnsweredElsewhere,
            Some((reason, _, _)) => *reason,
        };
        let others = state.cancels_to_others(&me.id, push_reason);
        // Confirmed, with no other endpoint rung here: nothing to write, and no unit (an empty
        // one would still wait for a group's commit).
        if outcome.is_some() || !others.is_empty() {
            let mut unit = self.ports.store().begin().await?;
            if let Some((reason, _, _)) = &outcome {
                let why = match reason {
                    CancelReason::AnsweredElsewhere => EndReason::AnsweredElsewhere,
                    _ => EndReason::Cancelled,
                };
                unit.transition(
                    &state.sid,
                    &[CallState::Answered],
                    CallState::Cancelled,
                    CallChange {
                        reason: Some(why),
                        ..Default::default()
                    },
                )
                .await?;
            }
            push_cancels(&mut unit, &session_id, &others, self.settings().push_ttl_ms).await?;
            unit.commit().await?;
        }
        Ok(match outcome {
            None => (None, None),
            Some((_, refusal, unconfirmed)) => {
                // The originator may have taken the Accept before the answer was lost: end the
                // call there too, so the caller is not left in a call nobody is in.
                let deferred = unconfirmed.then(|| Deferred::CancelOrigin {
                    state: Box::new(state.clone()),
                    reason: ForwardCancelReason::Ended,
                });
                (Some(refusal), deferred)
            }
        })
    }

    /// Every endpoint rung here rejected: tell the originator. Undelivered, the originator's
    /// ring timeout ends the call.
    pub(super) async fn reject_forwarded(
        &self,
        state: &SessionState,
        reason: RejectReason,
        text: Option<&str>,
    ) {
        let undelivered =
            "the Reject Forward was not delivered; the caller's provider will time the call out";
        self.tell_origin(
            state,
            ForwardAction::Reject,
            undelivered,
            |envelope, me, origin_state| {
                RejectForward {
                    envelope,
                    answering_provider: me,
                    origin_state,
                    reason,
                    reason_text: text.map(str::to_string),
                }
                .to_dict()
            },
        )
        .await;
    }

    /// A callee here cancelled or hung up: tell the originator.
    pub async fn cancel_to_origin(&self, state: &SessionState, reason: ForwardCancelReason) {
        let undelivered = "the Cancel Forward to the caller's provider was not delivered";
        self.tell_origin(
            state,
            ForwardAction::Cancel,
            undelivered,
            |envelope, me, origin_state| {
                CancelForward {
                    envelope,
                    from_provider: me,
                    reason,
                    origin_state: Some(origin_state),
                }
                .to_dict()
            },
        )
        .await;
    }

    /// Sends the originator of a call forwarded here a Forward that needs no answer, built from
    /// a fresh envelope, this provider's id and the originator's state; reports it undelivered.
    async fn tell_origin(
        &self,
        state: &SessionState,
        action: ForwardAction,
        undelivered: &'static str,
        forward: impl Fn(Envelope, String, String) -> Dict,
    ) {
        let Ok(session_id) = SessionId::parse(&state.sid) else {
            return;
        };
        let (Some(origin), Some(forwarder)) = (state.origin.as_deref(), self.ports.forwarder())
        else {
            return;
        };
        let sent = self
            .send_to_origin(forwarder, origin, &session_id, action, |envelope| {
                forward(
                    envelope,
                    self.settings().provider_id.clone(),
                    state.origin_state.clone().unwrap_or_default(),
                )
            })
            .await;
        if let Err(e) = sent {
            self.observe(Event::Undelivered {
                session_id: state.sid.clone(),
                peer: origin.to_string(),
                what: undelivered,
                error: e.to_string(),
            });
        }
    }

    /// Sends a Forward to the originator, again after a pause while the originator answers
    /// `not-yet-ringing`: this provider's Accept or Cancel overtook its answer to the
    /// Initiate, which the originator records as it arrives. Each attempt gets a fresh
    /// envelope, since the originator keeps every Forward id it has seen.
    async fn send_to_origin(
        &self,
        forwarder: &P::Forwarder,
        origin: &str,
        session_id: &SessionId,
        action: ForwardAction,
        forward: impl Fn(Envelope) -> Dict,
    ) -> Result<Dict, PeerFailure> {
        let mut pauses = rules::NOT_YET_RINGING_PAUSES_MS.iter();
        loop {
            let envelope = self.envelope(forwarder, session_id);
            match forwarder.send(origin, action, forward(envelope)).await {
                Err(PeerFailure::Refused { code, .. })
                    if code == RefusalCode::NotYetRinging.as_str() =>
                {
                    match pauses.next() {
                        Some(&ms) => self.ports.clock().pause(ms).await,
                        None => {
                            return Err(PeerFailure::Undelivered(format!(
                                "`{origin}` still had not recorded this provider's answer to its Initiate after {} ms",
                                rules::NOT_YET_RINGING_PAUSES_MS.iter().sum::<u64>()
                            )))
                        }
                    }
                }
                other => return other,
            }
        }
    }
}
