//! Requests from this provider's endpoints (`docs/protocol.md`, "The invitation protocol"):
//! both parties here, or the local half of a call that crosses providers.

use switchyard_protocol::attestation::Level;
use switchyard_protocol::invitation::{
    AcceptPush, AcceptRequest, CancelReason, CancelRequest, EndReason, ForwardCancelReason,
    InitiatePush, InitiateRequest, InitiateResponse, Push, RejectPush, RejectRequest, UpdatePush,
    UpdateRequest,
};

use super::{
    apply_cancel, duplicate_session, push_cancels, reject_and_end_if_last, reject_to_caller,
    session_id_of, CallResult, Core, Deferred,
};
use crate::ports::{CallChange, CallStore, Endpoint, Event, Ports, Requester, WriteUnit};
use crate::record::{party_provider, CallRecord, CallState};
use crate::refusal::{Refusal, RefusalCode};
use crate::rules::{self, UpdateRoute};
use crate::session::{Role, SessionState};

impl<P: Ports> Core<P> {
    /// `self-uri` must be one of the authenticated endpoint's URIs and `self-token` its own
    /// token: what the body claims is never trusted alone.
    fn check_self(&self, who: &Requester, self_uri: &str, token: &str) -> Result<(), Refusal> {
        if !who.owns(self_uri) {
            return Err(Refusal::not_authorized(format!(
                "this endpoint is not registered for {self_uri}"
            )));
        }
        if token != who.endpoint.push_token {
            return Err(Refusal::not_authorized(
                "self-token is not this endpoint's push token",
            ));
        }
        Ok(())
    }

    pub async fn initiate(
        &self,
        who: &Requester,
        request: InitiateRequest,
    ) -> CallResult<InitiateResponse> {
        self.check_self(who, &request.self_uri, &request.self_token)?;
        let store = self.ports.store();
        if !store.hosts(&request.peer_uri).await? {
            return match self.ports.forwarder() {
                Some(forwarder) => self.initiate_remote(forwarder, who, request).await,
                None => Err(Refusal::new(
                    RefusalCode::UnknownPeer,
                    format!("{} is not hosted here", request.peer_uri),
                )
                .into()),
            };
        }
        let caller = &who.endpoint;
        let candidates: Vec<_> = store
            .endpoints_for(&request.peer_uri)
            .await?
            .into_iter()
            .filter(|e| e.id != caller.id)
            .collect();
        let (rung, unsupported) = rules::who_rings(
            candidates,
            |e| &e.capabilities,
            &caller.capabilities,
            &request.media,
        );

        let now = self.now_ms();
        let deadline = now + self.settings().ring_timeout_ms;
        let own = &self.settings().provider_id;
        let sid = request.session_id.as_str().to_string();
        let state = SessionState {
            sid: sid.clone(),
            caller_uri: request.self_uri.clone(),
            caller_token: caller.push_token.clone(),
            caller_endpoint: caller.id.clone(),
            callee_uri: request.peer_uri.clone(),
            rung: rung.iter().map(|e| e.id.clone()).collect(),
            media: request.media.clone(),
            providers: vec![own.clone()],
            deadline,
            origin: None,
            origin_state: None,
            relay_choice: self.settings().relay_choice,
        };
        let relay_provider = self.relay_provider(state.relay_choice, own, own);
        let sealed = self.seal(&state);
        // Nobody to ring: the caller learns it as a Reject Push, as it would from a remote
        // provider.
        let refusal = rung
            .is_empty()
            .then(|| rules::nobody_rang(unsupported.as_ref()));
        let record = state.opening_record(
            state.rung.len() as i64,
            refusal.as_ref().map(|(r, _)| *r),
            now,
        );

        let ttl = self.settings().push_ttl_ms.min(deadline - now);
        let mut unit = store.begin().await?;
        if !unit.insert_call(&record).await? {
            return Err(duplicate_session(&sid).into());
        }
        match &refusal {
            Some((reason, text)) => {
                let push = reject_to_caller(&request, caller, *reason, text.clone(), &sealed);
                unit.push(&caller.id, &push, self.settings().push_ttl_ms)
                    .await?;
            }
            None => {
                for callee in &rung {
                    let push = Push::Initiate(InitiatePush {
                        session_id: request.session_id.clone(),
                        self_uri: request.peer_uri.clone(),
                        self_token: callee.push_token.clone(),
                        peer_uri: request.self_uri.clone(),
                        peer_token: caller.push_token.clone(),
                        peer_blob: request.self_blob.clone(),
                        peer_capabilities: caller.capabilities.clone(),
                        peer_ca: Some(self.settings().endpoint_ca_pem.clone()),
                        peer_attestation: Some(Level::Full),
                        peer_provider: None,
                        relay_provider: relay_provider.clone(),
                        media: request.media.clone(),
                        ring_deadline: deadline,
                        state: sealed.clone(),
                    });
                    unit.push(&callee.id, &push, ttl).await?;
                }
            }
        }
        unit.commit().await?;
        if refusal.is_some() {
            self.observe(Event::Outcome(CallState::Rejected));
        }
        Ok(InitiateResponse {
            session_id: request.session_id,
            state: sealed,
            rung: rung.len() as i64,
            ring_deadline: deadline,
            providers: None,
        })
    }

