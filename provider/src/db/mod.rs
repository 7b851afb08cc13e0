//! Database access: one pool over SQLite (default) or PostgreSQL, and every SQL statement of the
//! daemon. The SQL is written once for both (`$N` parameters, TEXT and BIGINT columns).

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{Any, AnyConnection, AnyPool, Connection, Executor, Row, Transaction};
use switchyard_calls::{CallRecord, CallState};
use switchyard_protocol::capabilities::Capabilities;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
    /// SQLite has one writer at a time. Writers of this process queue here, in order, instead of
    /// polling the database lock through SQLite's busy handler, whose growing sleeps put tens of
    /// milliseconds on the tail under concurrency. (Other processes still meet the busy timeout.)
    writer: Arc<tokio::sync::Mutex<()>>,
}

/// A transaction that will write; dereferences to the sqlx transaction.
pub struct WriteTx {
    tx: Transaction<'static, Any>,
    _writer: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl WriteTx {
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }
}

impl std::ops::Deref for WriteTx {
    type Target = Transaction<'static, Any>;

    fn deref(&self) -> &Self::Target {
        &self.tx
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.tx
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

impl Db {
    /// Connects and applies pending migrations. SQLite runs in WAL mode with `synchronous=FULL`
    /// so that a write acknowledged to a client survives `kill -9` and power loss.
    pub async fn connect(url: &str, max_connections: u32) -> StoreResult<Db> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            Backend::Postgres
        };
        let url = match backend {
            Backend::Sqlite if !url.contains('?') => format!("{url}?mode=rwc"),
            _ => url.to_string(),
        };
        let options = AnyConnectOptions::from_str(&url)?;
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        conn.execute(
                            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; \
                             PRAGMA foreign_keys=ON; PRAGMA busy_timeout=10000;",
                        )
                        .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Db {
            pool,
            backend,
            writer: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub async fn close(&self) {
        self.pool.close().await
    }

    /// A transaction that will write. SQLite takes the write lock up front (`BEGIN IMMEDIATE`)
    /// so two writers never fail a lock upgrade, after this process's writer queue.
    pub async fn begin_write(&self) -> StoreResult<WriteTx> {
        Ok(match self.backend {
            Backend::Sqlite => {
                let writer = self.writer.clone().lock_owned().await;
                WriteTx {
                    tx: self.pool.begin_with("BEGIN IMMEDIATE").await?,
                    _writer: Some(writer),
                }
            }
            Backend::Postgres => WriteTx {
                tx: self.pool.begin().await?,
                _writer: None,
            },
        })
    }

    pub async fn ping(&self) -> StoreResult<()> {
        let mut conn = self.pool.acquire().await?;
        conn.ping().await?;
        Ok(())
    }

    // ---- users and URIs ----

    pub async fn create_user(&self, user: &NewUser<'_>) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        insert_user(&mut tx, user).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn delete_user(&self, user_id: &str) -> StoreResult<Vec<String>> {
        let mut tx = self.begin_write().await?;
        let endpoints: Vec<String> = sqlx::query("SELECT id FROM endpoints WHERE user_id = $1")
            .bind(user_id)
            .fetch_all(&mut **tx)
            .await?
            .iter()
            .map(|r| r.get::<String, _>(0))
            .collect();
        let deleted = sqlx::query("DELETE FROM users WHERE id = $1")
            .bind(user_id)
            .execute(&mut **tx)
            .await?
            .rows_affected();
        if deleted == 0 {
            return Err(StoreError::NotFound(format!("no user `{user_id}`")));
        }
        tx.commit().await?;
        Ok(endpoints)
    }

    pub async fn add_uri(&self, user_id: &str, uri: &str) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        if !user_exists(&mut tx, user_id).await? {
            return Err(StoreError::NotFound(format!("no user `{user_id}`")));
        }
        insert_uri(&mut tx, user_id, uri, now_ms()).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn remove_uri(&self, uri: &str) -> StoreResult<()> {
        let deleted = sqlx::query("DELETE FROM user_uris WHERE uri = $1")
            .bind(uri)
            .execute(&self.pool)
            .await?
            .rows_affected();
        if deleted == 0 {
            return Err(StoreError::NotFound(format!("no user has `{uri}`")));
        }
        Ok(())
    }

    pub async fn user(&self, user_id: &str) -> StoreResult<Option<User>> {
        let row = sqlx::query(
            "SELECT u.id, u.display_name, u.created_at, \
             (SELECT COUNT(*) FROM endpoints e WHERE e.user_id = u.id AND e.revoked_at IS NULL) \
             FROM users u WHERE u.id = $1",
        )
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let mut user = user_from_row(&row);
        user.uris = self.uris_of(&user.id).await?;
        Ok(Some(user))
    }

    pub async fn user_id_for_uri(&self, uri: &str) -> StoreResult<Option<String>> {
        Ok(sqlx::query("SELECT user_id FROM user_uris WHERE uri = $1")
            .bind(uri)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| r.get(0)))
    }

    pub async fn uris_of(&self, user_id: &str) -> StoreResult<Vec<String>> {
        Ok(
            sqlx::query("SELECT uri FROM user_uris WHERE user_id = $1 ORDER BY uri")
                .bind(user_id)
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect(),
        )
    }

    /// Users ordered by id, after `after`, whose name or any URI contains `search` (case-insensitive).
    pub async fn list_users(
        &self,
        search: Option<&str>,
        after: Option<&str>,
        limit: i64,
    ) -> StoreResult<Vec<User>> {
        let pattern = search.map(|s| {
            let escaped = s
                .to_lowercase()
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            format!("%{escaped}%")
        });
        let rows = sqlx::query(
            "SELECT u.id, u.display_name, u.created_at, \
             (SELECT COUNT(*) FROM endpoints e WHERE e.user_id = u.id AND e.revoked_at IS NULL) \
             FROM users u \
             WHERE ($1 = '' OR u.id > $1) \
             AND ($2 = '' OR LOWER(u.display_name) LIKE $2 ESCAPE '\\' OR EXISTS \
                  (SELECT 1 FROM user_uris x WHERE x.user_id = u.id AND LOWER(x.uri) LIKE $2 ESCAPE '\\')) \
             ORDER BY u.id LIMIT $3",
        )
        .bind(after.unwrap_or(""))
        .bind(pattern.unwrap_or_default())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut users: Vec<User> = rows.iter().map(user_from_row).collect();
        for user in &mut users {
            user.uris = self.uris_of(&user.id).await?;
        }
        Ok(users)
    }

    pub async fn count_users(&self) -> StoreResult<i64> {
        Ok(sqlx::query("SELECT COUNT(*) FROM users")
            .fetch_one(&self.pool)
            .await?
            .get(0))
    }

    // ---- provisioning codes ----

    pub async fn insert_provisioning_code(
        &self,
        user_id: &str,
        code_hash: &str,
        expires_at: i64,
    ) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        if !user_exists(&mut tx, user_id).await? {
            return Err(StoreError::NotFound(format!("no user `{user_id}`")));
        }
        sqlx::query(
            "INSERT INTO provisioning_codes (code_hash, user_id, expires_at, created_at) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(code_hash)
        .bind(user_id)
        .bind(expires_at)
        .bind(now_ms())
        .execute(&mut **tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    // ---- endpoints ----

    /// Consumes the provisioning code and stores the endpoint, atomically: a code registers one
    /// endpoint, and a failed registration leaves the code usable.
    pub async fn register_endpoint(
        &self,
        code_hash: &str,
        endpoint: &EndpointRecord,
        cert_pem: &str,
    ) -> StoreResult<bool> {
        let mut tx = self.begin_write().await?;
        let consumed = sqlx::query(
            "DELETE FROM provisioning_codes WHERE code_hash = $1 AND user_id = $2 AND expires_at > $3",
        )
        .bind(code_hash)
        .bind(&endpoint.user_id)
        .bind(now_ms())
        .execute(&mut **tx)
        .await?
        .rows_affected();
        if consumed == 0 {
            return Ok(false);
        }
        let capabilities =
            serde_json::to_string(&endpoint.capabilities).expect("capabilities serialize");
        sqlx::query(
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
        .execute(&mut **tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// The active endpoint holding the certificate with this SHA-256 fingerprint.
    pub async fn endpoint_by_fingerprint(
        &self,
        fingerprint: &str,
    ) -> StoreResult<Option<EndpointRecord>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ENDPOINT_COLUMNS} FROM endpoints WHERE cert_fingerprint = $1 AND revoked_at IS NULL"
        )))
        .bind(fingerprint)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(endpoint_from_row).transpose()
    }

    /// Active endpoints reached by a URI, oldest first: a SIP account's gateway endpoint only
    /// while a phone of the account is registered (there is nothing to ring otherwise).
    pub async fn endpoints_for_uri(&self, uri: &str) -> StoreResult<Vec<EndpointRecord>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ENDPOINT_COLUMNS} FROM endpoints WHERE revoked_at IS NULL AND user_id = \
             (SELECT user_id FROM user_uris WHERE uri = $1) \
             AND (cert_fingerprint NOT LIKE '{GATEWAY_FINGERPRINT}%' OR EXISTS (SELECT 1 FROM sip_contacts c \
             JOIN sip_accounts a ON a.aor = c.aor WHERE a.endpoint_id = endpoints.id \
             AND c.expires_at > $2)) ORDER BY created_at, id"
        )))
        .bind(uri)
        .bind(now_ms())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(endpoint_from_row).collect()
    }

    pub async fn endpoints_of_user(&self, user_id: &str) -> StoreResult<Vec<EndpointRecord>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ENDPOINT_COLUMNS} FROM endpoints WHERE user_id = $1 ORDER BY created_at, id"
        )))
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(endpoint_from_row).collect()
    }

    pub async fn endpoint_is_active(&self, endpoint_id: &str) -> StoreResult<bool> {
        Ok(
            sqlx::query("SELECT 1 FROM endpoints WHERE id = $1 AND revoked_at IS NULL")
                .bind(endpoint_id)
                .fetch_optional(&self.pool)
                .await?
                .is_some(),
        )
    }

    pub async fn revoke_endpoint(&self, endpoint_id: &str) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        let exists = sqlx::query("SELECT revoked_at FROM endpoints WHERE id = $1")
            .bind(endpoint_id)
            .fetch_optional(&mut **tx)
            .await?;
        if exists.is_none() {
            return Err(StoreError::NotFound(format!("no endpoint `{endpoint_id}`")));
        }
        sqlx::query("UPDATE endpoints SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
            .bind(endpoint_id)
            .bind(now_ms())
            .execute(&mut **tx)
            .await?;
        sqlx::query("DELETE FROM pushes WHERE endpoint_id = $1")
            .bind(endpoint_id)
            .execute(&mut **tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn count_active_endpoints(&self) -> StoreResult<i64> {
        Ok(
            sqlx::query("SELECT COUNT(*) FROM endpoints WHERE revoked_at IS NULL")
                .fetch_one(&self.pool)
                .await?
                .get(0),
        )
    }

    // ---- push queue ----

    /// Pushes after `after_seq`, in order, that have not expired.
    pub async fn pending_pushes(
        &self,
        endpoint_id: &str,
        after_seq: i64,
        limit: i64,
    ) -> StoreResult<Vec<StoredPush>> {
        let rows = sqlx::query(
            "SELECT seq, body FROM pushes WHERE endpoint_id = $1 AND seq > $2 AND expires_at > $3 \
             ORDER BY seq LIMIT $4",
        )
        .bind(endpoint_id)
        .bind(after_seq)
        .bind(now_ms())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| StoredPush {
                seq: r.get(0),
                body: r.get(1),
            })
            .collect())
    }

    /// Acknowledges every push up to `upto_seq`; returns how many were removed by this call.
    pub async fn ack_pushes(&self, endpoint_id: &str, upto_seq: i64) -> StoreResult<u64> {
        let mut tx = self.begin_write().await?;
        let removed = sqlx::query("DELETE FROM pushes WHERE endpoint_id = $1 AND seq <= $2")
            .bind(endpoint_id)
            .bind(upto_seq)
            .execute(&mut **tx)
            .await?
            .rows_affected();
        sqlx::query(
            "UPDATE endpoints SET push_acked = $2 WHERE id = $1 AND push_acked < $2 AND push_seq >= $2",
        )
        .bind(endpoint_id)
        .bind(upto_seq)
        .execute(&mut **tx)
        .await?;
        tx.commit().await?;
        Ok(removed)
    }

    /// The last sequence number the endpoint acknowledged.
    pub async fn push_acked(&self, endpoint_id: &str) -> StoreResult<i64> {
        Ok(
            sqlx::query("SELECT push_acked FROM endpoints WHERE id = $1")
                .bind(endpoint_id)
                .fetch_optional(&self.pool)
                .await?
                .map(|r| r.get(0))
                .unwrap_or(0),
        )
    }

    pub async fn delete_expired_pushes(&self) -> StoreResult<u64> {
        Ok(sqlx::query("DELETE FROM pushes WHERE expires_at <= $1")
            .bind(now_ms())
            .execute(&self.pool)
            .await?
            .rows_affected())
    }

    // ---- calls ----

    /// Ringing calls whose ring deadline has passed.
    pub async fn overdue_calls(&self, limit: i64) -> StoreResult<Vec<CallRecord>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {CALL_COLUMNS} FROM calls WHERE state = 'ringing' AND ring_deadline <= $1 \
             ORDER BY ring_deadline LIMIT $2"
        )))
        .bind(now_ms())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(call_from_row).collect()
    }

    /// Call records, newest first, started before `before` (Unix ms), in `state` and with a
    /// caller or callee URI containing `party` (case-insensitively) when those are given.
    pub async fn list_calls(
        &self,
        before: Option<i64>,
        state: Option<&str>,
        party: Option<&str>,
        limit: i64,
    ) -> StoreResult<Vec<CallRecord>> {
        // LIKE's own wildcards in `party` are taken literally.
        let pattern = party.map(|p| {
            let escaped = p
                .to_lowercase()
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            format!("%{escaped}%")
        });
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {CALL_COLUMNS} FROM calls WHERE initiated_at < $1 \
             AND ($2 IS NULL OR state = $2) \
             AND ($3 IS NULL OR LOWER(caller_uri) LIKE $3 ESCAPE '\\' \
                  OR LOWER(callee_uri) LIKE $3 ESCAPE '\\') \
             ORDER BY initiated_at DESC, session_id LIMIT $4"
        )))
        .bind(before.unwrap_or(i64::MAX))
        .bind(state)
        .bind(pattern)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(call_from_row).collect()
    }

    /// Calls ringing or answered, newest first.
    pub async fn calls_in_progress(&self, limit: i64) -> StoreResult<Vec<CallRecord>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {CALL_COLUMNS} FROM calls WHERE state IN ('ringing', 'answered') \
             ORDER BY initiated_at DESC, session_id LIMIT $1"
        )))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(call_from_row).collect()
    }

    pub async fn count_calls_in_progress(&self) -> StoreResult<i64> {
        Ok(
            sqlx::query("SELECT COUNT(*) FROM calls WHERE state IN ('ringing', 'answered')")
                .fetch_one(&self.pool)
                .await?
                .get(0),
        )
    }

    /// When each call since `since` (ms) started and, if it was, was answered: the newest
    /// `limit` of them.
    pub async fn call_times(&self, since: i64, limit: i64) -> StoreResult<Vec<(i64, Option<i64>)>> {
        Ok(sqlx::query(
            "SELECT initiated_at, answered_at FROM calls WHERE initiated_at >= $1 \
             ORDER BY initiated_at DESC LIMIT $2",
        )
        .bind(since)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
    }

    /// One call record by session id.
    pub async fn call(&self, session_id: &str) -> StoreResult<Option<CallRecord>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {CALL_COLUMNS} FROM calls WHERE session_id = $1"
        )))
        .bind(session_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(call_from_row).transpose()
    }

    // ---- federation ----

    /// Every hosted canonical URI, for building this provider's Bloom filter.
    pub async fn all_uris(&self) -> StoreResult<Vec<String>> {
        Ok(sqlx::query("SELECT uri FROM user_uris")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    pub async fn peer_filters(&self) -> StoreResult<Vec<StoredPeerFilter>> {
        let rows = sqlx::query(
            "SELECT provider_id, generation, bits, hashes, filter_key, items, filter, fetched_at              FROM peer_filters",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| StoredPeerFilter {
                provider_id: r.get(0),
                generation: r.get(1),
                bits: r.get(2),
                hashes: r.get(3),
                key_hex: r.get(4),
                items: r.get(5),
                filter_base64: r.get(6),
                fetched_at: r.get(7),
            })
            .collect())
    }

    pub async fn save_peer_filter(&self, filter: &StoredPeerFilter) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM peer_filters WHERE provider_id = $1")
            .bind(&filter.provider_id)
            .execute(&mut **tx)
            .await?;
        sqlx::query(
            "INSERT INTO peer_filters (provider_id, generation, bits, hashes, filter_key, items, \
             filter, fetched_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&filter.provider_id)
        .bind(filter.generation)
        .bind(filter.bits)
        .bind(filter.hashes)
        .bind(&filter.key_hex)
        .bind(filter.items)
        .bind(&filter.filter_base64)
        .bind(filter.fetched_at)
        .execute(&mut **tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn delete_peer_filter(&self, provider_id: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM peer_filters WHERE provider_id = $1")
            .bind(provider_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records a Forward id from `provider_id`; false if it was seen before (a replay).
    pub async fn record_forward_nonce(&self, provider_id: &str, nonce: &str) -> StoreResult<bool> {
        Ok(sqlx::query(
            "INSERT INTO forward_nonces (provider_id, nonce, seen_at) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
        )
        .bind(provider_id)
        .bind(nonce)
        .bind(now_ms())
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1)
    }

    /// Forgets Forward ids and answers older than `before` (Unix ms).
    pub async fn purge_forward_log(&self, before: i64) -> StoreResult<()> {
        sqlx::query("DELETE FROM forward_nonces WHERE seen_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        sqlx::query("DELETE FROM forward_results WHERE created_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    // ---- SIP accounts ----

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
        sqlx::query(
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
        .execute(&mut **tx)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Conflict(format!(
                    "`{}` or the digest username `{}` in realm `{}` already has a SIP account",
                    account.aor, account.username, account.realm
                ))
            } else {
                e.into()
            }
        })?;
        let endpoint = gateway_endpoint(account, capabilities);
        insert_gateway(&mut tx, account, &endpoint).await?;
        tx.commit().await?;
        Ok(endpoint)
    }

    /// Gives every account without a gateway endpoint one; returns how many were made.
    pub async fn ensure_sip_gateways(&self, capabilities: &Capabilities) -> StoreResult<usize> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {SIP_ACCOUNT_COLUMNS} FROM sip_accounts WHERE endpoint_id IS NULL"
        )))
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
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {SIP_ACCOUNT_COLUMNS} FROM sip_accounts \
             WHERE endpoint_id IS NOT NULL AND created_at > $1 ORDER BY created_at"
        )))
        .bind(created_after)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(sip_account_from_row).collect())
    }

    pub async fn sip_account(&self, aor: &str) -> StoreResult<Option<SipAccount>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {SIP_ACCOUNT_COLUMNS} FROM sip_accounts WHERE aor = $1"
        )))
        .bind(aor)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(sip_account_from_row))
    }

    pub async fn endpoint(&self, endpoint_id: &str) -> StoreResult<Option<EndpointRecord>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ENDPOINT_COLUMNS} FROM endpoints WHERE id = $1 AND revoked_at IS NULL"
        )))
        .bind(endpoint_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(endpoint_from_row).transpose()
    }

    /// Takes one push off the queue for whoever asks first: of several replicas reading an
    /// endpoint's queue, only the one that gets `true` acts on it.
    pub async fn claim_push(&self, endpoint_id: &str, seq: i64) -> StoreResult<bool> {
        let mut tx = self.begin_write().await?;
        let claimed = sqlx::query("DELETE FROM pushes WHERE endpoint_id = $1 AND seq = $2")
            .bind(endpoint_id)
            .bind(seq)
            .execute(&mut **tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(claimed == 1)
    }

    /// Removes the account, its contacts and its gateway endpoint (revoked, its pushes dropped).
    pub async fn remove_sip_account(&self, aor: &str) -> StoreResult<Option<String>> {
        let mut tx = self.begin_write().await?;
        let endpoint_id: Option<String> =
            sqlx::query("SELECT endpoint_id FROM sip_accounts WHERE aor = $1")
                .bind(aor)
                .fetch_optional(&mut **tx)
                .await?
                .and_then(|r| r.get(0));
        if let Some(id) = &endpoint_id {
            sqlx::query(
                "UPDATE endpoints SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
            )
            .bind(id)
            .bind(now_ms())
            .execute(&mut **tx)
            .await?;
            sqlx::query("DELETE FROM pushes WHERE endpoint_id = $1")
                .bind(id)
                .execute(&mut **tx)
                .await?;
        }
        sqlx::query("DELETE FROM sip_contacts WHERE aor = $1")
            .bind(aor)
            .execute(&mut **tx)
            .await?;
        let deleted = sqlx::query("DELETE FROM sip_accounts WHERE aor = $1")
            .bind(aor)
            .execute(&mut **tx)
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
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {SIP_ACCOUNT_COLUMNS} FROM sip_accounts WHERE realm = $1 AND username = $2"
        )))
        .bind(realm)
        .bind(username)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(sip_account_from_row))
    }

    pub async fn sip_accounts_of_user(&self, user_id: &str) -> StoreResult<Vec<SipAccount>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {SIP_ACCOUNT_COLUMNS} FROM sip_accounts WHERE user_id = $1 ORDER BY aor"
        )))
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(sip_account_from_row).collect())
    }

    /// The unexpired contacts of `aor`.
    pub async fn sip_contacts(&self, aor: &str, now: i64) -> StoreResult<Vec<SipContact>> {
        let mut conn = self.pool.acquire().await?;
        sip_contacts_in(&mut conn, aor, now).await
    }

    pub async fn purge_expired_sip_contacts(&self, now: i64) -> StoreResult<u64> {
        Ok(
            sqlx::query("DELETE FROM sip_contacts WHERE expires_at <= $1")
                .bind(now)
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }

    // ---- operators, their sessions, the audit log ----

    pub async fn add_operator(&self, operator: &OperatorRecord) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO operators (name, role, password_hash, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(&operator.name)
        .bind(&operator.role)
        .bind(&operator.password_hash)
        .bind(operator.created_at)
        .execute(&mut **tx)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Conflict(format!("an operator `{}` exists already", operator.name))
            } else {
                e.into()
            }
        })?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn operator(&self, name: &str) -> StoreResult<Option<OperatorRecord>> {
        let row = sqlx::query(
            "SELECT name, role, password_hash, created_at FROM operators WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| OperatorRecord {
            name: r.get(0),
            role: r.get(1),
            password_hash: r.get(2),
            created_at: r.get(3),
        }))
    }

    pub async fn operators(&self) -> StoreResult<Vec<OperatorRecord>> {
        Ok(
            sqlx::query(
                "SELECT name, role, password_hash, created_at FROM operators ORDER BY name",
            )
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| OperatorRecord {
                name: r.get(0),
                role: r.get(1),
                password_hash: r.get(2),
                created_at: r.get(3),
            })
            .collect(),
        )
    }

    /// Removes an operator and ends its sessions.
    pub async fn remove_operator(&self, name: &str) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM operator_sessions WHERE operator = $1")
            .bind(name)
            .execute(&mut **tx)
            .await?;
        let deleted = sqlx::query("DELETE FROM operators WHERE name = $1")
            .bind(name)
            .execute(&mut **tx)
            .await?
            .rows_affected();
        if deleted == 0 {
            return Err(StoreError::NotFound(format!("no operator `{name}`")));
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn add_operator_session(&self, session: &SessionRecord) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO operator_sessions (id_sha256, operator, csrf_token, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&session.id_sha256)
        .bind(&session.operator)
        .bind(&session.csrf_token)
        .bind(session.created_at)
        .bind(session.expires_at)
        .execute(&mut **tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A session that has not expired, with its operator's current role.
    pub async fn operator_session(
        &self,
        id_sha256: &str,
        now: i64,
    ) -> StoreResult<Option<(SessionRecord, String)>> {
        let row = sqlx::query(
            "SELECT s.id_sha256, s.operator, s.csrf_token, s.created_at, s.expires_at, o.role \
             FROM operator_sessions s JOIN operators o ON o.name = s.operator \
             WHERE s.id_sha256 = $1 AND s.expires_at > $2",
        )
        .bind(id_sha256)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| {
            (
                SessionRecord {
                    id_sha256: r.get(0),
                    operator: r.get(1),
                    csrf_token: r.get(2),
                    created_at: r.get(3),
                    expires_at: r.get(4),
                },
                r.get(5),
            )
        }))
    }

    pub async fn remove_operator_session(&self, id_sha256: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM operator_sessions WHERE id_sha256 = $1")
            .bind(id_sha256)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn purge_expired_operator_sessions(&self, now: i64) -> StoreResult<u64> {
        Ok(
            sqlx::query("DELETE FROM operator_sessions WHERE expires_at <= $1")
                .bind(now)
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }

    pub async fn add_audit(&self, entry: &AuditEntry) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO audit_log (id, at, actor, method, path, status) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&entry.id)
        .bind(entry.at)
        .bind(&entry.actor)
        .bind(&entry.method)
        .bind(&entry.path)
        .bind(i32::from(entry.status))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Audit entries older than the entry (`before`, `before_id`), newest first: `at`
    /// descending, then `id`, so that entries of the same millisecond are not lost between pages.
    pub async fn audit(
        &self,
        before: i64,
        before_id: &str,
        limit: i64,
    ) -> StoreResult<Vec<AuditEntry>> {
        sqlx::query(
            "SELECT id, at, actor, method, path, status FROM audit_log \
             WHERE at < $1 OR (at = $1 AND id < $2) ORDER BY at DESC, id DESC LIMIT $3",
        )
        .bind(before)
        .bind(before_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            let status: i32 = r.get(5);
            Ok(AuditEntry {
                id: r.get(0),
                at: r.get(1),
                actor: r.get(2),
                method: r.get(3),
                path: r.get(4),
                status: u16::try_from(status)
                    .map_err(|_| StoreError::Corrupt(format!("audit status {status}")))?,
            })
        })
        .collect()
    }

    // ---- seal keys ----

    pub async fn seal_keys(&self) -> StoreResult<Vec<(String, String, i64)>> {
        Ok(
            sqlx::query(
                "SELECT id, secret, created_at FROM seal_keys ORDER BY created_at DESC, id",
            )
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect(),
        )
    }

    /// Adds a key unless one newer than `fresh_after` exists (another replica rotated first),
    /// and drops keys older than `drop_before`.
    pub async fn rotate_seal_key(
        &self,
        id: &str,
        secret: &str,
        now: i64,
        fresh_after: i64,
        drop_before: i64,
    ) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        let fresh = sqlx::query("SELECT 1 FROM seal_keys WHERE created_at > $1")
            .bind(fresh_after)
            .fetch_optional(&mut **tx)
            .await?;
        if fresh.is_none() {
            sqlx::query("INSERT INTO seal_keys (id, secret, created_at) VALUES ($1, $2, $3)")
                .bind(id)
                .bind(secret)
                .bind(now)
                .execute(&mut **tx)
                .await?;
        }
        sqlx::query("DELETE FROM seal_keys WHERE created_at < $1")
            .bind(drop_before)
            .execute(&mut **tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}

