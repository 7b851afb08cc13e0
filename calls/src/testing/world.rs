//! N providers in one process, each a call core over a memory store, joined by a simulated
//! network that holds every Forward until the test says what becomes of it: delivered (in any
//! order), dropped, delivered with its answer lost, or delivered twice. A manual clock drives
//! the ring timeouts. Every task is polled by [`World::settle`] until nothing moves, so a test
//! decides each interleaving and replays it exactly.
//!
//! A Forward reaches its receiver as a dictionary, through `Core::receive_forward`, the same
//! path the daemon's federation routes take, so the wire forms are exercised too.

use std::collections::{BTreeMap, BTreeSet};
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};

use switchyard_protocol::attestation::Attestation;
use switchyard_protocol::capabilities::{Capabilities, MediaKind};
use switchyard_protocol::dict::Dict;
use switchyard_protocol::invitation::{
    AcceptRequest, CancelRequest, ForwardAction, InitiatePush, InitiateRequest, Push, RejectReason,
    RejectRequest, RelayChoice, SessionId, UpdateRequest,
};
use switchyard_protocol::pki::{certificate_fingerprint, certs_from_pem, FederationCa, SigningKey};
use switchyard_protocol::uri::Canonicalizer;

use super::store::{MemStore, Tables};
use crate::flows::{CallError, Core, Deferred, Settings};
use crate::ports::{
    Candidates, Clock, Endpoint, Event, Forwarder, PeerFailure, Ports, Requester, Sealer, Sender,
};
use crate::refusal::{Refusal, RefusalCode};
use crate::session::SessionState;

/// The simulated clock starts here (Unix ms), so Forward timestamps look like real ones.
pub const EPOCH_MS: i64 = 1_800_000_000_000;
pub const RING_TIMEOUT_MS: i64 = 60_000;
pub const MAX_CALL_DURATION_MS: i64 = 4 * 3_600_000;
pub const TIMESTAMP_WINDOW_S: i64 = 300;

type Task = Pin<Box<dyn Future<Output = ()>>>;
pub type Answer = Result<Dict, Refusal>;

/// A Forward on the wire.
#[derive(Debug, Clone)]
pub struct Flight {
    pub id: u64,
    pub from: String,
    pub to: String,
    pub action: ForwardAction,
    pub body: Dict,
}

#[derive(Default)]
struct Net {
    next: u64,
    flights: Vec<Flight>,
    replies: BTreeMap<u64, Result<Dict, PeerFailure>>,
    /// Who waits for each reply: a sender polled inside a combinator (the dispatch's
    /// `FuturesUnordered`) is polled again only once woken.
    waiting: BTreeMap<u64, Waker>,
    held: BTreeMap<u64, Result<Dict, PeerFailure>>,
}

impl Net {
    fn reply(&mut self, id: u64, reply: Result<Dict, PeerFailure>) {
        self.replies.insert(id, reply);
        if let Some(waker) = self.waiting.remove(&id) {
            waker.wake();
        }
    }
}

/// What the network does with a Forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Delivered, its answer returned to the sender.
    Deliver,
    /// Never delivered; the sender sees it fail.
    Drop,
    /// Delivered and acted on, but the answer is lost: the sender sees a timeout.
    LoseAnswer,
    /// Delivered twice (a retransmission by the network); the sender gets the first answer.
    Duplicate,
    /// Delivered and acted on; its answer is held on the way back until
    /// [`World::release_answers`], so later Forwards can overtake it.
    HoldAnswer,
    /// Not acted on: the receiver answers with this refusal, as a peer of another
    /// implementation (or another version) might.
    RefusedWith(RefusalCode),
}

/// What becomes of a delivered Forward's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    Send,
    Hold,
    Lose,
}

/// What the sweeps of one [`World::advance`] ended, over all providers.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Ringing calls past their ring deadline.
    pub timed_out: usize,
    /// Answered calls past the maximum call duration.
    pub ended_overlong: usize,
}

/// An endpoint of a user at one provider.
#[derive(Debug, Clone, PartialEq)]
pub struct Device {
    pub provider: String,
    pub uri: String,
    pub endpoint: Endpoint,
}

