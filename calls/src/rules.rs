//! The invitation protocol's decisions, as pure functions of what a provider knows when a
//! message arrives: who rings, how the answers to an Initiate Forward fold into one outcome,
//! which reason the caller hears, and who must be told of a cancel or a hang-up
//! (`docs/protocol.md`, "Call flows"). The daemon reads the call record, asks these, and writes
//! what they say in the same transaction.

use switchyard_protocol::capabilities::{Capabilities, MediaKind, Unsupported};
use switchyard_protocol::invitation::{CancelReason, EndReason, ForwardCancelReason, RejectReason};

use crate::record::{party_provider, CallRecord, CallState};
use crate::refusal::{Refusal, RefusalCode};
use crate::session::{Role, SessionState};

/// How long an answering provider waits, attempt after attempt, for the originator to record
/// its answer to the Initiate before its Accept or Cancel counts: 1.57 s in all, far more than
/// one answer takes to be read and recorded.
pub const NOT_YET_RINGING_PAUSES_MS: [u64; 6] = [20, 50, 100, 200, 400, 800];

/// What an answering provider sends about its legs of a ringing call (an Accept, a Cancel)
/// counts only once its answer to the Initiate said it rang: a member the Initiate went to
/// cannot answer or end a call it never rang for. The originator records each answer as it
/// arrives, so a Forward that overtook its own provider's answer is told to come again.
pub fn check_rang(call: &CallRecord, provider: &str) -> Result<(), Refusal> {
    if call.rang_at(provider) {
        return Ok(());
    }
    Err(Refusal::new(
        RefusalCode::NotYetRinging,
        format!(
            "`{provider}` has not answered this call's Initiate as ringing (or its answer is not recorded yet)"
        ),
    ))
}

/// The endpoints of the callee that can take the call (each supports every kind asked for and
/// shares a codec of each with the caller), and why the first one that cannot, cannot.
pub fn who_rings<E>(
    candidates: Vec<E>,
    capabilities: impl Fn(&E) -> &Capabilities,
    caller: &Capabilities,
    media: &[MediaKind],
) -> (Vec<E>, Option<Unsupported>) {
    let mut unsupported = None;
    let rung = candidates
        .into_iter()
        .filter(|e| match capabilities(e).can_answer(caller, media) {
            Ok(()) => true,
            Err(why) => {
                unsupported.get_or_insert(why);
                false
            }
        })
        .collect();
    (rung, unsupported)
}

/// Why nobody rang, when no endpoint could: the caller hears it as a Reject.
pub fn nobody_rang(unsupported: Option<&Unsupported>) -> (RejectReason, String) {
    match unsupported {
        Some(why) => (RejectReason::UnsupportedMedia, why.to_string()),
        None => (
            RejectReason::Unavailable,
            "no endpoint of the callee is registered".to_string(),
        ),
    }
}

/// What one candidate said to an Initiate Forward.
#[derive(Debug, Clone, PartialEq)]
pub enum DispatchOutcome {
    /// It rings this many endpoints.
    Ringing(i64),
    /// It hosts the URI but rang nobody.
    Refused {
        reason: RejectReason,
        text: Option<String>,
    },
    /// `404 unknown-peer`: its filter matched, it does not host the URI.
    FalsePositive,
    /// Unreachable, timed out, or any other refusal.
    Failed(String),
}

/// A candidate that did not ring, counted as a rejection of the originator's call: the reason
/// recorded for it, and the call's reason should it be the last.
#[derive(Debug, Clone, PartialEq)]
pub struct DispatchRejection {
    pub provider: String,
    pub reason: RejectReason,
    pub final_reason: EndReason,
}

/// The answers to an Initiate Forward, folded (`docs/protocol.md`, "Call flows", Initiate 3-4).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Dispatch {
    /// The providers that ring, in the order of the answers.
    pub ringing: Vec<String>,
    pub rung_total: i64,
    /// The first refusal.
    pub refusal: Option<(RejectReason, Option<String>)>,
    pub failures: Vec<String>,
    pub false_positives: usize,
    /// To record, in order, against the call.
    pub rejections: Vec<DispatchRejection>,
}

