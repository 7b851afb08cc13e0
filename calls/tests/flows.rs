//! One test per rule of `docs/protocol.md`, "Call flows", on the in-memory harness: providers
//! `a.test` (the caller's), `b.test` and `c.test`, with the network steered by each test.

use switchyard_calls::testing::{Device, Fate, World, RING_TIMEOUT_MS, TIMESTAMP_WINDOW_S};
use switchyard_calls::{CallState, RefusalCode};
use switchyard_protocol::attestation::Level;
use switchyard_protocol::dict::Dict;
use switchyard_protocol::invitation::{CancelReason, ForwardAction, Push, RejectReason, SessionId};

const BOB: &str = "mailto:bob@example.com";
const CAROL: &str = "mailto:carol@example.com";

struct Call {
    world: World,
    alice: Device,
    session: SessionId,
    initiate: u64,
}

fn world() -> World {
    World::new(&["a.test", "b.test", "c.test"])
}

fn alice(world: &mut World) -> Device {
    world
        .add_user("a.test", "tel:+16502530000", &["alice"])
        .remove(0)
}

/// Alice at A calls `callee`, everything in flight still held.
fn call(mut world: World, callee: &str) -> Call {
    let alice = alice(&mut world);
    let session = world.new_session();
    let initiate = world.initiate(&alice, &session, callee, false);
    world.settle();
    Call {
        world,
        alice,
        session,
        initiate,
    }
}

fn terminal(push: &Push) -> bool {
    matches!(push, Push::Cancel(_) | Push::Reject(_))
}

fn cancels(world: &World, device: &Device) -> Vec<CancelReason> {
    world
        .pushes(device)
        .iter()
        .filter_map(|p| match p {
            Push::Cancel(c) => Some(c.reason),
            _ => None,
        })
        .collect()
}

fn refusal(world: &World, request: u64) -> RefusalCode {
    world
        .answer(request)
        .expect("answered")
        .expect_err("refused")
        .code
}

fn state_of(world: &World, request: u64) -> String {
    let answer = world.answer(request).expect("answered").expect("accepted");
    answer.str("state").unwrap().to_string()
}

fn record_state(world: &World, provider: &str, session: &SessionId) -> Option<CallState> {
    world
        .tables(provider)
        .calls
        .get(session.as_str())
        .map(|c| c.state)
}

#[test]
fn a_local_call_rings_every_device_and_the_first_accept_wins() {
    let mut world = world();
    let bob = world.add_user("a.test", BOB, &["bob-1", "bob-2", "bob-3"]);
    let mut call = call(world, BOB);
    let world = &mut call.world;
    let answer = world.answer(call.initiate).unwrap().unwrap();
    assert_eq!(answer.int("rung").unwrap(), 3);
    let rings: Vec<_> = bob
        .iter()
        .map(|d| world.ring(d, &call.session).unwrap())
        .collect();
    // Each rings until the ring timeout, and a ring not delivered by then is dropped.
    let expiries = world.tables("a.test").push_expiries;
    for (device, ring) in bob.iter().zip(&rings) {
        assert_eq!(ring.ring_deadline, world.now_ms() + RING_TIMEOUT_MS);
        assert_eq!(expiries[&device.endpoint.id], [ring.ring_deadline]);
    }
    let first = world.accept(&bob[1], &rings[1]);
    let second = world.accept(&bob[2], &rings[2]);
    world.settle();
    assert!(world.answer(first).unwrap().is_ok());
    assert_eq!(refusal(world, second), RefusalCode::AlreadyAnswered);
    let accepts: Vec<_> = world
        .pushes(&call.alice)
        .into_iter()
        .filter(|p| matches!(p, Push::Accept(_)))
        .collect();
    assert_eq!(accepts.len(), 1);
    assert_eq!(cancels(world, &bob[0]), [CancelReason::AnsweredElsewhere]);
    assert_eq!(cancels(world, &bob[2]), [CancelReason::AnsweredElsewhere]);
    assert!(cancels(world, &bob[1]).is_empty());
    assert_eq!(
        record_state(world, "a.test", &call.session),
        Some(CallState::Answered)
    );
}

