//! The invitation protocol within one provider, end to end over real TLS, with pushes over the
//! WebSocket and over long-poll.

use std::time::Duration;

use switchyard_endpoint::client::PushMode;
use switchyard_protocol::capabilities::Capabilities;
use switchyard_protocol::dict::Encoding;
use switchyard_tests::*;

const ALICE: &str = "tel:+16502530000";
const BOB: &str = "mailto:bob@example.com";

async fn accept_flow(mode: PushMode, encoding: Encoding) -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let alice_id = h
        .add_user("Alice", &[ALICE, "mailto:alice@example.com"])
        .await?;
    let bob_id = h.add_user("Bob", &[BOB]).await?;
    let alice = h.endpoint(&alice_id, ALICE, None, encoding).await?;
    let bob1 = h.endpoint(&bob_id, BOB, None, encoding).await?;
    let bob2 = h
        .endpoint(&bob_id, "mailto:bob@EXAMPLE.com", None, encoding)
        .await?;
    let mut alice_push = alice.push_channel(mode).await?;
    let mut bob1_push = bob1.push_channel(mode).await?;
    let mut bob2_push = bob2.push_channel(mode).await?;

    let sid = session_id();
    // The callee's URI in another spelling reaches the same user.
    let answer = alice
        .initiate(
            &sid,
            "mailto:bob@Example.COM",
            b"alice-offer",
            &["audio", "video"],
        )
        .await?;
    assert_eq!(answer.int("rung")?, 2);

    let ring1 = expect_push(&mut bob1_push, "initiate").await?;
    let ring2 = expect_push(&mut bob2_push, "initiate").await?;
    for ring in [&ring1, &ring2] {
        assert_eq!(ring.str("session-id")?, sid);
        assert_eq!(ring.str("peer-uri")?, ALICE);
        assert_eq!(ring.str("peer-token")?, alice.identity.push_token);
        assert_eq!(ring.data("peer-blob")?, b"alice-offer");
        assert_eq!(ring.str("self-uri")?, BOB);
        assert!(ring.dict("peer-capabilities")?.bool("video")?);
    }
    assert_eq!(ring1.str("self-token")?, bob1.identity.push_token);

    bob1.accept(&ring1, b"bob-answer").await?;
    let accepted = expect_push(&mut alice_push, "accept").await?;
    assert_eq!(accepted.str("session-id")?, sid);
    assert_eq!(accepted.data("peer-blob")?, b"bob-answer");
    assert_eq!(accepted.str("peer-token")?, bob1.identity.push_token);
    let lost = expect_push(&mut bob2_push, "cancel").await?;
    assert_eq!(lost.str("reason")?, "answered-elsewhere");

    let late = bob2.accept(&ring2, b"too-late").await.unwrap_err();
    assert_eq!(late.code(), Some("already-answered"), "{late}");
    assert_eq!(late.status(), Some(409));

    let record = h.call_record(&sid).await?;
    assert_eq!(record["state"], "answered");
    assert_eq!(record["from"], ALICE);
    assert_eq!(record["to"], BOB);
    assert_eq!(record["answered_by"], bob1.identity.endpoint_id.as_str());
    assert_eq!(record["providers"][0], "test.switchyard.invalid");
    assert!(record["answered_at"].as_i64().unwrap() >= record["initiated_at"].as_i64().unwrap());

    // The caller hangs up with the state from the Accept Push.
    alice
        .cancel(&sid, ALICE, BOB, accepted.str("state")?)
        .await?;
    let ended = expect_push(&mut bob1_push, "cancel").await?;
    assert_eq!(ended.str("reason")?, "ended");
    let record = h.call_record(&sid).await?;
    assert_eq!(record["state"], "ended");
    assert!(record["ended_at"].is_i64());
    expect_silence(&mut alice_push).await?;
    h.provider.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn initiate_accept_over_websocket() -> anyhow::Result<()> {
    accept_flow(PushMode::WebSocket, Encoding::Plist).await
}

#[tokio::test]
async fn initiate_accept_over_long_poll() -> anyhow::Result<()> {
    accept_flow(PushMode::LongPoll, Encoding::Plist).await
}

#[tokio::test]
async fn initiate_accept_in_json() -> anyhow::Result<()> {
    accept_flow(PushMode::WebSocket, Encoding::Json).await
}

