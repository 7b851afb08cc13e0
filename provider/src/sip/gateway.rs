//! The pushes of the SIP accounts' gateway endpoints, into the calls at this edge: an Initiate
//! starts a call to the account's phones ([`start::incoming`]); the rest go to the call leg
//! they belong to. Each gateway's queue is read once a second or when this replica's hub wakes
//! it, every push claimed ([`crate::db::Db::claim_push`]) before it is acted on, one for a call
//! held elsewhere left for its replica.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use switchyard_protocol::dict::{Dict, Encoding};
use tokio::task::JoinHandle;

use super::calls::{leg_key, Event};
use super::handle::EdgeHandle;
use super::start;
use crate::db::sip::SipAccount;

/// Starts reading the pushes of every SIP account's gateway endpoint, and of accounts added
/// later (looked for once a second).
pub async fn watch_gateways(handle: Arc<EdgeHandle>) {
    let mut watched: HashMap<String, JoinHandle<()>> = HashMap::new();
    let mut since = i64::MIN;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        watched.retain(|_, task| !task.is_finished());
        match handle.app.db.sip_gateways_since(since).await {
            Ok(accounts) => {
                for account in accounts {
                    since = since.max(account.created_at - 1);
                    let Some(endpoint) = account.endpoint_id.clone() else {
                        continue;
                    };
                    if watched.contains_key(&endpoint) {
                        continue;
                    }
                    let task = tokio::spawn(gateway_pushes(handle.clone(), account));
                    watched.insert(endpoint, task);
                }
            }
            Err(e) => tracing::warn!(error = %e, "SIP edge: reading gateway endpoints"),
        }
    }
}

/// Takes the pushes of one account's gateway endpoint off its queue and acts on them: an
/// Initiate starts a call to the account's phones; the rest go to the call they belong to. A
/// push for a call another replica holds is left for it.
async fn gateway_pushes(handle: Arc<EdgeHandle>, account: SipAccount) {
    let Some(endpoint) = account.endpoint_id.clone() else {
        return;
    };
    let mut signal = handle.app.hub.subscribe(&endpoint);
    let mut shutdown = handle.app.shutdown.clone();
    loop {
        // The database closes once the provider has shut down: stop reading before that.
        if signal.borrow().revoked || *shutdown.borrow() {
            break;
        }
        match handle.app.db.pending_pushes(&endpoint, 0, 100).await {
            Ok(pushes) => {
                for stored in pushes {
                    let Ok(push) = Dict::decode(stored.body.as_bytes(), Encoding::Plist) else {
                        continue;
                    };
                    on_queued_push(&handle, &account, &endpoint, stored.seq, push).await;
                }
            }
            Err(_) if *shutdown.borrow() => break,
            Err(e) => tracing::warn!(error = %e, "SIP edge: reading a gateway's pushes"),
        }
        // Woken by this replica's pushes at once; other replicas' are found within a second.
        tokio::select! {
            _ = tokio::time::timeout(Duration::from_secs(1), signal.changed()) => {}
            _ = crate::shared::shutting_down(&mut shutdown) => break,
        }
    }
    handle.app.hub.release(&endpoint);
}

/// A push read off the gateway's queue: claimed, then acted on, unless it is for a call this
/// edge does not hold.
async fn on_queued_push(
    handle: &Arc<EdgeHandle>,
    account: &SipAccount,
    endpoint: &str,
    seq: i64,
    push: Dict,
) {
    let session = push.str("session-id").unwrap_or_default();
    let leg = leg_key(session, endpoint);
    let initiate = push.str("action") == Ok("initiate");
    if !initiate && !handle.calls.has_leg(&leg) {
        return;
    }
    match handle.app.db.claim_push(endpoint, seq).await {
        Ok(true) => {}
        Ok(false) => return,
        Err(e) => {
            tracing::warn!(error = %e, "SIP edge: claiming a push");
            return;
        }
    }
    if initiate {
        start::incoming(handle, account.clone(), push).await;
    } else {
        handle.calls.send_event(&leg, Event::Push(push));
    }
}
