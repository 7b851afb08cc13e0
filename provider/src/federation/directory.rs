//! The discovery dictionary in force: fetched from the bootstrap URI at start-up and every
//! `federation.directory_refresh_seconds`, verified against the federation CA, kept on disk
//! (`<data_dir>/directory.plist`) so a restart while the bootstrap URI is unreachable still
//! knows the federation.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use switchyard_protocol::dict::{Dict, Encoding};
use switchyard_protocol::discovery::{Directory, DiscoveryError};

use super::identity::{unix_now, Identity};

#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("fetching {uri}: {message}")]
    Fetch { uri: String, message: String },
    #[error("the dictionary from {uri} is refused: {source}")]
    Refused { uri: String, source: DiscoveryError },
    #[error("saving {}: {source}", path.display())]
    Save {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What changed between two directories.
#[derive(Debug, Default)]
pub struct MemberChanges {
    pub added: Vec<String>,
    pub removed: Vec<String>,
}

#[derive(Default)]
struct Inner {
    directory: Option<Arc<Directory>>,
    /// The highest version ever installed or found saved, even if expired since: an older
    /// dictionary is a rollback whatever is in force now.
    floor: Option<u64>,
    last_fetch_ms: Option<i64>,
    last_error: Option<String>,
}

pub struct DirectoryCell {
    saved_path: PathBuf,
    inner: RwLock<Inner>,
}

impl DirectoryCell {
    pub fn new(data_dir: &Path) -> Self {
        DirectoryCell {
            saved_path: data_dir.join("directory.plist"),
            inner: RwLock::new(Inner::default()),
        }
    }

    pub fn current(&self) -> Option<Arc<Directory>> {
        self.inner.read().expect("directory lock").directory.clone()
    }

    /// (last successful fetch in Unix ms, last error).
    pub fn status(&self) -> (Option<i64>, Option<String>) {
        let inner = self.inner.read().expect("directory lock");
        (inner.last_fetch_ms, inner.last_error.clone())
    }

    /// Starts from the copy saved by an earlier run, if it still verifies and has not expired.
    pub fn load_saved(&self, identity: &Identity) -> MemberChanges {
        let Ok(bytes) = std::fs::read(&self.saved_path) else {
            return MemberChanges::default();
        };
        if let Some(version) = saved_version(&bytes, &identity.ca_der) {
            let mut inner = self.inner.write().expect("directory lock");
            inner.floor = inner.floor.max(Some(version));
        }
        let verified = Dict::decode(&bytes, Encoding::Plist)
            .map_err(DiscoveryError::from)
            .and_then(|envelope| Directory::verify(&envelope, &identity.ca_der, unix_now(), None));
        match verified {
            Ok(directory) => {
                tracing::info!(
                    version = directory.version,
                    members = directory.members.len(),
                    "using the saved discovery dictionary until the bootstrap URI answers"
                );
                self.install(directory)
            }
            Err(e) => {
                tracing::warn!(path = %self.saved_path.display(), error = %e, "saved discovery dictionary not usable");
                MemberChanges::default()
            }
        }
    }

    /// Fetches, verifies, saves and installs the dictionary at `uri`.
    pub async fn fetch(
        &self,
        identity: &Identity,
        uri: &str,
    ) -> Result<MemberChanges, DirectoryError> {
        let result: Result<Directory, DirectoryError> = async {
            let (directory, envelope) = self.fetch_inner(identity, uri).await?;
            // Saved before it is used, so a restart never runs on an older list than this run did.
            std::fs::create_dir_all(self.saved_path.parent().unwrap_or(Path::new(".")))
                .and_then(|_| write_atomically(&self.saved_path, &envelope.encode(Encoding::Plist)))
                .map_err(|source| DirectoryError::Save {
                    path: self.saved_path.clone(),
                    source,
                })?;
            Ok(directory)
        }
        .await;
        let mut inner = self.inner.write().expect("directory lock");
        match &result {
            Ok(_) => {
                inner.last_fetch_ms = Some(crate::shared::now_ms());
                inner.last_error = None;
            }
            Err(e) => inner.last_error = Some(e.to_string()),
        }
        drop(inner);
        Ok(self.install(result?))
    }

    async fn fetch_inner(
        &self,
        identity: &Identity,
        uri: &str,
    ) -> Result<(Directory, Dict), DirectoryError> {
        let fetch_error = |message: String| DirectoryError::Fetch {
            uri: uri.to_string(),
            message,
        };
        let response = identity
            .http
            .get(uri)
            .header(reqwest::header::ACCEPT, Encoding::Plist.content_type())
            .send()
            .await
            .map_err(|e| fetch_error(error_chain(&e)))?;
        if !response.status().is_success() {
            return Err(fetch_error(format!("HTTP {}", response.status())));
        }
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = response
            .bytes()
            .await
            .map_err(|e| fetch_error(error_chain(&e)))?;
        let refused = |source: DiscoveryError| DirectoryError::Refused {
            uri: uri.to_string(),
            source,
        };
        let encoding =
            Encoding::from_content_type(content_type.as_deref()).map_err(|e| refused(e.into()))?;
        let envelope = Dict::decode(&body, encoding).map_err(|e| refused(e.into()))?;
        let known = {
            let inner = self.inner.read().expect("directory lock");
            inner.floor.max(inner.directory.as_ref().map(|d| d.version))
        };
        let directory =
            Directory::verify(&envelope, &identity.ca_der, unix_now(), known).map_err(refused)?;
        Ok((directory, envelope))
    }

    fn install(&self, directory: Directory) -> MemberChanges {
        let mut inner = self.inner.write().expect("directory lock");
        let old: Vec<String> = inner
            .directory
            .as_ref()
            .map(|d| d.members.iter().map(|m| m.provider_id.clone()).collect())
            .unwrap_or_default();
        let new: Vec<String> = directory
            .members
            .iter()
            .map(|m| m.provider_id.clone())
            .collect();
        let changes = MemberChanges {
            added: new.iter().filter(|id| !old.contains(id)).cloned().collect(),
            removed: old.iter().filter(|id| !new.contains(id)).cloned().collect(),
        };
        if inner.directory.as_ref().map(|d| d.version) != Some(directory.version) {
            tracing::info!(
                version = directory.version,
                members = directory.members.len(),
                added = ?changes.added,
                removed = ?changes.removed,
                "discovery dictionary installed"
            );
        }
        inner.floor = inner.floor.max(Some(directory.version));
        inner.directory = Some(Arc::new(directory));
        changes
    }

    /// Drops the directory in force once it expires: an expired list of members is not trusted.
    pub fn expire(&self, now: i64) -> MemberChanges {
        let mut inner = self.inner.write().expect("directory lock");
        match &inner.directory {
            Some(d) if now >= d.expires => {
                tracing::error!(
                    version = d.version,
                    "the discovery dictionary expired and no newer one could be fetched; federation is suspended"
                );
                let removed = d.members.iter().map(|m| m.provider_id.clone()).collect();
                inner.directory = None;
                MemberChanges {
                    added: Vec::new(),
                    removed,
                }
            }
            _ => MemberChanges::default(),
        }
    }
}

/// The version of a saved dictionary whose signature verifies, expired or not.
fn saved_version(bytes: &[u8], ca_der: &[u8]) -> Option<u64> {
    let envelope = Dict::decode(bytes, Encoding::Plist).ok()?;
    let document = envelope.data("document").ok()?;
    let signature = envelope.data("signature").ok()?;
    switchyard_protocol::pki::verify_signature(ca_der, &document, &signature).ok()?;
    let members = Dict::decode(&document, Encoding::Plist).ok()?;
    u64::try_from(members.int("version").ok()?).ok()
}

/// reqwest's Display omits the cause (the TLS alert, the refused connection); operators need it.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)
}
