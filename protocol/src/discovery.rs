//! The discovery dictionary: the federation's list of member providers, published by the
//! managing entity at a bootstrap URI and signed with the federation key.
//!
//! Wire form (a dictionary, the *envelope*):
//!
//! | key | type | meaning |
//! | --- | --- | --- |
//! | `algorithm` | string | `ecdsa-p256-sha256` |
//! | `document` | data | the members dictionary, encoded as an XML property list: exactly the bytes signed |
//! | `signature` | data | ECDSA P-256 / SHA-256 signature (ASN.1 DER) of `document` by the federation CA key |
//!
//! The signature is detached from the document's content: verifiers check the bytes as received
//! and only then decode them, so re-encoding can never change what was signed. The members
//! dictionary holds `federation` (string), `version` (integer, increasing with each publication),
//! `issued-at` and `expires` (Unix seconds) and `members`, an array of dictionaries with
//! `provider-id`, `display-name`, `base-uri` (`https://…`), `relay-addresses` (array of
//! `host:port` strings), `certificate-sha256` (lowercase hex SHA-256 of the provider's
//! federation certificate, DER) and `endpoint-ca-sha256` (the same of the CA certificate that
//! issues its endpoints' identity certificates: the pin every other member checks the endpoint
//! CA it sends in a Forward against, so the DTLS check of a call ends at a CA the federation
//! names, never at one a member chose), and optionally `federation-relay`, the provider id of the member
//! whose relay serves the calls of providers configured to use a federation-wide relay; that
//! member must list relay addresses.

use std::collections::HashSet;

use crate::dict::{Dict, DictError, Encoding, Value};
use crate::pki::{self, FederationCa, PkiError};

pub const SIGNATURE_ALGORITHM: &str = "ecdsa-p256-sha256";

/// How far in the future an `issued-at` may be, for clocks that disagree a little.
const CLOCK_SKEW_SECONDS: i64 = 300;

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("discovery dictionary: {0}")]
    Field(#[from] DictError),
    #[error("discovery dictionary: {0}")]
    Invalid(String),
    #[error("discovery dictionary is not signed with `{SIGNATURE_ALGORITHM}`")]
    UnsupportedAlgorithm,
    #[error("discovery dictionary signature does not verify against the federation certificate")]
    BadSignature,
    #[error("discovery dictionary expired at {expires} (now {now})")]
    Expired { expires: i64, now: i64 },
    #[error("discovery dictionary is issued in the future ({issued_at}, now {now})")]
    NotYetIssued { issued_at: i64, now: i64 },
    #[error(
        "discovery dictionary version {version} is older than the version {known} already in use"
    )]
    Rollback { version: u64, known: u64 },
    #[error(transparent)]
    Pki(#[from] PkiError),
}

/// One member provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub provider_id: String,
    pub display_name: String,
    pub base_uri: String,
    pub relay_addresses: Vec<String>,
    pub certificate_sha256: String,
    /// The SHA-256 of the member's endpoint CA certificate (DER), lowercase hex.
    pub endpoint_ca_sha256: String,
}

/// The federation's member list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directory {
    pub federation: String,
    pub version: u64,
    pub issued_at: i64,
    pub expires: i64,
    pub members: Vec<Member>,
    /// The member whose relay serves calls federation-wide, when the federation runs one.
    pub federation_relay: Option<String>,
    /// The highest false-positive rate (parts per million, from the share of bits set) a
    /// member's filter may imply; members refuse a filter above it. None: each member's own
    /// configured limit.
    pub filter_max_false_positive_ppm: Option<u32>,
}

/// The bound on [`Directory::filter_max_false_positive_ppm`]: a filter that tests half of all
/// URIs present is no filter.
pub const MAX_FALSE_POSITIVE_PPM: u32 = 500_000;

fn invalid(message: impl Into<String>) -> DiscoveryError {
    DiscoveryError::Invalid(message.into())
}

fn non_negative(dict: &Dict, key: &str) -> Result<i64, DiscoveryError> {
    let value = dict.int(key)?;
    if value < 0 {
        return Err(invalid(format!("`{key}` must not be negative")));
    }
    Ok(value)
}