impl Dispatch {
    pub fn fold(outcomes: &[(String, DispatchOutcome)]) -> Dispatch {
        let mut dispatch = Dispatch::default();
        for (provider, outcome) in outcomes {
            let reason = match outcome {
                DispatchOutcome::Ringing(n) => {
                    dispatch.ringing.push(provider.clone());
                    dispatch.rung_total += n;
                    continue;
                }
                DispatchOutcome::Refused { reason, text } => {
                    dispatch.refusal.get_or_insert((*reason, text.clone()));
                    *reason
                }
                DispatchOutcome::FalsePositive => {
                    dispatch.false_positives += 1;
                    RejectReason::Unavailable
                }
                DispatchOutcome::Failed(message) => {
                    dispatch.failures.push(message.clone());
                    RejectReason::Unavailable
                }
            };
            // Should this rejection end the call, it ends for the best reason known so far.
            let final_reason = match (&dispatch.refusal, dispatch.failures.is_empty()) {
                (Some((r, _)), _) => EndReason::from(*r),
                (None, false) => EndReason::Unreachable,
                (None, true) => EndReason::NotFound,
            };
            dispatch.rejections.push(DispatchRejection {
                provider: provider.clone(),
                reason,
                final_reason,
            });
        }
        dispatch
    }

    /// Nobody hosts the callee, or nobody answered: the Initiate Request is refused and leaves
    /// nothing behind (its session id can be used again).
    pub fn refuses_request(&self) -> bool {
        self.ringing.is_empty() && self.refusal.is_none()
    }

    /// The reason the caller hears when the dispatch itself ended the call: that of a provider
    /// that rang and already rejected (`earlier`: the call's rejections so far, as
    /// `(party, reason)` in the order they came), else the first refusal's, else `unavailable`.
    pub fn reject_reason(&self, earlier: &[(String, String)]) -> (RejectReason, Option<String>) {
        let from_ringing = earlier
            .iter()
            .find(|(party, _)| {
                party_provider(party).is_some_and(|p| self.ringing.iter().any(|r| r == p))
            })
            .map(|(_, reason)| {
                (
                    RejectReason::parse(reason).unwrap_or(RejectReason::Unavailable),
                    None,
                )
            });
        from_ringing
            .or_else(|| self.refusal.clone())
            .unwrap_or((RejectReason::Unavailable, None))
    }
}

/// Who hears of a call ending, and how the record moves.
#[derive(Debug, Clone, PartialEq)]
pub struct CancelPlan {
    /// The state the record moves to, from `from`.
    pub from: CallState,
    pub to: CallState,
    pub why: EndReason,
    /// Cancel Pushes to endpoints of this provider: (endpoint, self-uri, peer-uri, reason).
    pub pushes: Vec<(String, String, String, CancelReason)>,
    /// A Cancel Forward to the originator (this provider rang for it).
    pub tell_origin: Option<ForwardCancelReason>,
    /// Cancel Forwards to these providers (this provider is the originator).
    pub tell_providers: Vec<String>,
    pub forward_reason: ForwardCancelReason,
}

/// A Cancel Request from a party of the call here: the caller, or a rung callee endpoint
/// (`docs/protocol.md`, "Cancel"). `answered_by` is the record's.
pub fn plan_cancel(
    state: &SessionState,
    current: CallState,
    answered_by: Option<&str>,
    role: Role,
    me: &str,
    own_provider: &str,
) -> Result<CancelPlan, Refusal> {
    let (caller, callee) = (state.caller_uri.clone(), state.callee_uri.clone());
    let to_callee = |id: &str, reason| (id.to_string(), callee.clone(), caller.clone(), reason);
    let to_caller = |reason| {
        (
            state.caller_endpoint.clone(),
            caller.clone(),
            callee.clone(),
            reason,
        )
    };
    let mut plan = CancelPlan {
        from: current,
        to: CallState::Cancelled,
        why: EndReason::CallerCancelled,
        pushes: Vec::new(),
        tell_origin: None,
        tell_providers: Vec::new(),
        forward_reason: ForwardCancelReason::Cancelled,
    };
    match (current, role) {
        (CallState::Ringing, _) => {
            if role == Role::Callee {
                plan.why = EndReason::CalleeCancelled;
            }
            plan.pushes = state.cancels_to_others(me, CancelReason::Cancelled);
            match role {
                Role::Callee if state.forwarded_here() => {
                    plan.tell_origin = Some(ForwardCancelReason::Cancelled)
                }
                Role::Callee => plan.pushes.push(to_caller(CancelReason::Cancelled)),
                Role::Caller => plan.tell_providers = state.providers_except(&[own_provider]),
            }
        }
        (CallState::Answered, Role::Callee) if answered_by != Some(me) => {
            return Err(Refusal::call_gone(Some(CallState::Answered)));
        }
        (CallState::Answered, _) => {
            plan.to = CallState::Ended;
            plan.forward_reason = ForwardCancelReason::Ended;
            let answered_by = answered_by.unwrap_or_default();
            match role {
                Role::Caller => {
                    plan.why = EndReason::CallerHungUp;
                    match party_provider(answered_by) {
                        Some(provider) => plan.tell_providers = vec![provider.to_string()],
                        None => plan
                            .pushes
                            .push(to_callee(answered_by, CancelReason::Ended)),
                    }
                }
                Role::Callee => {
                    plan.why = EndReason::CalleeHungUp;
                    if state.forwarded_here() {
                        plan.tell_origin = Some(ForwardCancelReason::Ended);
                    } else {
                        plan.pushes.push(to_caller(CancelReason::Ended));
                    }
                }
            }
        }
        (other, _) => return Err(Refusal::call_gone(Some(other))),
    }
    Ok(plan)
}

