//! Media with a peer that speaks SDP offer/answer instead of Switchyard's blob and SIP over DTLS:
//! a SIP phone behind the provider's SIP edge, which carries the phone's SDP as the call's blob.
//!
//! Such a peer learns everything from the session description: ICE credentials and candidates
//! (RFC 8839), the DTLS certificate fingerprint and role (RFC 5763 `a=fingerprint`, `a=setup`),
//! and the codecs. The transport is the native one (ICE, DTLS-SRTP on one port with RTCP
//! multiplexed), so this module only writes our transport into an SDP and reads the peer's out
//! of its SDP. The media is audio only: one port carries one stream for a peer without BUNDLE.

use std::io::Cursor;
use std::net::{IpAddr, SocketAddr};

use sdp::description::common::{Address, Attribute, ConnectionInformation};
use sdp::description::media::RangedPort;
use sdp::{MediaDescription, SessionDescription};

use crate::blob::{self, Candidate, CandidateKind, Credentials, MediaBlob, COMPONENT_RTP};
use crate::sdp::{self as offer_answer, LocalSsrcs, MediaSession, SdpError};
use crate::secure::DtlsRole;
use switchyard_protocol::capabilities::{Capabilities, MediaKind};

/// The `a=setup` role of RFC 4145 as RFC 5763 uses it for DTLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    /// Sends the ClientHello.
    Active,
    /// Waits for it.
    Passive,
    /// Either: what an offer says.
    ActPass,
}

impl Setup {
    fn as_str(self) -> &'static str {
        match self {
            Setup::Active => "active",
            Setup::Passive => "passive",
            Setup::ActPass => "actpass",
        }
    }
}

/// What the peer's SDP says about its transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerTransport {
    pub credentials: Credentials,
    pub candidates: Vec<Candidate>,
    /// SHA-256 of its DTLS certificate, 64 lowercase hex digits.
    pub fingerprint: String,
    /// `None` when the SDP has no `a=setup` (RFC 4145 §4.1: then `active`).
    pub setup: Option<Setup>,
}

