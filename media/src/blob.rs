//! The media blob an endpoint publishes as its `self-blob`.
//!
//! Providers carry the blob opaquely between the two endpoints of a call; it holds what
//! the peer needs to run ICE connectivity checks (the `ice` module) and to authenticate the
//! DTLS handshake that follows: ICE credentials, the DTLS certificate fingerprint and the
//! candidates. It is an XML property list (see [`MediaBlob::to_bytes`]).

use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU8;
use std::str::FromStr;

use rand::Rng;
use switchyard_protocol::dict::{Dict, DictError, Encoding, Value};

/// The blob format this code writes and the only one it reads.
pub const BLOB_VERSION: i64 = 1;

/// At most this many candidates per blob, so a hostile peer cannot make us check
/// thousands of pairs.
pub const MAX_CANDIDATES: usize = 32;

/// The component every Switchyard candidate belongs to: RTP and RTCP are multiplexed on
/// one socket (RFC 5761), so there is only component 1.
pub const COMPONENT_RTP: NonZeroU8 = NonZeroU8::MIN;

/// The media description of one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaBlob {
    pub ice_ufrag: String,
    pub ice_pwd: String,
    /// SHA-256 of the endpoint's DTLS certificate (DER), 64 lowercase hex digits.
    pub fingerprint: String,
    pub candidates: Vec<Candidate>,
    /// The same media as a session description with ICE and DTLS-SRTP attributes (RFC 8839,
    /// RFC 5763), for a peer that speaks SDP instead: a SIP phone behind the provider's SIP edge.
    /// The caller's is an offer, a callee's the answer to such a peer's offer.
    pub sdp: Option<String>,
}

/// What the other side of a call sent as its blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerMedia {
    /// A Switchyard endpoint's blob.
    Endpoint(MediaBlob),
    /// Only a session description (`{sdp = "v=0…"}`): a SIP phone, through the SIP edge.
    Sdp(String),
}

impl PeerMedia {
    /// Reads a peer's blob: a native blob when it has a `version`, else an SDP blob.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, BlobError> {
        let dict = Dict::decode(bytes, Encoding::Plist)?;
        if dict.get("version").is_none() {
            if let Some(sdp) = dict.opt_str("sdp")? {
                if sdp.len() > MAX_SDP {
                    return Err(invalid("sdp", "longer than 15 KiB"));
                }
                return Ok(PeerMedia::Sdp(sdp.to_owned()));
            }
        }
        MediaBlob::from_dict(&dict).map(PeerMedia::Endpoint)
    }
}

/// The longest session description a blob carries (the blob itself is limited to 16 KiB).
pub const MAX_SDP: usize = 15 * 1024;

/// An ICE candidate (RFC 8445 §5.1), for the single UDP component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub foundation: String,
    pub priority: u32,
    pub address: SocketAddr,
    pub kind: CandidateKind,
    /// The base of a reflexive candidate or the mapped address of a relayed one.
    pub related: Option<SocketAddr>,
}

/// Candidate types, with their names in the blob (the SDP `typ` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CandidateKind {
    Host,
    ServerReflexive,
    /// Learned from a connectivity check (RFC 8445 §7.2.5.3.1); agents may list it again
    /// in a later blob.
    PeerReflexive,
    Relayed,
}

impl CandidateKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Host => "host",
            Self::ServerReflexive => "srflx",
            Self::PeerReflexive => "prflx",
            Self::Relayed => "relay",
        }
    }

    /// The RFC 8445 §5.1.2.2 recommended type preference.
    pub fn type_preference(self) -> u8 {
        match self {
            Self::Host => 126,
            Self::PeerReflexive => 110,
            Self::ServerReflexive => 100,
            Self::Relayed => 0,
        }
    }
}

impl fmt::Display for CandidateKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CandidateKind {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "host" => Ok(Self::Host),
            "srflx" => Ok(Self::ServerReflexive),
            "prflx" => Ok(Self::PeerReflexive),
            "relay" => Ok(Self::Relayed),
            _ => Err(()),
        }
    }
}

/// A candidate priority per RFC 8445 §5.1.2.1:
/// `2^24 * type preference + 2^8 * local preference + (256 - component)`.
pub fn priority(kind: CandidateKind, local_preference: u16, component: NonZeroU8) -> u32 {
    (u32::from(kind.type_preference()) << 24)
        + (u32::from(local_preference) << 8)
        + (256 - u32::from(component.get()))
}

