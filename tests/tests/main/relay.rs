//! The TURN relay: credentials from the endpoint API, allocations and relaying both ways with the
//! webrtc-rs `turn` client and with coturn's `turnutils_uclient`, expired and revoked credentials,
//! forbidden peers and quotas.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use switchyard_endpoint::client::EndpointClient;
use switchyard_protocol::dict::{Dict, Encoding, Value};
use switchyard_provider::relay::auth::{rest_password, rest_username, unix_now};
use switchyard_provider::relay::turn::client::Client;
use switchyard_provider::relay::webrtc_util::Conn;
use switchyard_provider::Config;
use switchyard_tests::{test_config, Harness};
use tokio::net::UdpSocket;

const REALM: &str = "test.switchyard.invalid";

async fn relay_config() -> anyhow::Result<(Config, tempfile::TempDir)> {
    let (mut config, dir) = test_config().await?;
    config.relay.enabled = true;
    config.relay.listen = "127.0.0.1:0".parse()?;
    config.relay.allow_loopback_peers = true;
    Ok((config, dir))
}

struct Creds {
    username: String,
    password: String,
    realm: String,
    uri: String,
}

async fn credentials(client: &EndpointClient) -> anyhow::Result<Creds> {
    let dict = client.request("relay-credentials", &Dict::new()).await?;
    let uris = match dict.get("uris") {
        Some(Value::Array(uris)) => uris.clone(),
        other => bail!("uris: {other:?}"),
    };
    let uri = match uris.first() {
        Some(Value::String(uri)) => uri.clone(),
        other => bail!("uris[0]: {other:?}"),
    };
    Ok(Creds {
        username: dict.str("username")?.to_string(),
        password: dict.str("password")?.to_string(),
        realm: dict.str("realm")?.to_string(),
        uri,
    })
}

async fn endpoint(h: &Harness, name: &str) -> anyhow::Result<EndpointClient> {
    let uri = format!("mailto:{name}@example.com");
    let user = h.add_user(name, &[&uri]).await?;
    h.endpoint(&user, &uri, None, Encoding::Json).await
}

/// A `turn` client on its own loopback socket, listening.
async fn turn_client(server: SocketAddr, username: &str, password: &str) -> anyhow::Result<Client> {
    let conn = UdpSocket::bind("127.0.0.1:0").await?;
    Ok(
        switchyard_provider::relay::turn_client(server, username, password, "", Arc::new(conn))
            .await?,
    )
}

fn relay_addr(h: &Harness) -> SocketAddr {
    h.provider.relay_addr.expect("relay enabled")
}

async fn allocate(
    h: &Harness,
    username: &str,
    password: &str,
) -> anyhow::Result<(Client, impl Conn)> {
    let client = turn_client(relay_addr(h), username, password).await?;
    let relayed = tokio::time::timeout(Duration::from_secs(5), client.allocate())
        .await
        .context("allocate timed out")??;
    Ok((client, relayed))
}

async fn recv_within(socket: &UdpSocket, wait: Duration) -> Option<(Vec<u8>, SocketAddr)> {
    let mut buf = vec![0u8; 1500];
    match tokio::time::timeout(wait, socket.recv_from(&mut buf)).await {
        Ok(Ok((n, from))) => Some((buf[..n].to_vec(), from)),
        _ => None,
    }
}

async fn relayed_recv_within(conn: &impl Conn, wait: Duration) -> Option<(Vec<u8>, SocketAddr)> {
    let mut buf = vec![0u8; 1500];
    match tokio::time::timeout(wait, conn.recv_from(&mut buf)).await {
        Ok(Ok((n, from))) => Some((buf[..n].to_vec(), from)),
        _ => None,
    }
}

