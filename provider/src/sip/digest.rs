//! HTTP Digest authentication for SIP (RFC 3261 §22, RFC 7616 and RFC 8760): challenges with
//! `qop=auth` in MD5 and SHA-256, and checking of the answers.
//!
//! Nonces are stateless: `base64url(issued-at ‖ salt ‖ HMAC-SHA-256(key, issued-at ‖ salt ‖
//! realm)[..16])`, 8 random bytes of salt making each challenge's nonce its own, so any replica
//! holding the key verifies any other's nonce; one older than the nonce lifetime is
//! answered with a fresh challenge marked `stale=true`. The nonce count (`nc`) of each nonce is
//! remembered by the process that saw it, and a count that does not increase is refused as a
//! replay.
//!
//! Accounts store `HA1` (`H(username:realm:password)`) for both algorithms, never the password.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use md5::{Digest as _, Md5};
use ring::hmac;

/// Nonces remembered for replay checks at most; the oldest go first.
const MAX_TRACKED_NONCES: usize = 100_000;

/// The last count seen of each nonce in use, for replay checks, bounded and forgotten oldest
/// first: every answer costs O(1), however many nonces are live.
#[derive(Default)]
struct NonceCounts {
    last: HashMap<String, u32>,
    /// The nonces of `last` by first use, oldest first: (first use, issued at, nonce).
    order: VecDeque<(u64, u64, String)>,
    /// A nonce forgotten before it expired leaves its issue time here; a nonce issued then or
    /// earlier and not remembered may have been seen, so it is refused as stale, and the client
    /// takes a fresh one.
    forgotten_through: Option<u64>,
}

impl NonceCounts {
    /// Records `count` for `nonce`; refuses one not above the last seen.
    fn count(
        &mut self,
        nonce: &str,
        issued_at: u64,
        count: u32,
        now: u64,
        lifetime: u64,
        cap: usize,
    ) -> Result<(), DigestError> {
        // First used more than a lifetime ago means issued earlier still: stale anyway.
        while self
            .order
            .front()
            .is_some_and(|(seen, _, _)| now.saturating_sub(*seen) > lifetime)
        {
            let (_, _, old) = self.order.pop_front().expect("a front entry");
            self.last.remove(&old);
        }
        if let Some(last) = self.last.get_mut(nonce) {
            if count <= *last {
                return Err(DigestError::Replay);
            }
            *last = count;
            return Ok(());
        }
        if self.forgotten_through.is_some_and(|t| issued_at <= t) {
            return Err(DigestError::Stale);
        }
        if self.last.len() >= cap {
            if let Some((_, issued, old)) = self.order.pop_front() {
                self.last.remove(&old);
                self.forgotten_through = self.forgotten_through.max(Some(issued));
            }
        }
        self.last.insert(nonce.to_string(), count);
        self.order.push_back((now, issued_at, nonce.to_string()));
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Algorithm {
    #[serde(rename = "MD5")]
    Md5,
    #[serde(rename = "SHA-256")]
    Sha256,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha256 => "SHA-256",
        }
    }

    fn parse(value: &str) -> Option<Algorithm> {
        if value.eq_ignore_ascii_case("MD5") {
            Some(Algorithm::Md5)
        } else if value.eq_ignore_ascii_case("SHA-256") {
            Some(Algorithm::Sha256)
        } else {
            None
        }
    }

    pub fn hash(self, input: &str) -> String {
        match self {
            Algorithm::Md5 => hex::encode(Md5::digest(input.as_bytes())),
            Algorithm::Sha256 => hex::encode(ring::digest::digest(
                &ring::digest::SHA256,
                input.as_bytes(),
            )),
        }
    }
}

