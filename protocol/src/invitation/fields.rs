//! Field readers shared by every invitation message, and the error they report.

use std::fmt;

use crate::capabilities::{Capabilities, CapabilityError, MediaKind};
use crate::dict::{Dict, DictError, Value};
use crate::uri::Canonicalizer;

/// The largest opaque blob (media connection data) a message may carry.
pub const MAX_BLOB: usize = 16 * 1024;
/// The largest `reason-text`.
pub const MAX_REASON_TEXT: usize = 512;
/// The largest push token a Forward may name.
pub const MAX_TOKEN: usize = 256;
/// The largest `origin-state` a Forward may carry.
pub const MAX_STATE: usize = 8 * 1024;
/// The largest endpoint CA certificate (PEM) a Forward may carry.
pub const MAX_CA_PEM: usize = 8 * 1024;

/// Why a message was refused as read: the dictionary's own errors (missing key, wrong type,
/// undecodable body), or a field whose value breaks the protocol's rules.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MessageError {
    #[error(transparent)]
    Dict(#[from] DictError),
    #[error("{message}")]
    Invalid { field: String, message: String },
    /// A Forward's own provider field names another provider than the one that sent it.
    #[error("`{field}` is `{claimed}`, but the request comes from `{sender}`")]
    WrongSender {
        field: String,
        claimed: String,
        sender: String,
    },
}

impl MessageError {
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        MessageError::Invalid {
            field: field.to_string(),
            message: message.into(),
        }
    }

    /// The field at fault, when one is.
    pub fn field(&self) -> Option<&str> {
        match self {
            MessageError::Dict(e) => e.field(),
            MessageError::Invalid { field, .. } | MessageError::WrongSender { field, .. } => {
                Some(field)
            }
        }
    }
}

/// A call's session id: 8-128 of `A-Z a-z 0-9 - _ .`, chosen by the caller.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(String);

impl SessionId {
    pub fn parse(id: &str) -> Result<SessionId, MessageError> {
        let ok = (8..=128).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if ok {
            Ok(SessionId(id.to_string()))
        } else {
            Err(MessageError::invalid(
                "session-id",
                "session-id must be 8-128 characters of letters, digits, `-`, `_` and `.`",
            ))
        }
    }

