//! Calls across providers: four providers on loopback, each with its own database and
//! federation certificate, a signed discovery dictionary, Bloom filters, and Forwards.

use switchyard_endpoint::client::{EndpointClient, PushMode};
use switchyard_protocol::dict::Encoding;
use switchyard_provider::db::records::NewUser;
use switchyard_provider::db::registry::insert_users;
use switchyard_tests::federation::{ProviderSpec, TestFederation};
use switchyard_tests::*;

const ALICE: &str = "tel:+16502530000";
const DAVE: &str = "mailto:dave@d.example";

async fn four() -> anyhow::Result<TestFederation> {
    TestFederation::start(&[
        ProviderSpec::plist("a.test"),
        ProviderSpec::json("b.test"),
        ProviderSpec::plist("c.test"),
        ProviderSpec::json("d.test"),
    ])
    .await
}

async fn user_endpoint(
    h: &Harness,
    name: &str,
    uris: &[&str],
    encoding: Encoding,
) -> anyhow::Result<EndpointClient> {
    let id = h.add_user(name, uris).await?;
    h.endpoint(&id, uris[0], None, encoding).await
}

async fn has_record(h: &Harness, sid: &str) -> anyhow::Result<bool> {
    Ok(h.calls().await?.iter().any(|c| c["session_id"] == sid))
}

