//! A member of the federation that lies: it claims callers it does not host, answers calls it
//! never rang for, ends other members' legs and presents endpoint CAs the directory does not
//! pin. Each lie is refused or shown for what it is, and the honest members' calls go on.
//! Issue 14, items 2 and 3; the daemon's hostile-member test runs the same over HTTPS.

use switchyard_calls::ports::Event;
use switchyard_calls::testing::{endpoint_ca, Device, Fate, World, MAX_CALL_DURATION_MS};
use switchyard_calls::{CallState, RefusalCode};
use switchyard_protocol::attestation::{Attestation, Level};
use switchyard_protocol::capabilities::{Capabilities, MediaKind};
use switchyard_protocol::dict::Dict;
use switchyard_protocol::invitation::{
    AcceptForward, CancelForward, Envelope, ForwardAction, ForwardCancelReason, InitiateForward,
    Push, RelayChoice, SessionId,
};

const ALICE: &str = "tel:+16502530000";
const BOB: &str = "mailto:bob@example.com";
const HOSTILE: &str = "h.test";

fn world() -> World {
    World::new(&["a.test", "b.test", "c.test", HOSTILE])
}

fn envelope(world: &World, session: &SessionId, id: &str) -> Envelope {
    Envelope {
        session_id: session.clone(),
        timestamp: world.now_ms() / 1000,
        forward_id: format!("hostile-forward-{id}"),
    }
}

fn record(world: &World, provider: &str, session: &SessionId) -> switchyard_calls::CallRecord {
    world.tables(provider).calls[session.as_str()].clone()
}

/// Alice at A calls Bob; the Initiates are in flight.
fn alice_calls_bob(world: &mut World) -> (Device, SessionId, u64) {
    let alice = world.add_user("a.test", ALICE, &["alice"]).remove(0);
    let session = world.new_session();
    let request = world.initiate(&alice, &session, BOB, false);
    world.settle();
    (alice, session, request)
}

/// The hostile member's Accept for a call it was sent, built from the Initiate it received.
fn hostile_accept(world: &World, initiate: &Dict, id: &str, callee_ca: Option<String>) -> Dict {
    let session = SessionId::parse(initiate.str("session-id").unwrap()).unwrap();
    AcceptForward {
        envelope: envelope(world, &session, id),
        answering_provider: HOSTILE.into(),
        origin_state: initiate.str("origin-state").unwrap().to_string(),
        callee_uri: BOB.into(),
        callee_token: "hostile-token".into(),
        callee_blob: b"hostile blob".to_vec(),
        callee_ca,
    }
    .to_dict()
}

fn hostile_cancel(world: &World, initiate: &Dict, id: &str) -> Dict {
    let session = SessionId::parse(initiate.str("session-id").unwrap()).unwrap();
    CancelForward {
        envelope: envelope(world, &session, id),
        from_provider: HOSTILE.into(),
        reason: ForwardCancelReason::Cancelled,
        origin_state: Some(initiate.str("origin-state").unwrap().to_string()),
    }
    .to_dict()
}

#[test]
fn an_accept_that_overtakes_its_own_initiate_answer_comes_again_and_wins() {
    let mut world = world();
    let bob = world.add_user("b.test", BOB, &["bob"]).remove(0);
    let (alice, session, initiate) = alice_calls_bob(&mut world);
    // B rings Bob, but its answer to A is slow on the way back.
    world.route(0, Fate::HoldAnswer);
    let ring = world.ring(&bob, &session).expect("Bob rings");
    let accept = world.accept(&bob, &ring);
    world.settle();
    assert_eq!(world.flights()[0].action, ForwardAction::Accept);
    world.route(0, Fate::Deliver);
    assert_eq!(
        record(&world, "a.test", &session).state,
        CallState::Ringing,
        "an Accept from a member whose ringing A has not recorded does not count yet"
    );
    let again = world.flights();
    assert_eq!(
        (again.len(), again[0].action),
        (1, ForwardAction::Accept),
        "B sends its Accept again after a pause"
    );
    world.release_answers();
    assert_eq!(
        record(&world, "a.test", &session).ringing_providers,
        ["b.test"]
    );
    world.deliver_all();
    assert!(world.answer(accept).unwrap().is_ok());
    assert!(world.answer(initiate).unwrap().is_ok());
    assert_eq!(
        record(&world, "a.test", &session).answered_by.as_deref(),
        Some("provider:b.test")
    );
    assert!(world
        .pushes(&alice)
        .iter()
        .any(|p| matches!(p, Push::Accept(_))));
}

