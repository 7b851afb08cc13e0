//! Every refused request gets its 4xx with a stable error code, and changes nothing: no call
//! record, no push to anyone.

use switchyard_endpoint::client::{EndpointClient, PushChannel, PushMode};
use switchyard_protocol::dict::{Dict, Encoding};
use switchyard_tests::*;

const ALICE: &str = "tel:+16502530000";
const BOB: &str = "mailto:bob@example.com";
const CAROL: &str = "tel:+442079460958";

struct World {
    h: Harness,
    alice: EndpointClient,
    bob: EndpointClient,
    carol: EndpointClient,
    pushes: Vec<PushChannel>,
}

async fn world() -> anyhow::Result<World> {
    let h = Harness::start().await?;
    let alice_id = h.add_user("Alice", &[ALICE]).await?;
    let bob_id = h.add_user("Bob", &[BOB]).await?;
    let carol_id = h.add_user("Carol", &[CAROL]).await?;
    let alice = h.endpoint(&alice_id, ALICE, None, Encoding::Plist).await?;
    let bob = h.endpoint(&bob_id, BOB, None, Encoding::Plist).await?;
    let carol = h.endpoint(&carol_id, CAROL, None, Encoding::Plist).await?;
    let mut pushes = Vec::new();
    for client in [&alice, &bob, &carol] {
        pushes.push(client.push_channel(PushMode::WebSocket).await?);
    }
    Ok(World {
        h,
        alice,
        bob,
        carol,
        pushes,
    })
}

impl World {
    /// Nothing was pushed to anyone and the call records are as many as before.
    async fn unchanged(&mut self, calls_before: usize) -> anyhow::Result<()> {
        for channel in &mut self.pushes {
            expect_silence(channel).await?;
        }
        assert_eq!(
            self.h.calls().await?.len(),
            calls_before,
            "a refused request wrote a call record"
        );
        Ok(())
    }
}

fn initiate_body(client: &EndpointClient, sid: &str, peer: &str) -> Dict {
    Dict::new()
        .with("session-id", sid)
        .with("self-uri", client.primary_uri())
        .with("self-token", client.identity.push_token.as_str())
        .with("self-blob", b"x".to_vec())
        .with("peer-uri", peer)
}

async fn refused(
    client: &EndpointClient,
    action: &str,
    body: Dict,
    status: u16,
    code: &str,
) -> anyhow::Result<()> {
    let err = client
        .request(action, &body)
        .await
        .expect_err("request must be refused");
    assert_eq!(err.status(), Some(status), "{action}: {err}");
    assert_eq!(err.code(), Some(code), "{action}: {err}");
    Ok(())
}

#[tokio::test]
async fn initiate_refusals_change_nothing() -> anyhow::Result<()> {
    let mut w = world().await?;
    let sid = session_id();

    refused(
        &w.alice,
        "initiate",
        initiate_body(&w.alice, &sid, BOB).with("self-uri", BOB),
        403,
        "not-authorized",
    )
    .await?;
    refused(
        &w.alice,
        "initiate",
        initiate_body(&w.alice, &sid, BOB).with("self-token", "forged"),
        403,
        "not-authorized",
    )
    .await?;
    refused(
        &w.alice,
        "initiate",
        initiate_body(&w.alice, &sid, BOB).with("self-token", w.bob.identity.push_token.as_str()),
        403,
        "not-authorized",
    )
    .await?;
    refused(
        &w.alice,
        "initiate",
        initiate_body(&w.alice, "short", BOB),
        400,
        "invalid-field",
    )
    .await?;
    refused(
        &w.alice,
        "initiate",
        initiate_body(&w.alice, &sid, "sip:bob@example.com"),
        400,
        "invalid-field",
    )
    .await?;
    refused(
        &w.alice,
        "initiate",
        initiate_body(&w.alice, &sid, "tel:5550123"),
        400,
        "invalid-field",
    )
    .await?;
    refused(
        &w.alice,
        "initiate",
        initiate_body(&w.alice, &sid, "mailto:nobody@example.com"),
        404,
        "unknown-peer",
    )
    .await?;
    refused(
        &w.alice,
        "initiate",
        initiate_body(&w.alice, &sid, BOB).with("media", vec!["smell".to_string()]),
        400,
        "invalid-field",
    )
    .await?;
    refused(
        &w.alice,
        "initiate",
        initiate_body(&w.alice, &sid, BOB).with("self-blob", "not base64!"),
        400,
        "invalid-field",
    )
    .await?;
    refused(
        &w.alice,
        "initiate",
        initiate_body(&w.alice, &sid, BOB).with("self-blob", vec![0u8; 20_000]),
        400,
        "invalid-field",
    )
    .await?;
    let mut missing = initiate_body(&w.alice, &sid, BOB);
    missing = Dict::decode(&missing.encode(Encoding::Plist), Encoding::Plist)?;
    let without_peer: Dict = {
        let mut d = Dict::new();
        for key in missing.keys().filter(|k| *k != "peer-uri") {
            d.insert(key, missing.get(key).unwrap().clone());
        }
        d
    };
    let err = w
        .alice
        .request("initiate", &without_peer)
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(400));
    assert!(
        matches!(&err, switchyard_endpoint::client::ClientError::Refused { field: Some(f), .. } if f == "peer-uri"),
        "{err}"
    );
    w.unchanged(0).await?;

    // A valid one goes through; the same session id again is a conflict and changes nothing.
    w.alice
        .request("initiate", &initiate_body(&w.alice, &sid, BOB))
        .await?;
    expect_push(&mut w.pushes[1], "initiate").await?;
    refused(
        &w.alice,
        "initiate",
        initiate_body(&w.alice, &sid, CAROL),
        409,
        "duplicate-session",
    )
    .await?;
    w.unchanged(1).await?;
    Ok(())
}