#[tokio::test]
async fn call_across_providers_is_answered_and_hung_up_in_plist_and_json() -> anyhow::Result<()> {
    let fed = four().await?;
    let alice = user_endpoint(fed.provider("a.test"), "Alice", &[ALICE], Encoding::Plist).await?;
    let dave = user_endpoint(fed.provider("d.test"), "Dave", &[DAVE], Encoding::Json).await?;
    fed.sync().await?;
    let mut alice_push = alice.push_channel(PushMode::WebSocket).await?;
    let mut dave_push = dave.push_channel(PushMode::LongPoll).await?;

    // A (plist on the wire) calls a URI at D; the callee's URI is written in another spelling.
    let sid = session_id();
    let answer = alice
        .initiate(
            &sid,
            "mailto:dave@D.Example",
            b"alice-offer",
            &["audio", "video"],
        )
        .await?;
    assert_eq!(answer.int("rung")?, 1);
    let ring = expect_push(&mut dave_push, "initiate").await?;
    assert_eq!(ring.str("peer-uri")?, ALICE);
    assert_eq!(ring.str("self-uri")?, DAVE);
    assert_eq!(ring.data("peer-blob")?, b"alice-offer");
    assert!(
        ring.opt_str("peer-attestation")? == Some("A"),
        "the caller's attestation verified"
    );
    assert_eq!(ring.str("peer-provider")?, "a.test");
    // The callee checks the caller's DTLS identity against the caller's provider's endpoint CA.
    assert_eq!(ring.str("peer-ca")?, fed.provider("a.test").ca_pem());
    // Only the provider whose filter holds the callee was asked.
    for other in ["b.test", "c.test"] {
        assert!(
            !has_record(fed.provider(other), &sid).await?,
            "{other} was asked"
        );
    }

    dave.accept(&ring, b"dave-answer").await?;
    let accepted = expect_push(&mut alice_push, "accept").await?;
    assert_eq!(accepted.data("peer-blob")?, b"dave-answer");
    assert_eq!(accepted.str("peer-token")?, dave.identity.push_token);
    assert_eq!(accepted.str("peer-provider")?, "d.test");
    assert_eq!(accepted.str("peer-ca")?, fed.provider("d.test").ca_pem());
    assert_eq!(
        fed.provider("a.test").call_record(&sid).await?["state"],
        "answered"
    );
    assert_eq!(
        fed.provider("d.test").call_record(&sid).await?["state"],
        "answered"
    );

    // The caller hangs up: the callee hears it through both providers.
    alice
        .cancel(&sid, ALICE, DAVE, answer.str("state")?)
        .await?;
    let ended = expect_push(&mut dave_push, "cancel").await?;
    assert_eq!(ended.str("reason")?, "ended");
    assert_eq!(
        fed.provider("d.test").call_record(&sid).await?["state"],
        "ended"
    );

    // D (JSON on the wire) calls back; Alice rejects; then the callee side hangs up a second call.
    let sid2 = session_id();
    let back = dave
        .initiate(&sid2, ALICE, b"dave-offer", &["audio"])
        .await?;
    assert_eq!(back.int("rung")?, 1);
    let ring = expect_push(&mut alice_push, "initiate").await?;
    assert_eq!(ring.str("peer-provider")?, "d.test");
    alice.reject(&ring, "busy", Some("in a meeting")).await?;
    let rejected = expect_push(&mut dave_push, "reject").await?;
    assert_eq!(rejected.str("reason")?, "busy");
    assert_eq!(rejected.str("reason-text")?, "in a meeting");
    assert_eq!(
        fed.provider("d.test").call_record(&sid2).await?["state"],
        "rejected"
    );

    let sid3 = session_id();
    dave.initiate(&sid3, ALICE, b"again", &["audio"]).await?;
    let ring = expect_push(&mut alice_push, "initiate").await?;
    alice.accept(&ring, b"ok").await?;
    expect_push(&mut dave_push, "accept").await?;
    alice.cancel(&sid3, ALICE, DAVE, ring.str("state")?).await?;
    let ended = expect_push(&mut dave_push, "cancel").await?;
    assert_eq!(ended.str("reason")?, "ended");
    assert_eq!(
        fed.provider("d.test").call_record(&sid3).await?["state"],
        "ended"
    );
    assert_eq!(
        fed.provider("a.test").call_record(&sid3).await?["state"],
        "ended"
    );

    // The caller cancels while it rings.
    let sid4 = session_id();
    let answer = alice.initiate(&sid4, DAVE, b"x", &["audio"]).await?;
    expect_push(&mut dave_push, "initiate").await?;
    alice
        .cancel(&sid4, ALICE, DAVE, answer.str("state")?)
        .await?;
    let cancelled = expect_push(&mut dave_push, "cancel").await?;
    assert_eq!(cancelled.str("reason")?, "cancelled");
    assert_eq!(
        fed.provider("d.test").call_record(&sid4).await?["state"],
        "cancelled"
    );
    fed.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn same_uri_at_two_providers_rings_both_and_first_accept_wins() -> anyhow::Result<()> {
    let fed = four().await?;
    const SHARED: &str = "tel:+442079460958";
    let alice = user_endpoint(fed.provider("a.test"), "Alice", &[ALICE], Encoding::Plist).await?;
    let at_b = user_endpoint(
        fed.provider("b.test"),
        "Shared B",
        &[SHARED],
        Encoding::Plist,
    )
    .await?;
    let at_c = user_endpoint(
        fed.provider("c.test"),
        "Shared C",
        &[SHARED],
        Encoding::Json,
    )
    .await?;
    fed.sync().await?;
    let mut alice_push = alice.push_channel(PushMode::WebSocket).await?;
    let mut b_push = at_b.push_channel(PushMode::WebSocket).await?;
    let mut c_push = at_c.push_channel(PushMode::WebSocket).await?;

    let sid = session_id();
    let answer = alice
        .initiate(&sid, "tel:+44 20 7946 0958", b"o", &["audio"])
        .await?;
    assert_eq!(answer.int("rung")?, 2);
    let ring_b = expect_push(&mut b_push, "initiate").await?;
    let ring_c = expect_push(&mut c_push, "initiate").await?;
    at_c.accept(&ring_c, b"from-c").await?;
    let accepted = expect_push(&mut alice_push, "accept").await?;
    assert_eq!(accepted.str("peer-provider")?, "c.test");
    let lost = expect_push(&mut b_push, "cancel").await?;
    assert_eq!(lost.str("reason")?, "answered-elsewhere");
    let late = at_b.accept(&ring_b, b"late").await.unwrap_err();
    assert!(
        late.to_string().contains("already-answered") || late.to_string().contains("call-ended"),
        "{late}"
    );
    expect_silence(&mut alice_push).await?;
    assert_eq!(
        fed.provider("b.test").call_record(&sid).await?["state"],
        "cancelled"
    );

    // Both reject: the caller hears one Reject once both providers said no.
    let sid = session_id();
    alice.initiate(&sid, SHARED, b"o", &["audio"]).await?;
    let ring_b = expect_push(&mut b_push, "initiate").await?;
    let ring_c = expect_push(&mut c_push, "initiate").await?;
    at_b.reject(&ring_b, "busy", None).await?;
    expect_silence(&mut alice_push).await?;
    at_c.reject(&ring_c, "declined", None).await?;
    let rejected = expect_push(&mut alice_push, "reject").await?;
    assert_eq!(rejected.str("reason")?, "declined");
    fed.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_saturated_filter_is_refused_and_the_previous_one_stays() -> anyhow::Result<()> {
    // C builds its filter for a 30% false-positive rate and at least 1,024 URIs: with one URI
    // the filter is nearly empty; filled to its capacity its bits are half set and it claims
    // about 30% of all URIs.
    let mut c = ProviderSpec::plist("c.test");
    c.false_positive_rate = 0.3;
    let fed = TestFederation::start(&[ProviderSpec::plist("a.test"), c]).await?;
    fed.provider("c.test")
        .add_user("C0", &["tel:+14155550000"])
        .await?;
    fed.sync().await?;
    let a_fed = fed.fed("a.test");
    let c_status = |a_fed: &switchyard_provider::federation::Federation| {
        let directory = a_fed.directory.current().expect("directory");
        a_fed
            .peers
            .status(Some(&directory), "a.test")
            .into_iter()
            .find(|p| p.provider_id == "c.test")
            .expect("C is a peer")
    };
    let good = c_status(a_fed);
    assert!(good.last_error.is_none(), "{:?}", good.last_error);
    let good_generation = good.generation.expect("A holds C's filter");

    let uris: Vec<Vec<String>> = (1..1024)
        .map(|i| vec![format!("tel:+1415556{i:04}")])
        .collect();
    let ids: Vec<String> = (1..1024).map(|i| format!("c-user-{i}")).collect();
    let users: Vec<NewUser<'_>> = ids
        .iter()
        .zip(&uris)
        .map(|(id, uris)| NewUser {
            id,
            display_name: "C",
            uris,
            created_at: 0,
        })
        .collect();
    let c_app = &fed.provider("c.test").provider.app;
    let mut tx = c_app.db.begin_write().await?;
    insert_users(&mut tx, &users).await?;
    tx.commit().await?;
    fed.sync().await?;
    let c_filter = fed.fed("c.test").own.stats().expect("C built its filter");
    assert!(c_filter.generation > good_generation, "C did not rebuild");
    let after = c_status(a_fed);
    assert_eq!(
        after.generation,
        Some(good_generation),
        "the saturated filter replaced the good one"
    );
    let error = after.last_error.unwrap_or_default();
    assert!(error.contains("false-positive rate"), "{error}");

    let directory = a_fed.directory.current().expect("directory");
    let asks_c = |uri: &str| {
        let (found, _) = a_fed.peers.candidates(&directory, "a.test", uri);
        found.iter().any(|m| m.provider_id == "c.test")
    };
    assert!(asks_c("tel:+14155550000"));
    let claimed = (0..2000)
        .map(|i| format!("tel:+1212555{i:04}"))
        .filter(|u| asks_c(u))
        .count();
    assert!(
        claimed < 20,
        "C's refused filter would claim ~600 of 2000; {claimed} claimed"
    );

    let metrics = fed.provider("a.test").metrics().await?;
    assert!(
        metrics.lines().any(|l| l.starts_with("switchyard_peer_filters_refused_total")
            && l.contains("c.test")),
        "no refusal counted"
    );
    fed.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_false_positive_is_dropped_and_the_call_goes_on() -> anyhow::Result<()> {
    // C's filter is sized for a high false-positive rate so that one is easy to find; A takes
    // filters that lax.
    let mut c = ProviderSpec::plist("c.test");
    c.false_positive_rate = 0.3;
    let fed = TestFederation::start(&[
        ProviderSpec::plist("a.test")
            .tune(|config| config.federation.peer_filter_max_false_positive_rate = 0.5),
        ProviderSpec::plist("b.test"),
        c,
    ])
    .await?;
    let alice = user_endpoint(fed.provider("a.test"), "Alice", &[ALICE], Encoding::Plist).await?;
    // Filled near its capacity (1,024 URIs at least): a split-block filter holding far fewer
    // URIs than it is sized for has almost no false positives.
    for user in 0..20 {
        let uris: Vec<String> = (0..60)
            .map(|i| format!("tel:+1415555{:04}", user * 60 + i))
            .collect();
        let uris: Vec<&str> = uris.iter().map(String::as_str).collect();
        fed.provider("c.test")
            .add_user(&format!("C{user}"), &uris)
            .await?;
    }
    // A URI hosted at B that C's filter also claims.
    let a_fed = fed.fed("a.test");
    let directory = a_fed.directory.current().expect("directory");
    fed.sync().await?;
    let c_only = |uri: &str| {
        let (found, _) = a_fed.peers.candidates(&directory, "a.test", uri);
        found.iter().any(|m| m.provider_id == "c.test")
    };
    let shared = (0..100_000)
        .map(|i| format!("tel:+1212555{i:04}"))
        .find(|u| c_only(u))
        .expect("a false positive at 30%");
    let at_b = user_endpoint(
        fed.provider("b.test"),
        "Bob",
        &[shared.as_str()],
        Encoding::Plist,
    )
    .await?;
    fed.sync().await?;
    let mut b_push = at_b.push_channel(PushMode::WebSocket).await?;
    let mut alice_push = alice.push_channel(PushMode::WebSocket).await?;

    let sid = session_id();
    let answer = alice.initiate(&sid, &shared, b"o", &["audio"]).await?;
    assert_eq!(answer.int("rung")?, 1);
    assert_eq!(answer.string_array("providers")?, ["b.test"]);
    let ring = expect_push(&mut b_push, "initiate").await?;
    at_b.reject(&ring, "busy", None).await?;
    let rejected = expect_push(&mut alice_push, "reject").await?;
    assert_eq!(rejected.str("reason")?, "busy");

    // A URI nobody hosts but C's filter claims: the caller gets a clear "not found".
    let nowhere = (0..100_000)
        .map(|i| format!("tel:+1312555{i:04}"))
        .find(|u| c_only(u))
        .expect("a false positive at 30%");
    let err = alice
        .initiate(&session_id(), &nowhere, b"o", &["audio"])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unknown-peer") && err.contains("false positive"),
        "{err}"
    );
    let metrics = fed.provider("a.test").metrics().await?;
    assert!(
        metrics.contains("switchyard_federation_false_positives_total"),
        "{metrics}"
    );
    fed.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn admin_api_shows_the_federation_and_resyncs() -> anyhow::Result<()> {
    let fed = TestFederation::start(&[ProviderSpec::plist("a.test"), ProviderSpec::json("b.test")])
        .await?;
    let b = fed.provider("b.test");
    b.add_user("Bob", &["mailto:bob@b.example"]).await?;
    // B rebuilds on the change in the background; have it done before A pulls.
    fed.fed("b.test").rebuild_filter().await?;
    let a = fed.provider("a.test");
    let (status, body) = a
        .admin_call(reqwest::Method::POST, "/admin/v1/federation/resync", None)
        .await?;
    assert_eq!(status, 200, "{body}");
    assert!(body["directory_error"].is_null(), "{body}");
    let (status, body) = a
        .admin_call(reqwest::Method::GET, "/admin/v1/federation", None)
        .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["directory"]["version"], fed.version);
    assert_eq!(
        body["directory"]["members"].as_array().map(Vec::len),
        Some(2)
    );
    let peers = body["peers"].as_array().expect("peers");
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0]["provider_id"], "b.test");
    let b_stats = fed.fed("b.test").own.stats().expect("b built its filter");
    assert_eq!(peers[0]["generation"], b_stats.generation);
    assert_eq!(peers[0]["items"], 1);
    assert!(peers[0]["estimated_false_positive_rate"].as_f64().is_some());
    assert_eq!(peers[0]["breaker_open"], false);
    assert!(body["filter"]["bits"].as_u64().unwrap_or(0) >= 1024);

    let metrics = a.metrics().await?;
    for name in [
        "switchyard_bloom_items",
        "switchyard_bloom_generation",
        "switchyard_bloom_estimated_false_positive_rate",
        "switchyard_bloom_sent_bytes_total",
        "switchyard_federation_peer_latency_seconds",
        "switchyard_federation_members",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }

    // A provider without federation says so.
    let plain = Harness::start().await?;
    let (status, body) = plain
        .admin_call(reqwest::Method::GET, "/admin/v1/federation", None)
        .await?;
    assert_eq!(status, 404);
    assert_eq!(body["error"], "federation-disabled");
    plain.provider.shutdown().await;
    fed.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_peer_presenting_another_certificate_than_listed_gets_nothing() -> anyhow::Result<()> {
    let mut fed =
        TestFederation::start(&[ProviderSpec::plist("a.test"), ProviderSpec::plist("b.test")])
            .await?;
    // The directory lists, for B, a certificate B does not hold (A's).
    let mut b = fed.member("b.test")?;
    b.certificate_sha256 = fed.member("a.test")?.certificate_sha256;
    let members = vec![fed.member("a.test")?, b];
    fed.write_directory(members, 86_400)?;
    fed.refresh_all().await?;
    let a = fed.fed("a.test");
    let b_member = a.member("b.test").expect("listed");
    let err = a
        .peers
        .pull(
            &fed.provider("a.test").provider.app.db,
            &a.identity.current(),
            &b_member,
            a.peers.false_positive_limit(None),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("discovery dictionary lists"), "{err}");
    // B's requests to A are refused too: its certificate is not the one listed.
    let b_fed = fed.fed("b.test");
    let a_member = b_fed.member("a.test").expect("listed");
    let err = b_fed
        .peers
        .request(
            &b_fed.identity.current(),
            &a_member,
            reqwest::Method::GET,
            "/federation/v1/bloom",
            None,
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("certificate-mismatch"), "{err}");
    fed.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_refused_forward_id_stays_used() -> anyhow::Result<()> {
    let fed =
        TestFederation::start(&[ProviderSpec::plist("a.test"), ProviderSpec::plist("b.test")])
            .await?;
    let client = fed.peer_client_of("b.test")?;
    let body = switchyard_protocol::dict::Dict::new()
        .with("session-id", session_id().as_str())
        .with("timestamp", switchyard_tests::federation::now_seconds())
        .with("forward-id", "b-forward-0000000001")
        .with("from-provider", "b.test")
        .with("reason", "cancelled")
        .encode(Encoding::Plist);
    let url = format!("{}/federation/v1/cancel", fed.federation_url("a.test"));
    let mut codes = Vec::new();
    for _ in 0..2 {
        let response = client
            .post(&url)
            .header("content-type", "application/x-plist")
            .body(body.clone())
            .send()
            .await?;
        let status = response.status().as_u16();
        let answer =
            switchyard_protocol::dict::Dict::decode(&response.bytes().await?, Encoding::Plist)?;
        codes.push((status, answer.str("error")?.to_string()));
    }
    assert_eq!(
        codes,
        [
            (404, "unknown-session".to_string()),
            (409, "replayed-forward".to_string())
        ]
    );
    fed.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn update_travels_between_providers_both_ways() -> anyhow::Result<()> {
    let fed = TestFederation::start(&[ProviderSpec::plist("a.test"), ProviderSpec::json("d.test")])
        .await?;
    let alice = user_endpoint(fed.provider("a.test"), "Alice", &[ALICE], Encoding::Plist).await?;
    let dave = user_endpoint(fed.provider("d.test"), "Dave", &[DAVE], Encoding::Json).await?;
    fed.sync().await?;
    let mut alice_push = alice.push_channel(PushMode::WebSocket).await?;
    let mut dave_push = dave.push_channel(PushMode::WebSocket).await?;

    let sid = session_id();
    let answer = alice.initiate(&sid, DAVE, b"offer", &["audio"]).await?;
    let state = answer.str("state")?.to_string();
    let ring = expect_push(&mut dave_push, "initiate").await?;
    alice
        .update(&sid, ALICE, DAVE, &state, b"ringing-update")
        .await?;
    let update = expect_push(&mut dave_push, "update").await?;
    assert_eq!(update.data("peer-blob")?, b"ringing-update");
    assert_eq!(update.str("peer-provider")?, "a.test");

    dave.accept(&ring, b"answer").await?;
    expect_push(&mut alice_push, "accept").await?;
    dave.update(&sid, DAVE, ALICE, ring.str("state")?, b"dave-relay")
        .await?;
    let update = expect_push(&mut alice_push, "update").await?;
    assert_eq!(update.data("peer-blob")?, b"dave-relay");
    assert_eq!(update.str("peer-provider")?, "d.test");
    assert_eq!(update.str("self-uri")?, ALICE);
    alice
        .update(&sid, ALICE, DAVE, &state, b"alice-path")
        .await?;
    let update = expect_push(&mut dave_push, "update").await?;
    assert_eq!(update.data("peer-blob")?, b"alice-path");

    alice.cancel(&sid, ALICE, DAVE, &state).await?;
    expect_push(&mut dave_push, "cancel").await?;
    let late = dave
        .update(&sid, DAVE, ALICE, ring.str("state")?, b"late")
        .await
        .unwrap_err();
    assert!(late.to_string().contains("call-ended"), "{late}");
    fed.shutdown().await;
    Ok(())
}

/// A TCP relay in front of a provider's federation listener that counts the connections made
/// through it: TLS passes through untouched, so the peer still checks the pinned certificate.
struct CountingRelay {
    addr: std::net::SocketAddr,
    connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl CountingRelay {
    async fn start(to: std::net::SocketAddr) -> anyhow::Result<CountingRelay> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = connections.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Ok(CountingRelay {
            addr,
            connections,
            task,
        })
    }

    fn count(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for CountingRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn concurrent_forwards_share_one_connection_each_way() -> anyhow::Result<()> {
    let mut fed =
        TestFederation::start(&[ProviderSpec::plist("a.test"), ProviderSpec::json("d.test")])
            .await?;
    let mut relays = Vec::new();
    let mut members = Vec::new();
    for id in ["a.test", "d.test"] {
        let listener = fed
            .provider(id)
            .provider
            .federation_addr
            .expect("federation listener");
        let relay = CountingRelay::start(listener).await?;
        let mut member = fed.member(id)?;
        member.base_uri = format!("https://{}", relay.addr);
        members.push(member);
        relays.push(relay);
    }
    fed.write_directory(members, 86_400)?;
    fed.refresh_all().await?;
    let alice = user_endpoint(fed.provider("a.test"), "Alice", &[ALICE], Encoding::Plist).await?;
    let dave = user_endpoint(fed.provider("d.test"), "Dave", &[DAVE], Encoding::Json).await?;
    fed.sync().await?;
    let mut alice_push = alice.push_channel(PushMode::WebSocket).await?;
    let mut dave_push = dave.push_channel(PushMode::WebSocket).await?;

    // One answered call first, so that each way has its connection before the load.
    let sid = session_id();
    alice.initiate(&sid, DAVE, b"offer", &["audio"]).await?;
    let ring = expect_push(&mut dave_push, "initiate").await?;
    dave.accept(&ring, b"answer").await?;
    expect_push(&mut alice_push, "accept").await?;
    let before: Vec<usize> = relays.iter().map(CountingRelay::count).collect();
    assert!(
        before.iter().all(|&n| n >= 1),
        "both ways went through the relays: {before:?}"
    );

    // Ten Initiate Forwards from A to D at once, then ten Accept Forwards back at once: over
    // HTTP/1.1 each would need a connection of its own.
    let calls = 10;
    let sids: Vec<String> = (0..calls).map(|_| session_id()).collect();
    futures_util::future::try_join_all(
        sids.iter()
            .map(|sid| alice.initiate(sid, DAVE, b"offer", &["audio"])),
    )
    .await?;
    let mut rings = Vec::new();
    for _ in 0..calls {
        rings.push(expect_push(&mut dave_push, "initiate").await?);
    }
    futures_util::future::try_join_all(rings.iter().map(|ring| dave.accept(ring, b"answer")))
        .await?;
    for _ in 0..calls {
        expect_push(&mut alice_push, "accept").await?;
    }
    for sid in &sids {
        assert_eq!(
            fed.provider("a.test").call_record(sid).await?["state"],
            "answered"
        );
    }
    let opened: Vec<usize> = relays
        .iter()
        .zip(&before)
        .map(|(relay, before)| relay.count() - before)
        .collect();
    // None, unless the connection of the first call was closed in between and made anew.
    assert!(
        opened.iter().all(|&n| n <= 1),
        "{calls} concurrent calls opened {opened:?} connections (to a.test, to d.test)"
    );
    fed.shutdown().await;
    Ok(())
}
