//! Switchyard's media layer: the endpoint's media session between two endpoints (ICE, DTLS-SRTP,
//! SIP over DTLS, RTP and RTCP), as sans-I/O state machines and the tokio shell that drives them.
//! What an endpoint can take (`Capabilities`) is part of the wire protocol, in
//! `switchyard_protocol::capabilities`.

pub mod blob;
pub mod demux;
pub mod ice;
pub mod inbox;
pub mod rtp;
pub mod sdp;
pub mod sdp_peer;
pub mod secure;
pub mod session;
pub mod sip;
