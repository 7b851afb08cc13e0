//! The originator's flow: the caller is here, the callee at other members. This provider's call
//! record arbitrates between them (first Accept wins, all rejected).

use futures_util::stream::{FuturesUnordered, StreamExt};
use switchyard_protocol::attestation::{Attestation, Level};
use switchyard_protocol::dict::Dict;
use switchyard_protocol::invitation::{
    AcceptForward, AcceptPush, CancelForward, Envelope, ForwardAction, ForwardCancelReason,
    InitiateAnswer, InitiateForward, InitiateRequest, InitiateResponse, Push, RejectAnswer,
    RejectForward, RejectPush, RejectReason, SessionId, UpdateAnswer, UpdateForward, UpdatePush,
};

use super::{
    apply_cancel, duplicate_session, pinned_ca, reject_and_end_if_last, reject_to_caller,
    CallError, CallResult, Core, Deferred,
};
use crate::ports::{
    CallChange, CallStore, Candidates, Event, Forwarder, PeerFailure, Ports, Requester, Sender,
    WriteUnit,
};
use crate::record::{provider_party, CallState};
use crate::refusal::{Refusal, RefusalClass, RefusalCode};
use crate::rules::{self, Dispatch, DispatchOutcome};
use crate::session::SessionState;

/// A received Forward's answer, or the answer given to an earlier Forward of the same sender,
/// action and session (a retry), which is answered again without acting.
pub(super) enum Opened<U> {
    Fresh(U),
    Retried(Dict),
}

impl<P: Ports> Core<P> {
    pub(super) fn envelope(&self, forwarder: &P::Forwarder, session_id: &SessionId) -> Envelope {
        Envelope {
            session_id: session_id.clone(),
            timestamp: self.now_ms().div_euclid(1000),
            forward_id: forwarder.forward_id(),
        }
    }

    /// The timestamp window: a Forward from a clock too far from ours is refused.
    pub(super) fn check_window(&self, envelope: &Envelope) -> Result<(), Refusal> {
        let now = self.now_ms().div_euclid(1000);
        let window = self.settings().timestamp_window_s;
        if !switchyard_protocol::window::within(now, envelope.timestamp, window) {
            return Err(Refusal::new(
                RefusalCode::StaleForward,
                format!(
                    "timestamp {} is more than {window} s from this provider's clock ({now})",
                    envelope.timestamp
                ),
            ));
        }
        Ok(())
    }

    /// Records the Forward's id, refusing a replayed one. Done on its own, before the Forward
    /// is acted on: an id stays used even when the Forward is then refused, so it can never be
    /// replayed once circumstances change.
    pub(super) async fn claim(&self, sender: &Sender, envelope: &Envelope) -> CallResult<()> {
        let fresh = self
            .ports
            .store()
            .claim_forward_id(&sender.provider_id, &envelope.forward_id)
            .await?;
        if fresh {
            Ok(())
        } else {
            Err(Refusal::new(
                RefusalCode::ReplayedForward,
                format!(
                    "forward-id {} from `{}` was already received",
                    envelope.forward_id, sender.provider_id
                ),
            )
            .into())
        }
    }

