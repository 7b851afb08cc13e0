//! Two endpoints' media sessions on loopback: connectivity checks, DTLS with identity
//! certificates, SIP over DTLS, SRTP audio and video both ways, mute, orientation, hang-up.

use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};
use switchyard_media::blob::CandidateKind;
use switchyard_media::rtp::{Camera, Rotation};
use switchyard_media::secure::{EndpointIdentity, PeerExpectation};
use switchyard_media::session::{Gathered, MediaCall, MediaEvent, Peer, SessionConfig};
use switchyard_protocol::capabilities::{Capabilities, MediaKind};

const ALICE: &str = "tel:+16502530000";
const BOB: &str = "mailto:bob@example.com";

struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca() -> Ca {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "test endpoint CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let pem = params.self_signed(&key).unwrap().pem();
    Ca {
        pem,
        issuer: Issuer::new(params, key),
    }
}

fn identity(ca: &Ca, uri: &str) -> EndpointIdentity {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "endpoint");
    params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    EndpointIdentity::from_pem(&cert.pem(), &key.serialize_pem()).unwrap()
}

fn config(ca: &Ca, uri: &str) -> SessionConfig {
    SessionConfig {
        identity: identity(ca, uri),
        local_uri: uri.to_string(),
        capabilities: Capabilities::default(),
        media: vec![MediaKind::Audio, MediaKind::Video],
        bind: "127.0.0.1:0".parse().unwrap(),
        relay: None,
        tunnel: None,
        relay_only: false,
        check_timeout: Duration::from_secs(10),
    }
}

async fn wait_for(
    call: &mut MediaCall,
    what: &str,
    mut matches: impl FnMut(&MediaEvent) -> bool,
) -> MediaEvent {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, call.next_event()).await {
            Ok(Some(event)) if matches(&event) => return event,
            Ok(Some(MediaEvent::Failed(why))) => panic!("call failed waiting for {what}: {why}"),
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the call ended waiting for {what}"),
            Err(_) => panic!("no {what} within 15 s"),
        }
    }
}

