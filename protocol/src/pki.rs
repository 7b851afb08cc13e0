//! The federation's public-key infrastructure.
//!
//! The managing entity holds one CA ([`FederationCa`]). Each provider gets a
//! certificate from it whose subject alternative names carry the provider id as a
//! URI (`urn:switchyard:provider:<ID>`) plus the DNS names of its federation
//! endpoint. Provider-to-provider HTTPS is mutual TLS ([`server_config`],
//! [`client_config`]); the CA key also signs the discovery dictionary ([`FederationCa::sign`],
//! [`verify_signature`]) and provider keys sign caller attestations ([`SigningKey`]).

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{
    EcdsaKeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING,
};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

/// Prefix of the SAN URI that names the provider a certificate belongs to.
pub const PROVIDER_URI_PREFIX: &str = "urn:switchyard:provider:";

/// How long the federation CA certificate is valid (10 years, leap days included).
const CA_VALIDITY_DAYS: i64 = 3653;

/// Errors from loading, issuing and verifying federation certificates and signatures.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("{} already exists; refusing to overwrite it", .0.display())]
    Exists(PathBuf),
    #[error("{what}: invalid PEM: {reason}")]
    BadPem { what: String, reason: String },
    #[error("invalid certificate: {0}")]
    BadCertificate(String),
    #[error("the private key in {} does not match the certificate in {}", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("invalid provider id {0:?}: expected 1-253 letters, digits, '.', '-' or '_'")]
    InvalidProviderId(String),
    #[error("certificate carries no {PROVIDER_URI_PREFIX} subject alternative name")]
    NoProviderId,
    #[error("certificate carries several provider ids: {}", .0.join(", "))]
    SeveralProviderIds(Vec<String>),
    #[error("certificate of provider {provider_id} expired at {not_after} (Unix time)")]
    Expired { provider_id: String, not_after: i64 },
    #[error("certificate of provider {provider_id} is not valid before {not_before} (Unix time)")]
    NotYetValid {
        provider_id: String,
        not_before: i64,
    },
    #[error("certificate is not trusted by the federation CA: {0}")]
    Untrusted(String),
    #[error("signature does not verify")]
    BadSignature,
    #[error("signing failed")]
    Sign,
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration failed: {0}")]
    Tls(String),
}

/// Whether `id` is a well-formed provider id: 1-253 ASCII letters, digits, `.`, `-`, `_`.
pub fn valid_provider_id(id: &str) -> bool {
    (1..=253).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// A certificate authority kept as two PEM files: its self-signed certificate and its P-256 key.
/// The federation CA and each provider's endpoint CA are both one.
pub struct CertificateAuthority {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    signer: SigningKey,
}

impl CertificateAuthority {
    /// Creates a CA named `common_name` (and `organization`, if any) and writes its certificate
    /// and key. Neither file may exist yet ([`PkiError::Exists`]): overwriting a CA key would
    /// orphan every certificate it issued. The key file is created with mode 0600.
    pub fn create(
        cert_path: &Path,
        key_path: &Path,
        common_name: &str,
        organization: Option<&str>,
    ) -> Result<Self, PkiError> {
        for path in [cert_path, key_path] {
            if path.exists() {
                return Err(PkiError::Exists(path.to_path_buf()));
            }
        }
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        if let Some(organization) = organization {
            params
                .distinguished_name
                .push(DnType::OrganizationName, organization);
        }
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        // An hour back, for clocks a little behind ours.
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(CA_VALIDITY_DAYS);
        params.serial_number = Some(random_serial()?);
        let cert_pem = params.self_signed(&key)?.pem();
        // The key goes first so a failure never leaves a certificate without its key.
        write_new(key_path, key.serialize_pem().as_bytes(), 0o600)?;
        write_new(cert_path, cert_pem.as_bytes(), 0o644)?;
        Self::load(cert_path, key_path)
    }

    /// Loads a CA, checking that the certificate is a CA certificate and the key matches it.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, PkiError> {
        let cert_pem = read_to_string(cert_path)?;
        let key_pem = read_to_string(key_path)?;
        let cert_der =
            CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| PkiError::BadPem {
                what: cert_path.display().to_string(),
                reason: e.to_string(),
            })?;
        let cert = parse_cert(&cert_der)?;
        if !cert.is_ca() {
            return Err(PkiError::BadCertificate(format!(
                "{} is not a CA certificate",
                cert_path.display()
            )));
        }
        let key = KeyPair::from_pem(&key_pem).map_err(|e| PkiError::BadPem {
            what: key_path.display().to_string(),
            reason: e.to_string(),
        })?;
        if key.public_key_raw() != cert.public_key().subject_public_key.data.as_ref() {
            return Err(PkiError::KeyMismatch {
                cert: cert_path.to_path_buf(),
                key: key_path.to_path_buf(),
            });
        }
        let signer = SigningKey::from_pem(&key_pem)?;
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)?;
        Ok(CertificateAuthority {
            cert_pem,
            cert_der,
            issuer,
            signer,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// What signs the certificates this CA issues.
    pub fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }

    /// Signs `message` with the CA key (ECDSA P-256 SHA-256, ASN.1 DER signature).
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, PkiError> {
        self.signer.sign(message)
    }
}