/// ICE credentials of one agent (RFC 8445 §5.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub ufrag: String,
    pub pwd: String,
}

/// The characters RFC 8445 §5.3 allows in a ufrag or password (`ice-char`).
const ICE_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

impl Credentials {
    /// Fresh random credentials: an 8-character ufrag (48 bits) and a 24-character
    /// password (144 bits), above RFC 8445's 24 and 128 bit minimums.
    pub fn random() -> Self {
        let mut rng = rand::rng();
        let mut text = |len: usize| -> String {
            (0..len)
                .map(|_| char::from(ICE_CHARS[rng.random_range(0..ICE_CHARS.len())]))
                .collect()
        };
        Self {
            ufrag: text(8),
            pwd: text(24),
        }
    }
}

/// Why a blob was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum BlobError {
    /// Not a property list, or a field missing or of the wrong type.
    #[error(transparent)]
    Dict(#[from] DictError),
    #[error("unsupported media blob version {0}")]
    Version(i64),
    /// `field` is the key, or `candidates[i].key` for a candidate's field.
    #[error("field `{field}`: {reason}")]
    Invalid { field: String, reason: &'static str },
}

impl BlobError {
    /// The field the error is about, if any.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::Dict(e) => e.field(),
            Self::Version(_) => Some("version"),
            Self::Invalid { field, .. } => Some(field),
        }
    }
}

fn invalid(field: impl Into<String>, reason: &'static str) -> BlobError {
    BlobError::Invalid {
        field: field.into(),
        reason,
    }
}

impl MediaBlob {
    /// The blob's ICE credentials, as the ICE agent (`IceAgent`) takes them.
    pub fn credentials(&self) -> Credentials {
        Credentials {
            ufrag: self.ice_ufrag.clone(),
            pwd: self.ice_pwd.clone(),
        }
    }

    /// Encodes as an XML property list:
    /// `version` (1), `ice-ufrag`, `ice-pwd`, `fingerprint` and `candidates`, an array of
    /// dictionaries with `foundation`, `priority`, `address` (`ip:port`, IPv6 in
    /// brackets), `type` (`host`, `srflx`, `prflx` or `relay`) and, when known,
    /// `related`; then `sdp` when there is one.
    pub fn to_bytes(&self) -> Vec<u8> {
        let candidates: Vec<Value> = self
            .candidates
            .iter()
            .map(|c| {
                let mut d = Dict::new()
                    .with("foundation", c.foundation.as_str())
                    .with("priority", i64::from(c.priority))
                    .with("address", c.address.to_string())
                    .with("type", c.kind.as_str());
                if let Some(related) = c.related {
                    d.insert("related", related.to_string());
                }
                Value::Dict(d)
            })
            .collect();
        let mut dict = Dict::new()
            .with("version", BLOB_VERSION)
            .with("ice-ufrag", self.ice_ufrag.as_str())
            .with("ice-pwd", self.ice_pwd.as_str())
            .with("fingerprint", self.fingerprint.as_str())
            .with("candidates", candidates);
        if let Some(sdp) = &self.sdp {
            dict.insert("sdp", sdp.as_str());
        }
        dict.encode(Encoding::Plist)
    }

    /// Decodes and validates a blob; unknown keys are ignored so later versions can add
    /// optional fields.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, BlobError> {
        Self::from_dict(&Dict::decode(bytes, Encoding::Plist)?)
    }

    fn from_dict(dict: &Dict) -> Result<Self, BlobError> {
        let version = dict.int("version")?;
        if version != BLOB_VERSION {
            return Err(BlobError::Version(version));
        }
        let ice_ufrag = dict.str("ice-ufrag")?;
        check_ice_chars(
            "ice-ufrag",
            ice_ufrag,
            4..=256,
            "must be 4 to 256 characters",
        )?;
        let ice_pwd = dict.str("ice-pwd")?;
        check_ice_chars("ice-pwd", ice_pwd, 22..=256, "must be 22 to 256 characters")?;
        let fingerprint = dict.str("fingerprint")?;
        if fingerprint.len() != 64
            || !fingerprint
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(invalid("fingerprint", "must be 64 lowercase hex digits"));
        }
        let items = dict.array("candidates")?;
        if items.len() > MAX_CANDIDATES {
            return Err(invalid("candidates", "more than 32 candidates"));
        }
        let candidates = items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::Dict(d) => parse_candidate(d, &format!("candidates[{i}]")),
                _ => Err(invalid(format!("candidates[{i}]"), "must be a dictionary")),
            })
            .collect::<Result<_, _>>()?;
        let sdp = dict.opt_str("sdp")?;
        if sdp.is_some_and(|s| s.len() > MAX_SDP) {
            return Err(invalid("sdp", "longer than 15 KiB"));
        }
        Ok(Self {
            ice_ufrag: ice_ufrag.to_owned(),
            ice_pwd: ice_pwd.to_owned(),
            fingerprint: fingerprint.to_owned(),
            candidates,
            sdp: sdp.map(str::to_owned),
        })
    }
}