#[tokio::test]
async fn ring_timeout_cancels_both_sides() -> anyhow::Result<()> {
    let (mut config, dir) = test_config().await?;
    config.invitation.ring_timeout_seconds = 1;
    let h = Harness::start_with(config, dir).await?;
    let alice_id = h.add_user("Alice", &[ALICE]).await?;
    let bob_id = h.add_user("Bob", &[BOB]).await?;
    let alice = h.endpoint(&alice_id, ALICE, None, Encoding::Plist).await?;
    let bob = h.endpoint(&bob_id, BOB, None, Encoding::Plist).await?;
    for mode in MODES {
        let mut alice_push = alice.push_channel(mode).await?;
        let mut bob_push = bob.push_channel(mode).await?;
        let sid = session_id();
        alice.initiate(&sid, BOB, b"", &["audio"]).await?;
        let ring = expect_push(&mut bob_push, "initiate").await?;
        assert_eq!(
            expect_push(&mut alice_push, "cancel")
                .await?
                .str("reason")?,
            "timeout"
        );
        assert_eq!(
            expect_push(&mut bob_push, "cancel").await?.str("reason")?,
            "timeout"
        );
        assert_eq!(h.call_record(&sid).await?["state"], "timeout");
        let late = bob.accept(&ring, b"").await.unwrap_err();
        assert_eq!(late.code(), Some("call-ended"));
        alice_push.ack().await?;
        bob_push.ack().await?;
    }
    Ok(())
}

#[tokio::test]
async fn caller_hears_reject_only_when_every_endpoint_rejected() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let alice_id = h.add_user("Alice", &[ALICE]).await?;
    let bob_id = h.add_user("Bob", &[BOB]).await?;
    let alice = h.endpoint(&alice_id, ALICE, None, Encoding::Plist).await?;
    let bob1 = h.endpoint(&bob_id, BOB, None, Encoding::Plist).await?;
    let bob2 = h.endpoint(&bob_id, BOB, None, Encoding::Plist).await?;
    let mut alice_push = alice.push_channel(PushMode::LongPoll).await?;
    let mut bob1_push = bob1.push_channel(PushMode::WebSocket).await?;
    let mut bob2_push = bob2.push_channel(PushMode::LongPoll).await?;
    let sid = session_id();
    alice.initiate(&sid, BOB, b"", &["audio"]).await?;
    let ring1 = expect_push(&mut bob1_push, "initiate").await?;
    let ring2 = expect_push(&mut bob2_push, "initiate").await?;

    let first = bob1.reject(&ring1, "busy", None).await?;
    assert_eq!(first.int("remaining")?, 1);
    // Repeating a Reject counts once.
    assert_eq!(
        bob1.reject(&ring1, "busy", None).await?.int("remaining")?,
        1
    );
    expect_silence(&mut alice_push).await?;
    bob2.reject(&ring2, "declined", Some("in a meeting"))
        .await?;
    let rejected = expect_push(&mut alice_push, "reject").await?;
    assert_eq!(rejected.str("reason")?, "declined");
    assert_eq!(rejected.str("reason-text")?, "in a meeting");
    let record = h.call_record(&sid).await?;
    assert_eq!(record["state"], "rejected");
    assert_eq!(record["outcome_reason"], "declined");
    Ok(())
}

#[tokio::test]
async fn either_party_may_cancel_while_ringing() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let alice_id = h.add_user("Alice", &[ALICE]).await?;
    let bob_id = h.add_user("Bob", &[BOB]).await?;
    let alice = h.endpoint(&alice_id, ALICE, None, Encoding::Plist).await?;
    let bob1 = h.endpoint(&bob_id, BOB, None, Encoding::Plist).await?;
    let bob2 = h.endpoint(&bob_id, BOB, None, Encoding::Plist).await?;
    let mut alice_push = alice.push_channel(PushMode::WebSocket).await?;
    let mut bob1_push = bob1.push_channel(PushMode::WebSocket).await?;
    let mut bob2_push = bob2.push_channel(PushMode::WebSocket).await?;

    // The caller cancels: every rung endpoint hears it.
    let sid = session_id();
    let started = alice.initiate(&sid, BOB, b"", &["audio"]).await?;
    expect_push(&mut bob1_push, "initiate").await?;
    expect_push(&mut bob2_push, "initiate").await?;
    alice
        .cancel(&sid, ALICE, BOB, started.str("state")?)
        .await?;
    assert_eq!(
        expect_push(&mut bob1_push, "cancel").await?.str("reason")?,
        "cancelled"
    );
    assert_eq!(
        expect_push(&mut bob2_push, "cancel").await?.str("reason")?,
        "cancelled"
    );
    assert_eq!(h.call_record(&sid).await?["state"], "cancelled");
    let again = alice
        .cancel(&sid, ALICE, BOB, started.str("state")?)
        .await
        .unwrap_err();
    assert_eq!(again.status(), Some(410));

    // A callee device cancels: the caller and the other device hear it.
    let sid = session_id();
    alice.initiate(&sid, BOB, b"", &["audio"]).await?;
    let ring = expect_push(&mut bob1_push, "initiate").await?;
    expect_push(&mut bob2_push, "initiate").await?;
    bob1.cancel(&sid, BOB, ALICE, ring.str("state")?).await?;
    assert_eq!(
        expect_push(&mut alice_push, "cancel")
            .await?
            .str("reason")?,
        "cancelled"
    );
    assert_eq!(
        expect_push(&mut bob2_push, "cancel").await?.str("reason")?,
        "cancelled"
    );
    expect_silence(&mut bob1_push).await?;
    Ok(())
}