#[test]
fn a_member_that_never_rang_can_neither_answer_nor_end_the_call() {
    let mut world = world();
    let bob = world.add_user("b.test", BOB, &["bob"]).remove(0);
    // The hostile member's filter claims Bob too, so the Initiate goes to it as well.
    world.claim(HOSTILE, BOB);
    let (alice, session, initiate) = alice_calls_bob(&mut world);
    let flights = world.flights();
    let to_hostile = flights.iter().find(|f| f.to == HOSTILE).unwrap().clone();
    world.route_to("b.test", Fate::Deliver);

    // Before it has answered its Initiate, and after it answered that it does not host Bob.
    for (round, answered) in [("early", false), ("late", true)] {
        if answered {
            world.route_to(HOSTILE, Fate::Deliver);
        }
        let before = world.tables("a.test");
        let accept = hostile_accept(&world, &to_hostile.body, &format!("accept-{round}"), None);
        let taken = world.send_now(HOSTILE, "a.test", ForwardAction::Accept, accept);
        assert_eq!(taken.unwrap_err().code, RefusalCode::NotYetRinging);
        let cancel = hostile_cancel(&world, &to_hostile.body, &format!("cancel-{round}"));
        let taken = world.send_now(HOSTILE, "a.test", ForwardAction::Cancel, cancel);
        assert_eq!(taken.unwrap_err().code, RefusalCode::NotYetRinging);
        let after = world.tables("a.test");
        assert_eq!(after.calls, before.calls, "{round}: the call is untouched");
        assert!(world.pushes(&alice).is_empty(), "{round}");
    }

    // Bob answers: the honest member's call goes through.
    let ring = world.ring(&bob, &session).unwrap();
    let accept = world.accept(&bob, &ring);
    world.deliver_all();
    assert!(world.answer(accept).unwrap().is_ok());
    assert!(world.answer(initiate).unwrap().is_ok());
    let call = record(&world, "a.test", &session);
    assert_eq!(
        (call.state, call.answered_by.as_deref()),
        (CallState::Answered, Some("provider:b.test"))
    );
    let cancel = hostile_cancel(&world, &to_hostile.body, "cancel-answered");
    let taken = world.send_now(HOSTILE, "a.test", ForwardAction::Cancel, cancel);
    assert_eq!(taken.unwrap_err().code, RefusalCode::AlreadyAnswered);
    assert_eq!(
        record(&world, "a.test", &session).state,
        CallState::Answered
    );
}

#[test]
fn a_cancel_from_a_member_that_rang_ends_only_its_own_legs() {
    let mut world = world();
    let at_b = world.add_user("b.test", BOB, &["bob-b"]).remove(0);
    let at_c = world.add_user("c.test", BOB, &["bob-c"]).remove(0);
    let (alice, session, initiate) = alice_calls_bob(&mut world);
    world.deliver_all();
    assert_eq!(
        world
            .answer(initiate)
            .unwrap()
            .unwrap()
            .int("rung")
            .unwrap(),
        2
    );

    // Bob's device at C stops ringing (its user cancelled there): C's Cancel Forward.
    let ring_c = world.ring(&at_c, &session).unwrap();
    let cancelled = world.cancel(&at_c, &session, ALICE, &ring_c.state);
    world.deliver_all();
    assert!(world.answer(cancelled).unwrap().is_ok());
    let call = record(&world, "a.test", &session);
    assert_eq!(
        call.state,
        CallState::Ringing,
        "B still rings: C ended its own legs only"
    );
    assert!(
        !world
            .pushes(&alice)
            .iter()
            .any(|p| matches!(p, Push::Cancel(_))),
        "Alice is not told the call ended"
    );
    assert!(world.ring(&at_b, &session).is_some());
    let ring_b = world.ring(&at_b, &session).unwrap();
    let accept = world.accept(&at_b, &ring_b);
    world.deliver_all();
    assert!(world.answer(accept).unwrap().is_ok());
    assert_eq!(
        record(&world, "a.test", &session).answered_by.as_deref(),
        Some("provider:b.test")
    );

    // The last member that rings cancelling does end the call.
    let mut world = self::world();
    let at_b = world.add_user("b.test", BOB, &["bob-b"]).remove(0);
    let (alice, session, _) = alice_calls_bob(&mut world);
    world.deliver_all();
    let ring_b = world.ring(&at_b, &session).unwrap();
    world.cancel(&at_b, &session, ALICE, &ring_b.state);
    world.deliver_all();
    assert_cancelled(&world, "a.test", &session, &alice);
}

