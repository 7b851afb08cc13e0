//! A call store in memory, with the database's semantics: one write unit at a time (as SQLite's
//! `BEGIN IMMEDIATE`), a unit's writes visible to others only once it commits, nothing kept of
//! a unit dropped without committing, and pushes queued only for active endpoints.

use std::collections::{BTreeMap, BTreeSet};
use std::future::{poll_fn, Future};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;

use switchyard_protocol::dict::Dict;
use switchyard_protocol::invitation::{ForwardAction, Push};

use crate::ports::{CallChange, CallStore, Endpoint, StoreFailure, WriteUnit};
use crate::record::{CallRecord, CallState};

/// What a unit reads and writes: the tables a provider keeps per call.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tables {
    pub calls: BTreeMap<String, CallRecord>,
    /// Per session, `(party, reason)` in the order they came.
    pub rejections: BTreeMap<String, Vec<(String, String)>>,
    pub forward_answers: BTreeMap<(String, String, &'static str), Dict>,
    /// Per endpoint, every push queued, in order.
    pub pushes: BTreeMap<String, Vec<Push>>,
    /// Per endpoint, when each push of `pushes` expires undelivered (ms), in the same order.
    pub push_expiries: BTreeMap<String, Vec<i64>>,
}

#[derive(Default)]
struct Inner {
    tables: Tables,
    forward_ids: BTreeSet<(String, String)>,
    /// URI → the endpoints of the user holding it.
    users: BTreeMap<String, Vec<Endpoint>>,
    unit_open: bool,
    /// Units opened, and committed: each is a transaction, and on SQLite a wait for a commit.
    units_opened: u64,
    units_committed: u64,
    /// Transitions still to lose, see [`MemStore::lose_next_transition`].
    lost_transitions: u32,
}

#[derive(Clone)]
pub struct MemStore {
    inner: Arc<Mutex<Inner>>,
    clock: Arc<AtomicI64>,
}

impl MemStore {
    pub fn new(clock: Arc<AtomicI64>) -> MemStore {
        MemStore {
            inner: Arc::default(),
            clock,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("memory store")
    }

    /// Makes the next state transition find the call moved on, as a PostgreSQL transaction
    /// (read committed) does when another one changed the call between its read and its write:
    /// a flow must then give up its unit rather than act on the state it read.
    pub fn lose_next_transition(&self) {
        self.lock().lost_transitions += 1;
    }

    /// Registers a user's URI with its endpoints.
    pub fn add_user(&self, uri: &str, endpoints: Vec<Endpoint>) {
        self.lock().users.insert(uri.to_string(), endpoints);
    }

    /// How many write units were opened and how many committed, so far.
    pub fn units(&self) -> (u64, u64) {
        let inner = self.lock();
        (inner.units_opened, inner.units_committed)
    }

    /// The committed tables.
    pub fn tables(&self) -> Tables {
        self.lock().tables.clone()
    }

    pub fn forward_ids(&self) -> usize {
        self.lock().forward_ids.len()
    }

    /// Ringing calls whose deadline has passed.
    pub fn overdue(&self) -> Vec<CallRecord> {
        let now = self.clock.load(Ordering::SeqCst);
        self.lock()
            .tables
            .calls
            .values()
            .filter(|c| c.state == CallState::Ringing && c.ring_deadline <= now)
            .cloned()
            .collect()
    }
}

impl MemStore {
    /// Answered calls answered at or before `answered_before` (Unix ms).
    pub fn overlong(&self, answered_before: i64) -> Vec<CallRecord> {
        self.lock()
            .tables
            .calls
            .values()
            .filter(|c| {
                c.state == CallState::Answered
                    && c.answered_at.is_some_and(|at| at <= answered_before)
            })
            .cloned()
            .collect()
    }
}

impl CallStore for MemStore {
    type Unit<'a> = MemUnit;

    fn begin(&self) -> impl Future<Output = Result<MemUnit, StoreFailure>> + Send {
        let store = self.clone();
        poll_fn(move |_| {
            let mut inner = store.lock();
            if inner.unit_open {
                // The harness polls every task again; a unit waits its turn as a transaction
                // waits for the write lock.
                return Poll::Pending;
            }
            inner.unit_open = true;
            inner.units_opened += 1;
            Poll::Ready(Ok(MemUnit {
                tables: inner.tables.clone(),
                users: inner.users.clone(),
                store: store.clone(),
            }))
        })
    }

    async fn call(&self, session_id: &str) -> Result<Option<CallRecord>, StoreFailure> {
        Ok(self.lock().tables.calls.get(session_id).cloned())
    }

    async fn hosts(&self, uri: &str) -> Result<bool, StoreFailure> {
        Ok(self.lock().users.contains_key(uri))
    }

    async fn endpoints_for(&self, uri: &str) -> Result<Vec<Endpoint>, StoreFailure> {
        Ok(self.lock().users.get(uri).cloned().unwrap_or_default())
    }

