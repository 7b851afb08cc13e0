//! The HTTP relay (`/v1/media-relay`): WebSocket and long-poll allocations relaying to and from a
//! loopback UDP peer, forbidden peers, the per-endpoint quota, ids bound to their endpoint, and
//! malformed frames.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;
use switchyard_endpoint::client::EndpointClient;
use switchyard_protocol::dict::Encoding;
use switchyard_protocol::relay_frame::{
    append_length_prefixed, split_length_prefixed, Datagram, Frame, FrameError, DATA,
};
use switchyard_provider::relay::http::tokio_tungstenite::tungstenite::client::IntoClientRequest;
use switchyard_provider::relay::http::tokio_tungstenite::tungstenite::Message;
use switchyard_provider::relay::http::tokio_tungstenite::{self, MaybeTlsStream, WebSocketStream};
use switchyard_provider::Config;
use switchyard_tests::{test_config, Harness};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::timeout;

const STEP: Duration = Duration::from_secs(5);
const QUIET: Duration = Duration::from_millis(500);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn harness(allow_loopback: bool, per_endpoint: u32) -> anyhow::Result<Harness> {
    let (mut config, dir): (Config, _) = test_config().await?;
    config.relay.enabled = true;
    config.relay.listen = "127.0.0.1:0".parse()?;
    config.relay.allow_loopback_peers = allow_loopback;
    config.relay.max_allocations_per_endpoint = per_endpoint;
    Harness::start_with(config, dir).await
}

async fn endpoint(h: &Harness, name: &str) -> anyhow::Result<EndpointClient> {
    let uri = format!("mailto:{name}@example.com");
    let user = h.add_user(name, &[&uri]).await?;
    h.endpoint(&user, &uri, None, Encoding::Json).await
}

fn url(client: &EndpointClient, path: &str) -> String {
    format!("{}{path}", client.identity.provider)
}

/// Opens `GET /v1/media-relay` as a WebSocket presenting the endpoint's certificate.
async fn connect_ws(client: &EndpointClient) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    switchyard_provider::server::install_crypto_provider();
    let id = &client.identity;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(id.ca_certificate_pem.as_bytes()) {
        roots.add(cert.expect("CA")).expect("CA");
    }
    let chain = CertificateDer::pem_slice_iter(id.certificate_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("certificate");
    let key = PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes()).expect("key");
    let mut tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("client auth");
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let request = url(client, "/v1/media-relay")
        .replacen("https://", "wss://", 1)
        .into_client_request()?;
    let (socket, _) = timeout(
        STEP,
        tokio_tungstenite::connect_async_tls_with_config(
            request,
            None,
            false,
            Some(tokio_tungstenite::Connector::Rustls(Arc::new(tls))),
        ),
    )
    .await
    .expect("WebSocket connect timed out")?;
    Ok(socket)
}

/// The next binary message on the WebSocket.
async fn next_binary(ws: &mut Ws) -> anyhow::Result<Vec<u8>> {
    loop {
        match timeout(STEP, ws.next()).await.context("no frame in time")? {
            Some(Ok(Message::Binary(b))) => return Ok(b.to_vec()),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => bail!("expected a binary frame, got {other:?}"),
        }
    }
}

fn parse_allocated(frame: &[u8]) -> anyhow::Result<SocketAddr> {
    match Frame::decode(frame)? {
        Frame::Allocated(addr) => Ok(addr),
        Frame::Data(_) => bail!("not ALLOCATED: {frame:?}"),
    }
}

fn parse_data(frame: &[u8]) -> anyhow::Result<(SocketAddr, Vec<u8>)> {
    let datagram = Datagram::decode(frame)?;
    Ok((datagram.peer(), datagram.payload().to_vec()))
}

fn data_frame(peer: SocketAddr, payload: &[u8]) -> Vec<u8> {
    Datagram::new(peer, payload).expect("payload").encode()
}

/// A long-poll body of `frames`, malformed ones included.
fn join_frames<'a>(frames: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut body = Vec::new();
    for frame in frames {
        append_length_prefixed(&mut body, frame).expect("frame length");
    }
    body
}

fn split_frames(body: &[u8]) -> Result<Vec<&[u8]>, FrameError> {
    split_length_prefixed(body).collect()
}

async fn peer() -> anyhow::Result<(UdpSocket, SocketAddr)> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    let addr = socket.local_addr()?;
    Ok((socket, addr))
}

