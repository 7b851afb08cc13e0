//! The bodies of the `cargo fuzz` targets in `fuzz/` that read the protocol's wire forms
//! (`dict_plist`, `dict_json`, `bloom`, `forward`, `relay_frame`), kept here so the normal test
//! suite replays the committed seed corpus through exactly the code the fuzzer runs. Each takes
//! untrusted bytes and asserts what must hold of the answer, not only that nothing panics.

use std::fmt::Debug;

use crate::bloom::{self, BloomFilter, BloomUpdate};
use crate::dict::{Dict, Encoding, Value, MAX_DEPTH};
use crate::invitation::{
    AcceptForward, AcceptRequest, CancelForward, CancelRequest, InitiateAnswer, InitiateForward,
    InitiateRequest, MessageError, Push, RejectForward, RejectRequest, SessionId, UpdateForward,
    UpdateRequest,
};
use crate::relay_frame::{
    append_length_prefixed, split_length_prefixed, Datagram, Frame, MAX_PAYLOAD,
};
use crate::uri::Canonicalizer;

const BOTH: [Encoding; 2] = [Encoding::Plist, Encoding::Json];

/// `dict_plist` and `dict_json`: a body as it arrives. What decodes is at most [`MAX_DEPTH`]
/// deep and reads back equal from its own encoding in either form (JSON carries data as base64
/// strings, so the JSON reading is compared with data turned into such strings).
#[doc(hidden)]
pub fn dict(input: &[u8], encoding: Encoding) {
    let Ok(dict) = Dict::decode(input, encoding) else {
        return;
    };
    assert!(depth(&dict) <= MAX_DEPTH, "{dict:?}");
    for to in BOTH {
        let wire = dict.encode(to);
        let again = Dict::decode(&wire, to).unwrap_or_else(|e| {
            panic!(
                "{dict:?} does not read back from {to:?}: {e}\n{}",
                String::from_utf8_lossy(&wire)
            )
        });
        match to {
            Encoding::Plist => assert_eq!(again, dict),
            Encoding::Json => assert_eq!(again, as_json(&dict)),
        }
        assert_eq!(
            again.encode(to),
            Dict::decode(&again.encode(to), to).unwrap().encode(to)
        );
    }
}

/// Nesting levels, the top-level dictionary being level 1.
fn depth(dict: &Dict) -> usize {
    fn value(v: &Value) -> usize {
        match v {
            Value::Dict(d) => depth(d),
            Value::Array(items) => 1 + items.iter().map(value).max().unwrap_or(0),
            _ => 0,
        }
    }
    1 + dict.iter().map(|(_, v)| value(v)).max().unwrap_or(0)
}

/// What JSON makes of `dict`: data becomes base64 strings.
fn as_json(dict: &Dict) -> Dict {
    fn value(v: &Value) -> Value {
        use base64::Engine;
        match v {
            Value::Data(bytes) => {
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            }
            Value::Array(items) => Value::Array(items.iter().map(value).collect()),
            Value::Dict(d) => Value::Dict(as_json(d)),
            other => other.clone(),
        }
    }
    let mut out = Dict::new();
    for (k, v) in dict.iter() {
        out.insert(k, value(v));
    }
    out
}

/// The largest filter the `bloom` target holds a copy of to apply an incremental update to (the
/// provider applies one only to a copy it holds, within `federation.max_filter_bytes`).
const MAX_HELD_BYTES: u64 = 64 * 1024;