#[test]
fn an_initiate_goes_only_to_the_members_whose_filter_may_hold_the_callee() {
    let mut world = world();
    world.add_user("b.test", BOB, &["bob-1"]);
    let mut call = call(world, BOB);
    let flights = call.world.flights();
    assert_eq!(flights.len(), 1);
    assert_eq!(
        (flights[0].to.as_str(), flights[0].action),
        ("b.test", ForwardAction::Initiate)
    );
    call.world.deliver_all();
    let answer = call.world.answer(call.initiate).unwrap().unwrap();
    assert_eq!(answer.string_array("providers").unwrap(), ["b.test"]);

    let mut world = self::world();
    let nobody = call_alone(&mut world, "mailto:nobody@example.com");
    assert_eq!(nobody, RefusalCode::UnknownPeer);
    let mut world = self::world();
    world.add_user("b.test", BOB, &["bob-1"]);
    world.open_breaker("b.test");
    assert_eq!(call_alone(&mut world, BOB), RefusalCode::PeersUnavailable);
}

/// The only member that may host the callee hosts it but rings nobody: its Initiate answer
/// refuses, the dispatch itself ends the call, and the caller hears one Reject with that reason.
#[test]
fn a_call_every_candidate_refuses_in_its_answer_ends_with_one_reject() {
    let mut world = world();
    world.add_user("b.test", BOB, &[]);
    let mut call = call(world, BOB);
    let world = &mut call.world;
    world.deliver_all();
    let answer = world.answer(call.initiate).unwrap().unwrap();
    assert_eq!(answer.int("rung").unwrap(), 0);
    assert!(answer.string_array("providers").unwrap().is_empty());
    let pushes = world.pushes(&call.alice);
    assert!(
        matches!(&pushes[..], [Push::Reject(r)] if r.reason == RejectReason::Unavailable),
        "{pushes:?}"
    );
    let record = &world.tables("a.test").calls[call.session.as_str()];
    assert_eq!(record.state, CallState::Rejected);
    assert_eq!(record.reason.as_deref(), Some("unavailable"));
}

fn call_alone(world: &mut World, callee: &str) -> RefusalCode {
    let alice = alice(world);
    let session = world.new_session();
    let request = world.initiate(&alice, &session, callee, false);
    world.deliver_all();
    refusal(world, request)
}

#[test]
fn an_answered_call_across_providers_writes_only_the_units_that_change_something() {
    let mut world = world();
    let bob = world.add_user("b.test", BOB, &["bob"]).remove(0);
    let mut call = call(world, BOB);
    let world = &mut call.world;
    world.deliver_all();
    let ring = world.ring(&bob, &call.session).unwrap();
    let accepted = world.accept(&bob, &ring);
    world.deliver_all();
    assert!(world.answer(accepted).unwrap().is_ok());
    // A: the record, the member that rang, the Accept Forward. B: the Initiate Forward, the
    // Accept. The dispatch that changed nothing at A, and the confirmed Accept with nobody else
    // to cancel at B, open no unit. (Forward ids are claimed outside units.)
    assert_eq!(world.store("a.test").units(), (3, 3));
    assert_eq!(world.store("b.test").units(), (2, 2));
}

#[test]
fn the_same_uri_at_two_providers_rings_at_both_and_the_first_accept_wins() {
    let mut world = world();
    let at_b = world.add_user("b.test", BOB, &["bob-b1", "bob-b2"]);
    let at_c = world.add_user("c.test", BOB, &["bob-c"]);
    let mut call = call(world, BOB);
    let world = &mut call.world;
    world.deliver_all();
    let answer = world.answer(call.initiate).unwrap().unwrap();
    assert_eq!(answer.int("rung").unwrap(), 3);
    let ring_b = world.ring(&at_b[0], &call.session).unwrap();
    let ring_c = world.ring(&at_c[0], &call.session).unwrap();
    assert_eq!(
        ring_b.peer_attestation,
        Some(Level::Full),
        "A's caller attestation verified at B"
    );
    let won = world.accept(&at_b[0], &ring_b);
    let lost = world.accept(&at_c[0], &ring_c);
    world.settle();
    // B's Accept Forward reaches A first.
    let flights = world.flights();
    let from_b = flights.iter().position(|f| f.from == "b.test").unwrap();
    world.route(from_b, Fate::Deliver);
    world.deliver_all();
    assert!(world.answer(won).unwrap().is_ok());
    assert_eq!(refusal(world, lost), RefusalCode::AlreadyAnswered);
    assert_eq!(cancels(world, &at_b[1]), [CancelReason::AnsweredElsewhere]);
    assert_eq!(
        record_state(world, "a.test", &call.session),
        Some(CallState::Answered)
    );
    assert_eq!(
        record_state(world, "b.test", &call.session),
        Some(CallState::Answered)
    );
    let at_c_record = &world.tables("c.test").calls[call.session.as_str()];
    assert_eq!(at_c_record.state, CallState::Cancelled);
    assert_eq!(at_c_record.reason.as_deref(), Some("answered-elsewhere"));
    let caller_pushes = world.pushes(&call.alice);
    assert!(
        matches!(&caller_pushes[..], [Push::Accept(a)] if a.peer_provider.as_deref() == Some("b.test"))
    );
}

