//! A SIP phone's session description, as it travels through the invitation protocol.
//!
//! The edge does not terminate media: the phone's SDP offer or answer becomes the call's blob,
//! wrapped in a property list (`{sdp = "v=0..."}`) so that no endpoint can take it for a native
//! media blob, and the other side's blob becomes SDP again. What is checked here is only what
//! the edge relies on: that the body is a session description at all, and which media it offers.

use switchyard_protocol::capabilities::MediaKind;
use switchyard_protocol::dict::{Dict, Encoding};

/// The largest SDP body the edge carries (the blob limit of the invitation protocol, less the
/// property-list wrapping).
pub const MAX_SDP: usize = 15 * 1024;
/// The most `m=` sections the edge takes in one description: an anchor binds one or two
/// sockets per section, so 700 of them would cost 1,400 sockets for one call. Audio, video and
/// a few more is what phones offer.
pub const MAX_STREAMS: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    #[error("the body is not UTF-8")]
    NotText,
    #[error("the session description exceeds {MAX_SDP} bytes")]
    TooLarge,
    #[error("the session description does not start with v=0")]
    NoVersion,
    #[error("the session description has no o= line")]
    NoOrigin,
    #[error("the session description offers no audio or video stream")]
    NoMedia,
    #[error("the session description has more than {MAX_STREAMS} m= sections")]
    TooManyStreams,
}

/// Checks a phone's SDP body.
pub fn check(body: &[u8]) -> Result<String, SdpError> {
    if body.len() > MAX_SDP {
        return Err(SdpError::TooLarge);
    }
    let text = std::str::from_utf8(body).map_err(|_| SdpError::NotText)?;
    if !text.starts_with("v=0") {
        return Err(SdpError::NoVersion);
    }
    if !lines(text).any(|l| l.starts_with("o=")) {
        return Err(SdpError::NoOrigin);
    }
    if lines(text).filter(|l| l.starts_with("m=")).count() > MAX_STREAMS {
        return Err(SdpError::TooManyStreams);
    }
    if media_kinds(text).is_empty() {
        return Err(SdpError::NoMedia);
    }
    Ok(text.to_string())
}

fn lines(sdp: &str) -> impl Iterator<Item = &str> {
    sdp.lines().map(|l| l.trim_end_matches('\r'))
}