async fn peer_recv(peer: &UdpSocket) -> anyhow::Result<(Vec<u8>, SocketAddr)> {
    let mut buf = vec![0u8; 2048];
    let (n, from) = timeout(STEP, peer.recv_from(&mut buf))
        .await
        .context("nothing reached the peer")??;
    Ok((buf[..n].to_vec(), from))
}

async fn peer_silent(peer: &UdpSocket) -> anyhow::Result<()> {
    let mut buf = vec![0u8; 2048];
    if let Ok(got) = timeout(QUIET, peer.recv_from(&mut buf)).await {
        bail!("the peer received something: {got:?}");
    }
    Ok(())
}

/// `POST /v1/media-relay`: (status, JSON body).
async fn create(client: &EndpointClient) -> anyhow::Result<(u16, Value)> {
    let response = timeout(
        STEP,
        client
            .raw_http()
            .post(url(client, "/v1/media-relay"))
            .header("accept", "application/json")
            .send(),
    )
    .await??;
    let status = response.status().as_u16();
    let body = response.bytes().await?;
    Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
}

async fn create_ok(client: &EndpointClient) -> anyhow::Result<(String, SocketAddr)> {
    let (status, body) = create(client).await?;
    anyhow::ensure!(status == 200, "create: {status} {body}");
    let id = body["id"].as_str().context("id")?.to_string();
    let address = body["address"].as_str().context("address")?.parse()?;
    Ok((id, address))
}

/// `POST /v1/media-relay/{id}/send`: (status, body).
async fn send(client: &EndpointClient, id: &str, body: Vec<u8>) -> anyhow::Result<(u16, Value)> {
    let response = timeout(
        STEP,
        client
            .raw_http()
            .post(url(client, &format!("/v1/media-relay/{id}/send")))
            .header("content-type", "application/octet-stream")
            .header("accept", "application/json")
            .body(body)
            .send(),
    )
    .await??;
    let status = response.status().as_u16();
    let body = response.bytes().await?;
    Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
}

/// `GET /v1/media-relay/{id}/recv?wait=MS`: (status, body bytes).
async fn recv(client: &EndpointClient, id: &str, wait_ms: u64) -> anyhow::Result<(u16, Vec<u8>)> {
    let response = timeout(
        Duration::from_millis(wait_ms) + STEP,
        client
            .raw_http()
            .get(url(
                client,
                &format!("/v1/media-relay/{id}/recv?wait={wait_ms}"),
            ))
            .header("accept", "application/json")
            .send(),
    )
    .await??;
    let status = response.status().as_u16();
    Ok((status, response.bytes().await?.to_vec()))
}

async fn delete(client: &EndpointClient, id: &str) -> anyhow::Result<u16> {
    let response = timeout(
        STEP,
        client
            .raw_http()
            .delete(url(client, &format!("/v1/media-relay/{id}")))
            .send(),
    )
    .await??;
    Ok(response.status().as_u16())
}

