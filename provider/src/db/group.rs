//! SQLite's writer: one connection, write units as savepoints of a shared transaction, and one
//! commit (one fsync of the WAL) for every unit that queued while the previous group committed.
//!
//! A unit takes the writer (units queue for it in order), opens the group's transaction if none
//! is open (`BEGIN IMMEDIATE`), and runs inside `SAVEPOINT unit`. Its statements run in place,
//! on the thread of the task holding the writer ([`super::sql`]), so none of them can be left
//! half run by a dropped future: each is done when its call returns. Committing the unit
//! releases its savepoint, joins the group and hands the writer on; it returns once the group's
//! `COMMIT` is done. A unit dropped without committing is rolled back to its savepoint there
//! and then, leaving the group's other units as they were.
//!
//! The flusher commits a group as soon as it gets the writer, which is after the units that
//! queued before it asked. So with no load a unit's commit is one `COMMIT`, and under load every
//! unit that arrived during a group's fsync goes into the next group. The `COMMIT` runs on a
//! blocking thread: it waits for the disk, and the runtime's workers go on meanwhile.
//!
//! Durability is unchanged by the grouping: a unit's commit returns only after its group is on
//! disk, and if the group fails, every unit in it gets the error and none of them is stored.
//! Units of one group see each other's writes before they are committed, which is harmless:
//! none of them is acknowledged before all are stored, and a failure takes all of them back.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::{watch, Mutex as AsyncMutex, Notify, OwnedMutexGuard};

use super::error::{StoreError, StoreResult};
use super::sql::lock;

/// The result of a group's commit, shared by its units: None while it is open.
type Outcome = Option<Result<(), Arc<str>>>;

#[derive(Clone)]
pub struct Writer {
    state: Arc<AsyncMutex<State>>,
    flush: Arc<Notify>,
}

struct State {
    /// Shared with the blocking thread that runs a group's `COMMIT`; otherwise only the holder
    /// of the state uses it.
    conn: Arc<Mutex<Connection>>,
    /// The open transaction, if any.
    group: Option<Group>,
    closed: bool,
}

struct Group {
    /// Units that committed into it.
    members: usize,
    outcome: watch::Sender<Outcome>,
}

impl State {
    /// Opens a unit's savepoint, in the open group or a new one.
    async fn open_unit(&mut self) -> StoreResult<()> {
        let conn = self.conn.clone();
        if self.group.is_some() && lock(&conn).is_autocommit() {
            // SQLite ended the group's transaction itself (after an I/O error or a full disk),
            // so the writes of its units are gone.
            self.fail_group("the group's transaction was rolled back by SQLite".into());
        }
        if self.group.is_none() {
            begin_group(&conn).await?;
            self.group = Some(Group {
                members: 0,
                outcome: watch::Sender::new(None),
            });
        }
        let opened = lock(&conn).execute_batch("SAVEPOINT unit");
        if let Err(e) = opened {
            self.fail_group(e.to_string().into());
            return Err(e.into());
        }
        Ok(())
    }

    /// Rolls the open group back and tells its units that nothing of it was stored.
    fn fail_group(&mut self, reason: Arc<str>) {
        let Some(group) = self.group.take() else {
            return;
        };
        roll_back(&lock(&self.conn));
        group.outcome.send_replace(Some(Err(reason)));
    }

    /// Commits the open group (rolls it back when no unit committed into it) and tells its
    /// units. The commit and the telling happen on a blocking thread, so they complete even if
    /// this future is dropped meanwhile (at shutdown).
    async fn end_group(&mut self) {
        let Some(group) = self.group.take() else {
            return;
        };
        if group.members == 0 {
            roll_back(&lock(&self.conn));
            group.outcome.send_replace(Some(Ok(())));
            return;
        }
        let conn = self.conn.clone();
        let ended = tokio::task::spawn_blocking(move || {
            let conn = lock(&conn);
            let outcome: Result<(), Arc<str>> = match conn.execute_batch("COMMIT") {
                Ok(()) => {
                    metrics::histogram!("switchyard_db_group_commit_units")
                        .record(group.members as f64);
                    Ok(())
                }
                Err(e) => {
                    roll_back(&conn);
                    Err(e.to_string().into())
                }
            };
            group.outcome.send_replace(Some(outcome));
        })
        .await;
        if let Err(e) = ended {
            // The thread panicked: the group's units learn that the writer stopped (their
            // sender is gone), and the next unit rolls back whatever is left open.
            tracing::error!(error = %e, "the group commit's thread failed");
        }
    }
}

