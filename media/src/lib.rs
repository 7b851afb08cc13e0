//! Switchyard's media layer.
//!
//! This crate holds what an endpoint can do with media and decides whether an endpoint can take a
//! call. The DTLS/SRTP stack, SIP-over-DTLS negotiation and the relays build on it.

pub mod blob;
mod capabilities;
pub mod demux;
pub mod ice;
pub mod inbox;
pub mod rtp;
pub mod sdp;
pub mod sdp_peer;
pub mod secure;
pub mod session;
pub mod sip;

pub use capabilities::{Capabilities, CapabilityError, MediaKind, Unsupported};