/// `provider`'s record of the call is cancelled and `device` was told.
fn assert_cancelled(world: &World, provider: &str, session: &SessionId, device: &Device) {
    assert_eq!(record(world, provider, session).state, CallState::Cancelled);
    assert!(world
        .pushes(device)
        .iter()
        .any(|p| matches!(p, Push::Cancel(_))));
}

/// The only member known to ring cancels; another member's answer to the Initiate was lost, so
/// the originator counted it out, though it rings: the call ends, and that member is told to
/// stop ringing too.
#[test]
fn a_member_whose_answer_was_lost_is_told_when_the_last_ringing_member_cancels() {
    let mut world = world();
    let at_b = world.add_user("b.test", BOB, &["bob-b"]).remove(0);
    let at_c = world.add_user("c.test", BOB, &["bob-c"]).remove(0);
    let (alice, session, _) = alice_calls_bob(&mut world);
    world.route_to("c.test", Fate::LoseAnswer);
    world.deliver_all();
    let ring_b = world.ring(&at_b, &session).unwrap();
    assert!(
        world.ring(&at_c, &session).is_some(),
        "C rings; A does not know it"
    );
    world.cancel(&at_b, &session, ALICE, &ring_b.state);
    world.deliver_all();
    assert_cancelled(&world, "a.test", &session, &alice);
    assert_cancelled(&world, "c.test", &session, &at_c);
}

#[test]
fn an_endpoint_ca_other_than_the_one_the_directory_pins_is_refused() {
    let mut world = world();
    let bob = world.add_user("b.test", BOB, &["bob"]).remove(0);
    world.claim(HOSTILE, BOB);
    let (alice, session, _) = alice_calls_bob(&mut world);
    let to_hostile = world
        .flights()
        .into_iter()
        .find(|f| f.to == HOSTILE)
        .unwrap();
    world.deliver_all();

    // B rang; a forged Accept in B's name cannot be sent by anyone but B (mutual TLS), so the
    // test plays B presenting the hostile member's CA for Bob: refused, nothing changes.
    let before = world.tables("a.test");
    let forged = AcceptForward {
        envelope: envelope(&world, &session, "b-with-h-ca"),
        answering_provider: "b.test".into(),
        origin_state: to_hostile.body.str("origin-state").unwrap().to_string(),
        callee_uri: BOB.into(),
        callee_token: "token-bob".into(),
        callee_blob: b"blob".to_vec(),
        callee_ca: Some(endpoint_ca(HOSTILE)),
    }
    .to_dict();
    let taken = world.send_now("b.test", "a.test", ForwardAction::Accept, forged);
    assert_eq!(taken.unwrap_err().code, RefusalCode::EndpointCaMismatch);
    assert_eq!(world.tables("a.test").calls, before.calls);

    // The hostile member presents B's CA for its own endpoint.
    let accept = hostile_accept(
        &world,
        &to_hostile.body,
        "h-with-b-ca",
        Some(endpoint_ca("b.test")),
    );
    let taken = world.send_now(HOSTILE, "a.test", ForwardAction::Accept, accept);
    assert_eq!(taken.unwrap_err().code, RefusalCode::EndpointCaMismatch);

    // And in an Initiate, for its caller.
    let session_h = SessionId::parse("session-hostile-1").unwrap();
    let initiate = hostile_initiate(
        &world,
        &session_h,
        "tel:+16502531111",
        Some(endpoint_ca("a.test")),
    );
    let taken = world.send_now(HOSTILE, "b.test", ForwardAction::Initiate, initiate);
    assert_eq!(taken.unwrap_err().code, RefusalCode::EndpointCaMismatch);
    assert!(world.ring(&bob, &session_h).is_none());

    // The honest Accept, with B's own CA, goes through, and Alice checks Bob against it.
    let ring = world.ring(&bob, &session).unwrap();
    let accept = world.accept(&bob, &ring);
    world.deliver_all();
    assert!(world.answer(accept).unwrap().is_ok());
    let accepted = world
        .pushes(&alice)
        .into_iter()
        .find_map(|p| match p {
            Push::Accept(a) => Some(a),
            _ => None,
        })
        .unwrap();
    assert_eq!(accepted.peer_ca, Some(endpoint_ca("b.test")));
}

