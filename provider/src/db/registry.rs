//! Users, their URIs and provisioning codes, and the bulk CSV import's statements.

use super::records::{NewUser, User};
use super::sql::{parameter_list, query, Row};
use super::{
    contains_pattern, is_unique_violation, user_exists, Db, StoreError, StoreResult, WriteTx,
};
use crate::shared::now_ms;

/// Rows per multi-row INSERT of the import (three parameters each), under both backends'
/// limits on parameters per statement.
const IMPORT_ROWS: usize = 400;
/// URIs per `IN (...)` look-up of the import.
const IMPORT_LOOKUP: usize = 500;

/// `($1, $2, $3), ($4, $5, $6), …` for `rows` rows of three parameters. (SQLite is given them
/// as `?1`, `?2`, …, bound by number: sqlx bound `$n` by looking each name up with a linear
/// scan, which made the import's 1,200-parameter statements its largest single cost.)
fn triples(rows: usize) -> String {
    (0..rows)
        .map(|i| format!("(${}, ${}, ${})", 3 * i + 1, 3 * i + 2, 3 * i + 3))
        .collect::<Vec<_>>()
        .join(",")
}

impl Db {
    pub async fn create_user(&self, user: &NewUser<'_>) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        insert_user(&mut tx, user).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn delete_user(&self, user_id: &str) -> StoreResult<Vec<String>> {
        let mut tx = self.begin_write().await?;
        let endpoints: Vec<String> = query("SELECT id FROM endpoints WHERE user_id = $1")
            .bind(user_id)
            .fetch_all(&mut tx)
            .await?
            .iter()
            .map(|r| r.get::<String>(0))
            .collect();
        let deleted = query("DELETE FROM users WHERE id = $1")
            .bind(user_id)
            .execute(&mut tx)
            .await?
            .rows_affected();
        if deleted == 0 {
            return Err(StoreError::NotFound(format!("no user `{user_id}`")));
        }
        tx.commit().await?;
        Ok(endpoints)
    }

    pub async fn add_uri(&self, user_id: &str, uri: &str) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        if !user_exists(&mut tx, user_id).await? {
            return Err(StoreError::NotFound(format!("no user `{user_id}`")));
        }
        insert_uri(&mut tx, user_id, uri, now_ms()).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn remove_uri(&self, uri: &str) -> StoreResult<()> {
        let deleted = self
            .write_one(query("DELETE FROM user_uris WHERE uri = $1").bind(uri))
            .await?;
        if deleted == 0 {
            return Err(StoreError::NotFound(format!("no user has `{uri}`")));
        }
        Ok(())
    }

    pub async fn user(&self, user_id: &str) -> StoreResult<Option<User>> {
        let row = query(
            "SELECT u.id, u.display_name, u.created_at, \
             (SELECT COUNT(*) FROM endpoints e WHERE e.user_id = u.id AND e.revoked_at IS NULL) \
             FROM users u WHERE u.id = $1",
        )
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let mut user = user_from_row(&row);
        user.uris = self.uris_of(&user.id).await?;
        Ok(Some(user))
    }

