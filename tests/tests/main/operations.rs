//! Operations: several replicas of one provider on one database, and graceful shutdown.

use std::time::Duration;

use switchyard_endpoint::client::{ClientError, PushMode};
use switchyard_protocol::dict::Encoding;
use switchyard_provider::Provider;
use switchyard_tests::*;

const ALICE: &str = "tel:+16502530000";
const BOB: &str = "mailto:bob@example.com";

/// Two replicas share the database and the key files; the caller talks to one, the callee to
/// the other, and every message crosses between them through the database alone.
#[tokio::test]
async fn replicas_sharing_a_database_carry_a_call_between_them() -> anyhow::Result<()> {
    let (config, dir) = test_config().await?;
    let second = Provider::start(config.clone()).await?;
    let h = Harness::start_with(config, dir).await?;
    let alice_id = h.add_user("Alice", &[ALICE]).await?;
    let bob_id = h.add_user("Bob", &[BOB]).await?;
    let alice = h.endpoint(&alice_id, ALICE, None, Encoding::Plist).await?;
    let mut bob_identity = h
        .endpoint(&bob_id, BOB, None, Encoding::Plist)
        .await?
        .identity;
    bob_identity.provider = format!("https://{}", second.endpoint_addr);
    let bob = switchyard_endpoint::client::EndpointClient::new(bob_identity, Encoding::Plist)?;

    let mut alice_push = alice.push_channel(PushMode::WebSocket).await?;
    let mut bob_push = bob.push_channel(PushMode::LongPoll).await?;
    let sid = session_id();
    alice.initiate(&sid, BOB, b"offer", &["audio"]).await?;
    let ring = expect_push(&mut bob_push, "initiate").await?;
    bob.accept(&ring, b"answer").await?;
    let accepted = expect_push(&mut alice_push, "accept").await?;
    assert_eq!(accepted.data("peer-blob")?, b"answer");
    alice
        .cancel(&sid, ALICE, BOB, accepted.str("state")?)
        .await?;
    assert_eq!(
        expect_push(&mut bob_push, "cancel").await?.str("reason")?,
        "ended"
    );

    // A revocation made through one replica closes the channel held by the other.
    let mut bob_ws = bob.push_channel(PushMode::WebSocket).await?;
    let (status, _) = h
        .admin_call(
            reqwest::Method::POST,
            &format!("/admin/v1/endpoints/{}/revoke", bob.identity.endpoint_id),
            None,
        )
        .await?;
    assert_eq!(status, 200);
    // The long-poll never acknowledged the last Cancel, so the WebSocket may deliver it first.
    let closed = loop {
        match bob_ws.next(WAIT).await {
            Ok(Some(push)) => assert_eq!(push.str("action")?, "cancel"),
            other => break other,
        }
    };
    assert!(
        matches!(closed, Err(ClientError::PushClosed(_))),
        "{closed:?}"
    );
    second.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn shutdown_closes_push_channels_and_finishes() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let alice_id = h.add_user("Alice", &[ALICE]).await?;
    let alice = h.endpoint(&alice_id, ALICE, None, Encoding::Plist).await?;
    let mut ws = alice.push_channel(PushMode::WebSocket).await?;
    let mut poll = alice.push_channel(PushMode::LongPoll).await?;
    // A long-poll in flight when shutdown starts is answered (empty), not cut off.
    let in_flight = tokio::spawn(async move { poll.next(Duration::from_secs(20)).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    h.provider.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown waited for idle channels"
    );
    match ws.next(WAIT).await {
        Err(ClientError::PushClosed(reason)) => assert!(reason.starts_with("1001"), "{reason}"),
        other => panic!("expected the WebSocket to close with 1001, got {other:?}"),
    }
    let answered = in_flight.await?;
    assert!(
        !matches!(answered, Ok(Some(_))),
        "no push was queued: {answered:?}"
    );
    Ok(())
}
