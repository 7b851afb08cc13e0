//! The members file from which `switchyard federation sign` makes the discovery dictionary.
//!
//! ```toml
//! federation = "demo"
//! version = 3            # increase with every publication; providers refuse older ones
//! valid_days = 7
//! federation_relay = "a.example"   # optional: the member whose relay serves federation-wide
//! filter_max_false_positive_ppm = 10000   # optional: members refuse a filter implying more
//!
//! [[member]]
//! provider_id = "a.example"
//! display_name = "Provider A"
//! base_uri = "https://a.example:8443"
//! relay_addresses = ["a.example:3478"]
//! certificate = "a.pem"  # its federation certificate; relative to this file
//! endpoint_ca = "a-endpoint-ca.pem"  # its endpoint CA (`<data_dir>/endpoint-ca.pem` there)
//! ```
//!
//! The directory pins both by their SHA-256: a member's Forwards must present exactly that
//! endpoint CA, so the DTLS check of a call ends at a CA the federation names.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use switchyard_protocol::discovery::{Directory, Member};
use switchyard_protocol::pki;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MembersFile {
    federation: String,
    version: u64,
    #[serde(default = "default_valid_days")]
    valid_days: u32,
    /// The member whose relay serves calls of providers using a federation-wide relay.
    #[serde(default)]
    federation_relay: Option<String>,
    /// The highest false-positive rate (per million) a member's filter may imply.
    #[serde(default)]
    filter_max_false_positive_ppm: Option<u32>,
    #[serde(default, rename = "member")]
    members: Vec<MemberEntry>,
}

fn default_valid_days() -> u32 {
    7
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MemberEntry {
    provider_id: String,
    display_name: String,
    base_uri: String,
    #[serde(default)]
    relay_addresses: Vec<String>,
    certificate: PathBuf,
    endpoint_ca: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum MembersError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// Reads the members file and each member's certificate, checking that every certificate names
/// the provider it is listed for; the directory is issued at `now` (Unix seconds).
pub fn directory_from_file(path: &Path, now: i64) -> Result<Directory, MembersError> {
    let invalid = |message: String| MembersError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|source| MembersError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let file: MembersFile = toml::from_str(&text).map_err(|e| invalid(e.message().to_string()))?;
    if file.valid_days == 0 {
        return Err(invalid("valid_days must be at least 1".into()));
    }
    let base = path.parent().unwrap_or(Path::new("."));
    let mut members = Vec::new();
    for entry in file.members {
        let cert_path = base.join(&entry.certificate);
        let certs = pki::load_certs(&cert_path).map_err(|e| invalid(e.to_string()))?;
        let identity = pki::provider_identity(&certs[0])
            .map_err(|e| invalid(format!("{}: {e}", cert_path.display())))?;
        if identity.provider_id != entry.provider_id {
            return Err(invalid(format!(
                "{} is the certificate of `{}`, not of `{}`",
                cert_path.display(),
                identity.provider_id,
                entry.provider_id
            )));
        }
        let ca_path = base.join(&entry.endpoint_ca);
        let endpoint_ca = pki::load_certs(&ca_path).map_err(|e| invalid(e.to_string()))?;
        members.push(Member {
            provider_id: entry.provider_id,
            display_name: entry.display_name,
            base_uri: entry.base_uri,
            relay_addresses: entry.relay_addresses,
            certificate_sha256: identity.sha256_fingerprint,
            endpoint_ca_sha256: pki::certificate_fingerprint(&endpoint_ca[0]),
        });
    }
    let directory = Directory {
        federation: file.federation,
        version: file.version,
        issued_at: now,
        expires: now + i64::from(file.valid_days) * 86_400,
        members,
        federation_relay: file.federation_relay,
        filter_max_false_positive_ppm: file.filter_max_false_positive_ppm,
    };
    // The same checks a provider makes on receipt, so nothing unverifiable is ever signed.
    Directory::from_dict(&directory.to_dict()).map_err(|e| invalid(e.to_string()))
}
