//! SDP offer/answer (RFC 3264) for Switchyard calls.
//!
//! Offers carry one `m=` line per media kind with the codecs the local [`Capabilities`] list, in
//! their order; the answer picks the first offered codec the answerer also supports and rejects a
//! kind with no common codec by setting its port to 0. Media always runs over the DTLS-SRTP
//! association the SIP signalling already uses, so ports and addresses are placeholders (`9`,
//! `0.0.0.0`) and `a=rtcp-mux` is always set.

use std::io::Cursor;

use sdp::description::common::{Address, Attribute, ConnectionInformation};
use sdp::description::media::{MediaName, RangedPort};
use sdp::{MediaDescription, SessionDescription};

use switchyard_protocol::capabilities::{Capabilities, MediaKind};

/// Extension URI of the coordination of video orientation (3GPP TS 26.114 §7.4.5).
pub const VIDEO_ORIENTATION_URI: &str = "urn:3gpp:video-orientation";
/// The header extension id this endpoint offers for video orientation.
pub const ORIENTATION_EXT_ID: u8 = 1;
/// Largest SDP accepted; it travels in one SIP message which is itself limited.
pub const MAX_SDP_LEN: usize = 8 * 1024;

/// A codec this stack can send, with the payload type it offers it under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodecSpec {
    pub kind: MediaKind,
    pub name: &'static str,
    pub pt: u8,
    pub clock_rate: u32,
    pub channels: u16,
}

/// The codecs the synthetic media sources can produce (and so the only ones ever offered).
pub const KNOWN_CODECS: [CodecSpec; 4] = [
    CodecSpec {
        kind: MediaKind::Audio,
        name: "opus",
        pt: 111,
        clock_rate: 48_000,
        channels: 2,
    },
    CodecSpec {
        kind: MediaKind::Audio,
        name: "PCMU",
        pt: 0,
        clock_rate: 8_000,
        channels: 0,
    },
    CodecSpec {
        kind: MediaKind::Video,
        name: "VP8",
        pt: 96,
        clock_rate: 90_000,
        channels: 0,
    },
    CodecSpec {
        kind: MediaKind::Video,
        name: "H264",
        pt: 102,
        clock_rate: 90_000,
        channels: 0,
    },
];

fn known_codec(kind: MediaKind, name: &str, clock_rate: u32) -> Option<&'static CodecSpec> {
    KNOWN_CODECS
        .iter()
        .find(|c| c.kind == kind && c.name.eq_ignore_ascii_case(name) && c.clock_rate == clock_rate)
}

/// Local synchronisation sources announced with `a=ssrc:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalSsrcs {
    pub audio: u32,
    pub video: u32,
}

impl LocalSsrcs {
    fn get(&self, kind: MediaKind) -> u32 {
        match kind {
            MediaKind::Audio => self.audio,
            MediaKind::Video => self.video,
        }
    }
}

/// One negotiated RTP stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NegotiatedStream {
    pub pt: u8,
    /// Codec name as this stack spells it (`opus`, `PCMU`, `VP8`, `H264`).
    pub codec: String,
    pub clock_rate: u32,
    /// The SSRC the peer announced for the stream it sends.
    pub remote_ssrc: u32,
}

/// The outcome of an offer/answer exchange.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MediaSession {
    pub audio: Option<NegotiatedStream>,
    pub video: Option<NegotiatedStream>,
    /// Header extension id for video orientation, when both sides agreed to it.
    pub orientation_ext_id: Option<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    #[error("SDP is {0} bytes, more than the {MAX_SDP_LEN} accepted")]
    TooLarge(usize),
    #[error("malformed SDP: {0}")]
    Syntax(String),
    #[error("the local capabilities do not include {0}")]
    Unsupported(MediaKind),
    #[error("no codec of the local {0} capabilities can be offered")]
    NoCodec(MediaKind),
    #[error("nothing to offer: no media kind requested")]
    NothingRequested,
    #[error("SDP has more than one {0} m= line")]
    DuplicateMedia(MediaKind),
    #[error("{0} m= line has no a=ssrc line")]
    MissingSsrc(MediaKind),
    #[error("{kind} payload type {pt} has no usable rtpmap")]
    UnknownPayloadType { kind: MediaKind, pt: String },
    #[error("the answer chose {kind} codec {codec}, which was not offered")]
    CodecNotOffered { kind: MediaKind, codec: String },
    #[error("malformed {0} attribute: {1}")]
    BadAttribute(&'static str, String),
    #[error("the answer accepts no media")]
    NothingAccepted,
    #[error("the answer has {answered} m= lines for the {offered} offered (RFC 3264 §6)")]
    MediaLineCount { offered: usize, answered: usize },
    #[error("m= line {index} of the answer is `{answered}` where `{offered}` was offered")]
    MediaTypeMismatch {
        index: usize,
        offered: String,
        answered: String,
    },
    #[error("the answer's {kind} line uses payload type {pt}, which was not offered for it")]
    PayloadTypeNotOffered { kind: MediaKind, pt: String },
    #[error(
        "the answer's video orientation extension id {answered} is not the offered one ({})",
        .offered.map_or("none was offered".to_string(), |id| id.to_string())
    )]
    OrientationIdMismatch { offered: Option<u8>, answered: u8 },
}

