//! Pushes: provider-to-endpoint messages. A push goes the first of three ways that is open:
//!
//! 1. An endpoint served inside this process (a SIP account's gateway endpoint, which the SIP
//!    edge acts as) may register a [`PushSink`] on the hub: the pushes it takes are handed to it
//!    in memory after their write unit commits, and never queued.
//! 2. An endpoint with a WebSocket channel open on this replica gets the push on it, in memory,
//!    after the unit commits ([`DirectChannel`]): no queue row, no read, no acknowledgement. The
//!    durability rule allows it (`docs/architecture.md`, "Durability"): a call's pushes are
//!    worthless after its ring deadline, and a crash closes the channel anyway.
//! 3. Else it is queued in the database (durable, ordered per endpoint by sequence number, kept
//!    until acknowledged or expired) and the hub wakes the endpoint's channels on this replica.
//!    What other replicas queue or revoke reaches this replica's channels through [`replicas`].

pub mod replicas;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use switchyard_protocol::dict::{Dict, Encoding, Value};
use switchyard_protocol::invitation::Push;
use tokio::sync::{watch, Notify};

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

/// An open channel's inbox, with the id of its registration.
type RegisteredInbox = (u64, Arc<InboxShared>);

/// How many pushes a WebSocket channel's in-memory inbox holds before further pushes for its
/// endpoint are queued in the database instead (a slow reader must not grow memory).
const DIRECT_INBOX: usize = 64;

#[derive(Default)]
pub struct PushHub {
    channels: Mutex<HashMap<String, watch::Sender<Signal>>>,
    /// The in-process sinks by endpoint id.
    sinks: Mutex<HashMap<String, Registered>>,
    /// Ids of sink and inbox registrations.
    next_registration: AtomicU64,
    /// The open WebSocket channels' inboxes by endpoint id, each with its registration's id.
    inboxes: Mutex<HashMap<String, Vec<RegisteredInbox>>>,
}

/// A WebSocket channel's in-memory inbox: at most [`DIRECT_INBOX`] pushes, counting the places
/// reserved for pushes whose unit has not committed yet. Nothing is allocated while it is empty
/// (a tokio `mpsc` channel allocates its state and a first block of slots when it is made:
/// 800 bytes for every idle WebSocket); each push is boxed (a `Push` is over 300 bytes).
#[derive(Default)]
struct InboxShared {
    state: Mutex<InboxState>,
    /// Woken when a push arrives, a reservation is given back, or the inbox closes.
    changed: Notify,
}

#[derive(Default)]
struct InboxState {
    pushes: VecDeque<Box<Push>>,
    /// Places promised to reservations ([`InboxPermit`]) not yet sent or dropped.
    reserved: usize,
    /// The endpoint was revoked: no more reservations, and the inbox ends once empty.
    closed: bool,
}

impl InboxShared {
    fn lock(&self) -> std::sync::MutexGuard<'_, InboxState> {
        self.state.lock().expect("push inbox lock")
    }

    /// A place for one push, unless the inbox is full or closed.
    fn reserve(self: &Arc<Self>) -> Option<InboxPermit> {
        let mut state = self.lock();
        if state.closed || state.pushes.len() + state.reserved >= DIRECT_INBOX {
            return None;
        }
        state.reserved += 1;
        Some(InboxPermit {
            inbox: Some(self.clone()),
        })
    }

    fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_one();
    }
}

/// A place reserved in a channel's inbox; given back if dropped unsent.
pub(crate) struct InboxPermit {
    inbox: Option<Arc<InboxShared>>,
}

impl InboxPermit {
    fn send(mut self, push: Box<Push>) {
        let inbox = self.inbox.take().expect("a permit is sent once");
        {
            let mut state = inbox.lock();
            state.reserved -= 1;
            state.pushes.push_back(push);
        }
        inbox.changed.notify_one();
    }
}

impl Drop for InboxPermit {
    fn drop(&mut self) {
        if let Some(inbox) = self.inbox.take() {
            inbox.lock().reserved -= 1;
            inbox.changed.notify_one();
        }
    }
}

/// The receiving end of a channel's inbox.
pub struct Inbox {
    shared: Arc<InboxShared>,
}

/// Why [`Inbox::try_recv`] gave nothing.
#[derive(Debug, PartialEq, Eq)]
pub enum TryRecvError {
    Empty,
    /// Closed (the endpoint was revoked), and every push in it taken.
    Disconnected,
}

