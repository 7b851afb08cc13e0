//! DTLS-SRTP for endpoint media, with DTLS application data as the SIP channel.
//!
//! The endpoints of a call run one DTLS 1.2 handshake over the media 5-tuple (the UDP port shared
//! with STUN and SRTP; a demux in the UDP shell hands DTLS datagrams to a [`PacketConn`]). Both sides
//! present their endpoint identity certificate and each checks the other's against what the
//! signalling promised ([`PeerExpectation`]): the SHA-256 fingerprint, a chain to the peer
//! provider's endpoint CA, and the peer's URI in a SAN. The DTLS-SRTP exporter then keys an
//! [`SrtpSession`] (RFC 5764), with replay protection on; the DTLS association itself stays up to
//! carry application data (SIP) in both directions.
//!
//! * [`PacketConn`]: a `webrtc_util::Conn` over two channels, so DTLS never sees socket addresses
//!   and a path change (ICE re-nomination, relay fallback) is invisible to it.
//! * [`EndpointIdentity`] / [`PeerExpectation`]: our certificate and key; what we expect of the peer.
//! * [`SecureChannel`]: the handshake, application data, and SRTP/SRTCP protect/unprotect.
//! * [`SrtpSession`]: synchronous SRTP/SRTCP contexts, usable without the DTLS (benchmarks).

mod channel;
mod conn;
mod error;
mod identity;
mod srtp;

#[cfg(test)]
mod tests;

pub use channel::{DtlsRole, SecureChannel, MAX_APP_DATA_LEN};
pub use conn::{PacketConn, PacketConnShell};
pub use error::SecureError;
pub use identity::{fingerprint_sha256_hex, EndpointIdentity, PeerExpectation};
pub use srtp::{SrtpProfile, SrtpSession, REPLAY_WINDOW};