#[tokio::test]
async fn callee_hangs_up_after_answering() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let alice_id = h.add_user("Alice", &[ALICE]).await?;
    let bob_id = h.add_user("Bob", &[BOB]).await?;
    let alice = h.endpoint(&alice_id, ALICE, None, Encoding::Plist).await?;
    let bob = h.endpoint(&bob_id, BOB, None, Encoding::Plist).await?;
    let mut alice_push = alice.push_channel(PushMode::LongPoll).await?;
    let mut bob_push = bob.push_channel(PushMode::LongPoll).await?;
    let sid = session_id();
    alice.initiate(&sid, BOB, b"", &["audio"]).await?;
    let ring = expect_push(&mut bob_push, "initiate").await?;
    let accepted = bob.accept(&ring, b"").await?;
    expect_push(&mut alice_push, "accept").await?;
    bob.cancel(&sid, BOB, ALICE, accepted.str("state")?).await?;
    assert_eq!(
        expect_push(&mut alice_push, "cancel")
            .await?
            .str("reason")?,
        "ended"
    );
    assert_eq!(h.call_record(&sid).await?["state"], "ended");
    Ok(())
}

#[tokio::test]
async fn endpoints_lacking_capabilities_are_not_rung() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let alice_id = h.add_user("Alice", &[ALICE]).await?;
    let bob_id = h.add_user("Bob", &[BOB]).await?;
    let alice = h.endpoint(&alice_id, ALICE, None, Encoding::Plist).await?;
    let audio_only = Capabilities {
        video: false,
        ..Capabilities::default()
    };
    let bob_phone = h
        .endpoint(&bob_id, BOB, Some(audio_only), Encoding::Plist)
        .await?;
    let mut alice_push = alice.push_channel(PushMode::WebSocket).await?;
    let mut phone_push = bob_phone.push_channel(PushMode::WebSocket).await?;

    let sid = session_id();
    let answer = alice.initiate(&sid, BOB, b"", &["audio", "video"]).await?;
    assert_eq!(answer.int("rung")?, 0);
    let refused = expect_push(&mut alice_push, "reject").await?;
    assert_eq!(refused.str("reason")?, "unsupported-media");
    expect_silence(&mut phone_push).await?;
    assert_eq!(
        h.call_record(&sid).await?["outcome_reason"],
        "unsupported-media"
    );

    let bob_tablet = h.endpoint(&bob_id, BOB, None, Encoding::Plist).await?;
    let mut tablet_push = bob_tablet.push_channel(PushMode::WebSocket).await?;
    let sid = session_id();
    assert_eq!(
        alice
            .initiate(&sid, BOB, b"", &["audio", "video"])
            .await?
            .int("rung")?,
        1
    );
    let ring = expect_push(&mut tablet_push, "initiate").await?;
    assert_eq!(ring.string_array("media")?, ["audio", "video"]);
    expect_silence(&mut phone_push).await?;
    // Audio-only calls ring both.
    assert_eq!(
        alice
            .initiate(&session_id(), BOB, b"", &["audio"])
            .await?
            .int("rung")?,
        2
    );
    Ok(())
}