pub(crate) fn check_ice_chars(
    field: &str,
    value: &str,
    len: std::ops::RangeInclusive<usize>,
    len_reason: &'static str,
) -> Result<(), BlobError> {
    if !len.contains(&value.len()) {
        return Err(invalid(field, len_reason));
    }
    if !value.bytes().all(|b| ICE_CHARS.contains(&b)) {
        return Err(invalid(field, "allows only letters, digits, `+` and `/`"));
    }
    Ok(())
}

fn parse_candidate(d: &Dict, path: &str) -> Result<Candidate, BlobError> {
    let field = |key: &str| format!("{path}.{key}");
    // Re-label the dictionary's own errors so they name the candidate, not just the key.
    let relabel = |e: DictError, key: &str| match e {
        DictError::MissingField(_) => BlobError::Dict(DictError::MissingField(field(key))),
        DictError::WrongType { expected, .. } => BlobError::Dict(DictError::WrongType {
            field: field(key),
            expected,
        }),
        other => BlobError::Dict(other),
    };

    let foundation = d.str("foundation").map_err(|e| relabel(e, "foundation"))?;
    if foundation.is_empty()
        || foundation.len() > 32
        || !foundation.bytes().all(|b| ICE_CHARS.contains(&b))
    {
        return Err(invalid(
            field("foundation"),
            "must be 1 to 32 letters, digits, `+` or `/`",
        ));
    }
    let priority = d.int("priority").map_err(|e| relabel(e, "priority"))?;
    // RFC 8445 §5.1.2: a positive 31-bit integer.
    let priority = u32::try_from(priority)
        .ok()
        .filter(|p| (1..=0x7fff_ffff).contains(p))
        .ok_or_else(|| invalid(field("priority"), "must be between 1 and 2^31 - 1"))?;
    let address = d.str("address").map_err(|e| relabel(e, "address"))?;
    let address = parse_address(address)
        .ok_or_else(|| invalid(field("address"), "must be `ip:port` with a non-zero port"))?;
    let kind = d.str("type").map_err(|e| relabel(e, "type"))?;
    let kind = kind
        .parse()
        .map_err(|()| invalid(field("type"), "must be host, srflx, prflx or relay"))?;
    let related = d
        .opt_str("related")
        .map_err(|e| relabel(e, "related"))?
        .map(|r| {
            parse_address(r)
                .ok_or_else(|| invalid(field("related"), "must be `ip:port` with a non-zero port"))
        })
        .transpose()?;
    Ok(Candidate {
        foundation: foundation.to_owned(),
        priority,
        address,
        kind,
        related,
    })
}

