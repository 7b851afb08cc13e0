//! The invitation protocol's call core, without I/O: the call record and its states, the sealed
//! session state, the refusals, and the rules that decide who rings, how the answers of other
//! providers fold, which reason the caller hears and who is told of a cancel, a hang-up or an
//! Update. The daemon (`provider/`) reads the record, asks these rules, and commits what they
//! decide with the pushes they cause; the SIP edge maps the same refusals to SIP.
//!
//! - [`record`]: the call detail record, which arbitrates races between replicas.
//! - [`session`]: what is sealed into `state`, and the checks of who may act on a call.
//! - [`refusal`]: refusal codes, free of any transport status.
//! - [`rules`]: the decisions of `docs/protocol.md`, "Call flows".
//! - [`ports`]: what the core needs from the world (store, forwarder, sealer, clock).
//! - [`flows`]: the local, originator's and answerer's flows, written once against the ports.
//! - `testing` (feature): an in-memory harness, several providers on a simulated network.

pub mod flows;
pub mod ports;
pub mod record;
pub mod refusal;
pub mod rules;
pub mod session;
#[cfg(feature = "testing")]
pub mod testing;

pub use flows::{CallError, CallResult, Core, Deferred, Settings};
pub use ports::Sender;
pub use record::{party_provider, provider_party, CallRecord, CallState};
pub use refusal::{Refusal, RefusalCode};
pub use session::{Role, SessionState};