#[tokio::test]
async fn pushes_wait_for_an_offline_endpoint_until_their_ttl() -> anyhow::Result<()> {
    let (mut config, dir) = test_config().await?;
    config.push.ttl_seconds = 2;
    let h = Harness::start_with(config, dir).await?;
    let alice_id = h.add_user("Alice", &[ALICE]).await?;
    let bob_id = h.add_user("Bob", &[BOB]).await?;
    let alice = h.endpoint(&alice_id, ALICE, None, Encoding::Plist).await?;
    let bob = h.endpoint(&bob_id, BOB, None, Encoding::Plist).await?;

    let queued = session_id();
    alice.initiate(&queued, BOB, b"", &["audio"]).await?;
    // Bob connects later and still gets the invitation; a dropped channel gets it again.
    {
        let mut first = bob.push_channel(PushMode::LongPoll).await?;
        assert_eq!(
            expect_push(&mut first, "initiate")
                .await?
                .str("session-id")?,
            queued
        );
    }
    let mut bob_push = bob.push_channel(PushMode::WebSocket).await?;
    assert_eq!(
        expect_push(&mut bob_push, "initiate")
            .await?
            .str("session-id")?,
        queued
    );
    drop(bob_push);

    let expired = session_id();
    alice.initiate(&expired, BOB, b"", &["audio"]).await?;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut bob_push = bob.push_channel(PushMode::WebSocket).await?;
    while let Some(push) = bob_push.next(Duration::from_millis(800)).await? {
        assert_ne!(
            push.str("session-id")?,
            expired,
            "an expired push was delivered"
        );
    }
    Ok(())
}

#[tokio::test]
async fn pushes_arrive_in_order_with_increasing_ids() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let alice_id = h.add_user("Alice", &[ALICE]).await?;
    let bob_id = h.add_user("Bob", &[BOB]).await?;
    let alice = h.endpoint(&alice_id, ALICE, None, Encoding::Plist).await?;
    let bob = h.endpoint(&bob_id, BOB, None, Encoding::Plist).await?;
    let sessions: Vec<String> = (0..5).map(|_| session_id()).collect();
    for sid in &sessions {
        alice.initiate(sid, BOB, b"", &["audio"]).await?;
    }
    // Long-poll first: it acknowledges only with its next poll, so the WebSocket sees them all again.
    for mode in [PushMode::LongPoll, PushMode::WebSocket] {
        let mut channel = bob.push_channel(mode).await?;
        let mut last = 0;
        for sid in &sessions {
            let push = expect_push(&mut channel, "initiate").await?;
            assert_eq!(push.str("session-id")?, sid);
            let id = push.int("push-id")?;
            assert!(id > last, "push ids must increase");
            last = id;
        }
    }
    Ok(())
}

/// A read of the push channel given up at its await, as in a `select!` beside a faster timer,
/// sends no request again and loses no push: what it waited for carries over to the next read.
/// Fifty long-polls in two seconds would meet the rate limit set here.
#[tokio::test]
async fn a_push_channel_read_given_up_again_and_again_loses_nothing() -> anyhow::Result<()> {
    let h = Harness::start_with_endpoint_rate(5, 10).await?;
    let alice_id = h.add_user("Alice", &[ALICE]).await?;
    let bob_id = h.add_user("Bob", &[BOB]).await?;
    let alice = h.endpoint(&alice_id, ALICE, None, Encoding::Plist).await?;
    let bob = h.endpoint(&bob_id, BOB, None, Encoding::Plist).await?;
    let read_briefly = Duration::from_millis(40);
    for mode in MODES {
        let mut channel = bob.push_channel(mode).await?;
        for _ in 0..50 {
            let read = tokio::time::timeout(read_briefly, channel.next(WAIT)).await;
            assert!(read.is_err(), "{mode:?}: nothing was sent, got {read:?}");
        }
        let sid = session_id();
        alice.initiate(&sid, BOB, b"", &["audio"]).await?;
        let deadline = tokio::time::Instant::now() + WAIT;
        let ring = loop {
            assert!(tokio::time::Instant::now() < deadline, "{mode:?}: no push");
            if let Ok(read) = tokio::time::timeout(read_briefly, channel.next(WAIT)).await {
                break read?.expect("a push, not the end of the wait");
            }
        };
        assert_eq!(ring.str("action")?, "initiate", "{mode:?}");
        assert_eq!(ring.str("session-id")?, sid, "{mode:?}");
        // So the next channel does not see this push again.
        channel.ack().await?;
    }
    Ok(())
}