// ---- statements that run inside a caller's transaction ----

pub async fn insert_user(conn: &mut AnyConnection, user: &NewUser<'_>) -> StoreResult<()> {
    sqlx::query("INSERT INTO users (id, display_name, created_at) VALUES ($1, $2, $3)")
        .bind(user.id)
        .bind(user.display_name)
        .bind(user.created_at)
        .execute(&mut *conn)
        .await?;
    for uri in user.uris {
        insert_uri(conn, user.id, uri, user.created_at).await?;
    }
    Ok(())
}

async fn insert_uri(
    conn: &mut AnyConnection,
    user_id: &str,
    uri: &str,
    now: i64,
) -> StoreResult<()> {
    sqlx::query("INSERT INTO user_uris (uri, user_id, created_at) VALUES ($1, $2, $3)")
        .bind(uri)
        .bind(user_id)
        .bind(now)
        .execute(&mut *conn)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Conflict(format!("`{uri}` already belongs to a user"))
            } else {
                e.into()
            }
        })?;
    Ok(())
}

async fn user_exists(conn: &mut AnyConnection, user_id: &str) -> StoreResult<bool> {
    Ok(sqlx::query("SELECT 1 FROM users WHERE id = $1")
        .bind(user_id)
        .fetch_optional(&mut *conn)
        .await?
        .is_some())
}

