//! Property tests over random interleavings: four providers, a call from `a.test` to a URI
//! hosted at both `b.test` and `c.test`, and a call within `a.test`, with every device acting at
//! random, Forwards delivered in random order (and, in the lossy runs, dropped or their answers
//! lost), the clock moving, and refused messages thrown in. Whatever happens:
//!
//! - at most one answer per session;
//! - nobody gets more than one terminal push (Reject or Cancel) per session, nor the caller more
//!   than one Accept;
//! - a refused message changes nothing;
//! - on a network that loses nothing, once quiet: the records of all providers agree, and every
//!   party that did not end its part itself got exactly one terminal push.

use std::collections::BTreeMap;

use proptest::prelude::*;
use switchyard_calls::testing::{Device, Fate, World, RING_TIMEOUT_MS};
use switchyard_calls::CallState;
use switchyard_protocol::dict::Dict;
use switchyard_protocol::invitation::{ForwardAction, Push, RejectReason, SessionId};

const BOB: &str = "mailto:bob@example.com";
const CAROL: &str = "mailto:carol@example.com";

#[derive(Debug, Clone)]
enum Op {
    Settle,
    Route {
        index: usize,
        fate: u8,
    },
    Act {
        device: usize,
        session: usize,
        action: u8,
    },
    Advance {
        seconds: u8,
    },
    Refused {
        kind: u8,
        pick: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => Just(Op::Settle),
        6 => (0usize..8, 0u8..10).prop_map(|(index, fate)| Op::Route { index, fate }),
        6 => (0usize..8, 0usize..2, 0u8..6).prop_map(|(device, session, action)| Op::Act { device, session, action }),
        1 => (0u8..40).prop_map(|seconds| Op::Advance { seconds }),
        1 => (0u8..4, 0usize..8).prop_map(|(kind, pick)| Op::Refused { kind, pick }),
    ]
}

/// What a device did in a session, and how it was answered.
#[derive(Default, Clone)]
struct Part {
    accepted: Vec<u64>,
    /// Its Rejects and Cancels.
    ended_itself: Vec<u64>,
    /// Its Cancels alone.
    cancelled: Vec<u64>,
}

struct Sim {
    world: World,
    lossless: bool,
    /// Two sessions: 0 across providers, 1 within `a.test`.
    sessions: Vec<(SessionId, Device, String, u64)>,
    callees: Vec<Vec<Device>>,
    parts: BTreeMap<(usize, String), Part>,
    sent: Vec<(String, String, ForwardAction, Dict)>,
}

impl Sim {
    fn new(lossless: bool) -> Sim {
        let mut world = World::new(&["a.test", "b.test", "c.test", "d.test"]);
        let callers = world.add_user("a.test", "tel:+16502530000", &["alice-1", "alice-2"]);
        let mut bob = world.add_user("b.test", BOB, &["bob-b1", "bob-b2"]);
        bob.extend(world.add_user("c.test", BOB, &["bob-c1"]));
        let carol = world.add_user("a.test", CAROL, &["carol-1", "carol-2"]);
        let remote = world.new_session();
        let local = world.new_session();
        let first = world.initiate(&callers[0], &remote, BOB, false);
        let second = world.initiate(&callers[1], &local, CAROL, false);
        world.settle();
        Sim {
            world,
            lossless,
            sessions: vec![
                (remote, callers[0].clone(), BOB.to_string(), first),
                (local, callers[1].clone(), CAROL.to_string(), second),
            ],
            callees: vec![bob, carol],
            parts: BTreeMap::new(),
            sent: Vec::new(),
        }
    }

    fn part(&mut self, session: usize, device: &Device) -> &mut Part {
        self.parts
            .entry((session, device.endpoint.id.clone()))
            .or_default()
    }