impl Member {
    fn to_dict(&self) -> Dict {
        Dict::new()
            .with("provider-id", self.provider_id.as_str())
            .with("display-name", self.display_name.as_str())
            .with("base-uri", self.base_uri.as_str())
            .with("relay-addresses", self.relay_addresses.clone())
            .with("certificate-sha256", self.certificate_sha256.as_str())
            .with("endpoint-ca-sha256", self.endpoint_ca_sha256.as_str())
    }

    fn from_dict(dict: &Dict, index: usize) -> Result<Member, DiscoveryError> {
        let at = |message: String| invalid(format!("members[{index}]: {message}"));
        let member = Member {
            provider_id: dict.str("provider-id")?.to_string(),
            display_name: dict.str("display-name")?.to_string(),
            base_uri: dict.str("base-uri")?.to_string(),
            relay_addresses: dict
                .opt_string_array("relay-addresses")?
                .unwrap_or_default(),
            certificate_sha256: dict.str("certificate-sha256")?.to_string(),
            endpoint_ca_sha256: dict.str("endpoint-ca-sha256")?.to_string(),
        };
        if !pki::valid_provider_id(&member.provider_id) {
            return Err(at(format!(
                "`{}` is not a valid provider id",
                member.provider_id
            )));
        }
        let host = member.base_uri.strip_prefix("https://").unwrap_or("");
        if host.is_empty()
            || host.starts_with('/')
            || member.base_uri.chars().any(char::is_whitespace)
        {
            return Err(at(format!(
                "base-uri `{}` must be an https:// URI with a host",
                member.base_uri
            )));
        }
        for (key, fingerprint) in [
            ("certificate-sha256", &member.certificate_sha256),
            ("endpoint-ca-sha256", &member.endpoint_ca_sha256),
        ] {
            if !pki::is_sha256_hex(fingerprint) {
                return Err(at(format!("{key} must be 64 lowercase hex digits")));
            }
        }
        for relay in &member.relay_addresses {
            match relay.rsplit_once(':') {
                Some((host, port))
                    if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {}
                _ => return Err(at(format!("relay address `{relay}` is not host:port"))),
            }
        }
        Ok(member)
    }
}