    /// Opens the unit that acts on a Forward, or the earlier answer to it.
    pub(super) async fn open_forward(
        &self,
        sender: &Sender,
        session_id: &SessionId,
        action: ForwardAction,
    ) -> CallResult<Opened<<P::Store as CallStore>::Unit<'_>>> {
        let mut unit = self.ports.store().begin().await?;
        let earlier = unit
            .forward_answer(&sender.provider_id, session_id.as_str(), action)
            .await?;
        match earlier {
            Some(answer) => {
                unit.commit().await?;
                Ok(Opened::Retried(answer))
            }
            None => Ok(Opened::Fresh(unit)),
        }
    }

    /// Keeps the answer to a Forward with the change it made, and commits both.
    pub(super) async fn finish_forward<U: WriteUnit>(
        &self,
        mut unit: U,
        sender: &Sender,
        session_id: &SessionId,
        action: ForwardAction,
        answer: Dict,
    ) -> CallResult<Dict> {
        unit.save_forward_answer(&sender.provider_id, session_id.as_str(), action, &answer)
            .await?;
        unit.commit().await?;
        Ok(answer)
    }

    /// An Initiate Request for a URI not hosted here: forward it to every member whose filter
    /// may hold the callee, in parallel, and tell the caller how many endpoints ring.
    pub(super) async fn initiate_remote(
        &self,
        forwarder: &P::Forwarder,
        who: &Requester,
        request: InitiateRequest,
    ) -> CallResult<InitiateResponse> {
        let caller = &who.endpoint;
        let callee = request.peer_uri.clone();
        let not_hosted = |extra: &str| {
            Refusal::new(
                RefusalCode::UnknownPeer,
                format!("{callee} is not hosted here nor by any member of the federation{extra}"),
            )
        };
        let (candidates, skipped) = match forwarder.candidates(&request.peer_uri) {
            Candidates::NoDirectory => {
                return Err(Refusal::new(
                    RefusalCode::PeersUnavailable,
                    format!(
                        "{callee} is not hosted here, and the federation is suspended: no valid discovery dictionary is in force"
                    ),
                )
                .into())
            }
            Candidates::Members { members, skipped } => (members, skipped),
        };
        self.observe(Event::DispatchCandidates(candidates.len()));
        if candidates.is_empty() {
            if skipped > 0 {
                return Err(Refusal::new(
                    RefusalCode::PeersUnavailable,
                    format!(
                        "{skipped} member(s) that may host {callee} are failing (circuit breaker open); try again later"
                    ),
                )
                .into());
            }
            return Err(not_hosted("").into());
        }

        let own = self.settings().provider_id.clone();
        let sid = request.session_id.as_str().to_string();
        let now = self.now_ms();
        let deadline = now + self.settings().ring_timeout_ms;
        let mut providers = vec![own.clone()];
        providers.extend(candidates.iter().cloned());
        let state = SessionState {
            sid: sid.clone(),
            caller_uri: request.self_uri.clone(),
            caller_token: caller.push_token.clone(),
            caller_endpoint: caller.id.clone(),
            callee_uri: request.peer_uri.clone(),
            rung: Vec::new(),
            media: request.media.clone(),
            providers,
            deadline,
            origin: None,
            origin_state: None,
            relay_choice: self.settings().relay_choice,
        };
        let sealed = self.seal(&state);
        let record = state.opening_record(candidates.len() as i64, None, now);
        let mut unit = self.ports.store().begin().await?;
        if !unit.insert_call(&record).await? {
            return Err(duplicate_session(&sid).into());
        }
        unit.commit().await?;

        let envelope = self.envelope(forwarder, &request.session_id);
        // The caller's endpoint authenticated as a holder of the caller URI, which this
        // provider hosts (`check_self`): full attestation.
        let attestation = Attestation {
            session_id: sid.clone(),
            caller_uri: request.self_uri.clone(),
            callee_uri: request.peer_uri.clone(),
            provider_id: own.clone(),
            timestamp: envelope.timestamp,
            level: Level::Full,
        };
        let signature = forwarder
            .attest(&attestation)
            .map_err(|e| CallError::Store(format!("signing the caller attestation: {e}").into()))?;
        let forward = InitiateForward {
            envelope,
            originating_provider: own.clone(),
            origin_state: sealed.clone(),
            caller_uri: request.self_uri.clone(),
            caller_token: caller.push_token.clone(),
            callee_uri: request.peer_uri.clone(),
            caller_blob: request.self_blob.clone(),
            caller_capabilities: caller.capabilities.clone(),
            caller_ca: Some(self.settings().endpoint_ca_pem.clone()),
            media: request.media.clone(),
            ring_deadline: deadline,
            relay_choice: state.relay_choice,
            attestation: Some((Level::Full, signature)),
        }
        .to_dict();
        let mut outcomes = Vec::with_capacity(candidates.len());
        let mut sends: FuturesUnordered<_> = candidates
            .iter()
            .enumerate()
            .map(|(index, member)| {
                let forward = forward.clone();
                async move {
                    let answer = forwarder
                        .send(member, ForwardAction::Initiate, forward)
                        .await;
                    (index, member, answer)
                }
            })
            .collect();
        while let Some((index, member, answer)) = sends.next().await {
            let outcome = self.dispatch_outcome(member, answer);
            // Recorded as it arrives: from now on this member's Accept counts, even while other
            // members have not answered yet.
            if matches!(outcome, DispatchOutcome::Ringing(_)) {
                let mut unit = self.ports.store().begin().await?;
                unit.record_ringing(&sid, member).await?;
                unit.commit().await?;
            }
            outcomes.push((index, member.clone(), outcome));
        }
        drop(sends);
        outcomes.sort_by_key(|(index, _, _)| *index);
        let outcomes: Vec<(String, DispatchOutcome)> = outcomes
            .into_iter()
            .map(|(_, member, outcome)| (member, outcome))
            .collect();
        let dispatch = Dispatch::fold(&outcomes);

        let refused_request = dispatch.refuses_request();
        let mut ended = false;
        // When every member that answered rings (or failed) the record stands as it is, and
        // no unit is opened: an empty one would still wait for a group's commit.
        if !dispatch.rejections.is_empty() || refused_request {
            let mut unit = self.ports.store().begin().await?;
            for rejection in &dispatch.rejections {
                let (ended_here, _) = reject_and_end_if_last(
                    &mut unit,
                    &sid,
                    &provider_party(&rejection.provider),
                    rejection.reason.as_str(),
                    rejection.final_reason,
                )
                .await?;
                ended |= ended_here;
            }
            if refused_request {
                unit.delete_call(&sid).await?;
                ended = false;
            }
            // The call ended here: every candidate said no, possibly after one that rang
            // already sent its Reject. The caller hears one Reject, with the reason of a
            // provider that rang if any.
            if ended {
                let earlier = unit.rejections(&sid).await?;
                let (reason, text) = dispatch.reject_reason(&earlier);
                let text =
                    text.unwrap_or_else(|| "no endpoint of the callee can take the call".into());
                let push = reject_to_caller(&request, caller, reason, text, &sealed);
                unit.push(&caller.id, &push, self.settings().push_ttl_ms)
                    .await?;
            }
            unit.commit().await?;
        }
        if ended {
            self.observe(Event::Outcome(CallState::Rejected));
        }
        if refused_request {
            if !dispatch.failures.is_empty() {
                return Err(Refusal::new(
                    RefusalCode::PeersUnreachable,
                    format!(
                        "no provider that may host {callee} answered: {}",
                        dispatch.failures.join("; ")
                    ),
                )
                .into());
            }
            return Err(not_hosted(&format!(
                " ({} filter false positive(s))",
                dispatch.false_positives
            ))
            .into());
        }
        Ok(InitiateResponse {
            session_id: request.session_id,
            state: sealed,
            rung: dispatch.rung_total,
            ring_deadline: deadline,
            providers: Some(dispatch.ringing),
        })
    }

    /// What one candidate's answer to the Initiate Forward says.
    fn dispatch_outcome(&self, member: &str, answer: Result<Dict, PeerFailure>) -> DispatchOutcome {
        match answer {
            Ok(answer) => match InitiateAnswer::from_dict(&answer) {
                Ok(InitiateAnswer { rung, .. }) if rung > 0 => DispatchOutcome::Ringing(rung),
                Ok(InitiateAnswer { refusal, .. }) => {
                    let (reason, text) = refusal.unwrap_or((RejectReason::Unavailable, None));
                    DispatchOutcome::Refused { reason, text }
                }
                Err(e) => DispatchOutcome::Failed(format!("{member}: {e}")),
            },
            Err(PeerFailure::Refused {
                code,
                class: RefusalClass::NotFound,
                ..
            }) if code == RefusalCode::UnknownPeer.as_str() => {
                self.observe(Event::FalsePositive(member.to_string()));
                DispatchOutcome::FalsePositive
            }
            Err(e) => DispatchOutcome::Failed(e.to_string()),
        }
    }

    /// Opens the originator's state handed back by an answering provider, and checks that
    /// provider was one the Initiate went to.
    pub(super) fn returned_state(
        &self,
        token: &str,
        envelope: &Envelope,
        sender: &Sender,
    ) -> Result<SessionState, Refusal> {
        let state = crate::ports::Sealer::open(self.ports.sealer(), token)
            .map_err(|e| Refusal::field("origin-state", e))?;
        state.check_returned_by(envelope.session_id.as_str(), &sender.provider_id)?;
        Ok(state)
    }

    /// `POST /federation/v1/accept`: a callee endpoint at the sender answered. The first
    /// Accept wins; the other providers are told to stop ringing, after the answer.
    pub async fn receive_accept(
        &self,
        sender: &Sender,
        forward: AcceptForward,
    ) -> CallResult<(Dict, Option<Deferred>)> {
        let envelope = &forward.envelope;
        self.check_window(envelope)?;
        let state = self.returned_state(&forward.origin_state, envelope, sender)?;
        if forward.callee_uri != state.callee_uri {
            return Err(
                Refusal::field("callee-uri", "callee-uri is not this call's callee").into(),
            );
        }
        let callee_ca = pinned_ca(sender, forward.callee_ca.as_ref(), "callee-ca")?.cloned();
        // Before the Forward id is claimed, so an Accept that does not count writes nothing; the
        // sender comes again with a fresh envelope.
        if let Some(call) = self.ports.store().call(&state.sid).await? {
            if call.state == CallState::Ringing {
                rules::check_rang(&call, &sender.provider_id)?;
            }
        }
        self.claim(sender, envelope).await?;
        let sid = &envelope.session_id;
        let mut unit = match self
            .open_forward(sender, sid, ForwardAction::Accept)
            .await?
        {
            Opened::Fresh(unit) => unit,
            Opened::Retried(answer) => return Ok((answer, None)),
        };
        let party = provider_party(&sender.provider_id);
        if unit
            .rejections(&state.sid)
            .await?
            .iter()
            .any(|(p, _)| *p == party)
        {
            return Err(Refusal::not_authorized(format!(
                "`{}` did not ring this call (it refused the Initiate or does not host the callee)",
                sender.provider_id
            ))
            .into());
        }
        let won = unit
            .transition(
                &state.sid,
                &[CallState::Ringing],
                CallState::Answered,
                CallChange {
                    answered_by: Some(&party),
                    ..Default::default()
                },
            )
            .await?;
        if !won {
            let current = unit.call(&state.sid).await?.map(|c| c.state);
            return Err(Refusal::call_gone(current).into());
        }
        let push = Push::Accept(AcceptPush {
            session_id: sid.clone(),
            self_uri: state.caller_uri.clone(),
            self_token: state.caller_token.clone(),
            peer_uri: state.callee_uri.clone(),
            peer_token: forward.callee_token,
            peer_blob: forward.callee_blob,
            state: forward.origin_state.clone(),
            peer_ca: callee_ca,
            peer_provider: Some(sender.provider_id.clone()),
            relay_provider: self.relay_provider(
                state.relay_choice,
                &self.settings().provider_id,
                &sender.provider_id,
            ),
        });
        unit.push(&state.caller_endpoint, &push, self.settings().push_ttl_ms)
            .await?;
        let answer = Dict::new().with("session-id", sid.as_str());
        let answer = self
            .finish_forward(unit, sender, sid, ForwardAction::Accept, answer)
            .await?;
        let losers = state.providers_except(&[&self.settings().provider_id, &sender.provider_id]);
        let deferred = (!losers.is_empty()).then(|| Deferred::CancelProviders {
            session_id: sid.clone(),
            providers: losers,
            reason: ForwardCancelReason::AnsweredElsewhere,
        });
        Ok((answer, deferred))
    }

    /// `POST /federation/v1/reject`: every endpoint rung at the sender rejected. When all the
    /// providers that rang have rejected, the caller hears it.
    pub async fn receive_reject(
        &self,
        sender: &Sender,
        forward: RejectForward,
    ) -> CallResult<Dict> {
        let envelope = &forward.envelope;
        self.check_window(envelope)?;
        let state = self.returned_state(&forward.origin_state, envelope, sender)?;
        self.claim(sender, envelope).await?;
        let sid = &envelope.session_id;
        let mut unit = match self
            .open_forward(sender, sid, ForwardAction::Reject)
            .await?
        {
            Opened::Fresh(unit) => unit,
            Opened::Retried(answer) => return Ok(answer),
        };
        let current = unit.call(&state.sid).await?.map(|c| c.state);
        if current != Some(CallState::Ringing) {
            return Err(Refusal::call_gone(current).into());
        }
        let (all_rejected, remaining) = reject_and_end_if_last(
            &mut unit,
            &state.sid,
            &provider_party(&sender.provider_id),
            forward.reason.as_str(),
            forward.reason.into(),
        )
        .await?;
        if all_rejected {
            let push = Push::Reject(RejectPush {
                session_id: sid.clone(),
                self_uri: state.caller_uri.clone(),
                self_token: state.caller_token.clone(),
                peer_uri: state.callee_uri.clone(),
                peer_token: None,
                peer_blob: None,
                peer_provider: Some(sender.provider_id.clone()),
                reason: forward.reason,
                reason_text: forward.reason_text.clone(),
                state: None,
            });
            unit.push(&state.caller_endpoint, &push, self.settings().push_ttl_ms)
                .await?;
        }
        let answer = RejectAnswer {
            session_id: sid.clone(),
            remaining,
        }
        .to_dict();
        let answer = self
            .finish_forward(unit, sender, sid, ForwardAction::Reject, answer)
            .await?;
        if all_rejected {
            self.observe(Event::Outcome(CallState::Rejected));
        }
        Ok(answer)
    }

    /// Checks a Forward that goes both ways (Cancel, Update) and records its id: the timestamp
    /// window and, from an answering provider, the originator's state it hands back (returned).
    async fn two_way(
        &self,
        sender: &Sender,
        envelope: &Envelope,
        origin_state: Option<&str>,
    ) -> CallResult<Option<SessionState>> {
        self.check_window(envelope)?;
        let from_answerer = match origin_state {
            Some(token) => Some(self.returned_state(token, envelope, sender)?),
            None => None,
        };
        self.claim(sender, envelope).await?;
        Ok(from_answerer)
    }

    /// `POST /federation/v1/cancel`: from the originator (`origin-state` absent) the caller
    /// cancelled, hung up, or another provider answered; from an answering provider
    /// (`origin-state` present) its callee cancelled or hung up.
    pub async fn receive_cancel(
        &self,
        sender: &Sender,
        forward: CancelForward,
    ) -> CallResult<Dict> {
        let from_answerer = self
            .two_way(sender, &forward.envelope, forward.origin_state.as_deref())
            .await?;
        let sid = &forward.envelope.session_id;
        let mut unit = match self
            .open_forward(sender, sid, ForwardAction::Cancel)
            .await?
        {
            Opened::Fresh(unit) => unit,
            Opened::Retried(answer) => return Ok(answer),
        };
        let Some(call) = unit.call(sid.as_str()).await? else {
            return Err(Refusal::call_gone(None).into());
        };
        if from_answerer.is_some() && call.state == CallState::Ringing {
            // A member's Cancel ends its own legs only: while others still ring, it counts as
            // that member no longer ringing, and the call goes on.
            rules::check_rang(&call, &sender.provider_id)?;
            let (_, rejections, parties) = unit
                .record_rejection(
                    sid.as_str(),
                    &provider_party(&sender.provider_id),
                    RejectReason::Unavailable.as_str(),
                )
                .await?;
            if rejections < parties {
                let answer = Dict::new().with("session-id", sid.as_str());
                return self
                    .finish_forward(unit, sender, sid, ForwardAction::Cancel, answer)
                    .await;
            }
        }
        let plan = rules::plan_received_cancel(
            &call,
            from_answerer.as_ref(),
            &sender.provider_id,
            forward.reason,
            &self.settings().provider_id,
        )?;
        apply_cancel(&mut unit, sid, &plan, self.settings().push_ttl_ms).await?;
        let answer = Dict::new().with("session-id", sid.as_str());
        let answer = self
            .finish_forward(unit, sender, sid, ForwardAction::Cancel, answer)
            .await?;
        self.observe(Event::Outcome(plan.to));
        if !plan.tell_providers.is_empty() {
            self.cancel_to_providers(sid, &plan.tell_providers, ForwardCancelReason::Cancelled)
                .await;
        }
        Ok(answer)
    }

    /// The caller cancelled, hung up, or another provider answered: tell the providers that
    /// rang. Their `404`, `409` and `410` mean it never rang there or already ended.
    pub async fn cancel_to_providers(
        &self,
        session_id: &SessionId,
        providers: &[String],
        reason: ForwardCancelReason,
    ) {
        let Some(forwarder) = self.ports.forwarder() else {
            return;
        };
        let forward = CancelForward {
            envelope: self.envelope(forwarder, session_id),
            from_provider: self.settings().provider_id.clone(),
            reason,
            origin_state: None,
        }
        .to_dict();
        for (provider, result) in
            send_each(forwarder, providers, ForwardAction::Cancel, &forward).await
        {
            match result {
                Ok(_) => {}
                Err(PeerFailure::Refused {
                    class: RefusalClass::NotFound | RefusalClass::Conflict | RefusalClass::Gone,
                    ..
                }) => {}
                Err(e) => self.observe(Event::Undelivered {
                    session_id: session_id.to_string(),
                    peer: provider.clone(),
                    what:
                        "a Cancel Forward was not delivered; the peer's ring timeout ends the call",
                    error: e.to_string(),
                }),
            }
        }
    }

    /// An Update from an endpoint here, for a call that crosses providers: to the originator
    /// (when this provider answered) or to `providers` (when the caller is here).
    pub(super) async fn update_forwarded(
        &self,
        state: &SessionState,
        providers: &[String],
        sender_token: &str,
        blob: Vec<u8>,
    ) -> CallResult<()> {
        let Some(forwarder) = self.ports.forwarder() else {
            return Err(CallError::Store(
                "a forwarded call without federation".into(),
            ));
        };
        let session_id = SessionId::parse(&state.sid)?;
        let (origin_state, targets) = match (&state.origin, &state.origin_state) {
            (Some(origin), Some(origin_state)) => {
                (Some(origin_state.clone()), vec![origin.clone()])
            }
            _ => (None, providers.to_vec()),
        };
        let forward = UpdateForward {
            envelope: self.envelope(forwarder, &session_id),
            from_provider: self.settings().provider_id.clone(),
            sender_token: sender_token.to_string(),
            blob,
            origin_state,
        }
        .to_dict();
        let results = send_each(forwarder, &targets, ForwardAction::Update, &forward).await;
        let mut failures = Vec::new();
        for (provider, result) in &results {
            if let Err(e) = result {
                self.observe(Event::Undelivered {
                    session_id: state.sid.clone(),
                    peer: provider.to_string(),
                    what: "an Update Forward was not delivered",
                    error: e.to_string(),
                });
                failures.push(format!("{provider}: {e}"));
            }
        }
        if failures.len() == results.len() {
            return Err(Refusal::new(
                RefusalCode::UpdateUndelivered,
                format!(
                    "the Update reached no provider of the call: {}",
                    failures.join("; ")
                ),
            )
            .into());
        }
        Ok(())
    }

    /// `POST /federation/v1/update`: the other party's new blob, for this provider's endpoint
    /// of the call. Several Updates per call are normal, so none is answered from an earlier
    /// one; the forward id alone guards against replays.
    pub async fn receive_update(
        &self,
        sender: &Sender,
        forward: UpdateForward,
    ) -> CallResult<Dict> {
        let from_answerer = self
            .two_way(sender, &forward.envelope, forward.origin_state.as_deref())
            .await?;
        let sid = &forward.envelope.session_id;
        let Some(call) = self.ports.store().call(sid.as_str()).await? else {
            return Err(Refusal::call_gone(None).into());
        };
        if call.state.is_final() {
            return Err(Refusal::call_gone(Some(call.state)).into());
        }
        let (targets, self_uri, peer_uri) = match &from_answerer {
            Some(_) => {
                if !call.answered_by_provider(&sender.provider_id) {
                    return Err(Refusal::new(
                        RefusalCode::NotAnswered,
                        format!("`{}` has not answered this call", sender.provider_id),
                    )
                    .into());
                }
                (
                    vec![call.caller_endpoint.clone()],
                    &call.caller_uri,
                    &call.callee_uri,
                )
            }
            None => {
                if !call.forwarded_by(&sender.provider_id) {
                    return Err(Refusal::not_authorized(format!(
                        "`{}` did not forward this call here",
                        sender.provider_id
                    ))
                    .into());
                }
                let targets = match (&call.state, &call.answered_by) {
                    (CallState::Answered, Some(answerer)) => vec![answerer.clone()],
                    _ => call.rung_endpoints.clone(),
                };
                (targets, &call.callee_uri, &call.caller_uri)
            }
        };
        let push = Push::Update(UpdatePush {
            session_id: sid.clone(),
            self_uri: self_uri.clone(),
            peer_uri: peer_uri.clone(),
            peer_token: forward.sender_token.clone(),
            peer_blob: forward.blob.clone(),
            peer_provider: Some(sender.provider_id.clone()),
        });
        let mut unit = self.ports.store().begin().await?;
        for target in &targets {
            unit.push(target, &push, self.settings().push_ttl_ms)
                .await?;
        }
        unit.commit().await?;
        Ok(UpdateAnswer {
            session_id: sid.clone(),
            delivered: targets.len() as i64,
        }
        .to_dict())
    }
}

/// Sends the same Forward to each provider, in parallel, and returns each one's answer.
async fn send_each<'a, F: Forwarder>(
    forwarder: &F,
    providers: &'a [String],
    action: ForwardAction,
    forward: &Dict,
) -> Vec<(&'a String, Result<Dict, PeerFailure>)> {
    let sends = providers.iter().map(|provider| async move {
        (
            provider,
            forwarder.send(provider, action, forward.clone()).await,
        )
    });
    futures_util::future::join_all(sends).await
}
