//! The SIP edge: ordinary SIP phones and trunks join the provider over UDP, TCP and TLS.
//!
//! An account's address of record (`sip:user@domain`) acts for a user, and so for the user's
//! `tel:` and `mailto:` URIs, through the account's gateway endpoint: the edge is a
//! back-to-back user agent between the phones and the invitation protocol, the SDP carried as
//! the blob ([`sdp`]); media never passes through the edge unless it anchors it ([`anchor`]).
//!
//! The modules, from the leaves up (each uses only those before it):
//!
//! * [`message`] — the front door without I/O: framing, the checks and the error answers RFC
//!   3261 gives bad requests; [`digest`], [`sdp`], [`anchor`], [`expiry`];
//! * [`uri`] — addresses: AoRs, `name-addr`s, header lists, and the invitation-protocol URIs
//!   they stand for; [`status`] — reasons and refusal codes as SIP statuses; [`accounts`] — the
//!   operator's provisioning and each account's gateway endpoint;
//! * [`outbound`] — what the edge sends, at the wire level: flows, requests, branches, timers;
//!   [`sockets`] — the UDP socket and the TCP and TLS connections;
//! * [`calls`] — the calls table: each leg's task by its key, with what routes messages to it;
//!   [`handle`] — the narrow handle a leg holds on the edge (app, calls, sockets) and the client
//!   transactions it runs through it;
//! * [`dialog`], [`fork`], [`session`] — a leg's SIP dialog, its forked INVITE and its side in
//!   the invitation protocol; [`leg`] — the leg's task; [`start`] — starting legs;
//! * [`registrar`] — REGISTER, and the digest checks of the phones' requests; [`gateway`] — the
//!   gateway endpoints' pushes, in memory from this process or off their queues;
//! * [`edge`] — the edge itself ([`SipEdge`]): sockets, server transactions, dispatch.

pub mod accounts;
pub mod anchor;
pub mod calls;
pub mod dialog;
pub mod digest;
pub mod edge;
mod expiry;
pub mod fork;
#[doc(hidden)]
pub mod fuzz;
pub mod gateway;
pub mod handle;
pub mod leg;
pub mod message;
pub mod outbound;
pub mod registrar;
pub mod sdp;
pub mod session;
pub mod sockets;
pub mod start;
pub mod status;
pub mod uri;

pub use accounts::gateway_capabilities;
pub use edge::{SipEdge, SipListeners};