impl Device {
    pub fn requester(&self) -> Requester {
        Requester {
            endpoint: self.endpoint.clone(),
            uris: vec![self.uri.clone()],
        }
    }
}

pub struct MemPorts {
    store: MemStore,
    forwarder: MemForwarder,
    sealer: MemSealer,
    clock: MemClock,
    settings: Settings,
    events: Arc<Mutex<Vec<Event>>>,
}

impl Ports for MemPorts {
    type Store = MemStore;
    type Forwarder = MemForwarder;
    type Sealer = MemSealer;
    type Clock = MemClock;

    fn store(&self) -> &MemStore {
        &self.store
    }
    fn forwarder(&self) -> Option<&MemForwarder> {
        Some(&self.forwarder)
    }
    fn sealer(&self) -> &MemSealer {
        &self.sealer
    }
    fn clock(&self) -> &MemClock {
        &self.clock
    }
    fn settings(&self) -> &Settings {
        &self.settings
    }
    fn observe(&self, event: Event) {
        self.events.lock().expect("events").push(event);
    }
}

pub struct MemClock(Arc<AtomicI64>);

impl Clock for MemClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }

    /// A pause passes no simulated time: what the pause waited for is whatever the test
    /// delivers before the Forward sent after it.
    fn pause(&self, _ms: u64) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }
}

/// Seals as JSON behind the provider's name: not secret, but a state opens only at the
/// provider that sealed it and only unaltered, which is what the flows rely on.
pub struct MemSealer {
    provider: String,
}

impl Sealer for MemSealer {
    fn seal(&self, state: &SessionState) -> String {
        let json = serde_json::to_string(state).expect("session state serializes");
        format!("{}|{json}", self.provider)
    }

    fn open(&self, token: &str) -> Result<SessionState, String> {
        let json = token
            .strip_prefix(&self.provider)
            .and_then(|rest| rest.strip_prefix('|'))
            .ok_or_else(|| "state token was sealed by another provider".to_string())?;
        serde_json::from_str(json).map_err(|_| "state token failed authentication".to_string())
    }
}

pub struct MemForwarder {
    me: String,
    net: Arc<Mutex<Net>>,
    filters: Arc<Mutex<BTreeMap<String, BTreeSet<String>>>>,
    breakers_open: Arc<Mutex<BTreeSet<String>>>,
    next_id: Mutex<u64>,
}

impl Forwarder for MemForwarder {
    fn send(
        &self,
        to: &str,
        action: ForwardAction,
        forward: Dict,
    ) -> impl Future<Output = Result<Dict, PeerFailure>> + Send {
        let net = self.net.clone();
        let id = {
            let mut net = net.lock().expect("net");
            net.next += 1;
            let id = net.next;
            net.flights.push(Flight {
                id,
                from: self.me.clone(),
                to: to.to_string(),
                action,
                body: forward,
            });
            id
        };
        poll_fn(move |cx| {
            let mut net = net.lock().expect("net");
            match net.replies.remove(&id) {
                Some(reply) => Poll::Ready(reply),
                None => {
                    net.waiting.insert(id, cx.waker().clone());
                    Poll::Pending
                }
            }
        })
    }

    fn candidates(&self, uri: &str) -> Candidates {
        let filters = self.filters.lock().expect("filters");
        let open = self.breakers_open.lock().expect("breakers");
        let mut members = Vec::new();
        let mut skipped = 0;
        for (member, uris) in filters.iter().filter(|(m, _)| **m != self.me) {
            if !uris.contains(uri) {
                continue;
            }
            if open.contains(member) {
                skipped += 1;
            } else {
                members.push(member.clone());
            }
        }
        Candidates::Members { members, skipped }
    }

    fn may_host(&self, member: &str, uri: &str) -> bool {
        self.filters
            .lock()
            .expect("filters")
            .get(member)
            .is_some_and(|uris| uris.contains(uri))
    }

    fn forward_id(&self) -> String {
        let mut next = self.next_id.lock().expect("forward ids");
        *next += 1;
        format!("{}-forward-{:06}", self.me.replace('.', "-"), *next)
    }

