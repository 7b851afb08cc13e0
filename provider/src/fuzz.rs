//! The bodies of the `cargo fuzz` targets in `fuzz/` for what the provider itself reads from the
//! network outside the SIP edge's messages (`sealed_state`, `sdp`, `stun`; the SIP ones are in
//! `sip::fuzz`), kept here so the normal test suite replays the committed seed corpus through
//! exactly the code the fuzzer runs. Each asserts what must hold of the answer, not only that
//! nothing panics.

use std::net::{IpAddr, SocketAddr};

use switchyard_calls::SessionState;
use switchyard_protocol::invitation::RelayChoice;

use crate::relay::auth::{parse_username, rest_password, Quotas, RelayState};
use crate::relay::filter::{forbidden_answer, transaction_of, ALLOCATE_REQUEST, ALLOCATE_SUCCESS};
use crate::relay::policy::PeerPolicy;
use crate::seal::Sealer;
use crate::sip::sdp;

/// The fuzz targets' sealing keys: the current one and the previous one, which still opens.
const SEAL_KEYS: [(&str, [u8; 32]); 2] =
    [("a1b2c3d4e5f6", [0x11; 32]), ("0f0e0d0c0b0a", [0x22; 32])];

/// `sealed_state`: the input as a state token an endpoint or a peer echoes back, then as the
/// state to seal. A token opens only if it is one this provider sealed (the seeds), to a state
/// that seals and opens again; a state made of the input seals and opens to itself; the token
/// with one byte changed (where and how the input says) opens to that state or not at all.
#[doc(hidden)]
pub fn sealed_state(input: &[u8]) {
    let sealer = Sealer::with_keys(&SEAL_KEYS);
    if let Ok(token) = std::str::from_utf8(input) {
        if let Ok(state) = sealer.open::<SessionState>(token) {
            assert_eq!(sealer.open::<SessionState>(&sealer.seal(&state)), Ok(state));
        }
    }
    let state = serde_json::from_slice::<SessionState>(input).unwrap_or_else(|_| {
        let text = String::from_utf8_lossy(input).into_owned();
        SessionState {
            sid: text.clone(),
            caller_uri: "tel:+16502530000".into(),
            caller_token: text,
            caller_endpoint: "ep-1".into(),
            callee_uri: "mailto:bob@example.com".into(),
            rung: vec!["ep-2".into()],
            media: vec![],
            providers: vec![],
            deadline: input.len() as i64,
            origin: None,
            origin_state: None,
            relay_choice: RelayChoice::default(),
        }
    });
    let token = sealer.seal(&state);
    assert_eq!(sealer.open::<SessionState>(&token).as_ref(), Ok(&state));
    let mut bytes = token.into_bytes();
    let at = input.first().map_or(0, |&b| usize::from(b)) % bytes.len();
    bytes[at] ^= input.get(1).copied().filter(|&x| x != 0).unwrap_or(1);
    if let Ok(mutated) = String::from_utf8(bytes) {
        if let Ok(opened) = sealer.open::<SessionState>(&mutated) {
            assert_eq!(opened, state, "{mutated}");
        }
    }
}