#[tokio::test]
async fn a_push_for_an_open_websocket_goes_from_memory_after_what_was_queued() -> anyhow::Result<()>
{
    let h = Harness::start().await?;
    let alice_id = h.add_user("Alice", &[ALICE]).await?;
    let bob_id = h.add_user("Bob", &[BOB]).await?;
    let alice = h.endpoint(&alice_id, ALICE, None, Encoding::Plist).await?;
    let bob = h.endpoint(&bob_id, BOB, None, Encoding::Json).await?;
    let queued = session_id();
    alice.initiate(&queued, BOB, b"", &["audio"]).await?;

    let mut bob_push = bob.push_channel(PushMode::WebSocket).await?;
    let first = expect_push(&mut bob_push, "initiate").await?;
    assert_eq!(first.str("session-id")?, queued);
    assert!(
        first.opt_int("push-id")?.is_some(),
        "made before the channel: queued"
    );

    // The channel has read the queue, so its inbox is open: the next push skips the queue.
    let live = session_id();
    alice.initiate(&live, BOB, b"", &["audio"]).await?;
    let second = expect_push(&mut bob_push, "initiate").await?;
    assert_eq!(second.str("session-id")?, live);
    assert_eq!(second.opt_int("push-id")?, None, "from memory: no id");
    // The recorder is the test process's, shared by every provider in it: only the series is
    // checked, not its count.
    let metrics = h.metrics().await?;
    assert!(
        metrics.contains(r#"switchyard_pushes_direct_total{to="channel"}"#),
        "{metrics}"
    );

    // Nothing of it is left in the queue: the first push was acknowledged, the second never
    // stored.
    drop(bob_push);
    let mut poll = bob.push_channel(PushMode::LongPoll).await?;
    expect_silence(&mut poll).await?;
    Ok(())
}

#[tokio::test]
async fn update_carries_a_new_blob_to_the_other_party() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let alice_id = h.add_user("Alice", &[ALICE]).await?;
    let bob_id = h.add_user("Bob", &[BOB]).await?;
    let alice = h.endpoint(&alice_id, ALICE, None, Encoding::Plist).await?;
    let bob1 = h.endpoint(&bob_id, BOB, None, Encoding::Json).await?;
    let bob2 = h.endpoint(&bob_id, BOB, None, Encoding::Plist).await?;
    let mut alice_push = alice.push_channel(PushMode::WebSocket).await?;
    let mut bob1_push = bob1.push_channel(PushMode::WebSocket).await?;
    let mut bob2_push = bob2.push_channel(PushMode::LongPoll).await?;

    let sid = session_id();
    let answer = alice.initiate(&sid, BOB, b"offer", &["audio"]).await?;
    let state = answer.str("state")?.to_string();
    let ring1 = expect_push(&mut bob1_push, "initiate").await?;
    let ring2 = expect_push(&mut bob2_push, "initiate").await?;

    // While it rings, the caller's new blob reaches every rung endpoint.
    alice
        .update(&sid, ALICE, BOB, &state, b"relay-learned")
        .await?;
    for channel in [&mut bob1_push, &mut bob2_push] {
        let update = expect_push(channel, "update").await?;
        assert_eq!(update.data("peer-blob")?, b"relay-learned");
        assert_eq!(update.str("peer-uri")?, ALICE);
        assert_eq!(update.str("self-uri")?, BOB);
    }
    // A callee that has not answered may not update.
    let early = bob2
        .update(&sid, BOB, ALICE, ring2.str("state")?, b"x")
        .await
        .unwrap_err();
    assert!(early.to_string().contains("not-answered"), "{early}");

    bob1.accept(&ring1, b"answer").await?;
    expect_push(&mut alice_push, "accept").await?;
    expect_push(&mut bob2_push, "cancel").await?;

    // After the answer: the caller's Update reaches the answering endpoint only, and back.
    alice.update(&sid, ALICE, BOB, &state, b"new-path").await?;
    let update = expect_push(&mut bob1_push, "update").await?;
    assert_eq!(update.data("peer-blob")?, b"new-path");
    expect_silence(&mut bob2_push).await?;
    bob1.update(&sid, BOB, ALICE, ring1.str("state")?, b"callee-path")
        .await?;
    let update = expect_push(&mut alice_push, "update").await?;
    assert_eq!(update.data("peer-blob")?, b"callee-path");
    assert_eq!(update.str("peer-token")?, bob1.identity.push_token);

    // Bad Updates change nothing.
    let empty = alice
        .update(&sid, ALICE, BOB, &state, b"")
        .await
        .unwrap_err();
    assert!(empty.to_string().contains("self-blob"), "{empty}");
    let wrong_peer = alice
        .update(&sid, ALICE, "mailto:carol@example.com", &state, b"x")
        .await
        .unwrap_err();
    assert!(wrong_peer.to_string().contains("peer-uri"), "{wrong_peer}");
    expect_silence(&mut bob1_push).await?;

    alice.cancel(&sid, ALICE, BOB, &state).await?;
    expect_push(&mut bob1_push, "cancel").await?;
    let ended = alice
        .update(&sid, ALICE, BOB, &state, b"late")
        .await
        .unwrap_err();
    assert!(ended.to_string().contains("call-ended"), "{ended}");
    h.provider.shutdown().await;
    Ok(())
}