#[test]
fn a_provider_still_ringing_when_another_answers_ends_as_answered_elsewhere() {
    let mut world = world();
    let at_b = world.add_user("b.test", BOB, &["bob-b"]);
    let at_c = world.add_user("c.test", BOB, &["bob-c"]);
    let mut call = call(world, BOB);
    let world = &mut call.world;
    world.deliver_all();
    let ring_b = world.ring(&at_b[0], &call.session).unwrap();
    world.accept(&at_b[0], &ring_b);
    world.deliver_all();
    assert_eq!(cancels(world, &at_c[0]), [CancelReason::AnsweredElsewhere]);
    let record = &world.tables("c.test").calls[call.session.as_str()];
    assert_eq!(record.state, CallState::Cancelled);
    assert_eq!(record.reason.as_deref(), Some("answered-elsewhere"));
}

#[test]
fn when_everyone_rejects_the_caller_hears_once_with_the_last_reason() {
    let mut world = world();
    let bob = world.add_user("b.test", BOB, &["bob-1", "bob-2"]);
    let mut call = call(world, BOB);
    let world = &mut call.world;
    world.deliver_all();
    let rings: Vec<_> = bob
        .iter()
        .map(|d| world.ring(d, &call.session).unwrap())
        .collect();
    let first = world.reject(&bob[0], &rings[0], RejectReason::Declined);
    world.deliver_all();
    assert_eq!(
        world
            .answer(first)
            .unwrap()
            .unwrap()
            .int("remaining")
            .unwrap(),
        1
    );
    assert!(world.pushes(&call.alice).is_empty());
    world.reject(&bob[1], &rings[1], RejectReason::Busy);
    world.deliver_all();
    let pushes = world.pushes(&call.alice);
    assert!(matches!(&pushes[..], [Push::Reject(r)] if r.reason == RejectReason::Busy));
    for provider in ["a.test", "b.test"] {
        let record = &world.tables(provider).calls[call.session.as_str()];
        assert_eq!(record.state, CallState::Rejected, "{provider}");
        assert_eq!(record.reason.as_deref(), Some("busy"), "{provider}");
    }
}

#[test]
fn a_caller_that_cancels_ends_each_record_as_caller_cancelled() {
    let mut world = world();
    let bob = world.add_user("b.test", BOB, &["bob-1"]);
    let mut call = call(world, BOB);
    let world = &mut call.world;
    world.deliver_all();
    let state = state_of_initiate(world, call.initiate);
    let cancel = world.cancel(&call.alice, &call.session, BOB, &state);
    world.deliver_all();
    assert!(world.answer(cancel).unwrap().is_ok());
    assert_eq!(cancels(world, &bob[0]), [CancelReason::Cancelled]);
    for provider in ["a.test", "b.test"] {
        let record = &world.tables(provider).calls[call.session.as_str()];
        assert_eq!(record.state, CallState::Cancelled, "{provider}");
        assert_eq!(
            record.reason.as_deref(),
            Some("caller-cancelled"),
            "{provider}"
        );
    }
}

