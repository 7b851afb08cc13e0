//! A sans-I/O ICE agent: connectivity checks, nomination and path liveness.
//!
//! A subset of RFC 8445 for what an endpoint needs: one component, UDP only, one data
//! stream, aggressive nomination (RFC 5245 §8.1.1.2, which RFC 8445 dropped but which
//! settles a path within one round trip and needs no second nomination phase).
//!
//! The agent owns no socket and no clock. Its caller (the shell) feeds it datagrams with
//! [`IceAgent::handle_packet`] and the time with [`IceAgent::handle_timeout`], sends what
//! [`IceAgent::poll_transmit`] returns and sleeps until [`IceAgent::poll_timeout`]. Every
//! local candidate names a *base* (an id the shell chooses): the host socket, or a TURN
//! allocation whose framing the shell adds and strips, so to the agent a relayed
//! candidate is just another base.
//!
//! Simplifications, on purpose:
//! - no frozen state and no foundations: with one component every pair starts waiting;
//! - checks go on after a pair is selected, so relayed pairs get checked for the backup;
//! - checks on the selected pair and on one relayed backup pair continue every
//!   [`CONSENT_INTERVAL`] (consent freshness, RFC 7675); a pair that goes
//!   [`CONSENT_TIMEOUT`] without a response is dead, and the agent moves to the backup;
//! - role conflicts are resolved as RFC 8445 §7.3.1.1 says (487 and role switch), but a
//!   dead pair is never revived unless the peer checks it again;
//! - unknown comprehension-required attributes are ignored, not answered with 420, and
//!   requests that fail authentication are dropped, not answered with 400/401;
//! - after [`IceEvent::Failed`] the agent is inert.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use stun::agent::TransactionId;
use stun::attributes::{
    ATTR_FINGERPRINT, ATTR_ICE_CONTROLLED, ATTR_ICE_CONTROLLING, ATTR_MESSAGE_INTEGRITY,
    ATTR_PRIORITY, ATTR_USERNAME, ATTR_USE_CANDIDATE,
};
use stun::error_code::{ErrorCodeAttribute, CODE_ROLE_CONFLICT};
use stun::fingerprint::FINGERPRINT;
use stun::integrity::MessageIntegrity;
use stun::message::{
    is_message, Getter, Message, MessageType, Setter, BINDING_ERROR, BINDING_REQUEST,
    BINDING_SUCCESS, MESSAGE_HEADER_SIZE,
};
use stun::xoraddr::XorMappedAddress;

use crate::blob::{Candidate, CandidateKind, Credentials};

/// Pacing of new checks (RFC 8445 §14.2, Ta).
pub const CHECK_PACING: Duration = Duration::from_millis(20);
/// First retransmission timeout of a check; it doubles after each retransmission.
pub const INITIAL_RTO: Duration = Duration::from_millis(100);
/// Transmissions of a check before its pair fails (RFC 5389 Rc).
pub const MAX_TRANSMISSIONS: u32 = 7;
/// Interval of the consent checks on the selected and backup pairs.
pub const CONSENT_INTERVAL: Duration = Duration::from_millis(500);
/// A selected or backup pair without a response for this long is dead; with
/// [`CONSENT_INTERVAL`] that is three lost checks, and it leaves room to switch to the
/// backup within 2 s of a path failing.
pub const CONSENT_TIMEOUT: Duration = Duration::from_millis(1500);
/// Default time within which some pair must be selected (see
/// [`IceAgent::with_check_timeout`]).
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// Which agent nominates (RFC 8445 §6.1.1); the call's caller is controlling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Controlling,
    Controlled,
}

/// A local candidate and the base (socket or TURN allocation) it is sent from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalCandidate {
    pub id: usize,
    pub candidate: Candidate,
}

/// A datagram for the shell to send from base `base` to `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub base: usize,
    pub to: SocketAddr,
    pub bytes: Vec<u8>,
}

/// What the agent tells the shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IceEvent {
    /// Send media from `base` to `remote` from now on. Emitted again when a better pair
    /// is nominated or when the agent moves to the backup after the selected pair died.
    Selected {
        base: usize,
        remote: SocketAddr,
        kind_local: CandidateKind,
        kind_remote: CandidateKind,
    },
    /// A relayed pair is checked and kept alive as the backup of the selected pair; the
    /// shell must keep its TURN allocation (and permission) refreshed.
    BackupReady { base: usize, remote: SocketAddr },
    /// No pair is usable: none succeeded within the check timeout, or the selected one
    /// died with no live alternative after it. The agent stops.
    Failed,
}

