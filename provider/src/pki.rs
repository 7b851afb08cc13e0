//! The provider's endpoint CA: it issues each registered endpoint an identity certificate that
//! carries the user's URIs, and the TLS server certificate of the endpoint API.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
    SubjectPublicKeyInfo,
};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use switchyard_protocol::pki::{self, CertificateAuthority};
use time::{Duration, OffsetDateTime};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    BadPem { path: PathBuf, reason: String },
    #[error("certificate request is invalid: {0}")]
    BadRequest(String),
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration failed: {0}")]
    Tls(String),
    #[error(transparent)]
    Federation(#[from] switchyard_protocol::pki::PkiError),
}

pub use switchyard_protocol::pki::certificate_fingerprint as fingerprint;

pub struct EndpointCa {
    ca: CertificateAuthority,
}

/// An identity certificate issued to an endpoint.
pub struct IssuedCertificate {
    pub pem: String,
    pub fingerprint: String,
    pub not_after: i64,
}

impl EndpointCa {
    /// Loads the CA from its PEM files, creating both (key mode 0600) if neither exists.
    pub fn load_or_create(
        cert_path: &Path,
        key_path: &Path,
        provider_id: &str,
    ) -> Result<Self, PkiError> {
        for path in [cert_path, key_path] {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|source| PkiError::Write {
                    path: parent.into(),
                    source,
                })?;
            }
        }
        let ca = if !cert_path.exists() && !key_path.exists() {
            CertificateAuthority::create(
                cert_path,
                key_path,
                &format!("Switchyard endpoint CA {provider_id}"),
                Some(provider_id),
            )?
        } else {
            CertificateAuthority::load(cert_path, key_path)?
        };
        Ok(EndpointCa { ca })
    }

    pub fn cert_pem(&self) -> &str {
        self.ca.cert_pem()
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        self.ca.cert_der()
    }

    /// When the CA certificate expires (ms since the epoch).
    pub fn not_after_ms(&self) -> Option<i64> {
        let (_, cert) = x509_parser::parse_x509_certificate(self.ca.cert_der()).ok()?;
        Some(cert.validity().not_after.timestamp() * 1000)
    }

    /// Issues an endpoint certificate for the key in `request`: a PEM CSR (its signature is
    /// checked) or a PEM SubjectPublicKeyInfo. Only the key is taken from the request; the
    /// subject, URIs and validity are the provider's.
    pub fn issue_endpoint(
        &self,
        request: &str,
        endpoint_id: &str,
        uris: &[String],
        days: u32,
    ) -> Result<IssuedCertificate, PkiError> {
        let public_key: Box<dyn PublicKeyData> = if request.contains("CERTIFICATE REQUEST") {
            let csr = CertificateSigningRequestParams::from_pem(request)
                .map_err(|e| PkiError::BadRequest(e.to_string()))?;
            Box::new(csr.public_key)
        } else if request.contains("PUBLIC KEY") {
            Box::new(
                SubjectPublicKeyInfo::from_pem(request)
                    .map_err(|e| PkiError::BadRequest(e.to_string()))?,
            )
        } else {
            return Err(PkiError::BadRequest(
                "expected a PEM `CERTIFICATE REQUEST` or `PUBLIC KEY`".into(),
            ));
        };
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, endpoint_id.to_string());
        params.distinguished_name = dn;
        params.subject_alt_names = uris
            .iter()
            .map(|uri| {
                uri.as_str().try_into().map(SanType::URI).map_err(|_| {
                    PkiError::BadRequest(format!("URI `{uri}` cannot go in a certificate"))
                })
            })
            .collect::<Result<_, _>>()?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let not_after = OffsetDateTime::now_utc() + Duration::days(days.into());
        params.not_before = OffsetDateTime::now_utc() - Duration::minutes(5);
        params.not_after = not_after;
        params.serial_number = Some(pki::random_serial()?);
        let cert = params.signed_by(&PublicKeyRef(public_key.as_ref()), self.ca.issuer())?;
        Ok(IssuedCertificate {
            fingerprint: fingerprint(cert.der()),
            pem: cert.pem(),
            not_after: not_after.unix_timestamp() * 1000,
        })
    }

    /// A server certificate for the endpoint API, valid for `names` (DNS names or IP addresses).
    pub fn issue_server(
        &self,
        names: &[String],
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names.to_vec())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, names[0].clone());
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = OffsetDateTime::now_utc() - Duration::hours(1);
        params.not_after = OffsetDateTime::now_utc() + Duration::days(397);
        params.serial_number = Some(pki::random_serial()?);
        let cert = params.signed_by(&key, self.ca.issuer())?;
        let key_der = PrivateKeyDer::try_from(key.serialize_der())
            .map_err(|e| PkiError::Tls(e.to_string()))?;
        Ok((
            vec![cert.der().clone(), self.ca.cert_der().clone()],
            key_der,
        ))
    }

    /// TLS for the endpoint API: client certificates are optional at the handshake (registration
    /// has none yet) but, when present, must chain to this CA; each request then checks the
    /// endpoint is still active.
    pub fn server_config(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Arc<rustls::ServerConfig>, PkiError> {
        let mut roots = RootCertStore::empty();
        roots
            .add(self.ca.cert_der().clone())
            .map_err(|e| PkiError::Tls(e.to_string()))?;
        let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
            .allow_unauthenticated()
            .build()
            .map_err(|e| PkiError::Tls(e.to_string()))?;
        let mut config = rustls::ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| PkiError::Tls(e.to_string()))?;
        config.alpn_protocols = switchyard_protocol::pki::http_alpn();
        Ok(Arc::new(config))
    }
}

