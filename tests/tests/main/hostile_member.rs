//! A hostile member, legitimately in the discovery dictionary, over the federation's real mutual
//! TLS: it hosts a copy of another member's user to get the Initiate, then Accepts and Cancels a
//! call it never rang for, presents endpoint CAs the dictionary does not pin, and claims callers
//! it does not host. Each is refused or shown for what it is, and the honest call goes through.
//! (The same lies, interleaved every way, in `calls/tests/hostile.rs`.)

use switchyard_endpoint::client::PushMode;
use switchyard_protocol::attestation::{Attestation, Level};
use switchyard_protocol::dict::{Dict, Encoding};
use switchyard_protocol::pki::SigningKey;
use switchyard_tests::federation::{now_seconds, ProviderSpec, TestFederation};
use switchyard_tests::*;

const ALICE: &str = "tel:+16502530000";
const BOB: &str = "tel:+16502530001";
const BOB_COLLEAGUE: &str = "tel:+16502530004";
const HOSTILE: &str = "h.test";

async fn post(
    client: &reqwest::Client,
    fed: &TestFederation,
    to: &str,
    action: &str,
    body: &Dict,
) -> anyhow::Result<(u16, Dict)> {
    let response = client
        .post(format!("{}/federation/v1/{action}", fed.federation_url(to)))
        .header(
            reqwest::header::CONTENT_TYPE,
            Encoding::Plist.content_type(),
        )
        .header(reqwest::header::ACCEPT, Encoding::Plist.content_type())
        .body(body.encode(Encoding::Plist))
        .send()
        .await?;
    let status = response.status().as_u16();
    let bytes = response.bytes().await?;
    Ok((status, Dict::decode(&bytes, Encoding::Plist)?))
}

fn envelope(session: &str) -> Dict {
    Dict::new()
        .with("session-id", session)
        .with("timestamp", now_seconds())
        .with("forward-id", uuid::Uuid::new_v4().simple().to_string())
}

fn code(answer: &Dict) -> &str {
    answer.opt_str("error").ok().flatten().unwrap_or("")
}