/// Queues a push for an active endpoint; returns its sequence number, or None if the endpoint
/// is gone or revoked.
pub async fn enqueue_push(
    conn: &mut AnyConnection,
    endpoint_id: &str,
    body: &str,
    expires_at: i64,
) -> StoreResult<Option<i64>> {
    let seq: Option<i64> = sqlx::query(
        "UPDATE endpoints SET push_seq = push_seq + 1 WHERE id = $1 AND revoked_at IS NULL RETURNING push_seq",
    )
    .bind(endpoint_id)
    .fetch_optional(&mut *conn)
    .await?
    .map(|r| r.get(0));
    let Some(seq) = seq else { return Ok(None) };
    sqlx::query(
        "INSERT INTO pushes (endpoint_id, seq, body, expires_at, created_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(endpoint_id)
    .bind(seq)
    .bind(body)
    .bind(expires_at)
    .bind(now_ms())
    .execute(&mut *conn)
    .await?;
    Ok(Some(seq))
}

pub async fn insert_call(conn: &mut AnyConnection, call: &CallRecord) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO calls (session_id, caller_uri, callee_uri, caller_endpoint, rung_endpoints, \
         rung_count, rejections, media, state, reason, answered_by, providers, initiated_at, \
         ring_deadline, answered_at, ended_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
    )
    .bind(&call.session_id)
    .bind(&call.caller_uri)
    .bind(&call.callee_uri)
    .bind(&call.caller_endpoint)
    .bind(call.rung_endpoints.join(","))
    .bind(call.rung_count)
    .bind(call.rejections)
    .bind(call.media.join(","))
    .bind(call.state.as_str())
    .bind(&call.reason)
    .bind(&call.answered_by)
    .bind(call.providers.join(","))
    .bind(call.initiated_at)
    .bind(call.ring_deadline)
    .bind(call.answered_at)
    .bind(call.ended_at)
    .execute(&mut *conn)
    .await
    .map_err(|e| {
        if is_unique_violation(&e) {
            StoreError::Conflict(format!("session `{}` already exists", call.session_id))
        } else {
            e.into()
        }
    })?;
    Ok(())
}

