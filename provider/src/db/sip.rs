//! SIP accounts with their gateway endpoints, and the contacts phones register.

use super::sql::{query, Executor, Row};
use switchyard_protocol::capabilities::Capabilities;

use super::endpoints::GATEWAY_FINGERPRINT;
use super::records::{EndpointRecord, SipAccount, SipContact};
use super::{is_unique_violation, user_exists, Db, StoreError, StoreResult, WriteTx};
use crate::shared::now_ms;

impl Db {
    /// Stores the account with its gateway endpoint (made with `capabilities`), in one
    /// transaction; returns the endpoint.
    pub async fn add_sip_account(
        &self,
        account: &SipAccount,
        capabilities: Capabilities,
    ) -> StoreResult<EndpointRecord> {
        let mut tx = self.begin_write().await?;
        if !user_exists(&mut tx, &account.user_id).await? {
            return Err(StoreError::NotFound(format!(
                "no user `{}`",
                account.user_id
            )));
        }
        query(
            "INSERT INTO sip_accounts (aor, user_id, username, realm, ha1_md5, ha1_sha256, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&account.aor)
        .bind(&account.user_id)
        .bind(&account.username)
        .bind(&account.realm)
        .bind(&account.ha1_md5)
        .bind(&account.ha1_sha256)
        .bind(account.created_at)
        .execute(&mut tx)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Conflict(format!(
                    "`{}` or the digest username `{}` in realm `{}` already has a SIP account",
                    account.aor, account.username, account.realm
                ))
            } else {
                e
            }
        })?;
        let endpoint = gateway_endpoint(account, capabilities);
        insert_gateway(&mut tx, account, &endpoint).await?;
        tx.commit().await?;
        Ok(endpoint)
    }

    /// Gives every account without a gateway endpoint one; returns how many were made.
    pub async fn ensure_sip_gateways(&self, capabilities: &Capabilities) -> StoreResult<usize> {
        let rows = query(format!(
            "SELECT {SIP_ACCOUNT_COLUMNS} FROM sip_accounts WHERE endpoint_id IS NULL"
        ))
        .fetch_all(&self.pool)
        .await?;
        let mut made = 0;
        for account in rows.iter().map(sip_account_from_row) {
            let mut tx = self.begin_write().await?;
            let endpoint = gateway_endpoint(&account, capabilities.clone());
            insert_gateway(&mut tx, &account, &endpoint).await?;
            tx.commit().await?;
            made += 1;
        }
        Ok(made)
    }

    /// Accounts with a gateway endpoint, made after `created_after` (ms), oldest first.
    pub async fn sip_gateways_since(&self, created_after: i64) -> StoreResult<Vec<SipAccount>> {
        let rows = query(format!(
            "SELECT {SIP_ACCOUNT_COLUMNS} FROM sip_accounts \
             WHERE endpoint_id IS NOT NULL AND created_at > $1 ORDER BY created_at"
        ))
        .bind(created_after)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(sip_account_from_row).collect())
    }

    pub async fn sip_account(&self, aor: &str) -> StoreResult<Option<SipAccount>> {
        let row = query(format!(
            "SELECT {SIP_ACCOUNT_COLUMNS} FROM sip_accounts WHERE aor = $1"
        ))
        .bind(aor)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(sip_account_from_row))
    }

    /// Removes the account, its contacts and its gateway endpoint (revoked, its pushes dropped).
    pub async fn remove_sip_account(&self, aor: &str) -> StoreResult<Option<String>> {
        let mut tx = self.begin_write().await?;
        let endpoint_id: Option<String> =
            query("SELECT endpoint_id FROM sip_accounts WHERE aor = $1")
                .bind(aor)
                .fetch_optional(&mut tx)
                .await?
                .and_then(|r| r.get(0));
        if let Some(id) = &endpoint_id {
            query("UPDATE endpoints SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
                .bind(id)
                .bind(now_ms())
                .execute(&mut tx)
                .await?;
            query("DELETE FROM pushes WHERE endpoint_id = $1")
                .bind(id)
                .execute(&mut tx)
                .await?;
        }
        query("DELETE FROM sip_contacts WHERE aor = $1")
            .bind(aor)
            .execute(&mut tx)
            .await?;
        let deleted = query("DELETE FROM sip_accounts WHERE aor = $1")
            .bind(aor)
            .execute(&mut tx)
            .await?
            .rows_affected();
        if deleted == 0 {
            return Err(StoreError::NotFound(format!("no SIP account `{aor}`")));
        }
        tx.commit().await?;
        Ok(endpoint_id)
    }

    pub async fn sip_account_by_credential(
        &self,
        realm: &str,
        username: &str,
    ) -> StoreResult<Option<SipAccount>> {
        let row = query(format!(
            "SELECT {SIP_ACCOUNT_COLUMNS} FROM sip_accounts WHERE realm = $1 AND username = $2"
        ))
        .bind(realm)
        .bind(username)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(sip_account_from_row))
    }

    pub async fn sip_accounts_of_user(&self, user_id: &str) -> StoreResult<Vec<SipAccount>> {
        let rows = query(format!(
            "SELECT {SIP_ACCOUNT_COLUMNS} FROM sip_accounts WHERE user_id = $1 ORDER BY aor"
        ))
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(sip_account_from_row).collect())
    }

    /// The unexpired contacts of `aor`.
    pub async fn sip_contacts(&self, aor: &str, now: i64) -> StoreResult<Vec<SipContact>> {
        sip_contacts_in(&self.pool, aor, now).await
    }

    pub async fn purge_expired_sip_contacts(&self, now: i64) -> StoreResult<u64> {
        self.write_one(query("DELETE FROM sip_contacts WHERE expires_at <= $1").bind(now))
            .await
    }
}

