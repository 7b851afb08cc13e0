//! The registry: users, their canonical URIs, provisioning codes and endpoint registration.

use switchyard_protocol::capabilities::Capabilities;
use switchyard_protocol::uri::Canonicalizer;

use crate::config::RegistryConfig;
use crate::db::records::{EndpointRecord, NewUser, User};
use crate::db::{Db, StoreError};
use crate::federation::Federation;
use crate::pki::{EndpointCa, PkiError};
use crate::push::PushHub;
use crate::shared::now_ms;
use crate::shared::random_token;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("the provisioning code is invalid, used or expired, or does not belong to this URI")]
    InvalidCode,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Pki(#[from] PkiError),
}

fn invalid(field: &str, message: impl Into<String>) -> RegistryError {
    RegistryError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

pub fn hash_code(code: &str) -> String {
    hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        code.trim().as_bytes(),
    ))
}

/// Canonicalizes a list of URIs, naming the first bad one; duplicates after canonicalization collapse.
pub fn canonicalize_all(
    canonicalizer: &Canonicalizer,
    uris: &[String],
) -> Result<Vec<String>, RegistryError> {
    let mut out: Vec<String> = Vec::with_capacity(uris.len());
    for (i, uri) in uris.iter().enumerate() {
        let canonical = canonicalizer
            .canonicalize(uri)
            .map_err(|e| invalid(&format!("uris[{i}]"), e.to_string()))?
            .into_string();
        if !out.contains(&canonical) {
            out.push(canonical);
        }
    }
    Ok(out)
}

/// A new user's id: a UUID of version 7, which starts with its creation time, so that new
/// users go to the end of the indexes keyed by user id (the users' key, the URIs' and
/// endpoints' user columns, the URIs' foreign key) instead of to a random page of each. A bulk
/// import of 1,000,000 users spent most of its writer's time on those random pages.
pub fn new_user_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

pub fn validate_display_name(name: &str) -> Result<(), RegistryError> {
    if name.chars().count() > 200 || name.chars().any(char::is_control) {
        return Err(invalid(
            "display_name",
            "at most 200 characters, no control characters",
        ));
    }
    Ok(())
}

/// The registry's operations over the parts of the provider they use (built by
/// `App::registry`). URI changes are told to the federation, which rebuilds its filter.
pub struct Registry<'a> {
    pub db: &'a Db,
    pub hub: &'a PushHub,
    pub ca: &'a EndpointCa,
    pub canonicalizer: &'a Canonicalizer,
    pub config: &'a RegistryConfig,
    pub federation: Option<&'a Federation>,
}

pub struct Registration {
    pub endpoint: EndpointRecord,
    pub certificate_pem: String,
    pub uris: Vec<String>,
}