    fn attest(&self, attestation: &Attestation) -> Result<Vec<u8>, String> {
        attestation
            .sign(&identity(&self.me).0)
            .map_err(|e| e.to_string())
    }

    fn federation_relay(&self) -> Option<String> {
        None
    }
}

/// A provider's federation signing key and its certificate (DER).
type Identity = Arc<(SigningKey, Vec<u8>)>;

struct Pki {
    ca: FederationCa,
    dir: tempfile::TempDir,
    issued: Mutex<BTreeMap<String, Identity>>,
    endpoint_cas: Mutex<BTreeMap<String, String>>,
}

/// One test CA per process: it issues the providers' federation certificates. Each provider
/// also gets an endpoint CA of its own, whose fingerprint the world pins as the discovery
/// dictionary would.
fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let ca = FederationCa::init(
            &dir.path().join("ca.pem"),
            &dir.path().join("ca.key"),
            "test",
        )
        .expect("a test federation CA");
        Pki {
            ca,
            dir,
            issued: Mutex::default(),
            endpoint_cas: Mutex::default(),
        }
    })
}

/// `provider`'s endpoint CA certificate (PEM), made once per process.
pub fn endpoint_ca(provider: &str) -> String {
    let pki = pki();
    let mut cas = pki.endpoint_cas.lock().expect("endpoint CAs");
    cas.entry(provider.to_string())
        .or_insert_with(|| {
            let name = format!("{provider}-endpoints");
            FederationCa::init(
                &pki.dir.path().join(format!("{name}.pem")),
                &pki.dir.path().join(format!("{name}.key")),
                &name,
            )
            .expect("a test endpoint CA")
            .cert_pem()
            .to_string()
        })
        .clone()
}

fn identity(provider: &str) -> Identity {
    let pki = pki();
    let mut issued = pki.issued.lock().expect("issued");
    issued
        .entry(provider.to_string())
        .or_insert_with(|| {
            let cert = pki
                .ca
                .issue_provider(provider, &[provider.to_string()], 30)
                .expect("a provider certificate");
            let der = certs_from_pem(&cert.cert_pem).expect("its PEM")[0].to_vec();
            let key = SigningKey::from_pem(&cert.key_pem).expect("its key");
            Arc::new((key, der))
        })
        .clone()
}

/// One provider of the world.
pub struct Member {
    pub core: Arc<Core<MemPorts>>,
    pub store: MemStore,
    pub events: Arc<Mutex<Vec<Event>>>,
    canon: Canonicalizer,
}

pub struct World {
    clock: Arc<AtomicI64>,
    members: BTreeMap<String, Member>,
    net: Arc<Mutex<Net>>,
    filters: Arc<Mutex<BTreeMap<String, BTreeSet<String>>>>,
    breakers_open: Arc<Mutex<BTreeSet<String>>>,
    tasks: Vec<Task>,
    answers: Arc<Mutex<BTreeMap<u64, Answer>>>,
    next_request: u64,
    next_session: u64,
}

