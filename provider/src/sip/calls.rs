//! The calls in progress at this edge: each call leg's task by its [`leg_key`], with what routes
//! SIP messages to it (its dialogs, the phone's INVITE transactions, the edge's client
//! transactions), and the legs that ended lately.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use switchyard_protocol::dict::Dict;
use tokio::sync::{mpsc, oneshot, Notify};

use super::expiry::ExpiringMap;
use super::message::{Inbound, InboundResponse};
use super::outbound::{remembered_after_final, TRANSACTION_TIMEOUT};

/// What a leg's task is told.
pub enum Event {
    Push(Dict),
    /// A response to the leg's client transaction `tx`.
    Response(u32, InboundResponse),
    /// Client transaction `tx` got no final response in time (Timer B or F).
    Timeout(u32),
    /// A request from the phone within the call: ACK, BYE, re-INVITE, UPDATE, or the CANCEL of
    /// its INVITE. Non-INVITE requests are answered through `reply`.
    Request(Box<Inbound>, Option<oneshot::Sender<Vec<u8>>>),
}

/// A phone's INVITE transaction: its top Via branch and where it came from.
pub type InviteKey = (String, SocketAddr);

/// What the edge keeps of a phone's INVITE transaction.
struct InviteEntry {
    /// The call task it started (its leg key; empty until it has one).
    leg: String,
    /// The response a retransmission of it gets (none once acknowledged).
    answer: Option<Vec<u8>>,
    /// When it is forgotten, once it has ended.
    forget_at: Option<Instant>,
}

impl InviteEntry {
    fn answered(answer: Vec<u8>) -> Self {
        InviteEntry {
            leg: String::new(),
            answer: Some(answer),
            forget_at: None,
        }
    }
}

/// The phones' INVITE transactions, and the order in which those that ended are forgotten.
#[derive(Default)]
struct Invites {
    open: HashMap<InviteKey, InviteEntry>,
    /// Ended transactions, oldest first: each is kept [`TRANSACTION_TIMEOUT`] after its end
    /// for retransmissions, then dropped at the next use of the table (no task or timer each).
    ending: VecDeque<(Instant, InviteKey)>,
}

impl Invites {
    fn forget_due(&mut self, now: Instant) {
        while let Some((at, _)) = self.ending.front() {
            if *at > now {
                break;
            }
            let (at, key) = self.ending.pop_front().expect("front");
            // A key that began again since holds a later time (or none): it stays.
            if self.open.get(&key).and_then(|e| e.forget_at) == Some(at) {
                self.open.remove(&key);
            }
        }
    }
}

/// A call's task at this edge is named by the session and the gateway endpoint it acts as: in a
/// call between two phones of this provider both sides run here, under one session id.
pub fn leg_key(session: &str, endpoint: &str) -> String {
    format!("{session} {endpoint}")
}

/// A leg's channel: what its task reads its events from.
pub type Events = mpsc::UnboundedReceiver<Event>;

/// The calls in progress at this edge, by [`leg_key`].
pub struct Calls {
    /// Each call's task.
    legs: Mutex<HashMap<String, mpsc::UnboundedSender<Event>>>,
    /// Legs reserved before their task starts (an Initiate Push handed over in memory, see
    /// [`Calls::reserve`]): their events wait here for it.
    starting: Mutex<HashMap<String, Events>>,
    /// In-dialog requests find their call by Call-ID and the edge's tag.
    dialogs: Mutex<HashMap<(String, String), String>>,
    /// A phone's INVITE (its branch and source) and the call it started, for retransmissions,
    /// its CANCEL and the ACK of a failure.
    invites: Mutex<Invites>,
    /// INVITE transactions open at once (ringing calls and their answers' retransmissions); a
    /// new INVITE beyond them is answered 503 (`sip.max_invites_in_progress`).
    max_invites: usize,
    /// The edge's client transactions awaiting their final response, by branch (with
    /// ` CANCEL` for a CANCEL).
    clients: Mutex<HashMap<String, Client>>,
    /// INVITE client transactions after their final response, for Timers M and D: where that
    /// response's retransmissions go. A small record, not the transaction: its task and request
    /// are gone.
    answered: Mutex<ExpiringMap<String, (String, u32)>>,
    /// Sessions that ended here lately, so late pushes for them are taken off the queue.
    ended: Mutex<ExpiringMap<String, ()>>,
}