impl Registry<'_> {
    /// `uri` in canonical form, or the field error naming `field`.
    fn canonical(&self, field: &str, uri: &str) -> Result<String, RegistryError> {
        Ok(self
            .canonicalizer
            .canonicalize(uri)
            .map_err(|e| invalid(field, e.to_string()))?
            .into_string())
    }

    /// Gives the user another URI; returns it in canonical form.
    pub async fn add_uri(&self, user_id: &str, uri: &str) -> Result<String, RegistryError> {
        let uri = self.canonical("uri", uri)?;
        self.db.add_uri(user_id, &uri).await?;
        self.uris_changed(1);
        Ok(uri)
    }

    /// Takes a URI from whoever holds it; returns it in canonical form.
    pub async fn remove_uri(&self, uri: &str) -> Result<String, RegistryError> {
        let uri = self.canonical("uri", uri)?;
        self.db.remove_uri(&uri).await?;
        self.uris_changed(1);
        Ok(uri)
    }

    /// Tells the federation that `uris` URIs were added or removed, so its filter is rebuilt soon.
    pub fn uris_changed(&self, uris: u64) {
        if let Some(federation) = self.federation {
            federation.registry_changed(uris);
        }
    }

    pub async fn add_user(
        &self,
        display_name: &str,
        uris: &[String],
    ) -> Result<User, RegistryError> {
        validate_display_name(display_name)?;
        if uris.is_empty() {
            return Err(invalid("uris", "a user needs at least one URI"));
        }
        let uris = canonicalize_all(self.canonicalizer, uris)?;
        let id = new_user_id();
        self.db
            .create_user(&NewUser {
                id: &id,
                display_name,
                uris: &uris,
                created_at: now_ms(),
            })
            .await?;
        self.uris_changed(uris.len() as u64);
        Ok(self.db.user(&id).await?.expect("user just created"))
    }

    /// Makes a one-time code with which one endpoint of the user can register.
    pub async fn issue_provisioning_code(
        &self,
        user_id: &str,
        ttl_seconds: Option<u64>,
    ) -> Result<(String, i64), RegistryError> {
        let ttl = ttl_seconds.unwrap_or(self.config.provisioning_code_ttl_seconds);
        if ttl == 0 || ttl > 365 * 24 * 3600 {
            return Err(invalid("ttl_seconds", "between 1 second and 365 days"));
        }
        let code = random_token(15);
        let expires_at = now_ms() + (ttl * 1000) as i64;
        self.db
            .insert_provisioning_code(user_id, &hash_code(&code), expires_at)
            .await?;
        Ok((code, expires_at))
    }

    /// Registers an endpoint: checks the code against the URI's user, issues the identity
    /// certificate for the key in `key_request`, mints the push token.
    pub async fn register_endpoint(
        &self,
        uri: &str,
        code: &str,
        key_request: &str,
        name: &str,
        capabilities: Capabilities,
    ) -> Result<Registration, RegistryError> {
        let uri = self.canonical("uri", uri)?;
        if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
            return Err(invalid("name", "1-100 characters, no control characters"));
        }
        capabilities
            .validate()
            .map_err(|e| invalid("capabilities", e.to_string()))?;
        let user_id = self
            .db
            .user_id_for_uri(&uri)
            .await?
            .ok_or(RegistryError::InvalidCode)?;
        // The code is checked before the key request is read or anything signed: without a valid
        // code nobody gets the CA to do work. It is consumed, atomically, with the insert below.
        let code_hash = hash_code(code);
        if !self
            .db
            .provisioning_code_is_valid(&code_hash, &user_id)
            .await?
        {
            return Err(RegistryError::InvalidCode);
        }
        // The URI the endpoint registered with comes first: it is the one it calls from by default.
        let mut uris = self.db.uris_of(&user_id).await?;
        uris.sort_by_key(|u| *u != uri);
        let endpoint_id = uuid::Uuid::new_v4().to_string();
        let issued = self
            .ca
            .issue_endpoint(
                key_request,
                &endpoint_id,
                &uris,
                self.config.endpoint_certificate_days,
            )
            .map_err(|e| match e {
                PkiError::BadRequest(m) => invalid("csr", m),
                other => other.into(),
            })?;
        let endpoint = EndpointRecord {
            id: endpoint_id,
            user_id,
            name: name.to_string(),
            push_token: random_token(24),
            capabilities,
            cert_fingerprint: issued.fingerprint,
            cert_not_after: issued.not_after,
            created_at: now_ms(),
            revoked_at: None,
        };
        if !self
            .db
            .register_endpoint(&code_hash, &endpoint, &issued.pem)
            .await?
        {
            return Err(RegistryError::InvalidCode);
        }
        self.refresh_endpoint_gauge().await;
        Ok(Registration {
            endpoint,
            certificate_pem: issued.pem,
            uris,
        })
    }

    /// Revokes an endpoint: its next request is refused and its open push channels close.
    pub async fn revoke_endpoint(&self, endpoint_id: &str) -> Result<(), RegistryError> {
        self.db.revoke_endpoint(endpoint_id).await?;
        self.hub.revoke(endpoint_id);
        self.refresh_endpoint_gauge().await;
        Ok(())
    }

    pub async fn remove_user(&self, user_id: &str) -> Result<(), RegistryError> {
        for endpoint in self.db.delete_user(user_id).await? {
            self.hub.revoke(&endpoint);
        }
        self.uris_changed(1);
        self.refresh_endpoint_gauge().await;
        Ok(())
    }

    /// Sets `switchyard_registered_endpoints` from the database (also done every minute, for changes
    /// made by other replicas).
    pub async fn refresh_endpoint_gauge(&self) {
        match self.db.count_active_endpoints().await {
            Ok(n) => metrics::gauge!("switchyard_registered_endpoints").set(n as f64),
            Err(e) => tracing::warn!(error = %e, "counting endpoints failed"),
        }
    }
}