impl World {
    /// Providers with these ids (each a valid provider id, e.g. `a.test`), all members of one
    /// federation.
    pub fn new(provider_ids: &[&str]) -> World {
        let clock = Arc::new(AtomicI64::new(EPOCH_MS));
        let net = Arc::new(Mutex::new(Net::default()));
        let filters: Arc<Mutex<BTreeMap<String, BTreeSet<String>>>> = Arc::default();
        let breakers_open: Arc<Mutex<BTreeSet<String>>> = Arc::default();
        let mut members = BTreeMap::new();
        for id in provider_ids {
            filters
                .lock()
                .expect("filters")
                .insert(id.to_string(), BTreeSet::new());
            let store = MemStore::new(clock.clone());
            let events = Arc::new(Mutex::new(Vec::new()));
            let ports = MemPorts {
                store: store.clone(),
                forwarder: MemForwarder {
                    me: id.to_string(),
                    net: net.clone(),
                    filters: filters.clone(),
                    breakers_open: breakers_open.clone(),
                    next_id: Mutex::new(0),
                },
                sealer: MemSealer {
                    provider: id.to_string(),
                },
                clock: MemClock(clock.clone()),
                settings: Settings {
                    provider_id: id.to_string(),
                    ring_timeout_ms: RING_TIMEOUT_MS,
                    push_ttl_ms: 300_000,
                    endpoint_ca_pem: endpoint_ca(id),
                    relay_choice: RelayChoice::CallerProvider,
                    timestamp_window_s: TIMESTAMP_WINDOW_S,
                    max_call_duration_ms: MAX_CALL_DURATION_MS,
                },
                events: events.clone(),
            };
            members.insert(
                id.to_string(),
                Member {
                    core: Arc::new(Core::new(ports)),
                    store,
                    events,
                    canon: Canonicalizer::new(Some(1)),
                },
            );
        }
        World {
            clock,
            members,
            net,
            filters,
            breakers_open,
            tasks: Vec::new(),
            answers: Arc::default(),
            next_request: 0,
            next_session: 0,
        }
    }

    pub fn member(&self, provider: &str) -> &Member {
        &self.members[provider]
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.load(Ordering::SeqCst)
    }

    /// A user at `provider` holding `uri`, with one device per name (the endpoint id is the
    /// name). Its URI enters the provider's Bloom filter.
    pub fn add_user(&mut self, provider: &str, uri: &str, devices: &[&str]) -> Vec<Device> {
        let devices: Vec<Device> = devices
            .iter()
            .map(|name| Device {
                provider: provider.to_string(),
                uri: uri.to_string(),
                endpoint: Endpoint {
                    id: name.to_string(),
                    push_token: format!("token-{name}"),
                    capabilities: Capabilities::default(),
                },
            })
            .collect();
        self.members[provider]
            .store
            .add_user(uri, devices.iter().map(|d| d.endpoint.clone()).collect());
        self.claim(provider, uri);
        devices
    }

    /// Makes `provider`'s filter match `uri` (a false positive when it does not host it).
    pub fn claim(&mut self, provider: &str, uri: &str) {
        self.filters
            .lock()
            .expect("filters")
            .get_mut(provider)
            .expect("a member")
            .insert(uri.to_string());
    }

    pub fn open_breaker(&mut self, provider: &str) {
        self.breakers_open
            .lock()
            .expect("breakers")
            .insert(provider.to_string());
    }

    pub fn new_session(&mut self) -> SessionId {
        self.next_session += 1;
        SessionId::parse(&format!("session-{:04}", self.next_session)).expect("a valid id")
    }

    fn spawn(&mut self, task: impl Future<Output = ()> + 'static) {
        self.tasks.push(Box::pin(task));
    }

    /// Starts a request whose answer [`World::answer`] returns once it is in.
    fn request<F>(&mut self, provider: &str, run: impl FnOnce(Arc<Core<MemPorts>>) -> F) -> u64
    where
        F: Future<Output = (Result<Dict, CallError>, Option<Deferred>)> + 'static,
    {
        self.next_request += 1;
        let id = self.next_request;
        let core = self.members[provider].core.clone();
        let answers = self.answers.clone();
        let work = run(core.clone());
        self.spawn(async move {
            let (answer, deferred) = work.await;
            answers
                .lock()
                .expect("answers")
                .insert(id, settle_answer(answer));
            if let Some(deferred) = deferred {
                core.run_deferred(deferred).await;
            }
        });
        id
    }

    /// The answer to a request, once it is in.
    pub fn answer(&self, request: u64) -> Option<Answer> {
        self.answers.lock().expect("answers").get(&request).cloned()
    }

    pub fn initiate(
        &mut self,
        caller: &Device,
        session: &SessionId,
        callee: &str,
        video: bool,
    ) -> u64 {
        let (uri, token) = (caller.uri.clone(), caller.endpoint.push_token.clone());
        self.initiate_claiming(caller, &uri, &token, session, callee, video)
    }