pub async fn call_state(
    conn: &mut AnyConnection,
    session_id: &str,
) -> StoreResult<Option<CallState>> {
    sqlx::query("SELECT state FROM calls WHERE session_id = $1")
        .bind(session_id)
        .fetch_optional(&mut *conn)
        .await?
        .map(|r| call_state_of(&r.get::<String, _>(0)))
        .transpose()
}

/// The endpoint that answered the call, if any.
pub async fn call_answered_by(
    conn: &mut AnyConnection,
    session_id: &str,
) -> StoreResult<Option<String>> {
    Ok(
        sqlx::query("SELECT answered_by FROM calls WHERE session_id = $1")
            .bind(session_id)
            .fetch_optional(&mut *conn)
            .await?
            .and_then(|r| r.get(0)),
    )
}

/// Moves a call from one of `from` to `to`; false if it was in none of them (someone else won).
pub async fn transition_call(
    conn: &mut AnyConnection,
    session_id: &str,
    from: &[CallState],
    to: CallState,
    change: CallChange<'_>,
) -> StoreResult<bool> {
    let now = now_ms();
    let states: Vec<&str> = from.iter().map(|s| s.as_str()).collect();
    // The state names are our own constants, never input.
    let in_list = states
        .iter()
        .map(|s| format!("'{s}'"))
        .collect::<Vec<_>>()
        .join(",");
    let sql = format!(
        "UPDATE calls SET state = $2, \
         reason = COALESCE($3, reason), \
         answered_by = COALESCE($4, answered_by), \
         answered_at = CASE WHEN $5 = 1 THEN $6 ELSE answered_at END, \
         ended_at = CASE WHEN $7 = 1 THEN $6 ELSE ended_at END \
         WHERE session_id = $1 AND state IN ({in_list})"
    );
    let updated = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(session_id)
        .bind(to.as_str())
        .bind(change.reason)
        .bind(change.answered_by)
        .bind(i64::from(to == CallState::Answered))
        .bind(now)
        .bind(i64::from(to.is_final()))
        .execute(&mut *conn)
        .await?
        .rows_affected();
    Ok(updated == 1)
}