    pub fn from_dict(dict: &Dict) -> Result<SessionId, MessageError> {
        SessionId::parse(dict.str("session-id")?)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A URI field, canonicalized with the reader's rules.
pub(crate) fn canonical(
    dict: &Dict,
    field: &str,
    canonicalizer: &Canonicalizer,
) -> Result<String, MessageError> {
    canonicalizer
        .canonicalize(dict.str(field)?)
        .map(|u| u.into_string())
        .map_err(|e| MessageError::invalid(field, format!("`{field}`: {e}")))
}

/// An optional blob, empty when absent, at most [`MAX_BLOB`] bytes.
pub(crate) fn blob(dict: &Dict, field: &str) -> Result<Vec<u8>, MessageError> {
    let blob = dict.opt_data(field)?.unwrap_or_default();
    if blob.len() > MAX_BLOB {
        return Err(MessageError::invalid(
            field,
            format!("`{field}` exceeds {MAX_BLOB} bytes"),
        ));
    }
    Ok(blob)
}

/// A required string of 1 to `max` bytes.
pub(crate) fn bounded(dict: &Dict, field: &str, max: usize) -> Result<String, MessageError> {
    let value = dict.str(field)?;
    if value.is_empty() || value.len() > max {
        return Err(MessageError::invalid(
            field,
            format!("`{field}` must be 1-{max} bytes"),
        ));
    }
    Ok(value.to_string())
}

/// An optional `reason-text`, at most [`MAX_REASON_TEXT`] bytes.
pub(crate) fn reason_text(dict: &Dict) -> Result<Option<String>, MessageError> {
    let text = dict.opt_str("reason-text")?;
    if text.is_some_and(|t| t.len() > MAX_REASON_TEXT) {
        return Err(MessageError::invalid(
            "reason-text",
            format!("reason-text exceeds {MAX_REASON_TEXT} bytes"),
        ));
    }
    Ok(text.map(str::to_string))
}

/// An optional PEM endpoint CA certificate: what the other endpoint checks this side's DTLS
/// identity certificate against.
pub(crate) fn ca_pem(dict: &Dict, field: &str) -> Result<Option<String>, MessageError> {
    let Some(pem) = dict.opt_str(field)? else {
        return Ok(None);
    };
    if pem.len() > MAX_CA_PEM {
        return Err(MessageError::invalid(
            field,
            format!("`{field}` exceeds {MAX_CA_PEM} bytes"),
        ));
    }
    crate::pki::certs_from_pem(pem)
        .map_err(|e| MessageError::invalid(field, format!("`{field}`: {e}")))?;
    Ok(Some(pem.to_string()))
}

/// `media`: the kinds of media asked for, audio alone when absent, never empty, no repeats.
pub(crate) fn media(dict: &Dict) -> Result<Vec<MediaKind>, MessageError> {
    match dict.opt_string_array("media")? {
        None => Ok(vec![MediaKind::Audio]),
        Some(list) if list.is_empty() => {
            Err(MessageError::invalid("media", "media must not be empty"))
        }
        Some(list) => {
            let mut kinds = Vec::new();
            for item in list {
                let kind: MediaKind = item
                    .parse()
                    .map_err(|e: CapabilityError| MessageError::invalid("media", e.to_string()))?;
                if !kinds.contains(&kind) {
                    kinds.push(kind);
                }
            }
            Ok(kinds)
        }
    }
}

pub(crate) fn media_value(media: &[MediaKind]) -> Value {
    Value::Array(media.iter().map(|m| Value::from(m.as_str())).collect())
}

/// The capabilities dictionary (as in registration), defaults for what it leaves out.
pub(crate) fn capabilities(
    dict: &Dict,
    field: &str,
    check: bool,
) -> Result<Capabilities, MessageError> {
    let caps = Capabilities::from_dict(dict.opt_dict(field)?)?;
    if check {
        caps.validate()
            .map_err(|e| MessageError::invalid(field, e.to_string()))?;
    }
    Ok(caps)
}

pub(crate) fn insert_opt(dict: &mut Dict, key: &str, value: Option<&str>) {
    if let Some(value) = value {
        dict.insert(key, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(result: Result<impl fmt::Debug, MessageError>) -> Option<String> {
        result.err().and_then(|e| e.field().map(str::to_string))
    }

    #[test]
    fn a_blob_may_be_16_kib_and_no_more() {
        let at_limit = Dict::new().with("b", vec![0u8; 16 * 1024]);
        assert_eq!(blob(&at_limit, "b").unwrap().len(), 16_384);
        let over = Dict::new().with("b", vec![0u8; 16 * 1024 + 1]);
        assert_eq!(field_of(blob(&over, "b")), Some("b".into()));
        assert!(blob(&Dict::new(), "b").unwrap().is_empty());
    }

    #[test]
    fn a_bounded_string_is_one_to_max_bytes() {
        for (max, limit) in [(MAX_TOKEN, 256), (MAX_STATE, 8192)] {
            let at_limit = Dict::new().with("s", "x".repeat(limit));
            assert_eq!(bounded(&at_limit, "s", max).unwrap().len(), limit);
            let over = Dict::new().with("s", "x".repeat(limit + 1));
            let err = bounded(&over, "s", max).unwrap_err();
            assert_eq!(err.to_string(), format!("`s` must be 1-{limit} bytes"));
        }
        assert_eq!(
            field_of(bounded(&Dict::new().with("s", ""), "s", MAX_TOKEN)),
            Some("s".into())
        );
    }

    #[test]
    fn a_reason_text_may_be_512_bytes_and_no_more() {
        let at_limit = Dict::new().with("reason-text", "x".repeat(512));
        assert_eq!(reason_text(&at_limit).unwrap().unwrap().len(), 512);
        let over = Dict::new().with("reason-text", "x".repeat(513));
        assert_eq!(field_of(reason_text(&over)), Some("reason-text".into()));
        assert_eq!(reason_text(&Dict::new()).unwrap(), None);
    }

    #[test]
    fn a_ca_certificate_may_be_8_kib_of_pem_and_must_parse() {
        let cert = rcgen::generate_simple_self_signed(vec!["ca.example".into()])
            .unwrap()
            .cert
            .pem();
        // Trailing newlines are still a valid PEM: padded to exactly the limit, then one over.
        let padded = |len: usize| format!("{cert}{}", "\n".repeat(len - cert.len()));
        let at_limit = Dict::new().with("ca", padded(8 * 1024));
        assert_eq!(ca_pem(&at_limit, "ca").unwrap().unwrap().len(), 8192);
        let over = Dict::new().with("ca", padded(8 * 1024 + 1));
        let err = ca_pem(&over, "ca").unwrap_err();
        assert_eq!(err.to_string(), "`ca` exceeds 8192 bytes");
        let garbage = Dict::new().with("ca", "-----BEGIN CERTIFICATE-----\nAAAA\n");
        assert_eq!(field_of(ca_pem(&garbage, "ca")), Some("ca".into()));
        assert_eq!(ca_pem(&Dict::new(), "ca").unwrap(), None);
    }

    #[test]
    fn a_session_id_displays_as_itself() {
        let id = SessionId::parse("abc-DEF_9.x").unwrap();
        assert_eq!(id.to_string(), "abc-DEF_9.x");
        assert_eq!(id.as_str(), "abc-DEF_9.x");
        assert!(SessionId::parse(&"a".repeat(128)).is_ok());
        assert!(SessionId::parse(&"a".repeat(129)).is_err());
        assert!(SessionId::parse("abcdefg").is_err());
        assert!(SessionId::parse("abcdefg!").is_err());
    }

    #[test]
    fn media_defaults_to_audio_and_drops_repeats() {
        assert_eq!(media(&Dict::new()).unwrap(), vec![MediaKind::Audio]);
        let twice = Dict::new().with(
            "media",
            vec!["video".to_string(), "audio".into(), "video".into()],
        );
        assert_eq!(
            media(&twice).unwrap(),
            vec![MediaKind::Video, MediaKind::Audio]
        );
        let unknown = Dict::new().with("media", vec!["smell".to_string()]);
        assert_eq!(field_of(media(&unknown)), Some("media".into()));
    }
}