/// Compares without stopping at the first difference, so timing tells nothing of where it is.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `H(username:realm:password)`.
pub fn ha1(algorithm: Algorithm, username: &str, realm: &str, password: &str) -> String {
    algorithm.hash(&format!("{username}:{realm}:{password}"))
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("the Authorization header is not a Digest credential")]
    NotDigest,
    #[error("the Authorization header is malformed: {0}")]
    Malformed(&'static str),
    #[error("the Authorization header lacks `{0}`")]
    Missing(&'static str),
    #[error("unsupported digest algorithm `{0}`")]
    Algorithm(String),
    #[error("only qop=auth is supported")]
    Qop,
    #[error("the credential is for realm `{0}`")]
    Realm(String),
    #[error("the nonce was not issued here")]
    BadNonce,
    #[error("the nonce has expired")]
    Stale,
    #[error("the nonce count did not increase (a replay)")]
    Replay,
    #[error("the digest-uri `{digest_uri}` is not the Request-URI `{request_uri}`")]
    Uri {
        digest_uri: String,
        request_uri: String,
    },
    #[error("wrong password")]
    Mismatch,
}

/// The parameters of `Authorization: Digest …`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub realm: String,
    pub nonce: String,
    pub uri: String,
    pub response: String,
    pub algorithm: Option<String>,
    pub cnonce: Option<String>,
    pub qop: Option<String>,
    pub nc: Option<String>,
}

/// Splits `key=value, key="quoted, value"` pairs, honouring quoted-pair escapes.
fn parameters(input: &str) -> Result<Vec<(String, String)>, DigestError> {
    let mut out = Vec::new();
    let mut chars = input.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') || key.is_empty() {
            return Err(DigestError::Malformed("a parameter without a value"));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('\\') => value.push(
                        chars
                            .next()
                            .ok_or(DigestError::Malformed("an escape at the end"))?,
                    ),
                    Some('"') => break,
                    Some(c) => value.push(c),
                    None => return Err(DigestError::Malformed("an unterminated quoted string")),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' || c.is_whitespace() {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        out.push((key.to_ascii_lowercase(), value));
    }
}

impl Credentials {
    /// Reads an Authorization header value.
    pub fn parse(header: &str) -> Result<Credentials, DigestError> {
        let header = header.trim();
        let (scheme, rest) = header
            .split_once(char::is_whitespace)
            .unwrap_or((header, ""));
        if !scheme.eq_ignore_ascii_case("Digest") {
            return Err(DigestError::NotDigest);
        }
        let mut c = Credentials::default();
        for (key, value) in parameters(rest)? {
            match key.as_str() {
                "username" => c.username = value,
                "realm" => c.realm = value,
                "nonce" => c.nonce = value,
                "uri" => c.uri = value,
                "response" => c.response = value.to_ascii_lowercase(),
                "algorithm" => c.algorithm = Some(value),
                "cnonce" => c.cnonce = Some(value),
                "qop" => c.qop = Some(value),
                "nc" => c.nc = Some(value),
                _ => {}
            }
        }
        for (name, value) in [
            ("username", &c.username),
            ("realm", &c.realm),
            ("nonce", &c.nonce),
            ("uri", &c.uri),
            ("response", &c.response),
        ] {
            if value.is_empty() {
                return Err(DigestError::Missing(name));
            }
        }
        Ok(c)
    }

    pub fn algorithm(&self) -> Result<Algorithm, DigestError> {
        match &self.algorithm {
            None => Ok(Algorithm::Md5),
            Some(a) => Algorithm::parse(a).ok_or_else(|| DigestError::Algorithm(a.clone())),
        }
    }
}

/// Issues and checks nonces for one realm.
pub struct Digest {
    realm: String,
    key: hmac::Key,
    lifetime_seconds: u64,
    algorithms: Vec<Algorithm>,
    counts: Mutex<NonceCounts>,
}

impl Digest {
    /// A challenger offering `algorithms`, one challenge each, in that order.
    pub fn new(
        realm: &str,
        secret: &[u8],
        lifetime_seconds: u64,
        algorithms: &[Algorithm],
    ) -> Digest {
        Digest {
            realm: realm.to_string(),
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
            lifetime_seconds,
            algorithms: algorithms.to_vec(),
            counts: Mutex::default(),
        }
    }

    /// Whether answers in `algorithm` are taken (it is one of those offered).
    pub fn offers(&self, algorithm: Algorithm) -> bool {
        self.algorithms.contains(&algorithm)
    }

    pub fn realm(&self) -> &str {
        &self.realm
    }