/// Our answer to a peer's offer and what it settled.
#[derive(Debug, Clone)]
pub struct Answered {
    pub sdp: String,
    pub session: MediaSession,
    pub peer: PeerTransport,
    pub role: DtlsRole,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerSdpError {
    #[error(transparent)]
    Sdp(#[from] SdpError),
    #[error("the SDP has no audio stream")]
    NoAudio,
    #[error(
        "the audio stream uses {0}, not DTLS-SRTP (UDP/TLS/RTP/SAVP or SAVPF): media stays \
         encrypted end to end"
    )]
    NotDtlsSrtp(String),
    #[error("the SDP has no ICE credentials (a=ice-ufrag, a=ice-pwd): the peer does not run ICE")]
    NoIce,
    #[error("the SDP has no SHA-256 a=fingerprint")]
    NoFingerprint,
    #[error("malformed a={0}: {1}")]
    BadAttribute(&'static str, String),
    #[error("the SDP names no usable UDP address for the audio stream")]
    NoAddress,
}

fn parse(text: &str) -> Result<SessionDescription, PeerSdpError> {
    if text.len() > offer_answer::MAX_SDP_LEN {
        return Err(SdpError::TooLarge(text.len()).into());
    }
    SessionDescription::unmarshal(&mut Cursor::new(text.as_bytes()))
        .map_err(|e| SdpError::Syntax(e.to_string()).into())
}

/// Capabilities narrowed to audio: what one port without BUNDLE can carry.
fn audio_only(caps: &Capabilities) -> Capabilities {
    Capabilities {
        video: false,
        video_codecs: Vec::new(),
        ..caps.clone()
    }
}

/// An offer to an SDP peer: audio with our codecs, and our ICE and DTLS transport from `blob`.
pub fn offer(
    blob: &MediaBlob,
    caps: &Capabilities,
    ssrcs: LocalSsrcs,
) -> Result<String, PeerSdpError> {
    let text = offer_answer::build_offer(&audio_only(caps), &[MediaKind::Audio], ssrcs)?;
    with_transport(&text, blob, Setup::ActPass)
}

/// Answers a peer's offer: the audio it offers with the first codec we share (other streams
/// refused with port 0), our transport, and the DTLS role its `a=setup` leaves us.
pub fn answer(
    offer: &str,
    blob: &MediaBlob,
    caps: &Capabilities,
    ssrcs: LocalSsrcs,
) -> Result<Answered, PeerSdpError> {
    let peer = transport(offer)?;
    let (text, session) = offer_answer::build_answer(offer, &audio_only(caps), ssrcs)?;
    // RFC 5763 §5: the answerer takes `active` unless the offerer insists on it.
    let (ours, role) = match peer.setup {
        Some(Setup::Active) | None => (Setup::Passive, DtlsRole::Server),
        Some(Setup::Passive) | Some(Setup::ActPass) => (Setup::Active, DtlsRole::Client),
    };
    Ok(Answered {
        sdp: with_transport(&text, blob, ours)?,
        session,
        peer,
        role,
    })
}

/// Reads the peer's answer to `offer` (ours, made by [`offer`]): the negotiated media, its
/// transport and our DTLS role.
pub fn read_answer(
    answer: &str,
    offer: &str,
) -> Result<(MediaSession, PeerTransport, DtlsRole), PeerSdpError> {
    let peer = transport(answer)?;
    let session = offer_answer::parse_answer(answer, offer)?;
    let role = match peer.setup {
        Some(Setup::Passive) => DtlsRole::Client,
        // `actpass` is not an answer (RFC 5763 §5); taken as the default, `active`.
        Some(Setup::Active) | Some(Setup::ActPass) | None => DtlsRole::Server,
    };
    Ok((session, peer, role))
}

/// The candidate the `c=` and `m=` lines name (RFC 8839 §4.2.1.2: the one most likely to work
/// for a peer that does not check: relayed, else server-reflexive, else host).
fn default_candidate(blob: &MediaBlob) -> Option<&Candidate> {
    let rank = |c: &&Candidate| match c.kind {
        CandidateKind::Relayed => 0,
        CandidateKind::ServerReflexive => 1,
        CandidateKind::Host => 2,
        CandidateKind::PeerReflexive => 3,
    };
    blob.candidates.iter().min_by_key(rank)
}

fn connection(ip: IpAddr) -> ConnectionInformation {
    ConnectionInformation {
        network_type: "IN".into(),
        address_type: if ip.is_ipv4() { "IP4" } else { "IP6" }.into(),
        address: Some(Address {
            address: ip.to_string(),
            ttl: None,
            range: None,
        }),
    }
}

/// `a=candidate` value of RFC 8839 §5.1.
fn candidate_line(c: &Candidate) -> String {
    let mut line = format!(
        "{} {} UDP {} {} {} typ {}",
        c.foundation,
        COMPONENT_RTP,
        c.priority,
        c.address.ip(),
        c.address.port(),
        c.kind.as_str()
    );
    if let Some(related) = c.related {
        line.push_str(&format!(" raddr {} rport {}", related.ip(), related.port()));
    }
    line
}

/// `sha-256 AB:CD:…`, the RFC 8122 form of a fingerprint.
fn fingerprint_attribute(hex: &str) -> String {
    let pairs: Vec<String> = hex
        .as_bytes()
        .chunks(2)
        .map(|pair| String::from_utf8_lossy(pair).to_ascii_uppercase())
        .collect();
    format!("sha-256 {}", pairs.join(":"))
}

/// `sdp` (ours, with placeholder addresses) with our transport: the default candidate as the
/// address, ICE credentials, fingerprint and setup role, and every candidate on the audio line.
fn with_transport(sdp: &str, blob: &MediaBlob, setup: Setup) -> Result<String, PeerSdpError> {
    let mut description = parse(sdp)?;
    let default = default_candidate(blob).ok_or(PeerSdpError::NoAddress)?;
    description.origin.unicast_address = default.address.ip().to_string();
    description.origin.address_type = connection(default.address.ip()).address_type;
    description.connection_information = Some(connection(default.address.ip()));
    let value = |key: &str, value: String| Attribute::new(key.into(), Some(value));
    description.attributes.extend([
        value("ice-ufrag", blob.ice_ufrag.clone()),
        value("ice-pwd", blob.ice_pwd.clone()),
        value("fingerprint", fingerprint_attribute(&blob.fingerprint)),
        value("setup", setup.as_str().into()),
    ]);
    for media in &mut description.media_descriptions {
        if media.media_name.port.value == 0 {
            continue;
        }
        media.media_name.port = RangedPort {
            value: default.address.port() as isize,
            range: None,
        };
        media.attributes.extend(
            blob.candidates
                .iter()
                .map(|c| value("candidate", candidate_line(c))),
        );
    }
    Ok(description.marshal())
}

/// An attribute of the audio line, else of the session (RFC 8839 and RFC 8122 allow either).
fn attribute<'a>(
    session: &'a SessionDescription,
    media: &'a MediaDescription,
    key: &str,
) -> Option<&'a str> {
    fn find<'a>(attributes: &'a [Attribute], key: &str) -> Option<&'a str> {
        attributes
            .iter()
            .find(|a| a.key == key)
            .map(|a| a.value.as_deref().unwrap_or(""))
    }
    find(&media.attributes, key).or_else(|| find(&session.attributes, key))
}