/// One of the edge's client transactions, as its responses find it: the leg they go to, the
/// transaction's number there, and what its task (retransmissions, Timers B and F) is told.
struct Client {
    leg: String,
    tx: u32,
    invite: bool,
    reliable: bool,
    progress: Arc<Progress>,
}

/// What a client transaction's task learns of its responses.
#[derive(Default)]
pub struct Progress {
    state: AtomicU8,
    changed: Notify,
}

/// How far a client transaction has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Sent,
    Provisional,
    Final,
}

impl Progress {
    pub fn stage(&self) -> Stage {
        match self.state.load(Ordering::Acquire) {
            0 => Stage::Sent,
            1 => Stage::Provisional,
            _ => Stage::Final,
        }
    }

    /// Waits until told of a response (at once if told since the last wait).
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    fn reach(&self, stage: Stage) {
        self.state.fetch_max(stage as u8, Ordering::AcqRel);
        self.changed.notify_one();
    }
}

/// INVITE transactions remembered after their final response at most (a bound whatever the call
/// rate; each is a few hundred bytes).
const ANSWERED_REMEMBERED: usize = 1_000_000;

/// How long an ended call's late pushes are still recognised.
const ENDED_MEMORY: Duration = Duration::from_secs(120);
/// Ended calls remembered at most (a bound on memory whatever the call rate).
const ENDED_REMEMBERED: usize = 1_000_000;

impl Calls {
    pub fn new(max_invites: usize) -> Self {
        Calls {
            max_invites,
            legs: Default::default(),
            starting: Default::default(),
            dialogs: Default::default(),
            invites: Default::default(),
            clients: Default::default(),
            answered: Mutex::new(ExpiringMap::new(TRANSACTION_TIMEOUT, ANSWERED_REMEMBERED)),
            ended: Mutex::new(ExpiringMap::new(ENDED_MEMORY, ENDED_REMEMBERED)),
        }
    }
}

impl Calls {
    /// Whether pushes for `leg` are this edge's: its task runs (or is reserved), or it ended
    /// lately.
    pub fn has_leg(&self, leg: &str) -> bool {
        self.legs.lock().expect("legs").contains_key(leg)
            || self
                .ended
                .lock()
                .expect("ended")
                .get(leg, Instant::now())
                .is_some()
    }

    pub fn send_event(&self, leg: &str, event: Event) -> bool {
        match self.legs.lock().expect("legs").get(leg) {
            Some(tx) => tx.send(event).is_ok(),
            None => false,
        }
    }

    /// Registers `leg`'s task, so that pushes and requests find it from now on: the channel a
    /// reservation made for it, or a new one.
    pub fn add_leg(&self, leg: &str) -> Events {
        let mut starting = self.starting.lock().expect("starting");
        let mut legs = self.legs.lock().expect("legs");
        if let Some(events) = starting.remove(leg) {
            if legs.contains_key(leg) {
                return events;
            }
        }
        let (sender, events) = mpsc::unbounded_channel();
        legs.insert(leg.to_string(), sender);
        events
    }

    /// Registers `leg` before its task starts: its events wait in its channel, and
    /// [`Calls::has_leg`] says it is this edge's from now on.
    pub fn reserve(&self, leg: &str) {
        let mut starting = self.starting.lock().expect("starting");
        let mut legs = self.legs.lock().expect("legs");
        let (sender, events) = mpsc::unbounded_channel();
        legs.insert(leg.to_string(), sender);
        starting.insert(leg.to_string(), events);
    }

    /// Gives up a reservation whose task will not start (a task that did start is left alone).
    pub fn release(&self, leg: &str) {
        let mut starting = self.starting.lock().expect("starting");
        if starting.remove(leg).is_some() {
            self.legs.lock().expect("legs").remove(leg);
        }
    }

