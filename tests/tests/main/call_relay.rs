//! Which relay serves a call: the caller's provider's (the default), the callee's provider's, or
//! the federation-wide relay the discovery dictionary names. Endpoints that offer only relayed
//! candidates go through the chosen relay, and only through it: both allocations are counted
//! there and nowhere else. With the callee's provider's relay, the caller learns the relay from
//! the Accept Push, allocates during the call and sends its new blob in an Update.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use switchyard_endpoint::client::{ClientError, PushMode};
use switchyard_endpoint::media::{self as endpoint_media, MediaOptions};
use switchyard_media::blob::CandidateKind;
use switchyard_media::session::MediaEvent;
use switchyard_protocol::capabilities::MediaKind;
use switchyard_protocol::dict::{Dict, Encoding};
use switchyard_protocol::invitation::RelayChoice;
use switchyard_tests::federation::{AliceAndBob, ProviderSpec, TestFederation, ALICE, BOB};
use switchyard_tests::*;

const PROVIDERS: [&str; 3] = ["a.test", "b.test", "c.test"];

/// Alice at A (whose calls use `choice`), Bob at B, and C, named the federation-wide relay.
async fn federation(choice: RelayChoice) -> anyhow::Result<AliceAndBob> {
    let mut fed = TestFederation::start(&[
        ProviderSpec::plist("a.test").calls_use(choice),
        ProviderSpec::json("b.test"),
        ProviderSpec::plist("c.test"),
    ])
    .await?;
    fed.federation_relay = Some("c.test".into());
    fed.publish(&PROVIDERS).await?;
    AliceAndBob::join(fed, Encoding::Json, PushMode::WebSocket).await
}

fn relay_only() -> MediaOptions {
    MediaOptions {
        address: IpAddr::from([127, 0, 0, 1]),
        relay_only: true,
        mute_video_after: None,
        http_relay: None,
    }
}

fn allocations(fed: &TestFederation, id: &str) -> u32 {
    fed.provider(id)
        .provider
        .relay()
        .expect("every test provider runs a relay")
        .state
        .allocation_count(None)
}