/// With the default relay choice (`caller-provider`) every push of a call names the caller's
/// provider as the one whose relay the endpoints use, here and across providers.
#[test]
fn every_push_names_the_relay_of_the_callers_provider() {
    let mut world = world();
    let local = world.add_user("a.test", CAROL, &["carol-1"]);
    let bob = world.add_user("b.test", BOB, &["bob-1"]);
    let mut call = call(world, BOB);
    let world = &mut call.world;
    world.deliver_all();
    let ring = world.ring(&bob[0], &call.session).unwrap();
    assert_eq!(ring.relay_provider, "a.test");
    world.accept(&bob[0], &ring);
    world.deliver_all();
    let pushes = world.pushes(&call.alice);
    assert!(
        matches!(&pushes[..], [Push::Accept(a)] if a.relay_provider == "a.test"),
        "{pushes:?}"
    );

    let session = world.new_session();
    world.initiate(&call.alice, &session, CAROL, false);
    world.deliver_all();
    let ring = world.ring(&local[0], &session).unwrap();
    assert_eq!(ring.relay_provider, "a.test");
}

/// The URI and token an Initiate's body claims must be the authenticated endpoint's own:
/// otherwise it is refused and nothing is recorded or rung.
#[test]
fn an_endpoint_cannot_call_as_a_uri_or_token_not_its_own() {
    let mut world = world();
    let alice = alice(&mut world);
    let carol = world.add_user("a.test", CAROL, &["carol-1"]);
    let bob = world.add_user("b.test", BOB, &["bob-1"]);
    let token = alice.endpoint.push_token.clone();
    for (uri, token) in [
        (CAROL, token.as_str()),
        (alice.uri.as_str(), carol[0].endpoint.push_token.as_str()),
    ] {
        let session = world.new_session();
        let initiate = world.initiate_claiming(&alice, uri, token, &session, BOB, false);
        world.deliver_all();
        assert_eq!(refusal(&world, initiate), RefusalCode::NotAuthorized);
        assert!(world.tables("a.test").calls.is_empty());
        assert!(world.ring(&bob[0], &session).is_none());
    }
    assert!(world.flights().is_empty());
}

#[test]
fn the_ring_timeout_ends_each_providers_record_on_its_own_and_a_late_accept_is_refused() {
    let mut world = world();
    let bob = world.add_user("b.test", BOB, &["bob-1"]);
    let mut call = call(world, BOB);
    let world = &mut call.world;
    world.deliver_all();
    let ring = world.ring(&bob[0], &call.session).unwrap();
    assert_eq!(world.advance(RING_TIMEOUT_MS - 1).timed_out, 0);
    assert_eq!(world.advance(1).timed_out, 2, "A's record and B's");
    assert!(world.flights().is_empty(), "a timeout sends no Forward");
    assert_eq!(cancels(world, &call.alice), [CancelReason::Timeout]);
    assert_eq!(cancels(world, &bob[0]), [CancelReason::Timeout]);
    for provider in ["a.test", "b.test"] {
        let record = &world.tables(provider).calls[call.session.as_str()];
        assert_eq!(record.reason.as_deref(), Some("timeout"), "{provider}");
    }
    let late = world.accept(&bob[0], &ring);
    world.deliver_all();
    assert_eq!(refusal(world, late), RefusalCode::CallEnded);
}

#[test]
fn an_accept_the_originator_timed_out_meanwhile_gets_call_ended() {
    let mut world = world();
    let bob = world.add_user("b.test", BOB, &["bob-1", "bob-2"]);
    let mut call = call(world, BOB);
    let world = &mut call.world;
    world.deliver_all();
    let ring = world.ring(&bob[0], &call.session).unwrap();
    let accept = world.accept(&bob[0], &ring);
    world.settle();
    // A times out while B's Accept Forward is on its way (B answered in time by its clock).
    world.advance(RING_TIMEOUT_MS);
    world.deliver_all();
    assert_eq!(refusal(world, accept), RefusalCode::CallEnded);
    assert_eq!(cancels(world, &call.alice), [CancelReason::Timeout]);
    assert_eq!(cancels(world, &bob[1]).len(), 1);
    let at_b = &world.tables("b.test").calls[call.session.as_str()];
    assert_eq!(at_b.state, CallState::Cancelled);
    assert_eq!(at_b.reason.as_deref(), Some("cancelled"));
}