    pub fn remove_leg(&self, leg: &str) {
        self.legs.lock().expect("legs").remove(leg);
    }

    /// A leg's task is done: it is forgotten, its dialog with it, and remembered as ended.
    pub fn finish(&self, leg: &str, dialog: Option<(String, String)>) {
        self.legs.lock().expect("legs").remove(leg);
        if let Some(dialog) = dialog {
            self.dialogs.lock().expect("dialogs").remove(&dialog);
        }
        self.ended
            .lock()
            .expect("ended")
            .insert(leg.to_string(), (), Instant::now());
    }

    /// The leg whose dialog has this Call-ID and local tag.
    pub fn dialog_leg(&self, call_id: String, tag: String) -> Option<String> {
        self.dialogs
            .lock()
            .expect("dialogs")
            .get(&(call_id, tag))
            .cloned()
    }

    pub fn add_dialog(&self, call_id: String, tag: String, leg: String) {
        self.dialogs
            .lock()
            .expect("dialogs")
            .insert((call_id, tag), leg);
    }

    /// The INVITE transactions, those that ended long enough ago forgotten.
    fn invites_at(&self, now: Instant) -> MutexGuard<'_, Invites> {
        let mut invites = self.invites.lock().expect("invites");
        invites.forget_due(now);
        invites
    }

    fn invites(&self) -> MutexGuard<'_, Invites> {
        self.invites_at(Instant::now())
    }

    /// Whether the INVITE `key` is known, and then the response a retransmission of it gets.
    pub fn invite_answer(&self, key: &InviteKey) -> Option<Option<Vec<u8>>> {
        self.invites().open.get(key).map(|e| e.answer.clone())
    }

    /// The INVITE `key`, with no call task (yet), answered with `bytes` so far.
    /// Records a new INVITE transaction with its first response, unless `max_invites` are open
    /// (then false: a flood of INVITEs cannot grow this table without bound).
    pub fn try_add_invite(&self, key: InviteKey, bytes: Vec<u8>) -> bool {
        let mut invites = self.invites();
        if invites.open.len() >= self.max_invites && !invites.open.contains_key(&key) {
            return false;
        }
        invites.open.insert(key, InviteEntry::answered(bytes));
        true
    }

    pub fn add_invite(&self, key: InviteKey, bytes: Vec<u8>) {
        self.invites()
            .open
            .insert(key, InviteEntry::answered(bytes));
    }

    /// The INVITE `key` started the call task `leg`.
    pub fn set_invite_leg(&self, key: &InviteKey, leg: &str) {
        if let Some(entry) = self.invites().open.get_mut(key) {
            entry.leg = leg.to_string();
        }
    }

    /// The call task the INVITE `key` started, if it started one.
    pub fn invite_leg(&self, key: &InviteKey) -> Option<String> {
        self.invites()
            .open
            .get(key)
            .map(|e| e.leg.clone())
            .filter(|leg| !leg.is_empty())
    }

    /// The response a retransmission of the INVITE `key` gets from now on (RFC 3261 §17.2.1;
    /// for a 2xx, §13.3.1.4).
    pub fn remember_response(&self, key: &InviteKey, bytes: &[u8]) {
        if let Some(entry) = self.invites().open.get_mut(key) {
            entry.answer = Some(bytes.to_vec());
        }
    }

    /// The INVITE `key` is acknowledged: its response is not sent again. Returns the call task
    /// it started (empty if none) when the INVITE is known.
    pub fn acknowledge_invite(&self, key: &InviteKey) -> Option<String> {
        let mut invites = self.invites();
        let entry = invites.open.get_mut(key)?;
        entry.answer = None;
        Some(entry.leg.clone())
    }

    /// Whether the INVITE `key`'s response still waits for its ACK.
    pub fn invite_unacknowledged(&self, key: &InviteKey) -> bool {
        self.invites()
            .open
            .get(key)
            .is_some_and(|e| e.answer.is_some())
    }

    pub fn forget_invite(&self, key: &InviteKey) {
        self.invites().open.remove(key);
    }

    /// The INVITE `key` has ended: it is kept for [`TRANSACTION_TIMEOUT`] more, to absorb
    /// retransmissions, then forgotten.
    pub fn forget_invite_later(&self, key: InviteKey) {
        self.end_invite_at(key, Instant::now());
    }

    fn end_invite_at(&self, key: InviteKey, now: Instant) {
        let at = now + TRANSACTION_TIMEOUT;
        let mut invites = self.invites_at(now);
        if let Some(entry) = invites.open.get_mut(&key) {
            entry.forget_at = Some(at);
            invites.ending.push_back((at, key));
        }
    }

    /// Registers a client transaction, `key` its branch (with ` CANCEL` for a CANCEL), whose
    /// responses go to `leg` as its transaction `tx`; its task watches the returned progress.
    pub fn add_client(
        &self,
        key: String,
        leg: &str,
        tx: u32,
        invite: bool,
        reliable: bool,
    ) -> Arc<Progress> {
        let progress = Arc::new(Progress::default());
        let client = Client {
            leg: leg.to_string(),
            tx,
            invite,
            reliable,
            progress: progress.clone(),
        };
        self.clients.lock().expect("clients").insert(key, client);
        progress
    }

    /// Passes a response to the client transaction `key` to its leg, and tells the
    /// transaction's task; a final one ends the transaction, remembered a while if an INVITE's
    /// ([`remembered_after_final`]). False when no transaction takes it.
    pub fn client_response(&self, key: &str, response: InboundResponse) -> bool {
        let status = response.status;
        let now = Instant::now();
        let open = if status < 200 {
            let clients = self.clients.lock().expect("clients");
            clients.get(key).map(|client| {
                client.progress.reach(Stage::Provisional);
                (client.leg.clone(), client.tx)
            })
        } else {
            let ended = self.clients.lock().expect("clients").remove(key);
            ended.map(|client| {
                client.progress.reach(Stage::Final);
                if remembered_after_final(client.invite, status, client.reliable) {
                    self.answered.lock().expect("answered").insert(
                        key.to_string(),
                        (client.leg.clone(), client.tx),
                        now,
                    );
                }
                (client.leg, client.tx)
            })
        };
        let target = open.or_else(|| {
            self.answered
                .lock()
                .expect("answered")
                .get(key, now)
                .cloned()
        });
        match target {
            Some((leg, tx)) => {
                self.send_event(&leg, Event::Response(tx, response));
                true
            }
            None => false,
        }
    }

    /// Ends the client transaction `key` without a final response (Timer B or F), telling its
    /// leg; false if a final response ended it first.
    pub fn time_out_client(&self, key: &str) -> bool {
        let Some(client) = self.clients.lock().expect("clients").remove(key) else {
            return false;
        };
        self.send_event(&client.leg, Event::Timeout(client.tx));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reserved_leg_takes_its_events_before_its_task_starts() {
        let calls = Calls::new(100);
        let leg = leg_key("s1", "gw");
        assert!(!calls.has_leg(&leg));
        calls.reserve(&leg);
        assert!(calls.has_leg(&leg));
        assert!(calls.send_event(&leg, Event::Push(Dict::new().with("action", "cancel"))));
        let mut events = calls.add_leg(&leg);
        match events.try_recv() {
            Ok(Event::Push(push)) => assert_eq!(push.str("action").ok(), Some("cancel")),
            _ => panic!("the event sent before the task started is its first"),
        }
        // Released once started: the running leg stays.
        calls.release(&leg);
        assert!(calls.has_leg(&leg));
        calls.finish(&leg, None);
        assert!(!calls.send_event(&leg, Event::Timeout(1)));
        assert!(
            calls.has_leg(&leg),
            "an ended leg's late pushes are still its"
        );
    }

    #[test]
    fn a_released_reservation_is_forgotten() {
        let calls = Calls::new(100);
        let leg = leg_key("s2", "gw");
        calls.reserve(&leg);
        calls.release(&leg);
        assert!(!calls.has_leg(&leg));
        assert!(!calls.send_event(&leg, Event::Timeout(1)));
    }

    fn response(status: u16) -> InboundResponse {
        InboundResponse {
            status,
            fields: Default::default(),
            body: Vec::new(),
            source: "127.0.0.1:5060".parse().expect("address"),
            transport: crate::sip::message::Transport::Udp,
        }
    }

    #[test]
    fn a_client_transaction_ends_at_its_final_response_and_an_invites_is_remembered() {
        let calls = Calls::new(100);
        let leg = leg_key("s3", "gw");
        let mut events = calls.add_leg(&leg);
        let invite = calls.add_client("b1".into(), &leg, 7, true, false);
        let bye = calls.add_client("b2".into(), &leg, 8, false, false);

        assert!(calls.client_response("b1", response(180)));
        assert_eq!(invite.stage(), Stage::Provisional);
        assert!(calls.client_response("b1", response(200)));
        assert_eq!(invite.stage(), Stage::Final);
        // Its 2xx again (Timer M), and no timeout once it has ended.
        assert!(calls.client_response("b1", response(200)));
        assert!(!calls.time_out_client("b1"));

        assert!(calls.client_response("b2", response(200)));
        assert_eq!(bye.stage(), Stage::Final);
        assert!(
            !calls.client_response("b2", response(200)),
            "a BYE's is absorbed"
        );
        assert!(
            !calls.client_response("b3", response(200)),
            "no such transaction"
        );

        let seen: Vec<(u32, u16)> = std::iter::from_fn(|| events.try_recv().ok())
            .map(|event| match event {
                Event::Response(tx, response) => (tx, response.status),
                _ => panic!("only responses were sent"),
            })
            .collect();
        assert_eq!(seen, vec![(7, 180), (7, 200), (7, 200), (8, 200)]);
    }

    #[test]
    fn a_client_transaction_without_a_final_response_times_out_once() {
        let calls = Calls::new(100);
        let leg = leg_key("s4", "gw");
        let mut events = calls.add_leg(&leg);
        calls.add_client("b1".into(), &leg, 3, true, true);
        assert!(calls.time_out_client("b1"));
        assert!(!calls.time_out_client("b1"));
        assert!(!calls.client_response("b1", response(200)), "too late");
        assert!(matches!(events.try_recv(), Ok(Event::Timeout(3))));
        assert!(events.try_recv().is_err());
    }

    #[test]
    fn an_ended_invite_is_kept_for_its_retransmissions_then_forgotten() {
        let calls = Calls::new(100);
        let key: InviteKey = ("b1".into(), "127.0.0.1:5060".parse().expect("address"));
        let again: InviteKey = ("b2".into(), "127.0.0.1:5060".parse().expect("address"));
        let start = Instant::now();
        calls.add_invite(key.clone(), b"SIP/2.0 486".to_vec());
        calls.add_invite(again.clone(), b"SIP/2.0 486".to_vec());
        calls.end_invite_at(key.clone(), start);
        calls.end_invite_at(again.clone(), start);
        // `again` begins anew (the same branch from the same source): its old end is stale.
        calls.forget_invite(&again);
        calls.add_invite(again.clone(), b"SIP/2.0 200".to_vec());

        let before = calls.invites_at(start + TRANSACTION_TIMEOUT - Duration::from_millis(1));
        assert!(
            before.open.contains_key(&key),
            "still absorbing retransmissions"
        );
        drop(before);
        let after = calls.invites_at(start + TRANSACTION_TIMEOUT);
        assert!(!after.open.contains_key(&key), "forgotten after 64 × T1");
        assert!(after.ending.is_empty());
        assert_eq!(
            after.open.get(&again).and_then(|e| e.answer.clone()),
            Some(b"SIP/2.0 200".to_vec()),
            "the transaction that began again stays"
        );
    }
}
