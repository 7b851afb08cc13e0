//! Errors of the DTLS-SRTP layer.

use std::time::Duration;

/// What went wrong while setting up or using a [`super::SecureChannel`] or [`super::SrtpSession`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecureError {
    /// Our own certificate or key is unusable.
    #[error("invalid endpoint identity: {0}")]
    InvalidIdentity(String),
    /// The expectation about the peer is malformed (bad fingerprint, unparsable CA certificate...).
    #[error("invalid peer expectation: {0}")]
    InvalidPeerExpectation(String),
    /// The handshake did not complete in time (peer unreachable, or packets lost for too long).
    #[error("DTLS handshake timed out after {0:?}")]
    HandshakeTimeout(Duration),
    /// The DTLS handshake failed for a reason other than our checks of the peer certificate,
    /// including the peer rejecting our certificate (it then sends a fatal alert).
    #[error("DTLS handshake failed: {0}")]
    HandshakeFailed(String),
    /// The peer presented no certificate.
    #[error("peer presented no certificate")]
    NoPeerCertificate,
    /// The peer's certificate is not the one the signalling announced.
    #[error("peer certificate fingerprint mismatch: expected sha-256 {expected}, got {actual}")]
    FingerprintMismatch {
        /// Lower-case hex SHA-256 announced in signalling.
        expected: String,
        /// Lower-case hex SHA-256 of the certificate presented.
        actual: String,
    },
    /// The peer's certificate is not issued by one of its provider's endpoint CAs, is expired or
    /// not yet valid, or cannot be parsed.
    #[error("peer certificate not trusted: {0}")]
    UntrustedCertificate(String),
    /// The peer's certificate does not name the URI the signalling announced.
    #[error("peer certificate does not carry URI {expected:?} (its URIs: {found:?})")]
    UriMismatch {
        /// URI expected from signalling.
        expected: String,
        /// SAN URIs found in the certificate.
        found: Vec<String>,
    },
    /// No SRTP protection profile was agreed, or one we cannot use.
    #[error("SRTP profile negotiation failed: {0}")]
    SrtpProfile(String),
    /// Deriving the SRTP keys or building the SRTP contexts failed.
    #[error("SRTP key derivation failed: {0}")]
    SrtpKeying(String),
    /// An incoming SRTP/SRTCP packet failed authentication (tampered, or not from our peer).
    #[error("SRTP authentication failed: {0}")]
    SrtpAuthentication(String),
    /// An incoming SRTP/SRTCP packet was already received (or is too old for the replay window).
    #[error("SRTP replay refused: ssrc {ssrc:#010x}, index {index}")]
    SrtpReplay {
        /// SSRC of the packet.
        ssrc: u32,
        /// RTP sequence number or SRTCP index.
        index: u64,
    },
    /// The packet is not a well-formed (S)RTP/(S)RTCP packet, or is too short.
    #[error("malformed (S)RTP/(S)RTCP packet: {0}")]
    SrtpMalformed(String),
    /// Any other SRTP failure (e.g. the 2^48 packet limit of a key).
    #[error("SRTP error: {0}")]
    Srtp(String),
    /// Application data exceeds [`super::MAX_APP_DATA_LEN`].
    #[error("application data too large: {len} bytes (max {max})")]
    AppDataTooLarge {
        /// Length given.
        len: usize,
        /// Maximum accepted.
        max: usize,
    },
    /// The DTLS association is closed (locally, by the peer's close_notify or a fatal alert).
    #[error("DTLS channel closed")]
    Closed,
    /// Waiting for application data timed out.
    #[error("timed out waiting for DTLS application data")]
    Timeout,
    /// Sending or receiving DTLS application data failed.
    #[error("DTLS transport error: {0}")]
    Transport(String),
}

impl SecureError {
    /// Map an error of the SRTP crate.
    pub(crate) fn from_srtp(err: webrtc_srtp::Error) -> SecureError {
        use webrtc_srtp::Error as E;
        match err {
            E::SrtpSsrcDuplicated(ssrc, seq) => SecureError::SrtpReplay {
                ssrc,
                index: u64::from(seq),
            },
            E::SrtcpSsrcDuplicated(ssrc, index) => SecureError::SrtpReplay {
                ssrc,
                index: index as u64,
            },
            E::ErrFailedToVerifyAuthTag
            | E::RtpFailedToVerifyAuthTag
            | E::RtcpFailedToVerifyAuthTag
            | E::RtcpInvalidLengthAuthTag(..)
            | E::AesGcm(_) => SecureError::SrtpAuthentication(err.to_string()),
            E::ErrTooShortRtp
            | E::ErrTooShortRtcp
            | E::SrtpTooSmall(..)
            | E::SrtcpTooSmall(..)
            | E::Util(_)
            | E::Rtcp(_) => SecureError::SrtpMalformed(err.to_string()),
            other => SecureError::Srtp(other.to_string()),
        }
    }
}