/// `sdp`: a session description as a phone sends it (through `sdp::check`) and as the other
/// side's arrives (unchecked). A checked one keeps the limits and travels in a blob unchanged;
/// the edge's rewrites of any description keep its streams: moved to the anchor's addresses,
/// exactly the streams the anchor opens sockets for carry them, and a revision keeps the streams
/// and answers the direction.
#[doc(hidden)]
pub fn sdp(input: &[u8]) {
    if let Ok(offer) = sdp::check(input) {
        assert!(offer.len() <= sdp::MAX_SDP && offer.starts_with("v=0"));
        assert!(sdp::streams(&offer).len() <= sdp::MAX_STREAMS);
        let kinds = sdp::media_kinds(&offer);
        assert!(!kinds.is_empty() && (kinds.len() < 2 || kinds[0] != kinds[1]));
        assert_eq!(sdp::sdp_of(&sdp::blob_of(&offer)).as_ref(), Some(&offer));
    }
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    let streams = sdp::streams(text);
    let enabled = streams.iter().filter(|s| s.port != 0).count();
    let ip = IpAddr::from([203, 0, 113, 9]);
    let addresses: Vec<SocketAddr> = (0..enabled as u16)
        .map(|i| SocketAddr::new(ip, 40_000 + 2 * i))
        .collect();
    let moved = sdp::moved_to(text, &addresses);
    let moved_streams = sdp::streams(&moved);
    let on = |streams: &[sdp::Stream]| streams.iter().map(|s| s.port != 0).collect::<Vec<_>>();
    assert_eq!(on(&moved_streams), on(&streams), "{moved:?}");
    let anchored: Vec<SocketAddr> = moved_streams
        .iter()
        .filter(|s| s.port != 0)
        .map(|s| SocketAddr::new(s.address.expect("a moved stream has an address"), s.port))
        .collect();
    assert_eq!(anchored, addresses, "{moved:?}");
    assert_eq!(
        sdp::media_kinds(&moved),
        sdp::media_kinds(text),
        "{moved:?}"
    );

    let step = input.len() as u64 % 3 + 1;
    let offer_direction = sdp::direction(text);
    let revised = sdp::revised(text, step, offer_direction);
    assert_eq!(sdp::streams(&revised), streams, "{revised:?}");
    if !streams.is_empty() {
        let answer = sdp::direction(&revised);
        assert_eq!(
            sdp::direction(&sdp::revised(text, step, answer)),
            offer_direction
        );
    }
    let _ = sdp::has_ice(text);
}

/// The `stun` target's clock (Unix seconds), so that the seeds' credentials stay valid.
const NOW: u64 = 1_800_000_000;
/// The relay secret, realm and endpoint of the `stun` target's credentials.
const SECRET: &[u8] = b"0123456789abcdef";
const REALM: &str = "relay.example.org";
const ENDPOINT: &str = "ep-1";

fn relay_state() -> RelayState {
    let state = RelayState::new(
        SECRET.to_vec(),
        REALM.into(),
        PeerPolicy::default(),
        Quotas {
            per_endpoint: 2,
            per_member: 2,
            total: 4,
            lookups_at_once: 256,
            known_endpoints: 100_000,
        },
        None,
        600,
    );
    state.issue(ENDPOINT, NOW + 300);
    state
}

/// `stun`: a datagram as the relay's listening socket reads it before the TURN server does:
/// whether it is an Allocate (request or success) and its transaction; the long-term key the
/// server's authentication asks the relay for, from its USERNAME and REALM; and the `403` the
/// relay itself answers for a permission or channel to a forbidden peer, which must be a
/// well-formed error response to that request under the same key.
#[doc(hidden)]
pub fn stun(input: &[u8]) {
    use stun::attributes::{ATTR_REALM, ATTR_USERNAME};
    use stun::error_code::{ErrorCodeAttribute, CODE_FORBIDDEN};
    use stun::integrity::MessageIntegrity;
    use stun::message::{Getter, Message, CLASS_ERROR_RESPONSE};
    use stun::textattrs::TextAttribute;

    for typ in [ALLOCATE_REQUEST, ALLOCATE_SUCCESS] {
        if let Some(transaction) = transaction_of(input, typ) {
            assert_eq!(input[..2], typ);
            assert_eq!(input[8..20], transaction);
        }
    }
    let state = relay_state();
    let mut request = Message::new();
    request.raw = input.to_vec();
    let mut key = None;
    if request.decode().is_ok() {
        let username = TextAttribute::get_from_as(&request, ATTR_USERNAME);
        let realm = TextAttribute::get_from_as(&request, ATTR_REALM);
        if let (Ok(username), Ok(realm)) = (username, realm) {
            if let Ok(found) = state.check(&username.text, &realm.text, NOW) {
                let (expiry, endpoint) = parse_username(&username.text).expect("it was checked");
                assert_eq!((endpoint, realm.text.as_str()), (ENDPOINT, REALM));
                assert!((NOW..=NOW + 660).contains(&expiry));
                let password = rest_password(SECRET, &username.text);
                let expected = turn::auth::generate_auth_key(&username.text, REALM, &password);
                assert_eq!(found, expected);
                key = Some(found);
            }
        }
    }
    if let Some(answer) = forbidden_answer(&state, input, NOW) {
        let key = key.expect("a 403 is only for authenticated requests");
        let mut response = Message::new();
        response.raw = answer;
        response.decode().expect("the 403 decodes");
        assert_eq!(response.transaction_id, request.transaction_id);
        assert_eq!(response.typ.method, request.typ.method);
        assert_eq!(response.typ.class, CLASS_ERROR_RESPONSE);
        let mut code = ErrorCodeAttribute::default();
        code.get_from(&response).expect("the 403 has an error code");
        assert!(code.code == CODE_FORBIDDEN, "{}", code.code.0);
        MessageIntegrity(key)
            .check(&mut response)
            .expect("the 403 is signed with the request's key");
    }
    nonce_pool(input, &request);
}

