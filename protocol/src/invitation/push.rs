//! Pushes: provider → endpoint, queued per endpoint and delivered in order (`docs/protocol.md`,
//! "Pushes"). The delivered form also holds `push-id`, which the queue adds.

use super::fields::{self, blob, insert_opt, MessageError, SessionId};
use super::reason::{CancelReason, RejectReason};
use crate::attestation::Level;
use crate::capabilities::{Capabilities, MediaKind};
use crate::dict::Dict;

#[derive(Debug, Clone, PartialEq)]
pub enum Push {
    Initiate(InitiatePush),
    Accept(AcceptPush),
    Reject(RejectPush),
    Cancel(CancelPush),
    Update(UpdatePush),
}

impl Push {
    pub fn session_id(&self) -> &SessionId {
        match self {
            Push::Initiate(p) => &p.session_id,
            Push::Accept(p) => &p.session_id,
            Push::Reject(p) => &p.session_id,
            Push::Cancel(p) => &p.session_id,
            Push::Update(p) => &p.session_id,
        }
    }

    pub fn action(&self) -> &'static str {
        match self {
            Push::Initiate(_) => "initiate",
            Push::Accept(_) => "accept",
            Push::Reject(_) => "reject",
            Push::Cancel(_) => "cancel",
            Push::Update(_) => "update",
        }
    }

    pub fn to_dict(&self) -> Dict {
        let head = Dict::new()
            .with("action", self.action())
            .with("session-id", self.session_id().as_str());
        match self {
            Push::Initiate(p) => p.write(head),
            Push::Accept(p) => p.write(head),
            Push::Reject(p) => p.write(head),
            Push::Cancel(p) => p.write(head),
            Push::Update(p) => p.write(head),
        }
    }

    pub fn from_dict(dict: &Dict) -> Result<Push, MessageError> {
        let session_id = SessionId::from_dict(dict)?;
        let text = |key: &str| -> Result<String, MessageError> { Ok(dict.str(key)?.to_string()) };
        let opt_text = |key: &str| -> Result<Option<String>, MessageError> {
            Ok(dict.opt_str(key)?.map(str::to_string))
        };
        Ok(match dict.str("action")? {
            "initiate" => Push::Initiate(InitiatePush {
                session_id,
                self_uri: text("self-uri")?,
                self_token: text("self-token")?,
                peer_uri: text("peer-uri")?,
                peer_token: text("peer-token")?,
                peer_blob: blob(dict, "peer-blob")?,
                peer_capabilities: fields::capabilities(dict, "peer-capabilities", false)?,
                peer_ca: opt_text("peer-ca")?,
                peer_attestation: match opt_text("peer-attestation")? {
                    None => None,
                    Some(level) => Some(Level::parse(&level).ok_or_else(|| {
                        MessageError::invalid(
                            "peer-attestation",
                            format!("peer-attestation `{level}` is not A, B or C"),
                        )
                    })?),
                },
                peer_provider: opt_text("peer-provider")?,
                relay_provider: text("relay-provider")?,
                media: fields::media(dict)?,
                ring_deadline: dict.int("ring-deadline")?,
                state: text("state")?,
            }),
            "accept" => Push::Accept(AcceptPush {
                session_id,
                self_uri: text("self-uri")?,
                self_token: text("self-token")?,
                peer_uri: text("peer-uri")?,
                peer_token: text("peer-token")?,
                peer_blob: blob(dict, "peer-blob")?,
                state: text("state")?,
                peer_ca: opt_text("peer-ca")?,
                peer_provider: opt_text("peer-provider")?,
                relay_provider: text("relay-provider")?,
            }),
            "reject" => Push::Reject(RejectPush {
                session_id,
                self_uri: text("self-uri")?,
                self_token: text("self-token")?,
                peer_uri: text("peer-uri")?,
                peer_token: opt_text("peer-token")?,
                peer_blob: dict.opt_data("peer-blob")?,
                peer_provider: opt_text("peer-provider")?,
                reason: RejectReason::from_field(dict)?,
                reason_text: opt_text("reason-text")?,
                state: opt_text("state")?,
            }),
            "cancel" => Push::Cancel(CancelPush {
                session_id,
                self_uri: text("self-uri")?,
                peer_uri: text("peer-uri")?,
                reason: CancelReason::from_field(dict)?,
            }),
            "update" => Push::Update(UpdatePush {
                session_id,
                self_uri: text("self-uri")?,
                peer_uri: text("peer-uri")?,
                peer_token: text("peer-token")?,
                peer_blob: blob(dict, "peer-blob")?,
                peer_provider: opt_text("peer-provider")?,
            }),
            other => {
                return Err(MessageError::invalid(
                    "action",
                    format!("unknown push action `{other}`"),
                ))
            }
        })
    }
}