#[derive(Debug, Default, Clone, Copy)]
pub struct CallChange<'a> {
    pub reason: Option<&'a str>,
    pub answered_by: Option<&'a str>,
}

/// Records `party`'s rejection of a ringing call (an endpoint here, or a provider it was
/// forwarded to) and, when no party is left ringing, ends the call as rejected with
/// `final_reason`. Returns whether this rejection ended the call, and how many parties still ring.
pub async fn reject_and_end_if_last(
    conn: &mut AnyConnection,
    session_id: &str,
    party: &str,
    reason: &str,
    final_reason: &str,
) -> StoreResult<(bool, i64)> {
    let (new, rejections, parties) = record_rejection(conn, session_id, party, reason).await?;
    let ended = new
        && rejections >= parties
        && transition_call(
            conn,
            session_id,
            &[CallState::Ringing],
            CallState::Rejected,
            CallChange {
                reason: Some(final_reason),
                ..Default::default()
            },
        )
        .await?;
    Ok((ended, (parties - rejections).max(0)))
}

/// Records one endpoint's Reject (a repeat counts once); returns whether it was new, and the
/// rejections so far against the endpoints rung.
async fn record_rejection(
    conn: &mut AnyConnection,
    session_id: &str,
    endpoint_id: &str,
    reason: &str,
) -> StoreResult<(bool, i64, i64)> {
    let inserted = sqlx::query(
        "INSERT INTO call_rejections (session_id, endpoint_id, reason, rejected_at) \
         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
    )
    .bind(session_id)
    .bind(endpoint_id)
    .bind(reason)
    .bind(now_ms())
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1;
    let sql = if inserted {
        "UPDATE calls SET rejections = rejections + 1 WHERE session_id = $1 RETURNING rejections, rung_count"
    } else {
        "SELECT rejections, rung_count FROM calls WHERE session_id = $1"
    };
    let row = sqlx::query(sql)
        .bind(session_id)
        .fetch_one(&mut *conn)
        .await?;
    Ok((inserted, row.get(0), row.get(1)))
}

