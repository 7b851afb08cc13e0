//! The call detail record: what each provider keeps per call, and what arbitrates races between
//! replicas (first Accept wins, the last Reject reports, the ring timeout fires once).

/// Where a call is. `Ringing` and `Answered` are live; the others are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallState {
    Ringing,
    Answered,
    Rejected,
    Cancelled,
    Timeout,
    Ended,
}

impl CallState {
    pub const ALL: [CallState; 6] = [
        CallState::Ringing,
        CallState::Answered,
        CallState::Rejected,
        CallState::Cancelled,
        CallState::Timeout,
        CallState::Ended,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CallState::Ringing => "ringing",
            CallState::Answered => "answered",
            CallState::Rejected => "rejected",
            CallState::Cancelled => "cancelled",
            CallState::Timeout => "timeout",
            CallState::Ended => "ended",
        }
    }

    pub fn parse(text: &str) -> Option<CallState> {
        CallState::ALL.into_iter().find(|s| s.as_str() == text)
    }

    pub fn is_final(self) -> bool {
        !matches!(self, CallState::Ringing | CallState::Answered)
    }
}

/// How the provider that holds a call's record names a remote provider that rang or answered.
pub fn provider_party(provider_id: &str) -> String {
    format!("provider:{provider_id}")
}

/// The provider a party names, when it is a remote provider rather than an endpoint here.
pub fn party_provider(party: &str) -> Option<&str> {
    party.strip_prefix("provider:")
}

#[derive(Debug, Clone, PartialEq)]
pub struct CallRecord {
    pub session_id: String,
    pub caller_uri: String,
    pub callee_uri: String,
    /// The caller's endpoint; empty for a call forwarded here, whose caller is elsewhere.
    pub caller_endpoint: String,
    pub rung_endpoints: Vec<String>,
    /// Parties ringing: the endpoints rung here, or the providers an Initiate was forwarded to.
    pub rung_count: i64,
    pub rejections: i64,
    pub media: Vec<String>,
    pub state: CallState,
    pub reason: Option<String>,
    pub answered_by: Option<String>,
    /// The originator first; for a call forwarded here, `[originator, this provider]`.
    pub providers: Vec<String>,
    /// The members whose answer to the Initiate Forward said it rang (the originator's record):
    /// the only ones whose Accept or Cancel Forward counts.
    pub ringing_providers: Vec<String>,
    pub initiated_at: i64,
    pub ring_deadline: i64,
    pub answered_at: Option<i64>,
    pub ended_at: Option<i64>,
}

impl CallRecord {
    /// Whether `provider` forwarded this call here (the record is an answering provider's).
    pub fn forwarded_by(&self, provider: &str) -> bool {
        self.providers.first().map(String::as_str) == Some(provider)
            && self.caller_endpoint.is_empty()
    }

    /// Whether `provider` answered the Initiate forwarded to it as ringing (the record is the
    /// originator's).
    pub fn rang_at(&self, provider: &str) -> bool {
        self.ringing_providers.iter().any(|p| p == provider)
    }

    /// Whether the call was answered by `provider`, a remote provider (the record is the
    /// originator's).
    pub fn answered_by_provider(&self, provider: &str) -> bool {
        self.answered_by.as_deref().and_then(party_provider) == Some(provider)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_read_back_and_only_two_are_live() {
        for state in CallState::ALL {
            assert_eq!(CallState::parse(state.as_str()), Some(state));
        }
        assert_eq!(CallState::parse("ringing "), None);
        let live: Vec<CallState> = CallState::ALL
            .into_iter()
            .filter(|s| !s.is_final())
            .collect();
        assert_eq!(live, [CallState::Ringing, CallState::Answered]);
        assert_eq!(
            party_provider(&provider_party("b.example")),
            Some("b.example")
        );
        assert_eq!(party_provider("endpoint-1"), None);
    }
}
