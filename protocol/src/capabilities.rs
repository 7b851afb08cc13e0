use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::dict::{Dict, DictError};

/// A kind of media a call can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaKind {
    Audio,
    Video,
}

impl MediaKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MediaKind::Audio => "audio",
            MediaKind::Video => "video",
        }
    }
}

impl fmt::Display for MediaKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MediaKind {
    type Err = CapabilityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "audio" => Ok(MediaKind::Audio),
            "video" => Ok(MediaKind::Video),
            other => Err(CapabilityError::UnknownMediaKind(other.to_string())),
        }
    }
}

/// What an endpoint (device) can send and receive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    pub audio: bool,
    pub video: bool,
    /// RTP payload format names (`opus`, `PCMU`, ...), compared case-insensitively.
    #[serde(default)]
    pub audio_codecs: Vec<String>,
    #[serde(default)]
    pub video_codecs: Vec<String>,
}

impl Default for Capabilities {
    /// What a typical softphone offers: audio and video with the WebRTC mandatory codecs.
    fn default() -> Self {
        Capabilities {
            audio: true,
            video: true,
            audio_codecs: vec!["opus".into(), "PCMU".into()],
            video_codecs: vec!["VP8".into(), "H264".into()],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapabilityError {
    #[error("unknown media kind `{0}`; expected `audio` or `video`")]
    UnknownMediaKind(String),
    #[error("codec name `{0}` is not a valid RTP payload format name")]
    InvalidCodec(String),
    #[error("{0} is enabled but lists no codecs")]
    NoCodecs(MediaKind),
    #[error("too many {0} codecs (at most {MAX_CODECS})")]
    TooManyCodecs(MediaKind),
}

/// Why an endpoint cannot take a call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unsupported {
    #[error("the endpoint does not support {0}")]
    MissingMedia(MediaKind),
    #[error("the endpoint shares no {0} codec with the caller")]
    NoCommonCodec(MediaKind),
}

const MAX_CODECS: usize = 32;

impl Capabilities {
    /// Reads the `capabilities` dictionary of registration (and `caller-capabilities` of an
    /// Initiate Forward); what it leaves out takes the defaults.
    pub fn from_dict(dict: Option<&Dict>) -> Result<Capabilities, DictError> {
        let defaults = Capabilities::default();
        let Some(dict) = dict else {
            return Ok(defaults);
        };
        Ok(Capabilities {
            audio: dict.opt_bool("audio")?.unwrap_or(true),
            video: dict.opt_bool("video")?.unwrap_or(true),
            audio_codecs: dict
                .opt_string_array("audio-codecs")?
                .unwrap_or(defaults.audio_codecs),
            video_codecs: dict
                .opt_string_array("video-codecs")?
                .unwrap_or(defaults.video_codecs),
        })
    }

    pub fn to_dict(&self) -> Dict {
        Dict::new()
            .with("audio", self.audio)
            .with("video", self.video)
            .with("audio-codecs", self.audio_codecs.clone())
            .with("video-codecs", self.video_codecs.clone())
    }

    /// Checks codec names (RFC 4855 media subtype names: letters, digits, `-`, `.`, `_`, up to 32).
    pub fn validate(&self) -> Result<(), CapabilityError> {
        for (kind, enabled, codecs) in [
            (MediaKind::Audio, self.audio, &self.audio_codecs),
            (MediaKind::Video, self.video, &self.video_codecs),
        ] {
            if codecs.len() > MAX_CODECS {
                return Err(CapabilityError::TooManyCodecs(kind));
            }
            if enabled && codecs.is_empty() {
                return Err(CapabilityError::NoCodecs(kind));
            }
            for codec in codecs {
                let valid = !codec.is_empty()
                    && codec.len() <= 32
                    && codec
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
                if !valid {
                    return Err(CapabilityError::InvalidCodec(codec.clone()));
                }
            }
        }
        Ok(())
    }

    pub fn supports(&self, kind: MediaKind) -> bool {
        match kind {
            MediaKind::Audio => self.audio,
            MediaKind::Video => self.video,
        }
    }

    fn codecs(&self, kind: MediaKind) -> &[String] {
        match kind {
            MediaKind::Audio => &self.audio_codecs,
            MediaKind::Video => &self.video_codecs,
        }
    }

    /// Whether this endpoint can take a call from `caller` that needs every kind in `required`:
    /// it must support each kind and share at least one codec of it with the caller.
    pub fn can_answer(
        &self,
        caller: &Capabilities,
        required: &[MediaKind],
    ) -> Result<(), Unsupported> {
        for &kind in required {
            if !self.supports(kind) {
                return Err(Unsupported::MissingMedia(kind));
            }
            let common = self.codecs(kind).iter().any(|ours| {
                caller
                    .codecs(kind)
                    .iter()
                    .any(|theirs| ours.eq_ignore_ascii_case(theirs))
            });
            if !common {
                return Err(Unsupported::NoCommonCodec(kind));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn audio_only(codecs: &[&str]) -> Capabilities {
        Capabilities {
            audio: true,
            video: false,
            audio_codecs: codecs.iter().map(|c| c.to_string()).collect(),
            video_codecs: vec![],
        }
    }

    #[test]
    fn default_endpoint_answers_default_caller_for_audio_and_video() {
        let caps = Capabilities::default();
        caps.validate().unwrap();
        assert_eq!(
            caps.can_answer(&caps, &[MediaKind::Audio, MediaKind::Video]),
            Ok(())
        );
    }

    #[test]
    fn audio_only_endpoint_is_not_rung_for_video() {
        let callee = audio_only(&["opus"]);
        let caller = Capabilities::default();
        assert_eq!(callee.can_answer(&caller, &[MediaKind::Audio]), Ok(()));
        assert_eq!(
            callee.can_answer(&caller, &[MediaKind::Audio, MediaKind::Video]),
            Err(Unsupported::MissingMedia(MediaKind::Video))
        );
    }

    #[test]
    fn codecs_must_intersect_case_insensitively() {
        let callee = audio_only(&["pcmu"]);
        assert_eq!(
            callee.can_answer(&audio_only(&["PCMU"]), &[MediaKind::Audio]),
            Ok(())
        );
        assert_eq!(
            callee.can_answer(&audio_only(&["opus"]), &[MediaKind::Audio]),
            Err(Unsupported::NoCommonCodec(MediaKind::Audio))
        );
    }

    #[test]
    fn validation_rejects_bad_codec_lists() {
        assert_eq!(
            audio_only(&["op us"]).validate(),
            Err(CapabilityError::InvalidCodec("op us".into()))
        );
        assert_eq!(
            audio_only(&[]).validate(),
            Err(CapabilityError::NoCodecs(MediaKind::Audio))
        );
        let many: Vec<String> = (0..33).map(|i| format!("c{i}")).collect();
        let caps = Capabilities {
            audio_codecs: many,
            ..audio_only(&[])
        };
        assert_eq!(
            caps.validate(),
            Err(CapabilityError::TooManyCodecs(MediaKind::Audio))
        );
        // MAX_CODECS codecs, and codec names of up to 32 characters, are fine.
        let most: Vec<String> = (0..MAX_CODECS).map(|i| format!("c{i}")).collect();
        let caps = Capabilities {
            audio_codecs: most,
            ..audio_only(&[])
        };
        assert_eq!(caps.validate(), Ok(()));
        let longest = "a".repeat(32);
        assert_eq!(audio_only(&[longest.as_str()]).validate(), Ok(()));
        let too_long = "a".repeat(33);
        assert_eq!(
            audio_only(&[too_long.as_str()]).validate(),
            Err(CapabilityError::InvalidCodec(too_long))
        );
    }

    #[test]
    fn capabilities_round_trip_through_their_dictionary() {
        let caps = Capabilities {
            audio: true,
            video: false,
            audio_codecs: vec!["opus".into(), "PCMU".into()],
            video_codecs: vec!["VP8".into()],
        };
        let dict = caps.to_dict();
        assert_eq!(dict.opt_bool("video").unwrap(), Some(false));
        assert_eq!(Capabilities::from_dict(Some(&dict)).unwrap(), caps);
        assert_eq!(MediaKind::Video.to_string(), "video");
    }

    #[test]
    fn media_kind_parses_and_rejects_unknown() {
        assert_eq!("video".parse::<MediaKind>(), Ok(MediaKind::Video));
        assert!(matches!(
            "text".parse::<MediaKind>(),
            Err(CapabilityError::UnknownMediaKind(_))
        ));
    }
}
