//! Database access: one pool over SQLite (default) or PostgreSQL, and every SQL statement of the
//! daemon, one module per area. The SQL is written once for both (`$N` parameters, TEXT and
//! BIGINT columns). Each area adds its methods to [`Db`] and, for statements that run inside a
//! caller's transaction, free functions taking the connection of a [`WriteTx`].

pub mod calls;
pub mod endpoints;
pub mod federation;
pub mod operators;
pub mod pushes;
pub mod records;
pub mod registry;
pub mod seal_keys;
pub mod sip;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{Any, AnyPool, Connection, Executor, Transaction};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
    /// SQLite has one writer at a time. Writers of this process queue here, in order, instead of
    /// polling the database lock through SQLite's busy handler, whose growing sleeps put tens of
    /// milliseconds on the tail under concurrency. (Other processes still meet the busy timeout.)
    writer: Arc<tokio::sync::Mutex<()>>,
}

/// A transaction that will write; dereferences to the sqlx transaction.
pub struct WriteTx {
    tx: Transaction<'static, Any>,
    _writer: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl WriteTx {
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }
}

impl std::ops::Deref for WriteTx {
    type Target = Transaction<'static, Any>;

    fn deref(&self) -> &Self::Target {
        &self.tx
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.tx
    }
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

impl Db {
    /// Connects and applies pending migrations. SQLite runs in WAL mode with `synchronous=FULL`
    /// so that a write acknowledged to a client survives `kill -9` and power loss.
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
                        conn.execute(
                            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; \
                             PRAGMA foreign_keys=ON; PRAGMA busy_timeout=10000;",
                        )
                        .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Db {
            pool,
            backend,
            writer: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub async fn close(&self) {
        self.pool.close().await
    }

    /// A transaction that will write. SQLite takes the write lock up front (`BEGIN IMMEDIATE`)
    /// so two writers never fail a lock upgrade, after this process's writer queue.
    pub async fn begin_write(&self) -> StoreResult<WriteTx> {
        Ok(match self.backend {
            Backend::Sqlite => {
                let writer = self.writer.clone().lock_owned().await;
                WriteTx {
                    tx: self.pool.begin_with("BEGIN IMMEDIATE").await?,
                    _writer: Some(writer),
                }
            }
            Backend::Postgres => WriteTx {
                tx: self.pool.begin().await?,
                _writer: None,
            },
        })
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
