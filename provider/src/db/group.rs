//! SQLite's writer: one connection, write units as savepoints of a shared transaction, and one
//! commit (one fsync of the WAL) for every unit that queued while the previous one ran.
//!
//! A unit takes the writer (units queue for it in order), opens the group's transaction if none
//! is open (`BEGIN IMMEDIATE`), and runs inside `SAVEPOINT unit`. Committing the unit joins the
//! group and hands the writer on; it returns once the group's `COMMIT` is done. The flusher
//! commits a group as soon as it gets the writer, which is after the units that queued before it
//! asked. So with no load a unit's commit is one `COMMIT`, and under load every unit that arrived
//! during a group's fsync goes into the next group.
//!
//! Each statement is a round trip to sqlx's SQLite thread, so a unit's savepoint is ended by
//! whoever takes the writer next, in the same round trip as their own first statement: the next
//! unit (`RELEASE unit; SAVEPOINT unit`) or the flusher (`RELEASE unit; COMMIT`). A unit costs
//! one round trip of transaction control, a group one more.
//!
//! A future dropped while one of these statements is with sqlx (a request cancelled by its
//! client) leaves it half run: sqlx stops at the first result nobody receives. So each is
//! recorded before it is sent, and the next holder first finishes the work step by step (every
//! step can run twice), knowing the names: the savepoints of consecutive units alternate
//! between `a` and `b`.
//!
//! Durability is unchanged: a unit's commit returns only after its group is on disk, and if the
//! group fails, every unit in it gets the error and none of them is stored. A unit dropped
//! without committing is rolled back to its savepoint (by the next holder of the writer, as a
//! drop cannot wait), leaving the group's other units as they were. Units of one group see each
//! other's writes before they are committed, which is harmless: none of them is acknowledged
//! before all are stored, and a failure takes all of them back.

use std::sync::{Arc, Weak};

use sqlx::{AnyConnection, Executor};
use tokio::sync::{watch, Mutex, Notify, OwnedMutexGuard};

use super::error::{StoreError, StoreResult};

/// The result of a group's commit, shared by its units: None while it is open.
type Outcome = Option<Result<(), Arc<str>>>;

#[derive(Clone)]
pub struct Writer {
    state: Arc<Mutex<State>>,
    flush: Arc<Notify>,
}

/// The savepoint names: consecutive units alternate, so the statement that ends one unit's
/// savepoint and opens the next can be finished by name when it was interrupted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Name {
    A,
    B,
}

impl Name {
    fn other(self) -> Name {
        match self {
            Name::A => Name::B,
            Name::B => Name::A,
        }
    }

    /// Undoes and ends this savepoint; an error when there is none.
    fn undo(self) -> &'static str {
        match self {
            Name::A => "ROLLBACK TO a; RELEASE a",
            Name::B => "ROLLBACK TO b; RELEASE b",
        }
    }

    /// Ends this savepoint, keeping its writes; an error when there is none.
    fn release(self) -> &'static str {
        match self {
            Name::A => "RELEASE a",
            Name::B => "RELEASE b",
        }
    }
}

/// How the last unit's savepoint, still open, is to be ended by the next holder of the writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Savepoint {
    /// The unit committed: its writes stay in the group.
    Release(Name),
    /// The unit is running, or was dropped without committing: its writes are undone.
    Undo(Name),
}

impl Savepoint {
    fn name(self) -> Name {
        match self {
            Savepoint::Release(name) | Savepoint::Undo(name) => name,
        }
    }

