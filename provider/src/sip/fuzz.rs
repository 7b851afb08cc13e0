//! The bodies of the `cargo fuzz` targets in `fuzz/` (`sip_front_door`, `sip_headers`), kept
//! here so the normal test suite replays the committed seed corpus through exactly the code the
//! fuzzer runs. Each takes untrusted bytes and asserts what must hold of the answer, not only
//! that nothing panics.

use std::net::SocketAddr;

use super::digest::Credentials;
use super::message::{receive, Framed, Limits, Received, StreamFramer, Transport, ALLOWED};
use super::registrar::{bindings, register_domain, ExpiryLimits};
use super::uri::{canonical_aor, name_addr, split_list};

/// Small enough that a fuzzed input reaches the size limits (`413`, a framer's `Broken`).
const LIMITS: Limits = Limits {
    max_message_bytes: 1024,
};

fn source() -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 7], 5062))
}

/// What must hold of whatever `receive` makes of `bytes`.
fn check(bytes: &[u8], transport: Transport) {
    match receive(bytes, source(), transport, LIMITS) {
        Received::Request(inbound) => {
            assert!(ALLOWED.contains(&inbound.method), "{:?}", inbound.method);
            assert!(bytes.len() <= LIMITS.max_message_bytes);
            assert_eq!(inbound.transport, transport);
        }
        Received::Response(response) => {
            assert!(bytes.starts_with(b"SIP/2.0 "));
            assert!((100..700).contains(&response.status));
            assert!(response.branch().is_some());
        }
        Received::Answered(answer) => {
            assert!(
                !bytes.starts_with(b"ACK "),
                "an ACK was answered: {}",
                String::from_utf8_lossy(&answer)
            );
            assert!(answer.starts_with(b"SIP/2.0 "));
            assert!(answer.ends_with(b"\r\n\r\n"));
            let text = std::str::from_utf8(&answer).expect("an answer is UTF-8");
            let status: u16 = text[8..11].parse().expect("a three-digit status");
            assert!((400..700).contains(&status), "{text}");
            match rsip::SipMessage::try_from(answer.as_slice()) {
                Ok(rsip::SipMessage::Response(response)) => {
                    assert_eq!(u16::from(response.status_code), status, "{text}")
                }
                other => panic!("the answer does not parse back as a response: {other:?}\n{text}"),
            }
        }
        Received::Dropped(_) => {}
    }
}

/// `sip_front_door`: `input` as one datagram, then as a stream cut in two at a point the input
/// chooses (its first byte), framed and checked message by message. Framing must not depend on
/// where the stream was cut, up to the point where either way of reading it gave up.
#[doc(hidden)]
pub fn front_door(input: &[u8]) {
    check(input, Transport::Udp);

    let cut = input
        .first()
        .map_or(0, |&b| usize::from(b) % (input.len() + 1));
    let (first, second) = input.split_at(cut);
    let chunked = frame(&[first, second]);
    let whole = frame(&[input]);
    let agreed = chunked.events.len().min(whole.events.len());
    assert_eq!(chunked.events[..agreed], whole.events[..agreed]);
    if !chunked.broken && !whole.broken {
        assert_eq!(chunked.events, whole.events);
    }
    for event in &whole.events {
        if let Framed::Message(message) = event {
            assert!(message.len() <= LIMITS.max_message_bytes);
            check(message, Transport::Tcp);
        }
    }
}

struct Stream {
    /// Messages and pings, up to the first `Broken`.
    events: Vec<Framed>,
    broken: bool,
}

fn frame(chunks: &[&[u8]]) -> Stream {
    let mut framer = StreamFramer::default();
    let mut events = Vec::new();
    for chunk in chunks {
        framer.push(chunk);
        while let Some(framed) = framer.next(LIMITS.max_message_bytes) {
            if let Framed::Broken(_) = framed {
                return Stream {
                    events,
                    broken: true,
                };
            }
            events.push(framed);
        }
    }
    Stream {
        events,
        broken: false,
    }
}

/// `sip_headers`: the header value parsers on arbitrary text.
#[doc(hidden)]
pub fn headers(input: &[u8]) {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    if let Ok(credentials) = Credentials::parse(text) {
        for required in [
            &credentials.username,
            &credentials.realm,
            &credentials.nonce,
            &credentials.uri,
            &credentials.response,
        ] {
            assert!(!required.is_empty());
        }
        let _ = credentials.algorithm();
    }
    for entry in split_list(text) {
        assert!(!entry.is_empty() && entry.trim() == entry, "{entry:?}");
        if let Some((uri, _)) = name_addr(&entry) {
            // Parameters are taken as they come (`;=1` gives an empty name, which nothing
            // reads): only the URI is held to a form.
            assert!(!uri.is_empty() && !uri.contains(char::is_whitespace));
            aor_is_canonical(&uri);
        }
    }
    aor_is_canonical(text);
    registrar(text);
}

/// The registrar's defaults (`sip.min_expires_seconds` and the rest).
const EXPIRY: ExpiryLimits = ExpiryLimits {
    min: 60,
    max: 3600,
    default: 3600,
};

/// What the registrar reads of a REGISTER: the Request-URI's domain, and the bindings of
/// `text`'s Contact entries under an `Expires` header (the first line, when there are two).
/// Each binding is written back as `<uri>;expires=N` in the answer, which must read back.
fn registrar(text: &str) {
    if let Some(domain) = register_domain(text) {
        assert!(!domain.is_empty() && !domain.contains('@'), "{domain:?}");
        assert_eq!(domain, domain.to_ascii_lowercase());
    }
    let (expires, contacts) = match text.split_once('\n') {
        Some((expires, contacts)) => (Some(expires.trim()), contacts),
        None => (None, text),
    };
    let entries = split_list(contacts);
    match bindings(&entries, expires, EXPIRY) {
        Ok(None) => assert_eq!(entries, ["*"]),
        Ok(Some(bound)) => {
            assert_eq!(bound.len(), entries.len());
            for binding in bound {
                let (uri, expires) = (&binding.contact, binding.expires);
                assert!(expires == 0 || (EXPIRY.min..=EXPIRY.max).contains(&expires));
                let written = format!("<{uri}>;expires={expires}");
                let read = name_addr(&written);
                assert_eq!(
                    read,
                    Some((uri.clone(), vec![("expires".into(), expires.to_string())])),
                    "{written:?}"
                );
            }
        }
        Err(_) => {}
    }
}

/// A canonical AoR is its own canonical form.
fn aor_is_canonical(uri: &str) {
    if let Some(aor) = canonical_aor(uri) {
        assert_eq!(
            canonical_aor(&aor).as_deref(),
            Some(aor.as_str()),
            "{uri:?}"
        );
    }
}
