//! The store's statements, one API over two drivers. On SQLite a statement runs in place, on the
//! thread of the task that issues it (rusqlite): a point read or an insert costs a few
//! microseconds there, where handing it to a driver thread and back cost 30-250 µs and two
//! context switches (docs/benchmarks.md, "SQLite through sqlx"). On PostgreSQL it goes through
//! sqlx, over the network as before.
//!
//! The SQL text is shared: parameters are written `$1`, `$2`, …, which SQLite is given as `?1`,
//! `?2`, … (the same numbers), so a parameter may appear more than once and in any order.

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};

use rusqlite::types::{FromSql, ToSql, ToSqlOutput, ValueRef};
use rusqlite::{Connection, OpenFlags, Statement};
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::{PgConnection, PgPool, Postgres};

use super::error::{StoreError, StoreResult};

/// A parameter's value; a NULL keeps its type, which PostgreSQL needs to plan the statement.
#[derive(Debug, Clone)]
pub enum Value<'q> {
    Int(Option<i64>),
    Int4(Option<i32>),
    Bool(Option<bool>),
    Text(Option<Cow<'q, str>>),
    Blob(Option<Cow<'q, [u8]>>),
}

/// What can be bound to a parameter.
pub trait Encode<'q> {
    fn encode(self) -> Value<'q>;
    /// The NULL of this type.
    fn null() -> Value<'q>;
}

macro_rules! encode_as {
    ($variant:ident, $($ty:ty => $conv:expr),+ $(,)?) => {
        $(impl<'q> Encode<'q> for $ty {
            fn encode(self) -> Value<'q> {
                let conv: fn($ty) -> _ = $conv;
                Value::$variant(Some(conv(self)))
            }
            fn null() -> Value<'q> {
                Value::$variant(None)
            }
        })+
    };
}

encode_as!(Int, i64 => |v| v, u32 => i64::from);
encode_as!(Int4, i32 => |v| v);
encode_as!(Bool, bool => |v| v);
encode_as!(Text,
    &'q str => Cow::Borrowed,
    &'q String => |v| Cow::Borrowed(v.as_str()),
    String => Cow::Owned,
);
encode_as!(Blob,
    &'q [u8] => Cow::Borrowed,
    &'q Vec<u8> => |v| Cow::Borrowed(v.as_slice()),
    Vec<u8> => Cow::Owned,
);

impl<'q, T: Encode<'q>> Encode<'q> for Option<T> {
    fn encode(self) -> Value<'q> {
        self.map_or_else(T::null, T::encode)
    }
    fn null() -> Value<'q> {
        T::null()
    }
}

impl<'q, T> Encode<'q> for &'q Option<T>
where
    &'q T: Encode<'q>,
{
    fn encode(self) -> Value<'q> {
        self.as_ref().map_or_else(<&T>::null, Encode::encode)
    }
    fn null() -> Value<'q> {
        <&T>::null()
    }
}

impl ToSql for Value<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Int(Some(v)) => ValueRef::Integer(*v),
            Value::Int4(Some(v)) => ValueRef::Integer(i64::from(*v)),
            Value::Bool(Some(v)) => ValueRef::Integer(i64::from(*v)),
            Value::Text(Some(v)) => ValueRef::Text(v.as_bytes()),
            Value::Blob(Some(v)) => ValueRef::Blob(v),
            Value::Int(None)
            | Value::Int4(None)
            | Value::Bool(None)
            | Value::Text(None)
            | Value::Blob(None) => ValueRef::Null,
        }))
    }
}

/// What a column can be read as, on both drivers.
pub trait Decode:
    FromSql + for<'r> sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres> + Sized
{
}

impl<T> Decode for T where T: FromSql + for<'r> sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres> {}

/// One row of a result.
pub enum Row {
    Sqlite(Vec<rusqlite::types::Value>),
    Postgres(PgRow),
}

impl Row {
    /// The column at `index`, or an error if it is missing or of another type.
    pub fn try_get<T: Decode>(&self, index: usize) -> StoreResult<T> {
        match self {
            Row::Sqlite(values) => {
                let value = values.get(index).ok_or_else(|| {
                    StoreError::Corrupt(format!("no column {index} in a row of {}", values.len()))
                })?;
                T::column_result(ValueRef::from(value))
                    .map_err(|e| StoreError::Corrupt(format!("column {index}: {e}")))
            }
            Row::Postgres(row) => Ok(sqlx::Row::try_get(row, index)?),
        }
    }

