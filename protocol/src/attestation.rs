//! Caller attestation: the originating provider signs each Initiate Forward over the session id,
//! the caller and callee URIs, its provider id, a timestamp and how much it vouches for the
//! caller (an attestation level, after STIR/SHAKEN, RFC 8588), and the receiving provider
//! verifies it against the originator's federation certificate.
//!
//! Signed bytes: the UTF-8 text
//! `switchyard-attestation-v2\n<session-id>\n<caller-uri>\n<callee-uri>\n<provider-id>\n<timestamp>\n<level>`
//! (URIs canonical, timestamp in decimal Unix seconds, level `A`, `B` or `C`); signature ECDSA
//! P-256 / SHA-256, ASN.1 DER. None of the fields may contain a newline, so the encoding is
//! unambiguous.

use crate::pki::{self, PkiError, SigningKey};

const CONTEXT: &str = "switchyard-attestation-v2";

#[derive(Debug, thiserror::Error)]
pub enum AttestationError {
    #[error("attestation field `{0}` must not contain a line break")]
    LineBreak(&'static str),
    #[error(
        "the attestation signature does not verify against the originating provider's certificate"
    )]
    BadSignature,
    #[error("the attestation is signed by `{signer}` but claims `{claimed}`")]
    WrongProvider { signer: String, claimed: String },
    #[error("the attestation timestamp {timestamp} is outside the accepted window around {now}")]
    Stale { timestamp: i64, now: i64 },
    #[error(transparent)]
    Pki(#[from] PkiError),
}

/// How much the originating provider vouches for the caller, as STIR/SHAKEN's levels: a
/// receiver only ever lowers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// `C`, gateway: the originator has no relationship with the caller it passes on.
    Gateway,
    /// `B`, partial: the originator authenticated the device, but does not host the caller URI.
    Partial,
    /// `A`, full: the originator hosts the caller URI and authenticated the device holding it.
    Full,
}

impl Level {
    pub const ALL: [Level; 3] = [Level::Full, Level::Partial, Level::Gateway];

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Full => "A",
            Level::Partial => "B",
            Level::Gateway => "C",
        }
    }

    pub fn parse(text: &str) -> Option<Level> {
        Level::ALL.into_iter().find(|level| level.as_str() == text)
    }
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attestation {
    pub session_id: String,
    pub caller_uri: String,
    pub callee_uri: String,
    pub provider_id: String,
    pub timestamp: i64,
    pub level: Level,
}

impl Attestation {
    /// The bytes the signature covers (the module's header gives their form).
    pub fn signed_bytes(&self) -> Result<Vec<u8>, AttestationError> {
        for (name, value) in [
            ("session-id", &self.session_id),
            ("caller-uri", &self.caller_uri),
            ("callee-uri", &self.callee_uri),
            ("provider-id", &self.provider_id),
        ] {
            if value.contains(['\n', '\r']) {
                return Err(AttestationError::LineBreak(name));
            }
        }
        Ok(format!(
            "{CONTEXT}\n{}\n{}\n{}\n{}\n{}\n{}",
            self.session_id,
            self.caller_uri,
            self.callee_uri,
            self.provider_id,
            self.timestamp,
            self.level
        )
        .into_bytes())
    }

    pub fn sign(&self, key: &SigningKey) -> Result<Vec<u8>, AttestationError> {
        Ok(key.sign(&self.signed_bytes()?)?)
    }

    /// Verifies the signature with the originator's certificate (DER, already checked to chain to
    /// the federation CA), that the certificate belongs to `provider_id`, and that the timestamp
    /// lies within `window_seconds` of `now`.
    pub fn verify(
        &self,
        signature: &[u8],
        originator_cert_der: &[u8],
        now: i64,
        window_seconds: i64,
    ) -> Result<(), AttestationError> {
        let signer = pki::provider_identity(originator_cert_der)?.provider_id;
        if signer != self.provider_id {
            return Err(AttestationError::WrongProvider {
                signer,
                claimed: self.provider_id.clone(),
            });
        }
        if !crate::window::within(now, self.timestamp, window_seconds) {
            return Err(AttestationError::Stale {
                timestamp: self.timestamp,
                now,
            });
        }
        pki::verify_signature(originator_cert_der, &self.signed_bytes()?, signature)
            .map_err(|_| AttestationError::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::FederationCa;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;

    const NOW: i64 = 1_800_000_000;

    fn attestation() -> Attestation {
        Attestation {
            session_id: "0a1b2c3d-session".into(),
            caller_uri: "tel:+16502530000".into(),
            callee_uri: "mailto:bob@example.com".into(),
            provider_id: "a.example".into(),
            timestamp: NOW,
            level: Level::Full,
        }
    }

    #[test]
    fn levels_read_back_and_order_by_trust() {
        for level in Level::ALL {
            assert_eq!(Level::parse(level.as_str()), Some(level));
        }
        assert_eq!(Level::parse("a"), None);
        assert!(Level::Full > Level::Partial && Level::Partial > Level::Gateway);
    }

    #[test]
    fn signed_attestation_verifies_and_alterations_fail() {
        let dir = tempfile::tempdir().unwrap();
        let ca = FederationCa::init(&dir.path().join("ca.pem"), &dir.path().join("ca.key"), "t")
            .unwrap();
        let a = ca
            .issue_provider("a.example", &["a.example".into()], 30)
            .unwrap();
        let b = ca
            .issue_provider("b.example", &["b.example".into()], 30)
            .unwrap();
        let a_der = CertificateDer::from_pem_slice(a.cert_pem.as_bytes())
            .unwrap()
            .to_vec();
        let b_der = CertificateDer::from_pem_slice(b.cert_pem.as_bytes())
            .unwrap()
            .to_vec();
        let key = SigningKey::from_pem(&a.key_pem).unwrap();
        let signature = attestation().sign(&key).unwrap();

        attestation()
            .verify(&signature, &a_der, NOW + 5, 30)
            .unwrap();
        let forged = Attestation {
            caller_uri: "tel:+442079460958".into(),
            ..attestation()
        };
        assert!(matches!(
            forged.verify(&signature, &a_der, NOW, 30),
            Err(AttestationError::BadSignature)
        ));
        let upgraded = Attestation {
            level: Level::Full,
            ..attestation()
        };
        let partial = Attestation {
            level: Level::Partial,
            ..attestation()
        };
        let partial_signature = partial.sign(&key).unwrap();
        partial.verify(&partial_signature, &a_der, NOW, 30).unwrap();
        assert!(
            matches!(
                upgraded.verify(&partial_signature, &a_der, NOW, 30),
                Err(AttestationError::BadSignature)
            ),
            "the level is signed: a B cannot be presented as an A"
        );
        assert!(matches!(
            attestation().verify(&signature, &b_der, NOW, 30),
            Err(AttestationError::WrongProvider { .. })
        ));
        for edge in [NOW - 30, NOW + 30] {
            attestation().verify(&signature, &a_der, edge, 30).unwrap();
        }
        for outside in [NOW - 31, NOW + 31] {
            assert!(matches!(
                attestation().verify(&signature, &a_der, outside, 30),
                Err(AttestationError::Stale { .. })
            ));
        }
        let sneaky = Attestation {
            session_id: "x\ntel:+1".into(),
            ..attestation()
        };
        assert!(matches!(
            sneaky.sign(&key),
            Err(AttestationError::LineBreak("session-id"))
        ));
    }
}