    async fn claim_forward_id(
        &self,
        provider: &str,
        forward_id: &str,
    ) -> Result<bool, StoreFailure> {
        Ok(self
            .lock()
            .forward_ids
            .insert((provider.to_string(), forward_id.to_string())))
    }
}

pub struct MemUnit {
    tables: Tables,
    users: BTreeMap<String, Vec<Endpoint>>,
    store: MemStore,
}

impl Drop for MemUnit {
    fn drop(&mut self) {
        // Committed or rolled back, the write lock is free again.
        self.store.lock().unit_open = false;
    }
}

impl WriteUnit for MemUnit {
    async fn call(&mut self, session_id: &str) -> Result<Option<CallRecord>, StoreFailure> {
        Ok(self.tables.calls.get(session_id).cloned())
    }

    async fn insert_call(&mut self, record: &CallRecord) -> Result<bool, StoreFailure> {
        if self.tables.calls.contains_key(&record.session_id) {
            return Ok(false);
        }
        self.tables
            .calls
            .insert(record.session_id.clone(), record.clone());
        Ok(true)
    }

    async fn transition(
        &mut self,
        session_id: &str,
        from: &[CallState],
        to: CallState,
        change: CallChange<'_>,
    ) -> Result<bool, StoreFailure> {
        let now = self.store.clock.load(Ordering::SeqCst);
        {
            let mut inner = self.store.lock();
            if inner.lost_transitions > 0 {
                inner.lost_transitions -= 1;
                return Ok(false);
            }
        }
        let Some(call) = self.tables.calls.get_mut(session_id) else {
            return Ok(false);
        };
        if !from.contains(&call.state) {
            return Ok(false);
        }
        call.state = to;
        if let Some(reason) = change.reason {
            call.reason = Some(reason.as_str().to_string());
        }
        if let Some(answered_by) = change.answered_by {
            call.answered_by = Some(answered_by.to_string());
        }
        if to == CallState::Answered {
            call.answered_at = Some(now);
        }
        if to.is_final() {
            call.ended_at = Some(now);
        }
        Ok(true)
    }

    async fn record_ringing(
        &mut self,
        session_id: &str,
        provider: &str,
    ) -> Result<(), StoreFailure> {
        let Some(call) = self.tables.calls.get_mut(session_id) else {
            return Err(format!("no call {session_id}").into());
        };
        if !call.rang_at(provider) {
            call.ringing_providers.push(provider.to_string());
        }
        Ok(())
    }

    async fn record_rejection(
        &mut self,
        session_id: &str,
        party: &str,
        reason: &str,
    ) -> Result<(bool, i64, i64), StoreFailure> {
        let rejections = self
            .tables
            .rejections
            .entry(session_id.to_string())
            .or_default();
        let new = !rejections.iter().any(|(p, _)| p == party);
        if new {
            rejections.push((party.to_string(), reason.to_string()));
        }
        let Some(call) = self.tables.calls.get_mut(session_id) else {
            return Err(format!("no call {session_id}").into());
        };
        if new {
            call.rejections += 1;
        }
        Ok((new, call.rejections, call.rung_count))
    }

    async fn rejections(
        &mut self,
        session_id: &str,
    ) -> Result<Vec<(String, String)>, StoreFailure> {
        Ok(self
            .tables
            .rejections
            .get(session_id)
            .cloned()
            .unwrap_or_default())
    }

    async fn delete_call(&mut self, session_id: &str) -> Result<(), StoreFailure> {
        self.tables.calls.remove(session_id);
        self.tables.rejections.remove(session_id);
        Ok(())
    }

    async fn push(
        &mut self,
        endpoint_id: &str,
        push: &Push,
        ttl_ms: i64,
    ) -> Result<bool, StoreFailure> {
        let active = self.users.values().flatten().any(|e| e.id == endpoint_id);
        if active {
            self.tables
                .pushes
                .entry(endpoint_id.to_string())
                .or_default()
                .push(push.clone());
            let now = self.store.clock.load(Ordering::SeqCst);
            self.tables
                .push_expiries
                .entry(endpoint_id.to_string())
                .or_default()
                .push(now + ttl_ms);
        }
        Ok(active)
    }

    async fn forward_answer(
        &mut self,
        provider: &str,
        session_id: &str,
        action: ForwardAction,
    ) -> Result<Option<Dict>, StoreFailure> {
        Ok(self
            .tables
            .forward_answers
            .get(&(
                provider.to_string(),
                session_id.to_string(),
                action.as_str(),
            ))
            .cloned())
    }

    async fn save_forward_answer(
        &mut self,
        provider: &str,
        session_id: &str,
        action: ForwardAction,
        answer: &Dict,
    ) -> Result<(), StoreFailure> {
        self.tables
            .forward_answers
            .entry((
                provider.to_string(),
                session_id.to_string(),
                action.as_str(),
            ))
            .or_insert_with(|| answer.clone());
        Ok(())
    }

    async fn commit(mut self) -> Result<(), StoreFailure> {
        let mut inner = self.store.lock();
        inner.tables = std::mem::take(&mut self.tables);
        inner.units_committed += 1;
        Ok(())
    }
}