/// The federation's certificate authority: it issues provider certificates and signs the
/// discovery dictionary.
pub struct FederationCa {
    ca: CertificateAuthority,
}

/// A freshly issued provider certificate and its private key (PKCS#8), both PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedProvider {
    pub cert_pem: String,
    pub key_pem: String,
}

impl FederationCa {
    /// Creates a new federation CA and writes its certificate and key as PEM files (see
    /// [`CertificateAuthority::create`]).
    pub fn init(cert_path: &Path, key_path: &Path, name: &str) -> Result<Self, PkiError> {
        Ok(FederationCa {
            ca: CertificateAuthority::create(
                cert_path,
                key_path,
                &format!("Switchyard federation CA {name}"),
                None,
            )?,
        })
    }

    /// Loads a CA written by [`FederationCa::init`], checking that the key matches.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, PkiError> {
        Ok(FederationCa {
            ca: CertificateAuthority::load(cert_path, key_path)?,
        })
    }

    /// The CA certificate, PEM-encoded: the trust anchor every provider configures.
    pub fn cert_pem(&self) -> &str {
        self.ca.cert_pem()
    }

    /// Issues a provider certificate valid from now for `days` days.
    ///
    /// The SAN carries the provider URI plus each of `dns_names` (as an IP address
    /// SAN when the name parses as one); the key is a fresh P-256 key.
    pub fn issue_provider(
        &self,
        provider_id: &str,
        dns_names: &[String],
        days: u32,
    ) -> Result<IssuedProvider, PkiError> {
        let now = OffsetDateTime::now_utc();
        self.issue_provider_with_validity(
            provider_id,
            dns_names,
            now,
            now + Duration::days(i64::from(days)),
        )
    }

    /// Like [`FederationCa::issue_provider`] with an explicit validity period.
    pub fn issue_provider_with_validity(
        &self,
        provider_id: &str,
        dns_names: &[String],
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<IssuedProvider, PkiError> {
        if !valid_provider_id(provider_id) {
            return Err(PkiError::InvalidProviderId(provider_id.to_owned()));
        }
        let mut sans = vec![SanType::URI(
            format!("{PROVIDER_URI_PREFIX}{provider_id}").try_into()?,
        )];
        for name in dns_names {
            sans.push(match name.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(name.as_str().try_into()?),
            });
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, provider_id);
        params.subject_alt_names = sans;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before;
        params.not_after = not_after;
        params.serial_number = Some(random_serial()?);
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let cert = params.signed_by(&key, self.ca.issuer())?;
        Ok(IssuedProvider {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs `message` with the CA key (ECDSA P-256 SHA-256, ASN.1 DER signature).
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, PkiError> {
        self.ca.sign(message)
    }
}

/// A provider's (or the CA's) private key, for ECDSA P-256 SHA-256 signatures.
pub struct SigningKey {
    key: EcdsaKeyPair,
    rng: SystemRandom,
}

impl SigningKey {
    /// Reads a PKCS#8 PEM P-256 key, as written by [`FederationCa::issue_provider`].
    pub fn from_pem(pem: &str) -> Result<Self, PkiError> {
        let der =
            rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| {
                PkiError::BadPem {
                    what: "private key".to_owned(),
                    reason: e.to_string(),
                }
            })?;
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_ASN1_SIGNING,
            der.secret_pkcs8_der(),
            &rng,
        )
        .map_err(|e| PkiError::BadPem {
            what: "private key".to_owned(),
            reason: format!("not a PKCS#8 ECDSA P-256 key: {e}"),
        })?;
        Ok(SigningKey { key, rng })
    }

    /// Signs `message` (ECDSA P-256 SHA-256, ASN.1 DER signature).
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, PkiError> {
        self.key
            .sign(&self.rng, message)
            .map(|sig| sig.as_ref().to_vec())
            .map_err(|_| PkiError::Sign)
    }
}

/// What a certificate says about a provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderIdentity {
    pub provider_id: String,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
    /// Lowercase hex SHA-256 of the certificate's DER encoding.
    pub sha256_fingerprint: String,
}

/// Reads the provider identity from a certificate's single provider SAN URI.
pub fn provider_identity(cert_der: &[u8]) -> Result<ProviderIdentity, PkiError> {
    let cert = parse_cert(cert_der)?;
    identity_of(&cert, cert_der)
}

