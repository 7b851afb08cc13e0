//! Call records, rejections, Forward ids and the answers kept for them; and the call core's
//! store port over them: a write unit is one write transaction, whose pushes wake this
//! replica's push channels once it commits.

use std::sync::Arc;

use super::sql::{query, Row};
use switchyard_calls::ports::{self, CallStore, Endpoint, StoreFailure, WriteUnit};
use switchyard_calls::{CallRecord, CallState};
use switchyard_protocol::dict::{Dict, Encoding};
use switchyard_protocol::invitation::{EndReason, ForwardAction, Push};

use super::records::EndpointRecord;
use super::{contains_pattern, is_unique_violation, Db, StoreError, StoreResult, WriteTx};
use crate::push::{Outbox, PushHub};
use crate::shared::now_ms;

impl Db {
    /// Ringing calls whose ring deadline has passed.
    pub async fn overdue_calls(&self, limit: i64) -> StoreResult<Vec<CallRecord>> {
        let rows = query(format!(
            "SELECT {CALL_COLUMNS} FROM calls WHERE state = 'ringing' AND ring_deadline <= $1 \
             ORDER BY ring_deadline LIMIT $2"
        ))
        .bind(now_ms())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(call_from_row).collect()
    }

    /// Answered calls answered at or before `answered_before` (Unix ms), oldest first.
    pub async fn overlong_calls(
        &self,
        answered_before: i64,
        limit: i64,
    ) -> StoreResult<Vec<CallRecord>> {
        let rows = query(format!(
            "SELECT {CALL_COLUMNS} FROM calls WHERE state = 'answered' AND answered_at <= $1 \
             ORDER BY answered_at LIMIT $2"
        ))
        .bind(answered_before)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(call_from_row).collect()
    }

    /// Call records, newest first, started before `before` (Unix ms), in `state` and with a
    /// caller or callee URI containing `party` (case-insensitively) when those are given.
    pub async fn list_calls(
        &self,
        before: Option<i64>,
        state: Option<&str>,
        party: Option<&str>,
        limit: i64,
    ) -> StoreResult<Vec<CallRecord>> {
        let pattern = party.map(contains_pattern);
        let rows = query(format!(
            "SELECT {CALL_COLUMNS} FROM calls WHERE initiated_at < $1 \
             AND ($2 IS NULL OR state = $2) \
             AND ($3 IS NULL OR LOWER(caller_uri) LIKE $3 ESCAPE '\\' \
                  OR LOWER(callee_uri) LIKE $3 ESCAPE '\\') \
             ORDER BY initiated_at DESC, session_id LIMIT $4"
        ))
        .bind(before.unwrap_or(i64::MAX))
        .bind(state)
        .bind(pattern)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(call_from_row).collect()
    }

    /// Calls ringing or answered, newest first.
    pub async fn calls_in_progress(&self, limit: i64) -> StoreResult<Vec<CallRecord>> {
        let rows = query(format!(
            "SELECT {CALL_COLUMNS} FROM calls WHERE state IN ('ringing', 'answered') \
             ORDER BY initiated_at DESC, session_id LIMIT $1"
        ))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(call_from_row).collect()
    }

    pub async fn count_calls_in_progress(&self) -> StoreResult<i64> {
        Ok(
            query("SELECT COUNT(*) FROM calls WHERE state IN ('ringing', 'answered')")
                .fetch_one(&self.pool)
                .await?
                .get(0),
        )
    }