    /// An Initiate from `caller`'s authenticated endpoint whose body claims `self_uri` and
    /// `self_token`, which need not be its own.
    pub fn initiate_claiming(
        &mut self,
        caller: &Device,
        self_uri: &str,
        self_token: &str,
        session: &SessionId,
        callee: &str,
        video: bool,
    ) -> u64 {
        let mut media = vec![MediaKind::Audio];
        if video {
            media.push(MediaKind::Video);
        }
        let request = InitiateRequest {
            session_id: session.clone(),
            self_uri: self_uri.to_string(),
            self_token: self_token.to_string(),
            self_blob: format!("blob of {}", caller.endpoint.id).into_bytes(),
            peer_uri: callee.to_string(),
            media,
        };
        let who = caller.requester();
        self.request(&caller.provider, move |core| async move {
            let answer = core.initiate(&who, request).await.map(|r| r.to_dict());
            (answer, None)
        })
    }

    fn answer_request(device: &Device, ring: &InitiatePush) -> AcceptRequest {
        AcceptRequest {
            session_id: ring.session_id.clone(),
            self_uri: ring.self_uri.clone(),
            self_token: device.endpoint.push_token.clone(),
            self_blob: format!("blob of {}", device.endpoint.id).into_bytes(),
            peer_uri: ring.peer_uri.clone(),
            peer_token: ring.peer_token.clone(),
            state: ring.state.clone(),
        }
    }

    pub fn accept(&mut self, device: &Device, ring: &InitiatePush) -> u64 {
        let request = World::answer_request(device, ring);
        let who = device.requester();
        self.request(&device.provider, move |core| async move {
            let (state, deferred) = core.accept(&who, request).await;
            (state.map(|s| Dict::new().with("state", s)), deferred)
        })
    }

    pub fn reject(&mut self, device: &Device, ring: &InitiatePush, reason: RejectReason) -> u64 {
        let request = RejectRequest {
            answer: World::answer_request(device, ring),
            reason,
            reason_text: None,
        };
        let who = device.requester();
        self.request(&device.provider, move |core| async move {
            let remaining = core.reject(&who, request).await;
            (remaining.map(|n| Dict::new().with("remaining", n)), None)
        })
    }

    /// A Cancel (or, once answered, a hang-up) by either party: the caller names the callee's
    /// URI and its state from the Initiate answer; a callee the caller's URI and the state of
    /// its Initiate Push.
    pub fn cancel(
        &mut self,
        device: &Device,
        session: &SessionId,
        peer_uri: &str,
        state: &str,
    ) -> u64 {
        let request = CancelRequest {
            session_id: session.clone(),
            self_uri: device.uri.clone(),
            self_token: device.endpoint.push_token.clone(),
            peer_uri: peer_uri.to_string(),
            state: state.to_string(),
        };
        let who = device.requester();
        self.request(&device.provider, move |core| async move {
            let done = core.cancel(&who, request).await;
            (done.map(|()| Dict::new()), None)
        })
    }

    pub fn update(
        &mut self,
        device: &Device,
        session: &SessionId,
        peer_uri: &str,
        state: &str,
    ) -> u64 {
        let request = UpdateRequest {
            session_id: session.clone(),
            self_uri: device.uri.clone(),
            self_token: device.endpoint.push_token.clone(),
            peer_uri: peer_uri.to_string(),
            self_blob: format!("new blob of {}", device.endpoint.id).into_bytes(),
            state: state.to_string(),
        };
        let who = device.requester();
        self.request(&device.provider, move |core| async move {
            let done = core.update(&who, request).await;
            (done.map(|()| Dict::new()), None)
        })
    }

    /// Every push queued for a device, in order.
    pub fn pushes(&self, device: &Device) -> Vec<Push> {
        self.members[&device.provider]
            .store
            .tables()
            .pushes
            .get(&device.endpoint.id)
            .cloned()
            .unwrap_or_default()
    }

    /// The Initiate Push a device got for a session, if any.
    pub fn ring(&self, device: &Device, session: &SessionId) -> Option<InitiatePush> {
        self.pushes(device).into_iter().find_map(|p| match p {
            Push::Initiate(ring) if ring.session_id == *session => Some(ring),
            _ => None,
        })
    }