#[test]
fn a_cancel_crossing_an_accept_leaves_nobody_in_the_call() {
    for cancel_first in [true, false] {
        let mut world = world();
        let bob = world.add_user("b.test", BOB, &["bob-1", "bob-2"]);
        let mut call = call(world, BOB);
        let world = &mut call.world;
        world.deliver_all();
        let state = state_of_initiate(world, call.initiate);
        let ring = world.ring(&bob[0], &call.session).unwrap();
        let accept = world.accept(&bob[0], &ring);
        let cancel = world.cancel(&call.alice, &call.session, BOB, &state);
        world.settle();
        let flights = world.flights();
        let index = flights
            .iter()
            .position(|f| {
                f.action
                    == if cancel_first {
                        ForwardAction::Cancel
                    } else {
                        ForwardAction::Accept
                    }
            })
            .unwrap();
        world.route(index, Fate::Deliver);
        world.deliver_all();
        assert!(world.answer(cancel).unwrap().is_ok());
        assert_eq!(
            refusal(world, accept),
            RefusalCode::CallEnded,
            "cancel first: {cancel_first}"
        );
        assert!(!world
            .pushes(&call.alice)
            .iter()
            .any(|p| matches!(p, Push::Accept(_))));
        for device in &bob {
            let ends = world.pushes(device).iter().filter(|p| terminal(p)).count();
            assert!(
                ends <= 1,
                "{}: {:?}",
                device.endpoint.id,
                world.pushes(device)
            );
        }
        assert_eq!(cancels(world, &bob[1]).len(), 1);
        let b = record_state(world, "b.test", &call.session).unwrap();
        assert!(b.is_final(), "{b:?}");
    }
}

#[test]
fn a_cancel_whose_call_moved_on_after_it_was_read_cancels_nothing() {
    let mut world = world();
    let bob = world.add_user("a.test", BOB, &["bob-1", "bob-2"]);
    let mut call = call(world, BOB);
    let world = &mut call.world;
    let state = state_of_initiate(world, call.initiate);
    // Between the Cancel's read of the ringing call and its write, another transaction answers
    // it (PostgreSQL, read committed): the Cancel must find out and leave everything as it is.
    world.store("a.test").lose_next_transition();
    let cancel = world.cancel(&call.alice, &call.session, BOB, &state);
    world.settle();
    assert_eq!(refusal(world, cancel), RefusalCode::CallEnded);
    for device in &bob {
        assert!(cancels(world, device).is_empty(), "{}", device.endpoint.id);
    }
    assert_eq!(
        record_state(world, "a.test", &call.session),
        Some(CallState::Ringing)
    );
}

fn state_of_initiate(world: &World, initiate: u64) -> String {
    state_of(world, initiate)
}

/// Only `404 unknown-peer` to an Initiate says the member's filter was wrong; any other
/// refusal, another 404 among them, is a failure of that member.
#[test]
fn only_unknown_peer_counts_as_a_filter_false_positive() {
    for (answer, heard) in [
        (RefusalCode::UnknownPeer, RefusalCode::UnknownPeer),
        (RefusalCode::UnknownSession, RefusalCode::PeersUnreachable),
    ] {
        let mut world = world();
        world.add_user("b.test", BOB, &["bob-1"]);
        let mut call = call(world, BOB);
        let world = &mut call.world;
        world.route(0, Fate::RefusedWith(answer));
        world.deliver_all();
        assert_eq!(refusal(world, call.initiate), heard, "{answer}");
        let false_positives = world
            .member("a.test")
            .events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| matches!(e, switchyard_calls::ports::Event::FalsePositive(_)))
            .count();
        assert_eq!(
            false_positives,
            usize::from(answer == RefusalCode::UnknownPeer),
            "{answer}"
        );
    }
}

