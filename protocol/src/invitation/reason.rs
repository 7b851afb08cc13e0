//! The enumerations of the invitation protocol: why a callee rejects, why a call is cancelled
//! (in a Push, in a Forward), why a call record ended, and whose relay serves a call.

use serde::{Deserialize, Serialize};

use super::fields::MessageError;
use crate::dict::Dict;

macro_rules! wire_enum {
    ($(#[$meta:meta])* $name:ident, $field:literal, { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            pub fn parse(text: &str) -> Option<$name> {
                match text {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }

            /// Reads the required field, refusing anything not in the enumeration.
            pub fn from_field(dict: &Dict) -> Result<$name, MessageError> {
                let text = dict.str($field)?;
                $name::parse(text).ok_or_else(|| {
                    let names: Vec<&str> = $name::ALL.iter().map(|r| r.as_str()).collect();
                    MessageError::invalid(
                        $field,
                        format!("{} must be one of {}", $field, names.join(", ")),
                    )
                })
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

wire_enum!(
    /// Why a callee endpoint (or a provider for all of its endpoints) rejects a call.
    RejectReason, "reason", {
        Busy = "busy",
        Declined = "declined",
        Unavailable = "unavailable",
        UnsupportedMedia = "unsupported-media",
        NotAuthorized = "not-authorized",
    }
);

wire_enum!(
    /// The `reason` of a Cancel Push.
    CancelReason, "reason", {
        Cancelled = "cancelled",
        AnsweredElsewhere = "answered-elsewhere",
        Timeout = "timeout",
        Ended = "ended",
    }
);

wire_enum!(
    /// The `reason` of a Cancel Forward: a timeout is never forwarded, each provider times its
    /// own record out.
    ForwardCancelReason, "reason", {
        Cancelled = "cancelled",
        AnsweredElsewhere = "answered-elsewhere",
        Ended = "ended",
    }
);

wire_enum!(
    /// Why a call record ended, as the call history shows it (`reason` of a call record): a
    /// rejection's reason, or how a cancel, a hang-up or a dispatch ended it.
    EndReason, "reason", {
        Busy = "busy",
        Declined = "declined",
        Unavailable = "unavailable",
        UnsupportedMedia = "unsupported-media",
        NotAuthorized = "not-authorized",
        Unreachable = "unreachable",
        NotFound = "not-found",
        CallerCancelled = "caller-cancelled",
        CalleeCancelled = "callee-cancelled",
        AnsweredElsewhere = "answered-elsewhere",
        CallerHungUp = "caller-hung-up",
        CalleeHungUp = "callee-hung-up",
        Cancelled = "cancelled",
        Timeout = "timeout",
        MaxDuration = "max-duration",
    }
);

impl From<RejectReason> for EndReason {
    fn from(reason: RejectReason) -> EndReason {
        match reason {
            RejectReason::Busy => EndReason::Busy,
            RejectReason::Declined => EndReason::Declined,
            RejectReason::Unavailable => EndReason::Unavailable,
            RejectReason::UnsupportedMedia => EndReason::UnsupportedMedia,
            RejectReason::NotAuthorized => EndReason::NotAuthorized,
        }
    }
}

impl From<ForwardCancelReason> for CancelReason {
    fn from(reason: ForwardCancelReason) -> CancelReason {
        match reason {
            ForwardCancelReason::Cancelled => CancelReason::Cancelled,
            ForwardCancelReason::AnsweredElsewhere => CancelReason::AnsweredElsewhere,
            ForwardCancelReason::Ended => CancelReason::Ended,
        }
    }
}

/// Whose relay serves a call when no direct path works: the caller's provider chooses
/// (`relay.calls_use`), and the choice travels sealed in the session state and in the Initiate
/// Forward (`relay-choice`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RelayChoice {
    #[default]
    CallerProvider,
    CalleeProvider,
    Federation,
}

impl RelayChoice {
    pub fn as_str(self) -> &'static str {
        match self {
            RelayChoice::CallerProvider => "caller-provider",
            RelayChoice::CalleeProvider => "callee-provider",
            RelayChoice::Federation => "federation",
        }
    }

    /// Reads the optional `relay-choice` of a Forward; absent means the default.
    pub fn from_field(dict: &Dict) -> Result<RelayChoice, MessageError> {
        match dict.opt_str("relay-choice")? {
            None | Some("caller-provider") => Ok(RelayChoice::CallerProvider),
            Some("callee-provider") => Ok(RelayChoice::CalleeProvider),
            Some("federation") => Ok(RelayChoice::Federation),
            Some(other) => Err(MessageError::invalid(
                "relay-choice",
                format!(
                    "relay-choice must be caller-provider, callee-provider or federation, not `{other}`"
                ),
            )),
        }
    }

    /// The provider whose relay serves a call between endpoints of these two providers. A
    /// federation without a federation-wide relay falls back to the caller's provider.
    pub fn provider(
        self,
        caller_provider: &str,
        callee_provider: &str,
        federation_relay: Option<&str>,
    ) -> String {
        match self {
            RelayChoice::CallerProvider => caller_provider.to_string(),
            RelayChoice::CalleeProvider => callee_provider.to_string(),
            RelayChoice::Federation => federation_relay.unwrap_or(caller_provider).to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_reads_back_as_itself_and_nothing_else_reads() {
        for reason in RejectReason::ALL {
            let dict = Dict::new().with("reason", reason.as_str());
            assert_eq!(RejectReason::from_field(&dict).unwrap(), *reason);
        }
        let bad = Dict::new().with("reason", "timeout");
        let err = RejectReason::from_field(&bad).unwrap_err();
        assert_eq!(err.field(), Some("reason"));
        assert_eq!(
            err.to_string(),
            "reason must be one of busy, declined, unavailable, unsupported-media, not-authorized"
        );
        assert!(ForwardCancelReason::parse("timeout").is_none());
        assert_eq!(
            CancelReason::from(ForwardCancelReason::AnsweredElsewhere),
            CancelReason::AnsweredElsewhere
        );
    }

    #[test]
    fn relay_choice_defaults_and_refuses_unknown_values() {
        assert_eq!(
            RelayChoice::from_field(&Dict::new()).unwrap(),
            RelayChoice::CallerProvider
        );
        let bad = Dict::new().with("relay-choice", "mine");
        assert_eq!(
            RelayChoice::from_field(&bad).unwrap_err().field(),
            Some("relay-choice")
        );
        assert_eq!(RelayChoice::Federation.provider("a", "b", None), "a");
        assert_eq!(RelayChoice::Federation.provider("a", "b", Some("r")), "r");
        assert_eq!(
            RelayChoice::CalleeProvider.provider("a", "b", Some("r")),
            "b"
        );
    }
}