/// Why a datagram was refused. None of these is fatal to the agent: the shell logs and
/// drops the datagram.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IceError {
    #[error("not a STUN message")]
    NotStun,
    #[error("malformed STUN message: {0}")]
    Malformed(String),
    #[error("missing or wrong FINGERPRINT")]
    Fingerprint,
    #[error("missing or wrong MESSAGE-INTEGRITY")]
    Integrity,
    #[error("USERNAME is not ours")]
    Username,
    #[error("missing or malformed {0}")]
    Attribute(&'static str),
    #[error("unexpected STUN message type {0}")]
    UnexpectedType(String),
    #[error("response to no transaction of ours")]
    UnknownTransaction,
    #[error("no local candidate has base {0}")]
    UnknownBase(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PairState {
    Waiting,
    InProgress,
    Succeeded,
    Failed,
}

#[derive(Debug)]
struct Pair {
    /// Index into `IceAgent::locals`.
    local: usize,
    /// Index into `IceAgent::remotes`.
    remote: usize,
    priority: u64,
    state: PairState,
    /// Both sides agree to use this pair for media once it has succeeded.
    nominated: bool,
    /// The controlled agent saw USE-CANDIDATE before the pair succeeded (RFC 8445
    /// §7.3.1.5): nominate it when its triggered check succeeds.
    nominate_on_success: bool,
    last_response: Option<Instant>,
    next_consent: Option<Instant>,
    /// A check on the pair succeeded in either direction: a response to ours, or an
    /// authenticated request of the peer's that we answered. Stays set when the pair later
    /// dies, since the peer may still be sending on it while it moves to another.
    validated: bool,
}

impl Pair {
    /// Succeeded and answered recently: usable now.
    fn is_live(&self, now: Instant) -> bool {
        self.state == PairState::Succeeded
            && self
                .last_response
                .is_some_and(|t| now < t + CONSENT_TIMEOUT)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// A connectivity check, retransmitted; its timeout fails the pair.
    Check { use_candidate: bool },
    /// A consent check, sent once; only the missing response matters.
    Consent,
}

#[derive(Debug)]
struct Transaction {
    id: TransactionId,
    pair: usize,
    purpose: Purpose,
    bytes: Vec<u8>,
    transmissions: u32,
    rto: Duration,
    /// When to retransmit, or to give up after the last transmission.
    deadline: Instant,
}

/// The ICE agent of one endpoint for one call.
#[derive(Debug)]
pub struct IceAgent {
    role: Role,
    local: Credentials,
    remote: Credentials,
    tie_breaker: u64,
    check_timeout: Duration,
    locals: Vec<LocalCandidate>,
    remotes: Vec<Candidate>,
    pairs: Vec<Pair>,
    triggered: VecDeque<usize>,
    transactions: Vec<Transaction>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<IceEvent>,
    /// The first time the agent was told; the check timeout counts from it.
    started: Option<Instant>,
    next_check: Option<Instant>,
    selected: Option<usize>,
    backup: Option<usize>,
    failed: bool,
}

impl IceAgent {
    /// `tie_breaker` is a random number settling role conflicts (RFC 8445 §7.3.1.1).
    pub fn new(role: Role, local: Credentials, remote: Credentials, tie_breaker: u64) -> Self {
        Self {
            role,
            local,
            remote,
            tie_breaker,
            check_timeout: DEFAULT_CHECK_TIMEOUT,
            locals: Vec::new(),
            remotes: Vec::new(),
            pairs: Vec::new(),
            triggered: VecDeque::new(),
            transactions: Vec::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            started: None,
            next_check: None,
            selected: None,
            backup: None,
            failed: false,
        }
    }

    /// The agent fails if no pair is selected this long after it first saw the time
    /// (default [`DEFAULT_CHECK_TIMEOUT`]), or, later, as soon as the selected pair dies
    /// with no live pair to move to.
    pub fn with_check_timeout(mut self, timeout: Duration) -> Self {
        self.check_timeout = timeout;
        self
    }

    /// The current role, which a role conflict may have changed.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Adds a candidate of ours and pairs it with the remote ones. A server-reflexive
    /// candidate is sent from its base, so it only makes a pair if no host candidate of
    /// the same base already does (RFC 8445 §6.1.2.4).
    pub fn add_local_candidate(&mut self, candidate: LocalCandidate) {
        self.locals.push(candidate);
        let local = self.locals.len() - 1;
        for remote in 0..self.remotes.len() {
            self.add_pair(local, remote);
        }
    }

    /// Adds a candidate of the peer (from its media blob) and pairs it with ours. A
    /// candidate already learned as peer-reflexive takes the signalled type and priority.
    pub fn add_remote_candidate(&mut self, candidate: Candidate) {
        if let Some(known) = self
            .remotes
            .iter_mut()
            .find(|r| r.address == candidate.address)
        {
            if known.kind == CandidateKind::PeerReflexive {
                *known = candidate;
                self.recompute_priorities();
            }
            return;
        }
        self.remotes.push(candidate);
        let remote = self.remotes.len() - 1;
        for local in 0..self.locals.len() {
            self.add_pair(local, remote);
        }
    }

    /// Processes a datagram received on `local_base` from `from`. The shell passes only
    /// STUN datagrams (see [`crate::demux`]); once the agent has failed, valid ones are
    /// ignored.
    pub fn handle_packet(
        &mut self,
        now: Instant,
        local_base: usize,
        from: SocketAddr,
        packet: &[u8],
    ) -> Result<(), IceError> {
        self.start_clock(now);
        if !self.locals.iter().any(|l| l.id == local_base) {
            return Err(IceError::UnknownBase(local_base));
        }
        let mut message = parse(packet)?;
        if self.failed {
            return Ok(());
        }
        match message.typ {
            BINDING_REQUEST => self.handle_request(now, local_base, from, &mut message),
            BINDING_SUCCESS | BINDING_ERROR => {
                self.handle_response(now, local_base, from, &mut message)
            }
            other => Err(IceError::UnexpectedType(other.to_string())),
        }
    }

    /// The next datagram to send: responses and retransmissions first, then a new check
    /// if pacing allows one.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        self.start_clock(now);
        if self.failed {
            return None;
        }
        if let Some(transmit) = self.transmits.pop_front() {
            return Some(transmit);
        }
        if self.next_check.is_some_and(|t| now < t) {
            return None;
        }
        let pair = self.next_pair_to_check()?;
        self.next_check = Some(now + CHECK_PACING);
        let use_candidate = self.role == Role::Controlling;
        Some(self.send_request(now, pair, Purpose::Check { use_candidate }))
    }

    /// When [`IceAgent::handle_timeout`] (or, for pacing, [`IceAgent::poll_transmit`])
    /// next has work; `None` while there is nothing to wait for.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.failed {
            return None;
        }
        let pacing = self
            .has_check_to_start()
            .then(|| self.next_check.or(self.started))
            .flatten();
        let transactions = self.transactions.iter().map(|t| t.deadline);
        let watched = [self.selected, self.backup]
            .into_iter()
            .flatten()
            .flat_map(|i| {
                let pair = &self.pairs[i];
                [
                    pair.next_consent,
                    pair.last_response.map(|t| t + CONSENT_TIMEOUT),
                ]
            })
            .flatten();
        let give_up = self
            .selected
            .is_none()
            .then(|| self.started.map(|t| t + self.check_timeout))
            .flatten();
        pacing
            .into_iter()
            .chain(transactions)
            .chain(watched)
            .chain(give_up)
            .min()
    }

    /// Advances timers: retransmissions, consent checks, dead pairs and the check
    /// timeout.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.start_clock(now);
        if self.failed {
            return;
        }
        self.retransmit(now);
        self.watch_selected(now);
        let deadline = self.started.map(|t| t + self.check_timeout);
        if self.selected.is_none() && deadline.is_some_and(|d| now >= d) {
            self.failed = true;
            self.transactions.clear();
            self.transmits.clear();
            self.events.push_back(IceEvent::Failed);
        }
    }

    pub fn poll_event(&mut self) -> Option<IceEvent> {
        self.events.pop_front()
    }

    /// Whether `(base, remote)` is a valid pair: a connectivity check on it succeeded in
    /// either direction (RFC 8445 §7.2.5.3 for our checks, §7.3.1.4 for the peer's). The
    /// shell accepts DTLS and SRTP only from such a pair, so nobody can inject them from an
    /// address that never proved knowledge of the ICE password.
    pub fn is_valid(&self, base: usize, remote: SocketAddr) -> bool {
        self.pair_index(base, remote)
            .is_some_and(|i| self.pairs[i].validated)
    }

    fn start_clock(&mut self, now: Instant) {
        self.started.get_or_insert(now);
    }

    fn add_pair(&mut self, local: usize, remote: usize) -> Option<usize> {
        let (l, r) = (&self.locals[local], &self.remotes[remote]);
        if l.candidate.address.is_ipv4() != r.address.is_ipv4() {
            return None;
        }
        let priority = self.pair_priority(local, remote);
        let base = l.id;
        // Pairs sharing base and remote address would send identical checks; keep the
        // one with the higher local candidate (host over its server-reflexive one).
        if let Some(existing) = self.pair_index(base, r.address) {
            if priority > self.pairs[existing].priority {
                self.pairs[existing].local = local;
                self.pairs[existing].priority = priority;
            }
            return Some(existing);
        }
        self.pairs.push(Pair {
            local,
            remote,
            priority,
            state: PairState::Waiting,
            nominated: false,
            nominate_on_success: false,
            last_response: None,
            next_consent: None,
            validated: false,
        });
        Some(self.pairs.len() - 1)
    }

    fn pair_index(&self, base: usize, remote: SocketAddr) -> Option<usize> {
        self.pairs.iter().position(|p| {
            self.locals[p.local].id == base && self.remotes[p.remote].address == remote
        })
    }

    /// RFC 8445 §6.1.2.3: `2^32 * min(G, D) + 2 * max(G, D) + (G > D)`, G being the
    /// controlling agent's candidate priority.
    fn pair_priority(&self, local: usize, remote: usize) -> u64 {
        let ours = u64::from(self.locals[local].candidate.priority);
        let theirs = u64::from(self.remotes[remote].priority);
        let (g, d) = match self.role {
            Role::Controlling => (ours, theirs),
            Role::Controlled => (theirs, ours),
        };
        (g.min(d) << 32) + 2 * g.max(d) + u64::from(g > d)
    }

    fn recompute_priorities(&mut self) {
        for i in 0..self.pairs.len() {
            self.pairs[i].priority = self.pair_priority(self.pairs[i].local, self.pairs[i].remote);
        }
    }

    fn has_check_to_start(&self) -> bool {
        !self.triggered.is_empty() || self.pairs.iter().any(|p| p.state == PairState::Waiting)
    }

    /// Triggered checks first (RFC 8445 §6.1.4.2), then the best waiting pair.
    fn next_pair_to_check(&mut self) -> Option<usize> {
        while let Some(pair) = self.triggered.pop_front() {
            if self.pairs[pair].state == PairState::Waiting {
                return Some(pair);
            }
        }
        (0..self.pairs.len())
            .filter(|&i| self.pairs[i].state == PairState::Waiting)
            .max_by_key(|&i| self.pairs[i].priority)
    }

    fn trigger_check(&mut self, pair: usize) {
        if matches!(
            self.pairs[pair].state,
            PairState::Waiting | PairState::Failed
        ) {
            self.pairs[pair].state = PairState::Waiting;
            if !self.triggered.contains(&pair) {
                self.triggered.push_back(pair);
            }
        }
    }

    /// Builds a Binding request for `pair`, records its transaction and returns its first
    /// transmission.
    fn send_request(&mut self, now: Instant, pair: usize, purpose: Purpose) -> Transmit {
        let p = &self.pairs[pair];
        let local = &self.locals[p.local];
        let (base, to) = (local.id, self.remotes[p.remote].address);
        // The priority the peer would give us as a peer-reflexive candidate (RFC 8445
        // §7.1.1): our type preference replaced, local preference and component kept.
        let prflx_priority = (u32::from(CandidateKind::PeerReflexive.type_preference()) << 24)
            | (local.candidate.priority & 0x00ff_ffff);
        let username = format!("{}:{}", self.remote.ufrag, self.local.ufrag);
        let role_attr = match self.role {
            Role::Controlling => ATTR_ICE_CONTROLLING,
            Role::Controlled => ATTR_ICE_CONTROLLED,
        };
        let id = TransactionId::new();
        let mut m = header(BINDING_REQUEST, id);
        m.add(ATTR_USERNAME, username.as_bytes());
        m.add(ATTR_PRIORITY, &prflx_priority.to_be_bytes());
        m.add(role_attr, &self.tie_breaker.to_be_bytes());
        if purpose
            == (Purpose::Check {
                use_candidate: true,
            })
        {
            m.add(ATTR_USE_CANDIDATE, &[]);
        }
        let bytes = seal(m, &self.remote.pwd);

        if let Purpose::Check { .. } = purpose {
            self.pairs[pair].state = PairState::InProgress;
        }
        let rto = match purpose {
            Purpose::Check { .. } => INITIAL_RTO,
            Purpose::Consent => CONSENT_TIMEOUT,
        };
        self.transactions.push(Transaction {
            id,
            pair,
            purpose,
            bytes: bytes.clone(),
            transmissions: 1,
            rto,
            deadline: now + rto,
        });
        Transmit { base, to, bytes }
    }

    fn retransmit(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.transactions.len() {
            let t = &mut self.transactions[i];
            if now < t.deadline {
                i += 1;
                continue;
            }
            let retransmits = matches!(t.purpose, Purpose::Check { .. });
            if retransmits && t.transmissions < MAX_TRANSMISSIONS {
                t.transmissions += 1;
                t.rto *= 2;
                t.deadline = now + t.rto;
                let pair = &self.pairs[t.pair];
                self.transmits.push_back(Transmit {
                    base: self.locals[pair.local].id,
                    to: self.remotes[pair.remote].address,
                    bytes: t.bytes.clone(),
                });
                i += 1;
                continue;
            }
            let t = self.transactions.swap_remove(i);
            if retransmits && self.pairs[t.pair].state == PairState::InProgress {
                self.pairs[t.pair].state = PairState::Failed;
            }
        }
    }

    /// Sends consent checks on the selected and backup pairs and retires dead ones.
    fn watch_selected(&mut self, now: Instant) {
        let mut changed = false;
        for pair in [self.selected, self.backup].into_iter().flatten() {
            if !self.pairs[pair].is_live(now) {
                self.pairs[pair].state = PairState::Failed;
                changed = true;
            }
        }
        if changed {
            if self
                .selected
                .is_some_and(|p| self.pairs[p].state == PairState::Failed)
            {
                self.selected = None;
            }
            if self
                .backup
                .is_some_and(|p| self.pairs[p].state == PairState::Failed)
            {
                self.backup = None;
            }
            self.update_selection(now);
        }
        for pair in [self.selected, self.backup].into_iter().flatten() {
            if self.pairs[pair].next_consent.is_some_and(|t| now >= t) {
                self.pairs[pair].next_consent = Some(now + CONSENT_INTERVAL);
                let transmit = self.send_request(now, pair, Purpose::Consent);
                self.transmits.push_back(transmit);
            }
        }
    }

    /// Selects the best live nominated pair, and the best live nominated relayed pair as
    /// its backup when the selected pair is not relayed itself.
    fn update_selection(&mut self, now: Instant) {
        let best = |agent: &Self, filter: &dyn Fn(usize) -> bool| {
            (0..agent.pairs.len())
                .filter(|&i| agent.pairs[i].nominated && agent.pairs[i].is_live(now) && filter(i))
                .max_by_key(|&i| agent.pairs[i].priority)
        };
        let selected = best(self, &|_| true);
        if selected != self.selected {
            self.selected = selected;
            if let Some(i) = selected {
                self.pairs[i].next_consent = Some(now + CONSENT_INTERVAL);
                let (base, remote, kind_local, kind_remote) = self.describe(i);
                self.events.push_back(IceEvent::Selected {
                    base,
                    remote,
                    kind_local,
                    kind_remote,
                });
            }
        }
        let backup = selected
            .filter(|&s| !self.is_relayed(s))
            .and_then(|s| best(self, &|i| i != s && self.is_relayed(i)));
        if backup != self.backup {
            self.backup = backup;
            if let Some(i) = backup {
                self.pairs[i].next_consent = Some(now + CONSENT_INTERVAL);
                let (base, remote, ..) = self.describe(i);
                self.events
                    .push_back(IceEvent::BackupReady { base, remote });
            }
        }
    }

    fn is_relayed(&self, pair: usize) -> bool {
        let (.., kind_local, kind_remote) = self.describe(pair);
        kind_local == CandidateKind::Relayed || kind_remote == CandidateKind::Relayed
    }

    fn describe(&self, pair: usize) -> (usize, SocketAddr, CandidateKind, CandidateKind) {
        let p = &self.pairs[pair];
        let (local, remote) = (&self.locals[p.local], &self.remotes[p.remote]);
        (local.id, remote.address, local.candidate.kind, remote.kind)
    }

    fn handle_request(
        &mut self,
        now: Instant,
        base: usize,
        from: SocketAddr,
        m: &mut Message,
    ) -> Result<(), IceError> {
        let username = m
            .get(ATTR_USERNAME)
            .map_err(|_| IceError::Attribute("USERNAME"))?;
        if username != format!("{}:{}", self.local.ufrag, self.remote.ufrag).as_bytes() {
            return Err(IceError::Username);
        }
        verify_integrity(m, &self.local.pwd)?;
        let priority = m
            .get(ATTR_PRIORITY)
            .ok()
            .and_then(|v| <[u8; 4]>::try_from(v).ok())
            .map(u32::from_be_bytes)
            .ok_or(IceError::Attribute("PRIORITY"))?;
        let tie_breaker = |attr| {
            m.get(attr)
                .ok()
                .and_then(|v| <[u8; 8]>::try_from(v).ok())
                .map(u64::from_be_bytes)
        };
        let peer_role = match (
            tie_breaker(ATTR_ICE_CONTROLLING),
            tie_breaker(ATTR_ICE_CONTROLLED),
        ) {
            (Some(t), None) => (Role::Controlling, t),
            (None, Some(t)) => (Role::Controlled, t),
            _ => return Err(IceError::Attribute("ICE-CONTROLLING or ICE-CONTROLLED")),
        };
        let use_candidate = m.contains(ATTR_USE_CANDIDATE);

        // RFC 8445 §7.3.1.1: the larger tie-breaker is controlling.
        if peer_role.0 == self.role {
            let we_keep_role = match self.role {
                Role::Controlling => self.tie_breaker >= peer_role.1,
                Role::Controlled => self.tie_breaker < peer_role.1,
            };
            if we_keep_role {
                let mut reply = header(BINDING_ERROR, m.transaction_id);
                ErrorCodeAttribute {
                    code: CODE_ROLE_CONFLICT,
                    reason: b"Role Conflict".to_vec(),
                }
                .add_to(&mut reply)
                .expect("a short reason always fits");
                self.transmits.push_back(Transmit {
                    base,
                    to: from,
                    bytes: seal(reply, &self.local.pwd),
                });
                return Ok(());
            }
            self.switch_role();
        }

        let mut reply = header(BINDING_SUCCESS, m.transaction_id);
        XorMappedAddress {
            ip: from.ip(),
            port: from.port(),
        }
        .add_to(&mut reply)
        .expect("encoding an address cannot fail");
        self.transmits.push_back(Transmit {
            base,
            to: from,
            bytes: seal(reply, &self.local.pwd),
        });

        // RFC 8445 §7.3.1.3: an unknown source is a peer-reflexive candidate.
        let remote = match self.remotes.iter().position(|r| r.address == from) {
            Some(i) => i,
            None => {
                self.remotes.push(Candidate {
                    foundation: "prflx".into(),
                    priority,
                    address: from,
                    kind: CandidateKind::PeerReflexive,
                    related: None,
                });
                self.remotes.len() - 1
            }
        };
        // The best local candidate of the base the request came in on.
        let local = (0..self.locals.len())
            .filter(|&i| self.locals[i].id == base)
            .max_by_key(|&i| self.locals[i].candidate.priority)
            .ok_or(IceError::UnknownBase(base))?;
        let Some(pair) = self.add_pair(local, remote) else {
            // An IPv6 request on an IPv4 base (or the reverse) cannot be a pair of ours.
            return Ok(());
        };
        // Answered with a success: the peer has proved it knows our password on this path.
        self.pairs[pair].validated = true;

        // RFC 8445 §7.3.1.4/§7.3.1.5: a live pair is nominated at once; any other gets a
        // triggered check, and USE-CANDIDATE takes effect when that check succeeds.
        let nominate = use_candidate && self.role == Role::Controlled;
        if self.pairs[pair].is_live(now) {
            if nominate && !self.pairs[pair].nominated {
                self.pairs[pair].nominated = true;
                self.update_selection(now);
            }
        } else {
            self.pairs[pair].nominate_on_success |= nominate;
            if self.pairs[pair].state == PairState::Succeeded {
                self.pairs[pair].state = PairState::Waiting;
            }
            self.trigger_check(pair);
        }
        Ok(())
    }

    fn handle_response(
        &mut self,
        now: Instant,
        base: usize,
        from: SocketAddr,
        m: &mut Message,
    ) -> Result<(), IceError> {
        let index = self
            .transactions
            .iter()
            .position(|t| t.id == m.transaction_id)
            .ok_or(IceError::UnknownTransaction)?;
        // Verified before the transaction is retired, so a forged response cannot cancel
        // a check.
        verify_integrity(m, &self.remote.pwd)?;
        let t = self.transactions.swap_remove(index);
        let pair = t.pair;
        let (sent_base, sent_to, ..) = self.describe(pair);
        let is_check = matches!(t.purpose, Purpose::Check { .. });

        if m.typ == BINDING_ERROR {
            let mut error = ErrorCodeAttribute::default();
            error
                .get_from(m)
                .map_err(|_| IceError::Attribute("ERROR-CODE"))?;
            if error.code == CODE_ROLE_CONFLICT {
                // RFC 8445 §7.2.5.1: take the other role and check the pair again.
                if t.purpose != Purpose::Consent {
                    self.switch_role();
                    self.pairs[pair].state = PairState::Waiting;
                    self.trigger_check(pair);
                }
            } else if is_check {
                self.pairs[pair].state = PairState::Failed;
            }
            return Ok(());
        }

        // RFC 8445 §7.2.5.2.1: the response must come back on the path the request took.
        if (base, from) != (sent_base, sent_to) {
            if is_check {
                self.pairs[pair].state = PairState::Failed;
            }
            return Ok(());
        }
        let p = &mut self.pairs[pair];
        match t.purpose {
            Purpose::Check { use_candidate } => {
                p.state = PairState::Succeeded;
                p.validated = true;
                p.last_response = Some(now);
                p.nominated |= use_candidate || p.nominate_on_success;
                self.update_selection(now);
            }
            Purpose::Consent => {
                if p.state == PairState::Succeeded {
                    p.last_response = Some(now);
                }
            }
        }
        Ok(())
    }

    fn switch_role(&mut self) {
        self.role = match self.role {
            Role::Controlling => Role::Controlled,
            Role::Controlled => Role::Controlling,
        };
        self.recompute_priorities();
    }
}