fn parse(text: &str) -> Result<SessionDescription, SdpError> {
    if text.len() > MAX_SDP_LEN {
        return Err(SdpError::TooLarge(text.len()));
    }
    SessionDescription::unmarshal(&mut Cursor::new(text.as_bytes()))
        .map_err(|e| SdpError::Syntax(e.to_string()))
}

fn session() -> SessionDescription {
    let mut sd = SessionDescription::new_jsep_session_description(false);
    // Ports and addresses are unused (media shares the DTLS association), so say so explicitly.
    sd.connection_information = Some(ConnectionInformation {
        network_type: "IN".into(),
        address_type: "IP4".into(),
        address: Some(Address {
            address: "0.0.0.0".into(),
            ttl: None,
            range: None,
        }),
    });
    sd
}

fn media(kind: MediaKind, port: isize) -> MediaDescription {
    MediaDescription {
        media_name: MediaName {
            media: kind.as_str().into(),
            port: RangedPort {
                value: port,
                range: None,
            },
            protos: ["UDP", "TLS", "RTP", "SAVPF"].map(String::from).to_vec(),
            formats: vec![],
        },
        ..Default::default()
    }
}

fn attr(key: &str, value: String) -> Attribute {
    Attribute::new(key.into(), Some(value))
}

fn add_codec(md: &mut MediaDescription, c: &CodecSpec) {
    md.media_name.formats.push(c.pt.to_string());
    let map = if c.channels > 0 {
        format!("{} {}/{}/{}", c.pt, c.name, c.clock_rate, c.channels)
    } else {
        format!("{} {}/{}", c.pt, c.name, c.clock_rate)
    };
    md.attributes.push(attr("rtpmap", map));
}

fn add_stream_attributes(md: &mut MediaDescription, kind: MediaKind, ssrc: u32, ext: Option<u8>) {
    md.attributes.push(Attribute::new("sendrecv".into(), None));
    md.attributes.push(Attribute::new("rtcp-mux".into(), None));
    if let (MediaKind::Video, Some(id)) = (kind, ext) {
        md.attributes
            .push(attr("extmap", format!("{id} {VIDEO_ORIENTATION_URI}")));
    }
    md.attributes
        .push(attr("ssrc", format!("{ssrc} cname:switchyard")));
}

/// Builds an offer for `wanted` kinds from the local capabilities.
pub fn build_offer(
    caps: &Capabilities,
    wanted: &[MediaKind],
    ssrcs: LocalSsrcs,
) -> Result<String, SdpError> {
    if wanted.is_empty() {
        return Err(SdpError::NothingRequested);
    }
    let mut sd = session();
    let mut seen = Vec::new();
    for &kind in wanted {
        if seen.contains(&kind) {
            return Err(SdpError::DuplicateMedia(kind));
        }
        seen.push(kind);
        if !caps.supports(kind) {
            return Err(SdpError::Unsupported(kind));
        }
        let listed = match kind {
            MediaKind::Audio => &caps.audio_codecs,
            MediaKind::Video => &caps.video_codecs,
        };
        let mut md = media(kind, 9);
        // Capability order is preference order; names this stack cannot produce are skipped.
        for name in listed {
            if let Some(c) = KNOWN_CODECS
                .iter()
                .find(|c| c.kind == kind && c.name.eq_ignore_ascii_case(name))
            {
                if !md.media_name.formats.contains(&c.pt.to_string()) {
                    add_codec(&mut md, c);
                }
            }
        }
        if md.media_name.formats.is_empty() {
            return Err(SdpError::NoCodec(kind));
        }
        add_stream_attributes(&mut md, kind, ssrcs.get(kind), Some(ORIENTATION_EXT_ID));
        sd.media_descriptions.push(md);
    }
    Ok(sd.marshal())
}