/// Checks that a provider certificate was signed by the federation CA, is valid at
/// `now` (Unix seconds) and names a provider; returns that provider's identity.
pub fn verify_provider_cert(
    cert_der: &[u8],
    ca_cert_der: &[u8],
    now: i64,
) -> Result<ProviderIdentity, PkiError> {
    let cert = parse_cert(cert_der)?;
    let ca = parse_cert(ca_cert_der)?;
    if cert.issuer() != ca.subject() {
        return Err(PkiError::Untrusted(format!(
            "issued by \"{}\", not by the federation CA \"{}\"",
            cert.issuer(),
            ca.subject()
        )));
    }
    cert.verify_signature(Some(ca.public_key()))
        .map_err(|e| PkiError::Untrusted(format!("CA signature does not verify: {e}")))?;
    let identity = identity_of(&cert, cert_der)?;
    check_validity(validity_of(&ca), &identity, now)?;
    Ok(identity)
}

/// A certificate's validity period, in Unix seconds.
fn validity_of(cert: &X509Certificate<'_>) -> (i64, i64) {
    let validity = cert.validity();
    (
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    )
}

/// Whether the CA (valid over `ca_validity`) and the provider's certificate are both valid at
/// `now`.
fn check_validity(
    (ca_not_before, ca_not_after): (i64, i64),
    identity: &ProviderIdentity,
    now: i64,
) -> Result<(), PkiError> {
    if now < ca_not_before || now > ca_not_after {
        return Err(PkiError::Untrusted(
            "the federation CA certificate is outside its validity period".to_owned(),
        ));
    }
    if now < identity.not_before {
        return Err(PkiError::NotYetValid {
            provider_id: identity.provider_id.clone(),
            not_before: identity.not_before,
        });
    }
    if now > identity.not_after {
        return Err(PkiError::Expired {
            provider_id: identity.provider_id.clone(),
            not_after: identity.not_after,
        });
    }
    Ok(())
}

/// [`verify_provider_cert`] against one federation CA, remembering the certificates whose CA
/// signature verified. A peer presents the same certificate on every request, and the ECDSA
/// verification was the largest part of authenticating one (about 50 µs, twice a call
/// set-up). The validity periods are checked on every call; a new CA means a new verifier.
pub struct ProviderCertVerifier {
    ca_der: Vec<u8>,
    ca_validity: (i64, i64),
    verified: std::sync::Mutex<std::collections::HashMap<Vec<u8>, ProviderIdentity>>,
}

/// Certificates remembered at most; past that the memory starts over. Only certificates the CA
/// signed get in, so this bounds the federation's members, not an attacker.
const VERIFIED_CERTIFICATES: usize = 4096;

impl ProviderCertVerifier {
    pub fn new(ca_der: Vec<u8>) -> Result<Self, PkiError> {
        let ca_validity = validity_of(&parse_cert(&ca_der)?);
        Ok(ProviderCertVerifier {
            ca_der,
            ca_validity,
            verified: Default::default(),
        })
    }

    pub fn verify(&self, cert_der: &[u8], now: i64) -> Result<ProviderIdentity, PkiError> {
        let known = self
            .verified
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(cert_der)
            .cloned();
        if let Some(identity) = known {
            check_validity(self.ca_validity, &identity, now)?;
            return Ok(identity);
        }
        let identity = verify_provider_cert(cert_der, &self.ca_der, now)?;
        let mut map = self
            .verified
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() >= VERIFIED_CERTIFICATES {
            map.clear();
        }
        map.insert(cert_der.to_vec(), identity.clone());
        Ok(identity)
    }
}

/// Verifies an ECDSA P-256 SHA-256 DER `signature` of `message` by the key in a
/// certificate (the CA's for discovery dictionaries, a provider's for attestations).
pub fn verify_signature(cert_der: &[u8], message: &[u8], signature: &[u8]) -> Result<(), PkiError> {
    let cert = parse_cert(cert_der)?;
    UnparsedPublicKey::new(
        &ECDSA_P256_SHA256_ASN1,
        cert.public_key().subject_public_key.data.as_ref(),
    )
    .verify(message, signature)
    .map_err(|_| PkiError::BadSignature)
}

