//! Why the protocol refuses a message, as a stable code with a human message and, for a bad
//! field, the field. No transport status here: the daemon maps each code to an HTTP status in
//! one table (`provider/src/wire.rs`), and the SIP edge maps the same codes to SIP.

use std::fmt;

use switchyard_protocol::dict::DictError;
use switchyard_protocol::invitation::MessageError;

use crate::record::CallState;

macro_rules! codes {
    ($($variant:ident = $text:literal),+ $(,)?) => {
        /// The `error` code of a refusal, as the wire carries it.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum RefusalCode {
            $($variant),+
        }

        impl RefusalCode {
            pub const ALL: &'static [RefusalCode] = &[$(RefusalCode::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(RefusalCode::$variant => $text),+
                }
            }

            pub fn parse(text: &str) -> Option<RefusalCode> {
                match text {
                    $($text => Some(RefusalCode::$variant),)+
                    _ => None,
                }
            }
        }
    };
}

codes! {
    InvalidField = "invalid-field",
    MissingField = "missing-field",
    MalformedBody = "malformed-body",
    UnsupportedMediaType = "unsupported-media-type",
    NotAuthorized = "not-authorized",
    ProviderMismatch = "provider-mismatch",
    StaleForward = "stale-forward",
    BadAttestation = "bad-attestation",
    EndpointCaMismatch = "endpoint-ca-mismatch",
    NotYetRinging = "not-yet-ringing",
    UnknownPeer = "unknown-peer",
    UnknownSession = "unknown-session",
    DuplicateSession = "duplicate-session",
    AlreadyAnswered = "already-answered",
    NotAnswered = "not-answered",
    ReplayedForward = "replayed-forward",
    CallEnded = "call-ended",
    OriginRefused = "origin-refused",
    UpdateUndelivered = "update-undelivered",
    PeersUnavailable = "peers-unavailable",
    PeersUnreachable = "peers-unreachable",
    OriginUnreachable = "origin-unreachable",
}

impl RefusalCode {
    /// How a transport classes the refusal (the daemon's HTTP status table agrees, tested
    /// there): what a sender of Forwards tells apart.
    pub fn class(self) -> RefusalClass {
        match self {
            RefusalCode::UnknownPeer | RefusalCode::UnknownSession => RefusalClass::NotFound,
            RefusalCode::DuplicateSession
            | RefusalCode::AlreadyAnswered
            | RefusalCode::NotAnswered
            | RefusalCode::NotYetRinging
            | RefusalCode::ReplayedForward => RefusalClass::Conflict,
            RefusalCode::CallEnded => RefusalClass::Gone,
            _ => RefusalClass::Other,
        }
    }
}

impl fmt::Display for RefusalCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The classes of peer refusal the core tells apart: unknown (404), in conflict (409), gone
/// (410), anything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalClass {
    NotFound,
    Conflict,
    Gone,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Refusal {
    pub code: RefusalCode,
    pub message: String,
    pub field: Option<String>,
}

impl Refusal {
    pub fn new(code: RefusalCode, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
            field: None,
        }
    }

    pub fn field(field: &str, message: impl Into<String>) -> Refusal {
        Refusal {
            code: RefusalCode::InvalidField,
            message: message.into(),
            field: Some(field.to_string()),
        }
    }

    pub fn not_authorized(message: impl Into<String>) -> Refusal {
        Refusal::new(RefusalCode::NotAuthorized, message)
    }

    /// Why a message for a call that is no longer where it expected is refused.
    pub fn call_gone(state: Option<CallState>) -> Refusal {
        match state {
            Some(CallState::Answered) => Refusal::new(
                RefusalCode::AlreadyAnswered,
                "the call was answered by another endpoint",
            ),
            Some(s) => Refusal::new(
                RefusalCode::CallEnded,
                format!("the call has ended ({})", s.as_str()),
            ),
            None => Refusal::new(RefusalCode::UnknownSession, "no such call"),
        }
    }
}

impl From<MessageError> for Refusal {
    fn from(e: MessageError) -> Refusal {
        let code = match &e {
            MessageError::Dict(DictError::MissingField(_)) => RefusalCode::MissingField,
            MessageError::Dict(DictError::Malformed { .. }) => RefusalCode::MalformedBody,
            MessageError::Dict(DictError::UnsupportedMediaType(_)) => {
                RefusalCode::UnsupportedMediaType
            }
            MessageError::Dict(_) | MessageError::Invalid { .. } => RefusalCode::InvalidField,
            MessageError::WrongSender { .. } => RefusalCode::ProviderMismatch,
        };
        let field = match &e {
            MessageError::WrongSender { .. } => None,
            other => other.field().map(str::to_string),
        };
        Refusal {
            code,
            message: e.to_string(),
            field,
        }
    }
}

impl From<DictError> for Refusal {
    fn from(e: DictError) -> Refusal {
        MessageError::from(e).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_read_back_and_message_errors_keep_their_field() {
        for code in RefusalCode::ALL {
            assert_eq!(RefusalCode::parse(code.as_str()), Some(*code));
        }
        let missing = Refusal::from(DictError::MissingField("state".into()));
        assert_eq!(missing.code, RefusalCode::MissingField);
        assert_eq!(missing.field.as_deref(), Some("state"));
        let sender = Refusal::from(MessageError::WrongSender {
            field: "from-provider".into(),
            claimed: "a".into(),
            sender: "b".into(),
        });
        assert_eq!(sender.code, RefusalCode::ProviderMismatch);
        assert_eq!(
            sender.message,
            "`from-provider` is `a`, but the request comes from `b`"
        );
        assert_eq!(
            Refusal::call_gone(Some(CallState::Timeout)).message,
            "the call has ended (timeout)"
        );
    }

    /// The classes an originator tells a peer's refusals apart by, as protocol.md's status table
    /// gives them (404, 409, 410, anything else).
    #[test]
    fn each_code_has_the_class_its_status_says() {
        use RefusalCode::*;
        let classes = [
            (RefusalClass::NotFound, &[UnknownPeer, UnknownSession][..]),
            (
                RefusalClass::Conflict,
                &[
                    DuplicateSession,
                    AlreadyAnswered,
                    NotAnswered,
                    NotYetRinging,
                    ReplayedForward,
                ][..],
            ),
            (RefusalClass::Gone, &[CallEnded][..]),
        ];
        for code in RefusalCode::ALL {
            let expected = classes
                .iter()
                .find(|(_, codes)| codes.contains(code))
                .map_or(RefusalClass::Other, |(class, _)| *class);
            assert_eq!(code.class(), expected, "{code}");
        }
        assert_eq!(NotYetRinging.to_string(), "not-yet-ringing");
        assert_eq!(
            Refusal::new(CallEnded, "the call has ended").to_string(),
            "call-ended: the call has ended"
        );
    }
}
