//! The invitation protocol's messages, typed: each action (Initiate, Accept, Reject, Cancel,
//! Update) as the Request an endpoint sends its provider, the Forward one provider sends another,
//! and the Push a provider queues for an endpoint (`docs/protocol.md`, "The invitation protocol"
//! and "Provider to provider").
//!
//! A message is read from its dictionary once, at the edge (`from_dict`), with every field
//! checked: bounds, enumerations, canonical URIs. What follows works on the typed value;
//! `to_dict` writes the same keys back, so the wire stays what the document says in either
//! encoding. Errors name the field at fault and carry no transport status: the daemon maps them
//! to HTTP, the SIP edge to SIP.

mod fields;
mod forward;
mod push;
mod reason;
mod request;

pub use fields::{
    MessageError, SessionId, MAX_BLOB, MAX_CA_PEM, MAX_REASON_TEXT, MAX_STATE, MAX_TOKEN,
};
pub use forward::{
    AcceptForward, CancelForward, Envelope, ForwardAction, InitiateAnswer, InitiateForward,
    RejectAnswer, RejectForward, UpdateAnswer, UpdateForward,
};
pub use push::{AcceptPush, CancelPush, InitiatePush, Push, RejectPush, UpdatePush};
pub use reason::{CancelReason, EndReason, ForwardCancelReason, RejectReason, RelayChoice};
pub use request::{
    AcceptRequest, CancelRequest, InitiateRequest, InitiateResponse, RejectRequest, UpdateRequest,
};