fn parse_address(text: &str) -> Option<SocketAddr> {
    text.parse::<SocketAddr>().ok().filter(|a| a.port() != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> MediaBlob {
        MediaBlob {
            ice_ufrag: "aB3+".into(),
            ice_pwd: "asd88fgpdd777uzjYhagZg".into(),
            fingerprint: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".into(),
            candidates: vec![
                Candidate {
                    foundation: "1".into(),
                    priority: priority(CandidateKind::Host, 65535, COMPONENT_RTP),
                    address: "192.0.2.10:50000".parse().unwrap(),
                    kind: CandidateKind::Host,
                    related: None,
                },
                Candidate {
                    foundation: "2".into(),
                    priority: priority(CandidateKind::ServerReflexive, 65535, COMPONENT_RTP),
                    address: "198.51.100.7:61000".parse().unwrap(),
                    kind: CandidateKind::ServerReflexive,
                    related: Some("192.0.2.10:50000".parse().unwrap()),
                },
                Candidate {
                    foundation: "3".into(),
                    priority: priority(CandidateKind::Relayed, 65535, COMPONENT_RTP),
                    address: "[2001:db8::1]:3478".parse().unwrap(),
                    kind: CandidateKind::Relayed,
                    related: Some("[2001:db8::2]:40000".parse().unwrap()),
                },
            ],
            sdp: None,
        }
    }

    /// A change made to a valid blob's dictionary to make it invalid.
    type Edit = Box<dyn FnOnce(&mut Dict)>;

    /// The sample re-encoded after `edit` changed its dictionary.
    fn edited(edit: impl FnOnce(&mut Dict)) -> Vec<u8> {
        let mut dict = Dict::decode(&sample().to_bytes(), Encoding::Plist).unwrap();
        edit(&mut dict);
        dict.encode(Encoding::Plist)
    }

    /// The sample with the first candidate's dictionary changed by `edit`.
    fn edited_candidate(edit: impl FnOnce(&mut Dict)) -> Vec<u8> {
        edited(|d| {
            let mut items = d.array("candidates").unwrap().to_vec();
            let Value::Dict(first) = &mut items[0] else {
                unreachable!()
            };
            edit(first);
            d.insert("candidates", items);
        })
    }

    fn refused_field(bytes: &[u8]) -> String {
        MediaBlob::from_bytes(bytes)
            .expect_err("blob should be refused")
            .field()
            .expect("error should name a field")
            .to_owned()
    }

    #[test]
    fn round_trip() {
        let blob = sample();
        let bytes = blob.to_bytes();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.contains("<key>ice-ufrag</key>"), "{text}");
        assert!(
            text.contains("<string>[2001:db8::1]:3478</string>"),
            "{text}"
        );
        assert!(text.contains("<string>srflx</string>"), "{text}");
        assert_eq!(MediaBlob::from_bytes(&bytes).unwrap(), blob);
    }

    #[test]
    fn priorities_follow_rfc_8445() {
        assert_eq!(
            priority(CandidateKind::Host, 65535, COMPONENT_RTP),
            (126 << 24) + (65535 << 8) + 255
        );
        assert_eq!(
            priority(CandidateKind::ServerReflexive, 10, COMPONENT_RTP),
            (100 << 24) + (10 << 8) + 255
        );
        assert_eq!(
            priority(CandidateKind::Relayed, 0, NonZeroU8::new(2).unwrap()),
            254
        );
        assert!(
            priority(CandidateKind::Relayed, 65535, COMPONENT_RTP)
                < priority(CandidateKind::ServerReflexive, 0, COMPONENT_RTP)
        );
    }

    #[test]
    fn random_credentials_are_valid_and_distinct() {
        let a = Credentials::random();
        let b = Credentials::random();
        assert_ne!(a, b);
        let blob = MediaBlob {
            ice_ufrag: a.ufrag.clone(),
            ice_pwd: a.pwd.clone(),
            ..sample()
        };
        let back = MediaBlob::from_bytes(&blob.to_bytes()).unwrap();
        assert_eq!(back.credentials(), a);
    }

    #[test]
    fn refuses_bad_top_level_fields() {
        assert!(matches!(
            MediaBlob::from_bytes(b"not a plist"),
            Err(BlobError::Dict(DictError::Malformed { .. }))
        ));
        assert_eq!(
            MediaBlob::from_bytes(&edited(|d| d.insert("version", 2i64))),
            Err(BlobError::Version(2))
        );
        let cases: Vec<(&str, Edit)> = vec![
            ("version", Box::new(|d| *d = sample_without(d, "version"))),
            ("ice-ufrag", Box::new(|d| d.insert("ice-ufrag", "abc"))),
            ("ice-ufrag", Box::new(|d| d.insert("ice-ufrag", "abc:d"))),
            (
                "ice-ufrag",
                Box::new(|d| d.insert("ice-ufrag", "a".repeat(257))),
            ),
            ("ice-pwd", Box::new(|d| d.insert("ice-pwd", "tooshort"))),
            (
                "ice-pwd",
                Box::new(|d| d.insert("ice-pwd", "x".repeat(21) + " ")),
            ),
            ("ice-pwd", Box::new(|d| d.insert("ice-pwd", 5i64))),
            ("fingerprint", Box::new(|d| d.insert("fingerprint", "ab"))),
            (
                "fingerprint",
                Box::new(|d| d.insert("fingerprint", "0123456789ABCDEF".repeat(4))),
            ),
            (
                "fingerprint",
                Box::new(|d| *d = sample_without(d, "fingerprint")),
            ),
            ("candidates", Box::new(|d| d.insert("candidates", "none"))),
            (
                "candidates",
                Box::new(|d| {
                    let one = d.array("candidates").unwrap()[0].clone();
                    d.insert("candidates", vec![one; MAX_CANDIDATES + 1]);
                }),
            ),
            (
                "candidates[1]",
                Box::new(|d| {
                    let mut items = d.array("candidates").unwrap().to_vec();
                    items[1] = Value::String("x".into());
                    d.insert("candidates", items);
                }),
            ),
        ];
        for (field, edit) in cases {
            assert_eq!(refused_field(&edited(edit)), field);
        }
    }

    fn sample_without(d: &Dict, key: &str) -> Dict {
        d.iter()
            .filter(|(k, _)| *k != key)
            .fold(Dict::new(), |acc, (k, v)| acc.with(k, v.clone()))
    }

    #[test]
    fn refuses_bad_candidate_fields() {
        let cases: Vec<(&str, Edit)> = vec![
            ("foundation", Box::new(|c| c.insert("foundation", ""))),
            (
                "foundation",
                Box::new(|c| c.insert("foundation", "a".repeat(33))),
            ),
            ("foundation", Box::new(|c| c.insert("foundation", "a b"))),
            (
                "foundation",
                Box::new(|c| *c = sample_without(c, "foundation")),
            ),
            ("priority", Box::new(|c| c.insert("priority", 0i64))),
            ("priority", Box::new(|c| c.insert("priority", 1i64 << 31))),
            ("priority", Box::new(|c| c.insert("priority", -5i64))),
            ("priority", Box::new(|c| c.insert("priority", "high"))),
            ("address", Box::new(|c| c.insert("address", "192.0.2.1"))),
            ("address", Box::new(|c| c.insert("address", "192.0.2.1:0"))),
            (
                "address",
                Box::new(|c| c.insert("address", "host.example:5000")),
            ),
            (
                "address",
                Box::new(|c| c.insert("address", "2001:db8::1:5000")),
            ),
            ("address", Box::new(|c| *c = sample_without(c, "address"))),
            ("type", Box::new(|c| c.insert("type", "stun"))),
            ("type", Box::new(|c| c.insert("type", true))),
            ("related", Box::new(|c| c.insert("related", "nowhere"))),
            ("related", Box::new(|c| c.insert("related", 1i64))),
        ];
        for (key, edit) in cases {
            assert_eq!(
                refused_field(&edited_candidate(edit)),
                format!("candidates[0].{key}")
            );
        }
    }

    #[test]
    fn an_sdp_travels_with_the_blob_and_an_sdp_only_blob_is_an_sdp_peer() {
        let blob = MediaBlob {
            sdp: Some("v=0\r\n".into()),
            ..sample()
        };
        let bytes = blob.to_bytes();
        assert_eq!(MediaBlob::from_bytes(&bytes).unwrap(), blob);
        assert_eq!(
            PeerMedia::from_bytes(&bytes).unwrap(),
            PeerMedia::Endpoint(blob)
        );
        let phone = Dict::new().with("sdp", "v=0\r\n").encode(Encoding::Plist);
        assert_eq!(
            PeerMedia::from_bytes(&phone).unwrap(),
            PeerMedia::Sdp("v=0\r\n".into())
        );
        let huge = Dict::new()
            .with("sdp", "a".repeat(MAX_SDP + 1))
            .encode(Encoding::Plist);
        assert_eq!(
            PeerMedia::from_bytes(&huge).unwrap_err().field(),
            Some("sdp")
        );
        // Neither a native blob nor an SDP: the native reading's error names what is missing.
        let neither = Dict::new().with("other", 1i64).encode(Encoding::Plist);
        assert!(PeerMedia::from_bytes(&neither).is_err());
    }
}
