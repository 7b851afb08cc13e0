//! The push queue: per endpoint, ordered by sequence number, kept until acknowledged or expired.

use super::sql::query;

use super::records::{GatewayPushKey, StoredPush};
use super::{Db, StoreResult, WriteTx};
use crate::shared::now_ms;

impl Db {
    /// Pushes after `after_seq`, in order, that have not expired.
    pub async fn pending_pushes(
        &self,
        endpoint_id: &str,
        after_seq: i64,
        limit: i64,
    ) -> StoreResult<Vec<StoredPush>> {
        let rows = query(
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

    /// The endpoints with pushes queued from `since` (Unix ms) on that have not expired, at
    /// most `limit` of them: what the push channels' watcher wakes (`push::replicas`).
    pub async fn endpoints_queued_since(&self, since: i64, limit: i64) -> StoreResult<Vec<String>> {
        let rows = query(
            "SELECT DISTINCT endpoint_id FROM pushes WHERE created_at >= $1 AND expires_at > $2 \
             LIMIT $3",
        )
        .bind(since)
        .bind(now_ms())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// The queued pushes of SIP gateway endpoints that come after `after` in the order of
    /// (creation time in ms, endpoint id, sequence number), not expired: at most `limit`, in that
    /// order, each with its place in it.
    pub async fn gateway_pushes_after(
        &self,
        after: &GatewayPushKey,
        limit: i64,
    ) -> StoreResult<Vec<(GatewayPushKey, StoredPush)>> {
        let rows = query(
            "SELECT p.created_at, p.endpoint_id, p.seq, p.body FROM pushes p \
             JOIN sip_accounts a ON a.endpoint_id = p.endpoint_id \
             WHERE p.created_at >= $1 AND (p.created_at, p.endpoint_id, p.seq) > ($1, $2, $3) \
             AND p.expires_at > $4 \
             ORDER BY p.created_at, p.endpoint_id, p.seq LIMIT $5",
        )
        .bind(after.created_at)
        .bind(&after.endpoint_id)
        .bind(after.seq)
        .bind(now_ms())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let key = GatewayPushKey {
                    created_at: r.get(0),
                    endpoint_id: r.get(1),
                    seq: r.get(2),
                };
                let body = r.get(3);
                (key.clone(), StoredPush { seq: key.seq, body })
            })
            .collect())
    }

    /// Acknowledges every push up to `upto_seq`; returns how many were removed by this call.
    pub async fn ack_pushes(&self, endpoint_id: &str, upto_seq: i64) -> StoreResult<u64> {
        let mut tx = self.begin_write().await?;
        let removed = query("DELETE FROM pushes WHERE endpoint_id = $1 AND seq <= $2")
            .bind(endpoint_id)
            .bind(upto_seq)
            .execute(&mut tx)
            .await?
            .rows_affected();
        query(
            "UPDATE endpoints SET push_acked = $2 WHERE id = $1 AND push_acked < $2 AND push_seq >= $2",
        )
        .bind(endpoint_id)
        .bind(upto_seq)
        .execute(&mut tx)
        .await?;
        tx.commit().await?;
        Ok(removed)
    }

    /// The last sequence number the endpoint acknowledged.
    pub async fn push_acked(&self, endpoint_id: &str) -> StoreResult<i64> {
        Ok(query("SELECT push_acked FROM endpoints WHERE id = $1")
            .bind(endpoint_id)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| r.get(0))
            .unwrap_or(0))
    }

    /// Takes one push off the queue for whoever asks first: of several replicas reading an
    /// endpoint's queue, only the one that gets `true` acts on it.
    pub async fn claim_push(&self, endpoint_id: &str, seq: i64) -> StoreResult<bool> {
        let mut tx = self.begin_write().await?;
        let claimed = query("DELETE FROM pushes WHERE endpoint_id = $1 AND seq = $2")
            .bind(endpoint_id)
            .bind(seq)
            .execute(&mut tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(claimed == 1)
    }

    pub async fn delete_expired_pushes(&self) -> StoreResult<u64> {
        self.write_one(query("DELETE FROM pushes WHERE expires_at <= $1").bind(now_ms()))
            .await
    }
}

/// Queues a push for an active endpoint; returns its sequence number, or None if the endpoint
/// is gone or revoked.
pub async fn enqueue_push(
    conn: &mut WriteTx,
    endpoint_id: &str,
    body: &str,
    expires_at: i64,
) -> StoreResult<Option<i64>> {
    let seq: Option<i64> = query(
        "UPDATE endpoints SET push_seq = push_seq + 1 WHERE id = $1 AND revoked_at IS NULL RETURNING push_seq",
    )
    .bind(endpoint_id)
    .fetch_optional(&mut *conn)
    .await?
    .map(|r| r.get(0));
    let Some(seq) = seq else { return Ok(None) };
    query(
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