#[tokio::test]
async fn answer_and_cancel_refusals_change_nothing() -> anyhow::Result<()> {
    let mut w = world().await?;
    let sid = session_id();
    w.alice.initiate(&sid, BOB, b"offer", &["audio"]).await?;
    let ring = expect_push(&mut w.pushes[1], "initiate").await?;
    let state = ring.str("state")?.to_string();

    let accept_body = |client: &EndpointClient, self_uri: &str| {
        Dict::new()
            .with("session-id", sid.as_str())
            .with("self-uri", self_uri)
            .with("self-token", client.identity.push_token.as_str())
            .with("self-blob", b"answer".to_vec())
            .with("peer-uri", ALICE)
            .with("peer-token", w.alice.identity.push_token.as_str())
            .with("state", state.as_str())
    };
    // The caller cannot accept its own call, nor can a third party.
    refused(
        &w.alice,
        "accept",
        accept_body(&w.alice, ALICE),
        403,
        "not-authorized",
    )
    .await?;
    refused(
        &w.carol,
        "accept",
        accept_body(&w.carol, CAROL),
        403,
        "not-authorized",
    )
    .await?;
    refused(
        &w.carol,
        "reject",
        accept_body(&w.carol, CAROL).with("reason", "busy"),
        403,
        "not-authorized",
    )
    .await?;
    // Altered or forged state.
    let mut tampered = state.clone().into_bytes();
    let at = tampered.len() - 5;
    tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered)?;
    refused(
        &w.bob,
        "accept",
        accept_body(&w.bob, BOB).with("state", tampered.as_str()),
        400,
        "invalid-field",
    )
    .await?;
    refused(
        &w.bob,
        "accept",
        accept_body(&w.bob, BOB).with("state", "v1.abc.def"),
        400,
        "invalid-field",
    )
    .await?;
    refused(
        &w.bob,
        "accept",
        accept_body(&w.bob, BOB).with("session-id", session_id().as_str()),
        400,
        "invalid-field",
    )
    .await?;
    // Echoed peer fields must be the caller's.
    refused(
        &w.bob,
        "accept",
        accept_body(&w.bob, BOB).with("peer-token", w.carol.identity.push_token.as_str()),
        400,
        "invalid-field",
    )
    .await?;
    refused(
        &w.bob,
        "accept",
        accept_body(&w.bob, BOB).with("peer-uri", CAROL),
        400,
        "invalid-field",
    )
    .await?;
    refused(
        &w.bob,
        "reject",
        accept_body(&w.bob, BOB).with("reason", "bored"),
        400,
        "invalid-field",
    )
    .await?;
    refused(
        &w.bob,
        "reject",
        accept_body(&w.bob, BOB)
            .with("reason", "busy")
            .with("reason-text", "x".repeat(600)),
        400,
        "invalid-field",
    )
    .await?;
    // Only the two parties may cancel.
    let cancel = Dict::new()
        .with("session-id", sid.as_str())
        .with("self-uri", CAROL)
        .with("self-token", w.carol.identity.push_token.as_str())
        .with("peer-uri", BOB)
        .with("state", state.as_str());
    refused(&w.carol, "cancel", cancel, 403, "not-authorized").await?;

    w.unchanged(1).await?;
    assert_eq!(w.h.call_record(&sid).await?["state"], "ringing");
    // After all that the call still works.
    w.bob.accept(&ring, b"answer").await?;
    assert_eq!(
        expect_push(&mut w.pushes[0], "accept")
            .await?
            .data("peer-blob")?,
        b"answer"
    );
    Ok(())
}