    /// The statements that end it and open the next unit's (named [`Name::other`]).
    fn end_then_savepoint(self) -> &'static str {
        match self {
            Savepoint::Release(Name::A) => "RELEASE a; SAVEPOINT b",
            Savepoint::Release(Name::B) => "RELEASE b; SAVEPOINT a",
            Savepoint::Undo(Name::A) => "ROLLBACK TO a; RELEASE a; SAVEPOINT b",
            Savepoint::Undo(Name::B) => "ROLLBACK TO b; RELEASE b; SAVEPOINT a",
        }
    }

    /// The statements that end it and commit the group.
    fn end_then_commit(self) -> &'static str {
        match self {
            Savepoint::Release(Name::A) => "RELEASE a; COMMIT",
            Savepoint::Release(Name::B) => "RELEASE b; COMMIT",
            Savepoint::Undo(Name::A) => "ROLLBACK TO a; RELEASE a; COMMIT",
            Savepoint::Undo(Name::B) => "ROLLBACK TO b; RELEASE b; COMMIT",
        }
    }

    /// Ends it as it is to be ended.
    fn end(self) -> &'static str {
        match self {
            Savepoint::Release(name) => name.release(),
            Savepoint::Undo(name) => name.undo(),
        }
    }
}

/// A statement of transaction control that was sent and whose result was not seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Control {
    /// `BEGIN`, `COMMIT` or `ROLLBACK`, with no group left in the state: whatever is still open
    /// is rolled back.
    Transaction,
    /// The opening of a unit's savepoint inside the open group, after ending `last` (if the
    /// group had one), for a unit that is gone.
    Open { last: Option<Savepoint> },
}

/// The name of the savepoint opened after `last` (the first of a group has none before it).
fn next_name(last: Option<Savepoint>) -> Name {
    last.map_or(Name::A, |last| last.name().other())
}

struct State {
    conn: AnyConnection,
    /// The open transaction, if any.
    group: Option<Group>,
    /// The last unit's savepoint, while the group is open.
    savepoint: Option<Savepoint>,
    /// A statement of transaction control interrupted before its result came back.
    interrupted: Option<Control>,
    closed: bool,
}

struct Group {
    /// Units that committed into it.
    members: usize,
    outcome: watch::Sender<Outcome>,
}

impl State {
    /// Runs a statement of transaction control, recorded as `control` until its result is back.
    async fn control(&mut self, control: Control, sql: &'static str) -> Result<(), sqlx::Error> {
        self.interrupted = Some(control);
        let result = self.conn.execute(sql).await.map(drop);
        self.interrupted = None;
        result
    }

    /// Finishes an interrupted statement of transaction control. Each step is one that may have
    /// run already, so its error is expected and ignored; if this is interrupted in turn, the
    /// next holder starts it over.
    async fn finish_interrupted(&mut self) {
        let Some(control) = self.interrupted else {
            return;
        };
        match control {
            Control::Transaction => {
                let _ = self.conn.execute("ROLLBACK").await;
            }
            Control::Open { last } => {
                let _ = self.conn.execute(next_name(last).undo()).await;
                if let Some(last) = last {
                    let _ = self.conn.execute(last.end()).await;
                }
                self.savepoint = None;
            }
        }
        self.interrupted = None;
    }

    /// Commits the open group (rolls it back when no unit committed into it, or on `failure`)
    /// and tells its units.
    async fn end_group(&mut self, failure: Result<(), Arc<str>>) {
        self.finish_interrupted().await;
        let Some(group) = self.group.take() else {
            return;
        };
        // Dropped from here on, the group's units learn that the writer stopped, and the next
        // holder rolls back what is left open.
        let savepoint = self.savepoint.take();
        let outcome = match failure {
            Ok(()) if group.members > 0 => {
                let commit = savepoint.map_or("COMMIT", Savepoint::end_then_commit);
                match self.control(Control::Transaction, commit).await {
                    Ok(()) => Ok(()),
                    Err(e) => Err(e.to_string().into()),
                }
            }
            other => other,
        };
        if outcome.is_err() || group.members == 0 {
            // After a failed COMMIT the transaction may still be open; without members there is
            // nothing to store. An error here means no transaction was left open.
            let _ = self.control(Control::Transaction, "ROLLBACK").await;
        }
        if outcome.is_ok() && group.members > 0 {
            metrics::histogram!("switchyard_db_group_commit_units").record(group.members as f64);
        }
        group.outcome.send_replace(Some(outcome));
    }