    pub fn tables(&self, provider: &str) -> Tables {
        self.members[provider].store.tables()
    }

    /// The provider's store, to simulate what the in-memory one cannot reach on its own (see
    /// [`MemStore::lose_next_transition`]).
    pub fn store(&self, provider: &str) -> &MemStore {
        &self.members[provider].store
    }

    pub fn flights(&self) -> Vec<Flight> {
        self.net.lock().expect("net").flights.clone()
    }

    /// Polls every task until none moves: each is then done, or waits for a Forward's answer.
    pub fn settle(&mut self) {
        let mut cx = Context::from_waker(Waker::noop());
        loop {
            let before = (self.tasks.len(), self.flights().len());
            self.tasks
                .retain_mut(|task| task.as_mut().poll(&mut cx).is_pending());
            // A second pass lets a task that waited for a write unit take it.
            self.tasks
                .retain_mut(|task| task.as_mut().poll(&mut cx).is_pending());
            if (self.tasks.len(), self.flights().len()) == before {
                return;
            }
        }
    }

    /// Decides the fate of the `index`-th Forward on the wire (in the order they were sent),
    /// then settles.
    /// Routes the first Forward in flight to `provider`, as [`World::route`] does.
    pub fn route_to(&mut self, provider: &str, fate: Fate) {
        let index = self
            .flights()
            .iter()
            .position(|f| f.to == provider)
            .unwrap_or_else(|| panic!("no Forward in flight to {provider}"));
        self.route(index, fate);
    }

    pub fn route(&mut self, index: usize, fate: Fate) {
        let flight = {
            let mut net = self.net.lock().expect("net");
            if index >= net.flights.len() {
                return;
            }
            net.flights.remove(index)
        };
        match fate {
            Fate::Drop => self.reply(flight.id, Err(undelivered("dropped by the network"))),
            Fate::Deliver => self.deliver(flight, Reply::Send),
            Fate::LoseAnswer => {
                self.reply(flight.id, Err(undelivered("timed out")));
                self.deliver(flight, Reply::Lose);
            }
            Fate::Duplicate => {
                self.deliver(flight.clone(), Reply::Send);
                self.deliver(flight, Reply::Lose);
            }
            Fate::HoldAnswer => self.deliver(flight, Reply::Hold),
            Fate::RefusedWith(code) => {
                let refusal = Refusal::new(code, format!("{} answers {code}", flight.to));
                self.reply(flight.id, Err(refused_by(&flight.to, &refusal)));
            }
        }
        self.settle();
    }

    /// Delivers every Forward in flight, in order, until none is left.
    pub fn deliver_all(&mut self) {
        self.settle();
        while !self.flights().is_empty() {
            self.route(0, Fate::Deliver);
        }
    }

    fn reply(&mut self, id: u64, reply: Result<Dict, PeerFailure>) {
        self.net.lock().expect("net").reply(id, reply);
    }

    /// Lets every held answer reach its sender, then settles.
    pub fn release_answers(&mut self) {
        {
            let mut net = self.net.lock().expect("net");
            for (id, reply) in std::mem::take(&mut net.held) {
                net.reply(id, reply);
            }
        }
        self.settle();
    }

    fn deliver(&mut self, flight: Flight, reply: Reply) {
        let member = &self.members[&flight.to];
        let core = member.core.clone();
        let canon = member.canon.clone();
        let net = self.net.clone();
        self.spawn(async move {
            let sender = sender(&flight.from);
            let (answer, deferred) = core
                .receive_forward(&sender, flight.action, &flight.body, &canon)
                .await;
            let answer = answer.map_err(|e| match e {
                CallError::Refused(refusal) => refused_by(&flight.to, &refusal),
                CallError::Store(e) => panic!("store failure at {}: {e}", flight.to),
            });
            match reply {
                Reply::Send => net.lock().expect("net").reply(flight.id, answer),
                Reply::Hold => {
                    net.lock().expect("net").held.insert(flight.id, answer);
                }
                Reply::Lose => {}
            }
            if let Some(deferred) = deferred {
                core.run_deferred(deferred).await;
            }
        });
    }