#[tokio::test]
async fn transport_level_refusals() -> anyhow::Result<()> {
    let mut w = world().await?;
    let url = format!("{}/v1/initiate", w.h.provider_url);
    // No client certificate: 401, as a dictionary.
    let ca = reqwest::Certificate::from_pem(w.h.ca_pem().as_bytes())?;
    let anonymous = reqwest::Client::builder().tls_certs_only([ca]).build()?;
    let response = anonymous.post(&url).body(Vec::new()).send().await?;
    assert_eq!(response.status().as_u16(), 401);
    let body = Dict::decode(&response.bytes().await?, Encoding::Plist)?;
    assert_eq!(body.str("error")?, "certificate-required");

    // Malformed, wrong type, unsupported media type, too large.
    let raw = |body: Vec<u8>, content_type: &'static str| {
        let http = w.alice.raw_http();
        let url = url.clone();
        async move {
            let response = http
                .post(url)
                .header("content-type", content_type)
                .body(body)
                .send()
                .await?;
            let status = response.status().as_u16();
            let bytes = response.bytes().await?;
            anyhow::Ok((status, bytes))
        }
    };
    let (status, bytes) = raw(b"<plist><dict><key>x".to_vec(), "application/x-plist").await?;
    assert_eq!(status, 400);
    assert_eq!(
        Dict::decode(&bytes, Encoding::Plist)?.str("error")?,
        "malformed-body"
    );
    let (status, bytes) = raw(b"{\"session-id\": 5}".to_vec(), "application/json").await?;
    assert_eq!(status, 400);
    let answer = Dict::decode(&bytes, Encoding::Json)?;
    assert_eq!(answer.str("field")?, "session-id");
    let (status, _) = raw(b"hello".to_vec(), "text/plain").await?;
    assert_eq!(status, 415);
    let big = format!("{{\"session-id\": \"{}\"}}", "a".repeat(70_000)).into_bytes();
    let (status, bytes) = raw(big, "application/json").await?;
    assert_eq!(status, 413);
    assert_eq!(
        Dict::decode(&bytes, Encoding::Json)?.str("error")?,
        "body-too-large"
    );
    w.unchanged(0).await?;
    Ok(())
}

#[tokio::test]
async fn revoked_endpoint_is_refused_and_its_push_channel_closes() -> anyhow::Result<()> {
    let mut w = world().await?;
    let (status, _) =
        w.h.admin_call(
            reqwest::Method::POST,
            &format!("/admin/v1/endpoints/{}/revoke", w.bob.identity.endpoint_id),
            None,
        )
        .await?;
    assert_eq!(status, 200);
    let closed = w.pushes[1].next(WAIT).await;
    assert!(
        matches!(
            closed,
            Err(switchyard_endpoint::client::ClientError::PushClosed(_))
        ),
        "{closed:?}"
    );
    let err = w
        .bob
        .initiate(&session_id(), ALICE, b"", &["audio"])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("endpoint-revoked"));
    assert_eq!(err.status(), Some(403));
    // Calls to Bob now find no endpoint: Alice hears `unavailable`.
    let answer = w
        .alice
        .initiate(&session_id(), BOB, b"", &["audio"])
        .await?;
    assert_eq!(answer.int("rung")?, 0);
    assert_eq!(
        expect_push(&mut w.pushes[0], "reject")
            .await?
            .str("reason")?,
        "unavailable"
    );
    let long_poll = w
        .bob
        .push_channel(PushMode::LongPoll)
        .await?
        .next(WAIT)
        .await
        .unwrap_err();
    assert_eq!(long_poll.code(), Some("endpoint-revoked"));
    Ok(())
}