    /// Opens a unit's savepoint, ending the last unit's in the same round trip.
    async fn open_unit(&mut self) -> StoreResult<()> {
        self.finish_interrupted().await;
        if let Some(last) = self.savepoint {
            let open = Control::Open { last: Some(last) };
            match self.control(open, last.end_then_savepoint()).await {
                Ok(()) => {
                    self.savepoint = Some(Savepoint::Undo(next_name(Some(last))));
                    return Ok(());
                }
                // Which of the statements failed is not known: the group cannot be trusted, and
                // this unit starts a new one.
                Err(e) => self.end_group(Err(e.to_string().into())).await,
            }
        }
        if self.group.is_none() {
            if let Err(e) = self
                .control(Control::Transaction, "BEGIN IMMEDIATE; SAVEPOINT a")
                .await
            {
                // The BEGIN may have succeeded; an error here means no transaction was open.
                let _ = self.control(Control::Transaction, "ROLLBACK").await;
                return Err(e.into());
            }
            self.group = Some(Group {
                members: 0,
                outcome: watch::Sender::new(None),
            });
        } else {
            // The last unit's savepoint was ended by finishing an interrupted opening; the
            // group's committed units stay.
            self.control(Control::Open { last: None }, "SAVEPOINT a")
                .await?;
        }
        self.savepoint = Some(Savepoint::Undo(next_name(None)));
        Ok(())
    }
}

impl Writer {
    pub fn start(conn: AnyConnection) -> Writer {
        let writer = Writer {
            state: Arc::new(Mutex::new(State {
                conn,
                group: None,
                savepoint: None,
                interrupted: None,
                closed: false,
            })),
            flush: Arc::new(Notify::new()),
        };
        tokio::spawn(flusher(Arc::downgrade(&writer.state), writer.flush.clone()));
        writer
    }

    pub async fn begin(&self) -> StoreResult<Unit> {
        let mut state = self.state.clone().lock_owned().await;
        if state.closed {
            return Err(StoreError::NotStored("the database is closed".into()));
        }
        state.open_unit().await?;
        Ok(Unit {
            state,
            flush: self.flush.clone(),
        })
    }

    /// Commits what is waiting and refuses new units.
    pub async fn close(&self) {
        let mut state = self.state.lock().await;
        state.end_group(Ok(())).await;
        state.closed = true;
        self.flush.notify_one();
    }
}

/// Commits groups until the writer is gone or closed.
async fn flusher(state: Weak<Mutex<State>>, flush: Arc<Notify>) {
    loop {
        flush.notified().await;
        let Some(state) = state.upgrade() else {
            return;
        };
        let mut state = state.lock().await;
        if state.closed {
            return;
        }
        state.end_group(Ok(())).await;
    }
}

/// A write unit holding the writer: a savepoint in the group's transaction. Dropped without
/// [`Unit::commit`], its writes are undone by the next holder of the writer.
pub struct Unit {
    state: OwnedMutexGuard<State>,
    flush: Arc<Notify>,
}

impl Unit {
    pub fn connection(&self) -> &AnyConnection {
        &self.state.conn
    }

    pub fn connection_mut(&mut self) -> &mut AnyConnection {
        &mut self.state.conn
    }

    /// Joins the group and waits for its commit.
    pub async fn commit(mut self) -> StoreResult<()> {
        // A held unit always has its savepoint and its group; it runs inside both.
        let (Some(savepoint), Some(group)) = (self.state.savepoint, self.state.group.as_mut())
        else {
            return Err(StoreError::NotStored(
                "the group transaction ended under a unit".into(),
            ));
        };
        group.members += 1;
        let mut outcome = group.outcome.subscribe();
        self.state.savepoint = Some(Savepoint::Release(savepoint.name()));
        drop(self);
        let ended = outcome
            .wait_for(Option::is_some)
            .await
            .map_err(|_| StoreError::NotStored("the writer stopped".into()))?
            .clone();
        ended
            .unwrap_or_else(|| Err("the group did not end".into()))
            .map_err(|e| StoreError::NotStored(e.to_string()))
    }
}