/// To each rung callee endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct InitiatePush {
    pub session_id: SessionId,
    pub self_uri: String,
    pub self_token: String,
    pub peer_uri: String,
    pub peer_token: String,
    pub peer_blob: Vec<u8>,
    pub peer_capabilities: Capabilities,
    /// The caller's provider's endpoint CA (PEM), which issued the caller's DTLS identity.
    pub peer_ca: Option<String>,
    /// How far the caller's provider vouches for the caller, as this provider verified it;
    /// None: not verified at all.
    pub peer_attestation: Option<Level>,
    /// For a call from another provider: that provider.
    pub peer_provider: Option<String>,
    pub relay_provider: String,
    pub media: Vec<MediaKind>,
    pub ring_deadline: i64,
    pub state: String,
}

impl InitiatePush {
    fn write(&self, head: Dict) -> Dict {
        let mut dict = head
            .with("self-uri", self.self_uri.as_str())
            .with("self-token", self.self_token.as_str())
            .with("peer-uri", self.peer_uri.as_str())
            .with("peer-token", self.peer_token.as_str())
            .with("peer-blob", self.peer_blob.clone())
            .with("peer-capabilities", self.peer_capabilities.to_dict());
        insert_opt(&mut dict, "peer-ca", self.peer_ca.as_deref());
        if let Some(level) = self.peer_attestation {
            dict.insert("peer-attestation", level.as_str());
        }
        insert_opt(&mut dict, "peer-provider", self.peer_provider.as_deref());
        dict.with("relay-provider", self.relay_provider.as_str())
            .with("media", fields::media_value(&self.media))
            .with("ring-deadline", self.ring_deadline)
            .with("state", self.state.as_str())
    }
}

/// To the caller's endpoint, when a callee endpoint answered.
#[derive(Debug, Clone, PartialEq)]
pub struct AcceptPush {
    pub session_id: SessionId,
    pub self_uri: String,
    pub self_token: String,
    pub peer_uri: String,
    pub peer_token: String,
    pub peer_blob: Vec<u8>,
    pub state: String,
    pub peer_ca: Option<String>,
    pub peer_provider: Option<String>,
    pub relay_provider: String,
}

impl AcceptPush {
    fn write(&self, head: Dict) -> Dict {
        let mut dict = head
            .with("self-uri", self.self_uri.as_str())
            .with("self-token", self.self_token.as_str())
            .with("peer-uri", self.peer_uri.as_str())
            .with("peer-token", self.peer_token.as_str())
            .with("peer-blob", self.peer_blob.clone())
            .with("state", self.state.as_str());
        insert_opt(&mut dict, "peer-provider", self.peer_provider.as_deref());
        insert_opt(&mut dict, "peer-ca", self.peer_ca.as_deref());
        dict.with("relay-provider", self.relay_provider.as_str())
    }
}

/// To the caller's endpoint, once every party rung has rejected (or none could be rung).
/// What it holds depends on who settled it (`docs/protocol.md`, "Reject"): the last rejecting
/// endpoint's token and blob here, the last rejecting provider for a call forwarded elsewhere,
/// the state when the dispatch itself settled it.
#[derive(Debug, Clone, PartialEq)]
pub struct RejectPush {
    pub session_id: SessionId,
    pub self_uri: String,
    pub self_token: String,
    pub peer_uri: String,
    pub peer_token: Option<String>,
    pub peer_blob: Option<Vec<u8>>,
    pub peer_provider: Option<String>,
    pub reason: RejectReason,
    pub reason_text: Option<String>,
    pub state: Option<String>,
}

impl RejectPush {
    fn write(&self, head: Dict) -> Dict {
        let mut dict = head
            .with("self-uri", self.self_uri.as_str())
            .with("self-token", self.self_token.as_str())
            .with("peer-uri", self.peer_uri.as_str());
        insert_opt(&mut dict, "peer-token", self.peer_token.as_deref());
        if let Some(blob) = &self.peer_blob {
            dict.insert("peer-blob", blob.clone());
        }
        insert_opt(&mut dict, "peer-provider", self.peer_provider.as_deref());
        dict.insert("reason", self.reason.as_str());
        insert_opt(&mut dict, "reason-text", self.reason_text.as_deref());
        insert_opt(&mut dict, "state", self.state.as_deref());
        dict
    }
}