/// `bloom`: a filter answer as a peer sends it. The first byte chooses the form: a property
/// list, JSON, or a dictionary built field by field from the bytes (so the fuzzer reaches the
/// filter's own checks without first writing a valid body). A decoded update holds its bounds,
/// answers lookups, and encodes back to itself; an incremental one applied to a held copy gives
/// a filter whose difference from that copy is the update.
#[doc(hidden)]
pub fn bloom(input: &[u8]) {
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    let dict = match mode % 3 {
        0 => Dict::decode(rest, Encoding::Plist),
        1 => Dict::decode(rest, Encoding::Json),
        _ => Ok(bloom_fields(mode, rest)),
    };
    let Ok(dict) = dict else {
        return;
    };
    let Ok(update) = bloom::from_dict(&dict) else {
        return;
    };
    let written = match &update {
        BloomUpdate::Full { generation, filter } => {
            assert!(bloom::validate_bits(filter.bits()).is_ok());
            assert_eq!(filter.bytes().len() as u64, filter.bits() / 8);
            let rate = filter.estimated_false_positive_rate();
            assert!((0.0..=1.0).contains(&rate), "{rate}");
            let _ = filter.contains("tel:+16502530000");
            bloom::to_full_dict(filter, *generation)
        }
        BloomUpdate::Incremental {
            since,
            generation,
            bits,
            items,
            flips,
        } => {
            assert!(bloom::validate_bits(*bits).is_ok());
            assert!(flips.windows(2).all(|w| w[0] < w[1]));
            assert!(flips.iter().all(|f| f < bits));
            if bits / 8 > MAX_HELD_BYTES {
                return;
            }
            let held = BloomFilter::empty(*bits).expect("a decoded size is valid");
            let mut newer = held.clone();
            newer
                .apply(flips, *items)
                .expect("a decoded update applies");
            assert_eq!(&newer.diff(&held).unwrap(), flips);
            let _ = newer.contains("mailto:bob@example.com");
            bloom::to_incremental_dict(&newer, *since, *generation, flips)
        }
    };
    for encoding in BOTH {
        let wire = Dict::decode(&written.encode(encoding), encoding).unwrap();
        assert_eq!(bloom::from_dict(&wire).as_ref(), Ok(&update));
    }
}

/// A filter dictionary from raw bytes: `mode`'s bits say which fields are present and whether
/// `bits`, `flip-count` and `rice-bits` are taken from the bytes as they are or made to fit.
fn bloom_fields(mode: u8, bytes: &[u8]) -> Dict {
    let mut rest = bytes;
    let mut int = || {
        let (head, tail) = rest.split_at(rest.len().min(8));
        rest = tail;
        let mut word = [0u8; 8];
        word[..head.len()].copy_from_slice(head);
        i64::from_le_bytes(word)
    };
    let (generation, since, count, rice_bits, items, raw_bits) =
        (int(), int(), int(), int(), int(), int());
    let mut body = rest;
    let incremental = mode & 0x04 != 0;
    let raw = mode & 0x08 != 0;
    let bits = if raw {
        raw_bits
    } else if incremental {
        // 1 to 16 blocks (all allowed sizes) times a power of two up to 128.
        ((raw_bits & 0x0f) + 1) << ((raw_bits >> 4) & 0x07) << 8
    } else {
        let blocks = (body.len() / 32).min(16);
        body = &body[..blocks * 32];
        blocks as i64 * 256
    };
    let mut dict = Dict::new()
        .with("algorithm", bloom::ALGORITHM)
        .with("generation", generation)
        .with("bits", bits)
        .with("items", items);
    if incremental {
        dict.insert("since", since);
        dict.insert("flip-count", if raw { count } else { count & 0x3ff });
        dict.insert("rice-bits", if raw { rice_bits } else { rice_bits & 0x0f });
        dict.insert("flips", body.to_vec());
    }
    if !incremental || mode & 0x20 != 0 {
        dict.insert("filter", body.to_vec());
    }
    dict
}

