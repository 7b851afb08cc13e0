//! Database access over SQLite (default) or PostgreSQL, and every SQL statement of the daemon,
//! one module per area. The SQL is written once for both (`$N` parameters, TEXT and BIGINT
//! columns) and run through [`sql`]: in place by rusqlite on SQLite, by sqlx on PostgreSQL. Each
//! area adds its methods to [`Db`] and, for statements that run inside a caller's write unit,
//! free functions taking its [`WriteTx`].

pub mod calls;
pub mod endpoints;
mod error;
pub mod federation;
mod group;
pub mod operators;
pub mod pushes;
pub mod records;
pub mod registry;
pub mod seal_keys;
pub mod sip;
pub mod sql;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection, PgPool, Postgres, Transaction};

pub use error::{StoreError, StoreResult};
use sql::{is_unique_violation, Executor, ReadPool, SqliteTarget, Target};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The writer connection's settings besides the WAL: a sync of it at each commit (so that a write
/// acknowledged to a client survives `kill -9` and power loss), and foreign keys.
const SQLITE_PRAGMAS: &str = "PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
pub struct Db {
    pool: Pool,
    backend: Backend,
    /// SQLite's single writer, with group commit; None on PostgreSQL, where each write unit is
    /// a transaction of its own on a pooled connection.
    writer: Option<group::Writer>,
}

/// Where reads run: SQLite's read-only connections, used in place, or PostgreSQL's pool.
#[derive(Clone)]
enum Pool {
    Sqlite(Arc<ReadPool>),
    Postgres(PgPool),
}

impl<'e> Executor<'e> for &'e Pool {
    fn target(self) -> Target<'e> {
        match self {
            Pool::Sqlite(pool) => Target::Sqlite(SqliteTarget::Read(pool)),
            Pool::Postgres(pool) => Target::PostgresPool(pool),
        }
    }
}

/// A write unit: on PostgreSQL a transaction, on SQLite a savepoint in the writer's group
/// transaction. Statements run in it as `query(…).execute(&mut tx)`; dropped without
/// [`WriteTx::commit`], its writes are undone.
pub struct WriteTx {
    inner: WriteInner,
}

enum WriteInner {
    Postgres(Transaction<'static, Postgres>),
    Sqlite(group::Unit),
}

impl WriteTx {
    /// Returns once the unit's writes are on disk (on SQLite, once its group committed).
    pub async fn commit(self) -> StoreResult<()> {
        match self.inner {
            WriteInner::Postgres(tx) => Ok(tx.commit().await?),
            WriteInner::Sqlite(unit) => unit.commit().await,
        }
    }
}

impl<'e> Executor<'e> for &'e mut WriteTx {
    fn target(self) -> Target<'e> {
        match &mut self.inner {
            WriteInner::Postgres(tx) => Target::PostgresConnection(tx),
            WriteInner::Sqlite(unit) => Target::Sqlite(SqliteTarget::Write(unit.connection())),
        }
    }
}

impl Db {
    /// Connects and applies pending migrations. SQLite runs in WAL mode with `synchronous=FULL`;
    /// its writes go through one connection of their own, in group commits (see [`group`]),
    /// and its reads through read-only connections, both driven in place ([`sql`]).
    /// `max_connections` sizes PostgreSQL's pool.
    pub async fn connect(url: &str, max_connections: u32) -> StoreResult<Db> {
        if url.starts_with("sqlite:") {
            Self::connect_sqlite(url).await
        } else {
            let options = PgConnectOptions::from_str(url)?;
            let pool = PgPoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(options)
                .await?;
            MIGRATOR.run(&pool).await?;
            Ok(Db {
                pool: Pool::Postgres(pool),
                backend: Backend::Postgres,
                writer: None,
            })
        }
    }

    async fn connect_sqlite(url: &str) -> StoreResult<Db> {
        let options = SqliteConnectOptions::from_str(url)?.create_if_missing(true);
        let path = options.get_filename().to_path_buf();
        // sqlx keeps the migrations' history table as before; the daemon's statements go
        // through rusqlite from here on.
        let mut migrations = options.connect().await?;
        MIGRATOR.run(&mut migrations).await?;
        migrations.close().await?;
        let writer = rusqlite::Connection::open(&path)?;
        // Readers run in place and must never wait for the writer, which holds in the WAL only.
        let journal: String = writer.query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))?;
        if !journal.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Unusable(format!(
                "{} cannot use a write-ahead log (journal mode `{journal}`)",
                path.display()
            )));
        }
        writer.execute_batch(SQLITE_PRAGMAS)?;
        sql::cache_statements(&writer);
        Ok(Db {
            pool: Pool::Sqlite(Arc::new(ReadPool::new(path))),
            backend: Backend::Sqlite,
            writer: Some(group::Writer::start(writer)?),
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Stores what is waiting for a group commit, then closes the connections.
    pub async fn close(&self) {
        if let Some(writer) = &self.writer {
            writer.close().await;
        }
        match &self.pool {
            Pool::Sqlite(pool) => pool.close(),
            Pool::Postgres(pool) => pool.close().await,
        }
    }

    /// A unit that will write. On SQLite it queues, in order, for the process's one writer
    /// connection instead of polling the database lock through SQLite's busy handler, whose
    /// growing sleeps put tens of milliseconds on the tail.
    pub async fn begin_write(&self) -> StoreResult<WriteTx> {
        let inner = match (&self.writer, &self.pool) {
            (Some(writer), _) => WriteInner::Sqlite(writer.begin().await?),
            (None, Pool::Postgres(pool)) => WriteInner::Postgres(pool.begin().await?),
            (None, Pool::Sqlite(_)) => {
                return Err(StoreError::NotStored("SQLite has no writer".into()))
            }
        };
        Ok(WriteTx { inner })
    }

    /// One statement that writes, as a unit of its own (on PostgreSQL, in autocommit).
    async fn write_one(&self, statement: sql::Query<'_>) -> StoreResult<u64> {
        if self.writer.is_none() {
            return Ok(statement.execute(&self.pool).await?.rows_affected());
        }
        let mut tx = self.begin_write().await?;
        let affected = statement.execute(&mut tx).await?.rows_affected();
        tx.commit().await?;
        Ok(affected)
    }

    pub async fn ping(&self) -> StoreResult<()> {
        match &self.pool {
            Pool::Sqlite(_) => {
                sql::query("SELECT 1").fetch_one(&self.pool).await?;
            }
            Pool::Postgres(pool) => pool.acquire().await?.ping().await?,
        }
        Ok(())
    }
}

/// The pattern of `LOWER(column) LIKE $n ESCAPE '\'` for text that contains `needle`, in any
/// case; LIKE's own wildcards in `needle` are taken literally.
fn contains_pattern(needle: &str) -> String {
    let escaped = needle
        .to_lowercase()
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("%{escaped}%")
}

/// Whether the user exists, for the areas that attach rows to a user (URIs, codes, SIP
/// accounts) and answer a missing one with `NotFound` before the foreign key would.
async fn user_exists(tx: &mut WriteTx, user_id: &str) -> StoreResult<bool> {
    Ok(sql::query("SELECT 1 FROM users WHERE id = $1")
        .bind(user_id)
        .fetch_optional(tx)
        .await?
        .is_some())
}