fn hostile_initiate(
    world: &World,
    session: &SessionId,
    caller: &str,
    caller_ca: Option<String>,
) -> Dict {
    let envelope = envelope(world, session, &format!("initiate-{}", session.as_str()));
    let signature = world.attest(
        HOSTILE,
        &Attestation {
            session_id: session.to_string(),
            caller_uri: caller.into(),
            callee_uri: BOB.into(),
            provider_id: HOSTILE.into(),
            timestamp: envelope.timestamp,
            level: Level::Full,
        },
    );
    InitiateForward {
        envelope,
        originating_provider: HOSTILE.into(),
        origin_state: "hostile-origin-state".into(),
        caller_uri: caller.into(),
        caller_token: "hostile-caller-token".into(),
        callee_uri: BOB.into(),
        caller_blob: b"hostile caller blob".to_vec(),
        caller_capabilities: Capabilities::default(),
        caller_ca,
        media: vec![MediaKind::Audio],
        ring_deadline: world.now_ms() + 30_000,
        relay_choice: RelayChoice::CallerProvider,
        attestation: Some((Level::Full, signature)),
    }
    .to_dict()
}

#[test]
fn a_caller_the_sender_may_not_present_is_not_shown_as_verified() {
    let mut world = world();
    let bob = world.add_user("b.test", BOB, &["bob"]).remove(0);
    world.add_user("a.test", ALICE, &["alice"]);
    world.add_user("b.test", "tel:+442079460958", &["bob-colleague"]);
    let own_ca = Some(endpoint_ca(HOSTILE));
    let cases = [
        // Its own caller, in its filter: the full attestation it signed stands.
        ("tel:+16502531111", Some(Level::Full), None),
        // Alice is A's: not in the hostile member's filter.
        (
            ALICE,
            Some(Level::Partial),
            Some("caller-not-in-sender-filter"),
        ),
        // A user of B itself, presented to B by another member.
        ("tel:+442079460958", None, Some("caller-hosted-here")),
    ];
    world.claim(HOSTILE, "tel:+16502531111");
    for (index, (caller, shown, lowered)) in cases.into_iter().enumerate() {
        let session = SessionId::parse(&format!("session-claim-{index}")).unwrap();
        let initiate = hostile_initiate(&world, &session, caller, own_ca.clone());
        let events_before = world.member("b.test").events.lock().unwrap().len();
        let answer = world.send_now(HOSTILE, "b.test", ForwardAction::Initiate, initiate);
        assert_eq!(
            answer.unwrap().int("rung").unwrap(),
            1,
            "{caller}: Bob still rings"
        );
        let ring = world.ring(&bob, &session).unwrap();
        assert_eq!(ring.peer_attestation, shown, "{caller}");
        assert_eq!(ring.peer_ca, own_ca, "{caller}");
        let events = world.member("b.test").events.lock().unwrap().clone();
        let reported: Vec<&'static str> = events[events_before..]
            .iter()
            .filter_map(|e| match e {
                Event::AttestationLowered { peer, reason } if peer == HOSTILE => Some(*reason),
                _ => None,
            })
            .collect();
        assert_eq!(
            reported,
            lowered.into_iter().collect::<Vec<_>>(),
            "{caller}"
        );
    }
}

