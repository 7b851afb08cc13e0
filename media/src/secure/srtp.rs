//! SRTP/SRTCP contexts keyed from DTLS (or from raw master keys, for benchmarks and tests).

use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use webrtc_srtp::context::Context;
use webrtc_srtp::option::{srtcp_replay_protection, srtp_replay_protection};
use webrtc_srtp::protection_profile::ProtectionProfile;

use super::SecureError;

/// Replay window (packets) of the incoming SRTP and SRTCP contexts.
pub const REPLAY_WINDOW: usize = 64;

/// Length of the fixed RTP header.
const RTP_HEADER_LEN: usize = 12;
/// RTCP header plus sender SSRC.
const RTCP_MIN_LEN: usize = 8;
/// E flag + SRTCP index trailer.
const SRTCP_INDEX_LEN: usize = 4;

/// An SRTP protection profile (RFC 5764 / RFC 7714 names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SrtpProfile {
    /// `SRTP_AEAD_AES_128_GCM` (RFC 7714): preferred.
    AeadAes128Gcm,
    /// `SRTP_AEAD_AES_256_GCM` (RFC 7714).
    AeadAes256Gcm,
    /// `SRTP_AES128_CM_HMAC_SHA1_80` (RFC 5764): the mandatory-to-implement fallback.
    Aes128CmHmacSha1_80,
    /// `SRTP_AES128_CM_HMAC_SHA1_32` (RFC 5764).
    Aes128CmHmacSha1_32,
}

impl SrtpProfile {
    /// What [`super::SecureChannel`] offers, in order of preference.
    pub const OFFERED: [SrtpProfile; 2] =
        [SrtpProfile::AeadAes128Gcm, SrtpProfile::Aes128CmHmacSha1_80];

    /// The IANA name, e.g. `SRTP_AEAD_AES_128_GCM`.
    pub fn name(self) -> &'static str {
        match self {
            SrtpProfile::AeadAes128Gcm => "SRTP_AEAD_AES_128_GCM",
            SrtpProfile::AeadAes256Gcm => "SRTP_AEAD_AES_256_GCM",
            SrtpProfile::Aes128CmHmacSha1_80 => "SRTP_AES128_CM_HMAC_SHA1_80",
            SrtpProfile::Aes128CmHmacSha1_32 => "SRTP_AES128_CM_HMAC_SHA1_32",
        }
    }

    /// Bytes an SRTP packet grows by over its RTP packet (auth tag or AEAD tag).
    pub fn rtp_overhead(self) -> usize {
        let p = self.srtp();
        p.rtp_auth_tag_len() + p.aead_auth_tag_len()
    }

    /// Bytes an SRTCP packet grows by over its RTCP packet (tag plus the 4-byte index).
    pub fn rtcp_overhead(self) -> usize {
        let p = self.srtp();
        p.rtcp_auth_tag_len() + p.aead_auth_tag_len() + SRTCP_INDEX_LEN
    }

    /// Master key length in bytes.
    pub fn master_key_len(self) -> usize {
        self.srtp().key_len()
    }

    /// Master salt length in bytes.
    pub fn master_salt_len(self) -> usize {
        self.srtp().salt_len()
    }

    pub(crate) fn srtp(self) -> ProtectionProfile {
        match self {
            SrtpProfile::AeadAes128Gcm => ProtectionProfile::AeadAes128Gcm,
            SrtpProfile::AeadAes256Gcm => ProtectionProfile::AeadAes256Gcm,
            SrtpProfile::Aes128CmHmacSha1_80 => ProtectionProfile::Aes128CmHmacSha1_80,
            SrtpProfile::Aes128CmHmacSha1_32 => ProtectionProfile::Aes128CmHmacSha1_32,
        }
    }

    pub(crate) fn dtls(self) -> SrtpProtectionProfile {
        match self {
            SrtpProfile::AeadAes128Gcm => SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
            SrtpProfile::AeadAes256Gcm => SrtpProtectionProfile::Srtp_Aead_Aes_256_Gcm,
            SrtpProfile::Aes128CmHmacSha1_80 => SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
            SrtpProfile::Aes128CmHmacSha1_32 => SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_32,
        }
    }

    pub(crate) fn from_dtls(p: SrtpProtectionProfile) -> Option<SrtpProfile> {
        match p {
            SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm => Some(SrtpProfile::AeadAes128Gcm),
            SrtpProtectionProfile::Srtp_Aead_Aes_256_Gcm => Some(SrtpProfile::AeadAes256Gcm),
            SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80 => {
                Some(SrtpProfile::Aes128CmHmacSha1_80)
            }
            SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_32 => {
                Some(SrtpProfile::Aes128CmHmacSha1_32)
            }
            SrtpProtectionProfile::Unsupported => None,
        }
    }
}

