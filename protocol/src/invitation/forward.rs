//! Forwards: provider → provider (`POST /federation/v1/initiate`, `accept`, `reject`, `cancel`,
//! `update`), each with the envelope, and the answers the sender reads back.
//!
//! Reading a Forward checks its fields in the order `docs/protocol.md` gives: the envelope, the
//! sender's provider field against the authenticated sender, then the rest. The timestamp
//! window, the replay check and opening `origin-state` need the receiver's clock, database and
//! keys, so they are the receiver's, after reading.

use super::fields::{
    self, blob, bounded, ca_pem, canonical, insert_opt, MessageError, SessionId, MAX_STATE,
    MAX_TOKEN,
};
use super::reason::{ForwardCancelReason, RejectReason, RelayChoice};
use crate::attestation::Level;
use crate::capabilities::{Capabilities, MediaKind};
use crate::dict::Dict;
use crate::uri::Canonicalizer;

/// Which Forward: also its path under `/federation/v1/` and the action its answer is kept under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ForwardAction {
    Initiate,
    Accept,
    Reject,
    Cancel,
    Update,
}

impl ForwardAction {
    pub fn as_str(self) -> &'static str {
        match self {
            ForwardAction::Initiate => "initiate",
            ForwardAction::Accept => "accept",
            ForwardAction::Reject => "reject",
            ForwardAction::Cancel => "cancel",
            ForwardAction::Update => "update",
        }
    }

    pub fn path(self) -> &'static str {
        match self {
            ForwardAction::Initiate => "/federation/v1/initiate",
            ForwardAction::Accept => "/federation/v1/accept",
            ForwardAction::Reject => "/federation/v1/reject",
            ForwardAction::Cancel => "/federation/v1/cancel",
            ForwardAction::Update => "/federation/v1/update",
        }
    }
}

/// The fields every Forward starts with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub session_id: SessionId,
    /// The sender's clock, Unix seconds.
    pub timestamp: i64,
    /// Fresh per Forward: 16-64 of `A-Z a-z 0-9 - _`.
    pub forward_id: String,
}

impl Envelope {
    pub fn from_dict(dict: &Dict) -> Result<Envelope, MessageError> {
        let session_id = SessionId::from_dict(dict)?;
        let timestamp = dict.int("timestamp")?;
        let forward_id = dict.str("forward-id")?;
        let ok = (16..=64).contains(&forward_id.len())
            && forward_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
        if !ok {
            return Err(MessageError::invalid(
                "forward-id",
                "forward-id must be 16-64 letters, digits, `-` or `_`",
            ));
        }
        Ok(Envelope {
            session_id,
            timestamp,
            forward_id: forward_id.to_string(),
        })
    }

    fn to_dict(&self) -> Dict {
        Dict::new()
            .with("session-id", self.session_id.as_str())
            .with("timestamp", self.timestamp)
            .with("forward-id", self.forward_id.as_str())
    }
}

/// The sender's own provider field (`originating-provider`, `answering-provider`,
/// `from-provider`) must name the authenticated sender.
fn sender(dict: &Dict, field: &str, authenticated: &str) -> Result<String, MessageError> {
    let claimed = dict.str(field)?;
    if claimed != authenticated {
        return Err(MessageError::WrongSender {
            field: field.to_string(),
            claimed: claimed.to_string(),
            sender: authenticated.to_string(),
        });
    }
    Ok(claimed.to_string())
}

fn origin_state(dict: &Dict) -> Result<String, MessageError> {
    bounded(dict, "origin-state", MAX_STATE)
}