impl Inbox {
    /// The next push; None once the inbox is closed and empty. Cancel-safe: a push is taken
    /// only when this returns it.
    pub async fn recv(&mut self) -> Option<Box<Push>> {
        loop {
            match self.try_recv() {
                Ok(push) => return Some(push),
                Err(TryRecvError::Disconnected) => return None,
                // `notify_one` keeps a wake-up given while nobody waits: none is lost between
                // the look and the wait.
                Err(TryRecvError::Empty) => self.shared.changed.notified().await,
            }
        }
    }

    pub fn try_recv(&mut self) -> Result<Box<Push>, TryRecvError> {
        let mut state = self.shared.lock();
        match state.pushes.pop_front() {
            Some(push) => {
                if state.pushes.is_empty() {
                    // Frees the ring buffer: an idle channel holds none.
                    state.pushes = VecDeque::new();
                }
                Ok(push)
            }
            None if state.closed && state.reserved == 0 => Err(TryRecvError::Disconnected),
            None => Err(TryRecvError::Empty),
        }
    }

    /// Places free for further pushes.
    #[cfg(test)]
    fn capacity(&self) -> usize {
        let state = self.shared.lock();
        DIRECT_INBOX - state.pushes.len() - state.reserved
    }
}

/// A WebSocket channel's in-memory inbox, registered on the hub while the channel is open:
/// pushes made on this replica for its endpoint arrive here after their unit commits, in place
/// of the queue. Dropping it unregisters the inbox.
pub struct DirectChannel {
    hub: Arc<PushHub>,
    endpoint_id: String,
    id: u64,
    pub inbox: Inbox,
}

impl Drop for DirectChannel {
    fn drop(&mut self) {
        let mut inboxes = self.hub.inboxes.lock().expect("push inboxes lock");
        if let Some(open) = inboxes.get_mut(&self.endpoint_id) {
            open.retain(|(id, _)| *id != self.id);
            if open.is_empty() {
                inboxes.remove(&self.endpoint_id);
            }
        }
    }
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
        let id = self.next_registration.fetch_add(1, Ordering::Relaxed);
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

    /// Opens an in-memory inbox for a channel of `endpoint_id`, until it is dropped or the
    /// endpoint revoked (then the inbox ends).
    pub fn open_direct(self: &Arc<Self>, endpoint_id: &str) -> DirectChannel {
        let id = self.next_registration.fetch_add(1, Ordering::Relaxed);
        let shared = Arc::new(InboxShared::default());
        self.inboxes
            .lock()
            .expect("push inboxes lock")
            .entry(endpoint_id.to_string())
            .or_default()
            .push((id, shared.clone()));
        DirectChannel {
            hub: self.clone(),
            endpoint_id: endpoint_id.to_string(),
            id,
            inbox: Inbox { shared },
        }
    }