/// Rolls back the open transaction, if any. An error leaves it open; the next group's
/// `begin_group` rolls it back first.
fn roll_back(conn: &Connection) {
    if !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
}

/// `BEGIN IMMEDIATE` on the writer, which has no busy timeout: in place when the database is
/// free, which it is unless another process writes to the file. Then the wait for its lock
/// (up to [`BUSY_WAIT`]) happens on a blocking thread rather than on a runtime worker.
async fn begin_group(conn: &Arc<Mutex<Connection>>) -> StoreResult<()> {
    {
        let conn = lock(conn);
        if !conn.is_autocommit() {
            // Left open by a group whose rollback failed.
            conn.execute_batch("ROLLBACK")?;
        }
        match conn.execute_batch("BEGIN IMMEDIATE") {
            Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) => {}
            other => return Ok(other?),
        }
    }
    let conn = conn.clone();
    tokio::task::spawn_blocking(move || {
        let conn = lock(&conn);
        conn.busy_timeout(BUSY_WAIT)?;
        let begun = conn.execute_batch("BEGIN IMMEDIATE");
        conn.busy_timeout(Duration::ZERO)?;
        begun
    })
    .await
    .map_err(|e| StoreError::NotStored(format!("waiting for the database lock failed: {e}")))??;
    Ok(())
}

/// How long a new group waits for another process's write lock on the file.
const BUSY_WAIT: Duration = Duration::from_secs(10);

impl Writer {
    /// Takes the writer's connection; its busy timeout becomes 0 (see [`begin_group`]).
    pub fn start(conn: Connection) -> StoreResult<Writer> {
        conn.busy_timeout(Duration::ZERO)?;
        let writer = Writer {
            state: Arc::new(AsyncMutex::new(State {
                conn: Arc::new(Mutex::new(conn)),
                group: None,
                closed: false,
            })),
            flush: Arc::new(Notify::new()),
        };
        tokio::spawn(flusher(Arc::downgrade(&writer.state), writer.flush.clone()));
        Ok(writer)
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
            open: true,
        })
    }

    /// Commits what is waiting and refuses new units.
    pub async fn close(&self) {
        let mut state = self.state.lock().await;
        state.end_group().await;
        state.closed = true;
        self.flush.notify_one();
    }
}

/// Commits groups until the writer is gone or closed.
async fn flusher(state: Weak<AsyncMutex<State>>, flush: Arc<Notify>) {
    loop {
        flush.notified().await;
        let Some(state) = state.upgrade() else {
            return;
        };
        let mut state = state.lock().await;
        if state.closed {
            return;
        }
        state.end_group().await;
    }
}

/// A write unit holding the writer: a savepoint in the group's transaction. Dropped without
/// [`Unit::commit`], its writes are undone.
pub struct Unit {
    state: OwnedMutexGuard<State>,
    flush: Arc<Notify>,
    /// Whether its savepoint is still open.
    open: bool,
}

impl Unit {
    pub fn connection(&self) -> &Mutex<Connection> {
        &self.state.conn
    }

