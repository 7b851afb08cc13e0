//! Our endpoint identity, what we expect of the peer, and the peer certificate check.

use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use super::SecureError;

/// Lower-case hex SHA-256 of a DER certificate (no separators), as compared by
/// [`PeerExpectation::fingerprint_sha256_hex`].
pub fn fingerprint_sha256_hex(cert_der: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, cert_der))
}

/// Normalise a fingerprint as found in signalling: accepts `ab12...`, `AB:12:...`, and an SDP-style
/// `sha-256 AB:12:...` prefix. Returns 64 lower-case hex digits.
pub(crate) fn normalize_fingerprint(fp: &str) -> Result<String, SecureError> {
    let fp = fp.trim();
    let fp = fp
        .strip_prefix("sha-256 ")
        .or_else(|| fp.strip_prefix("SHA-256 "))
        .unwrap_or(fp)
        .trim();
    let hex: String = fp.chars().filter(|c| *c != ':').collect();
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(SecureError::InvalidPeerExpectation(format!(
            "fingerprint {fp:?} is not a SHA-256 fingerprint (64 hex digits, colons optional)"
        )));
    }
    Ok(hex.to_ascii_lowercase())
}

/// This endpoint's identity certificate (ECDSA P-256, issued by its provider's endpoint CA) and
/// private key.
#[derive(Clone, PartialEq, Eq)]
pub struct EndpointIdentity {
    /// DER of the leaf certificate.
    pub cert_der: Vec<u8>,
    /// PKCS#8 DER of the P-256 private key.
    pub key_pkcs8_der: Vec<u8>,
}

impl std::fmt::Debug for EndpointIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointIdentity")
            .field("fingerprint", &self.fingerprint_sha256_hex())
            .field("key_pkcs8_der", &"<redacted>")
            .finish()
    }
}

impl EndpointIdentity {
    /// From PEM: `cert_pem` holds the leaf certificate first (further blocks are ignored);
    /// `key_pem` a `PRIVATE KEY` (PKCS#8) block. Checks that the key is P-256 and matches the
    /// certificate.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, SecureError> {
        let cert = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .next()
            .ok_or_else(|| {
                SecureError::InvalidIdentity("no CERTIFICATE block in certificate PEM".into())
            })?
            .map_err(|e| SecureError::InvalidIdentity(format!("certificate PEM: {e}")))?;
        let key = PrivatePkcs8KeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| {
            SecureError::InvalidIdentity(format!("key PEM (expected a PKCS#8 PRIVATE KEY): {e}"))
        })?;
        Self::from_der(cert.as_ref().to_vec(), key.secret_pkcs8_der().to_vec())
    }

    /// From DER, with the same checks as [`EndpointIdentity::from_pem`].
    pub fn from_der(cert_der: Vec<u8>, key_pkcs8_der: Vec<u8>) -> Result<Self, SecureError> {
        let identity = EndpointIdentity {
            cert_der,
            key_pkcs8_der,
        };
        let key = identity.key_pair()?;
        let (_, cert) = X509Certificate::from_der(&identity.cert_der)
            .map_err(|e| SecureError::InvalidIdentity(format!("certificate: {e}")))?;
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key().as_ref() {
            return Err(SecureError::InvalidIdentity(
                "private key does not match the certificate's public key".into(),
            ));
        }
        Ok(identity)
    }

    /// Lower-case hex SHA-256 of the certificate: what the signalling must announce.
    pub fn fingerprint_sha256_hex(&self) -> String {
        fingerprint_sha256_hex(&self.cert_der)
    }

    pub(crate) fn key_pair(&self) -> Result<EcdsaKeyPair, SecureError> {
        EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_ASN1_SIGNING,
            &self.key_pkcs8_der,
            &SystemRandom::new(),
        )
        .map_err(|e| {
            SecureError::InvalidIdentity(format!("key is not a PKCS#8 ECDSA P-256 key: {e}"))
        })
    }

    /// The certificate and key in the form the DTLS crate wants.
    pub(crate) fn dtls_certificate(&self) -> Result<dtls::crypto::Certificate, SecureError> {
        Ok(dtls::crypto::Certificate {
            certificate: vec![rustls::pki_types::CertificateDer::from(
                self.cert_der.clone(),
            )],
            private_key: dtls::crypto::CryptoPrivateKey {
                kind: dtls::crypto::CryptoPrivateKeyKind::Ecdsa256(self.key_pair()?),
                serialized_der: self.key_pkcs8_der.clone(),
            },
        })
    }
}

/// What the signalling told us about the peer endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerExpectation {
    /// SHA-256 of the peer's DTLS certificate, hex; colons, case and an SDP `sha-256 ` prefix are
    /// tolerated.
    pub fingerprint_sha256_hex: String,
    /// The peer's canonical `tel:`/`mailto:` URI; must equal one SAN URI of its certificate.
    pub uri: String,
    /// DER of the peer provider's endpoint CA certificate(s); the peer's leaf must be signed
    /// directly by one of them.
    pub ca_certs_der: Vec<Vec<u8>>,
    /// Check the fingerprint only (`uri` and `ca_certs_der` unused): a SIP phone's self-signed
    /// certificate, vouched for by the `a=fingerprint` of the SDP its provider carried (RFC 5763).
    pub fingerprint_only: bool,
}