/// The port of an `m=` line's value (`audio 49170/2 RTP/AVP 0`), 0 (disabled) when it is not
/// a port number. [`media_kinds`], [`streams`] and [`moved_to`] all read it here, so that a
/// stream the anchor opens no socket for is neither offered nor given an address.
fn media_port(media: &str) -> u16 {
    media
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.split('/').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

/// The kinds of media with a stream that is not disabled (port 0), in order, each once.
pub fn media_kinds(sdp: &str) -> Vec<MediaKind> {
    let mut kinds = Vec::new();
    for line in lines(sdp) {
        let Some(media) = line.strip_prefix("m=") else {
            continue;
        };
        let kind = match media.split_whitespace().next() {
            Some("audio") => MediaKind::Audio,
            Some("video") => MediaKind::Video,
            _ => continue,
        };
        if media_port(media) != 0 && !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    kinds
}

/// One `m=` section, as far as anchoring it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stream {
    pub port: u16,
    /// Its `c=` address, else the session's.
    pub address: Option<std::net::IpAddr>,
    /// `a=rtcp-mux`: RTCP on the RTP port.
    pub rtcp_mux: bool,
}

fn connection_address(line: &str) -> Option<std::net::IpAddr> {
    let mut parts = line.strip_prefix("c=")?.split_whitespace();
    let (_net, _family, address) = (parts.next()?, parts.next()?, parts.next()?);
    address.split('/').next()?.parse().ok()
}

/// The `m=` sections in order.
pub fn streams(sdp: &str) -> Vec<Stream> {
    let mut session_address = None;
    let mut streams: Vec<Stream> = Vec::new();
    for line in lines(sdp) {
        if let Some(media) = line.strip_prefix("m=") {
            streams.push(Stream {
                port: media_port(media),
                address: session_address,
                rtcp_mux: false,
            });
        } else if line.starts_with("c=") {
            let address = connection_address(line);
            match streams.last_mut() {
                Some(stream) => stream.address = address.or(stream.address),
                None => session_address = address,
            }
        } else if line == "a=rtcp-mux" {
            if let Some(stream) = streams.last_mut() {
                stream.rtcp_mux = true;
            }
        }
    }
    streams
}

/// Whether the description runs ICE (RFC 8839: `a=ice-ufrag`).
pub fn has_ice(sdp: &str) -> bool {
    lines(sdp).any(|l| l.starts_with("a=ice-ufrag:"))
}

/// `sdp` with its enabled streams moved to `addresses` (in order; streams beyond them are
/// disabled): one session `c=` line, each `m=` port replaced, and `a=rtcp:` lines dropped (RTCP
/// goes to the next port, or the same one with `a=rtcp-mux`).
pub fn moved_to(sdp: &str, addresses: &[std::net::SocketAddr]) -> String {
    let connection =
        |ip: std::net::IpAddr| format!("c=IN {} {ip}", if ip.is_ipv4() { "IP4" } else { "IP6" });
    let mut out = String::with_capacity(sdp.len() + 32);
    let mut next = addresses.iter();
    let mut wrote_connection = false;
    for line in lines(sdp).filter(|l| !l.is_empty()) {
        if line.starts_with("c=") || line.starts_with("a=rtcp:") {
            continue;
        }
        if let Some(media) = line.strip_prefix("m=") {
            if !wrote_connection {
                if let Some(first) = addresses.first() {
                    out.push_str(&connection(first.ip()));
                    out.push_str("\r\n");
                }
                wrote_connection = true;
            }
            let mut parts: Vec<&str> = media.split_whitespace().collect();
            let enabled = media_port(media) != 0;
            // A disabled stream has no socket, so it takes no address.
            let address = if enabled { next.next() } else { None };
            let port = address.map_or_else(|| "0".to_string(), |a| a.port().to_string());
            if parts.len() > 1 {
                parts[1] = &port;
            }
            out.push_str(&format!("m={}\r\n", parts.join(" ")));
            continue;
        }
        if line.starts_with("t=") && !wrote_connection {
            if let Some(first) = addresses.first() {
                out.push_str(&connection(first.ip()));
                out.push_str("\r\n");
            }
            wrote_connection = true;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out
}

/// The blob that carries `sdp`.
pub fn blob_of(sdp: &str) -> Vec<u8> {
    Dict::new().with("sdp", sdp).encode(Encoding::Plist)
}

/// The SDP a blob carries, if it is an SDP blob (a native endpoint's blob is not).
pub fn sdp_of(blob: &[u8]) -> Option<String> {
    let dict = Dict::decode(blob, Encoding::Plist).ok()?;
    let sdp = dict.str("sdp").ok()?;
    check(sdp.as_bytes()).ok()
}

/// The `a=` direction attributes of RFC 3264 §6.1.
const DIRECTIONS: &[&str] = &["sendrecv", "sendonly", "recvonly", "inactive"];

/// The direction an offer asks for (its first direction attribute; sendrecv when none).
pub fn direction(sdp: &str) -> &'static str {
    lines(sdp)
        .filter_map(|l| l.strip_prefix("a="))
        .find_map(|a| DIRECTIONS.iter().find(|d| **d == a).copied())
        .unwrap_or("sendrecv")
}

/// The answer to a direction (RFC 3264 §6.1): what the other side is asked to send, it receives.
fn mirrored(direction: &str) -> &'static str {
    match direction {
        "sendonly" => "recvonly",
        "recvonly" => "sendonly",
        "inactive" => "inactive",
        _ => "sendrecv",
    }
}

/// `sdp` as a new version of itself (RFC 3264 §8: each new description in a dialog increments
/// the o= session version), its streams set to answer `offer_direction`.
pub fn revised(sdp: &str, version_step: u64, offer_direction: &str) -> String {
    let answer = mirrored(offer_direction);
    let mut out = String::with_capacity(sdp.len() + 32);
    let mut in_media = false;
    let push_line = |out: &mut String, line: &str| {
        out.push_str(line);
        out.push_str("\r\n");
    };
    for line in lines(sdp).filter(|l| !l.is_empty()) {
        if let Some(origin) = line.strip_prefix("o=") {
            let mut fields: Vec<String> = origin.split(' ').map(str::to_string).collect();
            if let Some(version) = fields.get_mut(2) {
                // Saturating: the other side's description may claim any version.
                let bumped = version
                    .parse::<u64>()
                    .unwrap_or(0)
                    .saturating_add(version_step);
                *version = bumped.to_string();
            }
            push_line(&mut out, &format!("o={}", fields.join(" ")));
            continue;
        }
        if line
            .strip_prefix("a=")
            .is_some_and(|a| DIRECTIONS.contains(&a))
        {
            continue;
        }
        if line.starts_with("m=") {
            if in_media {
                push_line(&mut out, &format!("a={answer}"));
            }
            in_media = true;
        }
        push_line(&mut out, line);
    }
    if in_media {
        push_line(&mut out, &format!("a={answer}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\no=alice 2890844526 2890844526 IN IP4 192.0.2.1\r\ns=-\r\n\
        c=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 49170 RTP/AVP 0 8\r\na=rtpmap:0 PCMU/8000\r\n\
        a=sendrecv\r\nm=video 0 RTP/AVP 96\r\n";

    #[test]
    fn a_phone_sdp_round_trips_through_its_blob() {
        let sdp = check(OFFER.as_bytes()).unwrap();
        assert_eq!(media_kinds(&sdp), vec![MediaKind::Audio]);
        assert_eq!(sdp_of(&blob_of(&sdp)).as_deref(), Some(OFFER));
        let native = Dict::new()
            .with("ice-ufrag", "abcd")
            .encode(Encoding::Plist);
        assert_eq!(sdp_of(&native), None);
        assert_eq!(sdp_of(b"not a plist"), None);
    }

    #[test]
    fn bodies_that_are_no_session_description_are_refused() {
        assert_eq!(check(b"\xff\xfe"), Err(SdpError::NotText));
        assert_eq!(check(b"hello"), Err(SdpError::NoVersion));
        assert_eq!(
            check(b"v=0\r\nm=audio 1 RTP/AVP 0\r\n"),
            Err(SdpError::NoOrigin)
        );
        assert_eq!(
            check(b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\nm=audio 0 RTP/AVP 0\r\n"),
            Err(SdpError::NoMedia)
        );
        let huge = format!("{OFFER}a={}\r\n", "x".repeat(MAX_SDP));
        assert_eq!(check(huge.as_bytes()), Err(SdpError::TooLarge));
        let many = format!(
            "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\n{}",
            "m=audio 4000 RTP/AVP 0\r\n".repeat(MAX_STREAMS + 1)
        );
        assert_eq!(check(many.as_bytes()), Err(SdpError::TooManyStreams));
        let enough = format!(
            "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\n{}",
            "m=audio 4000 RTP/AVP 0\r\n".repeat(MAX_STREAMS)
        );
        assert!(check(enough.as_bytes()).is_ok());
    }

    #[test]
    fn streams_are_read_and_moved_to_the_anchor() {
        let sdp = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
            m=audio 4000 RTP/AVP 0\r\na=rtcp:4005\r\nm=video 5000 RTP/AVP 96\r\n\
            c=IN IP4 192.0.2.2\r\na=rtcp-mux\r\nm=text 0 RTP/AVP 98\r\n";
        let found = streams(sdp);
        assert_eq!(found.len(), 3);
        assert_eq!(found[0].port, 4000);
        assert_eq!(found[0].address, Some("192.0.2.1".parse().unwrap()));
        assert!(!found[0].rtcp_mux);
        assert_eq!(found[1].address, Some("192.0.2.2".parse().unwrap()));
        assert!(found[1].rtcp_mux);
        assert_eq!(found[2].port, 0);
        assert!(!has_ice(sdp));
        assert!(has_ice(&format!("{sdp}a=ice-ufrag:abcd\r\n")));

        let moved = moved_to(sdp, &["203.0.113.5:30000".parse().unwrap()]);
        assert_eq!(moved.matches("c=").count(), 1, "{moved}");
        assert!(
            moved.contains("t=0 0\r\nc=IN IP4 203.0.113.5\r\n")
                || moved.contains("c=IN IP4 203.0.113.5\r\nt=0 0"),
            "{moved}"
        );
        assert!(moved.contains("m=audio 30000 RTP/AVP 0"), "{moved}");
        assert!(
            moved.contains("m=video 0 RTP/AVP 96"),
            "no address left for video: {moved}"
        );
        assert!(moved.contains("m=text 0 RTP/AVP 98"), "{moved}");
        assert!(!moved.contains("a=rtcp:"), "{moved}");
        assert!(moved.contains("a=rtcp-mux"), "{moved}");
        assert_eq!(check(moved.as_bytes()).map(|_| ()), Ok(()));
    }

    #[test]
    fn a_port_that_is_no_number_disables_its_stream_everywhere() {
        // Found by the sdp fuzz target: `media_kinds` took any port but `0` as enabled, and
        // `moved_to` split on spaces only, while `streams` (what the anchor opens sockets for)
        // read a number after any whitespace. A stream `streams` saw as disabled was offered,
        // and could take the address of the next one. And every stream, disabled or not,
        // took the next address, so a disabled stream (`m=audio 0`, a refused one) before an
        // enabled one left that one without its address.
        let sdp = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\n\
            m=audio \u{5}49170 RTP/AVP 0\r\nm=audio 0/2 RTP/AVP 0\r\nm=video\t5000 RTP/AVP 96\r\n";
        let ports: Vec<u16> = streams(sdp).iter().map(|s| s.port).collect();
        assert_eq!(ports, [0, 0, 5000]);
        assert_eq!(media_kinds(sdp), [MediaKind::Video]);
        let moved = moved_to(sdp, &["203.0.113.5:30000".parse().unwrap()]);
        let ports: Vec<u16> = streams(&moved).iter().map(|s| s.port).collect();
        assert_eq!(ports, [0, 0, 30000], "{moved}");
        assert!(moved.contains("m=video 30000 RTP/AVP 96\r\n"), "{moved}");
    }

    #[test]
    fn a_session_version_at_the_top_of_its_range_stays_there() {
        // The other side's SDP may claim any o= version; adding the step used to overflow.
        let sdp =
            "v=0\r\no=- 1 18446744073709551615 IN IP4 192.0.2.1\r\nm=audio 4000 RTP/AVP 0\r\n";
        let revised = revised(sdp, 2, "sendrecv");
        assert!(
            revised.contains("o=- 1 18446744073709551615 IN IP4"),
            "{revised}"
        );
    }

    #[test]
    fn a_hold_offer_is_answered_with_the_mirrored_direction_and_a_new_version() {
        let hold = OFFER.replace("a=sendrecv", "a=sendonly");
        assert_eq!(direction(&hold), "sendonly");
        assert_eq!(direction("v=0\r\nm=audio 1 RTP/AVP 0\r\n"), "sendrecv");
        let answer = revised(OFFER, 1, direction(&hold));
        assert!(
            answer.contains("o=alice 2890844526 2890844527 IN IP4"),
            "{answer}"
        );
        assert!(!answer.contains("a=sendrecv"), "{answer}");
        assert_eq!(answer.matches("a=recvonly").count(), 2, "{answer}");
        let resumed = revised(&answer, 1, "sendrecv");
        assert!(resumed.contains(" 2890844528 IN IP4"), "{resumed}");
        assert_eq!(resumed.matches("a=sendrecv").count(), 2, "{resumed}");
    }
}