    /// Joins the group and waits for its commit.
    pub async fn commit(mut self) -> StoreResult<()> {
        self.open = false;
        let released = lock(&self.state.conn).execute_batch("RELEASE unit");
        if let Err(e) = released {
            // The savepoint is gone, so SQLite ended the transaction: the group is lost.
            self.state.fail_group(e.to_string().into());
            return Err(StoreError::NotStored(e.to_string()));
        }
        let Some(group) = self.state.group.as_mut() else {
            return Err(StoreError::NotStored(
                "the group transaction ended under a unit".into(),
            ));
        };
        group.members += 1;
        let mut outcome = group.outcome.subscribe();
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
        if self.open {
            let undone = lock(&self.state.conn).execute_batch("ROLLBACK TO unit; RELEASE unit");
            if let Err(e) = undone {
                self.state.fail_group(e.to_string().into());
            }
        }
        // The flusher runs once this unit lets the writer go, after the units already queued.
        self.flush.notify_one();
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::sql::{is_unique_violation, query};
    use super::super::{Db, WriteInner, WriteTx};
    use super::*;

    /// A database of its own with a table `t (x INTEGER PRIMARY KEY)`.
    pub(in crate::db) async fn db_with_table() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::connect(&format!("sqlite:{}", dir.path().join("t.db").display()), 2)
            .await
            .unwrap();
        let mut tx = db.begin_write().await.unwrap();
        query("CREATE TABLE t (x INTEGER PRIMARY KEY)")
            .execute(&mut tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        (dir, db)
    }

    /// A unit that has written `x` and not committed.
    async fn written(db: &Db, x: i64) -> StoreResult<WriteTx> {
        let mut tx = db.begin_write().await?;
        query("INSERT INTO t (x) VALUES ($1)")
            .bind(x)
            .execute(&mut tx)
            .await?;
        Ok(tx)
    }

    async fn insert(db: &Db, x: i64) -> StoreResult<()> {
        written(db, x).await?.commit().await
    }

    /// What another connection sees: the rows of committed groups only.
    async fn stored(db: &Db) -> Vec<i64> {
        query("SELECT x FROM t ORDER BY x")
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
                let seen = query("SELECT 1 FROM t WHERE x = $1")
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

    #[tokio::test(flavor = "current_thread")]
    async fn a_unit_cancelled_between_its_statements_is_undone() {
        let (_dir, db) = db_with_table().await;
        let started = Arc::new(Notify::new());
        let cancelled = tokio::spawn({
            let (db, started) = (db.clone(), started.clone());
            async move {
                let _tx = written(&db, 1).await.unwrap();
                started.notify_one();
                std::future::pending::<()>().await;
            }
        });
        started.notified().await;
        cancelled.abort();
        assert!(cancelled.await.unwrap_err().is_cancelled());
        insert(&db, 2).await.unwrap();
        assert_eq!(stored(&db).await, [2]);
    }

    #[tokio::test]
    async fn a_failed_statement_leaves_the_unit_and_its_group_usable() {
        let (_dir, db) = db_with_table().await;
        insert(&db, 1).await.unwrap();
        let mut tx = db.begin_write().await.unwrap();
        let duplicate = query("INSERT INTO t (x) VALUES (1)").execute(&mut tx).await;
        assert!(is_unique_violation(&duplicate.unwrap_err()));
        query("INSERT INTO t (x) VALUES (2)")
            .execute(&mut tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(
            insert(&db, 2).await.map_err(|e| e.to_string()).unwrap_err(),
            "database error: UNIQUE constraint failed: t.x"
        );
        assert_eq!(stored(&db).await, [1, 2]);
    }

    /// SQLite ends a transaction itself on some errors; the units of that group must not be
    /// reported as stored, and the writer must go on.
    #[tokio::test(flavor = "current_thread")]
    async fn a_group_whose_transaction_vanished_fails_its_units_and_the_writer_recovers() {
        let (_dir, db) = db_with_table().await;
        let first = written(&db, 1).await.unwrap();
        let mut committed = Box::pin(first.commit());
        assert!(futures_util::FutureExt::now_or_never(committed.as_mut()).is_none());
        {
            let writer = db.writer.as_ref().expect("SQLite has a writer");
            let state = writer.state.try_lock().expect("the unit let the writer go");
            lock(&state.conn).execute_batch("ROLLBACK").unwrap();
        }
        insert(&db, 2).await.unwrap();
        assert!(matches!(committed.await, Err(StoreError::NotStored(_))));
        assert_eq!(stored(&db).await, [2]);
    }

    /// After SQLite ended the transaction under a unit, its later statements must not run on
    /// their own (each would commit by itself).
    #[tokio::test]
    async fn a_unit_whose_transaction_vanished_runs_no_more_statements() {
        let (_dir, db) = db_with_table().await;
        let mut tx = written(&db, 1).await.unwrap();
        let WriteInner::Sqlite(unit) = &tx.inner else {
            panic!("SQLite units are savepoints")
        };
        lock(unit.connection()).execute_batch("ROLLBACK").unwrap();
        let later = query("INSERT INTO t (x) VALUES (2)").execute(&mut tx).await;
        assert!(matches!(later, Err(StoreError::NotStored(_))));
        assert!(matches!(tx.commit().await, Err(StoreError::NotStored(_))));
        insert(&db, 3).await.unwrap();
        assert_eq!(stored(&db).await, [3]);
    }

    /// Another process's write lock is waited for (off the runtime's workers), not an error.
    #[tokio::test]
    async fn a_group_waits_for_another_connections_write_lock() {
        let (dir, db) = db_with_table().await;
        let other = Connection::open(dir.path().join("t.db")).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let unit = tokio::spawn({
            let db = db.clone();
            async move { insert(&db, 1).await }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !unit.is_finished(),
            "the unit began while another held the lock"
        );
        other.execute_batch("COMMIT").unwrap();
        unit.await.unwrap().unwrap();
        assert_eq!(stored(&db).await, [1]);
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