    /// Checks shared by Accept and Reject: the sender is a rung endpoint of the callee, and the
    /// echoed peer fields are the caller's.
    fn check_answerer(&self, who: &Requester, request: &AcceptRequest) -> CallResult<SessionState> {
        self.check_self(who, &request.self_uri, &request.self_token)?;
        let state = self.open(&request.state, request.session_id.as_str(), "state")?;
        state.check_answerer(
            &who.endpoint.id,
            &request.self_uri,
            &request.peer_uri,
            &request.peer_token,
        )?;
        Ok(state)
    }

    /// An Accept Request; answers with the state to hang up with, and what to do after the
    /// answer (for a call from another provider whose answer the originator may have lost).
    pub async fn accept(
        &self,
        who: &Requester,
        request: AcceptRequest,
    ) -> (CallResult<String>, Option<Deferred>) {
        match self.accept_here(who, request).await {
            Ok(Accepted::Here(state)) => (Ok(state), None),
            Ok(Accepted::Forwarded {
                state,
                session,
                me,
                blob,
            }) => {
                let (confirmed, deferred) = self.accept_forwarded(&session, &me, blob).await;
                (confirmed.map(|()| state), deferred)
            }
            Err(e) => (Err(e), None),
        }
    }

    async fn accept_here(&self, who: &Requester, request: AcceptRequest) -> CallResult<Accepted> {
        let state = self.check_answerer(who, &request)?;
        let me = &who.endpoint;
        let mut unit = self.ports.store().begin().await?;
        let won = unit
            .transition(
                &state.sid,
                &[CallState::Ringing],
                CallState::Answered,
                CallChange {
                    answered_by: Some(&me.id),
                    ..Default::default()
                },
            )
            .await?;
        if !won {
            let current = unit.call(&state.sid).await?.map(|c| c.state);
            return Err(Refusal::call_gone(current).into());
        }
        if state.forwarded_here() {
            // The originating provider arbitrates between providers; until it confirms, the
            // other endpoints here keep ringing.
            unit.commit().await?;
            return Ok(Accepted::Forwarded {
                state: request.state,
                session: Box::new(state),
                me: me.clone(),
                blob: request.self_blob,
            });
        }
        let own = &self.settings().provider_id;
        let accept = Push::Accept(AcceptPush {
            session_id: request.session_id.clone(),
            self_uri: state.caller_uri.clone(),
            self_token: state.caller_token.clone(),
            peer_uri: state.callee_uri.clone(),
            peer_token: me.push_token.clone(),
            peer_blob: request.self_blob,
            state: request.state.clone(),
            peer_ca: Some(self.settings().endpoint_ca_pem.clone()),
            peer_provider: None,
            relay_provider: self.relay_provider(state.relay_choice, own, own),
        });
        let ttl = self.settings().push_ttl_ms;
        unit.push(&state.caller_endpoint, &accept, ttl).await?;
        let others = state.cancels_to_others(&me.id, CancelReason::AnsweredElsewhere);
        push_cancels(&mut unit, &request.session_id, &others, ttl).await?;
        unit.commit().await?;
        Ok(Accepted::Here(request.state))
    }

