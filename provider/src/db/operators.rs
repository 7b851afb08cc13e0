//! Operators of the admin API and web UI, their browser sessions, and the audit log.

use super::sql::query;

use super::records::{AuditEntry, OperatorRecord, SessionRecord};
use super::{is_unique_violation, Db, StoreError, StoreResult};

impl Db {
    pub async fn add_operator(&self, operator: &OperatorRecord) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        query(
            "INSERT INTO operators (name, role, password_hash, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(&operator.name)
        .bind(&operator.role)
        .bind(&operator.password_hash)
        .bind(operator.created_at)
        .execute(&mut tx)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Conflict(format!("an operator `{}` exists already", operator.name))
            } else {
                e
            }
        })?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn operator(&self, name: &str) -> StoreResult<Option<OperatorRecord>> {
        let row =
            query("SELECT name, role, password_hash, created_at FROM operators WHERE name = $1")
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
            query("SELECT name, role, password_hash, created_at FROM operators ORDER BY name")
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
        query("DELETE FROM operator_sessions WHERE operator = $1")
            .bind(name)
            .execute(&mut tx)
            .await?;
        let deleted = query("DELETE FROM operators WHERE name = $1")
            .bind(name)
            .execute(&mut tx)
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
        query(
            "INSERT INTO operator_sessions (id_sha256, operator, csrf_token, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&session.id_sha256)
        .bind(&session.operator)
        .bind(&session.csrf_token)
        .bind(session.created_at)
        .bind(session.expires_at)
        .execute(&mut tx)
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
        let row = query(
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
        self.write_one(query("DELETE FROM operator_sessions WHERE id_sha256 = $1").bind(id_sha256))
            .await?;
        Ok(())
    }

    pub async fn purge_expired_operator_sessions(&self, now: i64) -> StoreResult<u64> {
        self.write_one(query("DELETE FROM operator_sessions WHERE expires_at <= $1").bind(now))
            .await
    }

    pub async fn add_audit(&self, entry: &AuditEntry) -> StoreResult<()> {
        self.write_one(
            query(
                "INSERT INTO audit_log (id, at, actor, method, path, status) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&entry.id)
            .bind(entry.at)
            .bind(&entry.actor)
            .bind(&entry.method)
            .bind(&entry.path)
            .bind(i32::from(entry.status)),
        )
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
        query(
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
}