/// A relay-only call from Alice to Bob under `choice`, which must go through `expected`'s relay.
async fn call_through(choice: RelayChoice, expected: &str) -> anyhow::Result<()> {
    let mut f = federation(choice).await?;
    let kinds = vec![MediaKind::Audio, MediaKind::Video];
    let (caller_media, caller_relay) =
        endpoint_media::prepare(&f.alice, ALICE, kinds.clone(), &relay_only(), None).await?;
    let deferred = choice == RelayChoice::CalleeProvider;
    assert_eq!(
        caller_relay.as_deref(),
        (!deferred).then_some(expected),
        "the caller's relay before the answer"
    );
    assert_eq!(caller_media.blob().candidates.is_empty(), deferred);

    let sid = session_id();
    f.alice
        .initiate(
            &sid,
            BOB,
            &caller_media.blob().to_bytes(),
            &["audio", "video"],
        )
        .await?;
    let ring = expect_push(&mut f.bob_push, "initiate").await?;
    assert_eq!(ring.str("relay-provider")?, expected);
    let (callee_media, callee_relay) = endpoint_media::prepare(
        &f.bob,
        BOB,
        kinds,
        &relay_only(),
        ring.opt_str("relay-provider")?,
    )
    .await?;
    assert_eq!(callee_relay.as_deref(), Some(expected));
    f.bob.accept(&ring, &callee_media.blob().to_bytes()).await?;
    let accepted = expect_push(&mut f.alice_push, "accept").await?;
    assert_eq!(accepted.str("relay-provider")?, expected);

    let mut caller = endpoint_media::start(caller_media, true, &accepted)?;
    let mut callee = endpoint_media::start(callee_media, false, &ring)?;
    let update = endpoint_media::join_call_relay(
        &mut caller,
        &f.alice,
        &accepted,
        caller_relay.as_deref(),
        &relay_only(),
    )
    .await?;
    assert_eq!(
        update.is_some(),
        deferred,
        "an Update only for a late relay"
    );
    if let Some(blob) = update {
        assert_eq!(blob.candidates.len(), 1, "{blob:?}");
        assert_eq!(blob.candidates[0].kind, CandidateKind::Relayed);
        f.alice
            .update(&sid, ALICE, BOB, accepted.str("state")?, &blob.to_bytes())
            .await?;
        let pushed = expect_push(&mut f.bob_push, "update").await?;
        assert_eq!(endpoint_media::apply_update(&mut callee, &pushed)?, 1);
    }

    for call in [&mut caller, &mut callee] {
        let (local, remote) = first_path(call).await;
        assert!(
            local == CandidateKind::Relayed || remote == CandidateKind::Relayed,
            "{local:?} -> {remote:?}"
        );
        wait_for(call, "SIP", |e| matches!(e, MediaEvent::Negotiated { .. })).await;
    }
    assert_two_seconds_of_media(&caller, &callee, &format!("{choice:?}")).await;
    for id in PROVIDERS {
        let want = if id == expected { 2 } else { 0 };
        assert_eq!(
            allocations(&f.fed, id),
            want,
            "allocations at {id}'s relay under {choice:?}"
        );
    }

    caller.hang_up();
    wait_for(&mut callee, "the hang-up", |e| {
        *e == MediaEvent::RemoteHangUp
    })
    .await;
    caller.close().await;
    callee.close().await;
    f.alice
        .cancel(&sid, ALICE, BOB, accepted.str("state")?)
        .await?;
    expect_push(&mut f.bob_push, "cancel").await?;
    f.fed.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn calls_use_the_relay_of_the_callers_provider_by_default() -> anyhow::Result<()> {
    call_through(RelayChoice::CallerProvider, "a.test").await
}

#[tokio::test]
async fn calls_can_use_the_relay_of_the_callees_provider() -> anyhow::Result<()> {
    call_through(RelayChoice::CalleeProvider, "b.test").await
}

#[tokio::test]
async fn calls_can_use_the_federation_wide_relay() -> anyhow::Result<()> {
    call_through(RelayChoice::Federation, "c.test").await
}

fn refused(result: Result<impl std::fmt::Debug, ClientError>) -> (String, String) {
    match result {
        Err(ClientError::Refused { code, message, .. }) => (code, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Credentials for a relay that is not a member's are refused with the reason; a member's
/// relay learns of a principal's provider leaving and drops its allocations; the federation
/// route checks what it is given.
#[tokio::test]
async fn relay_credentials_refuse_bad_requests_and_follow_membership() -> anyhow::Result<()> {
    let mut f = federation(RelayChoice::CallerProvider).await?;
    let (code, message) = refused(f.alice.relay_credentials(Some("nobody.test")).await);
    assert_eq!(code, "invalid-field");
    assert!(message.contains("not a member"), "{message}");

    // Bob (at B) holds an allocation at A's relay, as a callee of Alice's calls would.
    let grant = f
        .bob
        .relay_credentials(Some("a.test"))
        .await?
        .expect("A runs a relay");
    assert_eq!(grant.provider, "a.test");
    assert!(grant
        .server
        .username
        .ends_with(&format!("b.test/{}", f.bob.identity.endpoint_id)));
    let (bob_media, _) = endpoint_media::prepare(
        &f.bob,
        BOB,
        vec![MediaKind::Audio],
        &relay_only(),
        Some("a.test"),
    )
    .await?;
    assert!(bob_media.relayed_address().is_some());
    assert_eq!(allocations(&f.fed, "a.test"), 1);

    // B leaves the federation: A's relay closes B's endpoints' allocations.
    f.fed.publish(&["a.test", "c.test"]).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while allocations(&f.fed, "a.test") > 0 {
        assert!(
            Instant::now() < deadline,
            "B's allocation outlived its membership"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, message) = refused(f.bob.relay_credentials(Some("a.test")).await);
    assert_eq!(code, "relay-unavailable", "{message}");
    assert!(message.contains("not-a-member"), "{message}");

    // The federation route itself: the endpoint id is checked before anything is issued.
    let client = f.fed.peer_client_of("c.test")?;
    let url = format!(
        "{}/federation/v1/relay-credentials",
        f.fed.federation_url("a.test")
    );
    for (body, status) in [
        (Dict::new().with("endpoint", "../x"), 400),
        (Dict::new(), 400),
        (Dict::new().with("endpoint", "ep-1"), 200),
    ] {
        let response = client
            .post(&url)
            .header("content-type", Encoding::Plist.content_type())
            .body(body.encode(Encoding::Plist))
            .send()
            .await?;
        assert_eq!(response.status().as_u16(), status, "{body:?}");
    }
    drop(bob_media);
    f.fed.shutdown().await;
    Ok(())
}