    /// A Reject Request; answers with how many rung endpoints are yet to reject.
    pub async fn reject(&self, who: &Requester, request: RejectRequest) -> CallResult<i64> {
        let state = self.check_answerer(who, &request.answer)?;
        let me = &who.endpoint;
        let reason = request.reason;
        let mut unit = self.ports.store().begin().await?;
        let current = unit.call(&state.sid).await?.map(|c| c.state);
        if current != Some(CallState::Ringing) {
            return Err(Refusal::call_gone(current).into());
        }
        let (all_rejected, remaining) = reject_and_end_if_last(
            &mut unit,
            &state.sid,
            &me.id,
            reason.as_str(),
            reason.into(),
        )
        .await?;
        if all_rejected && !state.forwarded_here() {
            let push = Push::Reject(RejectPush {
                session_id: request.answer.session_id.clone(),
                self_uri: state.caller_uri.clone(),
                self_token: state.caller_token.clone(),
                peer_uri: state.callee_uri.clone(),
                peer_token: Some(me.push_token.clone()),
                peer_blob: Some(request.answer.self_blob.clone()),
                peer_provider: None,
                reason,
                reason_text: request.reason_text.clone(),
                state: None,
            });
            unit.push(&state.caller_endpoint, &push, self.settings().push_ttl_ms)
                .await?;
        }
        unit.commit().await?;
        if all_rejected {
            self.observe(Event::Outcome(CallState::Rejected));
            if state.forwarded_here() {
                self.reject_forwarded(&state, reason, request.reason_text.as_deref())
                    .await;
            }
        }
        Ok(remaining)
    }

    pub async fn cancel(&self, who: &Requester, request: CancelRequest) -> CallResult<()> {
        self.check_self(who, &request.self_uri, &request.self_token)?;
        let sid = request.session_id.as_str();
        let state = self.open(&request.state, sid, "state")?;
        let me = &who.endpoint;
        let role = state.role_of(&me.id, &request.self_uri, &request.peer_uri, "cancel")?;
        let mut unit = self.ports.store().begin().await?;
        let Some(call) = unit.call(sid).await? else {
            return Err(Refusal::call_gone(None).into());
        };
        let plan = rules::plan_cancel(
            &state,
            call.state,
            call.answered_by.as_deref(),
            role,
            &me.id,
            &self.settings().provider_id,
        )?;
        apply_cancel(
            &mut unit,
            &request.session_id,
            &plan,
            self.settings().push_ttl_ms,
        )
        .await?;
        unit.commit().await?;
        self.observe(Event::Outcome(plan.to));
        if let Some(reason) = plan.tell_origin {
            self.cancel_to_origin(&state, reason).await;
        }
        if !plan.tell_providers.is_empty() {
            self.cancel_to_providers(
                &request.session_id,
                &plan.tell_providers,
                plan.forward_reason,
            )
            .await;
        }
        Ok(())
    }

    /// Update: either party sends a new blob (a relay allocation learned late, a changed
    /// address, a new path) while the call rings or after the answer.
    pub async fn update(&self, who: &Requester, request: UpdateRequest) -> CallResult<()> {
        self.check_self(who, &request.self_uri, &request.self_token)?;
        let sid = request.session_id.as_str();
        let state = self.open(&request.state, sid, "state")?;
        let me = &who.endpoint;
        let role = state.role_of(&me.id, &request.self_uri, &request.peer_uri, "update")?;
        let Some(call) = self.ports.store().call(sid).await? else {
            return Err(Refusal::call_gone(None).into());
        };
        let route = rules::route_update(&state, &call, role, &me.id, &self.settings().provider_id)?;
        let targets = match route {
            UpdateRoute::Origin => {
                return self
                    .update_forwarded(&state, &[], &me.push_token, request.self_blob)
                    .await;
            }
            UpdateRoute::Providers(providers) => {
                return self
                    .update_forwarded(&state, &providers, &me.push_token, request.self_blob)
                    .await;
            }
            UpdateRoute::Local(targets) => targets,
        };
        let (recipient_uri, recipient_peer) = match role {
            Role::Caller => (&state.callee_uri, &state.caller_uri),
            Role::Callee => (&state.caller_uri, &state.callee_uri),
        };
        let push = Push::Update(UpdatePush {
            session_id: request.session_id.clone(),
            self_uri: recipient_uri.clone(),
            peer_uri: recipient_peer.clone(),
            peer_token: me.push_token.clone(),
            peer_blob: request.self_blob,
            peer_provider: None,
        });
        let mut unit = self.ports.store().begin().await?;
        for target in targets {
            unit.push(&target, &push, self.settings().push_ttl_ms)
                .await?;
        }
        unit.commit().await?;
        Ok(())
    }