    /// The column at `index`. The statements are the daemon's own, so a column of another
    /// type is a bug in this crate or a schema changed under it; as with sqlx's `Row::get`, it
    /// panics.
    pub fn get<T: Decode>(&self, index: usize) -> T {
        match self.try_get(index) {
            Ok(value) => value,
            Err(e) => panic!("{e}"),
        }
    }
}

/// What a statement that writes reports.
#[derive(Debug, Clone, Copy)]
pub struct Done {
    rows_affected: u64,
}

impl Done {
    pub fn rows_affected(&self) -> u64 {
        self.rows_affected
    }
}

/// A statement and its parameters, run by one of [`Query::execute`], [`Query::fetch_all`],
/// [`Query::fetch_optional`] or [`Query::fetch_one`].
#[must_use = "a query does nothing until it is run"]
pub struct Query<'q> {
    sql: Cow<'q, str>,
    args: Vec<Value<'q>>,
}

pub fn query<'q>(sql: impl Into<Cow<'q, str>>) -> Query<'q> {
    Query {
        sql: sql.into(),
        args: Vec::new(),
    }
}

/// Where a statement runs.
pub enum Target<'e> {
    Sqlite(SqliteTarget<'e>),
    PostgresPool(&'e PgPool),
    PostgresConnection(&'e mut PgConnection),
}

/// Where a statement runs in place.
pub enum SqliteTarget<'e> {
    Read(&'e ReadPool),
    Write(&'e Mutex<Connection>),
}

/// A pool or a write unit.
pub trait Executor<'e> {
    fn target(self) -> Target<'e>;
}

impl<'e> Executor<'e> for Target<'e> {
    fn target(self) -> Target<'e> {
        self
    }
}

/// How many rows a statement's run collects.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Take {
    None,
    One,
    All,
}

impl<'q> Query<'q> {
    pub fn bind(mut self, value: impl Encode<'q>) -> Self {
        self.args.push(value.encode());
        self
    }