/// `forward`: a dictionary (property list or JSON, by the first byte) read as every Forward,
/// answer, Request and Push of the invitation protocol. Whatever reads writes back a dictionary
/// that reads as the same message, through either encoding.
#[doc(hidden)]
pub fn forward(input: &[u8]) {
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    let encoding = BOTH[usize::from(mode & 1)];
    let canon = Canonicalizer::new((mode & 2 != 0).then_some(1));
    let Ok(dict) = Dict::decode(rest, encoding) else {
        return;
    };
    // The sender check is tested for itself; here every message claims whom it comes from.
    let claims = |field: &str| dict.opt_str(field).ok().flatten().unwrap_or("").to_string();
    let origin = claims("originating-provider");
    let answering = claims("answering-provider");
    let from = claims("from-provider");
    let session = SessionId::parse("session-0001").unwrap();

    holds(
        &dict,
        |d| InitiateForward::from_dict(d, &canon, &origin),
        InitiateForward::to_dict,
    );
    holds(
        &dict,
        |d| AcceptForward::from_dict(d, &canon, &answering),
        AcceptForward::to_dict,
    );
    holds(
        &dict,
        |d| RejectForward::from_dict(d, &answering),
        RejectForward::to_dict,
    );
    holds(
        &dict,
        |d| CancelForward::from_dict(d, &from),
        CancelForward::to_dict,
    );
    holds(
        &dict,
        |d| UpdateForward::from_dict(d, &from),
        UpdateForward::to_dict,
    );
    holds(&dict, InitiateAnswer::from_dict, |a| a.to_dict(&session));
    holds(&dict, Push::from_dict, Push::to_dict);
    holds(
        &dict,
        |d| InitiateRequest::from_dict(d, &canon),
        InitiateRequest::to_dict,
    );
    holds(
        &dict,
        |d| AcceptRequest::from_dict(d, &canon),
        AcceptRequest::to_dict,
    );
    holds(
        &dict,
        |d| RejectRequest::from_dict(d, &canon),
        RejectRequest::to_dict,
    );
    holds(
        &dict,
        |d| CancelRequest::from_dict(d, &canon),
        CancelRequest::to_dict,
    );
    holds(
        &dict,
        |d| UpdateRequest::from_dict(d, &canon),
        UpdateRequest::to_dict,
    );
}

/// If `dict` reads as a message, the message's own dictionary reads as the same message in
/// either encoding.
fn holds<T: PartialEq + Debug>(
    dict: &Dict,
    read: impl Fn(&Dict) -> Result<T, MessageError>,
    write: impl Fn(&T) -> Dict,
) {
    let Ok(message) = read(dict) else {
        return;
    };
    let written = write(&message);
    for encoding in BOTH {
        let wire = Dict::decode(&written.encode(encoding), encoding).unwrap();
        match read(&wire) {
            Ok(again) => assert_eq!(again, message, "{encoding:?}"),
            Err(e) => panic!("{message:?} does not read back from {encoding:?}: {e}"),
        }
    }
}