/// The nonce pool in front of the TURN server: with one nonce of the server's noted, whatever
/// it answers itself is a `401` or `438` for the request's transaction, carrying that nonce and
/// the realm; and noting the input as if the server sent it never panics.
fn nonce_pool(input: &[u8], request: &stun::message::Message) {
    use crate::relay::nonces::{NoncePool, Verdict};
    use stun::attributes::{ATTR_NONCE, ATTR_REALM};
    use stun::error_code::{ErrorCodeAttribute, CODE_STALE_NONCE, CODE_UNAUTHORIZED};
    use stun::message::{Getter, Message, CLASS_ERROR_RESPONSE};
    use stun::textattrs::TextAttribute;

    let now = std::time::Instant::now();
    let mut pool = NoncePool::default();
    pool.note_sent(input, now);
    let mut pool = NoncePool::default();
    pool.note_sent(
        &crate::relay::nonces::allocate_challenge("fuzz-nonce", REALM),
        now,
    );
    if let Verdict::Answer(answer) = pool.verdict(input, REALM, now) {
        let mut response = Message::new();
        response.raw = answer;
        response.decode().expect("the challenge decodes");
        assert_eq!(response.transaction_id, request.transaction_id);
        assert_eq!(response.typ.method, request.typ.method);
        assert_eq!(response.typ.class, CLASS_ERROR_RESPONSE);
        let mut code = ErrorCodeAttribute::default();
        code.get_from(&response)
            .expect("the challenge has an error code");
        assert!(code.code == CODE_UNAUTHORIZED || code.code == CODE_STALE_NONCE);
        let nonce = TextAttribute::get_from_as(&response, ATTR_NONCE).expect("a nonce");
        assert_eq!(nonce.text, "fuzz-nonce");
        let realm = TextAttribute::get_from_as(&response, ATTR_REALM).expect("a realm");
        assert_eq!(realm.text, REALM);
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;

    fn seeds() -> PathBuf {
        // At run time, not compile time: a build cache shared by checkouts at other paths may hand
        // this binary over from one of them.
        Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo"))
            .join("../fuzz/corpus-seed")
    }

    /// The committed seed corpus of each fuzz target holds the invariants.
    #[test]
    fn the_provider_fuzz_seeds_hold() {
        for (target, body) in [
            ("sealed_state", sealed_state as fn(&[u8])),
            ("sdp", sdp),
            ("stun", stun),
            ("sip_front_door", crate::sip::fuzz::front_door),
            ("sip_headers", crate::sip::fuzz::headers),
        ] {
            let mut count = 0;
            for entry in std::fs::read_dir(seeds().join(target)).unwrap() {
                let path = entry.unwrap().path();
                let bytes = std::fs::read(&path).unwrap();
                if std::panic::catch_unwind(|| body(&bytes)).is_err() {
                    panic!("{} fails", path.display());
                }
                count += 1;
            }
            assert!(count >= 5, "{target}: {count} seeds");
        }
    }

    fn write(target: &str, name: &str, bytes: &[u8]) {
        let dir = seeds().join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    }

    /// Writes seeds from what the provider and its TURN clients make. Run by hand
    /// (`cargo test -p switchyard-provider write_provider_fuzz_seeds -- --ignored`); the
    /// hand-written seeds beside them are kept.
    #[test]
    #[ignore]
    fn write_provider_fuzz_seeds() {
        use stun::agent::TransactionId;
        use stun::attributes::{ATTR_NONCE, ATTR_REALM, ATTR_USERNAME};
        use stun::fingerprint::FINGERPRINT;
        use stun::integrity::MessageIntegrity;
        use stun::message::{
            Message, MessageType, Setter, CLASS_REQUEST, CLASS_SUCCESS_RESPONSE, METHOD_ALLOCATE,
            METHOD_CHANNEL_BIND, METHOD_CREATE_PERMISSION,
        };
        use stun::textattrs::TextAttribute;
        use turn::proto::channum::ChannelNumber;
        use turn::proto::peeraddr::PeerAddress;
        use turn::proto::reqtrans::RequestedTransport;
        use turn::proto::PROTO_UDP;

        let state = SessionState {
            sid: "session-0001".into(),
            caller_uri: "tel:+16502530000".into(),
            caller_token: "tok-a".into(),
            caller_endpoint: "ep-1".into(),
            callee_uri: "mailto:bob@example.com".into(),
            rung: vec!["ep-2".into(), "ep-3".into()],
            media: vec![switchyard_protocol::capabilities::MediaKind::Audio],
            providers: vec!["b.example".into()],
            deadline: 1_800_000_060_000,
            origin: Some("c.example".into()),
            origin_state: Some("v1.k.s".into()),
            relay_choice: RelayChoice::CalleeProvider,
        };
        let current = Sealer::with_keys(&SEAL_KEYS);
        let previous = Sealer::with_keys(&SEAL_KEYS[1..]);
        write(
            "sealed_state",
            "token_current_key",
            current.seal(&state).as_bytes(),
        );
        write(
            "sealed_state",
            "token_previous_key",
            previous.seal(&state).as_bytes(),
        );
        write(
            "sealed_state",
            "state_json",
            &serde_json::to_vec(&state).unwrap(),
        );
        let unknown = Sealer::with_keys(&[("ffffffffffff", [0x33; 32])]);
        write(
            "sealed_state",
            "token_unknown_key",
            unknown.seal(&state).as_bytes(),
        );
        let mut minimal = state.clone();
        (minimal.origin, minimal.origin_state) = (None, None);
        write(
            "sealed_state",
            "token_minimal",
            current.seal(&minimal).as_bytes(),
        );
        write("sealed_state", "garbage", b"v1.a1b2c3d4e5f6.AAAA");

        let offer = "v=0\r\no=alice 2890844526 2890844526 IN IP4 192.0.2.1\r\ns=-\r\n\
                     c=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 49170 RTP/AVP 0 8\r\n\
                     a=rtpmap:0 PCMU/8000\r\na=sendrecv\r\nm=video 51372 RTP/AVP 96\r\n\
                     a=rtpmap:96 H264/90000\r\na=rtcp-mux\r\n";
        write("sdp", "offer", offer.as_bytes());
        let disabled = offer.replace("m=video 51372", "m=video 0");
        write("sdp", "video_disabled", disabled.as_bytes());
        let ice = "v=0\r\no=- 1 2 IN IP6 2001:db8::1\r\ns=-\r\nt=0 0\r\n\
                   m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP6 2001:db8::1\r\n\
                   a=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdef012345\r\na=sendonly\r\n\
                   a=rtcp:9 IN IP6 2001:db8::1\r\n";
        write("sdp", "ice_sendonly", ice.as_bytes());
        write(
            "sdp",
            "answer_moved",
            sdp::moved_to(
                offer,
                &[
                    "198.51.100.1:40000".parse().unwrap(),
                    "198.51.100.1:40002".parse().unwrap(),
                ],
            )
            .as_bytes(),
        );
        write(
            "sdp",
            "no_origin",
            b"v=0\r\ns=-\r\nm=audio 5000 RTP/AVP 0\r\n",
        );
        let many: String = std::iter::once("v=0\no=- 1 1 IN IP4 192.0.2.1\n".to_string())
            .chain((0..9).map(|i| format!("m=audio {} RTP/AVP 0\n", 5000 + 2 * i)))
            .collect();
        write("sdp", "too_many_streams", many.as_bytes());

        let relay = relay_state();
        let (username, password) = relay.issue(ENDPOINT, NOW + 300);
        let integrity = || {
            MessageIntegrity::new_long_term_integrity(
                username.clone(),
                REALM.into(),
                password.clone(),
            )
        };
        let text = |attr, value: &str| TextAttribute::new(attr, value.into());
        let build = |setters: Vec<Box<dyn Setter>>| {
            let mut m = Message::new();
            m.build(&setters).unwrap();
            m.raw
        };
        let allocate = build(vec![
            Box::new(TransactionId::new()),
            Box::new(MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST)),
            Box::new(RequestedTransport {
                protocol: PROTO_UDP,
            }),
            Box::new(FINGERPRINT),
        ]);
        write("stun", "allocate", &allocate);
        let authenticated = |method, extra: Vec<Box<dyn Setter>>| {
            let mut setters: Vec<Box<dyn Setter>> = vec![
                Box::new(TransactionId::new()),
                Box::new(MessageType::new(method, CLASS_REQUEST)),
            ];
            setters.extend(extra);
            setters.push(Box::new(text(ATTR_USERNAME, &username)));
            setters.push(Box::new(text(ATTR_REALM, REALM)));
            setters.push(Box::new(text(ATTR_NONCE, "6e6f6e6365")));
            setters.push(Box::new(integrity()));
            setters.push(Box::new(FINGERPRINT));
            build(setters)
        };
        write(
            "stun",
            "allocate_with_credentials",
            &authenticated(
                METHOD_ALLOCATE,
                vec![Box::new(RequestedTransport {
                    protocol: PROTO_UDP,
                })],
            ),
        );
        let peer = |ip: &str| PeerAddress {
            ip: ip.parse().unwrap(),
            port: 5000,
        };
        write(
            "stun",
            "create_permission_forbidden",
            &authenticated(METHOD_CREATE_PERMISSION, vec![Box::new(peer("10.0.0.7"))]),
        );
        write(
            "stun",
            "create_permission_public",
            &authenticated(
                METHOD_CREATE_PERMISSION,
                vec![Box::new(peer("198.51.100.7"))],
            ),
        );
        write(
            "stun",
            "channel_bind_loopback_v6",
            &authenticated(
                METHOD_CHANNEL_BIND,
                vec![Box::new(ChannelNumber(0x4001)), Box::new(peer("::1"))],
            ),
        );
        let success = build(vec![
            Box::new(TransactionId::new()),
            Box::new(MessageType::new(METHOD_ALLOCATE, CLASS_SUCCESS_RESPONSE)),
            Box::new(FINGERPRINT),
        ]);
        write("stun", "allocate_success", &success);
        // Every generated 403 case must really produce one.
        let forbidden = std::fs::read(seeds().join("stun/create_permission_forbidden")).unwrap();
        assert!(forbidden_answer(&relay_state(), &forbidden, NOW).is_some());
    }
}