/// What one `m=` line of a parsed description says.
struct ParsedMedia {
    kind: Option<MediaKind>,
    port: isize,
    /// Offered payload types in order, resolved to codecs this stack knows (unknown ones dropped).
    codecs: Vec<(u8, &'static CodecSpec)>,
    ssrc: Option<u32>,
    orientation_ext: Option<u8>,
}

fn parse_media(md: &MediaDescription) -> Result<ParsedMedia, SdpError> {
    let kind = md.media_name.media.parse::<MediaKind>().ok();
    let mut rtpmaps: Vec<(u8, &str, u32)> = Vec::new();
    let mut ssrc = None;
    let mut orientation_ext = None;
    for a in &md.attributes {
        let value = a.value.as_deref().unwrap_or("");
        match a.key.as_str() {
            "rtpmap" => {
                // `<pt> <name>/<clock>[/<channels>]`
                let bad = || SdpError::BadAttribute("rtpmap", value.to_string());
                let (pt, enc) = value.split_once(' ').ok_or_else(bad)?;
                let mut parts = enc.split('/');
                let name = parts.next().ok_or_else(bad)?;
                let clock = parts.next().and_then(|c| c.parse().ok()).ok_or_else(bad)?;
                rtpmaps.push((pt.parse().map_err(|_| bad())?, name, clock));
            }
            "ssrc" if ssrc.is_none() => {
                let id = value.split(' ').next().unwrap_or("");
                ssrc = Some(
                    id.parse()
                        .map_err(|_| SdpError::BadAttribute("ssrc", value.to_string()))?,
                );
            }
            "extmap" => {
                let bad = || SdpError::BadAttribute("extmap", value.to_string());
                let (id, rest) = value.split_once(' ').ok_or_else(bad)?;
                // The id may carry a direction (`1/sendrecv`); only the number matters here.
                let id = id.split('/').next().unwrap_or("");
                let uri = rest.split(' ').next().unwrap_or("");
                if uri == VIDEO_ORIENTATION_URI {
                    let id: u8 = id.parse().map_err(|_| bad())?;
                    // One-byte header extensions (RFC 8285 §4.2) can only carry ids 1..=14.
                    if !(1..=14).contains(&id) {
                        return Err(bad());
                    }
                    orientation_ext = Some(id);
                }
            }
            _ => {}
        }
    }
    let mut codecs = Vec::new();
    if let Some(kind) = kind {
        for fmt in &md.media_name.formats {
            let Ok(pt) = fmt.parse::<u8>() else {
                continue;
            };
            let mapped = rtpmaps.iter().find(|(p, _, _)| *p == pt);
            let spec = match mapped {
                Some((_, name, clock)) => known_codec(kind, name, *clock),
                // PCMU's static payload type may appear without an rtpmap (RFC 3551 §6).
                None if pt == 0 && kind == MediaKind::Audio => known_codec(kind, "PCMU", 8000),
                None => None,
            };
            if let Some(spec) = spec {
                codecs.push((pt, spec));
            }
        }
    }
    Ok(ParsedMedia {
        kind,
        port: md.media_name.port.value,
        codecs,
        ssrc,
        orientation_ext,
    })
}

fn supports_codec(caps: &Capabilities, spec: &CodecSpec) -> bool {
    let listed = match spec.kind {
        MediaKind::Audio => &caps.audio_codecs,
        MediaKind::Video => &caps.video_codecs,
    };
    caps.supports(spec.kind) && listed.iter().any(|n| n.eq_ignore_ascii_case(spec.name))
}

fn set_stream(
    session: &mut MediaSession,
    kind: MediaKind,
    stream: NegotiatedStream,
) -> Result<(), SdpError> {
    let slot = match kind {
        MediaKind::Audio => &mut session.audio,
        MediaKind::Video => &mut session.video,
    };
    if slot.is_some() {
        return Err(SdpError::DuplicateMedia(kind));
    }
    *slot = Some(stream);
    Ok(())
}

/// Answers `offer` with the local capabilities. Returns the answer text and what it negotiated
/// (the remote SSRCs are the offerer's).
pub fn build_answer(
    offer: &str,
    caps: &Capabilities,
    ssrcs: LocalSsrcs,
) -> Result<(String, MediaSession), SdpError> {
    let offer = parse(offer)?;
    let mut sd = session();
    let mut negotiated = MediaSession::default();
    let mut seen = Vec::new();
    for md in &offer.media_descriptions {
        let p = parse_media(md)?;
        if let Some(kind) = p.kind {
            if seen.contains(&kind) {
                return Err(SdpError::DuplicateMedia(kind));
            }
            seen.push(kind);
        }
        // The offerer's order is its preference; take the first codec we also have.
        let chosen = p
            .codecs
            .iter()
            .find(|(_, spec)| supports_codec(caps, spec))
            .filter(|_| p.port != 0);
        match (p.kind, chosen) {
            (Some(kind), Some(&(pt, spec))) => {
                let remote_ssrc = p.ssrc.ok_or(SdpError::MissingSsrc(kind))?;
                let mut out = media(kind, 9);
                add_codec(&mut out, &CodecSpec { pt, ..*spec });
                let ext = if kind == MediaKind::Video {
                    p.orientation_ext
                } else {
                    None
                };
                add_stream_attributes(&mut out, kind, ssrcs.get(kind), ext);
                if ext.is_some() {
                    negotiated.orientation_ext_id = ext;
                }
                set_stream(
                    &mut negotiated,
                    kind,
                    NegotiatedStream {
                        pt,
                        codec: spec.name.into(),
                        clock_rate: spec.clock_rate,
                        remote_ssrc,
                    },
                )?;
                sd.media_descriptions.push(out);
            }
            _ => {
                // RFC 3264 §6: keep the m= line, port 0, echoing the offered formats.
                let mut out = md.clone();
                out.media_name.port = RangedPort {
                    value: 0,
                    range: None,
                };
                out.attributes.clear();
                if out.media_name.formats.is_empty() {
                    out.media_name.formats.push("0".into());
                }
                sd.media_descriptions.push(out);
            }
        }
    }
    if negotiated.audio.is_none() && negotiated.video.is_none() {
        return Err(SdpError::NothingAccepted);
    }
    Ok((sd.marshal(), negotiated))
}

/// Reads the answer to `offer`, the offer this side sent. RFC 3264 §6: the answer has the offer's
/// m= lines in the same order and of the same media types; an accepted line (port not 0) uses a
/// payload type offered on that line, for the codec it was offered as, and echoes the offered
/// video orientation extension id if it uses the extension at all.
pub fn parse_answer(answer: &str, offer: &str) -> Result<MediaSession, SdpError> {
    let answer = parse(answer)?;
    let offer = parse(offer)?;
    if answer.media_descriptions.len() != offer.media_descriptions.len() {
        return Err(SdpError::MediaLineCount {
            offered: offer.media_descriptions.len(),
            answered: answer.media_descriptions.len(),
        });
    }
    let mut negotiated = MediaSession::default();
    for (index, (md, offered_md)) in answer
        .media_descriptions
        .iter()
        .zip(&offer.media_descriptions)
        .enumerate()
    {
        let (answered_type, offered_type) = (&md.media_name.media, &offered_md.media_name.media);
        if !answered_type.eq_ignore_ascii_case(offered_type) {
            return Err(SdpError::MediaTypeMismatch {
                index,
                offered: offered_type.clone(),
                answered: answered_type.clone(),
            });
        }
        let p = parse_media(md)?;
        let offered = parse_media(offered_md)?;
        // Our own offers carry only audio and video lines.
        let Some(kind) = p.kind else { continue };
        if p.port == 0 {
            continue;
        }
        for fmt in &md.media_name.formats {
            if !offered_md.media_name.formats.contains(fmt) {
                return Err(SdpError::PayloadTypeNotOffered {
                    kind,
                    pt: fmt.clone(),
                });
            }
        }
        let first = md.media_name.formats.first().cloned().unwrap_or_default();
        let &(pt, spec) = p
            .codecs
            .first()
            .filter(|(pt, _)| pt.to_string() == first)
            .ok_or_else(|| SdpError::UnknownPayloadType {
                kind,
                pt: first.clone(),
            })?;
        // The answer must keep the offered mapping of the payload type (RFC 3264 §6.1).
        if !offered.codecs.contains(&(pt, spec)) {
            return Err(SdpError::CodecNotOffered {
                kind,
                codec: spec.name.into(),
            });
        }
        let remote_ssrc = p.ssrc.ok_or(SdpError::MissingSsrc(kind))?;
        if kind == MediaKind::Video {
            if let Some(answered) = p.orientation_ext {
                if offered.orientation_ext != Some(answered) {
                    return Err(SdpError::OrientationIdMismatch {
                        offered: offered.orientation_ext,
                        answered,
                    });
                }
                negotiated.orientation_ext_id = Some(answered);
            }
        }
        set_stream(
            &mut negotiated,
            kind,
            NegotiatedStream {
                pt,
                codec: spec.name.into(),
                clock_rate: spec.clock_rate,
                remote_ssrc,
            },
        )?;
    }
    if negotiated.audio.is_none() && negotiated.video.is_none() {
        return Err(SdpError::NothingAccepted);
    }
    Ok(negotiated)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: LocalSsrcs = LocalSsrcs {
        audio: 1111,
        video: 2222,
    };
    const THEIRS: LocalSsrcs = LocalSsrcs {
        audio: 3333,
        video: 4444,
    };

    fn caps(audio: &[&str], video: &[&str]) -> Capabilities {
        Capabilities {
            audio: !audio.is_empty(),
            video: !video.is_empty(),
            audio_codecs: audio.iter().map(|c| c.to_string()).collect(),
            video_codecs: video.iter().map(|c| c.to_string()).collect(),
        }
    }

    #[test]
    fn offer_lists_codecs_in_capability_order_with_required_attributes() {
        let offer = build_offer(
            &Capabilities::default(),
            &[MediaKind::Audio, MediaKind::Video],
            OURS,
        )
        .unwrap();
        assert!(
            offer.contains("m=audio 9 UDP/TLS/RTP/SAVPF 111 0\r\n"),
            "{offer}"
        );
        assert!(offer.contains("a=rtpmap:111 opus/48000/2\r\n"));
        assert!(offer.contains("a=rtpmap:0 PCMU/8000\r\n"));
        assert!(offer.contains("m=video 9 UDP/TLS/RTP/SAVPF 96 102\r\n"));
        assert!(offer.contains("a=rtpmap:96 VP8/90000\r\n"));
        assert!(offer.contains("a=rtpmap:102 H264/90000\r\n"));
        assert_eq!(offer.matches("a=sendrecv").count(), 2);
        assert_eq!(offer.matches("a=rtcp-mux").count(), 2);
        assert_eq!(
            offer
                .matches("a=extmap:1 urn:3gpp:video-orientation")
                .count(),
            1
        );
        assert!(offer.contains("a=ssrc:1111 cname:switchyard"));
        assert!(offer.contains("a=ssrc:2222 cname:switchyard"));

        let pcmu_first =
            build_offer(&caps(&["PCMU", "opus"], &[]), &[MediaKind::Audio], OURS).unwrap();
        assert!(pcmu_first.contains("m=audio 9 UDP/TLS/RTP/SAVPF 0 111\r\n"));
        assert!(!pcmu_first.contains("m=video"));
    }

    #[test]
    fn offer_refuses_what_capabilities_cannot_do() {
        let audio_only = caps(&["opus"], &[]);
        assert_eq!(
            build_offer(&audio_only, &[MediaKind::Video], OURS),
            Err(SdpError::Unsupported(MediaKind::Video))
        );
        assert_eq!(
            build_offer(&caps(&["G722"], &[]), &[MediaKind::Audio], OURS),
            Err(SdpError::NoCodec(MediaKind::Audio))
        );
        assert_eq!(
            build_offer(&audio_only, &[], OURS),
            Err(SdpError::NothingRequested)
        );
    }

    #[test]
    fn answer_intersects_and_both_sides_agree() {
        let caller = Capabilities::default();
        let callee = caps(&["PCMU"], &["H264", "VP8"]);
        let offer = build_offer(&caller, &[MediaKind::Audio, MediaKind::Video], OURS).unwrap();
        let (answer, at_callee) = build_answer(&offer, &callee, THEIRS).unwrap();
        // The offerer's preference wins: VP8 was offered first.
        assert!(
            answer.contains("m=audio 9 UDP/TLS/RTP/SAVPF 0\r\n"),
            "{answer}"
        );
        assert!(answer.contains("m=video 9 UDP/TLS/RTP/SAVPF 96\r\n"));
        assert!(answer.contains("a=extmap:1 urn:3gpp:video-orientation"));
        assert_eq!(
            at_callee.audio,
            Some(NegotiatedStream {
                pt: 0,
                codec: "PCMU".into(),
                clock_rate: 8000,
                remote_ssrc: 1111
            })
        );
        let at_caller = parse_answer(&answer, &offer).unwrap();
        assert_eq!(
            at_caller,
            MediaSession {
                audio: Some(NegotiatedStream {
                    pt: 0,
                    codec: "PCMU".into(),
                    clock_rate: 8000,
                    remote_ssrc: 3333
                }),
                video: Some(NegotiatedStream {
                    pt: 96,
                    codec: "VP8".into(),
                    clock_rate: 90000,
                    remote_ssrc: 4444
                }),
                orientation_ext_id: Some(1),
            }
        );
    }

    #[test]
    fn kind_without_common_codec_is_rejected_with_port_zero() {
        let offer = build_offer(
            &Capabilities::default(),
            &[MediaKind::Audio, MediaKind::Video],
            OURS,
        )
        .unwrap();
        let callee = caps(&["opus"], &["AV1"]);
        let (answer, at_callee) = build_answer(&offer, &callee, THEIRS).unwrap();
        assert!(
            answer.contains("m=video 0 UDP/TLS/RTP/SAVPF 96 102\r\n"),
            "{answer}"
        );
        assert!(at_callee.video.is_none());
        assert_eq!(at_callee.orientation_ext_id, None);
        let at_caller = parse_answer(&answer, &offer).unwrap();
        assert_eq!(at_caller.audio.unwrap().codec, "opus");
        assert!(at_caller.video.is_none());
        assert_eq!(at_caller.orientation_ext_id, None);

        let nothing = caps(&["G722"], &[]);
        assert_eq!(
            build_answer(&offer, &nothing, THEIRS),
            Err(SdpError::NothingAccepted)
        );
    }

    #[test]
    fn bad_sdp_is_refused_with_a_clear_error() {
        let caller = Capabilities::default();
        for garbage in [
            "",
            "hello",
            "v=0\r\no=broken\r\n",
            "m=audio 9 RTP/AVP 0\r\n",
        ] {
            let err = build_answer(garbage, &caller, THEIRS).unwrap_err();
            assert!(matches!(err, SdpError::Syntax(_)), "{garbage:?}: {err:?}");
        }
        let offer = build_offer(&caller, &[MediaKind::Audio], OURS).unwrap();
        let huge = "a".repeat(MAX_SDP_LEN + 1);
        assert_eq!(
            parse_answer(&huge, &offer),
            Err(SdpError::TooLarge(MAX_SDP_LEN + 1))
        );

        let no_ssrc = offer.replace("a=ssrc:1111 cname:switchyard\r\n", "");
        assert_eq!(
            build_answer(&no_ssrc, &caller, THEIRS),
            Err(SdpError::MissingSsrc(MediaKind::Audio))
        );
        let bad_map = offer.replace("a=rtpmap:111 opus/48000/2", "a=rtpmap:111");
        assert!(matches!(
            build_answer(&bad_map, &caller, THEIRS),
            Err(SdpError::BadAttribute("rtpmap", _))
        ));
    }

    /// An audio and video offer, and the answer a default callee gives to it.
    fn offer_and_answer() -> (String, String) {
        let offer = build_offer(
            &Capabilities::default(),
            &[MediaKind::Audio, MediaKind::Video],
            OURS,
        )
        .unwrap();
        let (answer, _) = build_answer(&offer, &Capabilities::default(), THEIRS).unwrap();
        (offer, answer)
    }

    #[test]
    fn answer_must_follow_the_offer_line_by_line() {
        let (offer, answer) = offer_and_answer();
        let accepted = parse_answer(&answer, &offer).unwrap();
        assert_eq!(accepted.audio.unwrap().codec, "opus");
        assert_eq!(accepted.video.unwrap().codec, "VP8");
        assert_eq!(accepted.orientation_ext_id, Some(1));
        let video_at = answer.find("m=video").unwrap();
        let (audio_part, video_part) = answer.split_at(video_at);

        // A missing or an extra m= line.
        assert_eq!(
            parse_answer(audio_part, &offer),
            Err(SdpError::MediaLineCount {
                offered: 2,
                answered: 1
            })
        );
        let extra = format!("{answer}{video_part}");
        assert_eq!(
            parse_answer(&extra, &offer),
            Err(SdpError::MediaLineCount {
                offered: 2,
                answered: 3
            })
        );

        // The lines swapped: the first answered line is video where audio was offered.
        let head_end = answer.find("m=audio").unwrap();
        let swapped = format!(
            "{}{}{}",
            &answer[..head_end],
            video_part,
            &audio_part[head_end..]
        );
        let err = parse_answer(&swapped, &offer).unwrap_err();
        assert_eq!(
            err,
            SdpError::MediaTypeMismatch {
                index: 0,
                offered: "audio".into(),
                answered: "video".into()
            }
        );
        assert_eq!(
            err.to_string(),
            "m= line 0 of the answer is `video` where `audio` was offered"
        );

        // A rejected line (port 0) is fine; everything rejected is not.
        let no_video = answer.replace(
            "m=video 9 UDP/TLS/RTP/SAVPF 96",
            "m=video 0 UDP/TLS/RTP/SAVPF 96",
        );
        let accepted = parse_answer(&no_video, &offer).unwrap();
        assert!(accepted.audio.is_some() && accepted.video.is_none());
        assert_eq!(accepted.orientation_ext_id, None);
        let nothing = no_video.replace("m=audio 9 ", "m=audio 0 ");
        assert_eq!(
            parse_answer(&nothing, &offer),
            Err(SdpError::NothingAccepted)
        );
    }

    #[test]
    fn answer_may_use_only_offered_payload_types_and_extension_ids() {
        let (offer, answer) = offer_and_answer();

        // A payload type not offered on the line (8, PCMA; 96 is offered, but for video).
        for (pt, map) in [("8", "8 PCMA/8000"), ("96", "96 VP8/90000")] {
            let other = answer
                .replace(
                    "m=audio 9 UDP/TLS/RTP/SAVPF 111",
                    &format!("m=audio 9 UDP/TLS/RTP/SAVPF {pt}"),
                )
                .replace("a=rtpmap:111 opus/48000/2", &format!("a=rtpmap:{map}"));
            assert_eq!(
                parse_answer(&other, &offer),
                Err(SdpError::PayloadTypeNotOffered {
                    kind: MediaKind::Audio,
                    pt: pt.into()
                }),
                "{other}"
            );
        }
        // An offered payload type mapped to another codec than offered.
        let remapped = answer.replace("a=rtpmap:111 opus/48000/2", "a=rtpmap:111 PCMU/8000");
        assert_eq!(
            parse_answer(&remapped, &offer),
            Err(SdpError::CodecNotOffered {
                kind: MediaKind::Audio,
                codec: "PCMU".into()
            })
        );
        // An orientation extension id other than the offered one.
        let moved = answer.replace(
            "a=extmap:1 urn:3gpp:video-orientation",
            "a=extmap:4 urn:3gpp:video-orientation",
        );
        let err = parse_answer(&moved, &offer).unwrap_err();
        assert_eq!(
            err,
            SdpError::OrientationIdMismatch {
                offered: Some(1),
                answered: 4
            }
        );
        assert_eq!(
            err.to_string(),
            "the answer's video orientation extension id 4 is not the offered one (1)"
        );
        let unoffered = offer.replace("a=extmap:1 urn:3gpp:video-orientation\r\n", "");
        assert_eq!(
            parse_answer(&answer, &unoffered),
            Err(SdpError::OrientationIdMismatch {
                offered: None,
                answered: 1
            })
        );
        // Not using the offered extension is fine.
        let without = answer.replace("a=extmap:1 urn:3gpp:video-orientation\r\n", "");
        assert_eq!(
            parse_answer(&without, &offer).unwrap().orientation_ext_id,
            None
        );
    }
}