impl PeerExpectation {
    /// With the CA certificates given as PEM (one or more `CERTIFICATE` blocks).
    pub fn with_ca_pem(
        fingerprint_sha256_hex: impl Into<String>,
        uri: impl Into<String>,
        ca_pem: &str,
    ) -> Result<Self, SecureError> {
        let ca_certs_der = CertificateDer::pem_slice_iter(ca_pem.as_bytes())
            .map(|c| c.map(|c| c.as_ref().to_vec()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| SecureError::InvalidPeerExpectation(format!("CA PEM: {e}")))?;
        Ok(PeerExpectation {
            fingerprint_sha256_hex: fingerprint_sha256_hex.into(),
            uri: uri.into(),
            ca_certs_der,
            fingerprint_only: false,
        })
    }

    /// A peer known by its certificate's fingerprint alone (see
    /// [`PeerExpectation::fingerprint_only`]).
    pub fn fingerprint_only(fingerprint_sha256_hex: impl Into<String>) -> Self {
        PeerExpectation {
            fingerprint_sha256_hex: fingerprint_sha256_hex.into(),
            uri: String::new(),
            ca_certs_der: Vec::new(),
            fingerprint_only: true,
        }
    }

    /// Validate and normalise into a verifier.
    pub(crate) fn verifier(&self) -> Result<PeerVerifier, SecureError> {
        let fingerprint = normalize_fingerprint(&self.fingerprint_sha256_hex)?;
        if self.fingerprint_only {
            return Ok(PeerVerifier {
                fingerprint,
                uri: String::new(),
                ca_certs_der: Vec::new(),
                fingerprint_only: true,
            });
        }
        if self.uri.is_empty() {
            return Err(SecureError::InvalidPeerExpectation("empty peer URI".into()));
        }
        if self.ca_certs_der.is_empty() {
            return Err(SecureError::InvalidPeerExpectation(
                "no CA certificate for the peer's provider".into(),
            ));
        }
        for (i, der) in self.ca_certs_der.iter().enumerate() {
            X509Certificate::from_der(der).map_err(|e| {
                SecureError::InvalidPeerExpectation(format!("CA certificate #{i}: {e}"))
            })?;
        }
        Ok(PeerVerifier {
            fingerprint,
            uri: self.uri.clone(),
            ca_certs_der: self.ca_certs_der.clone(),
            fingerprint_only: false,
        })
    }
}

/// The peer certificate check run inside the handshake.
#[derive(Debug, Clone)]
pub(crate) struct PeerVerifier {
    fingerprint: String,
    uri: String,
    ca_certs_der: Vec<Vec<u8>>,
    fingerprint_only: bool,
}

impl PeerVerifier {
    pub(crate) fn uri(&self) -> &str {
        &self.uri
    }

    /// Check the presented chain (leaf first): fingerprint, then issuer, then URI.
    pub(crate) fn verify(&self, chain: &[Vec<u8>]) -> Result<(), SecureError> {
        let leaf_der = chain.first().ok_or(SecureError::NoPeerCertificate)?;

        // (a) exactly the certificate the signalling announced.
        let actual = fingerprint_sha256_hex(leaf_der);
        if actual != self.fingerprint {
            return Err(SecureError::FingerprintMismatch {
                expected: self.fingerprint.clone(),
                actual,
            });
        }
        if self.fingerprint_only {
            return Ok(());
        }

        let (_, leaf) = X509Certificate::from_der(leaf_der).map_err(|e| {
            SecureError::UntrustedCertificate(format!("cannot parse peer certificate: {e}"))
        })?;

        // (b) within validity, and signed by one of the peer provider's endpoint CAs.
        if !leaf.validity().is_valid() {
            return Err(SecureError::UntrustedCertificate(format!(
                "peer certificate outside its validity ({} to {})",
                leaf.validity().not_before,
                leaf.validity().not_after
            )));
        }
        let mut reasons = Vec::new();
        let mut trusted = false;
        for (i, ca_der) in self.ca_certs_der.iter().enumerate() {
            let Ok((_, ca)) = X509Certificate::from_der(ca_der) else {
                reasons.push(format!("CA #{i}: unparsable"));
                continue;
            };
            if leaf.issuer() != ca.subject() {
                reasons.push(format!("CA #{i}: issuer is not {}", ca.subject()));
                continue;
            }
            if let Err(e) = leaf.verify_signature(Some(ca.public_key())) {
                reasons.push(format!("CA #{i}: signature does not verify ({e})"));
                continue;
            }
            if !ca.validity().is_valid() {
                reasons.push(format!("CA #{i}: CA certificate outside its validity"));
                continue;
            }
            trusted = true;
            break;
        }
        if !trusted {
            return Err(SecureError::UntrustedCertificate(format!(
                "peer certificate (issuer {}) not issued by any given endpoint CA: {}",
                leaf.issuer(),
                reasons.join("; ")
            )));
        }

        // (c) it names the expected URI.
        let found: Vec<String> = match leaf.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some((*u).to_string()),
                    _ => None,
                })
                .collect(),
            Ok(None) => Vec::new(),
            Err(e) => {
                return Err(SecureError::UntrustedCertificate(format!(
                    "bad subjectAltName extension: {e}"
                )))
            }
        };
        if !found.contains(&self.uri) {
            return Err(SecureError::UriMismatch {
                expected: self.uri.clone(),
                found,
            });
        }
        Ok(())
    }
}