#[tokio::test]
async fn a_hostile_member_can_neither_take_over_nor_impersonate() -> anyhow::Result<()> {
    let fed = TestFederation::start(&[
        ProviderSpec::plist("a.test"),
        ProviderSpec::plist("b.test"),
        ProviderSpec::plist(HOSTILE),
    ])
    .await?;
    let (a, b, h) = (
        fed.provider("a.test"),
        fed.provider("b.test"),
        fed.provider(HOSTILE),
    );
    let alice_id = a.add_user("Alice", &[ALICE]).await?;
    let alice = a.endpoint(&alice_id, ALICE, None, Encoding::Plist).await?;
    let bob_id = b.add_user("Bob", &[BOB]).await?;
    let bob = b.endpoint(&bob_id, BOB, None, Encoding::Plist).await?;
    b.add_user("Bob's colleague", &[BOB_COLLEAGUE]).await?;
    // The hostile member registers Bob's number too, without a device: its filter holds Bob, so
    // Initiates for Bob go to it as well, and it rings nobody.
    h.add_user("Not Bob", &[BOB]).await?;
    fed.sync().await?;
    let mut alice_push = alice.push_channel(PushMode::WebSocket).await?;
    let mut bob_push = bob.push_channel(PushMode::WebSocket).await?;
    let as_hostile = fed.peer_client_of(HOSTILE)?;
    let ca_of = |id: &str| {
        fed.provider(id)
            .provider
            .app
            .call_settings
            .endpoint_ca_pem
            .clone()
    };

    let sid = session_id();
    let answer = alice
        .initiate(&sid, BOB, b"alice-offer", &["audio"])
        .await?;
    assert_eq!(answer.string_array("providers")?, ["b.test"]);
    let ring = expect_push(&mut bob_push, "initiate").await?;
    // The origin-state the Initiate Forward carried, to the hostile member as to B.
    let at_b: serde_json::Value = b.provider.app.sealer.open(ring.str("state")?)?;
    let origin_state = at_b["origin_state"]
        .as_str()
        .expect("a forwarded call")
        .to_string();

    // An Accept for Bob, from a member whose answer to the Initiate rang nobody.
    let accept = |callee_ca: String| {
        envelope(&sid)
            .with("answering-provider", HOSTILE)
            .with("origin-state", origin_state.as_str())
            .with("callee-uri", BOB)
            .with("callee-token", "hostile-token")
            .with("callee-blob", b"hostile-answer".to_vec())
            .with("callee-ca", callee_ca)
    };
    let (status, refused) = post(
        &as_hostile,
        &fed,
        "a.test",
        "accept",
        &accept(ca_of(HOSTILE)),
    )
    .await?;
    assert_eq!(
        (status, code(&refused)),
        (409, "not-yet-ringing"),
        "{refused:?}"
    );
    // With B's CA for its endpoint: the pin is checked first.
    let (status, refused) = post(
        &as_hostile,
        &fed,
        "a.test",
        "accept",
        &accept(ca_of("b.test")),
    )
    .await?;
    assert_eq!(
        (status, code(&refused)),
        (403, "endpoint-ca-mismatch"),
        "{refused:?}"
    );
    // Cancelling B's legs of the call.
    let cancel = envelope(&sid)
        .with("from-provider", HOSTILE)
        .with("reason", "cancelled")
        .with("origin-state", origin_state.as_str());
    let (status, refused) = post(&as_hostile, &fed, "a.test", "cancel", &cancel).await?;
    assert_eq!(
        (status, code(&refused)),
        (409, "not-yet-ringing"),
        "{refused:?}"
    );
    expect_silence(&mut alice_push).await?;

    // Alice, a user of A, presented by the hostile member as its own verified caller; and a user
    // of B itself.
    let h_key = SigningKey::from_pem(&std::fs::read_to_string(fed.cert_paths(HOSTILE).1)?)?;
    let claim = |caller: &str, caller_ca: String| -> anyhow::Result<(String, Dict)> {
        let session = session_id();
        let envelope = envelope(&session);
        let signature = Attestation {
            session_id: session.clone(),
            caller_uri: caller.into(),
            callee_uri: BOB.into(),
            provider_id: HOSTILE.into(),
            timestamp: envelope.int("timestamp")?,
            level: Level::Full,
        }
        .sign(&h_key)?;
        let body = envelope
            .with("originating-provider", HOSTILE)
            .with("origin-state", "hostile-origin-state")
            .with("caller-uri", caller)
            .with("caller-token", "hostile-caller-token")
            .with("callee-uri", BOB)
            .with("caller-blob", b"hostile-offer".to_vec())
            .with("caller-ca", caller_ca)
            .with("media", vec!["audio".to_string()])
            .with("ring-deadline", now_seconds() * 1000 + 30_000)
            .with("attestation", signature)
            .with("attestation-level", "A");
        Ok((session, body))
    };
    let (_, body) = claim(ALICE, ca_of("a.test"))?;
    let (status, refused) = post(&as_hostile, &fed, "b.test", "initiate", &body).await?;
    assert_eq!(
        (status, code(&refused)),
        (403, "endpoint-ca-mismatch"),
        "{refused:?}"
    );
    for (caller, shown) in [(ALICE, Some("B")), (BOB_COLLEAGUE, None)] {
        let (session, body) = claim(caller, ca_of(HOSTILE))?;
        let (status, answer) = post(&as_hostile, &fed, "b.test", "initiate", &body).await?;
        assert_eq!(status, 200, "{answer:?}");
        let ring = expect_push(&mut bob_push, "initiate").await?;
        assert_eq!(ring.str("session-id")?, session);
        assert_eq!(ring.opt_str("peer-attestation")?, shown, "{caller}");
        assert_eq!(ring.str("peer-provider")?, HOSTILE);
    }
    let lowered = b.metrics().await?;
    assert!(
        lowered.contains("switchyard_caller_attestations_lowered_total{peer=\"h.test\",reason=\"caller-not-in-sender-filter\"} 1"),
        "{lowered}"
    );

    // Bob answers Alice's call: it goes through, and Alice checks Bob against B's pinned CA.
    bob.accept(&ring, b"bob-answer").await?;
    let accepted = expect_push(&mut alice_push, "accept").await?;
    assert_eq!(accepted.str("peer-provider")?, "b.test");
    assert_eq!(accepted.str("peer-ca")?, ca_of("b.test"));
    let calls = a.calls().await?;
    let call = calls
        .iter()
        .find(|c| c["session_id"] == sid.as_str())
        .unwrap();
    assert_eq!(call["state"], "answered");
    assert_eq!(call["answered_by"], "provider:b.test");
    Ok(())
}