    /// When each call since `since` (ms) started and, if it was, was answered: the newest
    /// `limit` of them.
    pub async fn call_times(&self, since: i64, limit: i64) -> StoreResult<Vec<(i64, Option<i64>)>> {
        Ok(query(
            "SELECT initiated_at, answered_at FROM calls WHERE initiated_at >= $1 \
             ORDER BY initiated_at DESC LIMIT $2",
        )
        .bind(since)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
    }

    /// One call record by session id.
    pub async fn call(&self, session_id: &str) -> StoreResult<Option<CallRecord>> {
        let row = query(format!(
            "SELECT {CALL_COLUMNS} FROM calls WHERE session_id = $1"
        ))
        .bind(session_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(call_from_row).transpose()
    }

    /// Records a Forward id from `provider_id`; false if it was seen before (a replay).
    pub async fn record_forward_nonce(&self, provider_id: &str, nonce: &str) -> StoreResult<bool> {
        let inserted = self
            .write_one(
                query(
                    "INSERT INTO forward_nonces (provider_id, nonce, seen_at) VALUES ($1, $2, $3) \
                     ON CONFLICT DO NOTHING",
                )
                .bind(provider_id)
                .bind(nonce)
                .bind(now_ms()),
            )
            .await?;
        Ok(inserted == 1)
    }

    /// Forgets Forward ids and answers older than `before` (Unix ms).
    pub async fn purge_forward_log(&self, before: i64) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        query("DELETE FROM forward_nonces WHERE seen_at < $1")
            .bind(before)
            .execute(&mut tx)
            .await?;
        query("DELETE FROM forward_results WHERE created_at < $1")
            .bind(before)
            .execute(&mut tx)
            .await?;
        tx.commit().await
    }
}

pub async fn insert_call(conn: &mut WriteTx, call: &CallRecord) -> StoreResult<()> {
    query(
        "INSERT INTO calls (session_id, caller_uri, callee_uri, caller_endpoint, rung_endpoints, \
         rung_count, rejections, media, state, reason, answered_by, providers, initiated_at, \
         ring_deadline, answered_at, ended_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
    )
    .bind(&call.session_id)
    .bind(&call.caller_uri)
    .bind(&call.callee_uri)
    .bind(&call.caller_endpoint)
    .bind(call.rung_endpoints.join(","))
    .bind(call.rung_count)
    .bind(call.rejections)
    .bind(call.media.join(","))
    .bind(call.state.as_str())
    .bind(&call.reason)
    .bind(&call.answered_by)
    .bind(call.providers.join(","))
    .bind(call.initiated_at)
    .bind(call.ring_deadline)
    .bind(call.answered_at)
    .bind(call.ended_at)
    .execute(&mut *conn)
    .await
    .map_err(|e| {
        if is_unique_violation(&e) {
            StoreError::Conflict(format!("session `{}` already exists", call.session_id))
        } else {
            e
        }
    })?;
    Ok(())
}

/// Moves a call from one of `from` to `to`; false if it was in none of them (someone else won).
pub async fn transition_call(
    conn: &mut WriteTx,
    session_id: &str,
    from: &[CallState],
    to: CallState,
    change: CallChange<'_>,
) -> StoreResult<bool> {
    let now = now_ms();
    let states: Vec<&str> = from.iter().map(|s| s.as_str()).collect();
    // The state names are our own constants, never input.
    let in_list = states
        .iter()
        .map(|s| format!("'{s}'"))
        .collect::<Vec<_>>()
        .join(",");
    let sql = format!(
        "UPDATE calls SET state = $2, \
         reason = COALESCE($3, reason), \
         answered_by = COALESCE($4, answered_by), \
         answered_at = CASE WHEN $5 = 1 THEN $6 ELSE answered_at END, \
         ended_at = CASE WHEN $7 = 1 THEN $6 ELSE ended_at END \
         WHERE session_id = $1 AND state IN ({in_list})"
    );
    let updated = query(sql)
        .bind(session_id)
        .bind(to.as_str())
        .bind(change.reason)
        .bind(change.answered_by)
        .bind(i64::from(to == CallState::Answered))
        .bind(now)
        .bind(i64::from(to.is_final()))
        .execute(&mut *conn)
        .await?
        .rows_affected();
    Ok(updated == 1)
}

#[derive(Debug, Default, Clone, Copy)]
pub struct CallChange<'a> {
    pub reason: Option<&'a str>,
    pub answered_by: Option<&'a str>,
}

/// Records one party's Reject (an endpoint here, or a provider the call was forwarded to; a
/// repeat counts once); returns whether it was new, and the rejections so far against the
/// parties rung.
async fn record_rejection(
    conn: &mut WriteTx,
    session_id: &str,
    endpoint_id: &str,
    reason: &str,
) -> StoreResult<(bool, i64, i64)> {
    let inserted = query(
        "INSERT INTO call_rejections (session_id, endpoint_id, reason, rejected_at) \
         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
    )
    .bind(session_id)
    .bind(endpoint_id)
    .bind(reason)
    .bind(now_ms())
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1;
    let sql = if inserted {
        "UPDATE calls SET rejections = rejections + 1 WHERE session_id = $1 RETURNING rejections, rung_count"
    } else {
        "SELECT rejections, rung_count FROM calls WHERE session_id = $1"
    };
    let row = query(sql).bind(session_id).fetch_one(&mut *conn).await?;
    Ok((inserted, row.get(0), row.get(1)))
}