#[test]
fn a_false_positive_is_dropped_and_the_call_goes_on() {
    let mut world = world();
    let bob = world.add_user("b.test", BOB, &["bob-1"]);
    world.claim("c.test", BOB);
    let mut call = call(world, BOB);
    let world = &mut call.world;
    assert_eq!(world.flights().len(), 2);
    world.deliver_all();
    let answer = world.answer(call.initiate).unwrap().unwrap();
    assert_eq!(answer.string_array("providers").unwrap(), ["b.test"]);
    let events = world.member("a.test").events.lock().unwrap().clone();
    assert!(events
        .iter()
        .any(|e| matches!(e, switchyard_calls::ports::Event::FalsePositive(p) if p == "c.test")));
    let ring = world.ring(&bob[0], &call.session).unwrap();
    world.reject(&ring_device(&bob), &ring, RejectReason::Busy);
    world.deliver_all();
    let pushes = world.pushes(&call.alice);
    assert!(matches!(&pushes[..], [Push::Reject(r)] if r.reason == RejectReason::Busy));
}

fn ring_device(devices: &[Device]) -> Device {
    devices[0].clone()
}

#[test]
fn a_peer_that_times_out_counts_as_a_rejection_and_all_failing_is_unreachable() {
    let mut world = world();
    let bob = world.add_user("b.test", BOB, &["bob-1"]);
    world.add_user("c.test", BOB, &["bob-c"]);
    let mut call = call(world, BOB);
    let world = &mut call.world;
    world.route_to("c.test", Fate::LoseAnswer);
    world.deliver_all();
    let answer = world.answer(call.initiate).unwrap().unwrap();
    assert_eq!(answer.string_array("providers").unwrap(), ["b.test"]);
    let ring = world.ring(&bob[0], &call.session).unwrap();
    world.reject(&bob[0], &ring, RejectReason::Declined);
    world.deliver_all();
    let pushes = world.pushes(&call.alice);
    assert!(matches!(&pushes[..], [Push::Reject(r)] if r.reason == RejectReason::Declined));

    let mut world = self::world();
    world.add_user("b.test", CAROL, &["carol"]);
    let alice = alice(&mut world);
    let session = world.new_session();
    let request = world.initiate(&alice, &session, CAROL, false);
    world.settle();
    world.route(0, Fate::Drop);
    assert_eq!(refusal(&world, request), RefusalCode::PeersUnreachable);
    assert!(
        world.tables("a.test").calls.is_empty(),
        "a refused Request leaves no record"
    );
}

#[test]
fn an_answer_the_originator_never_confirmed_ends_the_call_at_both() {
    let mut world = world();
    let bob = world.add_user("b.test", BOB, &["bob-1", "bob-2"]);
    let mut call = call(world, BOB);
    let world = &mut call.world;
    world.deliver_all();
    let ring = world.ring(&bob[0], &call.session).unwrap();
    let accept = world.accept(&bob[0], &ring);
    world.settle();
    // A takes the Accept, but its answer is lost: B ends its call and tells A `ended`.
    world.route(0, Fate::LoseAnswer);
    world.deliver_all();
    assert_eq!(refusal(world, accept), RefusalCode::OriginUnreachable);
    let caller: Vec<_> = world.pushes(&call.alice);
    assert!(
        matches!(&caller[..], [Push::Accept(_), Push::Cancel(c)] if c.reason == CancelReason::Ended)
    );
    assert_eq!(
        record_state(world, "a.test", &call.session),
        Some(CallState::Ended)
    );
    assert_eq!(
        record_state(world, "b.test", &call.session),
        Some(CallState::Cancelled)
    );
    assert_eq!(cancels(world, &bob[1]), [CancelReason::Cancelled]);
}

#[test]
fn a_hang_up_reaches_the_other_side_across_providers() {
    let mut world = world();
    let bob = world.add_user("b.test", BOB, &["bob-1"]);
    let mut call = call(world, BOB);
    let world = &mut call.world;
    world.deliver_all();
    let ring = world.ring(&bob[0], &call.session).unwrap();
    let accept = world.accept(&bob[0], &ring);
    world.deliver_all();
    let bob_state = state_of(world, accept);
    let hang_up = world.cancel(&bob[0], &call.session, &ring.peer_uri, &bob_state);
    world.deliver_all();
    assert!(world.answer(hang_up).unwrap().is_ok());
    assert_eq!(cancels(world, &call.alice), [CancelReason::Ended]);
    assert_eq!(
        record_state(world, "a.test", &call.session),
        Some(CallState::Ended)
    );
    assert_eq!(
        record_state(world, "b.test", &call.session),
        Some(CallState::Ended)
    );
}