    /// Moves the clock on and runs every provider's ring timeout and maximum call duration
    /// sweeps; says how many calls they ended, over all providers.
    pub fn advance(&mut self, ms: i64) -> Swept {
        self.clock.fetch_add(ms, Ordering::SeqCst);
        let cores: Vec<(Arc<Core<MemPorts>>, MemStore)> = self
            .members
            .values()
            .map(|m| (m.core.clone(), m.store.clone()))
            .collect();
        let swept = Arc::new(Mutex::new(Swept::default()));
        for (core, store) in cores {
            let answered_before = self.now_ms() - MAX_CALL_DURATION_MS;
            let swept = swept.clone();
            self.spawn(async move {
                let overdue = store.overdue();
                let timed_out = match core.expire(overdue).await {
                    Ok(n) => n,
                    Err(e) => panic!("ring timeout sweep: {e}"),
                };
                let overlong = store.overlong(answered_before);
                let ended_overlong = match core.end_overlong(overlong).await {
                    Ok(n) => n,
                    Err(e) => panic!("maximum call duration sweep: {e}"),
                };
                let mut swept = swept.lock().expect("swept");
                swept.timed_out += timed_out;
                swept.ended_overlong += ended_overlong;
            });
        }
        self.settle();
        let swept = *swept.lock().expect("swept");
        swept
    }

    /// `provider`'s signature of an attestation, as its federation key makes it: what a member
    /// can sign, whatever it claims.
    pub fn attest(&self, provider: &str, attestation: &Attestation) -> Vec<u8> {
        attestation
            .sign(&identity(provider).0)
            .expect("an attestation without line breaks")
    }

    /// Runs a Forward from `from` to `to` outside the network, to completion, as a rogue or
    /// broken peer would send it; the caller checks what it changed.
    pub fn send_now(&mut self, from: &str, to: &str, action: ForwardAction, body: Dict) -> Answer {
        let member = &self.members[to];
        let (core, canon) = (member.core.clone(), member.canon.clone());
        let sender = sender(from);
        let mut task =
            Box::pin(async move { core.receive_forward(&sender, action, &body, &canon).await });
        let mut cx = Context::from_waker(Waker::noop());
        match task.as_mut().poll(&mut cx) {
            Poll::Ready((answer, _)) => settle_answer(answer),
            Poll::Pending => panic!("a received Forward waited for something"),
        }
    }

    /// Runs the request started last to completion at once, alone: nothing else moves
    /// meanwhile, so the caller can compare the tables before and after.
    pub fn request_now(&mut self, request: u64) -> Answer {
        let mut task = self.tasks.pop().expect("a request was started");
        let mut cx = Context::from_waker(Waker::noop());
        assert!(
            task.as_mut().poll(&mut cx).is_ready(),
            "the request waited for something"
        );
        self.answer(request).expect("answered")
    }
}

/// A Forward's sender as the federation routes authenticate it: its certificate, and the
/// endpoint CA the directory pins for it.
fn sender(provider: &str) -> Sender {
    Sender {
        provider_id: provider.to_string(),
        cert_der: identity(provider).1.clone(),
        endpoint_ca_sha256: certificate_fingerprint(
            &certs_from_pem(&endpoint_ca(provider)).expect("a PEM")[0],
        ),
    }
}

fn undelivered(why: &str) -> PeerFailure {
    PeerFailure::Undelivered(why.to_string())
}

/// How a sender sees `provider`'s refusal of its Forward.
fn refused_by(provider: &str, refusal: &Refusal) -> PeerFailure {
    PeerFailure::Refused {
        code: refusal.code.as_str().to_string(),
        message: refusal.message.clone(),
        class: refusal.code.class(),
        description: format!("{provider} refused: {refusal}"),
    }
}

fn settle_answer(answer: Result<Dict, CallError>) -> Answer {
    answer.map_err(|e| match e {
        CallError::Refused(refusal) => refusal,
        CallError::Store(e) => panic!("store failure: {e}"),
    })
}