/// The peer's transport, from its first audio line with a port.
pub fn transport(sdp: &str) -> Result<PeerTransport, PeerSdpError> {
    let session = parse(sdp)?;
    let audio = session
        .media_descriptions
        .iter()
        .find(|m| m.media_name.media == "audio" && m.media_name.port.value != 0)
        .ok_or(PeerSdpError::NoAudio)?;
    let proto = audio.media_name.protos.join("/");
    if !matches!(
        proto.to_ascii_uppercase().as_str(),
        "UDP/TLS/RTP/SAVP" | "UDP/TLS/RTP/SAVPF"
    ) {
        return Err(PeerSdpError::NotDtlsSrtp(proto));
    }
    let ufrag = attribute(&session, audio, "ice-ufrag").ok_or(PeerSdpError::NoIce)?;
    let pwd = attribute(&session, audio, "ice-pwd").ok_or(PeerSdpError::NoIce)?;
    blob::check_ice_chars("ice-ufrag", ufrag, 4..=256, "must be 4 to 256 characters")
        .map_err(|e| PeerSdpError::BadAttribute("ice-ufrag", e.to_string()))?;
    blob::check_ice_chars("ice-pwd", pwd, 22..=256, "must be 22 to 256 characters")
        .map_err(|e| PeerSdpError::BadAttribute("ice-pwd", e.to_string()))?;
    let fingerprint = fingerprint(&session, audio)?;
    let setup = match attribute(&session, audio, "setup") {
        None => None,
        Some("active") => Some(Setup::Active),
        Some("passive") => Some(Setup::Passive),
        Some("actpass") => Some(Setup::ActPass),
        Some(other) => return Err(PeerSdpError::BadAttribute("setup", other.into())),
    };
    let mut candidates: Vec<Candidate> = audio
        .attributes
        .iter()
        .filter(|a| a.key == "candidate")
        .filter_map(|a| parse_candidate(a.value.as_deref().unwrap_or("")))
        .take(blob::MAX_CANDIDATES)
        .collect();
    if candidates.is_empty() {
        // No candidate lines: the address of the `c=` and `m=` lines is the only one.
        let ip = audio
            .connection_information
            .as_ref()
            .or(session.connection_information.as_ref())
            .and_then(|c| c.address.as_ref())
            .and_then(|a| a.address.parse::<IpAddr>().ok())
            .filter(|ip| !ip.is_unspecified())
            .ok_or(PeerSdpError::NoAddress)?;
        let port = u16::try_from(audio.media_name.port.value)
            .ok()
            .filter(|p| *p != 0)
            .ok_or(PeerSdpError::NoAddress)?;
        candidates.push(Candidate {
            foundation: "default".into(),
            priority: blob::priority(CandidateKind::Host, 65_535, COMPONENT_RTP),
            address: SocketAddr::new(ip, port),
            kind: CandidateKind::Host,
            related: None,
        });
    }
    Ok(PeerTransport {
        credentials: Credentials {
            ufrag: ufrag.into(),
            pwd: pwd.into(),
        },
        candidates,
        fingerprint,
        setup,
    })
}