/// A Cancel Forward received: from the originator (`from_answerer` None; this provider rang for
/// it) or from an answering provider (its state handed back; this provider is the originator).
pub fn plan_received_cancel(
    call: &CallRecord,
    from_answerer: Option<&SessionState>,
    sender: &str,
    reason: ForwardCancelReason,
    own_provider: &str,
) -> Result<CancelPlan, Refusal> {
    let (to, why) = match from_answerer {
        Some(_) => match call.state {
            CallState::Ringing => (CallState::Cancelled, EndReason::CalleeCancelled),
            CallState::Answered if call.answered_by_provider(sender) => {
                (CallState::Ended, EndReason::CalleeHungUp)
            }
            other => return Err(Refusal::call_gone(Some(other))),
        },
        None => {
            if !call.forwarded_by(sender) {
                return Err(Refusal::not_authorized(format!(
                    "`{sender}` did not forward this call here"
                )));
            }
            let elsewhere = reason == ForwardCancelReason::AnsweredElsewhere;
            match call.state {
                CallState::Ringing if elsewhere => {
                    (CallState::Cancelled, EndReason::AnsweredElsewhere)
                }
                CallState::Ringing => (CallState::Cancelled, EndReason::CallerCancelled),
                // Its Accept Forward lost the race at the originator and is still on its way.
                CallState::Answered if elsewhere => {
                    (CallState::Cancelled, EndReason::AnsweredElsewhere)
                }
                CallState::Answered => (CallState::Ended, EndReason::CallerHungUp),
                other => return Err(Refusal::call_gone(Some(other))),
            }
        }
    };
    // A hang-up is `ended` to the other side; a call that never got going keeps the reason given.
    let push_reason = if to == CallState::Ended {
        CancelReason::Ended
    } else if from_answerer.is_some() {
        CancelReason::Cancelled
    } else {
        reason.into()
    };
    let mut plan = CancelPlan {
        from: call.state,
        to,
        why,
        pushes: Vec::new(),
        tell_origin: None,
        tell_providers: Vec::new(),
        forward_reason: ForwardCancelReason::Cancelled,
    };
    match from_answerer {
        Some(state) => {
            plan.pushes.push((
                state.caller_endpoint.clone(),
                state.caller_uri.clone(),
                state.callee_uri.clone(),
                push_reason,
            ));
            if call.state == CallState::Ringing {
                plan.tell_providers = state.providers_except(&[own_provider, sender]);
            }
        }
        None => {
            let targets: Vec<String> = match call.state {
                CallState::Answered => call.answered_by.iter().cloned().collect(),
                _ => call.rung_endpoints.clone(),
            };
            for target in targets {
                plan.pushes.push((
                    target,
                    call.callee_uri.clone(),
                    call.caller_uri.clone(),
                    push_reason,
                ));
            }
        }
    }
    Ok(plan)
}

/// How the originator refused an Accept Forward, as the answering provider reads it: the
/// refusal's code, its message, and its class (the daemon derives the class from the transport).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerAnswer {
    Confirmed,
    Refused {
        code: String,
        message: String,
        gone: bool,
        description: String,
    },
    /// Not delivered, or no answer in time: the originator may or may not have taken it.
    Unconfirmed(String),
}

