//! Pushes: provider-to-endpoint messages. They are queued in the database (durable, ordered per
//! endpoint by sequence number, kept until acknowledged or expired) and the hub wakes the push
//! channels (WebSocket or long-poll) of this replica when something is queued or an endpoint is
//! revoked. Channels also re-read the queue periodically, for what other replicas queued.
//!
//! An endpoint served inside this process (a SIP account's gateway endpoint, which the SIP edge
//! acts as) may register a [`PushSink`] on the hub: the pushes this process makes for it that the
//! sink takes are handed to it in memory after their write unit commits, and never queued.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use switchyard_protocol::dict::{Dict, Encoding, Value};
use switchyard_protocol::invitation::Push;
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

/// Takes an endpoint's pushes in memory, instead of the queue, for what it can act on at once.
///
/// Durability: a push handed to a sink is never written to the database, so it lives only in
/// this process. That is the right trade only for pushes that drive state which lives only in
/// this process anyway (the SIP edge's call legs: their dialogs, transactions and timers are
/// in memory and die with the process, so a durable copy of a push for one would have nothing to
/// drive after a restart). A sink must therefore take only what it can act on here and now, and
/// leave the rest (say no) to be queued as for any endpoint, for other replicas and for a
/// restarted process; with no sink registered, everything is queued.
pub trait PushSink: Send + Sync {
    /// Whether the sink takes `push`: decided at once, inside the write unit that makes it,
    /// before the unit commits (so anything the pushes after it need must be set up here).
    fn take(&self, push: &Push) -> bool;

    /// A push the sink took, once its unit committed.
    fn deliver(&self, push: Push);

    /// A push the sink took, whose unit did not commit: it is dropped, as its queue rows would
    /// have been.
    fn abandon(&self, push: &Push);
}

/// A registered sink, with the id of its registration.
type Registered = (u64, Arc<dyn PushSink>);

#[derive(Default)]
pub struct PushHub {
    channels: Mutex<HashMap<String, watch::Sender<Signal>>>,
    /// The in-process sinks by endpoint id.
    sinks: Mutex<HashMap<String, Registered>>,
    next_sink: AtomicU64,
}

/// A sink's registration; dropping it unregisters the sink (unless another replaced it).
pub struct SinkRegistration {
    hub: Arc<PushHub>,
    endpoint_id: String,
    id: u64,
}

impl Drop for SinkRegistration {
    fn drop(&mut self) {
        let mut sinks = self.hub.sinks.lock().expect("push sinks lock");
        if sinks
            .get(&self.endpoint_id)
            .is_some_and(|(id, _)| *id == self.id)
        {
            sinks.remove(&self.endpoint_id);
        }
    }
}

impl PushHub {
    /// Registers `sink` for the pushes this process makes for `endpoint_id`, in place of any
    /// sink before it, until the registration is dropped or the endpoint revoked.
    pub fn attach(
        self: &Arc<Self>,
        endpoint_id: &str,
        sink: Arc<dyn PushSink>,
    ) -> SinkRegistration {
        let id = self.next_sink.fetch_add(1, Ordering::Relaxed);
        self.sinks
            .lock()
            .expect("push sinks lock")
            .insert(endpoint_id.to_string(), (id, sink));
        SinkRegistration {
            hub: self.clone(),
            endpoint_id: endpoint_id.to_string(),
            id,
        }
    }

    /// Whether an in-process sink is registered for `endpoint_id`.
    pub fn has_sink(&self, endpoint_id: &str) -> bool {
        self.sinks
            .lock()
            .expect("push sinks lock")
            .contains_key(endpoint_id)
    }

    /// The sink of `endpoint_id`, if it has one and it takes `push`.
    fn sink_taking(&self, endpoint_id: &str, push: &Push) -> Option<Arc<dyn PushSink>> {
        let sink = self
            .sinks
            .lock()
            .expect("push sinks lock")
            .get(endpoint_id)
            .map(|(_, sink)| sink.clone())?;
        // Asked outside the hub's lock: the sink takes locks of its own.
        sink.take(push).then_some(sink)
    }

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
        self.sinks
            .lock()
            .expect("push sinks lock")
            .remove(endpoint_id);
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

/// Pushes made inside a transaction; the hub is woken, and the pushes sinks took are handed to
/// them, only after it commits. Dropped without [`Outbox::wake`] (the unit failed), the taken
/// pushes are abandoned.
#[derive(Default)]
pub struct Outbox {
    pub endpoints: Vec<String>,
    /// Pushes taken by an in-process sink, to hand over after the commit.
    direct: Vec<(Arc<dyn PushSink>, Push)>,
}

impl Outbox {
    /// Hands `push` for the endpoint to its in-process sink once the transaction commits, if it
    /// has one that takes it; else queues it, expiring after `ttl_ms`. False when it was queued
    /// for nobody: the endpoint is gone or revoked.
    pub async fn push(
        &mut self,
        tx: &mut WriteTx,
        hub: &PushHub,
        endpoint_id: &str,
        push: &Push,
        ttl_ms: i64,
    ) -> StoreResult<bool> {
        if self.take_direct(hub, endpoint_id, push) {
            return Ok(true);
        }
        let body = String::from_utf8(push.to_dict().encode(Encoding::Plist)).expect("XML is UTF-8");
        let queued = enqueue_push(tx, endpoint_id, &body, now_ms() + ttl_ms)
            .await?
            .is_some();
        if queued {
            metrics::counter!("switchyard_pushes_queued_total").increment(1);
            self.endpoints.push(endpoint_id.to_string());
        }
        Ok(queued)
    }