    pub async fn user_id_for_uri(&self, uri: &str) -> StoreResult<Option<String>> {
        Ok(query("SELECT user_id FROM user_uris WHERE uri = $1")
            .bind(uri)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| r.get(0)))
    }

    pub async fn uris_of(&self, user_id: &str) -> StoreResult<Vec<String>> {
        Ok(
            query("SELECT uri FROM user_uris WHERE user_id = $1 ORDER BY uri")
                .bind(user_id)
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect(),
        )
    }

    /// Users ordered by id, after `after`, whose name or any URI contains `search` (case-insensitive).
    pub async fn list_users(
        &self,
        search: Option<&str>,
        after: Option<&str>,
        limit: i64,
    ) -> StoreResult<Vec<User>> {
        let pattern = search.map(contains_pattern);
        let rows = query(
            "SELECT u.id, u.display_name, u.created_at, \
             (SELECT COUNT(*) FROM endpoints e WHERE e.user_id = u.id AND e.revoked_at IS NULL) \
             FROM users u \
             WHERE ($1 = '' OR u.id > $1) \
             AND ($2 = '' OR LOWER(u.display_name) LIKE $2 ESCAPE '\\' OR EXISTS \
                  (SELECT 1 FROM user_uris x WHERE x.user_id = u.id AND LOWER(x.uri) LIKE $2 ESCAPE '\\')) \
             ORDER BY u.id LIMIT $3",
        )
        .bind(after.unwrap_or(""))
        .bind(pattern.unwrap_or_default())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut users: Vec<User> = rows.iter().map(user_from_row).collect();
        for user in &mut users {
            user.uris = self.uris_of(&user.id).await?;
        }
        Ok(users)
    }

    pub async fn count_users(&self) -> StoreResult<i64> {
        Ok(query("SELECT COUNT(*) FROM users")
            .fetch_one(&self.pool)
            .await?
            .get(0))
    }

    pub async fn insert_provisioning_code(
        &self,
        user_id: &str,
        code_hash: &str,
        expires_at: i64,
    ) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        if !user_exists(&mut tx, user_id).await? {
            return Err(StoreError::NotFound(format!("no user `{user_id}`")));
        }
        query(
            "INSERT INTO provisioning_codes (code_hash, user_id, expires_at, created_at) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(code_hash)
        .bind(user_id)
        .bind(expires_at)
        .bind(now_ms())
        .execute(&mut tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

pub async fn insert_user(conn: &mut WriteTx, user: &NewUser<'_>) -> StoreResult<()> {
    query("INSERT INTO users (id, display_name, created_at) VALUES ($1, $2, $3)")
        .bind(user.id)
        .bind(user.display_name)
        .bind(user.created_at)
        .execute(&mut *conn)
        .await?;
    for uri in user.uris {
        insert_uri(conn, user.id, uri, user.created_at).await?;
    }
    Ok(())
}

async fn insert_uri(conn: &mut WriteTx, user_id: &str, uri: &str, now: i64) -> StoreResult<()> {
    query("INSERT INTO user_uris (uri, user_id, created_at) VALUES ($1, $2, $3)")
        .bind(uri)
        .bind(user_id)
        .bind(now)
        .execute(&mut *conn)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Conflict(format!("`{uri}` already belongs to a user"))
            } else {
                e
            }
        })?;
    Ok(())
}

/// Of `uris`, those that already belong to a user.
pub async fn registered_uris(conn: &mut WriteTx, uris: &[&str]) -> StoreResult<Vec<String>> {
    let mut registered = Vec::new();
    for chunk in uris.chunks(IMPORT_LOOKUP) {
        let placeholders = parameter_list(chunk.len());
        let sql = format!("SELECT uri FROM user_uris WHERE uri IN ({placeholders})");
        let mut statement = query(sql);
        for uri in chunk {
            statement = statement.bind(*uri);
        }
        for row in statement.fetch_all(&mut *conn).await? {
            registered.push(row.get(0));
        }
    }
    Ok(registered)
}

/// Inserts many users with their URIs in few statements, for the bulk import, which has checked
/// first that none of the URIs is taken.
pub async fn insert_users(conn: &mut WriteTx, users: &[NewUser<'_>]) -> StoreResult<()> {
    for chunk in users.chunks(IMPORT_ROWS) {
        let values = triples(chunk.len());
        let mut statement = query(format!(
            "INSERT INTO users (id, display_name, created_at) VALUES {values}"
        ));
        for user in chunk {
            statement = statement
                .bind(user.id)
                .bind(user.display_name)
                .bind(user.created_at);
        }
        statement.execute(&mut *conn).await?;
    }

    let uris: Vec<(&str, &str, i64)> = users
        .iter()
        .flat_map(|u| {
            u.uris
                .iter()
                .map(move |uri| (uri.as_str(), u.id, u.created_at))
        })
        .collect();
    for chunk in uris.chunks(IMPORT_ROWS) {
        let values = triples(chunk.len());
        let mut statement = query(format!(
            "INSERT INTO user_uris (uri, user_id, created_at) VALUES {values}"
        ));
        for (uri, user_id, created_at) in chunk {
            statement = statement.bind(*uri).bind(*user_id).bind(*created_at);
        }
        statement.execute(&mut *conn).await?;
    }
    Ok(())
}

fn user_from_row(row: &Row) -> User {
    User {
        id: row.get(0),
        display_name: row.get(1),
        created_at: row.get(2),
        active_endpoints: row.get(3),
        uris: Vec::new(),
    }
}