/// What an answering provider does when the originator answers its Accept Forward
/// (`docs/protocol.md`, "Call flows", Accept 3): None when confirmed; else the reason its other
/// rung endpoints hear, the refusal its answering endpoint gets, and whether the originator
/// must be sent a Cancel `ended` in case it took the Accept before the answer was lost.
pub fn origin_answer(answer: &PeerAnswer) -> Option<(CancelReason, Refusal, bool)> {
    use crate::refusal::RefusalCode;
    match answer {
        PeerAnswer::Confirmed => None,
        PeerAnswer::Refused { code, .. } if code == "already-answered" => Some((
            CancelReason::AnsweredElsewhere,
            Refusal::call_gone(Some(CallState::Answered)),
            false,
        )),
        PeerAnswer::Refused {
            gone: true,
            message,
            ..
        } => Some((
            CancelReason::Cancelled,
            Refusal::new(RefusalCode::CallEnded, message.clone()),
            false,
        )),
        PeerAnswer::Refused { description, .. } => Some((
            CancelReason::Cancelled,
            Refusal::new(
                RefusalCode::OriginRefused,
                format!("the caller's provider refused the answer: {description}"),
            ),
            false,
        )),
        PeerAnswer::Unconfirmed(e) => Some((
            CancelReason::Cancelled,
            Refusal::new(
                RefusalCode::OriginUnreachable,
                format!("the caller's provider did not confirm the answer: {e}"),
            ),
            true,
        )),
    }
}

/// Where an Update Request from a party here goes.
#[derive(Debug, Clone, PartialEq)]
pub enum UpdateRoute {
    /// Update Pushes to these endpoints of this provider.
    Local(Vec<String>),
    /// An Update Forward to the originator (this provider rang for the call).
    Origin,
    /// Update Forwards to these providers (this provider is the originator).
    Providers(Vec<String>),
}