    pub async fn execute<'e>(self, executor: impl Executor<'e>) -> StoreResult<Done> {
        match executor.target() {
            Target::PostgresPool(pool) => Ok(Done {
                rows_affected: self.postgres().execute(pool).await?.rows_affected(),
            }),
            Target::PostgresConnection(conn) => Ok(Done {
                rows_affected: self.postgres().execute(conn).await?.rows_affected(),
            }),
            Target::Sqlite(sqlite) => {
                let (_, rows_affected) = self.run_sqlite(sqlite, Take::None)?;
                Ok(Done { rows_affected })
            }
        }
    }

    pub async fn fetch_all<'e>(self, executor: impl Executor<'e>) -> StoreResult<Vec<Row>> {
        let rows = match executor.target() {
            Target::PostgresPool(pool) => self.postgres().fetch_all(pool).await?,
            Target::PostgresConnection(conn) => self.postgres().fetch_all(conn).await?,
            Target::Sqlite(sqlite) => return Ok(self.run_sqlite(sqlite, Take::All)?.0),
        };
        Ok(rows.into_iter().map(Row::Postgres).collect())
    }

    pub async fn fetch_optional<'e>(self, executor: impl Executor<'e>) -> StoreResult<Option<Row>> {
        let row = match executor.target() {
            Target::PostgresPool(pool) => self.postgres().fetch_optional(pool).await?,
            Target::PostgresConnection(conn) => self.postgres().fetch_optional(conn).await?,
            Target::Sqlite(sqlite) => return Ok(self.run_sqlite(sqlite, Take::One)?.0.pop()),
        };
        Ok(row.map(Row::Postgres))
    }

    pub async fn fetch_one<'e>(self, executor: impl Executor<'e>) -> StoreResult<Row> {
        self.fetch_optional(executor)
            .await?
            .ok_or(StoreError::NoRow)
    }

    /// [`Query::fetch_all`] for a scan that may take long (every URI of the registry): on
    /// SQLite the runtime's worker first hands its other tasks to another worker.
    pub async fn fetch_all_scan<'e>(self, executor: impl Executor<'e>) -> StoreResult<Vec<Row>> {
        let multi_thread = tokio::runtime::Handle::current().runtime_flavor()
            == tokio::runtime::RuntimeFlavor::MultiThread;
        match executor.target() {
            Target::Sqlite(sqlite) if multi_thread => {
                tokio::task::block_in_place(|| Ok(self.run_sqlite(sqlite, Take::All)?.0))
            }
            target => self.fetch_all(target).await,
        }
    }

    fn postgres(&self) -> sqlx::query::Query<'_, Postgres, PgArguments> {
        let mut query = sqlx::query(sqlx::AssertSqlSafe(&*self.sql));
        for arg in &self.args {
            query = match arg {
                Value::Int(v) => query.bind(*v),
                Value::Int4(v) => query.bind(*v),
                Value::Bool(v) => query.bind(*v),
                Value::Text(v) => query.bind(v.as_deref()),
                Value::Blob(v) => query.bind(v.as_deref()),
            };
        }
        query
    }

    fn run_sqlite(&self, target: SqliteTarget<'_>, take: Take) -> StoreResult<(Vec<Row>, u64)> {
        match target {
            SqliteTarget::Read(pool) => {
                let conn = pool.get()?;
                Ok(self.run_on(&conn, take)?)
            }
            SqliteTarget::Write(conn) => {
                let conn = lock(conn);
                // SQLite ends a transaction itself after some errors (a full disk, an I/O
                // error); a statement run then would commit on its own, outside its unit.
                if conn.is_autocommit() {
                    return Err(StoreError::NotStored(
                        "the unit's transaction was ended by SQLite".into(),
                    ));
                }
                Ok(self.run_on(&conn, take)?)
            }
        }
    }

    fn run_on(&self, conn: &Connection, take: Take) -> rusqlite::Result<(Vec<Row>, u64)> {
        let sql = sqlite_sql(&self.sql);
        // Statements with long generated parameter lists (the import's, `IN (…)` lists) differ
        // from call to call: cached, they would push the daemon's fixed statements out.
        if self.args.len() > MAX_CACHED_PARAMETERS {
            self.run_statement(conn, &mut conn.prepare(&sql)?, take)
        } else {
            self.run_statement(conn, &mut *conn.prepare_cached(&sql)?, take)
        }
    }

    fn run_statement(
        &self,
        conn: &Connection,
        statement: &mut Statement<'_>,
        take: Take,
    ) -> rusqlite::Result<(Vec<Row>, u64)> {
        for (index, arg) in self.args.iter().enumerate() {
            statement.raw_bind_parameter(index + 1, arg)?;
        }
        let columns = statement.column_count();
        let mut rows = Vec::new();
        let mut results = statement.raw_query();
        // A statement is stepped to its end even when its rows are not wanted, so that an
        // UPDATE … RETURNING or a multi-row write does all its work.
        while let Some(row) = results.next()? {
            if take == Take::All || (take == Take::One && rows.is_empty()) {
                let values = (0..columns)
                    .map(|i| row.get::<_, rusqlite::types::Value>(i))
                    .collect::<rusqlite::Result<_>>()?;
                rows.push(Row::Sqlite(values));
            }
        }
        drop(results);
        Ok((rows, conn.changes()))
    }
}

/// `$1,$2,…,$count`, for an `IN (…)` list of `count` parameters.
pub fn parameter_list(count: usize) -> String {
    (1..=count)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Parameters above which a statement is prepared afresh rather than cached.
const MAX_CACHED_PARAMETERS: usize = 32;

/// The SQL with its `$N` parameters written as SQLite's `?N`. The daemon's SQL has no `$` in a
/// literal or a name, which the debug build checks.
fn sqlite_sql(sql: &str) -> Cow<'_, str> {
    if !sql.contains('$') {
        return Cow::Borrowed(sql);
    }
    debug_assert!(
        !sql.split('\'')
            .skip(1)
            .step_by(2)
            .any(|quoted| quoted.contains('$')),
        "a `$` inside a quoted literal or name: {sql}"
    );
    let mut sqlite = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            sqlite.push('?');
        } else {
            sqlite.push(c);
        }
    }
    Cow::Owned(sqlite)
}

/// Room for the daemon's statements in a connection's statement cache.
pub(super) fn cache_statements(conn: &Connection) {
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
}

/// The daemon has about a hundred statements; a connection keeps the ones it runs prepared.
const STATEMENT_CACHE: usize = 128;

/// Read-only SQLite connections used in place. A connection is taken only for one statement,
/// never across an await, so no more are open at once than threads run statements; the pool
/// keeps as many between uses as the runtime has workers, twice over (blocking threads read
/// too), and at least 16.
pub struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    max_idle: usize,
}