fn header(typ: MessageType, id: TransactionId) -> Message {
    let mut m = Message::new();
    m.typ = typ;
    m.transaction_id = id;
    m.write_header();
    m
}

/// Appends MESSAGE-INTEGRITY (short-term, keyed with `pwd`) and FINGERPRINT.
fn seal(mut m: Message, pwd: &str) -> Vec<u8> {
    MessageIntegrity::new_short_term_integrity(pwd.to_owned())
        .add_to(&mut m)
        .expect("FINGERPRINT is not added yet");
    FINGERPRINT
        .add_to(&mut m)
        .expect("adding FINGERPRINT cannot fail");
    m.raw
}

/// Decodes a STUN message whose last attribute is a valid FINGERPRINT, as every ICE
/// message carries one (RFC 8445 §7.1) and it is what tells STUN from other traffic.
fn parse(packet: &[u8]) -> Result<Message, IceError> {
    // The two top bits of a STUN message are zero (RFC 5389 §6).
    if !is_message(packet) || packet[0] & 0xc0 != 0 {
        return Err(IceError::NotStun);
    }
    let mut m = Message::new();
    m.unmarshal_binary(packet)
        .map_err(|e| IceError::Malformed(e.to_string()))?;
    if packet.len() != MESSAGE_HEADER_SIZE + m.length as usize {
        return Err(IceError::Malformed("bytes after the message".into()));
    }
    let last = m.attributes.0.last().map(|a| a.typ);
    if last != Some(ATTR_FINGERPRINT) || FINGERPRINT.check(&m).is_err() {
        return Err(IceError::Fingerprint);
    }
    Ok(m)
}