/// The route of an Update (`docs/protocol.md`, "Update"): the caller's reaches every rung
/// endpoint while ringing and the answering one after; a callee endpoint's only once it
/// answered.
pub fn route_update(
    state: &SessionState,
    call: &CallRecord,
    role: Role,
    me: &str,
    own_provider: &str,
) -> Result<UpdateRoute, Refusal> {
    use crate::refusal::RefusalCode;
    if call.state.is_final() {
        return Err(Refusal::call_gone(Some(call.state)));
    }
    let answered_by = call.answered_by.as_deref().unwrap_or_default();
    if role == Role::Callee && answered_by != me {
        return Err(Refusal::new(
            RefusalCode::NotAnswered,
            "a callee endpoint may update a call only after answering it",
        ));
    }
    if state.forwarded_here() {
        return Ok(UpdateRoute::Origin);
    }
    if role == Role::Caller {
        if let Some(provider) = party_provider(answered_by) {
            return Ok(UpdateRoute::Providers(vec![provider.to_string()]));
        }
        if call.rung_endpoints.is_empty() {
            return Ok(UpdateRoute::Providers(
                state.providers_except(&[own_provider]),
            ));
        }
    }
    Ok(UpdateRoute::Local(match role {
        Role::Caller if call.state == CallState::Answered => vec![answered_by.to_string()],
        Role::Caller => state.rung.clone(),
        Role::Callee => vec![state.caller_endpoint.clone()],
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::refusal::RefusalCode;
    use crate::session::tests::local_state;

    fn record(state: CallState) -> CallRecord {
        CallRecord {
            session_id: "session-0001".into(),
            caller_uri: "tel:+16502530000".into(),
            callee_uri: "mailto:bob@example.com".into(),
            caller_endpoint: "ep-a".into(),
            rung_endpoints: vec!["ep-b1".into(), "ep-b2".into()],
            rung_count: 2,
            rejections: 0,
            media: vec!["audio".into()],
            state,
            reason: None,
            answered_by: None,
            providers: vec!["a.example".into()],
            ringing_providers: Vec::new(),
            initiated_at: 0,
            ring_deadline: 60_000,
            answered_at: None,
            ended_at: None,
        }
    }

    fn originator_state() -> SessionState {
        SessionState {
            rung: Vec::new(),
            providers: vec!["a.example".into(), "b.example".into(), "c.example".into()],
            ..local_state()
        }
    }

    fn answerer_state() -> SessionState {
        SessionState {
            caller_endpoint: String::new(),
            providers: vec!["a.example".into(), "b.example".into()],
            origin: Some("a.example".into()),
            origin_state: Some("v1.k.origin".into()),
            ..local_state()
        }
    }

    #[test]
    fn who_rings_keeps_the_endpoints_that_can_take_the_call() {
        let audio_only = Capabilities {
            video: false,
            video_codecs: Vec::new(),
            ..Capabilities::default()
        };
        let candidates = vec![("b1", audio_only), ("b2", Capabilities::default())];
        let media = [MediaKind::Audio, MediaKind::Video];
        let (rung, why) = who_rings(candidates, |e| &e.1, &Capabilities::default(), &media);
        assert_eq!(rung.iter().map(|e| e.0).collect::<Vec<_>>(), ["b2"]);
        assert_eq!(why, Some(Unsupported::MissingMedia(MediaKind::Video)));
        assert_eq!(nobody_rang(why.as_ref()).0, RejectReason::UnsupportedMedia);
        assert_eq!(nobody_rang(None).0, RejectReason::Unavailable);
    }

    #[test]
    fn a_dispatch_where_anyone_rings_goes_ahead_and_counts_the_others_as_rejections() {
        let outcomes = vec![
            ("b".to_string(), DispatchOutcome::FalsePositive),
            ("c".to_string(), DispatchOutcome::Ringing(2)),
            (
                "d".to_string(),
                DispatchOutcome::Failed("d: timed out".into()),
            ),
            ("e".to_string(), DispatchOutcome::Ringing(1)),
        ];
        let dispatch = Dispatch::fold(&outcomes);
        assert_eq!(dispatch.ringing, ["c", "e"]);
        assert_eq!(dispatch.rung_total, 3);
        assert!(!dispatch.refuses_request());
        let recorded: Vec<(&str, EndReason)> = dispatch
            .rejections
            .iter()
            .map(|r| (r.provider.as_str(), r.final_reason))
            .collect();
        // The false positive alone would end the call as not-found, once a peer failed as
        // unreachable.
        assert_eq!(
            recorded,
            [("b", EndReason::NotFound), ("d", EndReason::Unreachable)]
        );
    }

    #[test]
    fn all_false_positives_refuse_the_request_and_a_refusal_rejects_the_call() {
        let none = Dispatch::fold(&[
            ("b".to_string(), DispatchOutcome::FalsePositive),
            ("c".to_string(), DispatchOutcome::FalsePositive),
        ]);
        assert!(none.refuses_request());
        assert_eq!(none.false_positives, 2);
        let refused = Dispatch::fold(&[
            ("b".to_string(), DispatchOutcome::Failed("x".into())),
            (
                "c".to_string(),
                DispatchOutcome::Refused {
                    reason: RejectReason::UnsupportedMedia,
                    text: Some("no video".into()),
                },
            ),
        ]);
        assert!(!refused.refuses_request());
        assert_eq!(
            refused.rejections[1].final_reason,
            EndReason::UnsupportedMedia
        );
        assert_eq!(
            refused.reject_reason(&[]),
            (RejectReason::UnsupportedMedia, Some("no video".into()))
        );
    }

    #[test]
    fn the_caller_hears_the_reason_of_a_provider_that_rang_before_one_that_refused() {
        let dispatch = Dispatch::fold(&[
            ("b".to_string(), DispatchOutcome::Ringing(1)),
            (
                "c".to_string(),
                DispatchOutcome::Refused {
                    reason: RejectReason::Unavailable,
                    text: None,
                },
            ),
        ]);
        // b's Reject Forward came in while the dispatch was still waiting for c.
        let earlier = vec![
            ("provider:b".to_string(), "busy".to_string()),
            ("provider:c".to_string(), "unavailable".to_string()),
        ];
        assert_eq!(dispatch.reject_reason(&earlier), (RejectReason::Busy, None));
    }

    #[test]
    fn cancel_while_ringing_tells_everyone_else_once() {
        let state = local_state();
        let plan = plan_cancel(
            &state,
            CallState::Ringing,
            None,
            Role::Caller,
            "ep-a",
            "a.example",
        )
        .unwrap();
        assert_eq!(
            (plan.to, plan.why),
            (CallState::Cancelled, EndReason::CallerCancelled)
        );
        let told: Vec<&str> = plan.pushes.iter().map(|p| p.0.as_str()).collect();
        assert_eq!(told, ["ep-b1", "ep-b2"]);
        assert!(plan.tell_providers.is_empty() && plan.tell_origin.is_none());

        let plan = plan_cancel(
            &state,
            CallState::Ringing,
            None,
            Role::Callee,
            "ep-b1",
            "a.example",
        )
        .unwrap();
        let told: Vec<(&str, CancelReason)> =
            plan.pushes.iter().map(|p| (p.0.as_str(), p.3)).collect();
        assert_eq!(
            told,
            [
                ("ep-b2", CancelReason::Cancelled),
                ("ep-a", CancelReason::Cancelled)
            ]
        );

        let forwarded = answerer_state();
        let plan = plan_cancel(
            &forwarded,
            CallState::Ringing,
            None,
            Role::Callee,
            "ep-b1",
            "b.example",
        )
        .unwrap();
        assert_eq!(plan.tell_origin, Some(ForwardCancelReason::Cancelled));
        assert_eq!(plan.pushes.len(), 1, "only the other rung endpoint here");

        let origin = originator_state();
        let plan = plan_cancel(
            &origin,
            CallState::Ringing,
            None,
            Role::Caller,
            "ep-a",
            "a.example",
        )
        .unwrap();
        assert_eq!(plan.tell_providers, ["b.example", "c.example"]);
    }

    #[test]
    fn a_hang_up_reaches_the_other_party_and_only_the_answerer_may_hang_up() {
        let state = local_state();
        let plan = plan_cancel(
            &state,
            CallState::Answered,
            Some("ep-b2"),
            Role::Caller,
            "ep-a",
            "a.example",
        )
        .unwrap();
        assert_eq!(
            (plan.to, plan.why),
            (CallState::Ended, EndReason::CallerHungUp)
        );
        assert_eq!(plan.pushes[0].0, "ep-b2");
        assert_eq!(plan.pushes[0].3, CancelReason::Ended);

        let loser = plan_cancel(
            &state,
            CallState::Answered,
            Some("ep-b2"),
            Role::Callee,
            "ep-b1",
            "a.example",
        );
        assert_eq!(loser.unwrap_err().code, RefusalCode::AlreadyAnswered);

        let origin = originator_state();
        let plan = plan_cancel(
            &origin,
            CallState::Answered,
            Some("provider:c.example"),
            Role::Caller,
            "ep-a",
            "a.example",
        )
        .unwrap();
        assert_eq!(plan.tell_providers, ["c.example"]);
        assert_eq!(plan.forward_reason, ForwardCancelReason::Ended);

        let over = plan_cancel(
            &state,
            CallState::Timeout,
            None,
            Role::Caller,
            "ep-a",
            "a.example",
        );
        assert_eq!(over.unwrap_err().code, RefusalCode::CallEnded);
    }

    #[test]
    fn a_cancel_crossing_an_accept_ends_the_answerer_as_answered_elsewhere() {
        let mut call = record(CallState::Answered);
        call.caller_endpoint = String::new();
        call.providers = vec!["a.example".into(), "b.example".into()];
        call.answered_by = Some("ep-b1".into());
        let plan = plan_received_cancel(
            &call,
            None,
            "a.example",
            ForwardCancelReason::AnsweredElsewhere,
            "b.example",
        )
        .unwrap();
        assert_eq!(
            (plan.to, plan.why),
            (CallState::Cancelled, EndReason::AnsweredElsewhere)
        );
        assert_eq!(
            plan.pushes,
            [(
                "ep-b1".to_string(),
                call.callee_uri.clone(),
                call.caller_uri.clone(),
                CancelReason::AnsweredElsewhere
            )]
        );
        let hang_up = plan_received_cancel(
            &call,
            None,
            "a.example",
            ForwardCancelReason::Ended,
            "b.example",
        )
        .unwrap();
        assert_eq!(
            (hang_up.to, hang_up.pushes[0].3),
            (CallState::Ended, CancelReason::Ended)
        );
        let stranger = plan_received_cancel(
            &call,
            None,
            "c.example",
            ForwardCancelReason::Ended,
            "b.example",
        );
        assert_eq!(stranger.unwrap_err().code, RefusalCode::NotAuthorized);
    }

    #[test]
    fn a_callee_cancel_at_the_originator_tells_the_caller_and_the_other_providers() {
        let state = originator_state();
        let call = CallRecord {
            rung_endpoints: Vec::new(),
            providers: state.providers.clone(),
            ..record(CallState::Ringing)
        };
        let plan = plan_received_cancel(
            &call,
            Some(&state),
            "b.example",
            ForwardCancelReason::Cancelled,
            "a.example",
        )
        .unwrap();
        assert_eq!(plan.why, EndReason::CalleeCancelled);
        assert_eq!(plan.pushes[0].0, "ep-a");
        assert_eq!(plan.tell_providers, ["c.example"]);
        let answered = CallRecord {
            answered_by: Some("provider:c.example".into()),
            ..call.clone()
        };
        let answered = CallRecord {
            state: CallState::Answered,
            ..answered
        };
        let refused = plan_received_cancel(
            &answered,
            Some(&state),
            "b.example",
            ForwardCancelReason::Ended,
            "a.example",
        );
        assert_eq!(refused.unwrap_err().code, RefusalCode::AlreadyAnswered);
    }

    #[test]
    fn the_originators_answer_to_an_accept_decides_the_answerers_outcome() {
        assert_eq!(origin_answer(&PeerAnswer::Confirmed), None);
        let refused = |code: &str, gone| PeerAnswer::Refused {
            code: code.into(),
            message: "m".into(),
            gone,
            description: "d".into(),
        };
        let (reason, refusal, cancel) = origin_answer(&refused("already-answered", false)).unwrap();
        assert_eq!(
            (reason, refusal.code, cancel),
            (
                CancelReason::AnsweredElsewhere,
                RefusalCode::AlreadyAnswered,
                false
            )
        );
        let (reason, refusal, _) = origin_answer(&refused("call-ended", true)).unwrap();
        assert_eq!(
            (reason, refusal.code),
            (CancelReason::Cancelled, RefusalCode::CallEnded)
        );
        let (_, refusal, _) = origin_answer(&refused("not-authorized", false)).unwrap();
        assert_eq!(refusal.code, RefusalCode::OriginRefused);
        let (_, refusal, cancel) =
            origin_answer(&PeerAnswer::Unconfirmed("timeout".into())).unwrap();
        assert_eq!(
            (refusal.code, cancel),
            (RefusalCode::OriginUnreachable, true)
        );
    }

    #[test]
    fn updates_follow_the_call() {
        let state = local_state();
        let ringing = record(CallState::Ringing);
        let route = route_update(&state, &ringing, Role::Caller, "ep-a", "a.example").unwrap();
        assert_eq!(
            route,
            UpdateRoute::Local(vec!["ep-b1".into(), "ep-b2".into()])
        );
        let early = route_update(&state, &ringing, Role::Callee, "ep-b1", "a.example");
        assert_eq!(early.unwrap_err().code, RefusalCode::NotAnswered);
        let answered = CallRecord {
            state: CallState::Answered,
            answered_by: Some("ep-b1".into()),
            ..ringing.clone()
        };
        let route = route_update(&state, &answered, Role::Callee, "ep-b1", "a.example").unwrap();
        assert_eq!(route, UpdateRoute::Local(vec!["ep-a".into()]));
        let route = route_update(&state, &answered, Role::Caller, "ep-a", "a.example").unwrap();
        assert_eq!(route, UpdateRoute::Local(vec!["ep-b1".into()]));

        let origin = originator_state();
        let remote = CallRecord {
            rung_endpoints: Vec::new(),
            ..ringing.clone()
        };
        let route = route_update(&origin, &remote, Role::Caller, "ep-a", "a.example").unwrap();
        assert_eq!(
            route,
            UpdateRoute::Providers(vec!["b.example".into(), "c.example".into()])
        );
        let forwarded = answerer_state();
        let mine = CallRecord {
            state: CallState::Answered,
            answered_by: Some("ep-b1".into()),
            ..ringing.clone()
        };
        let route = route_update(&forwarded, &mine, Role::Callee, "ep-b1", "b.example").unwrap();
        assert_eq!(route, UpdateRoute::Origin);
        let ended = record(CallState::Ended);
        let route = route_update(&state, &ended, Role::Caller, "ep-a", "a.example");
        assert_eq!(route.unwrap_err().code, RefusalCode::CallEnded);
    }
}