impl ReadPool {
    pub(super) fn new(path: PathBuf) -> ReadPool {
        let workers = std::thread::available_parallelism().map_or(1, usize::from);
        ReadPool {
            path,
            idle: Mutex::new(Vec::new()),
            max_idle: (2 * workers).max(16),
        }
    }

    fn get(&self) -> rusqlite::Result<Reader<'_>> {
        let idle = lock(&self.idle).pop();
        let conn = match idle {
            Some(conn) => conn,
            None => {
                let conn = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                // A reader waits only while SQLite recovers a WAL left by a crash.
                conn.busy_timeout(std::time::Duration::from_secs(10))?;
                cache_statements(&conn);
                conn
            }
        };
        Ok(Reader {
            pool: self,
            conn: Some(conn),
        })
    }

    /// Closes the idle connections; later reads open new ones.
    pub(super) fn close(&self) {
        lock(&self.idle).clear();
    }
}

struct Reader<'p> {
    pool: &'p ReadPool,
    conn: Option<Connection>,
}

impl std::ops::Deref for Reader<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.conn
            .as_ref()
            .expect("a reader holds its connection until dropped")
    }
}

impl Drop for Reader<'_> {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        let mut idle = lock(&self.pool.idle);
        if idle.len() < self.pool.max_idle {
            idle.push(conn);
        }
    }
}

/// A connection's lock, or the idle readers'. A statement that panicked under it left no
/// half-run state behind (SQLite's calls are whole), so a poisoned lock is taken as it is.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Whether a statement failed on a UNIQUE or PRIMARY KEY constraint.
pub fn is_unique_violation(e: &StoreError) -> bool {
    match e {
        StoreError::Postgres(sqlx::Error::Database(db)) => db.is_unique_violation(),
        StoreError::Sqlite(rusqlite::Error::SqliteFailure(failure, _)) => matches!(
            failure.extended_code,
            rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE | rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
        ),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::super::group::tests::db_with_table;
    use super::*;

    #[test]
    fn numbered_parameters_keep_their_numbers_for_sqlite() {
        assert_eq!(
            sqlite_sql("UPDATE t SET a = $2, b = $10 WHERE id = $1 AND $2 IS NULL"),
            "UPDATE t SET a = ?2, b = ?10 WHERE id = ?1 AND ?2 IS NULL"
        );
        assert!(matches!(sqlite_sql("SELECT 1"), Cow::Borrowed(_)));
    }

    async fn scan_every_row() {
        let (_dir, db) = db_with_table().await;
        let mut tx = db.begin_write().await.unwrap();
        for x in 0..1000_i64 {
            query("INSERT INTO t (x) VALUES ($1)")
                .bind(x)
                .execute(&mut tx)
                .await
                .unwrap();
        }
        let in_unit = query("SELECT x FROM t")
            .fetch_all_scan(&mut tx)
            .await
            .unwrap();
        assert_eq!(in_unit.len(), 1000);
        tx.commit().await.unwrap();
        let rows = query("SELECT x FROM t ORDER BY x")
            .fetch_all_scan(&db.pool)
            .await
            .unwrap();
        let xs: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
        assert_eq!(xs, (0..1000).collect::<Vec<_>>());
    }

    /// The daemon's runtime: the scan hands the worker's other tasks on first.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_scan_reads_every_row_on_a_multi_threaded_runtime() {
        scan_every_row().await;
    }

    /// A current-thread runtime (as in tests and tools) cannot hand tasks on: the scan runs
    /// in place.
    #[tokio::test]
    async fn a_scan_reads_every_row_on_a_current_thread_runtime() {
        scan_every_row().await;
    }

    #[tokio::test]
    async fn a_missing_row_and_a_wrong_column_are_errors_not_panics() {
        let (_dir, db) = db_with_table().await;
        let none = query("SELECT 1 WHERE 1 = $1")
            .bind(2_i64)
            .fetch_one(&db.pool)
            .await;
        assert!(matches!(none, Err(StoreError::NoRow)));
        let row = query("SELECT 'text'").fetch_one(&db.pool).await.unwrap();
        assert!(matches!(row.try_get::<i64>(0), Err(StoreError::Corrupt(_))));
        assert!(matches!(
            row.try_get::<String>(1),
            Err(StoreError::Corrupt(_))
        ));
        assert_eq!(row.get::<String>(0), "text");
    }
}