/// Adds `provider` to the members that rang a call, in one statement: a read-modify-write
/// could lose a concurrent answer under PostgreSQL's read committed.
async fn record_ringing(conn: &mut WriteTx, session_id: &str, provider: &str) -> StoreResult<()> {
    query(
        "UPDATE calls SET ringing_providers = CASE WHEN ringing_providers = '' THEN $2 \
         ELSE ringing_providers || ',' || $2 END WHERE session_id = $1",
    )
    .bind(session_id)
    .bind(provider)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The answer already given to `provider_id`'s `action` Forward for `session_id`, if any.
pub async fn forward_result(
    conn: &mut WriteTx,
    provider_id: &str,
    session_id: &str,
    action: &str,
) -> StoreResult<Option<(u16, String)>> {
    Ok(query(
        "SELECT status, response FROM forward_results \
         WHERE provider_id = $1 AND session_id = $2 AND action = $3",
    )
    .bind(provider_id)
    .bind(session_id)
    .bind(action)
    .fetch_optional(&mut *conn)
    .await?
    .map(|r| (r.get::<i64>(0) as u16, r.get(1))))
}

pub async fn save_forward_result(
    conn: &mut WriteTx,
    provider_id: &str,
    session_id: &str,
    action: &str,
    status: u16,
    response: &str,
) -> StoreResult<()> {
    query(
        "INSERT INTO forward_results (provider_id, session_id, action, status, response, \
         created_at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
    )
    .bind(provider_id)
    .bind(session_id)
    .bind(action)
    .bind(i64::from(status))
    .bind(response)
    .bind(now_ms())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The reasons given so far by the parties that rejected a call, in the order they came.
pub async fn rejection_reasons(
    conn: &mut WriteTx,
    session_id: &str,
) -> StoreResult<Vec<(String, String)>> {
    Ok(query(
        "SELECT endpoint_id, reason FROM call_rejections WHERE session_id = $1 \
         ORDER BY rejected_at, endpoint_id",
    )
    .bind(session_id)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect())
}

/// Removes a call record and its rejections, for a Request that was refused after all.
pub async fn delete_call(conn: &mut WriteTx, session_id: &str) -> StoreResult<()> {
    query("DELETE FROM call_rejections WHERE session_id = $1")
        .bind(session_id)
        .execute(&mut *conn)
        .await?;
    query("DELETE FROM calls WHERE session_id = $1")
        .bind(session_id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The full call record, read inside a transaction.
pub async fn call_in(conn: &mut WriteTx, session_id: &str) -> StoreResult<Option<CallRecord>> {
    let row = query(format!(
        "SELECT {CALL_COLUMNS} FROM calls WHERE session_id = $1"
    ))
    .bind(session_id)
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(call_from_row).transpose()
}

const CALL_COLUMNS: &str = "session_id, caller_uri, callee_uri, caller_endpoint, rung_endpoints, \
                            rung_count, rejections, media, state, reason, answered_by, providers, initiated_at, \
                            ring_deadline, answered_at, ended_at, ringing_providers";

fn call_state_of(text: &str) -> StoreResult<CallState> {
    CallState::parse(text).ok_or_else(|| StoreError::Corrupt(format!("call state `{text}`")))
}

fn split_list(s: String) -> Vec<String> {
    if s.is_empty() {
        Vec::new()
    } else {
        s.split(',').map(str::to_string).collect()
    }
}

fn call_from_row(row: &Row) -> StoreResult<CallRecord> {
    Ok(CallRecord {
        session_id: row.get(0),
        caller_uri: row.get(1),
        callee_uri: row.get(2),
        caller_endpoint: row.get(3),
        rung_endpoints: split_list(row.get(4)),
        rung_count: row.get(5),
        rejections: row.get(6),
        media: split_list(row.get(7)),
        state: call_state_of(&row.get::<String>(8))?,
        reason: row.get(9),
        answered_by: row.get(10),
        providers: split_list(row.get(11)),
        initiated_at: row.get(12),
        ring_deadline: row.get(13),
        answered_at: row.get(14),
        ended_at: row.get(15),
        ringing_providers: split_list(row.get(16)),
    })
}

/// The core's view of an endpoint.
pub fn endpoint_of(record: &EndpointRecord) -> Endpoint {
    Endpoint {
        id: record.id.clone(),
        push_token: record.push_token.clone(),
        capabilities: record.capabilities.clone(),
    }
}

fn failure(e: StoreError) -> StoreFailure {
    Box::new(e)
}

/// The call store port over the database, with the push hub of this replica to wake. It owns
/// its handles because a lifetime on the core's `Ports::Store` defeats the compiler's proof
/// that spawned flows are `Send`.
pub struct DbCallStore {
    db: Db,
    hub: Arc<PushHub>,
}

impl DbCallStore {
    pub fn new(db: Db, hub: Arc<PushHub>) -> Self {
        DbCallStore { db, hub }
    }
}

impl CallStore for DbCallStore {
    type Unit<'a>
        = DbUnit<'a>
    where
        Self: 'a;

    async fn begin(&self) -> Result<DbUnit<'_>, StoreFailure> {
        Ok(DbUnit {
            tx: self.db.begin_write().await.map_err(failure)?,
            outbox: Outbox::default(),
            hub: &self.hub,
        })
    }

    async fn call(&self, session_id: &str) -> Result<Option<CallRecord>, StoreFailure> {
        self.db.call(session_id).await.map_err(failure)
    }

    async fn hosts(&self, uri: &str) -> Result<bool, StoreFailure> {
        Ok(self
            .db
            .user_id_for_uri(uri)
            .await
            .map_err(failure)?
            .is_some())
    }

    async fn endpoints_for(&self, uri: &str) -> Result<Vec<Endpoint>, StoreFailure> {
        let records = self.db.endpoints_for_uri(uri).await.map_err(failure)?;
        Ok(records.iter().map(endpoint_of).collect())
    }

    async fn claim_forward_id(
        &self,
        provider: &str,
        forward_id: &str,
    ) -> Result<bool, StoreFailure> {
        self.db
            .record_forward_nonce(provider, forward_id)
            .await
            .map_err(failure)
    }
}

/// One write transaction, and the push channels to wake once it commits.
pub struct DbUnit<'a> {
    tx: WriteTx,
    outbox: Outbox,
    hub: &'a PushHub,
}

impl WriteUnit for DbUnit<'_> {
    async fn call(&mut self, session_id: &str) -> Result<Option<CallRecord>, StoreFailure> {
        call_in(&mut self.tx, session_id).await.map_err(failure)
    }

    async fn insert_call(&mut self, record: &CallRecord) -> Result<bool, StoreFailure> {
        match insert_call(&mut self.tx, record).await {
            Ok(()) => Ok(true),
            Err(StoreError::Conflict(_)) => Ok(false),
            Err(e) => Err(failure(e)),
        }
    }

    async fn transition(
        &mut self,
        session_id: &str,
        from: &[CallState],
        to: CallState,
        change: ports::CallChange<'_>,
    ) -> Result<bool, StoreFailure> {
        transition_call(
            &mut self.tx,
            session_id,
            from,
            to,
            CallChange {
                reason: change.reason.map(EndReason::as_str),
                answered_by: change.answered_by,
            },
        )
        .await
        .map_err(failure)
    }

    async fn record_ringing(
        &mut self,
        session_id: &str,
        provider: &str,
    ) -> Result<(), StoreFailure> {
        record_ringing(&mut self.tx, session_id, provider)
            .await
            .map_err(failure)
    }

    async fn record_rejection(
        &mut self,
        session_id: &str,
        party: &str,
        reason: &str,
    ) -> Result<(bool, i64, i64), StoreFailure> {
        record_rejection(&mut self.tx, session_id, party, reason)
            .await
            .map_err(failure)
    }

    async fn rejections(
        &mut self,
        session_id: &str,
    ) -> Result<Vec<(String, String)>, StoreFailure> {
        rejection_reasons(&mut self.tx, session_id)
            .await
            .map_err(failure)
    }

    async fn delete_call(&mut self, session_id: &str) -> Result<(), StoreFailure> {
        delete_call(&mut self.tx, session_id).await.map_err(failure)
    }

    async fn push(
        &mut self,
        endpoint_id: &str,
        push: &Push,
        ttl_ms: i64,
    ) -> Result<bool, StoreFailure> {
        self.outbox
            .push(&mut self.tx, self.hub, endpoint_id, push, ttl_ms)
            .await
            .map_err(failure)
    }

    async fn forward_answer(
        &mut self,
        provider: &str,
        session_id: &str,
        action: ForwardAction,
    ) -> Result<Option<Dict>, StoreFailure> {
        let earlier = forward_result(&mut self.tx, provider, session_id, action.as_str())
            .await
            .map_err(failure)?;
        earlier
            .map(|(_, body)| {
                Dict::decode(body.as_bytes(), Encoding::Json)
                    .map_err(|e| failure(StoreError::Corrupt(format!("kept Forward answer: {e}"))))
            })
            .transpose()
    }

    async fn save_forward_answer(
        &mut self,
        provider: &str,
        session_id: &str,
        action: ForwardAction,
        answer: &Dict,
    ) -> Result<(), StoreFailure> {
        let body = String::from_utf8(answer.encode(Encoding::Json))
            .map_err(|e| failure(StoreError::Corrupt(e.to_string())))?;
        save_forward_result(
            &mut self.tx,
            provider,
            session_id,
            action.as_str(),
            200,
            &body,
        )
        .await
        .map_err(failure)
    }

    async fn commit(self) -> Result<(), StoreFailure> {
        self.tx.commit().await.map_err(failure)?;
        self.outbox.wake(self.hub);
        Ok(())
    }
}