#[tokio::test]
async fn two_endpoints_hold_an_encrypted_audio_video_call() {
    let ca = ca();
    let alice = Gathered::gather(config(&ca, ALICE)).await.unwrap();
    let bob = Gathered::gather(config(&ca, BOB)).await.unwrap();
    let alice_blob = alice.blob().clone();
    let bob_blob = bob.blob().clone();
    // The blobs travel as bytes through the providers.
    let alice_blob = switchyard_media::blob::MediaBlob::from_bytes(&alice_blob.to_bytes()).unwrap();
    let bob_blob = switchyard_media::blob::MediaBlob::from_bytes(&bob_blob.to_bytes()).unwrap();
    let endpoint = |blob: &switchyard_media::blob::MediaBlob, uri: &str| Peer::Endpoint {
        blob: blob.clone(),
        expectation: PeerExpectation::with_ca_pem(blob.fingerprint.clone(), uri, &ca.pem).unwrap(),
    };
    let mut a = alice.start(true, endpoint(&bob_blob, BOB)).unwrap();
    let mut b = bob.start(false, endpoint(&alice_blob, ALICE)).unwrap();

    for call in [&mut a, &mut b] {
        let path = wait_for(call, "a path", |e| {
            matches!(e, MediaEvent::PathSelected { .. })
        })
        .await;
        assert!(
            matches!(
                path,
                MediaEvent::PathSelected {
                    local: CandidateKind::Host,
                    remote: CandidateKind::Host,
                    ..
                }
            ),
            "{path:?}"
        );
        let secured = wait_for(call, "DTLS", |e| matches!(e, MediaEvent::Secured { .. })).await;
        assert_eq!(
            secured,
            MediaEvent::Secured {
                profile: "SRTP_AEAD_AES_128_GCM".into()
            }
        );
        let negotiated =
            wait_for(call, "SIP", |e| matches!(e, MediaEvent::Negotiated { .. })).await;
        assert_eq!(
            negotiated,
            MediaEvent::Negotiated {
                audio: Some("opus".into()),
                video: Some("VP8".into())
            }
        );
    }
    a.set_orientation(Rotation::Deg90, Camera::Back);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for (name, call) in [("alice", &a), ("bob", &b)] {
        let stats = call.stats();
        assert!(
            stats.audio.packets_received >= 90,
            "{name} got {} audio packets in 2.5 s: {stats:?}",
            stats.audio.packets_received
        );
        assert!(stats.video.packets_received >= 30, "{name}: {stats:?}");
        assert_eq!(stats.audio.packets_lost, 0, "{name}: {stats:?}");
        assert_eq!(stats.srtp_failures, 0, "{name}: {stats:?}");
        assert!(
            stats.round_trip.is_some(),
            "{name} has an RTT from RTCP: {stats:?}"
        );
    }
    assert_eq!(
        b.stats().remote_orientation,
        Some((Rotation::Deg90, Camera::Back))
    );
    // Each side learned the other's RTCP CNAME from its SDES.
    assert_ne!(a.cname(), b.cname());
    assert_eq!(a.stats().remote_cname.as_deref(), Some(b.cname()));
    assert_eq!(b.stats().remote_cname.as_deref(), Some(a.cname()));

    // DTLS, RTP and RTCP from an address that never passed a connectivity check are dropped
    // before the DTLS stack or SRTP sees them, and the call goes on.
    assert_eq!(b.stats().dropped_unvalidated, 0, "{:?}", b.stats());
    let bob_host = bob_blob
        .candidates
        .iter()
        .find(|c| c.kind == CandidateKind::Host)
        .unwrap()
        .address;
    let intruder = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let dtls_alert = [21u8, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 40];
    let mut rtp = vec![0x80u8, 111, 0, 1, 0, 0, 0, 1, 0, 0, 0, 42];
    rtp.extend_from_slice(&[0u8; 64]);
    let mut rtcp = vec![0x80u8, 200, 0, 6];
    rtcp.extend_from_slice(&[0u8; 40]);
    let audio_before = b.stats().audio.packets_received;
    for datagram in [&dtls_alert[..], &rtp, &rtcp] {
        intruder.send_to(datagram, bob_host).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stats = b.stats();
    assert_eq!(stats.dropped_unvalidated, 3, "{stats:?}");
    assert_eq!(stats.srtp_failures, 0, "never reached SRTP: {stats:?}");
    assert!(stats.audio.packets_received > audio_before, "{stats:?}");

    // Mute: Bob hears of it over SIP and stops receiving video.
    a.set_video_muted(true);
    assert_eq!(
        wait_for(&mut b, "mute", |e| matches!(
            e,
            MediaEvent::RemoteVideoMuted(_)
        ))
        .await,
        MediaEvent::RemoteVideoMuted(true)
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = b.stats().video.packets_received;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        b.stats().video.packets_received,
        before,
        "muted video still flows"
    );
    a.set_video_muted(false);
    assert_eq!(
        wait_for(&mut b, "unmute", |e| matches!(
            e,
            MediaEvent::RemoteVideoMuted(_)
        ))
        .await,
        MediaEvent::RemoteVideoMuted(false)
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let video = b.stats().video;
    assert!(video.packets_received > before, "video resumes: {video:?}");
    assert_eq!(video.packets_lost, 0, "a mute is not loss: {video:?}");

    a.hang_up();
    wait_for(&mut b, "the hang-up", |e| *e == MediaEvent::RemoteHangUp).await;
    wait_for(&mut a, "the end", |e| *e == MediaEvent::Ended).await;
    a.close().await;
    b.close().await;
}

/// Blobs sent without candidates (as a caller does before its relay is known) leave the
/// endpoints with nothing to check; the candidates arriving later in Updates make the path.
#[tokio::test]
async fn candidates_from_an_update_make_the_path() {
    let ca = ca();
    let alice = Gathered::gather(config(&ca, ALICE)).await.unwrap();
    let bob = Gathered::gather(config(&ca, BOB)).await.unwrap();
    let (alice_full, bob_full) = (alice.blob().clone(), bob.blob().clone());
    let bare = |blob: &switchyard_media::blob::MediaBlob| {
        let mut bare = blob.clone();
        bare.candidates.clear();
        bare
    };
    let endpoint = |blob: &switchyard_media::blob::MediaBlob, uri: &str| Peer::Endpoint {
        blob: blob.clone(),
        expectation: PeerExpectation::with_ca_pem(blob.fingerprint.clone(), uri, &ca.pem).unwrap(),
    };
    let mut a = alice.start(true, endpoint(&bare(&bob_full), BOB)).unwrap();
    let mut b = bob
        .start(false, endpoint(&bare(&alice_full), ALICE))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(a.stats().path, None, "no candidates, no path");

    // An update that would restart the session is refused and changes nothing.
    let mut restarted = bob_full.clone();
    restarted.ice_ufrag = "otherufrag".into();
    assert!(a.apply_remote_blob(&restarted).is_err());
    let mut other_certificate = bob_full.clone();
    other_certificate.fingerprint = "00".repeat(32);
    assert!(a.apply_remote_blob(&other_certificate).is_err());

    assert_eq!(a.apply_remote_blob(&bob_full).unwrap(), 1);
    assert_eq!(b.apply_remote_blob(&alice_full).unwrap(), 1);
    assert_eq!(
        a.apply_remote_blob(&bob_full).unwrap(),
        0,
        "a repeated update adds nothing"
    );
    for call in [&mut a, &mut b] {
        wait_for(call, "a path", |e| {
            matches!(e, MediaEvent::PathSelected { .. })
        })
        .await;
        wait_for(call, "SIP", |e| matches!(e, MediaEvent::Negotiated { .. })).await;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    for call in [&a, &b] {
        let stats = call.stats();
        assert!(stats.audio.packets_received >= 30, "{stats:?}");
        assert_eq!(stats.srtp_failures, 0, "{stats:?}");
    }
    a.hang_up();
    wait_for(&mut a, "the end", |e| *e == MediaEvent::Ended).await;
    a.close().await;
    b.close().await;
}
