//! Pushes: provider-to-endpoint messages. They are queued in the database (durable, ordered per
//! endpoint by sequence number, kept until acknowledged or expired) and the hub wakes the push
//! channels (WebSocket or long-poll) of this replica when something is queued or an endpoint is
//! revoked. Channels also re-read the queue periodically, for what other replicas queued.

use std::collections::HashMap;
use std::sync::Mutex;

use switchyard_protocol::dict::{Dict, Encoding, Value};
use tokio::sync::watch;

use crate::db::pushes::enqueue_push;
use crate::db::records::StoredPush;
use crate::db::{StoreError, StoreResult, WriteTx};
use crate::shared::now_ms;

/// What a push channel is told: a change counter, and whether the endpoint was revoked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Signal {
    pub generation: u64,
    pub revoked: bool,
}

#[derive(Default)]
pub struct PushHub {
    channels: Mutex<HashMap<String, watch::Sender<Signal>>>,
}

impl PushHub {
    pub fn subscribe(&self, endpoint_id: &str) -> watch::Receiver<Signal> {
        let mut channels = self.channels.lock().expect("push hub lock");
        channels
            .entry(endpoint_id.to_string())
            .or_insert_with(|| watch::channel(Signal::default()).0)
            .subscribe()
    }

    /// Forgets an endpoint's entry once its last channel closed.
    pub fn release(&self, endpoint_id: &str) {
        let mut channels = self.channels.lock().expect("push hub lock");
        if channels
            .get(endpoint_id)
            .is_some_and(|tx| tx.receiver_count() == 0)
        {
            channels.remove(endpoint_id);
        }
    }

    pub fn notify(&self, endpoint_id: &str) {
        if let Some(tx) = self
            .channels
            .lock()
            .expect("push hub lock")
            .get(endpoint_id)
        {
            tx.send_modify(|s| s.generation += 1);
        }
    }

    pub fn revoke(&self, endpoint_id: &str) {
        if let Some(tx) = self
            .channels
            .lock()
            .expect("push hub lock")
            .get(endpoint_id)
        {
            tx.send_modify(|s| s.revoked = true);
        }
    }
}

/// Pushes made inside a transaction; the hub is woken only after it commits.
#[derive(Default)]
pub struct Outbox {
    pub endpoints: Vec<String>,
}

impl Outbox {
    /// Queues `push` for the endpoint, expiring after `ttl_ms`.
    pub async fn push(
        &mut self,
        tx: &mut WriteTx,
        endpoint_id: &str,
        push: &Dict,
        ttl_ms: i64,
    ) -> StoreResult<bool> {
        let body = String::from_utf8(push.encode(Encoding::Plist)).expect("XML is UTF-8");
        let queued = enqueue_push(tx, endpoint_id, &body, now_ms() + ttl_ms)
            .await?
            .is_some();
        if queued {
            metrics::counter!("switchyard_pushes_queued_total").increment(1);
            self.endpoints.push(endpoint_id.to_string());
        }
        Ok(queued)
    }

    pub fn wake(self, hub: &PushHub) {
        for endpoint in self.endpoints {
            hub.notify(&endpoint);
        }
    }
}

/// The push as delivered: its stored dictionary plus `push-id`.
pub fn delivered_form(stored: &StoredPush) -> StoreResult<Dict> {
    let mut dict = Dict::decode(stored.body.as_bytes(), Encoding::Plist)
        .map_err(|e| StoreError::Corrupt(format!("queued push {}: {e}", stored.seq)))?;
    dict.insert("push-id", Value::Integer(stored.seq));
    Ok(dict)
}