    /// Ends the ringing calls among `overdue` whose deadline passed, with a Cancel Push
    /// `timeout` to the caller here and every rung endpoint; returns how many it ended.
    pub async fn expire(&self, overdue: Vec<CallRecord>) -> CallResult<usize> {
        let mut expired = 0;
        for call in overdue {
            let mut unit = self.ports.store().begin().await?;
            let won = unit
                .transition(
                    &call.session_id,
                    &[CallState::Ringing],
                    CallState::Timeout,
                    CallChange {
                        reason: Some(EndReason::Timeout),
                        ..Default::default()
                    },
                )
                .await?;
            if won {
                let sid = session_id_of(&call.session_id)?;
                let mut pushes = Vec::new();
                // A call forwarded here has its caller at another provider, which times it
                // out itself.
                pushes.extend(cancel_to_caller(&call, CancelReason::Timeout));
                for id in &call.rung_endpoints {
                    pushes.push(cancel_to_callee(&call, id, CancelReason::Timeout));
                }
                push_cancels(&mut unit, &sid, &pushes, self.settings().push_ttl_ms).await?;
                expired += 1;
            }
            unit.commit().await?;
            if won {
                self.observe(Event::Outcome(CallState::Timeout));
            }
        }
        Ok(expired)
    }

    /// Ends the answered calls among `overlong` that passed the maximum call duration, with a
    /// Cancel Push `ended` to the parties here and, for a call answered at another provider,
    /// a Cancel Forward `ended` to it (for a call forwarded here, the originator ends its own
    /// record at its own maximum, and tells this provider); returns how many it ended.
    pub async fn end_overlong(&self, overlong: Vec<CallRecord>) -> CallResult<usize> {
        let mut ended = 0;
        let limit = self.settings().max_call_duration_ms;
        let now = self.now_ms();
        for call in overlong {
            if call
                .answered_at
                .is_none_or(|at| at.saturating_add(limit) > now)
            {
                continue;
            }
            let mut unit = self.ports.store().begin().await?;
            let won = unit
                .transition(
                    &call.session_id,
                    &[CallState::Answered],
                    CallState::Ended,
                    CallChange {
                        reason: Some(EndReason::MaxDuration),
                        ..Default::default()
                    },
                )
                .await?;
            let sid = session_id_of(&call.session_id)?;
            let mut remote = None;
            if won {
                let mut pushes: Vec<_> = cancel_to_caller(&call, CancelReason::Ended).collect();
                if let Some(answerer) = call.answered_by.as_deref() {
                    match party_provider(answerer) {
                        Some(provider) => remote = Some(provider.to_string()),
                        None => pushes.push(cancel_to_callee(&call, answerer, CancelReason::Ended)),
                    }
                }
                push_cancels(&mut unit, &sid, &pushes, self.settings().push_ttl_ms).await?;
                ended += 1;
            }
            unit.commit().await?;
            if won {
                self.observe(Event::Outcome(CallState::Ended));
            }
            if let Some(provider) = remote {
                self.cancel_to_providers(&sid, &[provider], ForwardCancelReason::Ended)
                    .await;
            }
        }
        Ok(ended)
    }
}

/// The Cancel Push for a call's caller, when its endpoint is here (a call forwarded here has
/// its caller at another provider): `(endpoint, self-uri, peer-uri, reason)`.
fn cancel_to_caller(
    call: &CallRecord,
    reason: CancelReason,
) -> impl Iterator<Item = (String, String, String, CancelReason)> {
    (!call.caller_endpoint.is_empty())
        .then(|| {
            (
                call.caller_endpoint.clone(),
                call.caller_uri.clone(),
                call.callee_uri.clone(),
                reason,
            )
        })
        .into_iter()
}

/// The Cancel Push for one of the call's callee endpoints here.
fn cancel_to_callee(
    call: &CallRecord,
    endpoint: &str,
    reason: CancelReason,
) -> (String, String, String, CancelReason) {
    (
        endpoint.to_string(),
        call.callee_uri.clone(),
        call.caller_uri.clone(),
        reason,
    )
}

/// An Accept won here: final for a call of this provider's caller; for a call forwarded here,
/// still to be confirmed by the originator.
enum Accepted {
    Here(String),
    Forwarded {
        state: String,
        session: Box<SessionState>,
        me: Endpoint,
        blob: Vec<u8>,
    },
}
