//! What other replicas do to the endpoints of this replica's open push channels (WebSockets and
//! long-polls): the pushes they queue and the endpoints they revoke or delete. One task reads
//! both for all channels, every `push.recheck_interval_ms`, and acts on the channels through
//! the hub, as a push or revocation made here does:
//!
//! - the endpoints with pushes queued since its previous read (less [`QUEUE_LOOKBACK_MS`]),
//!   in one query: their channels are woken and read their own queues;
//! - which endpoints with open channels are still active, [`ACTIVE_PAGE`] ids a query: the
//!   others are revoked on the hub, which closes their channels.
//!
//! Each channel used to read its queue and its endpoint itself at that interval: two reads a
//! channel an interval, 100,000 reads a second for 100,000 channels at the default 2 s. Now the
//! cost is one query, plus one per [`ACTIVE_PAGE`] channels, an interval; a channel reads its
//! queue only when something was queued for it. What a channel on this replica is told by this
//! replica (its pushes, its revocations) still goes through the hub at once.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::PushHub;
use crate::db::Db;
use crate::shared::now_ms;

/// How far before the previous read each read of the queue begins: a push becomes visible
/// when its unit commits, a moment after the time it was made with, and replicas' clocks differ
/// a little.
const QUEUE_LOOKBACK_MS: i64 = 10_000;
/// Endpoints woken from one read of the queue; past it, every open channel is woken instead.
const QUEUE_ENDPOINTS: i64 = 10_000;
/// Endpoint ids checked by one query for revocation.
const ACTIVE_PAGE: usize = 500;

/// Runs until `shutdown` is set.
pub async fn watch_channels(
    db: Db,
    hub: Arc<PushHub>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut read_from = now_ms();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = crate::shared::shutting_down(&mut shutdown) => return,
        }
        let started = now_ms();
        if wake_queued(&db, &hub, read_from).await {
            read_from = started.saturating_sub(QUEUE_LOOKBACK_MS);
        }
        revoke_inactive(&db, &hub).await;
    }
}

/// Wakes the channels of endpoints with pushes queued from `from` (ms) on; false when the
/// database could not be read (the next read starts from the same time).
async fn wake_queued(db: &Db, hub: &PushHub, from: i64) -> bool {
    match db.endpoints_queued_since(from, QUEUE_ENDPOINTS).await {
        Ok(endpoints) if endpoints.len() as i64 == QUEUE_ENDPOINTS => {
            hub.notify_all();
            true
        }
        Ok(endpoints) => {
            for endpoint in &endpoints {
                hub.notify(endpoint);
            }
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "push channels: reading the queue");
            false
        }
    }
}

/// Revokes, on the hub, the endpoints of open channels that are revoked or gone.
async fn revoke_inactive(db: &Db, hub: &PushHub) {
    let open = hub.channel_endpoints();
    for page in open.chunks(ACTIVE_PAGE) {
        let active = match db.active_among(page).await {
            Ok(active) => active,
            Err(e) => {
                tracing::warn!(error = %e, "push channels: reading the endpoints' status");
                return;
            }
        };
        for endpoint in page.iter().filter(|e| !active.contains(e)) {
            hub.revoke(endpoint);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::records::NewUser;
    use crate::db::sql::query;

    /// A database with one user and one active endpoint, `ep`.
    async fn db_with_endpoint() -> (tempfile::TempDir, Db, String) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("db.sqlite").display());
        let db = Db::connect(&url, 4).await.unwrap();
        let uris = ["tel:+442071000000".to_string()];
        db.create_user(&NewUser {
            id: "u1",
            display_name: "U",
            uris: &uris,
            created_at: now_ms(),
        })
        .await
        .unwrap();
        let mut tx = db.begin_write().await.unwrap();
        query(
            "INSERT INTO endpoints (id, user_id, name, push_token, capabilities, cert_pem, \
             cert_fingerprint, cert_not_after, created_at) \
             VALUES ('ep', 'u1', 'phone', 'token', '', '', 'fp', 0, 0)",
        )
        .execute(&mut tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();
        (dir, db, "ep".to_string())
    }

    async fn queue_push(db: &Db, endpoint: &str) {
        let mut tx = db.begin_write().await.unwrap();
        query(
            "INSERT INTO pushes (endpoint_id, seq, body, expires_at, created_at) \
             VALUES ($1, 1, '', $2, $3)",
        )
        .bind(endpoint)
        .bind(now_ms() + 60_000)
        .bind(now_ms())
        .execute(&mut tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();
    }

    #[tokio::test]
    async fn a_revoked_or_deleted_endpoint_has_its_channels_revoked_and_others_keep_theirs() {
        let (_dir, db, endpoint) = db_with_endpoint().await;
        let hub = Arc::new(PushHub::default());
        let mut revoked = hub.subscribe(&endpoint);
        let mut unknown = hub.subscribe("no-such-endpoint");
        revoke_inactive(&db, &hub).await;
        assert!(!revoked.borrow_and_update().revoked);
        assert!(unknown.borrow_and_update().revoked);

        db.revoke_endpoint(&endpoint).await.unwrap();
        revoke_inactive(&db, &hub).await;
        assert!(revoked.borrow_and_update().revoked);
    }

    #[tokio::test]
    async fn only_endpoints_with_pushes_queued_since_the_read_are_woken() {
        let (_dir, db, endpoint) = db_with_endpoint().await;
        let hub = Arc::new(PushHub::default());
        let mut queued = hub.subscribe(&endpoint);
        let mut idle = hub.subscribe("other");
        let before = now_ms();
        queue_push(&db, &endpoint).await;

        assert!(wake_queued(&db, &hub, now_ms() + 1_000).await);
        assert!(!queued.has_changed().unwrap());
        assert!(wake_queued(&db, &hub, before).await);
        assert!(queued.has_changed().unwrap());
        assert!(!idle.has_changed().unwrap());
        queued.borrow_and_update();
        idle.borrow_and_update();
    }
}