impl Directory {
    pub fn member(&self, provider_id: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.provider_id == provider_id)
    }

    pub fn to_dict(&self) -> Dict {
        let mut dict = match &self.federation_relay {
            Some(relay) => Dict::new().with("federation-relay", relay.as_str()),
            None => Dict::new(),
        };
        if let Some(ppm) = self.filter_max_false_positive_ppm {
            dict = dict.with("filter-max-false-positive-ppm", i64::from(ppm));
        }
        dict.with("federation", self.federation.as_str())
            .with("version", self.version as i64)
            .with("issued-at", self.issued_at)
            .with("expires", self.expires)
            .with(
                "members",
                Value::Array(
                    self.members
                        .iter()
                        .map(|m| Value::Dict(m.to_dict()))
                        .collect(),
                ),
            )
    }

    /// Reads and checks a members dictionary: field types, provider ids, URIs, fingerprints,
    /// unique ids, and `expires` after `issued-at`.
    pub fn from_dict(dict: &Dict) -> Result<Directory, DiscoveryError> {
        let mut members = Vec::new();
        let mut seen = HashSet::new();
        for (index, value) in dict.array("members")?.iter().enumerate() {
            let Value::Dict(entry) = value else {
                return Err(invalid(format!("members[{index}] must be a dictionary")));
            };
            let member = Member::from_dict(entry, index)?;
            if !seen.insert(member.provider_id.clone()) {
                return Err(invalid(format!(
                    "provider id `{}` is listed twice",
                    member.provider_id
                )));
            }
            members.push(member);
        }
        let directory = Directory {
            federation: dict.str("federation")?.to_string(),
            version: non_negative(dict, "version")? as u64,
            issued_at: non_negative(dict, "issued-at")?,
            expires: non_negative(dict, "expires")?,
            members,
            federation_relay: dict.opt_str("federation-relay")?.map(str::to_string),
            filter_max_false_positive_ppm: match dict.opt_int("filter-max-false-positive-ppm")? {
                None => None,
                Some(ppm) => Some(
                    u32::try_from(ppm)
                        .ok()
                        .filter(|ppm| (1..=MAX_FALSE_POSITIVE_PPM).contains(ppm))
                        .ok_or_else(|| {
                            invalid(format!(
                                "`filter-max-false-positive-ppm` must be 1-{MAX_FALSE_POSITIVE_PPM}"
                            ))
                        })?,
                ),
            },
        };
        if directory.expires <= directory.issued_at {
            return Err(invalid("`expires` must be after `issued-at`"));
        }
        if let Some(relay) = &directory.federation_relay {
            match directory.member(relay) {
                Some(member) if !member.relay_addresses.is_empty() => {}
                Some(_) => {
                    return Err(invalid(format!(
                        "federation-relay `{relay}` lists no relay addresses"
                    )))
                }
                None => {
                    return Err(invalid(format!(
                        "federation-relay `{relay}` is not a member"
                    )))
                }
            }
        }
        Ok(directory)
    }

    /// The signed envelope, ready to publish at the bootstrap URI.
    pub fn sign(&self, ca: &FederationCa) -> Result<Dict, DiscoveryError> {
        let document = self.to_dict().encode(Encoding::Plist);
        let signature = ca.sign(&document)?;
        Ok(Dict::new()
            .with("algorithm", SIGNATURE_ALGORITHM)
            .with("document", document)
            .with("signature", signature))
    }

    /// Verifies an envelope against the federation CA certificate (DER) and checks it is current
    /// at `now` (Unix seconds) and not older than `known_version`, the version already in use.
    pub fn verify(
        envelope: &Dict,
        federation_cert_der: &[u8],
        now: i64,
        known_version: Option<u64>,
    ) -> Result<Directory, DiscoveryError> {
        if envelope.str("algorithm")? != SIGNATURE_ALGORITHM {
            return Err(DiscoveryError::UnsupportedAlgorithm);
        }
        let document = envelope.data("document")?;
        let signature = envelope.data("signature")?;
        pki::verify_signature(federation_cert_der, &document, &signature)
            .map_err(|_| DiscoveryError::BadSignature)?;
        let directory = Directory::from_dict(&Dict::decode(&document, Encoding::Plist)?)?;
        if now >= directory.expires {
            return Err(DiscoveryError::Expired {
                expires: directory.expires,
                now,
            });
        }
        if directory.issued_at > now + CLOCK_SKEW_SECONDS {
            return Err(DiscoveryError::NotYetIssued {
                issued_at: directory.issued_at,
                now,
            });
        }
        if let Some(known) = known_version {
            if directory.version < known {
                return Err(DiscoveryError::Rollback {
                    version: directory.version,
                    known,
                });
            }
        }
        Ok(directory)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;

    const NOW: i64 = 1_800_000_000;

    fn ca(dir: &std::path::Path, name: &str) -> FederationCa {
        FederationCa::init(
            &dir.join(format!("{name}.pem")),
            &dir.join(format!("{name}.key")),
            name,
        )
        .unwrap()
    }

    fn der(ca: &FederationCa) -> Vec<u8> {
        CertificateDer::from_pem_slice(ca.cert_pem().as_bytes())
            .unwrap()
            .to_vec()
    }

    fn directory() -> Directory {
        Directory {
            federation: "test".into(),
            version: 7,
            issued_at: NOW - 10,
            expires: NOW + 3600,
            members: vec![Member {
                provider_id: "a.example".into(),
                display_name: "Provider A".into(),
                base_uri: "https://a.example:8443".into(),
                relay_addresses: vec!["a.example:3478".into()],
                certificate_sha256: "ab".repeat(32),
                endpoint_ca_sha256: "cd".repeat(32),
            }],
            federation_relay: None,
            filter_max_false_positive_ppm: None,
        }
    }

    #[test]
    fn the_filter_limit_is_signed_and_range_checked() {
        let limited = Directory {
            filter_max_false_positive_ppm: Some(10_000),
            ..directory()
        };
        for encoding in [Encoding::Plist, Encoding::Json] {
            let dict = Dict::decode(&limited.to_dict().encode(encoding), encoding).unwrap();
            assert_eq!(Directory::from_dict(&dict).unwrap(), limited);
        }
        for ppm in [0i64, -1, i64::from(MAX_FALSE_POSITIVE_PPM) + 1, i64::MAX] {
            let dict = directory()
                .to_dict()
                .with("filter-max-false-positive-ppm", ppm);
            let error = Directory::from_dict(&dict).unwrap_err().to_string();
            assert!(
                error.contains("filter-max-false-positive-ppm"),
                "{ppm}: {error}"
            );
        }
        let dict = directory()
            .to_dict()
            .with("filter-max-false-positive-ppm", "1%");
        assert!(Directory::from_dict(&dict).is_err());
    }

    #[test]
    fn signed_directory_verifies_in_both_encodings() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca(dir.path(), "fed");
        let envelope = directory().sign(&ca).unwrap();
        for encoding in [Encoding::Plist, Encoding::Json] {
            let received = Dict::decode(&envelope.encode(encoding), encoding).unwrap();
            let verified = Directory::verify(&received, &der(&ca), NOW, Some(7)).unwrap();
            assert_eq!(verified, directory());
            assert_eq!(
                verified.member("a.example").unwrap().display_name,
                "Provider A"
            );
        }
    }

    #[test]
    fn tampered_unsigned_foreign_expired_and_rolled_back_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca(dir.path(), "fed");
        let other = ca_other(dir.path());
        let envelope = directory().sign(&ca).unwrap();

        let mut tampered_doc = envelope.data("document").unwrap();
        let at = tampered_doc.iter().position(|b| *b == b'A').unwrap();
        tampered_doc[at] = b'B';
        let tampered = envelope.clone().with("document", tampered_doc);
        assert!(matches!(
            Directory::verify(&tampered, &der(&ca), NOW, None),
            Err(DiscoveryError::BadSignature)
        ));

        let unsigned = Dict::new()
            .with("algorithm", SIGNATURE_ALGORITHM)
            .with("document", envelope.data("document").unwrap());
        assert!(matches!(
            Directory::verify(&unsigned, &der(&ca), NOW, None),
            Err(DiscoveryError::Field(_))
        ));
        let wrong_algorithm = envelope.clone().with("algorithm", "none");
        assert!(matches!(
            Directory::verify(&wrong_algorithm, &der(&ca), NOW, None),
            Err(DiscoveryError::UnsupportedAlgorithm)
        ));
        assert!(matches!(
            Directory::verify(&envelope, &der(&other), NOW, None),
            Err(DiscoveryError::BadSignature)
        ));
        assert!(matches!(
            Directory::verify(&envelope, &der(&ca), NOW + 3600, None),
            Err(DiscoveryError::Expired { .. })
        ));
        assert!(matches!(
            Directory::verify(&envelope, &der(&ca), NOW - 1000, None),
            Err(DiscoveryError::NotYetIssued { .. })
        ));
        assert!(matches!(
            Directory::verify(&envelope, &der(&ca), NOW, Some(8)),
            Err(DiscoveryError::Rollback {
                version: 7,
                known: 8
            })
        ));
    }

    #[test]
    fn the_validity_window_holds_to_its_edges() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca(dir.path(), "fed");
        let envelope = directory().sign(&ca).unwrap();
        let verify = |now| Directory::verify(&envelope, &der(&ca), now, None);
        // Issued at NOW - 10, expiring at NOW + 3600, with 300 s of clock skew allowed.
        verify(NOW - 10 - CLOCK_SKEW_SECONDS).expect("issued exactly the skew ahead");
        assert!(matches!(
            verify(NOW - 11 - CLOCK_SKEW_SECONDS),
            Err(DiscoveryError::NotYetIssued { .. })
        ));
        verify(NOW + 3599).expect("the last second before it expires");
        assert!(matches!(
            verify(NOW + 3600),
            Err(DiscoveryError::Expired { .. })
        ));
    }

    #[test]
    fn member_fields_are_checked_to_their_edges() {
        let with_member = |change: &dyn Fn(&mut Member)| {
            let mut d = directory();
            change(&mut d.members[0]);
            Directory::from_dict(&d.to_dict())
        };
        for base_uri in ["https:///path", "https://a .example", "https://"] {
            assert!(
                with_member(&|m| m.base_uri = base_uri.into()).is_err(),
                "{base_uri}"
            );
        }
        for relay in [":3478", "a.example:0", "a.example:x", "a.example:65536"] {
            assert!(
                with_member(&|m| m.relay_addresses = vec![relay.into()]).is_err(),
                "{relay}"
            );
        }
        for relay in ["a.example:1", "a.example:65535", "[2001:db8::1]:3478"] {
            with_member(&|m| m.relay_addresses = vec![relay.into()]).expect(relay);
        }
        // Version and times may be 0, never negative.
        let zero = Directory {
            version: 0,
            issued_at: 0,
            ..directory()
        };
        assert_eq!(Directory::from_dict(&zero.to_dict()).unwrap(), zero);
        let negative = directory().to_dict().with("version", -1i64);
        assert!(Directory::from_dict(&negative).is_err());
    }

    fn ca_other(dir: &std::path::Path) -> FederationCa {
        ca(dir, "other")
    }

    #[test]
    fn malformed_members_are_refused_with_their_index() {
        let mut bad = directory();
        bad.members[0].base_uri = "http://a.example".into();
        assert!(Directory::from_dict(&bad.to_dict())
            .unwrap_err()
            .to_string()
            .contains("members[0]"));
        let mut bad = directory();
        bad.members[0].certificate_sha256 = "XYZ".into();
        assert!(Directory::from_dict(&bad.to_dict()).is_err());
        let mut bad = directory();
        bad.members[0].endpoint_ca_sha256 = "AB".repeat(32);
        assert!(Directory::from_dict(&bad.to_dict())
            .unwrap_err()
            .to_string()
            .contains("endpoint-ca-sha256"));
        let unpinned_member = directory().members[0]
            .to_dict()
            .iter()
            .filter(|(key, _)| *key != "endpoint-ca-sha256")
            .fold(Dict::new(), |dict, (key, value)| {
                dict.with(key, value.clone())
            });
        let unpinned = directory()
            .to_dict()
            .with("members", Value::Array(vec![Value::Dict(unpinned_member)]));
        assert!(Directory::from_dict(&unpinned).is_err());
        let mut bad = directory();
        bad.members[0].relay_addresses = vec!["nohost".into()];
        assert!(Directory::from_dict(&bad.to_dict()).is_err());
        let mut bad = directory();
        bad.members[0].provider_id = "bad id".into();
        assert!(Directory::from_dict(&bad.to_dict()).is_err());
        let mut bad = directory();
        bad.members.push(bad.members[0].clone());
        assert!(Directory::from_dict(&bad.to_dict())
            .unwrap_err()
            .to_string()
            .contains("twice"));
        let mut bad = directory();
        bad.federation_relay = Some("z.example".into());
        assert!(Directory::from_dict(&bad.to_dict())
            .unwrap_err()
            .to_string()
            .contains("not a member"));
        let mut bad = directory();
        bad.federation_relay = Some("a.example".into());
        bad.members[0].relay_addresses.clear();
        assert!(Directory::from_dict(&bad.to_dict())
            .unwrap_err()
            .to_string()
            .contains("no relay addresses"));
        let mut good = directory();
        good.federation_relay = Some("a.example".into());
        assert_eq!(Directory::from_dict(&good.to_dict()).unwrap(), good);
        let mut bad = directory();
        bad.expires = bad.issued_at;
        assert!(Directory::from_dict(&bad.to_dict()).is_err());
    }
}
