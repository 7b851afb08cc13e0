//! Endpoints: registration with a provisioning code, look-ups, revocation.

use super::sql::{parameter_list, query, Row};

use super::records::EndpointRecord;
use super::{Db, StoreError, StoreResult};
use crate::shared::now_ms;

/// What the fingerprint column of a SIP account's gateway endpoint starts with: it has no
/// certificate, and rings only while a phone of the account is registered.
pub(super) const GATEWAY_FINGERPRINT: &str = "sip-gateway:";

impl Db {
    /// Whether `code_hash` is an unexpired provisioning code of the user: checked before any
    /// certificate is signed; [`Db::register_endpoint`] consumes it.
    pub async fn provisioning_code_is_valid(
        &self,
        code_hash: &str,
        user_id: &str,
    ) -> StoreResult<bool> {
        Ok(query(
            "SELECT 1 FROM provisioning_codes WHERE code_hash = $1 AND user_id = $2 AND expires_at > $3",
        )
        .bind(code_hash)
        .bind(user_id)
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await?
        .is_some())
    }

    /// Consumes the provisioning code and stores the endpoint, atomically: a code registers one
    /// endpoint, and a failed registration leaves the code usable.
    pub async fn register_endpoint(
        &self,
        code_hash: &str,
        endpoint: &EndpointRecord,
        cert_pem: &str,
    ) -> StoreResult<bool> {
        let mut tx = self.begin_write().await?;
        let consumed = query(
            "DELETE FROM provisioning_codes WHERE code_hash = $1 AND user_id = $2 AND expires_at > $3",
        )
        .bind(code_hash)
        .bind(&endpoint.user_id)
        .bind(now_ms())
        .execute(&mut tx)
        .await?
        .rows_affected();
        if consumed == 0 {
            return Ok(false);
        }
        let capabilities =
            serde_json::to_string(&endpoint.capabilities).expect("capabilities serialize");
        query(
            "INSERT INTO endpoints (id, user_id, name, push_token, capabilities, cert_pem, \
             cert_fingerprint, cert_not_after, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&endpoint.id)
        .bind(&endpoint.user_id)
        .bind(&endpoint.name)
        .bind(&endpoint.push_token)
        .bind(capabilities)
        .bind(cert_pem)
        .bind(&endpoint.cert_fingerprint)
        .bind(endpoint.cert_not_after)
        .bind(endpoint.created_at)
        .execute(&mut tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// The active endpoint holding the certificate with this SHA-256 fingerprint, and its
    /// user's URIs in order: one query, as every endpoint request needs both.
    pub async fn endpoint_by_fingerprint(
        &self,
        fingerprint: &str,
    ) -> StoreResult<Option<(EndpointRecord, Vec<String>)>> {
        let rows = query(format!(
            "SELECT e.*, u.uri FROM (SELECT {ENDPOINT_COLUMNS} FROM endpoints \
             WHERE cert_fingerprint = $1 AND revoked_at IS NULL) e \
             LEFT JOIN user_uris u ON u.user_id = e.user_id ORDER BY u.uri"
        ))
        .bind(fingerprint)
        .fetch_all(&self.pool)
        .await?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let endpoint = endpoint_from_row(first)?;
        let uris = rows
            .iter()
            .filter_map(|row| row.get::<Option<String>>(9))
            .collect();
        Ok(Some((endpoint, uris)))
    }

    /// Active endpoints reached by a URI, oldest first: a SIP account's gateway endpoint only
    /// while a phone of the account is registered (there is nothing to ring otherwise).
    pub async fn endpoints_for_uri(&self, uri: &str) -> StoreResult<Vec<EndpointRecord>> {
        let rows = query(format!(
            "SELECT {ENDPOINT_COLUMNS} FROM endpoints WHERE revoked_at IS NULL AND user_id = \
             (SELECT user_id FROM user_uris WHERE uri = $1) \
             AND (cert_fingerprint NOT LIKE '{GATEWAY_FINGERPRINT}%' OR EXISTS (SELECT 1 FROM sip_contacts c \
             JOIN sip_accounts a ON a.aor = c.aor WHERE a.endpoint_id = endpoints.id \
             AND c.expires_at > $2)) ORDER BY created_at, id"
        ))
        .bind(uri)
        .bind(now_ms())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(endpoint_from_row).collect()
    }

    pub async fn endpoints_of_user(&self, user_id: &str) -> StoreResult<Vec<EndpointRecord>> {
        let rows = query(format!(
            "SELECT {ENDPOINT_COLUMNS} FROM endpoints WHERE user_id = $1 ORDER BY created_at, id"
        ))
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(endpoint_from_row).collect()
    }

    pub async fn endpoint(&self, endpoint_id: &str) -> StoreResult<Option<EndpointRecord>> {
        let row = query(format!(
            "SELECT {ENDPOINT_COLUMNS} FROM endpoints WHERE id = $1 AND revoked_at IS NULL"
        ))
        .bind(endpoint_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(endpoint_from_row).transpose()
    }

    /// Of `endpoint_ids`, those that exist and are not revoked. Each call is one statement,
    /// so callers pass at most a few hundred.
    pub async fn active_among(&self, endpoint_ids: &[String]) -> StoreResult<Vec<String>> {
        if endpoint_ids.is_empty() {
            return Ok(Vec::new());
        }
        let placeholders = parameter_list(endpoint_ids.len());
        let sql =
            format!("SELECT id FROM endpoints WHERE revoked_at IS NULL AND id IN ({placeholders})");
        let mut statement = query(sql);
        for id in endpoint_ids {
            statement = statement.bind(id);
        }
        Ok(statement
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    pub async fn endpoint_is_active(&self, endpoint_id: &str) -> StoreResult<bool> {
        Ok(
            query("SELECT 1 FROM endpoints WHERE id = $1 AND revoked_at IS NULL")
                .bind(endpoint_id)
                .fetch_optional(&self.pool)
                .await?
                .is_some(),
        )
    }

    pub async fn revoke_endpoint(&self, endpoint_id: &str) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        let exists = query("SELECT revoked_at FROM endpoints WHERE id = $1")
            .bind(endpoint_id)
            .fetch_optional(&mut tx)
            .await?;
        if exists.is_none() {
            return Err(StoreError::NotFound(format!("no endpoint `{endpoint_id}`")));
        }
        query("UPDATE endpoints SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
            .bind(endpoint_id)
            .bind(now_ms())
            .execute(&mut tx)
            .await?;
        query("DELETE FROM pushes WHERE endpoint_id = $1")
            .bind(endpoint_id)
            .execute(&mut tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn count_active_endpoints(&self) -> StoreResult<i64> {
        Ok(
            query("SELECT COUNT(*) FROM endpoints WHERE revoked_at IS NULL")
                .fetch_one(&self.pool)
                .await?
                .get(0),
        )
    }
}

const ENDPOINT_COLUMNS: &str = "id, user_id, name, push_token, capabilities, cert_fingerprint, \
                                cert_not_after, created_at, revoked_at";

fn endpoint_from_row(row: &Row) -> StoreResult<EndpointRecord> {
    let capabilities: String = row.get(4);
    Ok(EndpointRecord {
        id: row.get(0),
        user_id: row.get(1),
        name: row.get(2),
        push_token: row.get(3),
        capabilities: serde_json::from_str(&capabilities)
            .map_err(|e| StoreError::Corrupt(format!("endpoint capabilities: {e}")))?,
        cert_fingerprint: row.get(5),
        cert_not_after: row.get(6),
        created_at: row.get(7),
        revoked_at: row.get(8),
    })
}