/// Checks MESSAGE-INTEGRITY, which must come right before FINGERPRINT: attributes after
/// it would not be covered by it.
fn verify_integrity(m: &mut Message, pwd: &str) -> Result<(), IceError> {
    let attrs = &m.attributes.0;
    let n = attrs.len();
    if n < 2 || attrs[n - 2].typ != ATTR_MESSAGE_INTEGRITY || attrs[n - 2].value.len() != 20 {
        return Err(IceError::Integrity);
    }
    if attrs[..n - 2]
        .iter()
        .any(|a| a.typ == ATTR_MESSAGE_INTEGRITY)
    {
        return Err(IceError::Integrity);
    }
    MessageIntegrity::new_short_term_integrity(pwd.to_owned())
        .check(m)
        .map_err(|_| IceError::Integrity)
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::blob::{priority, COMPONENT_RTP};

    const HOST: usize = 0;
    const RELAY: usize = 1;
    const STEP: Duration = Duration::from_millis(5);

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    fn candidate(kind: CandidateKind, address: SocketAddr) -> Candidate {
        Candidate {
            foundation: kind.as_str().into(),
            priority: priority(kind, 65535, COMPONENT_RTP),
            address,
            kind,
            related: None,
        }
    }

    fn credentials(ufrag: &str) -> Credentials {
        Credentials {
            ufrag: ufrag.into(),
            pwd: format!("{ufrag}-password-0123456789"),
        }
    }

    struct Endpoint {
        agent: IceAgent,
        /// The address each base sends from: the host socket, or the relayed address of
        /// the TURN allocation as the peer sees it.
        bases: Vec<(usize, SocketAddr)>,
        events: Vec<(Duration, IceEvent)>,
    }

    impl Endpoint {
        fn address(&self, base: usize) -> SocketAddr {
            self.bases.iter().find(|(b, _)| *b == base).unwrap().1
        }

        fn base_of(&self, address: SocketAddr) -> Option<usize> {
            self.bases
                .iter()
                .find(|(_, a)| *a == address)
                .map(|(b, _)| *b)
        }

        fn selections(&self) -> Vec<(Duration, usize, SocketAddr)> {
            self.events
                .iter()
                .filter_map(|(t, e)| match e {
                    IceEvent::Selected { base, remote, .. } => Some((*t, *base, *remote)),
                    _ => None,
                })
                .collect()
        }

        fn failed_at(&self) -> Option<Duration> {
            self.events
                .iter()
                .find(|(_, e)| *e == IceEvent::Failed)
                .map(|(t, _)| *t)
        }
    }

    /// Two endpoints, each with a host base and a relayed base, on a lossless network
    /// whose only faults are blocked address pairs; time moves in 5 ms steps.
    struct Network {
        start: Instant,
        now: Instant,
        a: Endpoint,
        b: Endpoint,
        /// Address pairs that drop traffic in both directions.
        blocked: Vec<(SocketAddr, SocketAddr)>,
        errors: Vec<IceError>,
    }

    const A_HOST: &str = "192.0.2.1:5000";
    const A_RELAY: &str = "203.0.113.9:40001";
    const B_HOST: &str = "198.51.100.2:6000";
    const B_RELAY: &str = "203.0.113.9:40002";

    fn endpoint(
        role: Role,
        tie_breaker: u64,
        local: &str,
        remote: &str,
        host: &str,
        relay: &str,
    ) -> Endpoint {
        let mut agent = IceAgent::new(role, credentials(local), credentials(remote), tie_breaker);
        let (host, relay) = (addr(host), addr(relay));
        agent.add_local_candidate(LocalCandidate {
            id: HOST,
            candidate: candidate(CandidateKind::Host, host),
        });
        agent.add_local_candidate(LocalCandidate {
            id: RELAY,
            candidate: candidate(CandidateKind::Relayed, relay),
        });
        Endpoint {
            agent,
            bases: vec![(HOST, host), (RELAY, relay)],
            events: Vec::new(),
        }
    }

    impl Network {
        fn new() -> Self {
            Self::with_roles(Role::Controlling, Role::Controlled)
        }

        fn with_roles(role_a: Role, role_b: Role) -> Self {
            let mut a = endpoint(role_a, 2, "aaaa", "bbbb", A_HOST, A_RELAY);
            let mut b = endpoint(role_b, 1, "bbbb", "aaaa", B_HOST, B_RELAY);
            for (address, kind) in [
                (B_HOST, CandidateKind::Host),
                (B_RELAY, CandidateKind::Relayed),
            ] {
                a.agent.add_remote_candidate(candidate(kind, addr(address)));
            }
            for (address, kind) in [
                (A_HOST, CandidateKind::Host),
                (A_RELAY, CandidateKind::Relayed),
            ] {
                b.agent.add_remote_candidate(candidate(kind, addr(address)));
            }
            let start = Instant::now();
            Self {
                start,
                now: start,
                a,
                b,
                blocked: Vec::new(),
                errors: Vec::new(),
            }
        }

        fn block(&mut self, x: &str, y: &str) {
            self.blocked.push((addr(x), addr(y)));
        }

        fn elapsed(&self) -> Duration {
            self.now - self.start
        }

        /// Delivers a datagram `from_a` (or from B) if its path is not blocked.
        fn deliver(&mut self, from_a: bool, t: Transmit) {
            let (src, dst) = if from_a {
                (&self.a, &mut self.b)
            } else {
                (&self.b, &mut self.a)
            };
            let from = src.address(t.base);
            if self
                .blocked
                .iter()
                .any(|&(x, y)| (x, y) == (from, t.to) || (y, x) == (from, t.to))
            {
                return;
            }
            let Some(base) = dst.base_of(t.to) else {
                return;
            };
            if let Err(e) = dst.agent.handle_packet(self.now, base, from, &t.bytes) {
                self.errors.push(e);
            }
        }

        fn step(&mut self) {
            let now = self.now;
            self.a.agent.handle_timeout(now);
            self.b.agent.handle_timeout(now);
            loop {
                let mut idle = true;
                while let Some(t) = self.a.agent.poll_transmit(now) {
                    idle = false;
                    self.deliver(true, t);
                }
                while let Some(t) = self.b.agent.poll_transmit(now) {
                    idle = false;
                    self.deliver(false, t);
                }
                if idle {
                    break;
                }
            }
            let elapsed = self.elapsed();
            for end in [&mut self.a, &mut self.b] {
                while let Some(e) = end.agent.poll_event() {
                    end.events.push((elapsed, e));
                }
            }
            // The agent must always ask to be woken up again while it has work.
            for end in [&self.a, &self.b] {
                if end.failed_at().is_none() {
                    assert!(end.agent.poll_timeout().is_some());
                }
            }
            self.now += STEP;
        }

        fn run_until(&mut self, until: Duration) {
            while self.elapsed() < until {
                self.step();
            }
        }
    }

    fn last_selected(end: &Endpoint) -> (usize, SocketAddr) {
        let (_, base, remote) = *end.selections().last().expect("a pair is selected");
        (base, remote)
    }

    #[test]
    fn selects_the_host_pair_when_hosts_reach_each_other() {
        let mut net = Network::new();
        net.run_until(Duration::from_secs(2));
        assert_eq!(
            net.a.selections()[0],
            (Duration::ZERO, HOST, addr(B_HOST)),
            "{:?}",
            net.a.events
        );
        assert_eq!(last_selected(&net.a), (HOST, addr(B_HOST)));
        assert_eq!(last_selected(&net.b), (HOST, addr(A_HOST)));
        assert!(net.a.events.contains(&(
            Duration::ZERO,
            IceEvent::Selected {
                base: HOST,
                remote: addr(B_HOST),
                kind_local: CandidateKind::Host,
                kind_remote: CandidateKind::Host,
            }
        )));
        // Relayed pairs were checked too and one is kept as the backup on each side.
        for end in [&net.a, &net.b] {
            assert!(end
                .events
                .iter()
                .any(|(_, e)| matches!(e, IceEvent::BackupReady { .. })));
            assert!(end.failed_at().is_none());
        }
        assert!(net.errors.is_empty(), "{:?}", net.errors);
    }

    #[test]
    fn selects_a_relayed_pair_when_hosts_are_blocked() {
        let mut net = Network::new();
        net.block(A_HOST, B_HOST);
        net.run_until(Duration::from_secs(3));
        // A's host to B's relay wins over A's relay to B's host: same candidates, but
        // the controlling side's candidate is the higher one.
        assert_eq!(last_selected(&net.a), (HOST, addr(B_RELAY)));
        assert_eq!(last_selected(&net.b), (RELAY, addr(A_HOST)));
        assert!(net.a.events.iter().any(|(_, e)| *e
            == IceEvent::Selected {
                base: HOST,
                remote: addr(B_RELAY),
                kind_local: CandidateKind::Host,
                kind_remote: CandidateKind::Relayed,
            }));
        for end in [&net.a, &net.b] {
            assert!(end.failed_at().is_none());
            // A relayed selection needs no backup.
            assert!(!end
                .events
                .iter()
                .any(|(_, e)| matches!(e, IceEvent::BackupReady { .. })));
        }
    }

    #[test]
    fn moves_to_the_backup_within_two_seconds_of_a_path_failure() {
        let mut net = Network::new();
        net.run_until(Duration::from_secs(3));
        assert_eq!(last_selected(&net.a), (HOST, addr(B_HOST)));
        assert_eq!(last_selected(&net.b), (HOST, addr(A_HOST)));

        let cut = net.elapsed();
        net.block(A_HOST, B_HOST);
        net.run_until(Duration::from_secs(8));
        for (end, expected) in [
            (&net.a, (HOST, addr(B_RELAY))),
            (&net.b, (RELAY, addr(A_HOST))),
        ] {
            let after: Vec<_> = end.selections().into_iter().filter(|s| s.0 > cut).collect();
            assert_eq!(after.len(), 1, "{:?}", end.events);
            let (at, base, remote) = after[0];
            assert_eq!((base, remote), expected);
            assert!(
                at - cut <= Duration::from_secs(2),
                "switched after {:?}",
                at - cut
            );
            assert!(end.failed_at().is_none());
        }
    }

    #[test]
    fn fails_when_all_paths_die_after_the_check_timeout() {
        let mut net = Network::new();
        net.run_until(Duration::from_secs(11));
        let cut = net.elapsed();
        for (x, y) in [
            (A_HOST, B_HOST),
            (A_HOST, B_RELAY),
            (A_RELAY, B_HOST),
            (A_RELAY, B_RELAY),
        ] {
            net.block(x, y);
        }
        net.run_until(Duration::from_secs(16));
        for end in [&net.a, &net.b] {
            let failed = end.failed_at().expect("agent failed");
            assert!(failed > cut && failed - cut <= Duration::from_secs(2));
        }
    }

    #[test]
    fn wrong_password_never_selects_and_fails_at_the_check_timeout() {
        let mut net = Network::new();
        // A has the wrong password for B, so B refuses A's checks: nothing is ever
        // nominated. (B's own checks succeed, but the controlled side cannot select.)
        net.a.agent.remote.pwd = "not-the-password-of-bbbb".into();
        net.run_until(Duration::from_secs(12));
        for end in [&net.a, &net.b] {
            assert!(end.selections().is_empty(), "{:?}", end.events);
            let failed = end.failed_at().expect("agent failed");
            assert!(
                failed >= DEFAULT_CHECK_TIMEOUT && failed < DEFAULT_CHECK_TIMEOUT + STEP * 2,
                "failed at {failed:?}"
            );
        }
        assert!(net.errors.contains(&IceError::Integrity));
        // A failed agent sends nothing more.
        assert_eq!(net.a.agent.poll_transmit(net.now), None);
        assert_eq!(net.a.agent.poll_timeout(), None);
    }

    #[test]
    fn role_conflict_is_resolved() {
        let mut net = Network::with_roles(Role::Controlling, Role::Controlling);
        net.run_until(Duration::from_secs(2));
        // A has the larger tie-breaker and stays controlling.
        assert_eq!(net.a.agent.role(), Role::Controlling);
        assert_eq!(net.b.agent.role(), Role::Controlled);
        assert_eq!(last_selected(&net.a), (HOST, addr(B_HOST)));
        assert_eq!(last_selected(&net.b), (HOST, addr(A_HOST)));
    }

    #[test]
    fn checks_are_paced_and_retransmitted() {
        let start = Instant::now();
        let mut agent = IceAgent::new(
            Role::Controlling,
            credentials("aaaa"),
            credentials("bbbb"),
            7,
        );
        agent.add_local_candidate(LocalCandidate {
            id: HOST,
            candidate: candidate(CandidateKind::Host, addr(A_HOST)),
        });
        agent.add_remote_candidate(candidate(CandidateKind::Host, addr(B_HOST)));
        agent.add_remote_candidate(candidate(CandidateKind::Relayed, addr(B_RELAY)));
        let mut sent = Vec::new();
        let mut now = start;
        while now - start < Duration::from_secs(14) {
            agent.handle_timeout(now);
            while let Some(t) = agent.poll_transmit(now) {
                sent.push(((now - start).as_millis(), t.to));
            }
            now += STEP;
        }
        let times = |to: &str| -> Vec<u128> {
            sent.iter()
                .filter(|s| s.1 == addr(to))
                .map(|s| s.0)
                .collect()
        };
        // The host pair first, the relayed one a pacing interval later; each sent 7
        // times with a doubling timeout.
        assert_eq!(times(B_HOST), [0, 100, 300, 700, 1500, 3100, 6300]);
        assert_eq!(times(B_RELAY), [20, 120, 320, 720, 1520, 3120, 6320]);
        assert_eq!(agent.poll_event(), Some(IceEvent::Failed));
    }

    #[test]
    fn check_timeout_is_configurable() {
        let start = Instant::now();
        let mut agent = IceAgent::new(
            Role::Controlled,
            credentials("aaaa"),
            credentials("bbbb"),
            7,
        )
        .with_check_timeout(Duration::from_secs(2));
        // No candidates at all: nothing to send, only the deadline to wait for.
        assert_eq!(agent.poll_transmit(start), None);
        assert_eq!(agent.poll_timeout(), Some(start + Duration::from_secs(2)));
        agent.handle_timeout(start + Duration::from_millis(1999));
        assert_eq!(agent.poll_event(), None);
        agent.handle_timeout(start + Duration::from_secs(2));
        assert_eq!(agent.poll_event(), Some(IceEvent::Failed));
    }

    /// A Binding request A sends to B's host candidate.
    fn request_from_a() -> (Network, Vec<u8>) {
        let mut net = Network::new();
        let t = net.a.agent.poll_transmit(net.now).unwrap();
        assert_eq!((t.base, t.to), (HOST, addr(B_HOST)));
        (net, t.bytes)
    }

    #[test]
    fn a_pair_is_valid_once_a_check_on_it_succeeded_in_either_direction() {
        let (mut net, request) = request_from_a();
        let now = net.now;
        assert!(
            !net.a.agent.is_valid(HOST, addr(B_HOST)),
            "only checked, not answered"
        );
        assert!(!net.b.agent.is_valid(HOST, addr(A_HOST)));

        // A request failing authentication proves nothing.
        let mut forged = request.clone();
        let in_hmac = forged.len() - 20;
        forged[in_hmac] ^= 1;
        assert!(net
            .b
            .agent
            .handle_packet(now, HOST, addr(A_HOST), &forged)
            .is_err());
        assert!(!net.b.agent.is_valid(HOST, addr(A_HOST)));

        // B answers A's authenticated request: valid for B at once (RFC 8445 §7.3.1.4),
        // before B's own check on the pair.
        net.b
            .agent
            .handle_packet(now, HOST, addr(A_HOST), &request)
            .unwrap();
        assert!(net.b.agent.is_valid(HOST, addr(A_HOST)));
        assert!(!net.b.agent.is_valid(RELAY, addr(A_HOST)), "another base");
        assert!(
            !net.b.agent.is_valid(HOST, addr(A_RELAY)),
            "another address"
        );

        // A gets the success response: valid for A (§7.2.5.3).
        let response = net.b.agent.poll_transmit(now).unwrap();
        assert_eq!((response.base, response.to), (HOST, addr(A_HOST)));
        net.a
            .agent
            .handle_packet(now, HOST, addr(B_HOST), &response.bytes)
            .unwrap();
        assert!(net.a.agent.is_valid(HOST, addr(B_HOST)));
        assert!(
            !net.a.agent.is_valid(HOST, addr("192.0.2.99:5000")),
            "unknown"
        );
    }

    #[test]
    fn blocked_pairs_never_become_valid_and_validity_outlives_a_dead_path() {
        let mut net = Network::new();
        net.block(A_HOST, B_HOST);
        net.run_until(Duration::from_secs(3));
        assert!(!net.a.agent.is_valid(HOST, addr(B_HOST)));
        assert!(!net.b.agent.is_valid(HOST, addr(A_HOST)));
        assert!(net.a.agent.is_valid(HOST, addr(B_RELAY)));
        assert!(net.b.agent.is_valid(RELAY, addr(A_HOST)));

        // The selected path dies: the peer may still send on it while it moves over.
        net.block(A_HOST, B_RELAY);
        net.run_until(Duration::from_secs(6));
        assert!(net.a.agent.is_valid(HOST, addr(B_RELAY)));
        assert!(net.b.agent.is_valid(RELAY, addr(A_HOST)));
    }

    #[test]
    fn refuses_malformed_and_unauthenticated_packets() {
        let (mut net, request) = request_from_a();
        let now = net.now;
        let from = addr(A_HOST);
        let b = &mut net.b.agent;

        assert_eq!(
            b.handle_packet(now, HOST, from, &[]),
            Err(IceError::NotStun)
        );
        assert_eq!(
            b.handle_packet(now, HOST, from, b"hello"),
            Err(IceError::NotStun)
        );
        assert_eq!(
            b.handle_packet(
                now,
                HOST,
                from,
                &[22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
            ),
            Err(IceError::NotStun)
        );
        assert_eq!(
            b.handle_packet(now, 9, from, &request),
            Err(IceError::UnknownBase(9))
        );

        // A header announcing more attributes than the datagram holds.
        let mut truncated = request.clone();
        truncated.truncate(30);
        assert!(matches!(
            b.handle_packet(now, HOST, from, &truncated),
            Err(IceError::Malformed(_))
        ));
        let mut trailing = request.clone();
        trailing.extend_from_slice(&[0; 4]);
        assert!(matches!(
            b.handle_packet(now, HOST, from, &trailing),
            Err(IceError::Malformed(_))
        ));
        // A flipped bit in the body breaks the fingerprint.
        let mut corrupted = request.clone();
        corrupted[30] ^= 1;
        assert_eq!(
            b.handle_packet(now, HOST, from, &corrupted),
            Err(IceError::Fingerprint)
        );
        // A message without integrity or fingerprint.
        let bare = header(BINDING_REQUEST, TransactionId::new()).raw;
        assert_eq!(
            b.handle_packet(now, HOST, from, &bare),
            Err(IceError::Fingerprint)
        );
        let mut unsigned = header(BINDING_REQUEST, TransactionId::new());
        unsigned.add(ATTR_USERNAME, b"bbbb:aaaa");
        FINGERPRINT.add_to(&mut unsigned).unwrap();
        assert_eq!(
            b.handle_packet(now, HOST, from, &unsigned.raw),
            Err(IceError::Integrity)
        );
        // Right username, wrong key; and a username for someone else.
        let mut forged = header(BINDING_REQUEST, TransactionId::new());
        forged.add(ATTR_USERNAME, b"bbbb:aaaa");
        assert_eq!(
            b.handle_packet(now, HOST, from, &seal(forged, "guessed-password-12345678")),
            Err(IceError::Integrity)
        );
        let mut stranger = header(BINDING_REQUEST, TransactionId::new());
        stranger.add(ATTR_USERNAME, b"bbbb:zzzz");
        assert_eq!(
            b.handle_packet(now, HOST, from, &seal(stranger, "bbbb-password-0123456789")),
            Err(IceError::Username)
        );
        // Authenticated but without PRIORITY.
        let mut no_priority = header(BINDING_REQUEST, TransactionId::new());
        no_priority.add(ATTR_USERNAME, b"bbbb:aaaa");
        assert_eq!(
            b.handle_packet(
                now,
                HOST,
                from,
                &seal(no_priority, "bbbb-password-0123456789")
            ),
            Err(IceError::Attribute("PRIORITY"))
        );
        // A response to nothing we sent.
        let response = header(BINDING_SUCCESS, TransactionId::new());
        assert_eq!(
            b.handle_packet(now, HOST, from, &seal(response, "aaaa-password-0123456789")),
            Err(IceError::UnknownTransaction)
        );
        // None of that made B answer or learn anything.
        assert_eq!(b.transmits.len(), 0);
        assert_eq!(b.remotes.len(), 2);

        // The genuine request is answered.
        assert_eq!(b.handle_packet(now, HOST, from, &request), Ok(()));
        let reply = b.poll_transmit(now).unwrap();
        assert_eq!((reply.base, reply.to), (HOST, from));
    }

    #[test]
    fn learns_peer_reflexive_candidates() {
        let (mut net, request) = request_from_a();
        let nat = addr("198.18.0.1:7000");
        let b = &mut net.b.agent;
        assert_eq!(b.handle_packet(net.now, HOST, nat, &request), Ok(()));
        let reply = b.poll_transmit(net.now).unwrap();
        assert_eq!(reply.to, nat);
        // The reply tells A the address B saw.
        let mut m = parse(&reply.bytes).unwrap();
        let mut mapped = XorMappedAddress::default();
        mapped.get_from(&m).unwrap();
        assert_eq!((mapped.ip, mapped.port), (nat.ip(), nat.port()));
        assert_eq!(verify_integrity(&mut m, "bbbb-password-0123456789"), Ok(()));
        // The new remote is checked at once (a triggered check) from the base it came in on.
        assert_eq!(b.remotes.last().unwrap().kind, CandidateKind::PeerReflexive);
        let check = b.poll_transmit(net.now).unwrap();
        assert_eq!((check.base, check.to), (HOST, nat));
    }

    #[test]
    fn random_and_mutated_datagrams_never_panic() {
        let (mut net, request) = request_from_a();
        let mut rng = StdRng::seed_from_u64(0x5eed);
        let from = addr(A_HOST);
        let mut accepted = 0;
        for i in 0..20_000 {
            let packet: Vec<u8> = if i % 2 == 0 {
                let len = rng.random_range(0..120);
                let mut p: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                // Often make it look like STUN so the parser gets past the header.
                if len >= 8 && rng.random_bool(0.5) {
                    p[0] &= 0x01;
                    p[4..8].copy_from_slice(&0x2112_a442u32.to_be_bytes());
                }
                p
            } else {
                let mut p = request.clone();
                for _ in 0..rng.random_range(1..4) {
                    let at = rng.random_range(0..p.len());
                    p[at] = rng.random();
                }
                p
            };
            let now = net.now;
            if net.b.agent.handle_packet(now, HOST, from, &packet).is_ok() {
                accepted += 1;
            }
            while net.b.agent.poll_transmit(now).is_some() {}
        }
        // Only mutations that left the message intact (same byte written back) pass.
        assert!(accepted < 200, "{accepted} random datagrams accepted");
    }
}