    fn tag(&self, issued_at: u64, salt: &[u8]) -> [u8; 16] {
        let mut input = issued_at.to_be_bytes().to_vec();
        input.extend_from_slice(salt);
        input.extend_from_slice(self.realm.as_bytes());
        let mut tag = [0u8; 16];
        tag.copy_from_slice(&hmac::sign(&self.key, &input).as_ref()[..16]);
        tag
    }

    pub fn nonce(&self, now: u64) -> String {
        let mut salt = [0u8; 8];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt)
            .expect("system randomness");
        let mut bytes = now.to_be_bytes().to_vec();
        bytes.extend_from_slice(&salt);
        bytes.extend_from_slice(&self.tag(now, &salt));
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// The `WWW-Authenticate` values of a challenge, one per algorithm.
    pub fn challenges(&self, now: u64, stale: bool) -> Vec<String> {
        let nonce = self.nonce(now);
        self.algorithms
            .iter()
            .map(|a| {
                format!(
                    "Digest realm=\"{}\", nonce=\"{nonce}\", algorithm={}, qop=\"auth\"{}",
                    self.realm,
                    a.as_str(),
                    if stale { ", stale=true" } else { "" }
                )
            })
            .collect()
    }

    /// Checks the nonce's tag and age; returns when it was issued.
    fn check_nonce(&self, nonce: &str, now: u64) -> Result<u64, DigestError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(nonce)
            .map_err(|_| DigestError::BadNonce)?;
        if bytes.len() != 32 {
            return Err(DigestError::BadNonce);
        }
        let issued_at = u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes"));
        let expected = self.tag(issued_at, &bytes[8..16]);
        if !constant_time_eq(&bytes[16..], &expected) {
            return Err(DigestError::BadNonce);
        }
        if issued_at > now + 5 || now - issued_at.min(now) > self.lifetime_seconds {
            return Err(DigestError::Stale);
        }
        Ok(issued_at)
    }

    /// Checks `credentials` for a request of `method` to `request_uri` against the account's
    /// HA1 in the credential's algorithm.
    pub fn verify(
        &self,
        credentials: &Credentials,
        method: &str,
        request_uri: &str,
        ha1: &str,
        now: u64,
    ) -> Result<(), DigestError> {
        let algorithm = credentials.algorithm()?;
        if credentials.realm != self.realm {
            return Err(DigestError::Realm(credentials.realm.clone()));
        }
        if credentials.uri != request_uri {
            return Err(DigestError::Uri {
                digest_uri: credentials.uri.clone(),
                request_uri: request_uri.to_string(),
            });
        }
        let issued_at = self.check_nonce(&credentials.nonce, now)?;
        let ha2 = algorithm.hash(&format!("{method}:{}", credentials.uri));
        let expected = match credentials.qop.as_deref() {
            None => algorithm.hash(&format!("{ha1}:{}:{ha2}", credentials.nonce)),
            Some(q) if q.eq_ignore_ascii_case("auth") => {
                let (Some(nc), Some(cnonce)) = (&credentials.nc, &credentials.cnonce) else {
                    return Err(DigestError::Missing("nc and cnonce"));
                };
                algorithm.hash(&format!(
                    "{ha1}:{}:{nc}:{cnonce}:auth:{ha2}",
                    credentials.nonce
                ))
            }
            Some(_) => return Err(DigestError::Qop),
        };
        if !constant_time_eq(expected.as_bytes(), credentials.response.as_bytes()) {
            return Err(DigestError::Mismatch);
        }
        // An answer without qop has no count: its nonce serves once, as if at the highest count,
        // so the same answer cannot be replayed (RFC 2617 §3.2.2's clients without qop reuse
        // nonces; they get a fresh one with a stale challenge).
        let count = match (&credentials.qop, &credentials.nc) {
            (None, _) => u32::MAX,
            (Some(_), Some(nc)) => u32::from_str_radix(nc, 16)
                .map_err(|_| DigestError::Malformed("nc is not 8 hex digits"))?,
            (Some(_), None) => return Err(DigestError::Missing("nc and cnonce")),
        };
        self.counts.lock().expect("digest counts lock").count(
            &credentials.nonce,
            issued_at,
            count,
            now,
            self.lifetime_seconds,
            MAX_TRACKED_NONCES,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn digest() -> Digest {
        Digest::new(
            "a.test",
            b"0123456789abcdef0123456789abcdef",
            300,
            &[Algorithm::Md5, Algorithm::Sha256],
        )
    }

    /// What a client computes (RFC 7616 §3.4.1).
    fn answer(
        algorithm: Algorithm,
        password: &str,
        nonce: &str,
        nc: &str,
        uri: &str,
    ) -> Credentials {
        let ha1 = ha1(algorithm, "bob", "a.test", password);
        let ha2 = algorithm.hash(&format!("REGISTER:{uri}"));
        Credentials {
            username: "bob".into(),
            realm: "a.test".into(),
            nonce: nonce.into(),
            uri: uri.into(),
            response: algorithm.hash(&format!("{ha1}:{nonce}:{nc}:c0ffee:auth:{ha2}")),
            algorithm: Some(algorithm.as_str().into()),
            cnonce: Some("c0ffee".into()),
            qop: Some("auth".into()),
            nc: Some(nc.into()),
        }
    }

    #[test]
    fn rfc_2617_md5_vector() {
        // RFC 2617 §3.5 (qop=auth, with GET /dir/index.html): response 6629fae49393a05397450978507c4ef1.
        let ha1 = ha1(
            Algorithm::Md5,
            "Mufasa",
            "testrealm@host.com",
            "Circle Of Life",
        );
        let ha2 = Algorithm::Md5.hash("GET:/dir/index.html");
        let response = Algorithm::Md5.hash(&format!(
            "{ha1}:dcd98b7102dd2f0e8b11d0f600bfb0c093:00000001:0a4f113b:auth:{ha2}"
        ));
        assert_eq!(response, "6629fae49393a05397450978507c4ef1");
    }

    #[test]
    fn an_answer_without_qop_uses_its_nonce_once() {
        let d = digest();
        let nonce = d.nonce(NOW);
        let ha1 = ha1(Algorithm::Md5, "bob", "a.test", "secret");
        let ha2 = Algorithm::Md5.hash("REGISTER:sip:a.test");
        let plain = Credentials {
            response: Algorithm::Md5.hash(&format!("{ha1}:{nonce}:{ha2}")),
            cnonce: None,
            qop: None,
            nc: None,
            ..answer(Algorithm::Md5, "secret", &nonce, "00000001", "sip:a.test")
        };
        d.verify(&plain, "REGISTER", "sip:a.test", &ha1, NOW + 1)
            .unwrap();
        assert_eq!(
            d.verify(&plain, "REGISTER", "sip:a.test", &ha1, NOW + 2),
            Err(DigestError::Replay)
        );
        // Nor can the nonce go on with qop after it served an answer without.
        let counted = answer(Algorithm::Md5, "secret", &nonce, "00000002", "sip:a.test");
        assert_eq!(
            d.verify(&counted, "REGISTER", "sip:a.test", &ha1, NOW + 2),
            Err(DigestError::Replay)
        );
    }

    #[test]
    fn right_passwords_pass_once_per_count_and_wrong_ones_fail() {
        let d = digest();
        for (i, algorithm) in [Algorithm::Md5, Algorithm::Sha256].into_iter().enumerate() {
            let nonce = d.nonce(NOW + i as u64);
            let ha1 = ha1(algorithm, "bob", "a.test", "secret");
            let good = answer(algorithm, "secret", &nonce, "00000001", "sip:a.test");
            d.verify(&good, "REGISTER", "sip:a.test", &ha1, NOW + 1)
                .unwrap();
            assert_eq!(
                d.verify(&good, "REGISTER", "sip:a.test", &ha1, NOW + 1),
                Err(DigestError::Replay)
            );
            let next = answer(algorithm, "secret", &nonce, "00000002", "sip:a.test");
            d.verify(&next, "REGISTER", "sip:a.test", &ha1, NOW + 2)
                .unwrap();
            let wrong = answer(algorithm, "guess", &nonce, "00000003", "sip:a.test");
            assert_eq!(
                d.verify(&wrong, "REGISTER", "sip:a.test", &ha1, NOW + 2),
                Err(DigestError::Mismatch)
            );
            assert!(matches!(
                d.verify(&next, "REGISTER", "sip:other.test", &ha1, NOW + 2),
                Err(DigestError::Uri { .. })
            ));
        }
    }

    #[test]
    fn nonce_counts_stay_bounded_and_a_forgotten_nonce_is_stale_not_fresh() {
        let mut counts = NonceCounts::default();
        let lifetime = 300;
        for (i, nonce) in ["n1", "n2", "n3"].into_iter().enumerate() {
            let issued = NOW + i as u64;
            counts.count(nonce, issued, 1, issued, lifetime, 2).unwrap();
        }
        // The cap of two forgot n1, issued at NOW: its replay cannot be told from a first use.
        assert_eq!(counts.last.len(), 2);
        assert_eq!(
            counts.count("n1", NOW, 1, NOW + 3, lifetime, 2),
            Err(DigestError::Stale)
        );
        assert_eq!(
            counts.count("n3", NOW + 2, 1, NOW + 3, lifetime, 2),
            Err(DigestError::Replay)
        );
        counts
            .count("n3", NOW + 2, 2, NOW + 3, lifetime, 2)
            .unwrap();
        // A nonce issued after the forgotten one is still taken (and pushes n2 out).
        counts
            .count("n4", NOW + 3, 1, NOW + 3, lifetime, 2)
            .unwrap();
        assert_eq!(counts.last.len(), 2);
        assert_eq!(counts.order.len(), 2);

        // Nonces first used over a lifetime ago go, without moving the stale mark.
        counts
            .count("n5", NOW + 400, 1, NOW + 400, lifetime, 2)
            .unwrap();
        assert_eq!(counts.last.keys().collect::<Vec<_>>(), ["n5"]);
        assert_eq!(counts.forgotten_through, Some(NOW + 1));
    }

    #[test]
    fn every_challenge_has_its_own_nonce() {
        let d = digest();
        assert_ne!(d.nonce(NOW), d.nonce(NOW));
    }

    #[test]
    fn forged_and_old_nonces_are_refused() {
        let d = digest();
        let ha1 = ha1(Algorithm::Md5, "bob", "a.test", "secret");
        let other = Digest::new(
            "a.test",
            b"another key, another provider!!!",
            300,
            &[Algorithm::Md5],
        );
        let forged = answer(
            Algorithm::Md5,
            "secret",
            &other.nonce(NOW),
            "00000001",
            "sip:a.test",
        );
        assert_eq!(
            d.verify(&forged, "REGISTER", "sip:a.test", &ha1, NOW),
            Err(DigestError::BadNonce)
        );
        let old = answer(
            Algorithm::Md5,
            "secret",
            &d.nonce(NOW),
            "00000001",
            "sip:a.test",
        );
        assert_eq!(
            d.verify(&old, "REGISTER", "sip:a.test", &ha1, NOW + 301),
            Err(DigestError::Stale)
        );
        let garbage = Credentials {
            nonce: "!!".into(),
            ..old
        };
        assert_eq!(
            d.verify(&garbage, "REGISTER", "sip:a.test", &ha1, NOW),
            Err(DigestError::BadNonce)
        );
    }

    #[test]
    fn authorization_headers_parse_with_quotes_and_escapes() {
        let c = Credentials::parse(
            r#"Digest username="bo\"b", realm="a.test",nonce="n1", uri="sip:a.test", response="ABC", algorithm=SHA-256, cnonce="x, y", qop=auth, nc=00000001"#,
        )
        .unwrap();
        assert_eq!(c.username, "bo\"b");
        assert_eq!(c.cnonce.as_deref(), Some("x, y"));
        assert_eq!(c.response, "abc");
        assert_eq!(c.algorithm().unwrap(), Algorithm::Sha256);
        assert_eq!(
            Credentials::parse("Basic Ym9iOnNlY3JldA=="),
            Err(DigestError::NotDigest)
        );
        assert_eq!(
            Credentials::parse(r#"Digest username="bob""#),
            Err(DigestError::Missing("realm"))
        );
        assert!(Credentials::parse(r#"Digest username="bob"#).is_err());
        let c = Credentials::parse(
            r#"Digest username="b", realm="r", nonce="n", uri="u", response="x", algorithm=SHA-512-256"#,
        )
        .unwrap();
        assert!(matches!(c.algorithm(), Err(DigestError::Algorithm(_))));
    }
}
