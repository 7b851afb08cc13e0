//! Requests: endpoint → its provider (`POST /v1/initiate`, `accept`, `reject`, `cancel`,
//! `update`). `self-uri` and `self-token` are read here; that they are the authenticated
//! endpoint's is the provider's check, never the message's.

use super::fields::{self, blob, canonical, insert_opt, MessageError, SessionId};
use super::reason::RejectReason;
use crate::capabilities::MediaKind;
use crate::dict::{Dict, Value};
use crate::uri::Canonicalizer;

#[derive(Debug, Clone, PartialEq)]
pub struct InitiateRequest {
    pub session_id: SessionId,
    pub self_uri: String,
    pub self_token: String,
    pub self_blob: Vec<u8>,
    pub peer_uri: String,
    pub media: Vec<MediaKind>,
}

impl InitiateRequest {
    pub fn from_dict(dict: &Dict, canon: &Canonicalizer) -> Result<Self, MessageError> {
        Ok(InitiateRequest {
            session_id: SessionId::from_dict(dict)?,
            self_uri: canonical(dict, "self-uri", canon)?,
            self_token: dict.str("self-token")?.to_string(),
            self_blob: blob(dict, "self-blob")?,
            peer_uri: canonical(dict, "peer-uri", canon)?,
            media: fields::media(dict)?,
        })
    }

    pub fn to_dict(&self) -> Dict {
        Dict::new()
            .with("session-id", self.session_id.as_str())
            .with("self-uri", self.self_uri.as_str())
            .with("self-token", self.self_token.as_str())
            .with("self-blob", self.self_blob.clone())
            .with("peer-uri", self.peer_uri.as_str())
            .with("media", fields::media_value(&self.media))
    }
}

/// The answer to an Initiate Request.
#[derive(Debug, Clone, PartialEq)]
pub struct InitiateResponse {
    pub session_id: SessionId,
    pub state: String,
    pub rung: i64,
    pub ring_deadline: i64,
    /// For a call forwarded to other providers: those whose endpoints ring.
    pub providers: Option<Vec<String>>,
}

impl InitiateResponse {
    pub fn to_dict(&self) -> Dict {
        let dict = Dict::new()
            .with("session-id", self.session_id.as_str())
            .with("state", self.state.as_str())
            .with("rung", self.rung)
            .with("ring-deadline", self.ring_deadline);
        match &self.providers {
            Some(providers) => dict.with(
                "providers",
                Value::Array(providers.iter().map(|p| p.as_str().into()).collect()),
            ),
            None => dict,
        }
    }
}

/// An Accept Request; a Reject Request carries the same fields and its reason.
#[derive(Debug, Clone, PartialEq)]
pub struct AcceptRequest {
    pub session_id: SessionId,
    pub self_uri: String,
    pub self_token: String,
    pub self_blob: Vec<u8>,
    pub peer_uri: String,
    pub peer_token: String,
    pub state: String,
}

impl AcceptRequest {
    pub fn from_dict(dict: &Dict, canon: &Canonicalizer) -> Result<Self, MessageError> {
        let session_id = SessionId::from_dict(dict)?;
        let self_uri = canonical(dict, "self-uri", canon)?;
        let self_token = dict.str("self-token")?.to_string();
        let self_blob = blob(dict, "self-blob")?;
        let peer_uri = canonical(dict, "peer-uri", canon)?;
        let peer_token = dict.str("peer-token")?.to_string();
        blob(dict, "peer-blob")?;
        Ok(AcceptRequest {
            session_id,
            self_uri,
            self_token,
            self_blob,
            peer_uri,
            peer_token,
            state: dict.str("state")?.to_string(),
        })
    }