/// To a party whose call ended without its doing: cancelled, answered elsewhere, timed out,
/// hung up by the other side.
#[derive(Debug, Clone, PartialEq)]
pub struct CancelPush {
    pub session_id: SessionId,
    pub self_uri: String,
    pub peer_uri: String,
    pub reason: CancelReason,
}

impl CancelPush {
    fn write(&self, head: Dict) -> Dict {
        head.with("self-uri", self.self_uri.as_str())
            .with("peer-uri", self.peer_uri.as_str())
            .with("reason", self.reason.as_str())
    }
}

/// The other party's new blob.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdatePush {
    pub session_id: SessionId,
    pub self_uri: String,
    pub peer_uri: String,
    pub peer_token: String,
    pub peer_blob: Vec<u8>,
    pub peer_provider: Option<String>,
}

impl UpdatePush {
    fn write(&self, head: Dict) -> Dict {
        let mut dict = head
            .with("self-uri", self.self_uri.as_str())
            .with("peer-uri", self.peer_uri.as_str())
            .with("peer-token", self.peer_token.as_str())
            .with("peer-blob", self.peer_blob.clone());
        insert_opt(&mut dict, "peer-provider", self.peer_provider.as_deref());
        dict
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dict::Encoding;

    fn sid() -> SessionId {
        SessionId::parse("session-0001").unwrap()
    }

    #[test]
    fn every_push_reads_back_what_it_writes_in_both_encodings() {
        let pushes = vec![
            Push::Initiate(InitiatePush {
                session_id: sid(),
                self_uri: "mailto:bob@example.com".into(),
                self_token: "tb".into(),
                peer_uri: "tel:+16502530000".into(),
                peer_token: "ta".into(),
                peer_blob: vec![1, 2],
                peer_capabilities: Capabilities::default(),
                peer_ca: Some("PEM".into()),
                peer_attestation: Some(Level::Partial),
                peer_provider: None,
                relay_provider: "a.example".into(),
                media: vec![MediaKind::Audio, MediaKind::Video],
                ring_deadline: 42,
                state: "v1.k.s".into(),
            }),
            Push::Accept(AcceptPush {
                session_id: sid(),
                self_uri: "tel:+16502530000".into(),
                self_token: "ta".into(),
                peer_uri: "mailto:bob@example.com".into(),
                peer_token: "tb".into(),
                peer_blob: vec![3],
                state: "v1.k.s".into(),
                peer_ca: None,
                peer_provider: Some("b.example".into()),
                relay_provider: "b.example".into(),
            }),
            Push::Reject(RejectPush {
                session_id: sid(),
                self_uri: "tel:+16502530000".into(),
                self_token: "ta".into(),
                peer_uri: "mailto:bob@example.com".into(),
                peer_token: None,
                peer_blob: None,
                peer_provider: Some("b.example".into()),
                reason: RejectReason::Busy,
                reason_text: Some("later".into()),
                state: None,
            }),
            Push::Cancel(CancelPush {
                session_id: sid(),
                self_uri: "mailto:bob@example.com".into(),
                peer_uri: "tel:+16502530000".into(),
                reason: CancelReason::Timeout,
            }),
            Push::Update(UpdatePush {
                session_id: sid(),
                self_uri: "mailto:bob@example.com".into(),
                peer_uri: "tel:+16502530000".into(),
                peer_token: "ta".into(),
                peer_blob: vec![5; 10],
                peer_provider: None,
            }),
        ];
        for push in pushes {
            for encoding in [Encoding::Plist, Encoding::Json] {
                let dict = push.to_dict().with("push-id", 7i64);
                let read = Dict::decode(&dict.encode(encoding), encoding).unwrap();
                assert_eq!(Push::from_dict(&read).unwrap(), push);
            }
        }
    }

    #[test]
    fn the_cancel_push_keeps_its_documented_keys() {
        let push = Push::Cancel(CancelPush {
            session_id: sid(),
            self_uri: "a".into(),
            peer_uri: "b".into(),
            reason: CancelReason::Ended,
        });
        let dict = push.to_dict();
        let keys: Vec<&str> = dict.keys().collect();
        assert_eq!(
            keys,
            ["action", "session-id", "self-uri", "peer-uri", "reason"]
        );
        let bad = push.to_dict().with("action", "ring");
        assert_eq!(Push::from_dict(&bad).unwrap_err().field(), Some("action"));
    }
}
