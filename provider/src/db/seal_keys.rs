//! The rotating keys that seal session state handed to endpoints.

use super::sql::query;

use super::{Db, StoreResult};

impl Db {
    pub async fn seal_keys(&self) -> StoreResult<Vec<(String, String, i64)>> {
        Ok(
            query("SELECT id, secret, created_at FROM seal_keys ORDER BY created_at DESC, id")
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
        let fresh = query("SELECT 1 FROM seal_keys WHERE created_at > $1")
            .bind(fresh_after)
            .fetch_optional(&mut tx)
            .await?;
        if fresh.is_none() {
            query("INSERT INTO seal_keys (id, secret, created_at) VALUES ($1, $2, $3)")
                .bind(id)
                .bind(secret)
                .bind(now)
                .execute(&mut tx)
                .await?;
        }
        query("DELETE FROM seal_keys WHERE created_at < $1")
            .bind(drop_before)
            .execute(&mut tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}
