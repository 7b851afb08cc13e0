//! What the call core needs from the world, as small traits the daemon implements over its
//! database, its federation client and its keys, and the in-memory harness (`testing`) over
//! maps and a simulated network.
//!
//! The store's write unit is the one place state changes: a call change and the pushes it
//! causes are committed together or not at all. An implementation may group several units into
//! one commit, or keep hot state in memory, as long as a unit's reads see every earlier unit's
//! writes and `commit` returns only once the unit is as durable as the implementation promises.

use std::future::Future;

use switchyard_protocol::attestation::Attestation;
use switchyard_protocol::capabilities::Capabilities;
use switchyard_protocol::dict::Dict;
use switchyard_protocol::invitation::{EndReason, ForwardAction, Push, RelayChoice};

use crate::record::{CallRecord, CallState};
use crate::refusal::RefusalClass;
use crate::session::SessionState;

/// The provider's settings the flows read.
#[derive(Debug, Clone)]
pub struct Settings {
    pub provider_id: String,
    pub ring_timeout_ms: i64,
    pub push_ttl_ms: i64,
    /// This provider's endpoint CA certificate (PEM), which the other endpoint checks this
    /// side's DTLS identity against.
    pub endpoint_ca_pem: String,
    /// Whose relay serves the calls this provider's callers place (`relay.calls_use`).
    pub relay_choice: RelayChoice,
    /// How far a Forward's timestamp may be from this provider's clock.
    pub timestamp_window_s: i64,
    /// How long an answered call may last: past it the call is ended, so a call whose hang-up
    /// never reached this provider (a Cancel Forward lost for good) ends all the same.
    pub max_call_duration_ms: i64,
}

/// A store failure: the core does not look inside, it refuses the message as an internal error.
pub type StoreFailure = Box<dyn std::error::Error + Send + Sync>;

/// An endpoint the core may ring or act for: what the registry knows of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub id: String,
    pub push_token: String,
    pub capabilities: Capabilities,
}

/// The endpoint a Request came from, as its TLS identity authenticated it.
#[derive(Debug, Clone, PartialEq)]
pub struct Requester {
    pub endpoint: Endpoint,
    /// The canonical URIs the endpoint may act as.
    pub uris: Vec<String>,
}

impl Requester {
    pub fn owns(&self, uri: &str) -> bool {
        self.uris.iter().any(|u| u == uri)
    }
}

/// The authenticated sender of a Forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sender {
    pub provider_id: String,
    /// Its certificate (DER), checked to chain to the federation CA and pinned to the
    /// discovery dictionary.
    pub cert_der: Vec<u8>,
    /// The SHA-256 (lowercase hex) of its endpoint CA certificate, as the discovery dictionary
    /// pins it: the only endpoint CA this sender may present for its endpoints.
    pub endpoint_ca_sha256: String,
}

/// What a transition writes besides the state.
#[derive(Debug, Default, Clone, Copy)]
pub struct CallChange<'a> {
    pub reason: Option<EndReason>,
    pub answered_by: Option<&'a str>,
}

pub trait CallStore: Send + Sync {
    type Unit<'a>: WriteUnit + Send + 'a
    where
        Self: 'a;

    /// Opens a write unit. Units that touch the same call are serialized.
    fn begin(&self) -> impl Future<Output = Result<Self::Unit<'_>, StoreFailure>> + Send;

    /// The call record as last committed.
    fn call(
        &self,
        session_id: &str,
    ) -> impl Future<Output = Result<Option<CallRecord>, StoreFailure>> + Send;

    /// Whether a user of this provider holds `uri`.
    fn hosts(&self, uri: &str) -> impl Future<Output = Result<bool, StoreFailure>> + Send;

    /// The active endpoints of the user holding `uri`.
    fn endpoints_for(
        &self,
        uri: &str,
    ) -> impl Future<Output = Result<Vec<Endpoint>, StoreFailure>> + Send;

    /// Records a Forward's id from `provider`, durably and on its own; false when it was
    /// already recorded (a replay).
    fn claim_forward_id(
        &self,
        provider: &str,
        forward_id: &str,
    ) -> impl Future<Output = Result<bool, StoreFailure>> + Send;
}

pub trait WriteUnit {
    /// The call record, as this unit sees it.
    fn call(
        &mut self,
        session_id: &str,
    ) -> impl Future<Output = Result<Option<CallRecord>, StoreFailure>> + Send;

    /// Records a new call; false when the session id is taken.
    fn insert_call(
        &mut self,
        record: &CallRecord,
    ) -> impl Future<Output = Result<bool, StoreFailure>> + Send;

    /// Moves a call from one of `from` to `to`, stamping the answer or end time; false when it
    /// was in none of them (someone else won the race).
    fn transition(
        &mut self,
        session_id: &str,
        from: &[CallState],
        to: CallState,
        change: CallChange<'_>,
    ) -> impl Future<Output = Result<bool, StoreFailure>> + Send;

    /// Records that `provider`, a member the Initiate was forwarded to, answered it as ringing
    /// (the record is the originator's): from then on it may Accept or Cancel.
    fn record_ringing(
        &mut self,
        session_id: &str,
        provider: &str,
    ) -> impl Future<Output = Result<(), StoreFailure>> + Send;

    /// Records `party`'s rejection of a ringing call (a repeat counts once). Returns whether it
    /// was new, the rejections so far, and the parties rung.
    fn record_rejection(
        &mut self,
        session_id: &str,
        party: &str,
        reason: &str,
    ) -> impl Future<Output = Result<(bool, i64, i64), StoreFailure>> + Send;