/// The unexpired contacts of `aor`, read where the caller is (a registrar's transaction).
pub async fn sip_contacts_in<'e>(
    conn: impl Executor<'e>,
    aor: &str,
    now: i64,
) -> StoreResult<Vec<SipContact>> {
    let rows = query(
        "SELECT aor, contact, q, call_id, cseq, expires_at, transport, source, user_agent, updated_at \
         FROM sip_contacts WHERE aor = $1 AND expires_at > $2 ORDER BY contact",
    )
    .bind(aor)
    .bind(now)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .iter()
        .map(|r| SipContact {
            aor: r.get(0),
            contact: r.get(1),
            q: r.get(2),
            call_id: r.get(3),
            cseq: r.get(4),
            expires_at: r.get(5),
            transport: r.get(6),
            source: r.get(7),
            user_agent: r.get(8),
            updated_at: r.get(9),
        })
        .collect())
}

/// Adds or refreshes one binding.
pub async fn save_sip_contact(conn: &mut WriteTx, c: &SipContact) -> StoreResult<()> {
    query(
        "INSERT INTO sip_contacts (aor, contact, q, call_id, cseq, expires_at, transport, source, user_agent, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
         ON CONFLICT (aor, contact) DO UPDATE SET q = excluded.q, call_id = excluded.call_id, \
         cseq = excluded.cseq, expires_at = excluded.expires_at, transport = excluded.transport, \
         source = excluded.source, user_agent = excluded.user_agent, updated_at = excluded.updated_at",
    )
    .bind(&c.aor)
    .bind(&c.contact)
    .bind(&c.q)
    .bind(&c.call_id)
    .bind(c.cseq)
    .bind(c.expires_at)
    .bind(&c.transport)
    .bind(&c.source)
    .bind(&c.user_agent)
    .bind(c.updated_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Removes one binding, or all of `aor`'s when `contact` is None.
pub async fn delete_sip_contacts(
    conn: &mut WriteTx,
    aor: &str,
    contact: Option<&str>,
) -> StoreResult<()> {
    match contact {
        Some(contact) => {
            query("DELETE FROM sip_contacts WHERE aor = $1 AND contact = $2")
                .bind(aor)
                .bind(contact)
                .execute(&mut *conn)
                .await?
        }
        None => {
            query("DELETE FROM sip_contacts WHERE aor = $1")
                .bind(aor)
                .execute(&mut *conn)
                .await?
        }
    };
    Ok(())
}

const SIP_ACCOUNT_COLUMNS: &str =
    "aor, user_id, username, realm, ha1_md5, ha1_sha256, created_at, endpoint_id";

/// The endpoint record of a SIP account's gateway: it rings like any endpoint of the user, and
/// the SIP edge turns its pushes into requests to the account's contacts. It holds no
/// certificate: its fingerprint column names it instead, which no TLS client can present.
pub fn gateway_endpoint(account: &SipAccount, capabilities: Capabilities) -> EndpointRecord {
    let id = format!("sip-{}", uuid::Uuid::new_v4());
    EndpointRecord {
        cert_fingerprint: format!("{GATEWAY_FINGERPRINT}{id}"),
        id,
        user_id: account.user_id.clone(),
        name: format!("SIP {}", account.aor),
        push_token: crate::shared::random_token(24),
        capabilities,
        cert_not_after: i64::MAX,
        created_at: now_ms(),
        revoked_at: None,
    }
}

async fn insert_gateway(
    conn: &mut WriteTx,
    account: &SipAccount,
    endpoint: &EndpointRecord,
) -> StoreResult<()> {
    let capabilities =
        serde_json::to_string(&endpoint.capabilities).expect("capabilities serialize");
    query(
        "INSERT INTO endpoints (id, user_id, name, push_token, capabilities, cert_pem, \
         cert_fingerprint, cert_not_after, created_at) VALUES ($1, $2, $3, $4, $5, '', $6, $7, $8)",
    )
    .bind(&endpoint.id)
    .bind(&endpoint.user_id)
    .bind(&endpoint.name)
    .bind(&endpoint.push_token)
    .bind(capabilities)
    .bind(&endpoint.cert_fingerprint)
    .bind(endpoint.cert_not_after)
    .bind(endpoint.created_at)
    .execute(&mut *conn)
    .await?;
    query("UPDATE sip_accounts SET endpoint_id = $2 WHERE aor = $1")
        .bind(&account.aor)
        .bind(&endpoint.id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

fn sip_account_from_row(r: &Row) -> SipAccount {
    SipAccount {
        aor: r.get(0),
        user_id: r.get(1),
        username: r.get(2),
        realm: r.get(3),
        ha1_md5: r.get(4),
        ha1_sha256: r.get(5),
        created_at: r.get(6),
        endpoint_id: r.get(7),
    }
}
