//! Media between endpoints at two providers: the blobs and the endpoint CAs travel through the
//! providers in Initiate and Accept, then the endpoints hold an end-to-end encrypted call, directly
//! or through the caller's provider's TURN relay.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

use switchyard_endpoint::client::{EndpointClient, PushMode};
use switchyard_endpoint::http_relay::{HttpRelayConn, TunnelMode};
use switchyard_endpoint::media::{self as endpoint_media, MediaOptions};
use switchyard_media::blob::{CandidateKind, MediaBlob};
use switchyard_media::secure::{EndpointIdentity, PeerExpectation};
use switchyard_media::session::{Gathered, MediaCall, MediaEvent, Peer, SessionConfig};
use switchyard_protocol::capabilities::{Capabilities, MediaKind};
use switchyard_protocol::dict::Dict;
use switchyard_protocol::dict::Encoding;
use switchyard_tests::federation::{AliceAndBob, ProviderSpec, TestFederation, ALICE, BOB};
use switchyard_tests::*;

/// A UDP forwarder in front of a provider's TURN server that keeps a copy of every datagram:
/// what the provider's relay sees of a call.
struct Tap {
    address: SocketAddr,
    seen: Arc<Mutex<Vec<Vec<u8>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Tap {
    async fn start(server: SocketAddr) -> anyhow::Result<Tap> {
        let outside = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let inside = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let address = outside.local_addr()?;
        let seen: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let up = {
            let (outside, inside, seen, client) = (
                outside.clone(),
                inside.clone(),
                seen.clone(),
                client.clone(),
            );
            async move {
                let mut buf = vec![0u8; 65_536];
                while let Ok((n, from)) = outside.recv_from(&mut buf).await {
                    *client.lock().unwrap() = Some(from);
                    seen.lock().unwrap().push(buf[..n].to_vec());
                    let _ = inside.send_to(&buf[..n], server).await;
                }
            }
        };
        let down = {
            let seen = seen.clone();
            async move {
                let mut buf = vec![0u8; 65_536];
                while let Ok((n, _)) = inside.recv_from(&mut buf).await {
                    seen.lock().unwrap().push(buf[..n].to_vec());
                    let to = *client.lock().unwrap();
                    if let Some(to) = to {
                        let _ = outside.send_to(&buf[..n], to).await;
                    }
                }
            }
        };
        let task = tokio::spawn(async move {
            tokio::join!(up, down);
        });
        Ok(Tap {
            address,
            seen,
            task,
        })
    }
}

/// The datagrams a TURN client and server exchange carry the call's own datagrams inside
/// ChannelData messages or Send/Data indications (DATA attribute); returns those.
fn relayed_payloads(datagram: &[u8]) -> Vec<&[u8]> {
    match datagram.first() {
        Some(0x40..=0x7f) if datagram.len() >= 4 => {
            let len = u16::from_be_bytes([datagram[2], datagram[3]]) as usize;
            datagram.get(4..4 + len).into_iter().collect()
        }
        Some(0..=3) if datagram.len() >= 20 => {
            let mut found = Vec::new();
            let mut at = 20;
            while at + 4 <= datagram.len() {
                let kind = u16::from_be_bytes([datagram[at], datagram[at + 1]]);
                let len = u16::from_be_bytes([datagram[at + 2], datagram[at + 3]]) as usize;
                let Some(value) = datagram.get(at + 4..at + 4 + len) else {
                    break;
                };
                if kind == 0x0013 {
                    found.push(value);
                }
                at += 4 + len.div_ceil(4) * 4;
            }
            found
        }
        _ => Vec::new(),
    }
}

async fn session_config(
    client: &EndpointClient,
    uri: &str,
    relay_only: bool,
    taps: &mut Vec<Tap>,
) -> anyhow::Result<SessionConfig> {
    let id = &client.identity;
    let mut relay = client
        .relay_credentials(None)
        .await?
        .map(|grant| grant.server);
    if relay_only {
        // The endpoint reaches its relay through a tap that records what the provider sees.
        if let Some(server) = relay.as_mut() {
            let tap = Tap::start(server.address).await?;
            server.address = tap.address;
            taps.push(tap);
        }
    }
    Ok(SessionConfig {
        identity: EndpointIdentity::from_pem(&id.certificate_pem, &id.key_pem)?,
        local_uri: uri.to_string(),
        capabilities: Capabilities::default(),
        media: vec![MediaKind::Audio, MediaKind::Video],
        bind: "127.0.0.1:0".parse()?,
        relay,
        tunnel: None,
        relay_only,
        check_timeout: Duration::from_secs(10),
    })
}

/// What the signalling of a call carried: the Initiate and Accept Pushes and the blobs in them.
struct Signalled {
    sid: String,
    ring: Dict,
    accepted: Dict,
    offer: MediaBlob,
    answer: MediaBlob,
}

/// Alice at provider A and Bob at provider B (B and Bob speaking `bob_encoding`).
async fn two_providers(bob_encoding: Encoding, bob_push: PushMode) -> anyhow::Result<AliceAndBob> {
    let b_spec = match bob_encoding {
        Encoding::Json => ProviderSpec::json("b.test"),
        Encoding::Plist => ProviderSpec::plist("b.test"),
    };
    let fed = TestFederation::start(&[ProviderSpec::plist("a.test"), b_spec]).await?;
    AliceAndBob::join(fed, bob_encoding, bob_push).await
}

/// Alice calls Bob with her media's blob; Bob gathers his media while it rings and accepts with
/// its blob.
async fn signal(
    two: &mut AliceAndBob,
    caller_media: &Gathered,
    callee_config: SessionConfig,
    media: &[&str],
) -> anyhow::Result<(Gathered, Signalled)> {
    let sid = session_id();
    two.alice
        .initiate(&sid, BOB, &caller_media.blob().to_bytes(), media)
        .await?;
    let ring = expect_push(&mut two.bob_push, "initiate").await?;
    let offer = MediaBlob::from_bytes(&ring.data("peer-blob")?)?;
    let callee_media = Gathered::gather(callee_config).await?;
    two.bob
        .accept(&ring, &callee_media.blob().to_bytes())
        .await?;
    let accepted = expect_push(&mut two.alice_push, "accept").await?;
    let answer = MediaBlob::from_bytes(&accepted.data("peer-blob")?)?;
    Ok((
        callee_media,
        Signalled {
            sid,
            ring,
            accepted,
            offer,
            answer,
        },
    ))
}

impl Signalled {
    /// Both sides' media, each checking the other against the CA its push named.
    fn start(
        &self,
        caller_media: Gathered,
        callee_media: Gathered,
    ) -> anyhow::Result<(MediaCall, MediaCall)> {
        let caller = caller_media.start(
            true,
            Peer::Endpoint {
                blob: self.answer.clone(),
                expectation: PeerExpectation::with_ca_pem(
                    &self.answer.fingerprint,
                    BOB,
                    self.accepted.str("peer-ca")?,
                )?,
            },
        )?;
        let callee = callee_media.start(
            false,
            Peer::Endpoint {
                blob: self.offer.clone(),
                expectation: PeerExpectation::with_ca_pem(
                    &self.offer.fingerprint,
                    ALICE,
                    self.ring.str("peer-ca")?,
                )?,
            },
        )?;
        Ok((caller, callee))
    }
}

/// The caller hangs up; the callee hears the BYE; both release their ports.
async fn hang_up(caller: MediaCall, mut callee: MediaCall) {
    caller.hang_up();
    wait_for(&mut callee, "the hang-up", |e| {
        *e == MediaEvent::RemoteHangUp
    })
    .await;
    caller.close().await;
    callee.close().await;
}

async fn call_between_providers(relay_only: bool) -> anyhow::Result<()> {
    let mut two = two_providers(Encoding::Json, PushMode::WebSocket).await?;
    let mut taps = Vec::new();
    let caller_media =
        Gathered::gather(session_config(&two.alice, ALICE, relay_only, &mut taps).await?).await?;
    let caller_relayed = caller_media.relayed_address().expect("A's relay allocated");
    let callee_config = session_config(&two.bob, BOB, relay_only, &mut taps).await?;
    let (callee_media, signalled) =
        signal(&mut two, &caller_media, callee_config, &["audio", "video"]).await?;
    let (mut caller, mut callee) = signalled.start(caller_media, callee_media)?;
    for call in [&mut caller, &mut callee] {
        let (local, remote) = first_path(call).await;
        if relay_only {
            assert!(
                local == CandidateKind::Relayed || remote == CandidateKind::Relayed,
                "{local:?} -> {remote:?}"
            );
        } else {
            assert_eq!((local, remote), (CandidateKind::Host, CandidateKind::Host));
        }
        wait_for(call, "SIP", |e| matches!(e, MediaEvent::Negotiated { .. })).await;
    }
    assert_two_seconds_of_media(
        &caller,
        &callee,
        if relay_only { "relayed" } else { "direct" },
    )
    .await;
    if relay_only {
        // The providers' relays carried DTLS records, SRTP and connectivity checks: never the
        // media or the SIP in the clear.
        let mut kinds = std::collections::BTreeMap::new();
        for tap in &taps {
            for datagram in tap.seen.lock().unwrap().iter() {
                for needle in [
                    &b"SYNTHMED"[..],
                    b"INVITE",
                    b"application/sdp",
                    b"video=muted",
                ] {
                    assert!(
                        !datagram.windows(needle.len()).any(|w| w == needle),
                        "the relay saw {:?} in the clear",
                        String::from_utf8_lossy(needle)
                    );
                }
                for inner in relayed_payloads(datagram) {
                    let kind = format!("{:?}", switchyard_media::demux::classify(inner));
                    assert_ne!(
                        kind, "Unknown",
                        "an unclassifiable datagram crossed the relay"
                    );
                    *kinds.entry(kind).or_insert(0u64) += 1;
                }
            }
        }
        assert!(kinds.get("Dtls").copied().unwrap_or(0) >= 4, "{kinds:?}");
        assert!(kinds.get("Rtp").copied().unwrap_or(0) >= 100, "{kinds:?}");
        assert!(kinds.get("Rtcp").copied().unwrap_or(0) >= 1, "{kinds:?}");
        let relay = two
            .fed
            .provider("a.test")
            .provider
            .relay()
            .expect("A runs a relay");
        assert!(
            relay.state.allocation_count(None) >= 1,
            "the caller's allocation is live"
        );
        assert_ne!(caller_relayed.port(), 0);
    }
    hang_up(caller, callee).await;
    two.alice
        .cancel(&signalled.sid, ALICE, BOB, signalled.accepted.str("state")?)
        .await?;
    expect_push(&mut two.bob_push, "cancel").await?;
    for tap in taps {
        tap.task.abort();
    }
    two.fed.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn endpoints_at_two_providers_hold_a_direct_encrypted_call() -> anyhow::Result<()> {
    call_between_providers(false).await
}

#[tokio::test]
async fn endpoints_that_offer_only_relayed_candidates_call_through_the_relay() -> anyhow::Result<()>
{
    call_between_providers(true).await
}

/// A two-socket UDP forwarder standing in for the direct path between the endpoints (as a NAT
/// would): the callee's host candidate is rewritten to point at it, and stopping it cuts the path
/// mid-call.
struct DirectPath {
    address: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl DirectPath {
    async fn start(callee: SocketAddr) -> anyhow::Result<DirectPath> {
        let outside = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let inside = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let address = outside.local_addr()?;
        let caller: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let up = {
            let (outside, inside, caller) = (outside.clone(), inside.clone(), caller.clone());
            async move {
                let mut buf = vec![0u8; 65_536];
                while let Ok((n, from)) = outside.recv_from(&mut buf).await {
                    *caller.lock().unwrap() = Some(from);
                    let _ = inside.send_to(&buf[..n], callee).await;
                }
            }
        };
        let down = async move {
            let mut buf = vec![0u8; 65_536];
            while let Ok((n, _)) = inside.recv_from(&mut buf).await {
                let to = *caller.lock().unwrap();
                if let Some(to) = to {
                    let _ = outside.send_to(&buf[..n], to).await;
                }
            }
        };
        let task = tokio::spawn(async move {
            tokio::join!(up, down);
        });
        Ok(DirectPath { address, task })
    }
}

#[tokio::test]
async fn media_moves_to_the_relayed_backup_within_two_seconds_when_the_direct_path_dies(
) -> anyhow::Result<()> {
    let mut two = two_providers(Encoding::Plist, PushMode::WebSocket).await?;
    let mut no_taps = Vec::new();
    let caller_media =
        Gathered::gather(session_config(&two.alice, ALICE, false, &mut no_taps).await?).await?;
    let callee_config = session_config(&two.bob, BOB, false, &mut no_taps).await?;
    let (callee_media, mut signalled) =
        signal(&mut two, &caller_media, callee_config, &["audio"]).await?;
    // Each side reaches the other's host address only through a forwarder the test can cut,
    // as if both sat behind NATs; the relayed candidates stay reachable.
    let mut direct = Vec::new();
    for blob in [&mut signalled.offer, &mut signalled.answer] {
        let host = blob
            .candidates
            .iter_mut()
            .find(|c| c.kind == CandidateKind::Host)
            .expect("a host candidate");
        let path = DirectPath::start(host.address).await?;
        host.address = path.address;
        direct.push(path);
    }

    let (mut caller, mut callee) = signalled.start(caller_media, callee_media)?;
    wait_for(&mut caller, "SIP", |e| {
        matches!(e, MediaEvent::Negotiated { .. })
    })
    .await;
    wait_for(&mut callee, "SIP", |e| {
        matches!(e, MediaEvent::Negotiated { .. })
    })
    .await;
    // Both sides run on the direct path, with the relayed pair kept alive as the backup.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let path = caller.stats().path;
    assert!(
        matches!(path, Some((CandidateKind::Host, _))),
        "the call starts on the direct path: {path:?}"
    );
    let before = callee.stats().audio.packets_received;
    assert!(before >= 50, "{:?}", callee.stats());

    // Cut it: media must resume on the relay within 2 seconds.
    for path in &direct {
        path.task.abort();
    }
    let cut = Instant::now();
    let moved = wait_for(&mut caller, "the move to the backup", |e| {
        matches!(
            e,
            MediaEvent::PathSelected {
                local: CandidateKind::Relayed,
                ..
            } | MediaEvent::PathSelected {
                remote: CandidateKind::Relayed,
                ..
            }
        )
    })
    .await;
    let stalled_at = callee.stats().audio.packets_received;
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if callee.stats().audio.packets_received > stalled_at + 5 {
            break;
        }
        assert!(
            cut.elapsed() < Duration::from_secs(3),
            "media did not resume after {moved:?}"
        );
    }
    let resumed_after = cut.elapsed();
    assert!(
        resumed_after <= Duration::from_millis(2_000) + Duration::from_millis(200),
        "media resumed {resumed_after:?} after the cut"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stats = callee.stats();
    assert_eq!(stats.srtp_failures, 0, "{stats:?}");
    // What came over the backup pair was accepted: that pair was validated too.
    assert_eq!(stats.dropped_unvalidated, 0, "{stats:?}");
    assert!(stats.audio.packets_received > stalled_at + 40, "{stats:?}");
    eprintln!("media resumed {resumed_after:?} after the direct path was cut");

    hang_up(caller, callee).await;
    two.fed.shutdown().await;
    Ok(())
}

/// A callee whose network lets no UDP out: its only candidate is an allocation at its provider's
/// HTTP relay, reached over the endpoint API (a WebSocket, or long-polls).
async fn call_to_a_callee_without_udp(mode: TunnelMode) -> anyhow::Result<()> {
    let mut two = two_providers(Encoding::Plist, PushMode::LongPoll).await?;
    let mut no_taps = Vec::new();
    let caller_media =
        Gathered::gather(session_config(&two.alice, ALICE, false, &mut no_taps).await?).await?;
    let bob = &two.bob;
    let callee_config = SessionConfig {
        identity: EndpointIdentity::from_pem(&bob.identity.certificate_pem, &bob.identity.key_pem)?,
        local_uri: BOB.to_string(),
        capabilities: Capabilities::default(),
        media: vec![MediaKind::Audio, MediaKind::Video],
        bind: "127.0.0.1:0".parse()?,
        relay: None,
        tunnel: Some(HttpRelayConn::open(bob, mode).await?),
        relay_only: true,
        check_timeout: Duration::from_secs(10),
    };
    let (callee_media, signalled) =
        signal(&mut two, &caller_media, callee_config, &["audio", "video"]).await?;
    assert!(
        callee_media
            .blob()
            .candidates
            .iter()
            .all(|c| c.kind == CandidateKind::Relayed),
        "{:?}",
        callee_media.blob()
    );
    let (mut caller, mut callee) = signalled.start(caller_media, callee_media)?;
    let path = wait_for(&mut callee, "a path", |e| {
        matches!(e, MediaEvent::PathSelected { .. })
    })
    .await;
    assert!(
        matches!(
            path,
            MediaEvent::PathSelected {
                local: CandidateKind::Relayed,
                ..
            }
        ),
        "{path:?}"
    );
    for call in [&mut caller, &mut callee] {
        wait_for(call, "SIP", |e| matches!(e, MediaEvent::Negotiated { .. })).await;
    }
    assert_two_seconds_of_media(&caller, &callee, &format!("{mode:?}")).await;
    hang_up(caller, callee).await;
    two.fed.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_callee_without_udp_takes_the_call_over_a_websocket_relay() -> anyhow::Result<()> {
    call_to_a_callee_without_udp(TunnelMode::WebSocket).await
}

#[tokio::test]
async fn a_callee_without_udp_or_websocket_takes_the_call_over_long_polls() -> anyhow::Result<()> {
    call_to_a_callee_without_udp(TunnelMode::LongPoll).await
}

/// The terminal endpoint's media negotiates with the capabilities it registered: an audio-only
/// callee answers an offer that also carries video with audio alone (its video line at port 0).
#[tokio::test]
async fn an_audio_only_callee_answers_the_video_of_an_offer_with_port_zero() -> anyhow::Result<()> {
    let fed =
        TestFederation::start(&[ProviderSpec::plist("a.test"), ProviderSpec::plist("b.test")])
            .await?;
    let (a, b) = (fed.provider("a.test"), fed.provider("b.test"));
    let alice_user = a.add_user("Alice", &[ALICE]).await?;
    let bob_user = b.add_user("Bob", &[BOB]).await?;
    let alice = a
        .endpoint(&alice_user, ALICE, None, Encoding::Plist)
        .await?;
    let audio_only = Capabilities {
        video: false,
        ..Capabilities::default()
    };
    let bob = b
        .endpoint(&bob_user, BOB, Some(audio_only.clone()), Encoding::Plist)
        .await?;
    assert_eq!(bob.identity.capabilities, audio_only);
    fed.sync().await?;
    let mut alice_push = alice.push_channel(PushMode::WebSocket).await?;
    let mut bob_push = bob.push_channel(PushMode::WebSocket).await?;

    // Signalled as an audio call (no provider rings an audio-only device for video), while
    // Alice's SDP offer has a video line as well.
    let mut no_taps = Vec::new();
    let caller_media =
        Gathered::gather(session_config(&alice, ALICE, false, &mut no_taps).await?).await?;
    let sid = session_id();
    alice
        .initiate(&sid, BOB, &caller_media.blob().to_bytes(), &["audio"])
        .await?;
    let ring = expect_push(&mut bob_push, "initiate").await?;
    let options = MediaOptions {
        address: "127.0.0.1".parse()?,
        relay_only: false,
        mute_video_after: None,
        http_relay: None,
    };
    let (callee_media, _) = endpoint_media::prepare(
        &bob,
        BOB,
        endpoint_media::media_kinds(&ring)?,
        &options,
        None,
    )
    .await?;
    bob.accept(&ring, &callee_media.blob().to_bytes()).await?;
    let accepted = expect_push(&mut alice_push, "accept").await?;
    let answer = MediaBlob::from_bytes(&accepted.data("peer-blob")?)?;
    let mut caller = caller_media.start(
        true,
        Peer::Endpoint {
            expectation: PeerExpectation::with_ca_pem(
                &answer.fingerprint,
                BOB,
                accepted.str("peer-ca")?,
            )?,
            blob: answer,
        },
    )?;
    let mut callee = endpoint_media::start(callee_media, false, &ring)?;
    for call in [&mut caller, &mut callee] {
        let negotiated =
            wait_for(call, "SIP", |e| matches!(e, MediaEvent::Negotiated { .. })).await;
        assert_eq!(
            negotiated,
            MediaEvent::Negotiated {
                audio: Some("opus".into()),
                video: None
            }
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (name, call) in [("caller", &caller), ("callee", &callee)] {
        let stats = call.stats();
        assert!(stats.audio.packets_received >= 30, "{name}: {stats:?}");
        assert_eq!(stats.video.packets_sent, 0, "{name}: {stats:?}");
        assert_eq!(stats.video.packets_received, 0, "{name}: {stats:?}");
    }
    hang_up(caller, callee).await;
    fed.shutdown().await;
    Ok(())
}
