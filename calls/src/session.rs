//! What a provider seals into `state`: everything it needs to route a later message of the
//! call, so that no replica keeps routing state per call (`docs/protocol.md`, "Sealed session
//! state"). Sealing itself is the daemon's (its keys live in the database).

use serde::{Deserialize, Serialize};
use switchyard_protocol::capabilities::MediaKind;
use switchyard_protocol::invitation::RelayChoice;

use switchyard_protocol::invitation::{CancelReason, RejectReason};

use crate::record::{CallRecord, CallState};
use crate::refusal::Refusal;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionState {
    pub sid: String,
    pub caller_uri: String,
    pub caller_token: String,
    pub caller_endpoint: String,
    pub callee_uri: String,
    /// Endpoint ids rung at this provider.
    pub rung: Vec<String>,
    pub media: Vec<MediaKind>,
    pub providers: Vec<String>,
    pub deadline: i64,
    /// For a call forwarded here by another provider: that provider, and its own sealed state,
    /// handed back in every Forward to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin_state: Option<String>,
    /// Whose relay serves the call, as the caller's provider chose.
    #[serde(default)]
    pub relay_choice: RelayChoice,
}

/// Which side of a call an endpoint acts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Caller,
    Callee,
}

impl SessionState {
    /// The call record a provider opens with this state: ringing `parties` (its endpoints rung,
    /// or the providers an Initiate went to), or rejected at once for `refusal` when nobody
    /// could be rung.
    pub fn opening_record(
        &self,
        parties: i64,
        refusal: Option<RejectReason>,
        now: i64,
    ) -> CallRecord {
        CallRecord {
            session_id: self.sid.clone(),
            caller_uri: self.caller_uri.clone(),
            callee_uri: self.callee_uri.clone(),
            caller_endpoint: self.caller_endpoint.clone(),
            rung_endpoints: self.rung.clone(),
            rung_count: parties,
            rejections: 0,
            media: self.media.iter().map(|m| m.as_str().to_string()).collect(),
            state: if refusal.is_some() {
                CallState::Rejected
            } else {
                CallState::Ringing
            },
            reason: refusal.map(|r| r.as_str().to_string()),
            answered_by: None,
            providers: self.providers.clone(),
            ringing_providers: Vec::new(),
            initiated_at: now,
            ring_deadline: self.deadline,
            answered_at: None,
            ended_at: refusal.map(|_| now),
        }
    }

    /// Cancel Pushes, with `reason`, to the endpoints rung here other than `me` (the one that
    /// answered or cancelled): (endpoint, self-uri, peer-uri, reason).
    pub fn cancels_to_others(
        &self,
        me: &str,
        reason: CancelReason,
    ) -> Vec<(String, String, String, CancelReason)> {
        self.rung
            .iter()
            .filter(|id| *id != me)
            .map(|id| {
                (
                    id.clone(),
                    self.callee_uri.clone(),
                    self.caller_uri.clone(),
                    reason,
                )
            })
            .collect()
    }

    /// Whether the call was forwarded here by another provider (this provider rang for it).
    pub fn forwarded_here(&self) -> bool {
        self.origin.is_some()
    }

    /// Checks an opened state belongs to the message's session.
    pub fn check_session(&self, session_id: &str, field: &str) -> Result<(), Refusal> {
        if self.sid == session_id {
            Ok(())
        } else {
            Err(Refusal::field(
                field,
                format!("{field} belongs to another session"),
            ))
        }
    }

    /// Which party of the call the sender is, after checking it is one and that `peer_uri` is
    /// the other party; `verb` words the refusal.
    pub fn role_of(
        &self,
        endpoint_id: &str,
        self_uri: &str,
        peer_uri: &str,
        verb: &str,
    ) -> Result<Role, Refusal> {
        let is_caller = endpoint_id == self.caller_endpoint && self_uri == self.caller_uri;
        let is_callee = self_uri == self.callee_uri && self.rung.iter().any(|id| id == endpoint_id);
        if !(is_caller || is_callee) {
            return Err(Refusal::not_authorized(format!(
                "only the two parties of a call may {verb} it"
            )));
        }
        let expected_peer = if is_caller {
            &self.callee_uri
        } else {
            &self.caller_uri
        };
        if peer_uri != expected_peer {
            return Err(Refusal::field(
                "peer-uri",
                "peer-uri is not the other party of this call",
            ));
        }
        Ok(if is_caller {
            Role::Caller
        } else {
            Role::Callee
        })
    }

