//! Loopback tests of the DTLS-SRTP layer: a throwaway endpoint CA, two endpoints, and their
//! PacketConns wired back to back (plus one run over real loopback UDP sockets).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};
use tokio::sync::mpsc;
use webrtc_util::Conn;

use super::*;

const ALICE: &str = "tel:+15550100";
const BOB: &str = "mailto:bob@example.net";
const HANDSHAKE: Duration = Duration::from_secs(10);

fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    fn new(cn: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        TestCa {
            issuer: CertifiedIssuer::self_signed(params, key).unwrap(),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn der(&self) -> Vec<u8> {
        self.issuer.der().to_vec()
    }

    /// Issue an endpoint certificate; returns it as (cert PEM, key PEM).
    fn issue_with(
        &self,
        uris: &[&str],
        tweak: impl FnOnce(&mut CertificateParams),
    ) -> (String, String) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "endpoint");
        params.subject_alt_names = uris
            .iter()
            .map(|u| SanType::URI((*u).try_into().unwrap()))
            .collect();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        tweak(&mut params);
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn issue(&self, uris: &[&str]) -> EndpointIdentity {
        let (cert, key) = self.issue_with(uris, |_| {});
        EndpointIdentity::from_pem(&cert, &key).unwrap()
    }
}

fn expect(id: &EndpointIdentity, uri: &str, ca: &TestCa) -> PeerExpectation {
    PeerExpectation::with_ca_pem(id.fingerprint_sha256_hex(), uri, &ca.pem()).unwrap()
}

/// Everything that crossed the "provider's network" between the two conns.
type Tap = Arc<Mutex<Vec<Vec<u8>>>>;

fn forward(mut from: mpsc::Receiver<Vec<u8>>, to: mpsc::Sender<Vec<u8>>, tap: Tap) {
    tokio::spawn(async move {
        while let Some(d) = from.recv().await {
            tap.lock().unwrap().push(d.clone());
            if to.send(d).await.is_err() {
                break;
            }
        }
    });
}

/// Two PacketConns wired back to back through channels.
fn wired_pair() -> (Arc<PacketConn>, Arc<PacketConn>, Tap) {
    let (a, a_shell) = PacketConn::new(64);
    let (b, b_shell) = PacketConn::new(64);
    let tap: Tap = Arc::default();
    forward(a_shell.outbound_rx, b_shell.inbound_tx, tap.clone());
    forward(b_shell.outbound_rx, a_shell.inbound_tx, tap.clone());
    (a, b, tap)
}

struct Setup {
    ca: TestCa,
    alice: EndpointIdentity,
    bob: EndpointIdentity,
}

fn setup() -> Setup {
    install_provider();
    let ca = TestCa::new("Provider Endpoint CA");
    let alice = ca.issue(&[ALICE]);
    let bob = ca.issue(&["tel:+15550199", BOB]);
    Setup { ca, alice, bob }
}

async fn handshake(
    a: Arc<dyn Conn + Send + Sync>,
    b: Arc<dyn Conn + Send + Sync>,
    alice: &EndpointIdentity,
    alice_expects: PeerExpectation,
    bob: &EndpointIdentity,
    bob_expects: PeerExpectation,
    timeout: Duration,
) -> (
    Result<SecureChannel, SecureError>,
    Result<SecureChannel, SecureError>,
) {
    tokio::join!(
        SecureChannel::establish(a, DtlsRole::Client, alice, alice_expects, timeout),
        SecureChannel::establish(b, DtlsRole::Server, bob, bob_expects, timeout),
    )
}

async fn good_pair(s: &Setup) -> (SecureChannel, SecureChannel, Tap) {
    let (a, b, tap) = wired_pair();
    let (ra, rb) = handshake(
        a,
        b,
        &s.alice,
        expect(&s.bob, BOB, &s.ca),
        &s.bob,
        expect(&s.alice, ALICE, &s.ca),
        HANDSHAKE,
    )
    .await;
    (ra.unwrap(), rb.unwrap(), tap)
}