#[tokio::test]
async fn endpoint_gets_credentials_and_the_turn_client_relays_both_ways() -> anyhow::Result<()> {
    let (config, dir) = relay_config().await?;
    let h = Harness::start_with(config, dir).await?;
    let alice = endpoint(&h, "alice").await?;
    let creds = credentials(&alice).await?;
    assert_eq!(creds.realm, REALM);
    assert_eq!(
        creds.uri,
        format!("turn:127.0.0.1:{}?transport=udp", relay_addr(&h).port())
    );
    let (expiry, id) = creds.username.split_once(':').context("username")?;
    assert_eq!(id, alice.identity.endpoint_id);
    let expiry: u64 = expiry.parse()?;
    assert!((unix_now() + 590..=unix_now() + 600).contains(&expiry));
    let dict = alice.request("relay-credentials", &Dict::new()).await?;
    assert_eq!(dict.int("ttl")?, 600);

    // The route needs the endpoint's certificate.
    let anonymous = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()?;
    let status = anonymous
        .post(format!("{}/v1/relay-credentials", h.provider_url))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0);
    assert_ne!(status, 200);

    let (client, relayed) = allocate(&h, &creds.username, &creds.password).await?;
    let relayed_addr = relayed.local_addr()?;
    assert_eq!(relayed_addr.ip().to_string(), "127.0.0.1");
    let relay = h.provider.relay().expect("relay");
    assert_eq!(relay.state.allocation_count(Some(id)), 1);

    let peer = UdpSocket::bind("127.0.0.1:0").await?;
    let peer_addr = peer.local_addr()?;
    // The first datagrams go as Send indications, later ones over a bound channel (ChannelData).
    for i in 0..20u8 {
        relayed.send_to(&[b'c', i], peer_addr).await?;
        let (data, from) = recv_within(&peer, Duration::from_secs(3))
            .await
            .with_context(|| format!("datagram {i} to the peer"))?;
        assert_eq!(data, [b'c', i]);
        assert_eq!(from, relayed_addr);
        peer.send_to(&[b'p', i], relayed_addr).await?;
        let (data, from) = relayed_recv_within(&relayed, Duration::from_secs(3))
            .await
            .with_context(|| format!("datagram {i} from the peer"))?;
        assert_eq!(data, [b'p', i]);
        assert_eq!(from, peer_addr);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let metrics = h.provider.app.metrics.render();
    assert!(
        metrics.contains("switchyard_relay_bytes_total"),
        "{metrics}"
    );

    relayed.close().await?;
    client.close().await?;
    h.provider.shutdown().await;
    Ok(())
}