    fn caller_state(&self, session: usize) -> Option<String> {
        let (_, _, _, initiate) = &self.sessions[session];
        let answer = self.world.answer(*initiate)?.ok()?;
        Some(answer.str("state").ok()?.to_string())
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Settle => self.world.settle(),
            Op::Route { index, fate } => {
                let flights = self.world.flights();
                if flights.is_empty() {
                    return;
                }
                let flight = flights[index % flights.len()].clone();
                let fate = match fate {
                    0..=5 => Fate::Deliver,
                    6 | 7 => Fate::Duplicate,
                    8 if !self.lossless => Fate::Drop,
                    9 if !self.lossless => Fate::LoseAnswer,
                    _ => Fate::Deliver,
                };
                if fate != Fate::Drop {
                    self.sent
                        .push((flight.from, flight.to, flight.action, flight.body));
                }
                self.world.route(index % flights.len(), fate);
            }
            Op::Act {
                device,
                session,
                action,
            } => self.act(device, session, action),
            Op::Advance { seconds } => {
                self.world.advance(i64::from(seconds) * 1000);
            }
            Op::Refused { kind, pick } => self.refused(kind, pick),
        }
    }

    fn act(&mut self, device: usize, session: usize, action: u8) {
        let (sid, caller, callee_uri, _) = self.sessions[session].clone();
        // Device 0 is the caller; the others the callee's devices.
        if device.is_multiple_of(self.callees[session].len() + 1) {
            let Some(state) = self.caller_state(session) else {
                return;
            };
            if action.is_multiple_of(2) {
                let request = self.world.cancel(&caller, &sid, &callee_uri, &state);
                self.part(session, &caller).ended_itself.push(request);
                self.part(session, &caller).cancelled.push(request);
            } else {
                self.world.update(&caller, &sid, &callee_uri, &state);
            }
            self.world.settle();
            return;
        }
        let callees = &self.callees[session];
        let callee = callees[(device - 1) % callees.len()].clone();
        let Some(ring) = self.world.ring(&callee, &sid) else {
            return;
        };
        let accepted = self.part(session, &callee).accepted.clone();
        let answered_state = accepted
            .iter()
            .find_map(|r| self.world.answer(*r).and_then(|a| a.ok()))
            .and_then(|a| a.str("state").ok().map(str::to_string));
        match (action, answered_state) {
            (0 | 1, None) => {
                let request = self.world.accept(&callee, &ring);
                self.part(session, &callee).accepted.push(request);
            }
            (2, None) => {
                let reason = RejectReason::ALL[device % RejectReason::ALL.len()];
                let request = self.world.reject(&callee, &ring, reason);
                self.part(session, &callee).ended_itself.push(request);
            }
            (3, None) => {
                let request = self
                    .world
                    .cancel(&callee, &sid, &ring.peer_uri, &ring.state);
                self.part(session, &callee).ended_itself.push(request);
                self.part(session, &callee).cancelled.push(request);
            }
            (3 | 4, Some(state)) => {
                let request = self.world.cancel(&callee, &sid, &ring.peer_uri, &state);
                self.part(session, &callee).ended_itself.push(request);
                self.part(session, &callee).cancelled.push(request);
            }
            (_, Some(state)) => {
                self.world.update(&callee, &sid, &ring.peer_uri, &state);
            }
            _ => {
                self.world
                    .update(&callee, &sid, &ring.peer_uri, &ring.state);
            }
        }
        self.world.settle();
    }

    /// A message that must be refused, run alone: nothing may change.
    fn refused(&mut self, kind: u8, pick: usize) {
        let providers = ["a.test", "b.test", "c.test", "d.test"];
        let before: Vec<_> = providers.iter().map(|p| self.world.tables(p)).collect();
        let refusal = match kind {
            // Carol's device answers a ring meant for one of Bob's.
            0 => {
                let bob = &self.callees[0][pick % self.callees[0].len()];
                let Some(ring) = self.world.ring(bob, &self.sessions[0].0) else {
                    return;
                };
                let intruder = self.callees[1][0].clone();
                let request = self.world.accept(&intruder, &ring);
                self.world.request_now(request)
            }
            // The caller hangs up with the state another provider sealed.
            1 => {
                let bob = &self.callees[0][pick % self.callees[0].len()];
                let Some(ring) = self.world.ring(bob, &self.sessions[0].0) else {
                    return;
                };
                let (sid, caller, callee, _) = self.sessions[0].clone();
                let request = self.world.cancel(&caller, &sid, &callee, &ring.state);
                self.world.request_now(request)
            }
            // A member the call never went to answers it with the originator's state.
            2 => {
                let Some((_, _, _, body)) =
                    self.sent.iter().find(|s| s.2 == ForwardAction::Initiate)
                else {
                    return;
                };
                let forged = Dict::new()
                    .with("session-id", body.str("session-id").unwrap())
                    .with("timestamp", self.world.now_ms() / 1000)
                    .with("forward-id", format!("d-forged-{pick:012}"))
                    .with("answering-provider", "d.test")
                    .with("origin-state", body.str("origin-state").unwrap())
                    .with("callee-uri", BOB)
                    .with("callee-token", "token-d");
                self.world
                    .send_now("d.test", "a.test", ForwardAction::Accept, forged)
            }
            // A Forward already delivered, replayed: refused as a replay, or earlier, once its
            // deadline or timestamp has gone by.
            _ => {
                if self.sent.is_empty() {
                    return;
                }
                let (from, to, action, body) = self.sent[pick % self.sent.len()].clone();
                self.world.send_now(&from, &to, action, body)
            }
        };
        assert!(refusal.is_err(), "kind {kind}: {refusal:?}");
        let after: Vec<_> = providers.iter().map(|p| self.world.tables(p)).collect();
        assert_eq!(
            before, after,
            "a refused message (kind {kind}) changed something"
        );
    }

    fn quiesce(&mut self) {
        self.world.deliver_all();
        self.world.advance(RING_TIMEOUT_MS * 2);
        self.world.deliver_all();
    }

    fn devices(&self, session: usize) -> Vec<Device> {
        let mut all = vec![self.sessions[session].1.clone()];
        all.extend(self.callees[session].iter().cloned());
        all
    }

    fn pushes(&self, device: &Device, session: usize) -> Vec<Push> {
        let sid = &self.sessions[session].0;
        self.world
            .pushes(device)
            .into_iter()
            .filter(|p| p.session_id() == sid)
            .collect()
    }

    fn check_always(&self) {
        for session in 0..self.sessions.len() {
            let answered: Vec<u64> = self
                .parts
                .iter()
                .filter(|((s, _), _)| *s == session)
                .flat_map(|(_, part)| part.accepted.iter().copied())
                .filter(|r| matches!(self.world.answer(*r), Some(Ok(_))))
                .collect();
            assert!(
                answered.len() <= 1,
                "session {session}: {} answers",
                answered.len()
            );
            for device in self.devices(session) {
                let pushes = self.pushes(&device, session);
                let terminal = pushes
                    .iter()
                    .filter(|p| matches!(p, Push::Reject(_) | Push::Cancel(_)))
                    .count();
                let accepts = pushes
                    .iter()
                    .filter(|p| matches!(p, Push::Accept(_)))
                    .count();
                assert!(terminal <= 1, "{} got {pushes:?}", device.endpoint.id);
                // A party that ended the call itself is not told it ended.
                let cancelled_itself = self
                    .parts
                    .get(&(session, device.endpoint.id.clone()))
                    .is_some_and(|part| {
                        part.cancelled
                            .iter()
                            .any(|r| matches!(self.world.answer(*r), Some(Ok(_))))
                    });
                if cancelled_itself {
                    assert_eq!(
                        terminal, 0,
                        "{} cancelled, then got {pushes:?}",
                        device.endpoint.id
                    );
                }
                assert!(accepts <= 1, "{} got {pushes:?}", device.endpoint.id);
            }
        }
    }

    fn record(&self, provider: &str, session: usize) -> Option<(CallState, Option<String>)> {
        let sid = self.sessions[session].0.as_str();
        self.world
            .tables(provider)
            .calls
            .get(sid)
            .map(|c| (c.state, c.answered_by.clone()))
    }

    fn ended_itself(&self, session: usize, device: &Device) -> bool {
        let Some(part) = self.parts.get(&(session, device.endpoint.id.clone())) else {
            return false;
        };
        let refused_answer = part
            .accepted
            .iter()
            .any(|r| matches!(self.world.answer(*r), Some(Err(_))));
        let own_end = part
            .ended_itself
            .iter()
            .any(|r| matches!(self.world.answer(*r), Some(Ok(_))));
        refused_answer || own_end
    }

    fn check_lossless(&self) {
        assert!(self.world.flights().is_empty());
        // The records agree.
        let origin = self.record("a.test", 0);
        let others: Vec<_> = ["b.test", "c.test"]
            .iter()
            .map(|p| (*p, self.record(p, 0)))
            .collect();
        match &origin {
            Some((CallState::Answered, Some(by))) => {
                let winner = by
                    .strip_prefix("provider:")
                    .expect("answered by a provider");
                for (provider, record) in &others {
                    let state = record.as_ref().map(|r| r.0);
                    if *provider == winner {
                        assert_eq!(state, Some(CallState::Answered), "{provider}");
                    } else {
                        assert!(
                            state.is_none_or(CallState::is_final),
                            "{provider}: {state:?}"
                        );
                    }
                }
            }
            Some((state, _)) => {
                assert!(state.is_final(), "a.test still {state:?} once quiet");
                for (provider, record) in &others {
                    let other = record.as_ref().map(|r| r.0);
                    assert!(
                        other.is_none_or(CallState::is_final),
                        "{provider}: {other:?}"
                    );
                }
            }
            None => {}
        }
        // Every party whose call ended without its doing heard of it exactly once.
        for session in 0..self.sessions.len() {
            let (_, caller, _, initiate) = &self.sessions[session];
            if !matches!(self.world.answer(*initiate), Some(Ok(_))) {
                continue;
            }
            for device in self.devices(session) {
                let record = self.record(&device.provider, session);
                let Some((state, _)) = record else { continue };
                let rung = device == *caller
                    || self
                        .world
                        .ring(&device, &self.sessions[session].0)
                        .is_some();
                if !state.is_final() || !rung || self.ended_itself(session, &device) {
                    continue;
                }
                let terminal = self
                    .pushes(&device, session)
                    .iter()
                    .filter(|p| matches!(p, Push::Reject(_) | Push::Cancel(_)))
                    .count();
                assert_eq!(
                    terminal,
                    1,
                    "{} in session {session} ({state:?}): {:?}",
                    device.endpoint.id,
                    self.pushes(&device, session)
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        // Failures print their minimal case; CI keeps no files between runs.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn interleavings_on_a_network_that_loses_nothing(ops in proptest::collection::vec(op(), 0..40)) {
        let mut sim = Sim::new(true);
        for op in &ops {
            sim.apply(op);
            sim.check_always();
        }
        sim.quiesce();
        sim.check_always();
        sim.check_lossless();
    }

    #[test]
    fn interleavings_on_a_network_that_drops_and_loses_answers(ops in proptest::collection::vec(op(), 0..40)) {
        let mut sim = Sim::new(false);
        for op in &ops {
            sim.apply(op);
            sim.check_always();
        }
        sim.quiesce();
        sim.check_always();
    }
}