/// Reads every certificate in a PEM file (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    certs_from_named_pem(&read_to_string(path)?, &path.display().to_string())
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, PkiError> {
    PrivateKeyDer::from_pem_slice(read_to_string(path)?.as_bytes()).map_err(|e| PkiError::BadPem {
        what: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// Parses every certificate in a PEM string (at least one).
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    certs_from_named_pem(pem, "certificates")
}

/// The application protocols Switchyard's HTTPS offers by ALPN, in order of preference: HTTP/2
/// first, so that a peer's concurrent Forwards share one connection and its handshake.
pub fn http_alpn() -> Vec<Vec<u8>> {
    vec![b"h2".to_vec(), b"http/1.1".to_vec()]
}

/// Mutual-TLS server configuration: presents `cert_chain` and requires a client
/// certificate that chains to the federation CA in `ca_pem`.
pub fn server_config(
    ca_pem: &str,
    cert_chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, PkiError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca_pem)?, provider.clone())
        .build()
        .map_err(|e| PkiError::Tls(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(tls_error)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(cert_chain, key)
        .map_err(tls_error)?;
    config.alpn_protocols = http_alpn();
    Ok(Arc::new(config))
}

/// Mutual-TLS client configuration: trusts only the federation CA in `ca_pem` and
/// presents `cert_chain` as the client certificate.
pub fn client_config(
    ca_pem: &str,
    cert_chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ClientConfig>, PkiError> {
    let provider: Arc<CryptoProvider> = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(tls_error)?
        .with_root_certificates(roots(ca_pem)?)
        .with_client_auth_cert(cert_chain, key)
        .map_err(tls_error)?;
    Ok(Arc::new(config))
}

/// Like [`client_config`], and the server must present exactly the certificate whose SHA-256
/// is `expected_fingerprint` (lowercase hex), as the discovery dictionary lists it. Checked
/// during the handshake, so nothing is sent to a server holding another federation certificate.
pub fn pinned_client_config(
    ca_pem: &str,
    cert_chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    expected_fingerprint: &str,
) -> Result<Arc<rustls::ClientConfig>, PkiError> {
    let provider: Arc<CryptoProvider> = Arc::new(rustls::crypto::ring::default_provider());
    let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
        roots(ca_pem)?,
        provider.clone(),
    )
    .build()
    .map_err(|e| PkiError::Tls(e.to_string()))?;
    let verifier = Arc::new(PinnedServerVerifier {
        inner,
        expected: expected_fingerprint.to_owned(),
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(tls_error)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(cert_chain, key)
        .map_err(tls_error)?;
    config.alpn_protocols = http_alpn();
    Ok(Arc::new(config))
}

/// The usual chain and name checks, plus the end-entity certificate's fingerprint.
#[derive(Debug)]
struct PinnedServerVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    expected: String,
}

impl rustls::client::danger::ServerCertVerifier for PinnedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls_pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let presented = certificate_fingerprint(end_entity);
        if presented != self.expected {
            return Err(rustls::Error::General(format!(
                "the server presented certificate {presented}, but the discovery dictionary lists {}",
                self.expected
            )));
        }
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn tls_error(e: rustls::Error) -> PkiError {
    PkiError::Tls(e.to_string())
}

fn roots(ca_pem: &str) -> Result<Arc<RootCertStore>, PkiError> {
    let mut roots = RootCertStore::empty();
    for cert in certs_from_named_pem(ca_pem, "federation CA certificate")? {
        roots
            .add(cert)
            .map_err(|e| PkiError::Tls(format!("unusable federation CA certificate: {e}")))?;
    }
    Ok(Arc::new(roots))
}

fn certs_from_named_pem(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let bad = |reason: String| PkiError::BadPem {
        what: what.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no CERTIFICATE section found".to_owned()));
    }
    Ok(certs)
}

fn parse_cert(der: &[u8]) -> Result<X509Certificate<'_>, PkiError> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| PkiError::BadCertificate(e.to_string()))?;
    if !rest.is_empty() {
        return Err(PkiError::BadCertificate(
            "trailing bytes after the certificate".to_owned(),
        ));
    }
    Ok(cert)
}

fn identity_of(cert: &X509Certificate<'_>, der: &[u8]) -> Result<ProviderIdentity, PkiError> {
    let sans = cert
        .subject_alternative_name()
        .map_err(|e| PkiError::BadCertificate(e.to_string()))?;
    let mut ids: Vec<String> = sans
        .iter()
        .flat_map(|ext| &ext.value.general_names)
        .filter_map(|name| match name {
            GeneralName::URI(uri) => uri.strip_prefix(PROVIDER_URI_PREFIX),
            _ => None,
        })
        .map(str::to_owned)
        .collect();
    let provider_id = match ids.len() {
        0 => return Err(PkiError::NoProviderId),
        1 => ids.remove(0),
        _ => return Err(PkiError::SeveralProviderIds(ids)),
    };
    if !valid_provider_id(&provider_id) {
        return Err(PkiError::InvalidProviderId(provider_id));
    }
    let (not_before, not_after) = validity_of(cert);
    Ok(ProviderIdentity {
        provider_id,
        not_before,
        not_after,
        sha256_fingerprint: certificate_fingerprint(der),
    })
}

/// SHA-256 of a DER certificate, lowercase hex: how certificates are named in the
/// discovery dictionary and how a provider finds an endpoint from its TLS identity.
pub fn certificate_fingerprint(der: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, der))
}