    /// The rejections so far, as `(party, reason)`, in the order they came.
    fn rejections(
        &mut self,
        session_id: &str,
    ) -> impl Future<Output = Result<Vec<(String, String)>, StoreFailure>> + Send;

    /// Removes a call and its rejections.
    fn delete_call(
        &mut self,
        session_id: &str,
    ) -> impl Future<Output = Result<(), StoreFailure>> + Send;

    /// Queues a push for an active endpoint, expiring after `ttl_ms`; false when the endpoint
    /// is gone or revoked.
    fn push(
        &mut self,
        endpoint_id: &str,
        push: &Push,
        ttl_ms: i64,
    ) -> impl Future<Output = Result<bool, StoreFailure>> + Send;

    /// The answer already given to `provider`'s `action` Forward for the session, if any.
    fn forward_answer(
        &mut self,
        provider: &str,
        session_id: &str,
        action: ForwardAction,
    ) -> impl Future<Output = Result<Option<Dict>, StoreFailure>> + Send;

    fn save_forward_answer(
        &mut self,
        provider: &str,
        session_id: &str,
        action: ForwardAction,
        answer: &Dict,
    ) -> impl Future<Output = Result<(), StoreFailure>> + Send;

    /// Makes the unit's writes durable and visible, then lets the pushes it queued be
    /// delivered.
    fn commit(self) -> impl Future<Output = Result<(), StoreFailure>> + Send;
}

/// Why a Forward got no answer to act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerFailure {
    /// The peer answered with a refusal; `class` is what its transport status says.
    Refused {
        code: String,
        message: String,
        class: RefusalClass,
        /// For logs and messages: the whole refusal as the peer gave it.
        description: String,
    },
    /// Not delivered, not answered in time, or not a member any more.
    Undelivered(String),
}

impl std::fmt::Display for PeerFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerFailure::Refused { description, .. } => f.write_str(description),
            PeerFailure::Undelivered(why) => f.write_str(why),
        }
    }
}

/// The members whose Bloom filter may hold a URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Candidates {
    /// No discovery dictionary is in force: the federation is suspended.
    NoDirectory,
    Members {
        members: Vec<String>,
        /// Members that may hold it but whose circuit breaker is open.
        skipped: usize,
    },
}

pub trait Forwarder: Send + Sync {
    /// Sends a Forward to a member and returns its answer.
    fn send(
        &self,
        to: &str,
        action: ForwardAction,
        forward: Dict,
    ) -> impl Future<Output = Result<Dict, PeerFailure>> + Send;

    /// The members other than this one whose filter may hold `uri`.
    fn candidates(&self, uri: &str) -> Candidates;

    /// Whether `member`'s filter in force may hold `uri`: what a member may claim to host.
    fn may_host(&self, member: &str, uri: &str) -> bool;

    /// A fresh random Forward id.
    fn forward_id(&self) -> String;

    /// Signs the caller attestation with this provider's federation key.
    fn attest(&self, attestation: &Attestation) -> Result<Vec<u8>, String>;

    /// The federation-wide relay the discovery dictionary names, if any.
    fn federation_relay(&self) -> Option<String>;
}

pub trait Sealer: Send + Sync {
    fn seal(&self, state: &SessionState) -> String;
    fn open(&self, token: &str) -> Result<SessionState, String>;
}

pub trait Clock: Send + Sync {
    /// Unix milliseconds.
    fn now_ms(&self) -> i64;

    /// Waits `ms` milliseconds, before a Forward is sent again.
    fn pause(&self, ms: u64) -> impl Future<Output = ()> + Send;
}

/// What the core reports as it goes, for metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A call record reached a final state.
    Outcome(CallState),
    /// An Initiate Forward went to this many candidates.
    DispatchCandidates(usize),
    /// A candidate's filter matched but it does not host the URI.
    FalsePositive(String),
    /// A received Initiate's caller attestation was lowered (or dropped) because the sender may
    /// not present that caller: `reason` says why.
    AttestationLowered { peer: String, reason: &'static str },
    /// A Forward that needed no answer got none; what follows from it (a ring timeout, say)
    /// ends the call instead.
    Undelivered {
        session_id: String,
        peer: String,
        what: &'static str,
        error: String,
    },
}

/// Everything the core runs on.
pub trait Ports: Send + Sync {
    type Store: CallStore;
    type Forwarder: Forwarder;
    type Sealer: Sealer;
    type Clock: Clock;

    fn store(&self) -> &Self::Store;
    /// None when this provider is not a member of a federation.
    fn forwarder(&self) -> Option<&Self::Forwarder>;
    fn sealer(&self) -> &Self::Sealer;
    fn clock(&self) -> &Self::Clock;
    fn settings(&self) -> &Settings;
    fn observe(&self, event: Event);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the originator logs and puts in its refusals: the peer's own words, or why nothing
    /// came back.
    #[test]
    fn a_peer_failure_reads_as_the_peer_or_the_transport_put_it() {
        let refused = PeerFailure::Refused {
            code: "not-yet-ringing".into(),
            message: "this member has not rung".into(),
            class: RefusalClass::Conflict,
            description: "409 not-yet-ringing: this member has not rung".into(),
        };
        assert_eq!(
            refused.to_string(),
            "409 not-yet-ringing: this member has not rung"
        );
        assert_eq!(
            PeerFailure::Undelivered("timed out after 3 s".into()).to_string(),
            "timed out after 3 s"
        );
    }
}
