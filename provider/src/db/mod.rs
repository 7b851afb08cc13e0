//! Database access: one pool over SQLite (default) or PostgreSQL, and every SQL statement of the
//! daemon, one module per area. The SQL is written once for both (`$N` parameters, TEXT and
//! BIGINT columns). Each area adds its methods to [`Db`] and, for statements that run inside a
//! caller's transaction, free functions taking the connection of a [`WriteTx`].

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

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{Any, AnyConnection, AnyPool, ConnectOptions, Connection, Executor, Transaction};

pub use error::{StoreError, StoreResult};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Every SQLite connection's settings: the WAL, a sync of it at each commit, foreign keys, and
/// a wait for the lock held by another process.
const SQLITE_PRAGMAS: &str = "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; \
                              PRAGMA foreign_keys=ON; PRAGMA busy_timeout=10000;";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
    /// SQLite's single writer, with group commit; None on PostgreSQL, where each write unit is
    /// a transaction of its own on a pooled connection.
    writer: Option<group::Writer>,
}

/// A write unit: on PostgreSQL a transaction, on SQLite a savepoint in the writer's group
/// transaction. Dereferences to the connection its statements run on; dropped without
/// [`WriteTx::commit`], its writes are undone.
pub struct WriteTx {
    inner: WriteInner,
}

enum WriteInner {
    Postgres(Transaction<'static, Any>),
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

impl std::ops::Deref for WriteTx {
    type Target = AnyConnection;

    fn deref(&self) -> &AnyConnection {
        match &self.inner {
            WriteInner::Postgres(tx) => tx,
            WriteInner::Sqlite(unit) => unit.connection(),
        }
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        match &mut self.inner {
            WriteInner::Postgres(tx) => tx,
            WriteInner::Sqlite(unit) => unit.connection_mut(),
        }
    }
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

impl Db {
    /// Connects and applies pending migrations. SQLite runs in WAL mode with `synchronous=FULL`
    /// so that a write acknowledged to a client survives `kill -9` and power loss; its writes
    /// go through one connection of their own, in group commits (see [`group`]).
    pub async fn connect(url: &str, max_connections: u32) -> StoreResult<Db> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            Backend::Postgres
        };
        let url = match backend {
            Backend::Sqlite if !url.contains('?') => format!("{url}?mode=rwc"),
            _ => url.to_string(),
        };
        let options = AnyConnectOptions::from_str(&url)?;
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        conn.execute(SQLITE_PRAGMAS).await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options.clone())
            .await?;
        MIGRATOR.run(&pool).await?;
        let writer = match backend {
            Backend::Sqlite => {
                let mut conn = options.connect().await?;
                conn.execute(SQLITE_PRAGMAS).await?;
                Some(group::Writer::start(conn))
            }
            Backend::Postgres => None,
        };
        Ok(Db {
            pool,
            backend,
            writer,
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
        self.pool.close().await
    }

    /// A unit that will write. On SQLite it queues, in order, for the process's one writer
    /// connection instead of polling the database lock through SQLite's busy handler, whose
    /// growing sleeps put tens of milliseconds on the tail.
    pub async fn begin_write(&self) -> StoreResult<WriteTx> {
        let inner = match &self.writer {
            Some(writer) => WriteInner::Sqlite(writer.begin().await?),
            None => WriteInner::Postgres(self.pool.begin().await?),
        };
        Ok(WriteTx { inner })
    }

    /// One statement that writes, as a unit of its own (on PostgreSQL, in autocommit).
    async fn write_one<'q>(
        &self,
        statement: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments>,
    ) -> StoreResult<u64> {
        if self.writer.is_none() {
            return Ok(statement.execute(&self.pool).await?.rows_affected());
        }
        let mut tx = self.begin_write().await?;
        let affected = statement.execute(&mut *tx).await?.rows_affected();
        tx.commit().await?;
        Ok(affected)
    }

    pub async fn ping(&self) -> StoreResult<()> {
        let mut conn = self.pool.acquire().await?;
        conn.ping().await?;
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
async fn user_exists(conn: &mut sqlx::AnyConnection, user_id: &str) -> StoreResult<bool> {
    Ok(sqlx::query("SELECT 1 FROM users WHERE id = $1")
        .bind(user_id)
        .fetch_optional(&mut *conn)
        .await?
        .is_some())
}