    /// A place for one push in the inbox of every channel open for `endpoint_id`; None if it
    /// has none, or one of them is full (then the push is queued, and every channel reads it
    /// from the queue).
    fn reserve_inboxes(&self, endpoint_id: &str) -> Option<Vec<InboxPermit>> {
        let inboxes = self.inboxes.lock().expect("push inboxes lock");
        inboxes
            .get(endpoint_id)?
            .iter()
            .map(|(_, inbox)| inbox.reserve())
            .collect()
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

    /// The endpoints with a push channel (WebSocket or long-poll) open on this replica.
    pub fn channel_endpoints(&self) -> Vec<String> {
        self.channels
            .lock()
            .expect("push hub lock")
            .keys()
            .cloned()
            .collect()
    }

    /// Wakes every open channel, to read its queue.
    pub fn notify_all(&self) {
        for tx in self.channels.lock().expect("push hub lock").values() {
            tx.send_modify(|s| s.generation += 1);
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
        let closed = self
            .inboxes
            .lock()
            .expect("push inboxes lock")
            .remove(endpoint_id);
        for (_, inbox) in closed.into_iter().flatten() {
            inbox.close();
        }
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

/// Pushes made inside a transaction; the hub is woken, and the pushes sinks and open channels
/// took are handed to them, only after it commits. Dropped without [`Outbox::wake`] (the unit
/// failed), the taken pushes are abandoned.
#[derive(Default)]
pub struct Outbox {
    pub endpoints: Vec<String>,
    /// Pushes taken by an in-process sink, to hand over after the commit.
    direct: Vec<(Arc<dyn PushSink>, Push)>,
    /// Pushes for open channels, with a place reserved in each channel's inbox.
    to_channels: Vec<(Vec<InboxPermit>, Push)>,
}

impl Outbox {
    /// Hands `push` for the endpoint to its in-process sink, or else to its channels open on
    /// this replica, once the transaction commits; with neither, queues it, expiring after
    /// `ttl_ms`. False when it was queued for nobody: the endpoint is gone or revoked.
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
        if self.take_for_channels(hub, endpoint_id, push) {
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

    /// Whether the endpoint's channels open on this replica all have room for `push`, which then
    /// goes to them after the commit.
    fn take_for_channels(&mut self, hub: &PushHub, endpoint_id: &str, push: &Push) -> bool {
        match hub.reserve_inboxes(endpoint_id) {
            Some(permits) => {
                self.to_channels.push((permits, push.clone()));
                true
            }
            None => false,
        }
    }

    /// After the commit: hands the taken pushes over, in the order they were made, and wakes
    /// the channels of the endpoints whose queues grew.
    pub fn wake(mut self, hub: &PushHub) {
        for (sink, push) in std::mem::take(&mut self.direct) {
            metrics::counter!("switchyard_pushes_direct_total", "to" => "sip-edge").increment(1);
            sink.deliver(push);
        }
        for (mut permits, push) in std::mem::take(&mut self.to_channels) {
            metrics::counter!("switchyard_pushes_direct_total", "to" => "channel").increment(1);
            // One open channel (the usual case) takes the push itself; others get copies.
            let Some(last) = permits.pop() else { continue };
            let push = Box::new(push);
            for permit in permits {
                permit.send(push.clone());
            }
            last.send(push);
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

    #[test]
    fn open_channels_get_pushes_after_the_commit_and_nothing_if_the_unit_fails() {
        let hub = Arc::new(PushHub::default());
        assert!(!Outbox::default().take_for_channels(&hub, "ep", &cancel("session-0001")));
        let mut first = hub.open_direct("ep");
        let mut second = hub.open_direct("ep");

        let mut outbox = Outbox::default();
        assert!(outbox.take_for_channels(&hub, "ep", &cancel("session-0001")));
        assert!(outbox.take_for_channels(&hub, "ep", &cancel("session-0002")));
        assert!(first.inbox.try_recv().is_err(), "not before the commit");
        outbox.wake(&hub);
        for channel in [&mut first, &mut second] {
            for session in ["session-0001", "session-0002"] {
                let push = channel.inbox.try_recv().unwrap();
                assert_eq!(push.session_id().as_str(), session, "in order");
            }
        }

        let mut failed = Outbox::default();
        assert!(failed.take_for_channels(&hub, "ep", &cancel("session-0003")));
        drop(failed);
        assert!(
            first.inbox.try_recv().is_err(),
            "a failed unit pushes nothing"
        );
        assert_eq!(
            first.inbox.capacity(),
            DIRECT_INBOX,
            "its places are given back"
        );

        // A closed channel takes nothing more; the last one gone, pushes are queued again.
        drop(second);
        let mut outbox = Outbox::default();
        assert!(outbox.take_for_channels(&hub, "ep", &cancel("session-0004")));
        assert_eq!(outbox.to_channels[0].0.len(), 1);
        drop(outbox);
        drop(first);
        assert!(!Outbox::default().take_for_channels(&hub, "ep", &cancel("session-0005")));
        assert!(
            hub.inboxes.lock().unwrap().is_empty(),
            "the entry is forgotten"
        );
    }

    #[test]
    fn a_full_inbox_sends_pushes_to_the_queue_and_a_revoke_ends_the_inbox() {
        let hub = Arc::new(PushHub::default());
        let mut channel = hub.open_direct("ep");
        let mut waiting = Outbox::default();
        for _ in 0..DIRECT_INBOX {
            assert!(waiting.take_for_channels(&hub, "ep", &cancel("session-0001")));
        }
        assert!(
            !Outbox::default().take_for_channels(&hub, "ep", &cancel("session-0002")),
            "no room: queued"
        );
        waiting.wake(&hub);
        assert!(
            !Outbox::default().take_for_channels(&hub, "ep", &cancel("session-0002")),
            "still full until the channel reads"
        );
        channel.inbox.try_recv().unwrap();
        assert!(Outbox::default().take_for_channels(&hub, "ep", &cancel("session-0002")));

        hub.revoke("ep");
        assert!(!Outbox::default().take_for_channels(&hub, "ep", &cancel("session-0003")));
        while channel.inbox.try_recv().is_ok() {}
        assert_eq!(
            channel.inbox.try_recv().err(),
            Some(TryRecvError::Disconnected)
        );
    }
}