/// rcgen wants a sized `PublicKeyData`; this forwards to a boxed one.
struct PublicKeyRef<'a>(&'a dyn PublicKeyData);

impl PublicKeyData for PublicKeyRef<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.0.der_bytes()
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.0.algorithm()
    }
}

/// Writes a file that must not exist yet, creating its folder, with mode 0600 when it holds
/// a secret.
pub fn write_file(path: &Path, contents: &[u8], secret: bool) -> Result<(), PkiError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| PkiError::Write {
            path: parent.into(),
            source,
        })?;
    }
    pki::write_new(path, contents, if secret { 0o600 } else { 0o644 })?;
    Ok(())
}

/// Reads a secret token (one line of at least 16 characters), creating it (mode 0600, 32 random
/// bytes) on first start; `what` names it in errors.
pub fn load_or_create_secret(path: &Path, what: &str) -> anyhow::Result<String> {
    use anyhow::Context;
    if !path.exists() {
        write_file(
            path,
            format!("{}\n", crate::shared::random_token(32)).as_bytes(),
            true,
        )
        .with_context(|| format!("creating the {what} at {}", path.display()))?;
    }
    let secret = std::fs::read_to_string(path)
        .with_context(|| format!("reading the {what} at {}", path.display()))?
        .trim()
        .to_string();
    anyhow::ensure!(
        secret.len() >= 16,
        "the {what} in {} is shorter than 16 characters",
        path.display()
    );
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::pem::PemObject;
    use x509_parser::prelude::*;

    fn ca() -> (EndpointCa, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let ca = EndpointCa::load_or_create(
            &dir.path().join("ca.pem"),
            &dir.path().join("ca.key"),
            "test.example",
        )
        .unwrap();
        (ca, dir)
    }

    #[test]
    fn ca_key_is_private_and_reloads() {
        use std::os::unix::fs::PermissionsExt;
        let (ca, dir) = ca();
        let mode = std::fs::metadata(dir.path().join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = EndpointCa::load_or_create(
            &dir.path().join("ca.pem"),
            &dir.path().join("ca.key"),
            "test.example",
        )
        .unwrap();
        assert_eq!(again.cert_pem(), ca.cert_pem());
    }

    #[test]
    fn endpoint_certificate_carries_uris_and_chains_to_ca() {
        let (ca, _dir) = ca();
        let key = KeyPair::generate().unwrap();
        let csr = CertificateParams::default()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        let uris = vec![
            "tel:+16502530000".to_string(),
            "mailto:a@example.com".to_string(),
        ];
        let issued = ca.issue_endpoint(&csr, "ep-1", &uris, 30).unwrap();
        let der = CertificateDer::from_pem_slice(issued.pem.as_bytes()).unwrap();
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let sans: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) => Some(u.to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(sans, uris);
        let (_, ca_cert) = X509Certificate::from_der(ca.cert_der()).unwrap();
        cert.verify_signature(Some(ca_cert.public_key())).unwrap();
        assert_eq!(
            cert.public_key().raw,
            key.subject_public_key_info().as_slice()
        );
        assert_eq!(issued.fingerprint, fingerprint(&der));
    }

    #[test]
    fn public_key_request_is_accepted_and_garbage_rejected() {
        let (ca, _dir) = ca();
        let key = KeyPair::generate().unwrap();
        assert!(ca
            .issue_endpoint(
                &key.public_key_pem(),
                "ep-2",
                &["tel:+16502530000".into()],
                1
            )
            .is_ok());
        assert!(matches!(
            ca.issue_endpoint("hello", "ep-3", &[], 1),
            Err(PkiError::BadRequest(_))
        ));
        let forged =
            "-----BEGIN CERTIFICATE REQUEST-----\nMIIBAA==\n-----END CERTIFICATE REQUEST-----\n";
        assert!(matches!(
            ca.issue_endpoint(forged, "ep-4", &[], 1),
            Err(PkiError::BadRequest(_))
        ));
    }
}
