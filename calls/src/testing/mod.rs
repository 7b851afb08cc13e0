//! An in-memory harness for the call core (feature `testing`): a memory store with the
//! database's semantics, several providers joined by a network the test steers, and a manual
//! clock. Used by this crate's flow and property tests; any implementation of the ports can be
//! checked against the same scenarios.

mod store;
mod world;

pub use store::{MemStore, MemUnit, Tables};
pub use world::{
    endpoint_ca, Answer, Device, Fate, Flight, MemPorts, Member, Swept, World, EPOCH_MS,
    MAX_CALL_DURATION_MS, RING_TIMEOUT_MS, TIMESTAMP_WINDOW_S,
};