    pub fn to_dict(&self) -> Dict {
        Dict::new()
            .with("session-id", self.session_id.as_str())
            .with("self-uri", self.self_uri.as_str())
            .with("self-token", self.self_token.as_str())
            .with("self-blob", self.self_blob.clone())
            .with("peer-uri", self.peer_uri.as_str())
            .with("peer-token", self.peer_token.as_str())
            .with("state", self.state.as_str())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RejectRequest {
    pub answer: AcceptRequest,
    pub reason: RejectReason,
    pub reason_text: Option<String>,
}

impl RejectRequest {
    pub fn from_dict(dict: &Dict, canon: &Canonicalizer) -> Result<Self, MessageError> {
        Ok(RejectRequest {
            answer: AcceptRequest::from_dict(dict, canon)?,
            reason: RejectReason::from_field(dict)?,
            reason_text: fields::reason_text(dict)?,
        })
    }

    pub fn to_dict(&self) -> Dict {
        let mut dict = self.answer.to_dict().with("reason", self.reason.as_str());
        insert_opt(&mut dict, "reason-text", self.reason_text.as_deref());
        dict
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct CancelRequest {
    pub session_id: SessionId,
    pub self_uri: String,
    pub self_token: String,
    pub peer_uri: String,
    pub state: String,
}

impl CancelRequest {
    pub fn from_dict(dict: &Dict, canon: &Canonicalizer) -> Result<Self, MessageError> {
        let session_id = SessionId::from_dict(dict)?;
        let self_uri = canonical(dict, "self-uri", canon)?;
        let self_token = dict.str("self-token")?.to_string();
        let peer_uri = canonical(dict, "peer-uri", canon)?;
        // Optional, and unused, but still bounded: every field of a Request is checked.
        dict.opt_str("peer-token")?;
        blob(dict, "self-blob")?;
        blob(dict, "peer-blob")?;
        Ok(CancelRequest {
            session_id,
            self_uri,
            self_token,
            peer_uri,
            state: dict.str("state")?.to_string(),
        })
    }

    pub fn to_dict(&self) -> Dict {
        Dict::new()
            .with("session-id", self.session_id.as_str())
            .with("self-uri", self.self_uri.as_str())
            .with("self-token", self.self_token.as_str())
            .with("peer-uri", self.peer_uri.as_str())
            .with("state", self.state.as_str())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct UpdateRequest {
    pub session_id: SessionId,
    pub self_uri: String,
    pub self_token: String,
    pub peer_uri: String,
    /// The new blob; never empty.
    pub self_blob: Vec<u8>,
    pub state: String,
}

impl UpdateRequest {
    pub fn from_dict(dict: &Dict, canon: &Canonicalizer) -> Result<Self, MessageError> {
        let session_id = SessionId::from_dict(dict)?;
        let self_uri = canonical(dict, "self-uri", canon)?;
        let self_token = dict.str("self-token")?.to_string();
        let peer_uri = canonical(dict, "peer-uri", canon)?;
        let self_blob = blob(dict, "self-blob")?;
        if self_blob.is_empty() {
            return Err(MessageError::invalid(
                "self-blob",
                "an Update needs a new self-blob",
            ));
        }
        Ok(UpdateRequest {
            session_id,
            self_uri,
            self_token,
            peer_uri,
            self_blob,
            state: dict.str("state")?.to_string(),
        })
    }

    pub fn to_dict(&self) -> Dict {
        Dict::new()
            .with("session-id", self.session_id.as_str())
            .with("self-uri", self.self_uri.as_str())
            .with("self-token", self.self_token.as_str())
            .with("peer-uri", self.peer_uri.as_str())
            .with("self-blob", self.self_blob.clone())
            .with("state", self.state.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dict::Encoding;

    fn canon() -> Canonicalizer {
        Canonicalizer::new(Some(1))
    }

    fn accept_dict() -> Dict {
        Dict::new()
            .with("session-id", "session-0001")
            .with("self-uri", "tel:+1 650 253 0000")
            .with("self-token", "tok-b")
            .with("self-blob", vec![1u8, 2, 3])
            .with("peer-uri", "mailto:Alice@Example.COM")
            .with("peer-token", "tok-a")
            .with("state", "v1.k.x")
    }

    #[test]
    fn requests_read_back_what_they_write_in_both_encodings() {
        let accept = AcceptRequest::from_dict(&accept_dict(), &canon()).unwrap();
        assert_eq!(accept.self_uri, "tel:+16502530000");
        assert_eq!(accept.peer_uri, "mailto:Alice@example.com");
        let reject = RejectRequest {
            answer: accept.clone(),
            reason: RejectReason::Busy,
            reason_text: Some("in a meeting".into()),
        };
        let initiate = InitiateRequest {
            session_id: SessionId::parse("session-0002").unwrap(),
            self_uri: "tel:+16502530000".into(),
            self_token: "tok".into(),
            self_blob: vec![9; 40],
            peer_uri: "mailto:bob@example.com".into(),
            media: vec![MediaKind::Audio, MediaKind::Video],
        };
        let cancel = CancelRequest {
            session_id: SessionId::parse("session-0003").unwrap(),
            self_uri: "tel:+16502530000".into(),
            self_token: "tok-a".into(),
            peer_uri: "mailto:bob@example.com".into(),
            state: "v1.k.c".into(),
        };
        let update = UpdateRequest {
            session_id: SessionId::parse("session-0003").unwrap(),
            self_uri: "tel:+16502530000".into(),
            self_token: "tok-a".into(),
            peer_uri: "mailto:bob@example.com".into(),
            self_blob: vec![5; 12],
            state: "v1.k.u".into(),
        };
        for encoding in [Encoding::Plist, Encoding::Json] {
            let wire = |d: Dict| Dict::decode(&d.encode(encoding), encoding).unwrap();
            assert_eq!(
                AcceptRequest::from_dict(&wire(accept.to_dict()), &canon()).unwrap(),
                accept
            );
            assert_eq!(
                RejectRequest::from_dict(&wire(reject.to_dict()), &canon()).unwrap(),
                reject
            );
            assert_eq!(
                InitiateRequest::from_dict(&wire(initiate.to_dict()), &canon()).unwrap(),
                initiate
            );
            assert_eq!(
                CancelRequest::from_dict(&wire(cancel.to_dict()), &canon()).unwrap(),
                cancel
            );
            assert_eq!(
                UpdateRequest::from_dict(&wire(update.to_dict()), &canon()).unwrap(),
                update
            );
        }
    }

    #[test]
    fn an_initiate_response_names_the_providers_only_when_forwarded() {
        let mut response = InitiateResponse {
            session_id: SessionId::parse("session-0004").unwrap(),
            state: "v1.k.i".into(),
            rung: 3,
            ring_deadline: 1_800_000_060_000,
            providers: None,
        };
        let local = response.to_dict();
        assert_eq!(local.str("session-id").unwrap(), "session-0004");
        assert_eq!(local.str("state").unwrap(), "v1.k.i");
        assert_eq!(local.int("rung").unwrap(), 3);
        assert_eq!(local.int("ring-deadline").unwrap(), 1_800_000_060_000);
        assert!(!local.contains_key("providers"));
        response.providers = Some(vec!["b.example".into(), "c.example".into()]);
        assert_eq!(
            response.to_dict().string_array("providers").unwrap(),
            ["b.example", "c.example"]
        );
    }

    #[test]
    fn bad_fields_are_named() {
        let cases: Vec<(Dict, &str)> = vec![
            (accept_dict().with("session-id", "short"), "session-id"),
            (accept_dict().with("self-uri", "sip:x@y"), "self-uri"),
            (
                accept_dict().with("self-blob", vec![0u8; 16 * 1024 + 1]),
                "self-blob",
            ),
            (
                accept_dict().with("peer-blob", vec![0u8; 16 * 1024 + 1]),
                "peer-blob",
            ),
            (accept_dict().with("peer-token", 7i64), "peer-token"),
        ];
        for (dict, field) in cases {
            let err = AcceptRequest::from_dict(&dict, &canon()).unwrap_err();
            assert_eq!(err.field(), Some(field), "{err}");
        }
        let mut no_state = Dict::new();
        for (key, value) in accept_dict().iter().filter(|(k, _)| *k != "state") {
            no_state.insert(key, value.clone());
        }
        let err = AcceptRequest::from_dict(&no_state, &canon()).unwrap_err();
        assert_eq!(
            err,
            MessageError::Dict(crate::dict::DictError::MissingField("state".into()))
        );
        let update = accept_dict().with("self-blob", Vec::<u8>::new());
        assert_eq!(
            UpdateRequest::from_dict(&update, &canon())
                .unwrap_err()
                .field(),
            Some("self-blob")
        );
        let initiate = accept_dict().with("media", Vec::<String>::new());
        assert_eq!(
            InitiateRequest::from_dict(&initiate, &canon())
                .unwrap_err()
                .field(),
            Some("media")
        );
        let reject = accept_dict()
            .with("reason", "busy")
            .with("reason-text", "x".repeat(513));
        assert_eq!(
            RejectRequest::from_dict(&reject, &canon())
                .unwrap_err()
                .field(),
            Some("reason-text")
        );
    }
}