/// A member cannot make a call ring here longer than this provider's own ring timeout, nor
/// ring with a deadline already passed.
#[test]
fn a_members_ring_deadline_is_cut_to_the_receivers_ring_timeout() {
    use switchyard_calls::testing::RING_TIMEOUT_MS;
    let mut world = world();
    let bob = world.add_user("b.test", BOB, &["bob"]).remove(0);
    world.claim(HOSTILE, "tel:+16502531111");
    let own_ca = Some(endpoint_ca(HOSTILE));
    let cases = [
        ("session-deadline-far", 10 * RING_TIMEOUT_MS, true),
        ("session-deadline-now", 0, false),
    ];
    for (id, ahead, rings) in cases {
        let session = SessionId::parse(id).unwrap();
        let now = world.now_ms();
        let initiate = hostile_initiate(&world, &session, "tel:+16502531111", own_ca.clone())
            .with("ring-deadline", now + ahead);
        let answer = world.send_now(HOSTILE, "b.test", ForwardAction::Initiate, initiate);
        if !rings {
            let refusal = answer.unwrap_err();
            assert_eq!(refusal.code, RefusalCode::InvalidField);
            assert_eq!(refusal.field.as_deref(), Some("ring-deadline"));
            assert!(world.ring(&bob, &session).is_none());
            continue;
        }
        assert_eq!(answer.unwrap().int("rung").unwrap(), 1);
        let ring = world.ring(&bob, &session).unwrap();
        assert_eq!(ring.ring_deadline, now + RING_TIMEOUT_MS);
        // The ring is not delivered after the call stopped ringing (the push TTL is longer).
        assert_eq!(
            world.tables("b.test").push_expiries[&bob.endpoint.id].last(),
            Some(&(now + RING_TIMEOUT_MS))
        );
        assert_eq!(
            record(&world, "b.test", &session).ring_deadline,
            now + RING_TIMEOUT_MS
        );
        world.advance(RING_TIMEOUT_MS);
        assert_eq!(record(&world, "b.test", &session).state, CallState::Timeout);
    }
}

#[test]
fn a_call_whose_hang_up_was_lost_ends_at_the_maximum_call_duration() {
    let mut world = world();
    let bob = world.add_user("b.test", BOB, &["bob"]).remove(0);
    let (alice, session, initiate) = alice_calls_bob(&mut world);
    world.deliver_all();
    let ring = world.ring(&bob, &session).unwrap();
    world.accept(&bob, &ring);
    world.deliver_all();
    let state = world
        .answer(initiate)
        .unwrap()
        .unwrap()
        .str("state")
        .unwrap()
        .to_string();
    // Alice hangs up; the Cancel Forward to B is lost for good.
    world.cancel(&alice, &session, BOB, &state);
    world.settle();
    world.route(0, Fate::Drop);
    world.deliver_all();
    assert_eq!(record(&world, "a.test", &session).state, CallState::Ended);
    assert_eq!(
        record(&world, "b.test", &session).state,
        CallState::Answered,
        "a ghost: B never heard of the hang-up"
    );
    // The maximum duration is reached, not passed, when the sweep ends the call.
    let answered_at = record(&world, "b.test", &session).answered_at.unwrap();
    let swept = world.advance(answered_at + MAX_CALL_DURATION_MS - 1 - world.now_ms());
    assert_eq!(swept.ended_overlong, 0);
    assert_eq!(
        record(&world, "b.test", &session).state,
        CallState::Answered
    );
    assert_eq!(world.advance(1).ended_overlong, 1);
    let ended = record(&world, "b.test", &session);
    assert_eq!(
        (ended.state, ended.reason.as_deref()),
        (CallState::Ended, Some("max-duration"))
    );
    assert!(world.pushes(&bob).iter().any(|p| matches!(
        p,
        Push::Cancel(c) if c.reason == switchyard_protocol::invitation::CancelReason::Ended
    )));
}

#[test]
fn the_maximum_call_duration_ends_both_sides_when_both_still_hold_the_call() {
    let mut world = world();
    let bob = world.add_user("b.test", BOB, &["bob"]).remove(0);
    let (alice, session, _) = alice_calls_bob(&mut world);
    world.deliver_all();
    let ring = world.ring(&bob, &session).unwrap();
    world.accept(&bob, &ring);
    world.deliver_all();
    world.advance(MAX_CALL_DURATION_MS + 1);
    world.deliver_all();
    for provider in ["a.test", "b.test"] {
        assert_eq!(
            record(&world, provider, &session).state,
            CallState::Ended,
            "{provider}"
        );
    }
    for device in [&alice, &bob] {
        let cancels = world
            .pushes(device)
            .into_iter()
            .filter(|p| matches!(p, Push::Cancel(_)))
            .count();
        assert_eq!(cancels, 1, "{}: told once", device.endpoint.id);
    }
}