/// Runs coturn's reference client against the relay: two clients talking to each other through
/// their allocations; it must finish with no packet lost.
async fn uclient(h: &Harness, creds: &Creds, extra: &[&str]) -> anyhow::Result<String> {
    let port = relay_addr(h).port().to_string();
    let mut args = vec![
        "-u",
        &creds.username,
        "-w",
        &creds.password,
        "-p",
        &port,
        "-e",
        "127.0.0.1",
        "-n",
        "50",
        "-m",
        "1",
        "-l",
        "120",
        "-y",
        "-c",
    ];
    args.extend_from_slice(extra);
    args.push("127.0.0.1");
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("turnutils_uclient")
            .args(&args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("turnutils_uclient timed out")?
    .context(
        "running turnutils_uclient (Debian package coturn; scripts/ensure-packages.sh installs it)",
    )?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    anyhow::ensure!(output.status.success(), "uclient failed: {text}");
    Ok(text)
}

fn lost_packets(report: &str) -> Option<u64> {
    let line = report.lines().find(|l| l.contains("Total lost packets"))?;
    let after = line.split("Total lost packets").nth(1)?;
    after.split_whitespace().next()?.parse().ok()
}

/// `tot_recv_msgs` of the final summary line (`start_mclient: tot_send_msgs=N, tot_recv_msgs=M`).
fn received_packets(report: &str) -> Option<u64> {
    let line = report
        .lines()
        .rev()
        .find(|l| l.contains("tot_recv_msgs=") && !l.contains("msz="))?;
    let after = line.split("tot_recv_msgs=").nth(1)?;
    after
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[tokio::test]
async fn coturn_uclient_relays_through_the_provider_without_loss() -> anyhow::Result<()> {
    let (mut config, dir) = relay_config().await?;
    config.relay.max_allocations_per_endpoint = 8;
    let h = Harness::start_with(config, dir).await?;
    let alice = endpoint(&h, "alice").await?;
    let creds = credentials(&alice).await?;
    // Channels (ChannelBind + ChannelData), then Send/Data indications (-s).
    for extra in [&[][..], &["-s"][..]] {
        let report = uclient(&h, &creds, extra).await?;
        let lost = lost_packets(&report)
            .with_context(|| format!("no loss figure in the report:\n{report}"))?;
        assert_eq!(lost, 0, "{report}");
        // One client each way, 50 messages each.
        assert_eq!(received_packets(&report), Some(100), "{report}");
    }
    h.provider.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn expired_and_forged_credentials_are_refused() -> anyhow::Result<()> {
    let (config, dir) = relay_config().await?;
    let h = Harness::start_with(config, dir).await?;
    let alice = endpoint(&h, "alice").await?;
    let creds = credentials(&alice).await?;
    let secret = std::fs::read_to_string(h.dir.path().join("relay-secret"))?;
    let secret = secret.trim().as_bytes();
    assert_eq!(rest_password(secret, &creds.username), creds.password);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(h.dir.path().join("relay-secret"))?.permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    let expired = rest_username(unix_now() - 5, &alice.identity.endpoint_id);
    let password = rest_password(secret, &expired);
    assert!(allocate(&h, &expired, &password).await.is_err());

    let (_, id) = creds.username.split_once(':').unwrap();
    let stretched = rest_username(unix_now() + 86_400, id);
    assert!(allocate(&h, &stretched, &creds.password).await.is_err());
    assert!(allocate(&h, &creds.username, "wrong").await.is_err());
    assert_eq!(h.provider.relay().unwrap().state.allocation_count(None), 0);

    // The genuine ones still work.
    let (client, relayed) = allocate(&h, &creds.username, &creds.password).await?;
    relayed.close().await?;
    client.close().await?;
    h.provider.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn revoked_endpoint_loses_its_allocations_and_is_refused() -> anyhow::Result<()> {
    let (config, dir) = relay_config().await?;
    let h = Harness::start_with(config, dir).await?;
    let bob = endpoint(&h, "bob").await?;
    let creds = credentials(&bob).await?;
    let id = bob.identity.endpoint_id.clone();
    let (_client, _relayed) = allocate(&h, &creds.username, &creds.password).await?;
    let relay = h.provider.relay().unwrap().clone();
    assert_eq!(relay.state.allocation_count(Some(&id)), 1);

    let (status, body) = h
        .admin_call(
            reqwest::Method::POST,
            &format!("/admin/v1/endpoints/{id}/revoke"),
            None,
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while relay.state.allocation_count(Some(&id)) > 0 {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the revoked endpoint's allocation is still there"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(allocate(&h, &creds.username, &creds.password)
        .await
        .is_err());
    // And it gets no new credentials.
    assert!(bob
        .request("relay-credentials", &Dict::new())
        .await
        .is_err());
    h.provider.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn forbidden_peers_get_nothing_relayed() -> anyhow::Result<()> {
    let (mut config, dir) = relay_config().await?;
    config.relay.allow_loopback_peers = false;
    let h = Harness::start_with(config, dir).await?;
    let alice = endpoint(&h, "alice").await?;
    let creds = credentials(&alice).await?;
    let (client, relayed) = allocate(&h, &creds.username, &creds.password).await?;
    let relayed_addr = relayed.local_addr()?;
    let peer = UdpSocket::bind("127.0.0.1:0").await?;
    let peer_addr = peer.local_addr()?;
    for i in 0..5u8 {
        // The turn client's CreatePermission is refused (403); the peer must see nothing.
        assert!(relayed.send_to(&[i], peer_addr).await.is_err());
        peer.send_to(&[i], relayed_addr).await?;
    }
    assert!(recv_within(&peer, Duration::from_millis(800))
        .await
        .is_none());
    assert!(relayed_recv_within(&relayed, Duration::from_millis(800))
        .await
        .is_none());
    // The permission was answered 403 by the relay, and the peer's datagrams were discarded.
    let metrics = h.provider.app.metrics.render();
    for direction in ["permission", "from-peer"] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("switchyard_relay_peer_refused_total")
                    && l.contains(&format!("direction=\"{direction}\""))),
            "{direction}: {metrics}"
        );
    }
    relayed.close().await?;
    client.close().await?;
    h.provider.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn allocation_quotas_per_endpoint_and_in_total() -> anyhow::Result<()> {
    let (mut config, dir) = relay_config().await?;
    config.relay.max_allocations_per_endpoint = 2;
    config.relay.max_allocations = 3;
    let h = Harness::start_with(config, dir).await?;
    let alice = endpoint(&h, "alice").await?;
    let bob = endpoint(&h, "bob").await?;
    let a = credentials(&alice).await?;
    let a2 = credentials(&alice).await?;
    let b = credentials(&bob).await?;
    let mut held = Vec::new();
    held.push(allocate(&h, &a.username, &a.password).await?);
    held.push(allocate(&h, &a2.username, &a2.password).await?);
    // Fresh credentials do not reset the endpoint's quota.
    assert!(allocate(&h, &a2.username, &a2.password).await.is_err());
    held.push(allocate(&h, &b.username, &b.password).await?);
    // The relay's total is reached.
    assert!(allocate(&h, &b.username, &b.password).await.is_err());
    let relay = h.provider.relay().unwrap().clone();
    assert_eq!(relay.state.allocation_count(None), 3);

    // Closing one allocation gives its slot back.
    let (client, relayed) = held.remove(0);
    relayed.close().await?;
    client.close().await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while relay.state.allocation_count(None) > 2 {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "slot not released");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    held.push(allocate(&h, &a.username, &a.password).await?);
    h.provider.shutdown().await;
    Ok(())
}

/// One source allocating faster than `relay.allocations_per_second_per_source`: past its burst
/// the Allocate fails (486), and once its bucket refills it allocates again.
#[tokio::test]
async fn one_source_is_held_to_its_allocation_rate() -> anyhow::Result<()> {
    let (mut config, dir) = relay_config().await?;
    config.relay.allocations_per_second_per_source = 1;
    config.relay.allocation_burst_per_source = 2;
    let h = Harness::start_with(config, dir).await?;
    let alice = endpoint(&h, "alice").await?;
    let a = credentials(&alice).await?;
    let mut held = Vec::new();
    // Each allocation is one Allocate with credentials that reaches the server.
    held.push(allocate(&h, &a.username, &a.password).await?);
    held.push(allocate(&h, &a.username, &a.password).await?);
    assert!(allocate(&h, &a.username, &a.password).await.is_err());
    let metrics = h.metrics().await?;
    assert!(
        metrics.contains("switchyard_relay_refused_total{reason=\"source-rate\"}"),
        "{metrics}"
    );
    for (client, relayed) in held.drain(..) {
        relayed.close().await?;
        client.close().await?;
    }
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    held.push(allocate(&h, &a.username, &a.password).await?);
    h.provider.shutdown().await;
    Ok(())
}

/// A raw Allocate request (RFC 8656 §7.1), with long-term credentials once `nonce` is known.
fn allocate_request(id: [u8; 12], auth: Option<(&Creds, &str)>) -> anyhow::Result<Vec<u8>> {
    use stun::agent::TransactionId;
    use stun::attributes::{ATTR_NONCE, ATTR_REALM, ATTR_USERNAME};
    use stun::integrity::MessageIntegrity;
    use stun::message::{Message, MessageType, Setter, CLASS_REQUEST, METHOD_ALLOCATE};
    use stun::textattrs::TextAttribute;
    use switchyard_provider::relay::turn::proto::{reqtrans::RequestedTransport, PROTO_UDP};

    let mut setters: Vec<Box<dyn Setter>> = vec![
        Box::new(TransactionId(id)),
        Box::new(MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST)),
        Box::new(RequestedTransport {
            protocol: PROTO_UDP,
        }),
    ];
    if let Some((creds, nonce)) = auth {
        setters.push(Box::new(TextAttribute::new(
            ATTR_USERNAME,
            creds.username.clone(),
        )));
        setters.push(Box::new(TextAttribute::new(
            ATTR_REALM,
            creds.realm.clone(),
        )));
        setters.push(Box::new(TextAttribute::new(ATTR_NONCE, nonce.to_string())));
        setters.push(Box::new(MessageIntegrity::new_long_term_integrity(
            creds.username.clone(),
            creds.realm.clone(),
            creds.password.clone(),
        )));
    }
    let mut m = Message::new();
    m.build(&setters)?;
    Ok(m.raw)
}

/// The STUN message type and transaction id of an answer.
fn answer_of(bytes: &[u8]) -> anyhow::Result<(u16, [u8; 12], stun::message::Message)> {
    let mut m = stun::message::Message::new();
    m.raw = bytes.to_vec();
    m.decode()?;
    Ok((m.typ.value(), m.transaction_id.0, m))
}

/// RFC 8656 §7.2: a retransmitted Allocate (its success response lost) gets the same success
/// response again, not `437 Allocation Mismatch`; a new Allocate on the same 5-tuple is still a
/// mismatch.
#[tokio::test]
async fn a_retransmitted_allocate_gets_the_same_success_response() -> anyhow::Result<()> {
    use stun::attributes::ATTR_NONCE;
    use stun::error_code::ErrorCodeAttribute;
    use stun::message::Getter;
    use stun::textattrs::TextAttribute;

    let (config, dir) = relay_config().await?;
    let h = Harness::start_with(config, dir).await?;
    let alice = endpoint(&h, "alice").await?;
    let creds = credentials(&alice).await?;
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    let server = relay_addr(&h);
    let exchange = |request: Vec<u8>| {
        let socket = &socket;
        async move {
            socket.send_to(&request, server).await?;
            let (bytes, from) = recv_within(socket, Duration::from_secs(3))
                .await
                .context("no answer from the relay")?;
            anyhow::ensure!(from == server);
            anyhow::Ok(bytes)
        }
    };

    // The first try is refused 401 with the nonce to use.
    let unauthenticated = exchange(allocate_request([1; 12], None)?).await?;
    let (typ, _, challenge) = answer_of(&unauthenticated)?;
    assert_eq!(typ, 0x0113, "401 error response");
    let nonce = TextAttribute::get_from_as(&challenge, ATTR_NONCE)?.text;

    let request = allocate_request([2; 12], Some((&creds, &nonce)))?;
    let first = exchange(request.clone()).await?;
    let (typ, id, _) = answer_of(&first)?;
    assert_eq!((typ, id), (0x0103, [2; 12]), "Allocate success");
    let again = exchange(request).await?;
    assert_eq!(
        again, first,
        "the retransmission gets the same success response"
    );
    let relay = h.provider.relay().expect("relay");
    assert_eq!(
        relay
            .state
            .allocation_count(Some(&alice.identity.endpoint_id)),
        1
    );

    // Another transaction on the same 5-tuple: the allocation exists, so it is a mismatch.
    let other = exchange(allocate_request([3; 12], Some((&creds, &nonce)))?).await?;
    let (typ, id, mismatch) = answer_of(&other)?;
    assert_eq!((typ, id), (0x0113, [3; 12]));
    let mut code = ErrorCodeAttribute::default();
    code.get_from(&mismatch)?;
    assert_eq!(code.code.0, 437);
    h.provider.shutdown().await;
    Ok(())
}