/// `relay_frame`: the input as one frame (a WebSocket message) and as a long-poll body. A frame
/// encodes back to itself (an IPv4-mapped IPv6 address to the shorter IPv4 form); a body's
/// frames are non-empty, within a length prefix, and written back give the body up to its first
/// fault.
#[doc(hidden)]
pub fn relay_frame(input: &[u8]) {
    if let Ok(frame) = Frame::decode(input) {
        let encoded = frame.encode();
        assert_eq!(Frame::decode(&encoded), Ok(frame));
        if encoded != input {
            // Only a mapped address is written differently: family 6 read as IPv4.
            assert_eq!(input.get(1), Some(&6));
            assert_eq!(encoded.len() + 12, input.len());
        }
        match frame {
            Frame::Data(datagram) => {
                assert!(datagram.payload().len() <= MAX_PAYLOAD);
                assert_eq!(Datagram::decode(input), Ok(datagram));
                let copy = Datagram::new(datagram.peer(), datagram.payload()).unwrap();
                assert_eq!(copy.encode(), encoded);
            }
            Frame::Allocated(_) => assert!(Datagram::decode(input).is_err()),
        }
    }
    let mut rebuilt = Vec::new();
    let mut faulted = false;
    for frame in split_length_prefixed(input) {
        match frame {
            Ok(frame) => {
                assert!(!frame.is_empty() && frame.len() <= usize::from(u16::MAX));
                append_length_prefixed(&mut rebuilt, frame).expect("a frame read fits");
                let _ = Frame::decode(frame);
            }
            Err(_) => {
                faulted = true;
                break;
            }
        }
    }
    if faulted {
        assert!(input.starts_with(&rebuilt) && rebuilt.len() < input.len());
    } else {
        assert_eq!(rebuilt, input);
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::bloom::BloomFilter;
    use crate::capabilities::{Capabilities, MediaKind};
    use crate::invitation::{
        CancelReason, Envelope, ForwardCancelReason, RejectReason, RelayChoice,
    };

    fn seeds() -> PathBuf {
        // At run time, not compile time: a build cache shared by checkouts at other paths may hand
        // this binary over from one of them.
        Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo"))
            .join("../fuzz/corpus-seed")
    }

    fn dict_plist(input: &[u8]) {
        dict(input, Encoding::Plist)
    }

    fn dict_json(input: &[u8]) {
        dict(input, Encoding::Json)
    }

    /// The committed seed corpus of each fuzz target holds the invariants.
    #[test]
    fn the_fuzz_seeds_hold() {
        for (target, body) in [
            ("dict_plist", dict_plist as fn(&[u8])),
            ("dict_json", dict_json),
            ("bloom", bloom),
            ("forward", forward),
            ("relay_frame", relay_frame),
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

    fn envelope() -> Envelope {
        Envelope {
            session_id: SessionId::parse("session-0001").unwrap(),
            timestamp: 1_800_000_000,
            forward_id: "f".repeat(22),
        }
    }

    fn initiate() -> InitiateForward {
        InitiateForward {
            envelope: envelope(),
            originating_provider: "a.example".into(),
            origin_state: "v1.k.sealed".into(),
            caller_uri: "tel:+16502530000".into(),
            caller_token: "tok-a".into(),
            callee_uri: "mailto:bob@example.com".into(),
            caller_blob: vec![7; 40],
            caller_capabilities: Capabilities::default(),
            caller_ca: None,
            media: vec![MediaKind::Audio, MediaKind::Video],
            ring_deadline: 1_800_000_060_000,
            relay_choice: RelayChoice::CalleeProvider,
            attestation: Some((crate::attestation::Level::Full, vec![1, 2, 3])),
        }
    }

    fn write(target: &str, name: &str, bytes: &[u8]) {
        let dir = seeds().join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    }

    /// Writes the seeds of the protocol's targets from messages this crate makes. Run by hand
    /// (`cargo test -p switchyard-protocol write_fuzz_seeds -- --ignored`) when a wire form
    /// changes; the hand-written seeds beside them are kept.
    #[test]
    #[ignore]
    fn write_fuzz_seeds() {
        let accept = AcceptForward {
            envelope: envelope(),
            answering_provider: "b.example".into(),
            origin_state: "v1.k.sealed".into(),
            callee_uri: "mailto:bob@example.com".into(),
            callee_token: "tok-b".into(),
            callee_blob: vec![9; 20],
            callee_ca: None,
        };
        let reject = RejectForward {
            envelope: envelope(),
            answering_provider: "b.example".into(),
            origin_state: "v1.k.s".into(),
            reason: RejectReason::Declined,
            reason_text: Some("Busy here".into()),
        };
        let cancel = CancelForward {
            envelope: envelope(),
            from_provider: "b.example".into(),
            reason: ForwardCancelReason::AnsweredElsewhere,
            origin_state: Some("v1.k.s".into()),
        };
        let update = UpdateForward {
            envelope: envelope(),
            from_provider: "a.example".into(),
            sender_token: "tok-a".into(),
            blob: vec![1, 2],
            origin_state: None,
        };
        let answer = InitiateAnswer {
            answering_provider: "b.example".into(),
            rung: 0,
            refusal: Some((RejectReason::Busy, Some("all lines busy".into()))),
        };
        let request = InitiateRequest {
            session_id: SessionId::parse("session-0001").unwrap(),
            self_uri: "tel:+16502530000".into(),
            self_token: "tok-a".into(),
            self_blob: vec![3; 12],
            peer_uri: "mailto:bob@example.com".into(),
            media: vec![MediaKind::Audio],
        };
        let cancel_push = Push::Cancel(crate::invitation::CancelPush {
            session_id: SessionId::parse("session-0001").unwrap(),
            self_uri: "mailto:bob@example.com".into(),
            peer_uri: "tel:+16502530000".into(),
            reason: CancelReason::Timeout,
        });
        let messages = [
            ("initiate", initiate().to_dict()),
            ("accept", accept.to_dict()),
            ("reject", reject.to_dict()),
            ("cancel", cancel.to_dict()),
            ("update", update.to_dict()),
            ("initiate_answer", answer.to_dict(&envelope().session_id)),
            ("initiate_request", request.to_dict()),
            ("cancel_push", cancel_push.to_dict()),
        ];
        for (name, message) in &messages {
            // The first byte chooses the encoding (bit 0) and the default country code (bit 1).
            let mut plist = vec![0];
            plist.extend(message.encode(Encoding::Plist));
            write("forward", &format!("{name}.plist"), &plist);
            let mut json = vec![1];
            json.extend(message.encode(Encoding::Json));
            write("forward", &format!("{name}.json"), &json);
        }
        for (name, message) in &messages[..4] {
            write("dict_plist", name, &message.encode(Encoding::Plist));
            write("dict_json", name, &message.encode(Encoding::Json));
        }

        let uris = [
            "tel:+16502530000",
            "mailto:bob@example.com",
            "tel:+442079460000",
        ];
        let older = BloomFilter::build(uris[..2].iter().copied(), 0.01).unwrap();
        let newer = BloomFilter::build(uris.iter().copied(), 0.01).unwrap();
        // The same size (bits follow the capacity, so build the older one at the newer's).
        let mut older_same = BloomFilter::empty(newer.bits()).unwrap();
        for uri in &uris[..2] {
            older_same.insert(uri);
        }
        let flips = newer.diff(&older_same).unwrap();
        let full = bloom::to_full_dict(&newer, 7);
        let incremental = bloom::to_incremental_dict(&newer, 6, 7, &flips);
        for (name, dict) in [
            ("full", &full),
            ("incremental", &incremental),
            ("full_small", &bloom::to_full_dict(&older, 6)),
        ] {
            let mut plist = vec![0];
            plist.extend(dict.encode(Encoding::Plist));
            write("bloom", &format!("{name}.plist"), &plist);
            let mut json = vec![1];
            json.extend(dict.encode(Encoding::Json));
            write("bloom", &format!("{name}.json"), &json);
        }
        write("dict_plist", "bloom_full", &full.encode(Encoding::Plist));
        write(
            "dict_json",
            "bloom_incremental",
            &incremental.encode(Encoding::Json),
        );

        let peer4 = "192.0.2.10:3478".parse().unwrap();
        let peer6 = "[2001:db8::7]:40000".parse().unwrap();
        let mapped = "[::ffff:192.0.2.10]:3478".parse().unwrap();
        let stun_like = [
            0u8, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
        ];
        let data4 = Frame::Data(Datagram::new(peer4, &stun_like).unwrap()).encode();
        let data6 = Frame::Data(Datagram::new(peer6, b"hello").unwrap()).encode();
        let allocated = Frame::Allocated(peer6).encode();
        let mut mapped_frame = vec![crate::relay_frame::DATA, 6];
        mapped_frame.extend(match mapped {
            std::net::SocketAddr::V6(v6) => v6.ip().octets(),
            _ => unreachable!(),
        });
        mapped_frame.extend(3478u16.to_be_bytes());
        mapped_frame.extend(b"x");
        let mut body = Vec::new();
        for frame in [&allocated, &data4, &data6] {
            append_length_prefixed(&mut body, frame).unwrap();
        }
        write("relay_frame", "data_v4", &data4);
        write("relay_frame", "data_v6", &data6);
        write("relay_frame", "allocated", &allocated);
        write("relay_frame", "data_mapped_v6", &mapped_frame);
        write("relay_frame", "long_poll_body", &body);
        write("relay_frame", "long_poll_cut", &body[..body.len() - 3]);
    }
}
