//! Federation under faults: peers offline or slow, bad discovery dictionaries, forged or replayed
//! Forwards, certificates outside the directory, members joining and leaving, certificate
//! rotation, and state that must survive a restart. Everything runs on loopback.

use std::time::{Duration, Instant};

use switchyard_endpoint::client::{ClientError, EndpointClient, PushMode};
use switchyard_protocol::attestation::{Attestation, Level};
use switchyard_protocol::dict::{Dict, Encoding};
use switchyard_protocol::discovery::Directory;
use switchyard_protocol::pki::{self, FederationCa, SigningKey};
use switchyard_provider::federation::peers::PeerError;
use switchyard_provider::federation::Federation;
use switchyard_tests::federation::{now_seconds, ProviderSpec, TestFederation};
use switchyard_tests::*;

const ALICE: &str = "tel:+16502530000";
const BOB: &str = "tel:+16502530001";
const CAROL: &str = "tel:+16502530002";
const DAVE: &str = "tel:+16502530003";
const SHARED: &str = "tel:+442079460958";
/// A caller at B in hand-made Forwards (canonical form).
const CALLER_AT_B: &str = "tel:+14155550100";

async fn three() -> anyhow::Result<TestFederation> {
    TestFederation::start(&[
        ProviderSpec::plist("a.test"),
        ProviderSpec::json("b.test"),
        ProviderSpec::plist("c.test"),
    ])
    .await
}

async fn user_endpoint(h: &Harness, name: &str, uris: &[&str]) -> anyhow::Result<EndpointClient> {
    let id = h.add_user(name, uris).await?;
    h.endpoint(&id, uris[0], None, Encoding::Plist).await
}

async fn has_record(h: &Harness, sid: &str) -> anyhow::Result<bool> {
    Ok(h.calls().await?.iter().any(|c| c["session_id"] == sid))
}

fn refused(result: Result<Dict, ClientError>) -> (u16, String, String) {
    match result {
        Ok(answer) => panic!("expected a refusal, got {answer:?}"),
        Err(ClientError::Refused {
            status,
            code,
            message,
            ..
        }) => (status, code, message),
        Err(other) => panic!("expected a refusal, got {other}"),
    }
}

fn now_ms() -> i64 {
    now_seconds() * 1000
}