/// The answer already given to `provider_id`'s `action` Forward for `session_id`, if any.
pub async fn forward_result(
    conn: &mut AnyConnection,
    provider_id: &str,
    session_id: &str,
    action: &str,
) -> StoreResult<Option<(u16, String)>> {
    Ok(sqlx::query(
        "SELECT status, response FROM forward_results \
         WHERE provider_id = $1 AND session_id = $2 AND action = $3",
    )
    .bind(provider_id)
    .bind(session_id)
    .bind(action)
    .fetch_optional(&mut *conn)
    .await?
    .map(|r| (r.get::<i64, _>(0) as u16, r.get(1))))
}

pub async fn save_forward_result(
    conn: &mut AnyConnection,
    provider_id: &str,
    session_id: &str,
    action: &str,
    status: u16,
    response: &str,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO forward_results (provider_id, session_id, action, status, response, \
         created_at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
    )
    .bind(provider_id)
    .bind(session_id)
    .bind(action)
    .bind(i64::from(status))
    .bind(response)
    .bind(now_ms())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The reasons given so far by the parties that rejected a call, in the order they came.
pub async fn rejection_reasons(
    conn: &mut AnyConnection,
    session_id: &str,
) -> StoreResult<Vec<(String, String)>> {
    Ok(sqlx::query(
        "SELECT endpoint_id, reason FROM call_rejections WHERE session_id = $1 \
         ORDER BY rejected_at, endpoint_id",
    )
    .bind(session_id)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect())
}

/// Removes a call record and its rejections, for a Request that was refused after all.
pub async fn delete_call(conn: &mut AnyConnection, session_id: &str) -> StoreResult<()> {
    sqlx::query("DELETE FROM call_rejections WHERE session_id = $1")
        .bind(session_id)
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM calls WHERE session_id = $1")
        .bind(session_id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The full call record, read inside a transaction.
pub async fn call_in(
    conn: &mut AnyConnection,
    session_id: &str,
) -> StoreResult<Option<CallRecord>> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {CALL_COLUMNS} FROM calls WHERE session_id = $1"
    )))
    .bind(session_id)
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(call_from_row).transpose()
}