impl std::fmt::Display for SrtpProfile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The SRTP/SRTCP state of one call leg: outgoing contexts keyed with our master key (protect) and
/// incoming ones keyed with the peer's (unprotect, with a [`REPLAY_WINDOW`]-packet replay window).
///
/// All methods are synchronous and take `&self` (each of the four contexts sits behind its own
/// mutex), so one task can send while another receives. Packets are whole RTP/RTCP datagrams.
pub struct SrtpSession {
    profile: SrtpProfile,
    out_rtp: Mutex<Context>,
    out_rtcp: Mutex<Context>,
    in_rtp: Mutex<Context>,
    in_rtcp: Mutex<Context>,
}

impl std::fmt::Debug for SrtpSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SrtpSession")
            .field("profile", &self.profile)
            .finish_non_exhaustive()
    }
}

fn lock(m: &Mutex<Context>) -> MutexGuard<'_, Context> {
    // A panic while holding the lock cannot leave a context half-updated in a way that matters more
    // than losing the call; keep going.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SrtpSession {
    /// From master keys and salts (`local_*` protect what we send, `remote_*` unprotect what we
    /// receive). Lengths must match [`SrtpProfile::master_key_len`]/[`SrtpProfile::master_salt_len`].
    pub fn from_master_keys(
        profile: SrtpProfile,
        local_key: &[u8],
        local_salt: &[u8],
        remote_key: &[u8],
        remote_salt: &[u8],
    ) -> Result<SrtpSession, SecureError> {
        let p = profile.srtp();
        let ctx = |key: &[u8], salt: &[u8], replay: bool| {
            let (rtp_opt, rtcp_opt) = if replay {
                (
                    Some(srtp_replay_protection(REPLAY_WINDOW)),
                    Some(srtcp_replay_protection(REPLAY_WINDOW)),
                )
            } else {
                (None, None)
            };
            Context::new(key, salt, p, rtp_opt, rtcp_opt)
                .map(Mutex::new)
                .map_err(|e| SecureError::SrtpKeying(e.to_string()))
        };
        Ok(SrtpSession {
            profile,
            out_rtp: ctx(local_key, local_salt, false)?,
            out_rtcp: ctx(local_key, local_salt, false)?,
            in_rtp: ctx(remote_key, remote_salt, true)?,
            in_rtcp: ctx(remote_key, remote_salt, true)?,
        })
    }

    /// The profile in use.
    pub fn profile(&self) -> SrtpProfile {
        self.profile
    }

    /// Protect an outgoing RTP packet into SRTP.
    pub fn protect_rtp(&self, rtp: &[u8]) -> Result<Bytes, SecureError> {
        if rtp.len() < RTP_HEADER_LEN {
            return Err(SecureError::SrtpMalformed(format!(
                "RTP packet of {} bytes is shorter than an RTP header",
                rtp.len()
            )));
        }
        lock(&self.out_rtp)
            .encrypt_rtp(rtp)
            .map_err(SecureError::from_srtp)
    }

    /// Authenticate, replay-check and decrypt an incoming SRTP packet into RTP.
    pub fn unprotect_rtp(&self, srtp: &[u8]) -> Result<Bytes, SecureError> {
        let min = RTP_HEADER_LEN + self.profile.rtp_overhead();
        if srtp.len() < min {
            return Err(SecureError::SrtpMalformed(format!(
                "SRTP packet of {} bytes is shorter than the minimum {min}",
                srtp.len()
            )));
        }
        lock(&self.in_rtp)
            .decrypt_rtp(srtp)
            .map_err(SecureError::from_srtp)
    }

    /// Protect an outgoing (compound) RTCP packet into SRTCP.
    pub fn protect_rtcp(&self, rtcp: &[u8]) -> Result<Bytes, SecureError> {
        if rtcp.len() < RTCP_MIN_LEN {
            return Err(SecureError::SrtpMalformed(format!(
                "RTCP packet of {} bytes is shorter than {RTCP_MIN_LEN}",
                rtcp.len()
            )));
        }
        lock(&self.out_rtcp)
            .encrypt_rtcp(rtcp)
            .map_err(SecureError::from_srtp)
    }

    /// Authenticate, replay-check and decrypt an incoming SRTCP packet into RTCP.
    pub fn unprotect_rtcp(&self, srtcp: &[u8]) -> Result<Bytes, SecureError> {
        let min = RTCP_MIN_LEN + self.profile.rtcp_overhead();
        if srtcp.len() < min {
            return Err(SecureError::SrtpMalformed(format!(
                "SRTCP packet of {} bytes is shorter than the minimum {min}",
                srtcp.len()
            )));
        }
        lock(&self.in_rtcp)
            .decrypt_rtcp(srtcp)
            .map_err(SecureError::from_srtp)
    }
}