/// The SHA-256 `a=fingerprint` (others, such as SHA-1, are skipped), as lowercase hex.
fn fingerprint(
    session: &SessionDescription,
    audio: &MediaDescription,
) -> Result<String, PeerSdpError> {
    fn sha256(attributes: &[Attribute]) -> Option<&str> {
        attributes
            .iter()
            .filter(|a| a.key == "fingerprint")
            .filter_map(|a| a.value.as_deref())
            .find_map(|v| {
                let (hash, value) = v.split_once(' ')?;
                hash.eq_ignore_ascii_case("sha-256").then_some(value.trim())
            })
    }
    let value = sha256(&audio.attributes)
        .or_else(|| sha256(&session.attributes))
        .ok_or(PeerSdpError::NoFingerprint)?;
    let hex: String = value.split(':').collect();
    if value.split(':').count() != 32
        || hex.len() != 64
        || !hex.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Err(PeerSdpError::BadAttribute("fingerprint", value.into()));
    }
    Ok(hex.to_ascii_lowercase())
}

/// One UDP candidate of component 1 with an IP address; others (TCP, RTCP's component 2, mDNS
/// host names) are not for this stack and skipped.
fn parse_candidate(value: &str) -> Option<Candidate> {
    let fields: Vec<&str> = value.split_whitespace().collect();
    let [foundation, component, transport, priority, address, port, "typ", kind, rest @ ..] =
        fields.as_slice()
    else {
        return None;
    };
    if *component != "1" || !transport.eq_ignore_ascii_case("udp") {
        return None;
    }
    if foundation.is_empty()
        || foundation.len() > 32
        || blob::check_ice_chars("foundation", foundation, 1..=32, "").is_err()
    {
        return None;
    }
    let priority: u32 = priority
        .parse()
        .ok()
        .filter(|p| (1..=0x7fff_ffff).contains(p))?;
    let address = SocketAddr::new(
        address.parse().ok()?,
        port.parse().ok().filter(|p| *p != 0)?,
    );
    let kind: CandidateKind = kind.parse().ok()?;
    let mut related_ip = None;
    let mut related_port = None;
    for pair in rest.chunks(2) {
        match pair {
            ["raddr", ip] => related_ip = ip.parse::<IpAddr>().ok(),
            ["rport", port] => related_port = port.parse::<u16>().ok(),
            _ => {}
        }
    }
    let related = match (related_ip, related_port) {
        (Some(ip), Some(port)) if port != 0 && !ip.is_unspecified() => {
            Some(SocketAddr::new(ip, port))
        }
        _ => None,
    };
    Some(Candidate {
        foundation: (*foundation).into(),
        priority,
        address,
        kind,
        related,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What baresip 1.0 (libre 1.1) offers with `medianat=ice;mediaenc=dtls_srtp`.
    const BARESIP_OFFER: &str = "v=0\r\n\
        o=- 1475315221 631345749 IN IP4 127.0.0.1\r\n\
        s=-\r\n\
        c=IN IP4 127.0.0.1\r\n\
        t=0 0\r\n\
        a=tool:baresip 1.0.0\r\n\
        a=ice-ufrag:4fz4H8j\r\n\
        a=ice-pwd:EYkmEl03jcJsspUP3cgHq7OVNzatZ5n\r\n\
        a=setup:actpass\r\n\
        a=fingerprint:SHA-256 8D:86:A1:6B:C8:D1:65:16:A5:0E:86:6A:64:DA:99:65:FD:4F:AA:D4:B6:D0:87:18:BD:71:CB:50:F1:91:62:C1\r\n\
        m=audio 20096 UDP/TLS/RTP/SAVPF 0 101\r\n\
        c=IN IP4 192.0.2.2\r\n\
        a=rtpmap:0 PCMU/8000\r\n\
        a=rtpmap:101 telephone-event/8000\r\n\
        a=fmtp:101 0-15\r\n\
        a=sendrecv\r\n\
        a=label:1\r\n\
        a=rtcp-rsize\r\n\
        a=ssrc:2835535700 cname:sip:a@127.0.0.1\r\n\
        a=rtcp-mux\r\n\
        a=minptime:20\r\n\
        a=ptime:20\r\n\
        a=candidate:c0000202 1 UDP 2113929471 192.0.2.2 20096 typ host\r\n\
        a=candidate:020000fd 1 UDP 2113929471 fd00::2 20096 typ host\r\n\
        a=candidate:c0000203 2 UDP 2113929470 192.0.2.2 20097 typ host\r\n\
        a=candidate:tcp1 1 TCP 2113929000 192.0.2.2 9 typ host tcptype active\r\n\
        a=candidate:mdns1 1 UDP 2113929000 4f6e.local 20096 typ host\r\n";

    const OURS: LocalSsrcs = LocalSsrcs {
        audio: 1111,
        video: 2222,
    };

    fn blob() -> MediaBlob {
        MediaBlob {
            ice_ufrag: "abcdEFGH".into(),
            ice_pwd: "0123456789abcdefghijklmn".into(),
            fingerprint: "ab".repeat(32),
            candidates: vec![
                Candidate {
                    foundation: "host1".into(),
                    priority: blob::priority(CandidateKind::Host, 65_535, COMPONENT_RTP),
                    address: "10.0.0.5:40000".parse().unwrap(),
                    kind: CandidateKind::Host,
                    related: None,
                },
                Candidate {
                    foundation: "relay1".into(),
                    priority: blob::priority(CandidateKind::Relayed, 65_535, COMPONENT_RTP),
                    address: "198.51.100.9:50000".parse().unwrap(),
                    kind: CandidateKind::Relayed,
                    related: Some("203.0.113.4:41000".parse().unwrap()),
                },
            ],
            sdp: None,
        }
    }

    #[test]
    fn baresips_offer_is_answered_with_our_transport() {
        let answered = answer(BARESIP_OFFER, &blob(), &Capabilities::default(), OURS).unwrap();
        assert_eq!(
            answered.role,
            DtlsRole::Client,
            "we answer actpass with active"
        );
        assert_eq!(answered.peer.credentials.ufrag, "4fz4H8j");
        assert_eq!(
            answered.peer.fingerprint,
            "8d86a16bc8d16516a50e866a64da9965fd4faad4b6d08718bd71cb50f19162c1"
        );
        // The UDP candidates of component 1 only; the mDNS name and TCP are skipped.
        let addresses: Vec<String> = answered
            .peer
            .candidates
            .iter()
            .map(|c| c.address.to_string())
            .collect();
        assert_eq!(addresses, ["192.0.2.2:20096", "[fd00::2]:20096"]);
        let audio = answered.session.audio.as_ref().unwrap();
        assert_eq!((audio.codec.as_str(), audio.pt), ("PCMU", 0));
        assert_eq!(audio.remote_ssrc, 2_835_535_700);
        let sdp = &answered.sdp;
        // The default candidate is the relayed one.
        assert!(sdp.contains("c=IN IP4 198.51.100.9\r\n"), "{sdp}");
        assert!(
            sdp.contains("m=audio 50000 UDP/TLS/RTP/SAVPF 0\r\n"),
            "{sdp}"
        );
        assert!(sdp.contains("a=setup:active\r\n"), "{sdp}");
        assert!(sdp.contains("a=ice-ufrag:abcdEFGH\r\n"), "{sdp}");
        assert!(
            sdp.contains("a=ice-pwd:0123456789abcdefghijklmn\r\n"),
            "{sdp}"
        );
        assert!(
            sdp.contains(&format!(
                "a=fingerprint:sha-256 {}\r\n",
                ["AB"; 32].join(":")
            )),
            "{sdp}"
        );
        assert!(
            sdp.contains("a=candidate:host1 1 UDP 2130706431 10.0.0.5 40000 typ host\r\n"),
            "{sdp}"
        );
        assert!(
            sdp.contains(
                "a=candidate:relay1 1 UDP 16777215 198.51.100.9 50000 typ relay raddr 203.0.113.4 rport 41000\r\n"
            ),
            "{sdp}"
        );
        assert!(sdp.contains("a=rtcp-mux\r\n"), "{sdp}");
        assert!(sdp.contains("a=ssrc:1111 "), "{sdp}");
    }

    #[test]
    fn our_offer_reads_back_as_the_peers_transport_and_its_answer_is_read() {
        let ours = blob();
        let offer = offer(&ours, &Capabilities::default(), OURS).unwrap();
        assert!(!offer.contains("m=video"), "audio only: {offer}");
        let seen = transport(&offer).unwrap();
        assert_eq!(seen.credentials, ours.credentials());
        assert_eq!(seen.fingerprint, ours.fingerprint);
        assert_eq!(seen.candidates, ours.candidates);
        assert_eq!(seen.setup, Some(Setup::ActPass));

        // The phone's side: it answers our offer, taking the DTLS client's role.
        let mut phone = blob();
        phone.ice_ufrag = "phoneUfr".into();
        phone.fingerprint = "cd".repeat(32);
        let theirs = LocalSsrcs {
            audio: 3333,
            video: 4444,
        };
        let answered = answer(&offer, &phone, &Capabilities::default(), theirs).unwrap();
        let (session, peer, role) = read_answer(&answered.sdp, &offer).unwrap();
        assert_eq!(role, DtlsRole::Server);
        assert_eq!(peer.credentials.ufrag, "phoneUfr");
        assert_eq!(peer.fingerprint, "cd".repeat(32));
        assert_eq!(session.audio.unwrap().remote_ssrc, 3333);
    }

    #[test]
    fn a_video_offer_gets_audio_only() {
        let offer = BARESIP_OFFER.to_string()
            + "m=video 20098 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\na=ssrc:9 cname:x\r\n";
        let answered = answer(&offer, &blob(), &Capabilities::default(), OURS).unwrap();
        assert!(answered.session.video.is_none());
        assert!(answered.sdp.contains("m=video 0 "), "{}", answered.sdp);
    }

    #[test]
    fn offers_we_cannot_take_are_refused_with_the_reason() {
        let cases: Vec<(String, PeerSdpError)> = vec![
            (
                BARESIP_OFFER.replace("UDP/TLS/RTP/SAVPF", "RTP/AVP"),
                PeerSdpError::NotDtlsSrtp("RTP/AVP".into()),
            ),
            (
                BARESIP_OFFER.replace("a=ice-ufrag:4fz4H8j\r\n", ""),
                PeerSdpError::NoIce,
            ),
            (
                BARESIP_OFFER.replace("SHA-256 8D", "SHA-1 8D"),
                PeerSdpError::NoFingerprint,
            ),
            (
                BARESIP_OFFER.replace("8D:86:A1", "8D:86"),
                PeerSdpError::BadAttribute("fingerprint", String::new()),
            ),
            (
                BARESIP_OFFER.replace("a=setup:actpass", "a=setup:holdconn"),
                PeerSdpError::BadAttribute("setup", "holdconn".into()),
            ),
            (
                BARESIP_OFFER.replace("m=audio 20096", "m=audio 0"),
                PeerSdpError::NoAudio,
            ),
            (
                BARESIP_OFFER.replace("ice-pwd:EYkmEl03jcJsspUP3cgHq7OVNzatZ5n", "ice-pwd:short"),
                PeerSdpError::BadAttribute("ice-pwd", String::new()),
            ),
        ];
        for (offer, expected) in cases {
            let error = answer(&offer, &blob(), &Capabilities::default(), OURS).unwrap_err();
            match (&error, &expected) {
                (PeerSdpError::BadAttribute(got, _), PeerSdpError::BadAttribute(want, _)) => {
                    assert_eq!(got, want, "{offer}")
                }
                _ => assert_eq!(error, expected, "{offer}"),
            }
        }
        // Only PCMU offered, only opus here: nothing in common.
        let opus_only = Capabilities {
            audio_codecs: vec!["opus".into()],
            ..Capabilities::default()
        };
        assert!(matches!(
            answer(BARESIP_OFFER, &blob(), &opus_only, OURS),
            Err(PeerSdpError::Sdp(SdpError::NothingAccepted))
        ));
    }

    #[test]
    fn without_candidate_lines_the_connection_address_is_the_candidate() {
        let offer: String = BARESIP_OFFER
            .lines()
            .filter(|l| !l.starts_with("a=candidate"))
            .map(|l| format!("{l}\r\n"))
            .collect();
        let peer = transport(&offer).unwrap();
        assert_eq!(peer.candidates.len(), 1);
        assert_eq!(peer.candidates[0].address.to_string(), "192.0.2.2:20096");
        let unspecified = offer.replace("c=IN IP4 192.0.2.2", "c=IN IP4 0.0.0.0");
        assert_eq!(
            transport(&unspecified).unwrap_err(),
            PeerSdpError::NoAddress
        );
    }
}