impl Drop for Unit {
    fn drop(&mut self) {
        // The flusher runs once this unit lets the writer go, after the units already queued.
        self.flush.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;
    use sqlx::{Connection, Row};

    use super::super::{Db, WriteTx};
    use super::*;

    async fn db_with_table() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::connect(&format!("sqlite:{}", dir.path().join("t.db").display()), 2)
            .await
            .unwrap();
        let mut tx = db.begin_write().await.unwrap();
        sqlx::query("CREATE TABLE t (x INTEGER PRIMARY KEY)")
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        (dir, db)
    }

    /// A unit that has written `x` and not committed.
    async fn written(db: &Db, x: i64) -> StoreResult<WriteTx> {
        let mut tx = db.begin_write().await?;
        sqlx::query("INSERT INTO t (x) VALUES ($1)")
            .bind(x)
            .execute(&mut *tx)
            .await?;
        Ok(tx)
    }

    async fn insert(db: &Db, x: i64) -> StoreResult<()> {
        written(db, x).await?.commit().await
    }

    /// What another connection sees: the rows of committed groups only.
    async fn stored(db: &Db) -> Vec<i64> {
        sqlx::query("SELECT x FROM t ORDER BY x")
            .fetch_all(&db.pool)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    #[tokio::test]
    async fn concurrent_units_share_commits_and_each_is_stored_when_its_commit_returns() {
        let (_dir, db) = db_with_table().await;
        let units = (0..64).map(|x| {
            let db = db.clone();
            tokio::spawn(async move {
                insert(&db, x).await.unwrap();
                // Acknowledged, so readers on other connections see it.
                let seen = sqlx::query("SELECT 1 FROM t WHERE x = $1")
                    .bind(x)
                    .fetch_optional(&db.pool)
                    .await
                    .unwrap();
                assert!(seen.is_some(), "unit {x} committed but not visible");
            })
        });
        for unit in futures_util::future::join_all(units).await {
            unit.unwrap();
        }
        assert_eq!(stored(&db).await, (0..64).collect::<Vec<_>>());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_dropped_unit_is_undone_without_its_group() {
        let (_dir, db) = db_with_table().await;
        let first = written(&db, 1).await.unwrap();
        // The second unit queues for the writer before the first commits, so both are in one
        // group; it writes, then is dropped.
        let dropped = tokio::spawn({
            let db = db.clone();
            async move {
                let _second = written(&db, 2).await.unwrap();
            }
        });
        tokio::task::yield_now().await;
        first.commit().await.unwrap();
        dropped.await.unwrap();
        insert(&db, 3).await.unwrap();
        assert_eq!(stored(&db).await, [1, 3]);
    }

    #[tokio::test]
    async fn a_dropped_unit_alone_in_its_group_leaves_nothing_behind() {
        let (_dir, db) = db_with_table().await;
        let lone = written(&db, 5).await.unwrap();
        drop(lone);
        insert(&db, 6).await.unwrap();
        let again = written(&db, 5)
            .await
            .expect("the dropped unit's row is gone");
        drop(again);
        insert(&db, 7).await.unwrap();
        assert_eq!(stored(&db).await, [6, 7]);
    }

    /// Polls the opening of a unit once and drops it, as when a client goes away in the middle
    /// of a request: its statement of transaction control is left half run with sqlx.
    fn interrupt_opening(db: &Db) {
        for _ in 0..100 {
            match db.begin_write().now_or_never() {
                None => {
                    let writer = db.writer.as_ref().expect("SQLite has a writer");
                    let state = writer.state.try_lock().expect("the unit let the writer go");
                    assert!(state.interrupted.is_some());
                    return;
                }
                // SQLite answered within the one poll: the unit is dropped, and tried again.
                Some(unit) => drop(unit.unwrap()),
            }
        }
        panic!("the opening of a unit never waited for SQLite");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_unit_dropped_while_it_begins_the_group_leaves_the_writer_usable() {
        let (_dir, db) = db_with_table().await;
        interrupt_opening(&db);
        insert(&db, 1).await.unwrap();
        insert(&db, 2).await.unwrap();
        assert_eq!(stored(&db).await, [1, 2]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_unit_dropped_while_it_ends_the_last_savepoint_keeps_the_last_units_writes() {
        let (_dir, db) = db_with_table().await;
        let first = written(&db, 1).await.unwrap();
        // Joined its group, which the flusher has not committed yet (it has not run).
        let mut committed = Box::pin(first.commit());
        assert!(committed.as_mut().now_or_never().is_none());
        interrupt_opening(&db);
        committed.await.unwrap();
        insert(&db, 2).await.unwrap();
        assert_eq!(stored(&db).await, [1, 2]);
    }

    /// Driven on a writer's state of its own (no flusher), to stand where only an interrupted
    /// opening leaves it: a group with a committed unit, its savepoint already ended.
    #[tokio::test(flavor = "current_thread")]
    async fn a_unit_dropped_while_it_opens_a_savepoint_in_the_group_keeps_the_groups_writes() {
        let (dir, db) = db_with_table().await;
        let url = format!("sqlite:{}", dir.path().join("t.db").display());
        let mut state = State {
            conn: sqlx::AnyConnection::connect(&url).await.unwrap(),
            group: None,
            savepoint: None,
            interrupted: None,
            closed: false,
        };
        state.open_unit().await.unwrap();
        state
            .conn
            .execute("INSERT INTO t (x) VALUES (1)")
            .await
            .unwrap();
        state.group.as_mut().unwrap().members += 1;
        let mut outcome = state.group.as_ref().unwrap().outcome.subscribe();
        let last = state.savepoint.take().unwrap();
        state.conn.execute(Name::A.release()).await.unwrap();
        assert_eq!(last, Savepoint::Undo(Name::A));

        let mut tries = 0;
        while Box::pin(state.open_unit()).now_or_never().is_some() {
            // SQLite answered within the one poll: the savepoint is undone, and tried again.
            state.conn.execute(Name::A.undo()).await.unwrap();
            state.savepoint = None;
            tries += 1;
            assert!(tries < 100, "the opening never waited for SQLite");
        }
        assert_eq!(state.interrupted, Some(Control::Open { last: None }));
        state.end_group(Ok(())).await;
        assert_eq!(
            outcome.wait_for(Option::is_some).await.unwrap().clone(),
            Some(Ok(()))
        );
        assert_eq!(stored(&db).await, [1]);
    }

    #[tokio::test]
    async fn a_failed_statement_leaves_the_unit_and_its_group_usable() {
        let (_dir, db) = db_with_table().await;
        insert(&db, 1).await.unwrap();
        let mut tx = db.begin_write().await.unwrap();
        let duplicate = sqlx::query("INSERT INTO t (x) VALUES (1)")
            .execute(&mut *tx)
            .await;
        assert!(duplicate.is_err());
        sqlx::query("INSERT INTO t (x) VALUES (2)")
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(
            insert(&db, 2).await.map_err(|e| e.to_string()).unwrap_err(),
            "database error: error returned from database: (code: 1555) UNIQUE constraint failed: t.x"
        );
        assert_eq!(stored(&db).await, [1, 2]);
    }

    #[tokio::test]
    async fn close_stores_what_was_committed_and_refuses_new_units() {
        let (dir, db) = db_with_table().await;
        insert(&db, 7).await.unwrap();
        db.close().await;
        assert!(matches!(
            db.begin_write().await,
            Err(StoreError::NotStored(_))
        ));
        let reopened = Db::connect(&format!("sqlite:{}", dir.path().join("t.db").display()), 1)
            .await
            .unwrap();
        assert_eq!(stored(&reopened).await, [7]);
    }
}