#[test]
fn updates_reach_the_other_party_and_a_callee_updates_only_once_it_answered() {
    let mut world = world();
    let bob = world.add_user("b.test", BOB, &["bob-1", "bob-2"]);
    let mut call = call(world, BOB);
    let world = &mut call.world;
    world.deliver_all();
    let caller_state = state_of(world, call.initiate);
    let ring = world.ring(&bob[0], &call.session).unwrap();
    let early = world.update(&bob[0], &call.session, &ring.peer_uri, &ring.state);
    world.settle();
    assert_eq!(refusal(world, early), RefusalCode::NotAnswered);
    let ringing_update = world.update(&call.alice, &call.session, BOB, &caller_state);
    world.deliver_all();
    assert!(world.answer(ringing_update).unwrap().is_ok());
    for device in &bob {
        assert!(world
            .pushes(device)
            .iter()
            .any(|p| matches!(p, Push::Update(_))));
    }
    let accept = world.accept(&bob[0], &ring);
    world.deliver_all();
    let bob_state = state_of(world, accept);
    world.update(&bob[0], &call.session, &ring.peer_uri, &bob_state);
    world.deliver_all();
    let to_caller = world
        .pushes(&call.alice)
        .into_iter()
        .filter(|p| matches!(p, Push::Update(u) if u.peer_provider.as_deref() == Some("b.test")))
        .count();
    assert_eq!(to_caller, 1);
    // Once answered, the caller's Updates reach the answering device only.
    let updates = |world: &World, device: &Device| {
        world
            .pushes(device)
            .iter()
            .filter(|p| matches!(p, Push::Update(_)))
            .count()
    };
    let before = (updates(world, &bob[0]), updates(world, &bob[1]));
    world.update(&call.alice, &call.session, BOB, &caller_state);
    world.deliver_all();
    assert_eq!(
        (updates(world, &bob[0]), updates(world, &bob[1])),
        (before.0 + 1, before.1)
    );
}

#[test]
fn replayed_and_forged_forwards_are_refused_and_change_nothing() {
    let mut world = world();
    world.add_user("b.test", BOB, &["bob-1"]);
    let mut call = call(world, BOB);
    let world = &mut call.world;
    let initiate = world.flights()[0].clone();
    world.route(0, Fate::Duplicate);
    world.deliver_all();
    assert_eq!(world.tables("b.test").calls.len(), 1);

    let before = world.tables("b.test");
    let replay = world.send_now(
        "a.test",
        "b.test",
        ForwardAction::Initiate,
        initiate.body.clone(),
    );
    assert_eq!(replay.unwrap_err().code, RefusalCode::ReplayedForward);
    let spoofed = world.send_now(
        "c.test",
        "b.test",
        ForwardAction::Initiate,
        initiate.body.clone(),
    );
    assert_eq!(spoofed.unwrap_err().code, RefusalCode::ProviderMismatch);
    // The same Initiate as new, from a clock off by more than the timestamp window either way.
    let window = TIMESTAMP_WINDOW_S;
    for (n, skew) in [-(window + 1), window + 1].into_iter().enumerate() {
        let stale = initiate
            .body
            .clone()
            .with("timestamp", world.now_ms() / 1000 + skew)
            .with("forward-id", format!("a-skewed-forward-{n}"));
        let refused = world.send_now("a.test", "b.test", ForwardAction::Initiate, stale);
        assert_eq!(
            refused.unwrap_err().code,
            RefusalCode::StaleForward,
            "{skew}"
        );
    }
    // C presents A's origin-state as its own answer to A.
    let forged = Dict::new()
        .with("session-id", call.session.as_str())
        .with("timestamp", world.now_ms() / 1000)
        .with("forward-id", "c-forged-forward-0001")
        .with("answering-provider", "c.test")
        .with("origin-state", initiate.body.str("origin-state").unwrap())
        .with("callee-uri", BOB)
        .with("callee-token", "token-x");
    let before_a = world.tables("a.test");
    let taken = world.send_now("c.test", "a.test", ForwardAction::Accept, forged);
    assert_eq!(taken.unwrap_err().code, RefusalCode::NotAuthorized);
    assert_eq!(world.tables("a.test"), before_a);
    assert_eq!(world.tables("b.test"), before);
}