/// The unexpired contacts of `aor`, read where the caller is (a registrar's transaction).
pub async fn sip_contacts_in(
    conn: &mut AnyConnection,
    aor: &str,
    now: i64,
) -> StoreResult<Vec<SipContact>> {
    let rows = sqlx::query(
        "SELECT aor, contact, q, call_id, cseq, expires_at, transport, source, user_agent, updated_at \
         FROM sip_contacts WHERE aor = $1 AND expires_at > $2 ORDER BY contact",
    )
    .bind(aor)
    .bind(now)
    .fetch_all(&mut *conn)
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
pub async fn save_sip_contact(conn: &mut AnyConnection, c: &SipContact) -> StoreResult<()> {
    sqlx::query(
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
    conn: &mut AnyConnection,
    aor: &str,
    contact: Option<&str>,
) -> StoreResult<()> {
    match contact {
        Some(contact) => {
            sqlx::query("DELETE FROM sip_contacts WHERE aor = $1 AND contact = $2")
                .bind(aor)
                .bind(contact)
                .execute(&mut *conn)
                .await?
        }
        None => {
            sqlx::query("DELETE FROM sip_contacts WHERE aor = $1")
                .bind(aor)
                .execute(&mut *conn)
                .await?
        }
    };
    Ok(())
}

// ---- row types ----

pub struct NewUser<'a> {
    pub id: &'a str,
    pub display_name: &'a str,
    pub uris: &'a [String],
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub id: String,
    pub display_name: String,
    pub uris: Vec<String>,
    pub created_at: i64,
    pub active_endpoints: i64,
}

fn user_from_row(row: &sqlx::any::AnyRow) -> User {
    User {
        id: row.get(0),
        display_name: row.get(1),
        created_at: row.get(2),
        active_endpoints: row.get(3),
        uris: Vec::new(),
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct EndpointRecord {
    pub id: String,
    pub user_id: String,
    pub name: String,
    pub push_token: String,
    pub capabilities: Capabilities,
    pub cert_fingerprint: String,
    pub cert_not_after: i64,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

const ENDPOINT_COLUMNS: &str = "id, user_id, name, push_token, capabilities, cert_fingerprint, \
                                cert_not_after, created_at, revoked_at";

fn endpoint_from_row(row: &sqlx::any::AnyRow) -> StoreResult<EndpointRecord> {
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

#[derive(Debug, Clone)]
pub struct StoredPush {
    pub seq: i64,
    /// The push dictionary as an XML property list, which keeps data and strings apart.
    pub body: String,
}

/// A peer's Bloom filter as stored: key in hex, bits in base64.
#[derive(Debug, Clone)]
pub struct StoredPeerFilter {
    pub provider_id: String,
    pub generation: i64,
    pub bits: i64,
    pub hashes: i64,
    pub key_hex: String,
    pub items: i64,
    pub filter_base64: String,
    pub fetched_at: i64,
}

const CALL_COLUMNS: &str = "session_id, caller_uri, callee_uri, caller_endpoint, rung_endpoints, \
                            rung_count, rejections, media, state, reason, answered_by, providers, initiated_at, \
                            ring_deadline, answered_at, ended_at";

fn call_state_of(text: &str) -> StoreResult<CallState> {
    CallState::parse(text).ok_or_else(|| StoreError::Corrupt(format!("call state `{text}`")))
}

fn split_list(s: String) -> Vec<String> {
    if s.is_empty() {
        Vec::new()
    } else {
        s.split(',').map(str::to_string).collect()
    }
}

fn call_from_row(row: &sqlx::any::AnyRow) -> StoreResult<CallRecord> {
    Ok(CallRecord {
        session_id: row.get(0),
        caller_uri: row.get(1),
        callee_uri: row.get(2),
        caller_endpoint: row.get(3),
        rung_endpoints: split_list(row.get(4)),
        rung_count: row.get(5),
        rejections: row.get(6),
        media: split_list(row.get(7)),
        state: call_state_of(&row.get::<String, _>(8))?,
        reason: row.get(9),
        answered_by: row.get(10),
        providers: split_list(row.get(11)),
        initiated_at: row.get(12),
        ring_deadline: row.get(13),
        answered_at: row.get(14),
        ended_at: row.get(15),
    })
}

const SIP_ACCOUNT_COLUMNS: &str =
    "aor, user_id, username, realm, ha1_md5, ha1_sha256, created_at, endpoint_id";

/// A SIP phone's account: its address of record, the user it acts for, and digest HA1s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipAccount {
    pub aor: String,
    pub user_id: String,
    pub username: String,
    pub realm: String,
    pub ha1_md5: String,
    pub ha1_sha256: String,
    pub created_at: i64,
    /// The gateway endpoint the edge acts as for this account (see [`gateway_endpoint`]); none
    /// only for an account made before gateways existed, until the edge starts.
    pub endpoint_id: Option<String>,
}

/// What the fingerprint column of a gateway endpoint starts with.
const GATEWAY_FINGERPRINT: &str = "sip-gateway:";

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
        push_token: crate::registry::random_token(24),
        capabilities,
        cert_not_after: i64::MAX,
        created_at: now_ms(),
        revoked_at: None,
    }
}

async fn insert_gateway(
    conn: &mut AnyConnection,
    account: &SipAccount,
    endpoint: &EndpointRecord,
) -> StoreResult<()> {
    let capabilities =
        serde_json::to_string(&endpoint.capabilities).expect("capabilities serialize");
    sqlx::query(
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
    sqlx::query("UPDATE sip_accounts SET endpoint_id = $2 WHERE aor = $1")
        .bind(&account.aor)
        .bind(&endpoint.id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

fn sip_account_from_row(r: &sqlx::any::AnyRow) -> SipAccount {
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

/// One registered contact of an AoR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipContact {
    pub aor: String,
    /// The Contact URI as registered.
    pub contact: String,
    pub q: Option<String>,
    pub call_id: String,
    pub cseq: i64,
    pub expires_at: i64,
    /// How the REGISTER arrived (`udp`, `tcp`, `tls`) and from where: requests to the contact
    /// go back that way (the phone is often behind a NAT).
    pub transport: String,
    pub source: String,
    pub user_agent: Option<String>,
    pub updated_at: i64,
}

/// An operator of the admin API and web UI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorRecord {
    pub name: String,
    /// `operator` or `viewer`.
    pub role: String,
    pub password_hash: String,
    pub created_at: i64,
}

/// A browser session of an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub id_sha256: String,
    pub operator: String,
    pub csrf_token: String,
    pub created_at: i64,
    pub expires_at: i64,
}

/// One change made through the admin API: who, what, when, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditEntry {
    pub id: String,
    pub at: i64,
    pub actor: String,
    pub method: String,
    pub path: String,
    pub status: u16,
}