fn rtp(seq: u16, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, 111];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 960).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// RTCP receiver report without report blocks.
fn rtcp_rr(ssrc: u32) -> Vec<u8> {
    let mut p = vec![0x80, 201, 0x00, 0x01];
    p.extend_from_slice(&ssrc.to_be_bytes());
    p
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn handshake_srtp_and_app_data() {
    let s = setup();
    let (alice, bob, _tap) = good_pair(&s).await;

    assert_eq!(alice.profile(), SrtpProfile::AeadAes128Gcm);
    assert_eq!(bob.profile(), SrtpProfile::AeadAes128Gcm);
    assert_eq!(alice.peer_uri(), BOB);
    assert_eq!(bob.peer_uri(), ALICE);
    assert_eq!(alice.peer_certificate_der(), &s.bob.cert_der[..]);
    assert_eq!(alice.role(), DtlsRole::Client);

    // RTP both ways.
    let payload = b"opus frame 0123456789";
    let pkt = rtp(1, 0xA11CE, payload);
    let protected = alice.protect_rtp(&pkt).unwrap();
    assert_eq!(
        protected.len(),
        pkt.len() + SrtpProfile::AeadAes128Gcm.rtp_overhead()
    );
    assert_eq!(&bob.unprotect_rtp(&protected).unwrap()[..], &pkt[..]);
    let back = rtp(7, 0xB0B, payload);
    let protected_back = bob.protect_rtp(&back).unwrap();
    assert_eq!(
        &alice.unprotect_rtp(&protected_back).unwrap()[..],
        &back[..]
    );

    // Our own packets don't unprotect with our own incoming keys (keys differ per direction).
    let p2 = alice.protect_rtp(&rtp(2, 0xA11CE, payload)).unwrap();
    assert!(matches!(
        alice.unprotect_rtp(&p2),
        Err(SecureError::SrtpAuthentication(_))
    ));

    // Tampered payload and tampered header are refused, and don't burn the sequence number.
    let p3 = alice.protect_rtp(&rtp(3, 0xA11CE, payload)).unwrap();
    let mut bad = p3.to_vec();
    bad[14] ^= 0x01;
    assert!(
        matches!(
            bob.unprotect_rtp(&bad),
            Err(SecureError::SrtpAuthentication(_))
        ),
        "payload"
    );
    let mut bad = p3.to_vec();
    bad[1] ^= 0x01; // payload type, authenticated as AAD
    assert!(
        matches!(
            bob.unprotect_rtp(&bad),
            Err(SecureError::SrtpAuthentication(_))
        ),
        "header"
    );
    assert!(bob.unprotect_rtp(&p3).is_ok());

    // Replay refused.
    assert_eq!(
        bob.unprotect_rtp(&protected),
        Err(SecureError::SrtpReplay {
            ssrc: 0xA11CE,
            index: 1
        })
    );
    assert!(matches!(
        bob.unprotect_rtp(&p3),
        Err(SecureError::SrtpReplay { .. })
    ));
    // Truncated garbage is a clean error, not a panic.
    assert!(matches!(
        bob.unprotect_rtp(&p3[..10]),
        Err(SecureError::SrtpMalformed(_))
    ));
    assert!(matches!(
        bob.unprotect_rtcp(&[0x80, 201, 0, 1]),
        Err(SecureError::SrtpMalformed(_))
    ));

    // RTCP.
    let rr = rtcp_rr(0xA11CE);
    let srtcp = alice.protect_rtcp(&rr).unwrap();
    assert_eq!(&bob.unprotect_rtcp(&srtcp).unwrap()[..], &rr[..]);
    assert!(matches!(
        bob.unprotect_rtcp(&srtcp),
        Err(SecureError::SrtpReplay { .. })
    ));
    let srtcp2 = alice.protect_rtcp(&rr).unwrap();
    let mut bad = srtcp2.to_vec();
    bad[9] ^= 0x80;
    assert!(matches!(
        bob.unprotect_rtcp(&bad),
        Err(SecureError::SrtpAuthentication(_))
    ));

    // Application data both ways.
    let invite = b"INVITE tel:+15550100 SIP/2.0\r\nContent-Length: 0\r\n\r\n";
    alice.send_app(invite).await.unwrap();
    assert_eq!(
        bob.recv_app_timeout(HANDSHAKE).await.unwrap(),
        invite.to_vec()
    );
    bob.send_app(b"SIP/2.0 200 OK\r\n\r\n").await.unwrap();
    assert_eq!(
        alice.recv_app().await.unwrap(),
        b"SIP/2.0 200 OK\r\n\r\n".to_vec()
    );
    assert_eq!(
        alice.recv_app_timeout(Duration::from_millis(50)).await,
        Err(SecureError::Timeout)
    );
    assert!(matches!(
        alice.send_app(&vec![0u8; MAX_APP_DATA_LEN + 1]).await,
        Err(SecureError::AppDataTooLarge { .. })
    ));

    // Close: the peer sees the channel closed; SRTP keeps working on a retained handle.
    let srtp = alice.srtp();
    alice.close().await.unwrap();
    alice.close().await.unwrap();
    assert_eq!(
        bob.recv_app_timeout(HANDSHAKE).await,
        Err(SecureError::Closed)
    );
    assert!(matches!(alice.recv_app().await, Err(SecureError::Closed)));
    let p = srtp.protect_rtp(&rtp(9, 0xA11CE, payload)).unwrap();
    assert!(bob.unprotect_rtp(&p).is_ok());
}

#[tokio::test]
async fn provider_sees_no_clear_media() {
    let s = setup();
    let (alice, bob, tap) = good_pair(&s).await;
    let payload = b"SECRET-VOICE-SAMPLES-do-not-leak-0123456789abcdef";
    let sip = b"SIP-SECRET: call-id 8c1f2e";
    alice.send_app(sip).await.unwrap();
    assert_eq!(bob.recv_app().await.unwrap(), sip.to_vec());

    for seq in 0..200u16 {
        // Same payload each time: ciphertexts must still differ and never show the clear bytes.
        let p = alice.protect_rtp(&rtp(seq, 0xA11CE, payload)).unwrap();
        assert!(!contains(&p, payload), "seq {seq} leaks the payload");
        assert!(
            !contains(&p, &payload[..8]),
            "seq {seq} leaks a payload prefix"
        );
        assert_eq!(&bob.unprotect_rtp(&p).unwrap()[12..], payload);
    }
    let a = alice.protect_rtp(&rtp(500, 1, payload)).unwrap();
    let b = alice.protect_rtp(&rtp(501, 1, payload)).unwrap();
    assert_ne!(a[12..], b[12..]);
    // Nor does anything that crossed the wire during the handshake and the SIP exchange.
    for d in tap.lock().unwrap().iter() {
        assert!(
            !contains(d, sip),
            "DTLS datagram carries the clear SIP bytes"
        );
    }
}

#[tokio::test]
async fn cm_hmac_fallback_when_peer_lacks_gcm() {
    let s = setup();
    let (a, b, _) = wired_pair();
    let only_cm = [SrtpProfile::Aes128CmHmacSha1_80];
    let (ra, rb) = tokio::join!(
        SecureChannel::establish_offering(
            a,
            DtlsRole::Client,
            &s.alice,
            expect(&s.bob, BOB, &s.ca),
            HANDSHAKE,
            &only_cm,
        ),
        SecureChannel::establish(
            b,
            DtlsRole::Server,
            &s.bob,
            expect(&s.alice, ALICE, &s.ca),
            HANDSHAKE
        ),
    );
    let (alice, bob) = (ra.unwrap(), rb.unwrap());
    assert_eq!(alice.profile(), SrtpProfile::Aes128CmHmacSha1_80);
    assert_eq!(bob.profile(), SrtpProfile::Aes128CmHmacSha1_80);
    let pkt = rtp(1, 5, b"fallback media");
    let x = alice.protect_rtp(&pkt).unwrap();
    assert_eq!(x.len(), pkt.len() + 10);
    assert_eq!(&bob.unprotect_rtp(&x).unwrap()[..], &pkt[..]);
    assert!(matches!(
        bob.unprotect_rtp(&x),
        Err(SecureError::SrtpReplay { .. })
    ));
}

#[tokio::test]
async fn srtp_session_from_master_keys() {
    let p = SrtpProfile::Aes128CmHmacSha1_80;
    let (k1, s1) = (
        vec![1u8; p.master_key_len()],
        vec![2u8; p.master_salt_len()],
    );
    let (k2, s2) = (
        vec![3u8; p.master_key_len()],
        vec![4u8; p.master_salt_len()],
    );
    let a = SrtpSession::from_master_keys(p, &k1, &s1, &k2, &s2).unwrap();
    let b = SrtpSession::from_master_keys(p, &k2, &s2, &k1, &s1).unwrap();
    let pkt = rtp(1, 5, b"hello");
    let x = a.protect_rtp(&pkt).unwrap();
    assert_eq!(x.len(), pkt.len() + 10);
    assert_eq!(&b.unprotect_rtp(&x).unwrap()[..], &pkt[..]);
    assert!(matches!(
        b.unprotect_rtp(&x),
        Err(SecureError::SrtpReplay { .. })
    ));
    let mut t = a.protect_rtp(&rtp(2, 5, b"hello")).unwrap().to_vec();
    let last = t.len() - 1;
    t[last] ^= 1;
    assert!(matches!(
        b.unprotect_rtp(&t),
        Err(SecureError::SrtpAuthentication(_))
    ));
    let rr = rtcp_rr(5);
    assert_eq!(
        &b.unprotect_rtcp(&a.protect_rtcp(&rr).unwrap()).unwrap()[..],
        &rr[..]
    );
    assert!(matches!(
        SrtpSession::from_master_keys(p, &k1[..4], &s1, &k2, &s2),
        Err(SecureError::SrtpKeying(_))
    ));
}

#[tokio::test]
async fn wrong_fingerprint_refused() {
    let s = setup();
    let impostor = s.ca.issue(&[BOB]); // same CA, same URI, but not the announced certificate
    let (a, b, _) = wired_pair();
    let (ra, rb) = handshake(
        a,
        b,
        &s.alice,
        expect(&s.bob, BOB, &s.ca),
        &impostor,
        expect(&s.alice, ALICE, &s.ca),
        HANDSHAKE,
    )
    .await;
    match ra {
        Err(SecureError::FingerprintMismatch { expected, actual }) => {
            assert_eq!(expected, s.bob.fingerprint_sha256_hex());
            assert_eq!(actual, impostor.fingerprint_sha256_hex());
        }
        other => panic!("client: expected fingerprint mismatch, got {other:?}"),
    }
    match rb {
        Err(SecureError::HandshakeFailed(msg)) => assert!(msg.contains("alert"), "{msg}"),
        other => panic!("server: expected handshake failure, got {other:?}"),
    }
}

#[tokio::test]
async fn server_refuses_wrong_client_fingerprint() {
    let s = setup();
    let (a, b, _) = wired_pair();
    // The server (bob) expects a fingerprint in SDP form that isn't alice's.
    let mut wrong = expect(&s.alice, ALICE, &s.ca);
    wrong.fingerprint_sha256_hex = format!("sha-256 {}", ["AB"; 32].join(":"));
    let (ra, rb) = handshake(
        a,
        b,
        &s.alice,
        expect(&s.bob, BOB, &s.ca),
        &s.bob,
        wrong,
        HANDSHAKE,
    )
    .await;
    assert!(
        matches!(rb, Err(SecureError::FingerprintMismatch { .. })),
        "server: {rb:?}"
    );
    assert!(ra.is_err(), "client must not complete: {ra:?}");
}

/// A SIP phone's certificate: self-signed, no URI, known only by the fingerprint in its SDP.
fn phone_identity() -> EndpointIdentity {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = CertificateParams::new(vec!["phone".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    EndpointIdentity::from_pem(&cert.pem(), &key.serialize_pem()).unwrap()
}

#[tokio::test]
async fn a_phone_is_checked_by_its_fingerprint_alone() {
    let s = setup();
    let phone = phone_identity();
    let (a, b, _) = wired_pair();
    let (ra, rb) = handshake(
        a,
        b,
        &s.alice,
        PeerExpectation::fingerprint_only(phone.fingerprint_sha256_hex()),
        &phone,
        PeerExpectation::fingerprint_only(s.alice.fingerprint_sha256_hex()),
        HANDSHAKE,
    )
    .await;
    ra.unwrap();
    rb.unwrap();

    // Another self-signed certificate than the SDP announced is refused all the same.
    let impostor = phone_identity();
    let (a, b, _) = wired_pair();
    let (ra, _) = handshake(
        a,
        b,
        &s.alice,
        PeerExpectation::fingerprint_only(phone.fingerprint_sha256_hex()),
        &impostor,
        PeerExpectation::fingerprint_only(s.alice.fingerprint_sha256_hex()),
        HANDSHAKE,
    )
    .await;
    assert!(
        matches!(ra, Err(SecureError::FingerprintMismatch { .. })),
        "{ra:?}"
    );
}

#[tokio::test]
async fn certificate_from_another_ca_refused() {
    let s = setup();
    // Same subject name as the real CA, so only the signature check can tell them apart.
    let rogue_ca = TestCa::new("Provider Endpoint CA");
    let rogue_bob = rogue_ca.issue(&[BOB]);
    let (a, b, _) = wired_pair();
    let (ra, rb) = handshake(
        a,
        b,
        &s.alice,
        // The fingerprint matches what was presented: only the CA check can refuse it.
        expect(&rogue_bob, BOB, &s.ca),
        &rogue_bob,
        expect(&s.alice, ALICE, &s.ca),
        HANDSHAKE,
    )
    .await;
    match ra {
        Err(SecureError::UntrustedCertificate(msg)) => {
            assert!(msg.contains("signature"), "{msg}")
        }
        other => panic!("expected untrusted certificate, got {other:?}"),
    }
    assert!(rb.is_err());

    // And with a differently named CA.
    let other_ca = TestCa::new("Other Provider CA");
    let other_bob = other_ca.issue(&[BOB]);
    let (a, b, _) = wired_pair();
    let (ra, _) = handshake(
        a,
        b,
        &s.alice,
        expect(&other_bob, BOB, &s.ca),
        &other_bob,
        expect(&s.alice, ALICE, &s.ca),
        HANDSHAKE,
    )
    .await;
    assert!(
        matches!(ra, Err(SecureError::UntrustedCertificate(_))),
        "{ra:?}"
    );
}

#[tokio::test]
async fn several_cas_accepted() {
    let s = setup();
    let other_ca = TestCa::new("Other Provider CA");
    let (a, b, _) = wired_pair();
    let mut bob_expect = expect(&s.bob, BOB, &s.ca);
    bob_expect.ca_certs_der.insert(0, other_ca.der());
    let (ra, rb) = handshake(
        a,
        b,
        &s.alice,
        bob_expect,
        &s.bob,
        expect(&s.alice, ALICE, &s.ca),
        HANDSHAKE,
    )
    .await;
    ra.unwrap();
    rb.unwrap();
}

#[tokio::test]
async fn expired_certificate_refused() {
    let s = setup();
    let (cert, key) = s.ca.issue_with(&[BOB], |p| {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    let old_bob = EndpointIdentity::from_pem(&cert, &key).unwrap();
    let (a, b, _) = wired_pair();
    let (ra, _) = handshake(
        a,
        b,
        &s.alice,
        expect(&old_bob, BOB, &s.ca),
        &old_bob,
        expect(&s.alice, ALICE, &s.ca),
        HANDSHAKE,
    )
    .await;
    match ra {
        Err(SecureError::UntrustedCertificate(msg)) => assert!(msg.contains("validity"), "{msg}"),
        other => panic!("expected untrusted certificate, got {other:?}"),
    }
}

#[tokio::test]
async fn uri_mismatch_refused() {
    let s = setup();
    let (a, b, _) = wired_pair();
    let (ra, rb) = handshake(
        a,
        b,
        &s.alice,
        // A prefix of a real SAN URI must not pass: exact comparison only.
        expect(&s.bob, "mailto:bob@example.ne", &s.ca),
        &s.bob,
        expect(&s.alice, ALICE, &s.ca),
        HANDSHAKE,
    )
    .await;
    match ra {
        Err(SecureError::UriMismatch { expected, found }) => {
            assert_eq!(expected, "mailto:bob@example.ne");
            assert_eq!(found, vec!["tel:+15550199".to_string(), BOB.to_string()]);
        }
        other => panic!("expected URI mismatch, got {other:?}"),
    }
    assert!(rb.is_err());
}

#[tokio::test]
async fn silent_peer_times_out() {
    let s = setup();
    let (a, _shell) = PacketConn::new(8);
    let r = SecureChannel::establish(
        a,
        DtlsRole::Client,
        &s.alice,
        expect(&s.bob, BOB, &s.ca),
        Duration::from_millis(300),
    )
    .await;
    assert_eq!(
        r.unwrap_err(),
        SecureError::HandshakeTimeout(Duration::from_millis(300))
    );
}

#[tokio::test]
async fn bad_inputs_rejected_early() {
    let s = setup();
    let mut e = expect(&s.bob, BOB, &s.ca);
    e.fingerprint_sha256_hex = "abcd".into();
    let (a, _shell) = PacketConn::new(8);
    let r = SecureChannel::establish(a.clone(), DtlsRole::Client, &s.alice, e, HANDSHAKE).await;
    assert!(
        matches!(r, Err(SecureError::InvalidPeerExpectation(_))),
        "{r:?}"
    );
    let mut e = expect(&s.bob, BOB, &s.ca);
    e.ca_certs_der.clear();
    let r = SecureChannel::establish(a, DtlsRole::Client, &s.alice, e, HANDSHAKE).await;
    assert!(
        matches!(r, Err(SecureError::InvalidPeerExpectation(_))),
        "{r:?}"
    );

    // Key that doesn't belong to the certificate.
    let (cert, _) = s.ca.issue_with(&[ALICE], |_| {});
    let (_, other_key) = s.ca.issue_with(&[ALICE], |_| {});
    assert!(matches!(
        EndpointIdentity::from_pem(&cert, &other_key),
        Err(SecureError::InvalidIdentity(_))
    ));
    assert!(matches!(
        EndpointIdentity::from_pem("", &other_key),
        Err(SecureError::InvalidIdentity(_))
    ));
    // Debug output doesn't show the key.
    assert!(!format!("{:?}", s.alice).contains(&hex::encode(&s.alice.key_pkcs8_der)));
}

#[tokio::test]
async fn packet_conn_semantics() {
    let (c, mut shell) = PacketConn::new(4);
    assert_eq!(c.local_addr().unwrap().port(), 0);
    assert_eq!(c.remote_addr(), None);
    c.send(b"out").await.unwrap();
    assert_eq!(shell.outbound_rx.recv().await.unwrap(), b"out".to_vec());
    shell
        .inbound_tx
        .send(b"in-datagram".to_vec())
        .await
        .unwrap();
    let mut buf = [0u8; 4];
    assert_eq!(c.recv(&mut buf).await.unwrap(), 4, "truncated like UDP");
    assert_eq!(&buf, b"in-d");
    // close wakes a pending recv and fails later sends.
    let c2 = c.clone();
    let pending = tokio::spawn(async move {
        let mut buf = [0u8; 16];
        c2.recv(&mut buf).await
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    c.close().await.unwrap();
    assert!(pending.await.unwrap().is_err());
    assert!(c.send(b"x").await.is_err());
    assert!(c.is_closed());
}

/// Over real loopback UDP sockets: each side's shell pumps a PacketConn to a socket.
#[tokio::test]
async fn handshake_over_loopback_udp() {
    let s = setup();
    let sock_a = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let sock_b = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr_a = sock_a.local_addr().unwrap();
    let addr_b = sock_b.local_addr().unwrap();

    fn shell(sock: Arc<tokio::net::UdpSocket>, remote: std::net::SocketAddr) -> Arc<PacketConn> {
        let (conn, shell) = PacketConn::with_addrs(64, sock.local_addr().unwrap(), Some(remote));
        let PacketConnShell {
            inbound_tx,
            mut outbound_rx,
        } = shell;
        let tx_sock = sock.clone();
        tokio::spawn(async move {
            while let Some(d) = outbound_rx.recv().await {
                let _ = tx_sock.send_to(&d, remote).await;
            }
        });
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            // Demux per RFC 7983: DTLS is 20..=63; here everything on the socket is DTLS.
            while let Ok((n, _from)) = sock.recv_from(&mut buf).await {
                if (20..=63).contains(&buf[0]) && inbound_tx.send(buf[..n].to_vec()).await.is_err()
                {
                    break;
                }
            }
        });
        conn
    }

    let a = shell(sock_a, addr_b);
    let b = shell(sock_b, addr_a);
    assert_eq!(a.remote_addr(), Some(addr_b));
    let (ra, rb) = handshake(
        a,
        b,
        &s.alice,
        expect(&s.bob, BOB, &s.ca),
        &s.bob,
        expect(&s.alice, ALICE, &s.ca),
        HANDSHAKE,
    )
    .await;
    let (alice, bob) = (ra.unwrap(), rb.unwrap());
    assert_eq!(alice.profile(), SrtpProfile::AeadAes128Gcm);
    alice.send_app(b"OPTIONS").await.unwrap();
    assert_eq!(
        bob.recv_app_timeout(HANDSHAKE).await.unwrap(),
        b"OPTIONS".to_vec()
    );
    let pkt = rtp(42, 9, b"udp media");
    assert_eq!(
        &alice
            .unprotect_rtp(&bob.protect_rtp(&pkt).unwrap())
            .unwrap()[..],
        &pkt[..]
    );
    alice.close().await.unwrap();
    bob.close().await.unwrap();
}