#[tokio::test]
async fn websocket_relays_both_ways() -> anyhow::Result<()> {
    let h = harness(true, 4).await?;
    let alice = endpoint(&h, "alice").await?;
    let mut ws = connect_ws(&alice).await?;
    let public = parse_allocated(&next_binary(&mut ws).await?)?;
    assert_eq!(public.ip().to_string(), "127.0.0.1");
    assert_ne!(public.port(), 0);

    let (peer, peer_addr) = peer().await?;
    ws.send(Message::Binary(data_frame(peer_addr, b"hello peer").into()))
        .await?;
    let (payload, from) = peer_recv(&peer).await?;
    assert_eq!(payload, b"hello peer");
    assert_eq!(from, public, "sent from the allocation");

    peer.send_to(b"hello endpoint", public).await?;
    let (from, payload) = parse_data(&next_binary(&mut ws).await?)?;
    assert_eq!(from, peer_addr);
    assert_eq!(payload, b"hello endpoint");

    // Closing frees the allocation: the socket stops answering for the endpoint.
    ws.close(None).await?;
    drop(ws);
    h.provider.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn long_poll_relays_both_ways() -> anyhow::Result<()> {
    let h = harness(true, 4).await?;
    let alice = endpoint(&h, "alice").await?;
    let (id, public) = create_ok(&alice).await?;
    assert!(id.len() >= 16, "id {id}");
    assert_eq!(public.ip().to_string(), "127.0.0.1");

    // Nothing queued: an empty answer after the wait.
    let started = std::time::Instant::now();
    let (status, body) = recv(&alice, &id, 300).await?;
    assert_eq!((status, body.len()), (200, 0));
    assert!(started.elapsed() >= Duration::from_millis(250));

    let (peer, peer_addr) = peer().await?;
    let body = join_frames([
        &data_frame(peer_addr, b"one")[..],
        &data_frame(peer_addr, b"two")[..],
    ]);
    assert_eq!(send(&alice, &id, body).await?.0, 204);
    for expected in [&b"one"[..], b"two"] {
        let (payload, from) = peer_recv(&peer).await?;
        assert_eq!(payload, expected);
        assert_eq!(from, public);
    }

    // A waiting poll answers as soon as a datagram arrives.
    let waiting = {
        let alice_http = alice.raw_http();
        let u = url(&alice, &format!("/v1/media-relay/{id}/recv?wait=10000"));
        tokio::spawn(async move { alice_http.get(u).send().await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    peer.send_to(b"back", public).await?;
    let response = timeout(STEP, waiting).await???;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/octet-stream"
    );
    let body = response.bytes().await?;
    let frames = split_frames(&body).context("length-prefixed body")?;
    assert_eq!(frames.len(), 1);
    assert_eq!(parse_data(frames[0])?, (peer_addr, b"back".to_vec()));

    // Several queued datagrams come in one answer.
    peer.send_to(b"a", public).await?;
    peer.send_to(b"b", public).await?;
    let mut got = Vec::new();
    while got.len() < 2 {
        let (status, body) = recv(&alice, &id, 3000).await?;
        assert_eq!(status, 200);
        anyhow::ensure!(!body.is_empty(), "datagrams lost");
        for frame in split_frames(&body).context("body")? {
            got.push(parse_data(frame)?.1);
        }
    }
    assert_eq!(got, [b"a".to_vec(), b"b".to_vec()]);

    assert_eq!(delete(&alice, &id).await?, 204);
    assert_eq!(recv(&alice, &id, 0).await?.0, 404);
    assert_eq!(delete(&alice, &id).await?, 404);
    h.provider.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn forbidden_peers_get_nothing() -> anyhow::Result<()> {
    let h = harness(false, 4).await?;
    let alice = endpoint(&h, "alice").await?;
    let (peer, peer_addr) = peer().await?;

    let mut ws = connect_ws(&alice).await?;
    let ws_public = parse_allocated(&next_binary(&mut ws).await?)?;
    ws.send(Message::Binary(data_frame(peer_addr, b"no").into()))
        .await?;
    peer_silent(&peer).await?;
    peer.send_to(b"no", ws_public).await?;
    if let Ok(got) = timeout(QUIET, ws.next()).await {
        bail!("a forbidden peer's datagram was relayed: {got:?}");
    }

    let (id, public) = create_ok(&alice).await?;
    let (status, _) = send(
        &alice,
        &id,
        join_frames([&data_frame(peer_addr, b"no")[..]]),
    )
    .await?;
    assert_eq!(status, 204, "refused destinations are dropped silently");
    peer_silent(&peer).await?;
    peer.send_to(b"no", public).await?;
    let (status, body) = recv(&alice, &id, 500).await?;
    assert_eq!((status, body.len()), (200, 0));
    h.provider.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn allocations_are_limited_per_endpoint() -> anyhow::Result<()> {
    let h = harness(true, 2).await?;
    let alice = endpoint(&h, "alice").await?;
    let bob = endpoint(&h, "bob").await?;
    let (first, _) = create_ok(&alice).await?;
    let mut ws = connect_ws(&alice).await?;
    parse_allocated(&next_binary(&mut ws).await?)?;

    let (status, body) = create(&alice).await?;
    assert_eq!(status, 429);
    assert_eq!(body["error"], "quota-exceeded");
    match connect_ws(&alice).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 429)
        }
        other => bail!("expected 429, got {:?}", other.map(|_| ())),
    }
    // Other endpoints have their own quota.
    create_ok(&bob).await?;

    // Freeing one (DELETE, or closing the WebSocket) makes room again.
    assert_eq!(delete(&alice, &first).await?, 204);
    let (second, _) = create_ok(&alice).await?;
    ws.close(None).await?;
    drop(ws);
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let (status, _) = create(&alice).await?;
        if status == 200 {
            break;
        }
        assert_eq!(status, 429);
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "closing the WebSocket freed nothing"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(delete(&alice, &second).await?, 204);
    h.provider.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn ids_are_bound_to_their_endpoint() -> anyhow::Result<()> {
    let h = harness(true, 4).await?;
    let alice = endpoint(&h, "alice").await?;
    let mallory = endpoint(&h, "mallory").await?;
    let (id, public) = create_ok(&alice).await?;
    let (peer, peer_addr) = peer().await?;
    let frame = join_frames([&data_frame(peer_addr, b"x")[..]]);

    for who in [&alice, &mallory] {
        let (status, body) = send(who, "no-such-allocation-id", frame.clone()).await?;
        assert_eq!((status, body["error"].as_str()), (404, Some("not-found")));
        assert_eq!(recv(who, "no-such-allocation-id", 0).await?.0, 404);
        assert_eq!(delete(who, "no-such-allocation-id").await?, 404);
    }
    assert_eq!(send(&mallory, &id, frame.clone()).await?.0, 404);
    peer_silent(&peer).await?;
    peer.send_to(b"for alice", public).await?;
    assert_eq!(recv(&mallory, &id, 0).await?.0, 404);
    assert_eq!(delete(&mallory, &id).await?, 404);
    // Still alice's, with her datagram waiting.
    let (status, body) = recv(&alice, &id, 3000).await?;
    assert_eq!(status, 200);
    let frames = split_frames(&body).context("body")?;
    assert_eq!(parse_data(frames[0])?.1, b"for alice");
    h.provider.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn malformed_frames_are_refused() -> anyhow::Result<()> {
    let h = harness(true, 4).await?;
    let alice = endpoint(&h, "alice").await?;
    let (peer, peer_addr) = peer().await?;
    let good = data_frame(peer_addr, b"good");

    // Long-poll: one bad frame refuses the whole body.
    let (id, _) = create_ok(&alice).await?;
    let bad_bodies: Vec<Vec<u8>> = vec![
        join_frames([&good[..], &[DATA, 4, 127, 0, 0][..]]), // truncated ADDR
        join_frames([&good[..], &[DATA, 5, 1, 2, 3, 4, 0, 9][..]]), // unknown family
        join_frames([&good[..], &Frame::Allocated(peer_addr).encode()[..]]), // not DATA
        [join_frames([&good[..]]), vec![0, 40, 2]].concat(), // length past the end
        vec![0],                                             // half a length
    ];
    for body in bad_bodies {
        let (status, reply) = send(&alice, &id, body).await?;
        assert_eq!(status, 400, "{reply}");
        assert_eq!(reply["error"], "malformed-frame");
    }
    peer_silent(&peer).await?;

    // WebSocket: the connection is closed with an error.
    let mut ws = connect_ws(&alice).await?;
    parse_allocated(&next_binary(&mut ws).await?)?;
    ws.send(Message::Binary(vec![DATA, 4, 1].into())).await?;
    match timeout(STEP, ws.next()).await.context("no close in time")? {
        Some(Ok(Message::Close(Some(frame)))) => {
            assert_eq!(u16::from(frame.code), 1007);
            assert_eq!(frame.reason.as_str(), "malformed-frame");
        }
        other => bail!("expected a close frame, got {other:?}"),
    }
    peer_silent(&peer).await?;
    h.provider.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn disabled_relay_answers_404() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let alice = endpoint(&h, "alice").await?;
    let (status, body) = create(&alice).await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("relay-disabled"))
    );
    let (status, body) = send(&alice, "whatever-id-at-all", Vec::new()).await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("relay-disabled"))
    );
    match connect_ws(&alice).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 404)
        }
        other => bail!("expected 404, got {:?}", other.map(|_| ())),
    }
    h.provider.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn allocations_end_with_the_provider() -> anyhow::Result<()> {
    let h = harness(true, 4).await?;
    let alice = endpoint(&h, "alice").await?;
    let mut ws = connect_ws(&alice).await?;
    parse_allocated(&next_binary(&mut ws).await?)?;
    let (_id, public) = create_ok(&alice).await?;
    let shutdown = tokio::spawn(h.provider.shutdown());
    match timeout(STEP, ws.next())
        .await
        .context("the WebSocket stayed open")?
    {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 1001),
        Some(Ok(Message::Close(None))) | Some(Err(_)) | None => {}
        other => bail!("expected the WebSocket to close, got {other:?}"),
    }
    timeout(Duration::from_secs(30), shutdown)
        .await
        .context("shutdown hung")??;
    // The long-poll allocation's socket is gone: nothing is bound there any more.
    let deadline = tokio::time::Instant::now() + STEP;
    while UdpSocket::bind(public).await.is_err() {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the allocation outlived the provider"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