fn opt_origin_state(dict: &Dict) -> Result<Option<String>, MessageError> {
    if dict.contains_key("origin-state") {
        origin_state(dict).map(Some)
    } else {
        Ok(None)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct InitiateForward {
    pub envelope: Envelope,
    pub originating_provider: String,
    pub origin_state: String,
    pub caller_uri: String,
    pub caller_token: String,
    pub callee_uri: String,
    pub caller_blob: Vec<u8>,
    pub caller_capabilities: Capabilities,
    pub caller_ca: Option<String>,
    pub media: Vec<MediaKind>,
    /// The originator's deadline, Unix ms.
    pub ring_deadline: i64,
    pub relay_choice: RelayChoice,
    /// The caller attestation's level and signature, when the sender attests its caller.
    pub attestation: Option<(Level, Vec<u8>)>,
}

impl InitiateForward {
    pub fn from_dict(
        dict: &Dict,
        canon: &Canonicalizer,
        authenticated: &str,
    ) -> Result<Self, MessageError> {
        let envelope = Envelope::from_dict(dict)?;
        let originating_provider = sender(dict, "originating-provider", authenticated)?;
        let origin_state = origin_state(dict)?;
        let caller_uri = canonical(dict, "caller-uri", canon)?;
        let callee_uri = canonical(dict, "callee-uri", canon)?;
        Ok(InitiateForward {
            envelope,
            originating_provider,
            origin_state,
            caller_uri,
            caller_token: bounded(dict, "caller-token", MAX_TOKEN)?,
            callee_uri,
            caller_blob: blob(dict, "caller-blob")?,
            caller_capabilities: fields::capabilities(dict, "caller-capabilities", true)?,
            caller_ca: ca_pem(dict, "caller-ca")?,
            media: fields::media(dict)?,
            relay_choice: RelayChoice::from_field(dict)?,
            ring_deadline: dict.int("ring-deadline")?,
            attestation: attestation(dict)?,
        })
    }

    pub fn to_dict(&self) -> Dict {
        let mut dict = self
            .envelope
            .to_dict()
            .with("originating-provider", self.originating_provider.as_str())
            .with("origin-state", self.origin_state.as_str())
            .with("caller-uri", self.caller_uri.as_str())
            .with("caller-token", self.caller_token.as_str())
            .with("callee-uri", self.callee_uri.as_str())
            .with("caller-blob", self.caller_blob.clone())
            .with("caller-capabilities", self.caller_capabilities.to_dict());
        insert_opt(&mut dict, "caller-ca", self.caller_ca.as_deref());
        let mut dict = dict
            .with("media", fields::media_value(&self.media))
            .with("ring-deadline", self.ring_deadline)
            .with("relay-choice", self.relay_choice.as_str());
        if let Some((level, signature)) = &self.attestation {
            dict.insert("attestation", signature.clone());
            dict.insert("attestation-level", level.as_str());
        }
        dict
    }
}

/// `attestation` and its `attestation-level`, which come together or not at all.
fn attestation(dict: &Dict) -> Result<Option<(Level, Vec<u8>)>, MessageError> {
    let signature = dict.opt_data("attestation")?;
    let level = dict.opt_str("attestation-level")?;
    match (signature, level) {
        (None, None) => Ok(None),
        (Some(signature), Some(level)) => match Level::parse(level) {
            Some(level) => Ok(Some((level, signature))),
            None => Err(MessageError::invalid(
                "attestation-level",
                format!("attestation-level `{level}` is not A, B or C"),
            )),
        },
        (Some(_), None) => Err(MessageError::invalid(
            "attestation-level",
            "an attestation needs its attestation-level",
        )),
        (None, Some(_)) => Err(MessageError::invalid(
            "attestation",
            "attestation-level without an attestation",
        )),
    }
}

/// What a provider answers an Initiate Forward with.
#[derive(Debug, Clone, PartialEq)]
pub struct InitiateAnswer {
    pub answering_provider: String,
    pub rung: i64,
    /// When nothing rang: why, and the text that says it.
    pub refusal: Option<(RejectReason, Option<String>)>,
}

impl InitiateAnswer {
    /// Reads a peer's answer. Only `rung` counts: a refusal whose reason is not one of the
    /// protocol's counts as `unavailable`, as if the peer had given none.
    pub fn from_dict(dict: &Dict) -> Result<InitiateAnswer, MessageError> {
        let rung = dict.int("rung")?;
        let refusal = (rung <= 0).then(|| {
            let reason = dict
                .opt_str("reason")
                .ok()
                .flatten()
                .and_then(RejectReason::parse)
                .unwrap_or(RejectReason::Unavailable);
            let text = dict
                .opt_str("reason-text")
                .ok()
                .flatten()
                .map(str::to_string);
            (reason, text)
        });
        Ok(InitiateAnswer {
            answering_provider: dict
                .opt_str("answering-provider")
                .ok()
                .flatten()
                .unwrap_or_default()
                .to_string(),
            rung,
            refusal,
        })
    }

    pub fn to_dict(&self, session_id: &SessionId) -> Dict {
        let mut dict = Dict::new()
            .with("session-id", session_id.as_str())
            .with("answering-provider", self.answering_provider.as_str())
            .with("rung", self.rung);
        if let Some((reason, text)) = &self.refusal {
            dict.insert("reason", reason.as_str());
            insert_opt(&mut dict, "reason-text", text.as_deref());
        }
        dict
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AcceptForward {
    pub envelope: Envelope,
    pub answering_provider: String,
    pub origin_state: String,
    pub callee_uri: String,
    pub callee_token: String,
    pub callee_blob: Vec<u8>,
    pub callee_ca: Option<String>,
}

impl AcceptForward {
    pub fn from_dict(
        dict: &Dict,
        canon: &Canonicalizer,
        authenticated: &str,
    ) -> Result<Self, MessageError> {
        Ok(AcceptForward {
            envelope: Envelope::from_dict(dict)?,
            answering_provider: sender(dict, "answering-provider", authenticated)?,
            origin_state: origin_state(dict)?,
            callee_uri: canonical(dict, "callee-uri", canon)?,
            callee_token: bounded(dict, "callee-token", MAX_TOKEN)?,
            callee_blob: blob(dict, "callee-blob")?,
            callee_ca: ca_pem(dict, "callee-ca")?,
        })
    }

    pub fn to_dict(&self) -> Dict {
        let mut dict = self
            .envelope
            .to_dict()
            .with("answering-provider", self.answering_provider.as_str())
            .with("origin-state", self.origin_state.as_str())
            .with("callee-uri", self.callee_uri.as_str())
            .with("callee-token", self.callee_token.as_str())
            .with("callee-blob", self.callee_blob.clone());
        insert_opt(&mut dict, "callee-ca", self.callee_ca.as_deref());
        dict
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RejectForward {
    pub envelope: Envelope,
    pub answering_provider: String,
    pub origin_state: String,
    pub reason: RejectReason,
    pub reason_text: Option<String>,
}

impl RejectForward {
    pub fn from_dict(dict: &Dict, authenticated: &str) -> Result<Self, MessageError> {
        Ok(RejectForward {
            envelope: Envelope::from_dict(dict)?,
            answering_provider: sender(dict, "answering-provider", authenticated)?,
            origin_state: origin_state(dict)?,
            reason: RejectReason::from_field(dict)?,
            reason_text: fields::reason_text(dict)?,
        })
    }

    pub fn to_dict(&self) -> Dict {
        let mut dict = self
            .envelope
            .to_dict()
            .with("answering-provider", self.answering_provider.as_str())
            .with("origin-state", self.origin_state.as_str())
            .with("reason", self.reason.as_str());
        insert_opt(&mut dict, "reason-text", self.reason_text.as_deref());
        dict
    }
}

/// The answer to a Reject Forward: how many providers are yet to reject.
#[derive(Debug, Clone, PartialEq)]
pub struct RejectAnswer {
    pub session_id: SessionId,
    pub remaining: i64,
}

impl RejectAnswer {
    pub fn to_dict(&self) -> Dict {
        Dict::new()
            .with("session-id", self.session_id.as_str())
            .with("remaining", self.remaining)
    }
}

/// A Cancel Forward, both ways: `origin_state` is present from an answering provider to the
/// originator, absent from the originator.
#[derive(Debug, Clone, PartialEq)]
pub struct CancelForward {
    pub envelope: Envelope,
    pub from_provider: String,
    pub reason: ForwardCancelReason,
    pub origin_state: Option<String>,
}

impl CancelForward {
    pub fn from_dict(dict: &Dict, authenticated: &str) -> Result<Self, MessageError> {
        Ok(CancelForward {
            envelope: Envelope::from_dict(dict)?,
            from_provider: sender(dict, "from-provider", authenticated)?,
            reason: ForwardCancelReason::from_field(dict)?,
            origin_state: opt_origin_state(dict)?,
        })
    }

    pub fn to_dict(&self) -> Dict {
        let mut dict = self
            .envelope
            .to_dict()
            .with("from-provider", self.from_provider.as_str());
        insert_opt(&mut dict, "origin-state", self.origin_state.as_deref());
        dict.with("reason", self.reason.as_str())
    }
}

/// An Update Forward, both ways like Cancel.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateForward {
    pub envelope: Envelope,
    pub from_provider: String,
    pub sender_token: String,
    /// Never empty.
    pub blob: Vec<u8>,
    pub origin_state: Option<String>,
}

impl UpdateForward {
    pub fn from_dict(dict: &Dict, authenticated: &str) -> Result<Self, MessageError> {
        let envelope = Envelope::from_dict(dict)?;
        let from_provider = sender(dict, "from-provider", authenticated)?;
        let sender_token = bounded(dict, "sender-token", MAX_TOKEN)?;
        let blob = blob(dict, "blob")?;
        if blob.is_empty() {
            return Err(MessageError::invalid("blob", "an Update needs a blob"));
        }
        Ok(UpdateForward {
            envelope,
            from_provider,
            sender_token,
            blob,
            origin_state: opt_origin_state(dict)?,
        })
    }

    pub fn to_dict(&self) -> Dict {
        let mut dict = self
            .envelope
            .to_dict()
            .with("from-provider", self.from_provider.as_str())
            .with("sender-token", self.sender_token.as_str())
            .with("blob", self.blob.clone());
        insert_opt(&mut dict, "origin-state", self.origin_state.as_deref());
        dict
    }
}

/// The answer to an Update Forward: how many pushes the receiver queued.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateAnswer {
    pub session_id: SessionId,
    pub delivered: i64,
}

impl UpdateAnswer {
    pub fn to_dict(&self) -> Dict {
        Dict::new()
            .with("session-id", self.session_id.as_str())
            .with("delivered", self.delivered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dict::Encoding;

    fn envelope() -> Envelope {
        Envelope {
            session_id: SessionId::parse("session-0001").unwrap(),
            timestamp: 1_800_000_000,
            forward_id: "f".repeat(22),
        }
    }

    fn initiate() -> InitiateForward {
        InitiateForward {
            envelope: envelope(),
            originating_provider: "a.example".into(),
            origin_state: "v1.k.sealed".into(),
            caller_uri: "tel:+16502530000".into(),
            caller_token: "tok-a".into(),
            callee_uri: "mailto:bob@example.com".into(),
            caller_blob: vec![7; 100],
            caller_capabilities: Capabilities::default(),
            caller_ca: None,
            media: vec![MediaKind::Audio],
            ring_deadline: 1_800_000_060_000,
            relay_choice: RelayChoice::CalleeProvider,
            attestation: Some((Level::Full, vec![1, 2, 3])),
        }
    }

    #[test]
    fn forwards_read_back_what_they_write_in_both_encodings() {
        let canon = Canonicalizer::new(None);
        let cancel = CancelForward {
            envelope: envelope(),
            from_provider: "b.example".into(),
            reason: ForwardCancelReason::AnsweredElsewhere,
            origin_state: None,
        };
        let update = UpdateForward {
            envelope: envelope(),
            from_provider: "b.example".into(),
            sender_token: "tok-b".into(),
            blob: vec![1],
            origin_state: Some("v1.k.s".into()),
        };
        let reject = RejectForward {
            envelope: envelope(),
            answering_provider: "b.example".into(),
            origin_state: "v1.k.s".into(),
            reason: RejectReason::Declined,
            reason_text: None,
        };
        let accept = AcceptForward {
            envelope: envelope(),
            answering_provider: "b.example".into(),
            origin_state: "v1.k.s".into(),
            callee_uri: "mailto:bob@example.com".into(),
            callee_token: "tok-b".into(),
            callee_blob: vec![3; 30],
            callee_ca: Some(
                rcgen::generate_simple_self_signed(vec!["ca.example".into()])
                    .unwrap()
                    .cert
                    .pem(),
            ),
        };
        for encoding in [Encoding::Plist, Encoding::Json] {
            let wire = |d: Dict| Dict::decode(&d.encode(encoding), encoding).unwrap();
            let read = InitiateForward::from_dict(&wire(initiate().to_dict()), &canon, "a.example");
            assert_eq!(read.unwrap(), initiate());
            let read = CancelForward::from_dict(&wire(cancel.to_dict()), "b.example");
            assert_eq!(read.unwrap(), cancel);
            let read = UpdateForward::from_dict(&wire(update.to_dict()), "b.example");
            assert_eq!(read.unwrap(), update);
            let read = RejectForward::from_dict(&wire(reject.to_dict()), "b.example");
            assert_eq!(read.unwrap(), reject);
            let read = AcceptForward::from_dict(&wire(accept.to_dict()), &canon, "b.example");
            assert_eq!(read.unwrap(), accept);
        }
    }

    #[test]
    fn the_sender_field_is_checked_before_the_other_fields() {
        let canon = Canonicalizer::new(None);
        let dict = initiate().to_dict().with("caller-token", "");
        let err = InitiateForward::from_dict(&dict, &canon, "c.example").unwrap_err();
        assert!(matches!(err, MessageError::WrongSender { .. }), "{err}");
        let err = InitiateForward::from_dict(&dict, &canon, "a.example").unwrap_err();
        assert_eq!(err.field(), Some("caller-token"));
    }

    #[test]
    fn bad_envelopes_and_fields_are_named() {
        let canon = Canonicalizer::new(None);
        let cases: Vec<(Dict, &str)> = vec![
            (
                initiate().to_dict().with("forward-id", "short"),
                "forward-id",
            ),
            (
                initiate()
                    .to_dict()
                    .with("forward-id", "x".repeat(16) + "!"),
                "forward-id",
            ),
            (initiate().to_dict().with("timestamp", "now"), "timestamp"),
            (
                initiate().to_dict().with("origin-state", "x".repeat(8193)),
                "origin-state",
            ),
            (
                initiate().to_dict().with("caller-ca", "not a pem"),
                "caller-ca",
            ),
            (
                initiate().to_dict().with("relay-choice", "mine"),
                "relay-choice",
            ),
            (
                initiate().to_dict().with("attestation-level", "D"),
                "attestation-level",
            ),
            (
                InitiateForward {
                    attestation: None,
                    ..initiate()
                }
                .to_dict()
                .with("attestation-level", "A"),
                "attestation",
            ),
            (
                InitiateForward {
                    attestation: None,
                    ..initiate()
                }
                .to_dict()
                .with("attestation", vec![1u8]),
                "attestation-level",
            ),
            (
                initiate().to_dict().with(
                    "caller-capabilities",
                    Dict::new().with("audio-codecs", vec!["a b".to_string()]),
                ),
                "caller-capabilities",
            ),
        ];
        for (dict, field) in cases {
            let err = InitiateForward::from_dict(&dict, &canon, "a.example").unwrap_err();
            assert_eq!(err.field(), Some(field), "{err}");
        }
        let cancel = Dict::new()
            .with("session-id", "session-0001")
            .with("timestamp", 1i64)
            .with("forward-id", "f".repeat(22))
            .with("from-provider", "b")
            .with("reason", "timeout");
        assert_eq!(
            CancelForward::from_dict(&cancel, "b").unwrap_err().field(),
            Some("reason")
        );
    }

    #[test]
    fn each_action_has_its_own_path_under_federation_v1() {
        let actions = [
            ForwardAction::Initiate,
            ForwardAction::Accept,
            ForwardAction::Reject,
            ForwardAction::Cancel,
            ForwardAction::Update,
        ];
        let names: Vec<&str> = actions.iter().map(|a| a.as_str()).collect();
        assert_eq!(names, ["initiate", "accept", "reject", "cancel", "update"]);
        for action in actions {
            assert_eq!(action.path(), format!("/federation/v1/{}", action.as_str()));
        }
    }

    #[test]
    fn the_answers_carry_the_session_and_their_counts() {
        let id = envelope().session_id;
        let reject = RejectAnswer {
            session_id: id.clone(),
            remaining: 2,
        }
        .to_dict();
        assert_eq!(reject.str("session-id").unwrap(), "session-0001");
        assert_eq!(reject.int("remaining").unwrap(), 2);
        assert_eq!(reject.len(), 2);
        let update = UpdateAnswer {
            session_id: id.clone(),
            delivered: 3,
        }
        .to_dict();
        assert_eq!(update.str("session-id").unwrap(), "session-0001");
        assert_eq!(update.int("delivered").unwrap(), 3);
        assert_eq!(update.len(), 2);

        let refused = InitiateAnswer {
            answering_provider: "b.example".into(),
            rung: 0,
            refusal: Some((RejectReason::Busy, Some("on another call".into()))),
        };
        let rang = InitiateAnswer {
            answering_provider: "b.example".into(),
            rung: 2,
            refusal: None,
        };
        for answer in [refused, rang] {
            let dict = answer.to_dict(&id);
            assert_eq!(dict.str("session-id").unwrap(), "session-0001");
            assert_eq!(InitiateAnswer::from_dict(&dict).unwrap(), answer);
        }
    }

    #[test]
    fn an_initiate_answer_with_an_unknown_reason_counts_as_unavailable() {
        let answer = Dict::new()
            .with("session-id", "session-0001")
            .with("rung", 0i64)
            .with("reason", "sleeping");
        let read = InitiateAnswer::from_dict(&answer).unwrap();
        assert_eq!(read.refusal, Some((RejectReason::Unavailable, None)));
        assert!(
            InitiateAnswer::from_dict(&Dict::new().with("session-id", "session-0001")).is_err()
        );
    }
}