/// Polls `check` every 50 ms until it holds, failing after `WAIT`.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + WAIT;
    while !check() {
        anyhow::ensure!(Instant::now() < deadline, "not within {WAIT:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

fn may_host(fed: &Federation, uri: &str) -> Vec<String> {
    let Some(directory) = fed.directory.current() else {
        return Vec::new();
    };
    fed.peers
        .candidates(&directory, &fed.provider_id, uri)
        .0
        .into_iter()
        .map(|m| m.provider_id)
        .collect()
}

fn peer_generation(fed: &Federation, peer: &str) -> Option<u64> {
    let directory = fed.directory.current();
    fed.peers
        .status(directory.as_deref(), &fed.provider_id)
        .into_iter()
        .find(|s| s.provider_id == peer)
        .and_then(|s| s.generation)
}

#[tokio::test]
async fn an_offline_peer_is_skipped_and_its_breaker_opens() -> anyhow::Result<()> {
    let mut fed = three().await?;
    let alice = user_endpoint(fed.provider("a.test"), "Alice", &[ALICE]).await?;
    let at_b = user_endpoint(fed.provider("b.test"), "Shared B", &[SHARED]).await?;
    fed.provider("c.test")
        .add_user("Shared C", &[SHARED])
        .await?;
    fed.provider("c.test").add_user("Carol", &[CAROL]).await?;
    fed.sync().await?;
    assert_eq!(may_host(fed.fed("a.test"), SHARED), ["b.test", "c.test"]);
    let mut b_push = at_b.push_channel(PushMode::WebSocket).await?;

    fed.take("c.test").provider.shutdown().await;

    // The shared URI still rings at B.
    let sid = session_id();
    let answer = alice.initiate(&sid, SHARED, b"o", &["audio"]).await?;
    assert_eq!(answer.int("rung")?, 1);
    assert_eq!(answer.string_array("providers")?, ["b.test"]);
    let ring = expect_push(&mut b_push, "initiate").await?;
    assert_eq!(ring.str("session-id")?, sid);
    assert_eq!(ring.str("peer-provider")?, "a.test");

    // A URI only C hosts: the caller hears that no provider answered, until C's breaker opens
    // after `breaker_failures` consecutive failures (the Initiate above was one; a filter pull
    // racing the shutdown may have been another). Consecutive ones: under load an earlier
    // request to C may have timed out before a later one succeeded.
    let breaker = fed.fed("a.test").config.breaker_failures;
    let c_status = |fed: &TestFederation| {
        let a = fed.fed("a.test");
        let directory = a.directory.current().expect("directory");
        a.peers
            .status(Some(&directory), "a.test")
            .into_iter()
            .find(|s| s.provider_id == "c.test")
            .expect("c.test listed")
    };
    let mut unreachable = 0;
    loop {
        let before = c_status(&fed);
        if before.consecutive_failures >= breaker {
            break;
        }
        assert!(
            !before.breaker_open,
            "open after {} failures",
            before.consecutive_failures
        );
        let (status, code, message) =
            refused(alice.initiate(&session_id(), CAROL, b"o", &["audio"]).await);
        assert_eq!(
            (status, code.as_str()),
            (504, "peers-unreachable"),
            "{message}"
        );
        assert!(message.contains("c.test"), "{message}");
        assert_eq!(
            c_status(&fed).consecutive_failures,
            before.consecutive_failures + 1
        );
        unreachable += 1;
    }
    assert!((1..breaker).contains(&unreachable), "{unreachable}");
    let started = Instant::now();
    let (status, code, message) =
        refused(alice.initiate(&session_id(), CAROL, b"o", &["audio"]).await);
    assert_eq!(
        (status, code.as_str()),
        (503, "peers-unavailable"),
        "{message}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "an open breaker answers at once, took {:?}",
        started.elapsed()
    );
    let status = c_status(&fed);
    assert!(status.breaker_open);
    // Skipped requests are not failures.
    assert_eq!(status.consecutive_failures, breaker);

    // With C's breaker open the shared URI rings at B straight away.
    let started = Instant::now();
    let answer = alice
        .initiate(&session_id(), SHARED, b"o", &["audio"])
        .await?;
    assert_eq!(answer.string_array("providers")?, ["b.test"]);
    assert!(started.elapsed() < Duration::from_millis(1500));
    expect_push(&mut b_push, "initiate").await?;
    fed.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_slow_peer_times_out_and_the_call_rings_at_the_live_one() -> anyhow::Result<()> {
    let mut fed = three().await?;
    let alice = user_endpoint(fed.provider("a.test"), "Alice", &[ALICE]).await?;
    let at_b = user_endpoint(fed.provider("b.test"), "Shared B", &[SHARED]).await?;
    fed.provider("c.test")
        .add_user("Shared C", &[SHARED])
        .await?;
    fed.provider("c.test").add_user("Carol", &[CAROL]).await?;
    fed.sync().await?;
    let mut b_push = at_b.push_channel(PushMode::WebSocket).await?;

    // C's entry now points at a listener that takes connections and never says a word.
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let mut c = fed.member("c.test")?;
    c.base_uri = format!("https://{}", hole.local_addr()?);
    let members = vec![fed.member("a.test")?, fed.member("b.test")?, c];
    fed.write_directory(members, 86_400)?;
    fed.refresh_all().await?;
    let timeout = fed.fed("a.test").config.request_timeout_ms;

    let started = Instant::now();
    let answer = alice
        .initiate(&session_id(), SHARED, b"o", &["audio"])
        .await?;
    let took = started.elapsed();
    assert_eq!(answer.int("rung")?, 1);
    assert_eq!(answer.string_array("providers")?, ["b.test"]);
    assert!(
        took >= Duration::from_millis(timeout) && took < Duration::from_millis(timeout + 3000),
        "took {took:?} with a {timeout} ms timeout"
    );
    expect_push(&mut b_push, "initiate").await?;

    let (status, code, message) =
        refused(alice.initiate(&session_id(), CAROL, b"o", &["audio"]).await);
    assert_eq!(
        (status, code.as_str()),
        (504, "peers-unreachable"),
        "{message}"
    );
    assert!(
        message.contains(&format!("did not answer within {timeout} ms")),
        "{message}"
    );
    drop(hole);
    fed.shutdown().await;
    Ok(())
}

/// Puts `envelope` where the directory serves it.
fn serve(fed: &TestFederation, envelope: &Dict) -> anyhow::Result<()> {
    std::fs::write(
        fed.dir.path().join("directory.plist"),
        envelope.encode(Encoding::Plist),
    )?;
    Ok(())
}

#[tokio::test]
async fn bad_directories_are_refused_and_the_saved_copy_outlives_a_restart() -> anyhow::Result<()> {
    let mut fed = three().await?;
    let alice = user_endpoint(fed.provider("a.test"), "Alice", &[ALICE]).await?;
    let bob = user_endpoint(fed.provider("b.test"), "Bob", &[BOB]).await?;
    fed.sync().await?;
    fed.publish(&["a.test", "b.test", "c.test"]).await?;
    let in_force = fed.version;
    assert_eq!(in_force, 2);
    let members = vec![
        fed.member("a.test")?,
        fed.member("b.test")?,
        fed.member("c.test")?,
    ];
    let now = now_seconds();
    let next = Directory {
        federation: "test".into(),
        version: in_force + 1,
        issued_at: now,
        expires: now + 86_400,
        members: members.clone(),
        federation_relay: None,
        filter_max_false_positive_ppm: None,
    };

    let envelope = next.sign(&fed.ca)?;
    let mut document = envelope.data("document")?;
    let at = document
        .windows(15)
        .position(|w| w == b"Provider b.test")
        .expect("display name in the document");
    document[at + 9] = b'z';
    let tampered = envelope.clone().with("document", document);
    let mut unsigned = Dict::new();
    for (key, value) in envelope.iter().filter(|(k, _)| *k != "signature") {
        unsigned.insert(key, value.clone());
    }
    let expired = Directory {
        issued_at: now - 7200,
        expires: now - 3600,
        ..next.clone()
    }
    .sign(&fed.ca)?;
    let rollback = Directory {
        version: in_force - 1,
        ..next.clone()
    }
    .sign(&fed.ca)?;

    let a = fed.fed("a.test").clone();
    for (what, envelope, expected) in [
        (
            "tampered",
            &tampered,
            "signature does not verify against the federation certificate",
        ),
        ("unsigned", &unsigned, "missing field `signature`"),
        ("expired", &expired, "expired at"),
        (
            "rolled back",
            &rollback,
            "version 1 is older than the version 2 already in use",
        ),
    ] {
        serve(&fed, envelope)?;
        let err = a.refresh_directory().await.expect_err(what).to_string();
        assert!(
            err.contains("is refused") && err.contains(expected),
            "{what}: {err}"
        );
        let current = a.directory.current().expect("the directory stays in force");
        assert_eq!(current.version, in_force, "{what}");
        assert_eq!(current.members, members, "{what}");
        assert_eq!(a.directory.status().1.as_deref(), Some(err.as_str()));
    }

    // Calls still go through on the directory in force.
    let mut bob_push = bob.push_channel(PushMode::WebSocket).await?;
    let sid = session_id();
    assert_eq!(
        alice
            .initiate(&sid, BOB, b"o", &["audio"])
            .await?
            .int("rung")?,
        1
    );
    expect_push(&mut bob_push, "initiate").await?;

    // A restarts while the bootstrap URI is unreachable: it runs on the saved copy, and its peer
    // filters come from its database.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    fed.restart("a.test", |config| {
        config.federation.bootstrap_uri = Some(format!("http://{closed}/federation/v1/directory"));
    })
    .await?;
    let a = fed.fed("a.test").clone();
    eventually("the saved directory is in force", || {
        a.directory.current().is_some()
    })
    .await?;
    let current = a.directory.current().expect("directory");
    assert_eq!(current.version, in_force);
    assert_eq!(current.members, members);
    eventually("the failed fetch is reported", || {
        a.directory
            .status()
            .1
            .is_some_and(|e| e.contains(&closed.to_string()))
    })
    .await?;
    eventually("B's filter loaded from the database", || {
        may_host(&a, BOB) == ["b.test"]
    })
    .await?;

    let mut alice_push = alice.push_channel(PushMode::WebSocket).await?;
    let sid = session_id();
    let answer = alice.initiate(&sid, BOB, b"again", &["audio"]).await?;
    assert_eq!(answer.int("rung")?, 1);
    let ring = expect_push(&mut bob_push, "initiate").await?;
    assert_eq!(ring.str("session-id")?, sid);
    bob.accept(&ring, b"answer").await?;
    expect_push(&mut alice_push, "accept").await?;
    // And B's Forwards are let in: A authenticates them against the saved directory.
    let sid = session_id();
    bob.initiate(&sid, ALICE, b"back", &["audio"]).await?;
    let ring = expect_push(&mut alice_push, "initiate").await?;
    assert_eq!(ring.str("peer-provider")?, "b.test");
    fed.shutdown().await;
    Ok(())
}

/// An Initiate Forward as B would send it for a call to `callee`, without attestation.
fn initiate_forward(sid: &str, timestamp: i64, from: &str, callee: &str) -> Dict {
    Dict::new()
        .with("session-id", sid)
        .with("timestamp", timestamp)
        .with("forward-id", uuid::Uuid::new_v4().simple().to_string())
        .with("originating-provider", from)
        .with("origin-state", "opaque-origin-state-of-b")
        .with("caller-uri", CALLER_AT_B)
        .with("caller-token", "caller-push-token-at-b")
        .with("callee-uri", callee)
        .with("caller-blob", b"forged-offer".to_vec())
        .with(
            "caller-capabilities",
            Dict::new().with("audio", true).with("video", true),
        )
        .with("media", vec!["audio".to_string()])
        .with("ring-deadline", now_ms() + 30_000)
}

fn attestation(sid: &str, timestamp: i64, callee: &str) -> Attestation {
    Attestation {
        session_id: sid.to_string(),
        caller_uri: CALLER_AT_B.to_string(),
        callee_uri: callee.to_string(),
        provider_id: "b.test".to_string(),
        timestamp,
        level: Level::Full,
    }
}

/// POSTs a plist body; returns the status and the decoded answer.
async fn post(client: &reqwest::Client, url: &str, body: &[u8]) -> anyhow::Result<(u16, Dict)> {
    let response = client
        .post(url)
        .header(
            reqwest::header::CONTENT_TYPE,
            Encoding::Plist.content_type(),
        )
        .header(reqwest::header::ACCEPT, Encoding::Plist.content_type())
        .body(body.to_vec())
        .send()
        .await?;
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let bytes = response.bytes().await?;
    let encoding = Encoding::from_content_type(content_type.as_deref())?;
    Ok((status, Dict::decode(&bytes, encoding)?))
}

fn error_code(answer: &Dict) -> &str {
    answer.opt_str("error").ok().flatten().unwrap_or("")
}

#[tokio::test]
async fn forged_stale_and_replayed_forwards_are_refused() -> anyhow::Result<()> {
    let fed = three().await?;
    let alice = user_endpoint(fed.provider("a.test"), "Alice", &[ALICE]).await?;
    let mut alice_push = alice.push_channel(PushMode::WebSocket).await?;
    let as_b = fed.peer_client_of("b.test")?;
    let url = format!("{}/federation/v1/initiate", fed.federation_url("a.test"));
    let b_key = SigningKey::from_pem(&std::fs::read_to_string(fed.cert_paths("b.test").1)?)?;
    let c_key = SigningKey::from_pem(&std::fs::read_to_string(fed.cert_paths("c.test").1)?)?;
    let window = fed.fed("a.test").config.timestamp_window_seconds as i64;

    // An attestation by C's key for a call B forwards.
    let sid = session_id();
    let now = now_seconds();
    let forged = attestation(&sid, now, ALICE).sign(&c_key)?;
    let body = initiate_forward(&sid, now, "b.test", ALICE)
        .with("attestation", forged)
        .with("attestation-level", "A");
    let (status, answer) = post(&as_b, &url, &body.encode(Encoding::Plist)).await?;
    assert_eq!(
        (status, error_code(&answer)),
        (403, "bad-attestation"),
        "{answer:?}"
    );

    // Garbage in place of a signature.
    let sid = session_id();
    let body = initiate_forward(&sid, now, "b.test", ALICE)
        .with("attestation", b"not a signature at all".to_vec())
        .with("attestation-level", "A");
    let (status, answer) = post(&as_b, &url, &body.encode(Encoding::Plist)).await?;
    assert_eq!(
        (status, error_code(&answer)),
        (403, "bad-attestation"),
        "{answer:?}"
    );

    // B's own signature, but over another callee.
    let sid = session_id();
    let other = attestation(&sid, now, BOB).sign(&b_key)?;
    let body = initiate_forward(&sid, now, "b.test", ALICE)
        .with("attestation", other)
        .with("attestation-level", "A");
    let (status, answer) = post(&as_b, &url, &body.encode(Encoding::Plist)).await?;
    assert_eq!(
        (status, error_code(&answer)),
        (403, "bad-attestation"),
        "{answer:?}"
    );

    // A timestamp outside the window, even with a matching signature.
    let sid = session_id();
    let old = now - 2 * window;
    let signed = attestation(&sid, old, ALICE).sign(&b_key)?;
    let body = initiate_forward(&sid, old, "b.test", ALICE)
        .with("attestation", signed)
        .with("attestation-level", "A");
    let (status, answer) = post(&as_b, &url, &body.encode(Encoding::Plist)).await?;
    assert_eq!(
        (status, error_code(&answer)),
        (403, "stale-forward"),
        "{answer:?}"
    );

    // Timestamps whose distance from now overflows an i64 (it used to panic in debug builds and
    // wrap to a value inside the window in release builds).
    for extreme in [i64::MIN, i64::MIN + 1, i64::MAX] {
        let sid = session_id();
        let signed = attestation(&sid, extreme, ALICE).sign(&b_key)?;
        let body = initiate_forward(&sid, extreme, "b.test", ALICE)
            .with("attestation", signed)
            .with("attestation-level", "A");
        let (status, answer) = post(&as_b, &url, &body.encode(Encoding::Plist)).await?;
        assert_eq!(
            (status, error_code(&answer)),
            (403, "stale-forward"),
            "{extreme}: {answer:?}"
        );
    }

    // B speaking for C.
    let sid = session_id();
    let body = initiate_forward(&sid, now, "c.test", ALICE);
    let (status, answer) = post(&as_b, &url, &body.encode(Encoding::Plist)).await?;
    assert_eq!(
        (status, error_code(&answer)),
        (403, "provider-mismatch"),
        "{answer:?}"
    );

    expect_silence(&mut alice_push).await?;
    assert!(fed.provider("a.test").calls().await?.is_empty());

    // A correct attestation by B of a caller B's filter does not hold: B signed it, but may
    // not vouch that it hosts the number, so Alice sees attestation B (partial). Once B hosts the
    // caller (and A holds B's filter saying so): attestation A.
    for shown in ["B", "A"] {
        if shown == "A" {
            user_endpoint(fed.provider("b.test"), "Caller at B", &[CALLER_AT_B]).await?;
            fed.sync().await?;
        }
        let sid = session_id();
        let now = now_seconds();
        let signed = attestation(&sid, now, ALICE).sign(&b_key)?;
        let body = initiate_forward(&sid, now, "b.test", ALICE)
            .with("attestation", signed)
            .with("attestation-level", "A");
        let (status, answer) = post(&as_b, &url, &body.encode(Encoding::Plist)).await?;
        assert_eq!(status, 200, "{answer:?}");
        let ring = expect_push(&mut alice_push, "initiate").await?;
        assert_eq!(ring.str("session-id")?, sid);
        assert_eq!(ring.opt_str("peer-attestation")?, Some(shown));
    }

    // No attestation: the call rings, marked unverified.
    let sid = session_id();
    let body = initiate_forward(&sid, now_seconds(), "b.test", ALICE).encode(Encoding::Plist);
    let (status, first) = post(&as_b, &url, &body).await?;
    assert_eq!(status, 200, "{first:?}");
    assert_eq!(first.str("session-id")?, sid);
    assert_eq!(first.str("answering-provider")?, "a.test");
    assert_eq!(first.int("rung")?, 1);
    let ring = expect_push(&mut alice_push, "initiate").await?;
    assert_eq!(ring.str("session-id")?, sid);
    assert!(ring.opt_str("peer-attestation")?.is_none());
    assert_eq!(ring.str("peer-provider")?, "b.test");
    assert_eq!(ring.str("peer-uri")?, CALLER_AT_B);
    assert_eq!(ring.data("peer-blob")?, b"forged-offer");

    // The same bytes again: a replay.
    let (status, answer) = post(&as_b, &url, &body).await?;
    assert_eq!(
        (status, error_code(&answer)),
        (409, "replayed-forward"),
        "{answer:?}"
    );

    // A retry (same session, new forward-id): the earlier answer, and nothing rings twice.
    let retry = Dict::decode(&body, Encoding::Plist)?
        .with("forward-id", uuid::Uuid::new_v4().simple().to_string());
    let (status, again) = post(&as_b, &url, &retry.encode(Encoding::Plist)).await?;
    assert_eq!(status, 200, "{again:?}");
    assert_eq!(again, first);
    expect_silence(&mut alice_push).await?;
    assert_eq!(
        fed.provider("a.test")
            .calls()
            .await?
            .iter()
            .filter(|c| c["session_id"] == sid.as_str())
            .count(),
        1
    );
    fed.shutdown().await;
    Ok(())
}

/// The full cause of a failed request (reqwest's Display leaves out the TLS alert).
fn chain(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[tokio::test]
async fn certificates_the_directory_does_not_list_are_refused() -> anyhow::Result<()> {
    let fed = three().await?;
    let url = format!("{}/federation/v1/bloom", fed.federation_url("a.test"));
    let names = ["localhost".to_string(), "127.0.0.1".to_string()];
    let get = |client: reqwest::Client| {
        let url = url.clone();
        async move {
            let response = client
                .get(&url)
                .header(reqwest::header::ACCEPT, Encoding::Plist.content_type())
                .send()
                .await?;
            let status = response.status().as_u16();
            let bytes = response.bytes().await?;
            Ok::<_, reqwest::Error>((status, Dict::decode(&bytes, Encoding::Plist)))
        }
    };

    // B's real certificate is let in.
    let (status, _) = get(fed.peer_client_of("b.test")?).await?;
    assert_eq!(status, 200);

    // "b.test" from another CA: the handshake fails.
    let other = FederationCa::init(
        &fed.dir.path().join("other-ca.pem"),
        &fed.dir.path().join("other-ca.key"),
        "other",
    )?;
    let foreign = other.issue_provider("b.test", &names, 30)?;
    let err = get(fed.peer_client(&foreign.cert_pem, &foreign.key_pem)?)
        .await
        .expect_err("a certificate from another CA");
    assert!(
        chain(&err).contains("fatal alert: UnknownCA"),
        "{}",
        chain(&err)
    );

    // A certificate from the federation CA for a provider that is not a member.
    let z = fed.ca.issue_provider("z.test", &names, 30)?;
    let (status, answer) = get(fed.peer_client(&z.cert_pem, &z.key_pem)?).await?;
    let answer = answer?;
    assert_eq!(
        (status, error_code(&answer)),
        (403, "not-a-member"),
        "{answer:?}"
    );

    // A second certificate for b.test: valid, but not the one the directory lists.
    let b2 = fed.ca.issue_provider("b.test", &names, 30)?;
    let (status, answer) = get(fed.peer_client(&b2.cert_pem, &b2.key_pem)?).await?;
    let answer = answer?;
    assert_eq!(
        (status, error_code(&answer)),
        (403, "certificate-mismatch"),
        "{answer:?}"
    );

    // An expired certificate for b.test: refused during the handshake.
    let now = time::OffsetDateTime::now_utc();
    let expired = fed.ca.issue_provider_with_validity(
        "b.test",
        &names,
        now - time::Duration::days(10),
        now - time::Duration::days(1),
    )?;
    let err = get(fed.peer_client(&expired.cert_pem, &expired.key_pem)?)
        .await
        .expect_err("an expired certificate");
    assert!(
        chain(&err).contains("fatal alert: CertificateExpired"),
        "{}",
        chain(&err)
    );

    // A provider configured with an expired certificate does not start.
    let cert = fed.dir.path().join("e.test.pem");
    let key = fed.dir.path().join("e.test.key");
    let issued = fed.ca.issue_provider_with_validity(
        "e.test",
        &names,
        now - time::Duration::days(10),
        now - time::Duration::days(1),
    )?;
    std::fs::write(&cert, &issued.cert_pem)?;
    std::fs::write(&key, &issued.key_pem)?;
    let (config, dir) = fed
        .provider_config(&ProviderSpec::plist("e.test"), cert.clone(), key)
        .await?;
    let err = match Harness::start_with(config, dir).await {
        Ok(_) => panic!("a provider with an expired certificate started"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("federation certificate")
            && err.contains(&cert.display().to_string())
            && err.contains("expired"),
        "{err}"
    );
    fed.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn members_join_and_leave_while_running() -> anyhow::Result<()> {
    let mut fed = three().await?;
    let alice = user_endpoint(fed.provider("a.test"), "Alice", &[ALICE]).await?;
    let carol = user_endpoint(fed.provider("c.test"), "Carol", &[CAROL]).await?;
    fed.add_provider(&ProviderSpec::json("d.test")).await?;
    let dave = user_endpoint(fed.provider("d.test"), "Dave", &[DAVE]).await?;
    fed.sync().await?;
    let mut dave_push = dave.push_channel(PushMode::WebSocket).await?;

    // D runs but is not in the directory yet.
    let sid = session_id();
    let (status, code, message) = refused(alice.initiate(&sid, DAVE, b"o", &["audio"]).await);
    assert_eq!((status, code.as_str()), (404, "unknown-peer"), "{message}");

    // D joins.
    fed.publish(&["a.test", "b.test", "c.test", "d.test"])
        .await?;
    fed.sync().await?;
    let sid = session_id();
    let answer = alice.initiate(&sid, DAVE, b"o", &["audio"]).await?;
    assert_eq!(answer.string_array("providers")?, ["d.test"]);
    let ring = expect_push(&mut dave_push, "initiate").await?;
    assert_eq!(ring.str("session-id")?, sid);
    assert!(ring.opt_str("peer-attestation")? == Some("A"));

    // C leaves: A refuses C's requests and stops forwarding to it.
    assert_eq!(may_host(fed.fed("a.test"), CAROL), ["c.test"]);
    fed.publish(&["a.test", "b.test", "d.test"]).await?;
    let c = fed.fed("c.test");
    let a_entry = c.member("a.test").expect("C still knows A");
    let err = c
        .peers
        .request(
            &c.identity.current(),
            &a_entry,
            reqwest::Method::GET,
            "/federation/v1/bloom",
            None,
        )
        .await
        .expect_err("C is no member");
    match &err {
        PeerError::Refused { status, code, .. } => {
            assert_eq!((*status, code.as_str()), (403, "not-a-member"), "{err}")
        }
        other => panic!("expected a refusal, got {other}"),
    }
    // Carol's call to Alice dies at A's door.
    let (status, code, message) =
        refused(carol.initiate(&session_id(), ALICE, b"o", &["audio"]).await);
    assert_eq!(
        (status, code.as_str()),
        (504, "peers-unreachable"),
        "{message}"
    );
    assert!(message.contains("not-a-member"), "{message}");

    let a = fed.fed("a.test");
    assert!(may_host(a, CAROL).is_empty());
    let directory = a.directory.current().expect("directory");
    assert!(a
        .peers
        .status(Some(&directory), "a.test")
        .iter()
        .all(|s| s.provider_id != "c.test"));
    let sid = session_id();
    let (status, code, message) = refused(alice.initiate(&sid, CAROL, b"o", &["audio"]).await);
    assert_eq!((status, code.as_str()), (404, "unknown-peer"), "{message}");
    assert!(!has_record(fed.provider("c.test"), &sid).await?);

    // The remaining members still talk.
    let sid = session_id();
    alice.initiate(&sid, DAVE, b"o", &["audio"]).await?;
    assert_eq!(
        expect_push(&mut dave_push, "initiate")
            .await?
            .str("session-id")?,
        sid
    );
    fed.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_certificate_reload_keeps_answered_calls() -> anyhow::Result<()> {
    let mut fed = three().await?;
    let alice = user_endpoint(fed.provider("a.test"), "Alice", &[ALICE]).await?;
    let bob = user_endpoint(fed.provider("b.test"), "Bob", &[BOB]).await?;
    fed.sync().await?;
    let mut alice_push = alice.push_channel(PushMode::WebSocket).await?;
    let mut bob_push = bob.push_channel(PushMode::WebSocket).await?;

    let sid = session_id();
    alice.initiate(&sid, BOB, b"offer", &["audio"]).await?;
    let ring = expect_push(&mut bob_push, "initiate").await?;
    bob.accept(&ring, b"answer").await?;
    expect_push(&mut alice_push, "accept").await?;
    assert_eq!(
        fed.provider("a.test").call_record(&sid).await?["state"],
        "answered"
    );

    // A gets a new certificate and key; the directory lists the new fingerprint.
    let old = fed.fed("a.test").identity.current().fingerprint.clone();
    let names = ["localhost".to_string(), "127.0.0.1".to_string()];
    let issued = fed.ca.issue_provider("a.test", &names, 30)?;
    let (cert, key) = fed.cert_paths("a.test");
    std::fs::write(&cert, &issued.cert_pem)?;
    std::fs::write(&key, &issued.key_pem)?;
    let new = pki::certificate_fingerprint(&pki::load_certs(&cert)?[0]);
    assert_ne!(new, old);
    fed.publish(&["a.test", "b.test", "c.test"]).await?;
    fed.fed("a.test").identity.reload()?;
    assert_eq!(fed.fed("a.test").identity.current().fingerprint, new);

    // The answered call is hung up from B's side and A hears it.
    bob.cancel(&sid, BOB, ALICE, ring.str("state")?).await?;
    let ended = expect_push(&mut alice_push, "cancel").await?;
    assert_eq!(ended.str("session-id")?, sid);
    assert_eq!(ended.str("reason")?, "ended");
    assert_eq!(
        fed.provider("a.test").call_record(&sid).await?["state"],
        "ended"
    );

    // New calls both ways.
    let sid = session_id();
    let answer = bob.initiate(&sid, ALICE, b"b-offer", &["audio"]).await?;
    assert_eq!(answer.string_array("providers")?, ["a.test"]);
    let ring = expect_push(&mut alice_push, "initiate").await?;
    assert_eq!(ring.str("session-id")?, sid);
    alice.accept(&ring, b"a-answer").await?;
    expect_push(&mut bob_push, "accept").await?;
    alice.cancel(&sid, ALICE, BOB, ring.str("state")?).await?;
    assert_eq!(
        expect_push(&mut bob_push, "cancel").await?.str("reason")?,
        "ended"
    );

    let sid = session_id();
    alice.initiate(&sid, BOB, b"a-offer", &["audio"]).await?;
    let ring = expect_push(&mut bob_push, "initiate").await?;
    assert_eq!(ring.str("session-id")?, sid);
    assert!(
        ring.opt_str("peer-attestation")? == Some("A"),
        "signed with the new key"
    );

    // Nothing failed along the way.
    for (from, to) in [("a.test", "b.test"), ("b.test", "a.test")] {
        let f = fed.fed(from);
        let directory = f.directory.current().expect("directory");
        let status = f
            .peers
            .status(Some(&directory), from)
            .into_iter()
            .find(|s| s.provider_id == to)
            .expect("listed");
        assert_eq!(status.errors, 0, "{from} -> {to}: {:?}", status.last_error);
    }
    fed.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn peer_filters_update_incrementally_and_survive_a_restart() -> anyhow::Result<()> {
    let mut fed = three().await?;
    let a = fed.fed("a.test").clone();
    let b = fed.fed("b.test").clone();
    let before = b.own.stats().expect("B's filter").generation;
    assert_eq!(peer_generation(&a, "b.test"), Some(before));
    assert!(may_host(&a, BOB).is_empty());

    // A user added at B: B rebuilds after one change and notifies; A pulls the difference.
    fed.provider("b.test").add_user("Bob", &[BOB]).await?;
    eventually("B rebuilt its filter", || {
        b.own.stats().is_some_and(|s| s.generation != before)
    })
    .await?;
    let after = b.own.stats().expect("B's filter").generation;
    eventually("A holds B's new generation", || {
        peer_generation(&a, "b.test") == Some(after)
    })
    .await?;
    assert_eq!(may_host(&a, BOB), ["b.test"]);
    let (_, form) = b.own.update_since(Some(before)).expect("filter built");
    assert_eq!(form, "incremental");

    // A restarts while B is down: B's filter comes from A's database, no pull can help.
    fed.take("b.test").provider.shutdown().await;
    fed.restart("a.test", |_| {}).await?;
    let a = fed.fed("a.test").clone();
    eventually("B's filter loaded from the database", || {
        may_host(&a, BOB) == ["b.test"]
    })
    .await?;
    assert_eq!(peer_generation(&a, "b.test"), Some(after));
    fed.shutdown().await;
    Ok(())
}
