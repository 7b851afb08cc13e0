//! Caller attestation: the originating provider signs each Initiate Forward over the session id,
//! the caller and callee URIs, its provider id and a timestamp (in the spirit of STIR/SHAKEN), and
//! the receiving provider verifies it against the originator's federation certificate.
//!
//! Signed bytes: the UTF-8 text
//! `switchyard-attestation-v1\n<session-id>\n<caller-uri>\n<callee-uri>\n<provider-id>\n<timestamp>`
//! (URIs canonical, timestamp in decimal Unix seconds); signature ECDSA P-256 / SHA-256, ASN.1 DER.
//! None of the fields may contain a newline, so the encoding is unambiguous.

use crate::pki::{self, PkiError, SigningKey};

const CONTEXT: &str = "switchyard-attestation-v1";

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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attestation {
    pub session_id: String,
    pub caller_uri: String,
    pub callee_uri: String,
    pub provider_id: String,
    pub timestamp: i64,
}

impl Attestation {
    fn signed_bytes(&self) -> Result<Vec<u8>, AttestationError> {
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
            "{CONTEXT}\n{}\n{}\n{}\n{}\n{}",
            self.session_id, self.caller_uri, self.callee_uri, self.provider_id, self.timestamp
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
        }
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
        assert!(matches!(
            attestation().verify(&signature, &b_der, NOW, 30),
            Err(AttestationError::WrongProvider { .. })
        ));
        assert!(matches!(
            attestation().verify(&signature, &a_der, NOW + 31, 30),
            Err(AttestationError::Stale { .. })
        ));
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