    /// Accept and Reject come only from a rung endpoint of the callee, echoing the caller.
    pub fn check_answerer(
        &self,
        endpoint_id: &str,
        self_uri: &str,
        peer_uri: &str,
        peer_token: &str,
    ) -> Result<(), Refusal> {
        if self.callee_uri != self_uri || !self.rung.iter().any(|id| id == endpoint_id) {
            return Err(Refusal::not_authorized(
                "only the callee's rung endpoints may accept or reject this call",
            ));
        }
        if self.caller_uri != peer_uri {
            return Err(Refusal::field(
                "peer-uri",
                "peer-uri is not this call's caller",
            ));
        }
        if self.caller_token != peer_token {
            return Err(Refusal::field(
                "peer-token",
                "peer-token is not this call's caller",
            ));
        }
        Ok(())
    }

    /// The providers of the call other than `except` (this one, and the peer a message came
    /// from).
    pub fn providers_except(&self, except: &[&str]) -> Vec<String> {
        self.providers
            .iter()
            .filter(|p| !except.contains(&p.as_str()))
            .cloned()
            .collect()
    }

    /// Checks a state an answering provider handed back (`origin-state`): ours as originator,
    /// for this session, and the sender among the providers the Initiate went to.
    pub fn check_returned_by(&self, session_id: &str, sender: &str) -> Result<(), Refusal> {
        self.check_session(session_id, "origin-state")?;
        if self.origin.is_some() || !self.providers.iter().any(|p| p == sender) {
            return Err(Refusal::not_authorized(format!(
                "this call was not forwarded to `{sender}`"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::refusal::RefusalCode;

    pub(crate) fn local_state() -> SessionState {
        SessionState {
            sid: "session-0001".into(),
            caller_uri: "tel:+16502530000".into(),
            caller_token: "tok-a".into(),
            caller_endpoint: "ep-a".into(),
            callee_uri: "mailto:bob@example.com".into(),
            rung: vec!["ep-b1".into(), "ep-b2".into()],
            media: vec![MediaKind::Audio],
            providers: vec!["a.example".into()],
            deadline: 60_000,
            origin: None,
            origin_state: None,
            relay_choice: RelayChoice::CallerProvider,
        }
    }

    #[test]
    fn the_two_parties_are_told_apart_and_nobody_else_passes() {
        let state = local_state();
        let caller = state.role_of("ep-a", &state.caller_uri, &state.callee_uri, "cancel");
        assert_eq!(caller.unwrap(), Role::Caller);
        let callee = state.role_of("ep-b2", &state.callee_uri, &state.caller_uri, "cancel");
        assert_eq!(callee.unwrap(), Role::Callee);
        // The caller's endpoint acting as the callee's URI is neither.
        let neither = state.role_of("ep-a", &state.callee_uri, &state.caller_uri, "cancel");
        assert_eq!(neither.unwrap_err().code, RefusalCode::NotAuthorized);
        let wrong_peer = state.role_of("ep-b1", &state.callee_uri, "tel:+1999", "update");
        assert_eq!(wrong_peer.unwrap_err().field.as_deref(), Some("peer-uri"));
    }

    #[test]
    fn only_a_rung_callee_endpoint_echoing_the_caller_may_answer() {
        let state = local_state();
        let (callee, caller) = (state.callee_uri.clone(), state.caller_uri.clone());
        assert!(state
            .check_answerer("ep-b1", &callee, &caller, "tok-a")
            .is_ok());
        let not_rung = state.check_answerer("ep-b9", &callee, &caller, "tok-a");
        assert_eq!(not_rung.unwrap_err().code, RefusalCode::NotAuthorized);
        let token = state.check_answerer("ep-b1", &callee, &caller, "tok-x");
        assert_eq!(token.unwrap_err().field.as_deref(), Some("peer-token"));
    }

    #[test]
    fn a_returned_state_must_be_the_originators_and_name_the_sender() {
        let mut state = local_state();
        state.providers = vec!["a.example".into(), "b.example".into()];
        assert!(state.check_returned_by("session-0001", "b.example").is_ok());
        let other = state.check_returned_by("session-0001", "c.example");
        assert_eq!(other.unwrap_err().code, RefusalCode::NotAuthorized);
        let session = state.check_returned_by("session-0002", "b.example");
        assert_eq!(session.unwrap_err().field.as_deref(), Some("origin-state"));
        state.origin = Some("z.example".into());
        assert!(state
            .check_returned_by("session-0001", "b.example")
            .is_err());
    }
}