    /// Whether the endpoint's in-process sink takes `push`, to be handed over after the commit.
    fn take_direct(&mut self, hub: &PushHub, endpoint_id: &str, push: &Push) -> bool {
        match hub.sink_taking(endpoint_id, push) {
            Some(sink) => {
                self.direct.push((sink, push.clone()));
                true
            }
            None => false,
        }
    }

    /// After the commit: hands the taken pushes over, in the order they were made, and wakes
    /// the channels of the endpoints whose queues grew.
    pub fn wake(mut self, hub: &PushHub) {
        for (sink, push) in std::mem::take(&mut self.direct) {
            metrics::counter!("switchyard_pushes_direct_total").increment(1);
            sink.deliver(push);
        }
        for endpoint in std::mem::take(&mut self.endpoints) {
            hub.notify(&endpoint);
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        for (sink, push) in &self.direct {
            sink.abandon(push);
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use switchyard_protocol::invitation::{CancelPush, CancelReason, SessionId};

    /// Takes the pushes of sessions it was told of; records what it was given.
    #[derive(Default)]
    struct Sink {
        sessions: Vec<&'static str>,
        delivered: Mutex<Vec<String>>,
        abandoned: Mutex<Vec<String>>,
    }

    impl PushSink for Sink {
        fn take(&self, push: &Push) -> bool {
            self.sessions.contains(&push.session_id().as_str())
        }
        fn deliver(&self, push: Push) {
            let session = push.session_id().as_str().to_string();
            self.delivered.lock().unwrap().push(session);
        }
        fn abandon(&self, push: &Push) {
            let session = push.session_id().as_str().to_string();
            self.abandoned.lock().unwrap().push(session);
        }
    }

    /// A Cancel Push of `session`, for the tests of the push paths here and in `sip::gateway`.
    pub(crate) fn cancel(session: &str) -> Push {
        Push::Cancel(CancelPush {
            session_id: SessionId::parse(session).unwrap(),
            self_uri: "tel:+15551230001".into(),
            peer_uri: "tel:+15551230002".into(),
            reason: CancelReason::Cancelled,
        })
    }

    #[test]
    fn a_sink_gets_what_it_takes_after_the_commit_and_nothing_if_the_unit_fails() {
        let hub = Arc::new(PushHub::default());
        let sink = Arc::new(Sink {
            sessions: vec!["session-0001", "session-0002"],
            ..Sink::default()
        });
        let registration = hub.attach("gw", sink.clone());
        let mut outbox = Outbox::default();
        assert!(outbox.take_direct(&hub, "gw", &cancel("session-0001")));
        assert!(
            !outbox.take_direct(&hub, "gw", &cancel("session-0009")),
            "not its"
        );
        assert!(
            !outbox.take_direct(&hub, "other", &cancel("session-0001")),
            "no sink"
        );
        assert!(
            sink.delivered.lock().unwrap().is_empty(),
            "not before the commit"
        );
        outbox.wake(&hub);
        assert_eq!(*sink.delivered.lock().unwrap(), ["session-0001"]);

        let mut failed = Outbox::default();
        assert!(failed.take_direct(&hub, "gw", &cancel("session-0002")));
        drop(failed);
        assert_eq!(*sink.delivered.lock().unwrap(), ["session-0001"]);
        assert_eq!(*sink.abandoned.lock().unwrap(), ["session-0002"]);

        // Unregistered: everything is queued again.
        drop(registration);
        assert!(!Outbox::default().take_direct(&hub, "gw", &cancel("session-0001")));
    }

    #[test]
    fn a_replaced_or_revoked_sink_takes_nothing_more() {
        let hub = Arc::new(PushHub::default());
        let all = || {
            Arc::new(Sink {
                sessions: vec!["session-0001"],
                ..Sink::default()
            })
        };
        let first = hub.attach("gw", all());
        let second = hub.attach("gw", all());
        // The first registration going does not take the second sink with it.
        drop(first);
        assert!(hub.has_sink("gw"));
        assert!(Outbox::default().take_direct(&hub, "gw", &cancel("session-0001")));
        hub.revoke("gw");
        assert!(!hub.has_sink("gw"));
        assert!(!Outbox::default().take_direct(&hub, "gw", &cancel("session-0001")));
        drop(second);
    }
}
