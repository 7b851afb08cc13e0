//! The store's error type, in a module of its own so that the group-commit writer can use it
//! without importing its parent.

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("the database cannot be used: {0}")]
    Unusable(String),
    #[error("the statement returned no row")]
    NoRow,
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The group commit a unit was part of failed: none of the group's writes were stored.
    #[error("the write was not stored: {0}")]
    NotStored(String),
}

pub type StoreResult<T> = Result<T, StoreError>;