/// Whether `text` is a fingerprint as [`certificate_fingerprint`] writes it.
pub fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The fingerprint of the first certificate of a PEM text: how a CA a peer sends is compared
/// with the one the discovery dictionary pins.
pub fn pem_fingerprint(pem: &str) -> Result<String, PkiError> {
    let certs = certs_from_pem(pem)?;
    Ok(certificate_fingerprint(&certs[0]))
}

/// A random 16-byte serial; the top bit is cleared so the DER integer is positive
/// and the next bit set so it has no leading zero byte to strip.
pub fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| PkiError::Generate(rcgen::Error::RingUnspecified))?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

fn read_to_string(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| PkiError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes a file that must not exist yet (`create_new`), with the given Unix mode, and
/// syncs it before returning.
pub fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).map_err(|source| {
        if source.kind() == io::ErrorKind::AlreadyExists {
            PkiError::Exists(path.to_path_buf())
        } else {
            PkiError::Write {
                path: path.to_path_buf(),
                source,
            }
        }
    })?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|source| PkiError::Write {
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW_SLACK: i64 = 60;

    fn new_ca(dir: &Path, name: &str) -> FederationCa {
        FederationCa::init(
            &dir.join(format!("{name}.crt")),
            &dir.join(format!("{name}.key")),
            name,
        )
        .unwrap()
    }

    fn der(pem: &str) -> CertificateDer<'static> {
        certs_from_pem(pem).unwrap().remove(0)
    }

    fn unix_now() -> i64 {
        OffsetDateTime::now_utc().unix_timestamp()
    }

    /// A certificate signed by `ca` with arbitrary SANs, to test malformed identities.
    fn cert_with_sans(ca: &FederationCa, sans: Vec<SanType>) -> CertificateDer<'static> {
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        let key = KeyPair::generate().unwrap();
        params
            .signed_by(&key, ca.ca.issuer())
            .unwrap()
            .der()
            .clone()
    }

    #[test]
    fn provider_ids() {
        assert!(valid_provider_id("acme-tel.example_1"));
        assert!(valid_provider_id(&"a".repeat(253)));
        assert!(!valid_provider_id(""));
        assert!(!valid_provider_id(&"a".repeat(254)));
        assert!(!valid_provider_id("acme tel"));
        assert!(!valid_provider_id("acme:tel"));
        assert!(!valid_provider_id("acmé"));
    }

    #[test]
    fn init_refuses_to_overwrite_and_protects_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("ca.crt"), dir.path().join("ca.key"));
        let ca = FederationCa::init(&cert, &key, "test").unwrap();
        assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let key_before = fs::read(&key).unwrap();
        assert!(matches!(
            FederationCa::init(&cert, &key, "test"),
            Err(PkiError::Exists(p)) if p == cert
        ));
        fs::remove_file(&cert).unwrap();
        assert!(matches!(
            FederationCa::init(&cert, &key, "test"),
            Err(PkiError::Exists(p)) if p == key
        ));
        assert_eq!(fs::read(&key).unwrap(), key_before);
        assert!(!cert.exists());
    }

    #[test]
    fn ca_certificate_is_a_constrained_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca = new_ca(dir.path(), "Example");
        let der = der(ca.cert_pem());
        let cert = parse_cert(&der).unwrap();
        assert_eq!(
            cert.subject().to_string(),
            "CN=Switchyard federation CA Example"
        );
        let constraints = cert.basic_constraints().unwrap().unwrap().value;
        assert!(constraints.ca);
        assert_eq!(constraints.path_len_constraint, Some(0));
        let usage = cert.key_usage().unwrap().unwrap().value;
        assert!(usage.key_cert_sign() && usage.crl_sign());
        let years = (cert.validity().not_after.timestamp() - unix_now()) / (365 * 86400);
        assert_eq!(years, 10);
    }

    #[test]
    fn load_round_trips_and_checks_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let ca = new_ca(dir.path(), "a");
        let loaded =
            FederationCa::load(&dir.path().join("a.crt"), &dir.path().join("a.key")).unwrap();
        assert_eq!(loaded.cert_pem(), ca.cert_pem());
        // A certificate issued by the loaded CA chains to the original certificate.
        let issued = loaded
            .issue_provider("p1", &["p1.example".to_owned()], 30)
            .unwrap();
        let ca_der = der(ca.cert_pem());
        verify_provider_cert(&der(&issued.cert_pem), &ca_der, unix_now()).unwrap();
        let signature = loaded.sign(b"dict").unwrap();
        verify_signature(&ca_der, b"dict", &signature).unwrap();

        new_ca(dir.path(), "b");
        assert!(matches!(
            FederationCa::load(&dir.path().join("a.crt"), &dir.path().join("b.key")),
            Err(PkiError::KeyMismatch { .. })
        ));
        assert!(matches!(
            FederationCa::load(&dir.path().join("missing.crt"), &dir.path().join("a.key")),
            Err(PkiError::Read { .. })
        ));
    }

    #[test]
    fn issued_certificate_names_the_provider_and_chains_to_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca = new_ca(dir.path(), "fed");
        let names = ["sy.acme.example".to_owned(), "127.0.0.1".to_owned()];
        let issued = ca.issue_provider("acme", &names, 90).unwrap();
        let cert_der = der(&issued.cert_pem);
        let now = unix_now();
        let identity = verify_provider_cert(&cert_der, &der(ca.cert_pem()), now).unwrap();
        assert_eq!(identity.provider_id, "acme");
        assert!((identity.not_before - now).abs() <= NOW_SLACK);
        assert!((identity.not_after - (now + 90 * 86400)).abs() <= NOW_SLACK);
        assert_eq!(identity.sha256_fingerprint.len(), 64);
        assert_eq!(identity, provider_identity(&cert_der).unwrap());

        let cert = parse_cert(&cert_der).unwrap();
        let sans: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(
            sans,
            [
                "URI(urn:switchyard:provider:acme)",
                "DNSName(sy.acme.example)",
                "IPAddress(7f:00:00:01)"
            ]
        );
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        assert!(cert.serial.bits() > 120 && !cert.is_ca());
        // The key matches the certificate.
        let signature = SigningKey::from_pem(&issued.key_pem)
            .unwrap()
            .sign(b"m")
            .unwrap();
        verify_signature(&cert_der, b"m", &signature).unwrap();
    }

    #[test]
    fn invalid_provider_ids_are_not_issued() {
        let dir = tempfile::tempdir().unwrap();
        let ca = new_ca(dir.path(), "fed");
        for id in ["", "a b", "x/y", &"a".repeat(254)] {
            assert!(matches!(
                ca.issue_provider(id, &[], 1),
                Err(PkiError::InvalidProviderId(bad)) if bad == id
            ));
        }
    }

    #[test]
    fn identity_needs_exactly_one_provider_uri() {
        let dir = tempfile::tempdir().unwrap();
        let ca = new_ca(dir.path(), "fed");
        let none = cert_with_sans(&ca, vec![SanType::DnsName("a.example".try_into().unwrap())]);
        assert!(matches!(
            provider_identity(&none),
            Err(PkiError::NoProviderId)
        ));
        let uri = |id: &str| SanType::URI(format!("{PROVIDER_URI_PREFIX}{id}").try_into().unwrap());
        let two = cert_with_sans(&ca, vec![uri("a"), uri("b")]);
        assert!(matches!(
            provider_identity(&two),
            Err(PkiError::SeveralProviderIds(ids)) if ids == ["a", "b"]
        ));
        assert!(matches!(
            verify_provider_cert(&two, &der(ca.cert_pem()), unix_now()),
            Err(PkiError::SeveralProviderIds(_))
        ));
        let bad = cert_with_sans(&ca, vec![uri("a b")]);
        assert!(matches!(
            provider_identity(&bad),
            Err(PkiError::InvalidProviderId(_))
        ));
        assert!(matches!(
            provider_identity(b"not a certificate"),
            Err(PkiError::BadCertificate(_))
        ));
    }

    #[test]
    fn validity_period_is_enforced() {
        let dir = tempfile::tempdir().unwrap();
        let ca = new_ca(dir.path(), "fed");
        let ca_der = der(ca.cert_pem());
        let now = OffsetDateTime::now_utc();
        let expired = ca
            .issue_provider_with_validity(
                "old",
                &[],
                now - Duration::days(30),
                now - Duration::days(1),
            )
            .unwrap();
        match verify_provider_cert(&der(&expired.cert_pem), &ca_der, now.unix_timestamp()) {
            Err(PkiError::Expired {
                provider_id,
                not_after,
            }) => {
                assert_eq!(provider_id, "old");
                assert!((not_after - (now - Duration::days(1)).unix_timestamp()).abs() <= 1);
            }
            other => panic!("expected Expired, got {other:?}"),
        }
        let future = ca
            .issue_provider_with_validity(
                "new",
                &[],
                now + Duration::days(1),
                now + Duration::days(30),
            )
            .unwrap();
        assert!(matches!(
            verify_provider_cert(&der(&future.cert_pem), &ca_der, now.unix_timestamp()),
            Err(PkiError::NotYetValid { provider_id, .. }) if provider_id == "new"
        ));
    }

    /// A provider certificate is good from its first second to its last, and so is the CA's.
    #[test]
    fn validity_holds_to_the_second_at_both_ends() {
        let dir = tempfile::tempdir().unwrap();
        let ca = new_ca(dir.path(), "fed");
        let ca_der = der(ca.cert_pem());
        let (ca_from, ca_until) = validity_of(&parse_cert(&ca_der).unwrap());
        let at = |t: i64| OffsetDateTime::from_unix_timestamp(t).unwrap();
        let issued = ca
            .issue_provider_with_validity("edge", &[], at(ca_from + 100), at(ca_from + 200))
            .unwrap();
        let cert = der(&issued.cert_pem);
        let id = provider_identity(&cert).unwrap();
        assert_eq!(
            (id.not_before, id.not_after),
            (ca_from + 100, ca_from + 200)
        );
        assert!(matches!(
            verify_provider_cert(&cert, &ca_der, ca_from + 99),
            Err(PkiError::NotYetValid { .. })
        ));
        for now in [ca_from + 100, ca_from + 200] {
            assert_eq!(verify_provider_cert(&cert, &ca_der, now).unwrap(), id);
        }
        assert!(matches!(
            verify_provider_cert(&cert, &ca_der, ca_from + 201),
            Err(PkiError::Expired { .. })
        ));

        // A certificate outliving its CA at either end is good only while the CA is.
        let wide = ca
            .issue_provider_with_validity("wide", &[], at(ca_from - 1000), at(ca_until + 1000))
            .unwrap();
        let wide = der(&wide.cert_pem);
        for (now, good) in [
            (ca_from - 1, false),
            (ca_from, true),
            (ca_until, true),
            (ca_until + 1, false),
        ] {
            let verified = verify_provider_cert(&wide, &ca_der, now);
            if good {
                assert!(verified.is_ok(), "{now}: {verified:?}");
            } else {
                assert!(
                    matches!(verified, Err(PkiError::Untrusted(_))),
                    "{now}: {verified:?}"
                );
            }
        }
    }

    /// The verifier remembers a certificate's CA signature, never its validity.
    #[test]
    fn a_remembered_certificate_is_still_held_to_its_validity_and_a_stranger_is_never_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let ca = new_ca(dir.path(), "fed");
        let ca_der = der(ca.cert_pem());
        let (ca_from, ca_until) = validity_of(&parse_cert(&ca_der).unwrap());
        let at = |t: i64| OffsetDateTime::from_unix_timestamp(t).unwrap();
        let verifier = ProviderCertVerifier::new(ca_der.to_vec()).unwrap();

        let edge = ca
            .issue_provider_with_validity("edge", &[], at(ca_from + 100), at(ca_from + 200))
            .unwrap();
        let edge = der(&edge.cert_pem);
        assert_eq!(
            verifier.verify(&edge, ca_from + 150).unwrap(),
            provider_identity(&edge).unwrap()
        );
        assert!(matches!(
            verifier.verify(&edge, ca_from + 99),
            Err(PkiError::NotYetValid { .. })
        ));
        assert!(matches!(
            verifier.verify(&edge, ca_from + 201),
            Err(PkiError::Expired { .. })
        ));

        let wide = ca
            .issue_provider_with_validity("wide", &[], at(ca_from - 1000), at(ca_until + 1000))
            .unwrap();
        let wide = der(&wide.cert_pem);
        assert!(verifier.verify(&wide, ca_from).is_ok());
        for now in [ca_from - 1, ca_until + 1] {
            assert!(matches!(
                verifier.verify(&wide, now),
                Err(PkiError::Untrusted(_))
            ));
        }

        let other = new_ca(dir.path(), "other");
        let stranger = other.issue_provider("edge", &[], 30).unwrap();
        let stranger = der(&stranger.cert_pem);
        for _ in 0..2 {
            assert!(matches!(
                verifier.verify(&stranger, ca_from + 150),
                Err(PkiError::Untrusted(_))
            ));
        }
    }

    #[test]
    fn fingerprints_are_64_lowercase_hex_digits() {
        let good = "0123456789abcdef".repeat(4);
        assert!(is_sha256_hex(&good));
        assert!(!is_sha256_hex(&good[..63]));
        assert!(!is_sha256_hex(&format!("{good}0")));
        assert!(!is_sha256_hex(&good.to_uppercase()));
        for bad in ['g', '/', ':', '`', 'G', '@'] {
            let text = format!("{}{bad}", &good[..63]);
            assert!(!is_sha256_hex(&text), "{text}");
        }
        assert_eq!(certificate_fingerprint(b"").len(), 64);
        assert!(is_sha256_hex(&certificate_fingerprint(b"anything")));
        let dir = tempfile::tempdir().unwrap();
        let ca = new_ca(dir.path(), "fed");
        assert_eq!(
            pem_fingerprint(ca.cert_pem()).unwrap(),
            certificate_fingerprint(&der(ca.cert_pem()))
        );
        assert!(matches!(
            pem_fingerprint("no pem"),
            Err(PkiError::BadPem { .. })
        ));
    }

    /// Serials are 16 bytes whose DER integer is positive with no leading zero byte: the top
    /// bit clear, the next one set, whatever the random bytes were.
    #[test]
    fn serials_are_positive_sixteen_byte_integers() {
        for _ in 0..64 {
            let serial = random_serial().unwrap().to_bytes();
            assert_eq!(serial.len(), 16);
            assert_eq!(serial[0] & 0xc0, 0x40, "{serial:02x?}");
        }
    }

    #[test]
    fn write_new_creates_only_and_says_why_it_could_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        write_new(&path, b"first", 0o600).unwrap();
        assert!(matches!(
            write_new(&path, b"second", 0o600),
            Err(PkiError::Exists(p)) if p == path
        ));
        assert_eq!(fs::read(&path).unwrap(), b"first");
        let nowhere = dir.path().join("no-such-dir").join("secret");
        assert!(matches!(
            write_new(&nowhere, b"x", 0o600),
            Err(PkiError::Write { path: p, .. }) if p == nowhere
        ));
    }

    #[test]
    fn certificates_from_another_ca_are_untrusted() {
        let dir = tempfile::tempdir().unwrap();
        let ours = new_ca(dir.path(), "ours");
        let theirs = new_ca(dir.path(), "theirs");
        let issued = theirs.issue_provider("mallory", &[], 30).unwrap();
        assert!(matches!(
            verify_provider_cert(&der(&issued.cert_pem), &der(ours.cert_pem()), unix_now()),
            Err(PkiError::Untrusted(_))
        ));

        // Same name as our CA, different key: the signature check catches it.
        let twin_dir = tempfile::tempdir().unwrap();
        let twin = new_ca(twin_dir.path(), "ours");
        let issued = twin.issue_provider("mallory", &[], 30).unwrap();
        assert!(matches!(
            verify_provider_cert(&der(&issued.cert_pem), &der(ours.cert_pem()), unix_now()),
            Err(PkiError::Untrusted(reason)) if reason.contains("signature")
        ));
    }

    #[test]
    fn signatures_round_trip_and_detect_tampering() {
        let dir = tempfile::tempdir().unwrap();
        let ca = new_ca(dir.path(), "fed");
        let issued = ca.issue_provider("acme", &[], 30).unwrap();
        let provider_key = SigningKey::from_pem(&issued.key_pem).unwrap();
        let cases = [
            (der(ca.cert_pem()), ca.sign(b"discovery dict").unwrap()),
            (
                der(&issued.cert_pem),
                provider_key.sign(b"discovery dict").unwrap(),
            ),
        ];
        for (cert, signature) in &cases {
            verify_signature(cert, b"discovery dict", signature).unwrap();
            assert!(matches!(
                verify_signature(cert, b"discovery dicT", signature),
                Err(PkiError::BadSignature)
            ));
            let mut flipped = signature.clone();
            let last = flipped.len() - 1;
            flipped[last] ^= 1;
            assert!(matches!(
                verify_signature(cert, b"discovery dict", &flipped),
                Err(PkiError::BadSignature)
            ));
        }
        // The CA's signature does not verify against the provider's key.
        assert!(matches!(
            verify_signature(&cases[1].0, b"discovery dict", &cases[0].1),
            Err(PkiError::BadSignature)
        ));
        assert!(matches!(
            SigningKey::from_pem("garbage"),
            Err(PkiError::BadPem { .. })
        ));
    }

    #[test]
    fn pem_helpers() {
        let dir = tempfile::tempdir().unwrap();
        let ca = new_ca(dir.path(), "fed");
        let issued = ca.issue_provider("acme", &[], 30).unwrap();
        let chain_path = dir.path().join("chain.pem");
        let key_path = dir.path().join("acme.key");
        fs::write(&chain_path, format!("{}{}", issued.cert_pem, ca.cert_pem())).unwrap();
        fs::write(&key_path, &issued.key_pem).unwrap();
        let chain = load_certs(&chain_path).unwrap();
        assert_eq!(chain.len(), 2);
        assert!(matches!(load_key(&key_path), Ok(PrivateKeyDer::Pkcs8(_))));
        assert!(matches!(
            load_certs(&key_path),
            Err(PkiError::BadPem { what, .. }) if what == key_path.display().to_string()
        ));
        assert!(matches!(
            load_key(&chain_path),
            Err(PkiError::BadPem { .. })
        ));
        assert!(matches!(certs_from_pem(""), Err(PkiError::BadPem { .. })));
    }
}
