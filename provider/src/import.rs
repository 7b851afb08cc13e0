//! Bulk import of users from CSV: header `display_name,uris`, one user a row, the URIs separated
//! by spaces. The import is all-or-nothing (one transaction): any bad row, a URI given twice or
//! already registered, and nothing is written; up to 100 errors are reported with line numbers.

use std::collections::HashSet;
use std::io::Read;

use switchyard_protocol::uri::Canonicalizer;
use tokio::sync::mpsc;

use crate::db::records::NewUser;
use crate::db::registry::{insert_users, registered_uris};
use crate::db::sql::query;
use crate::db::{Backend, Db, StoreError, WriteTx};
use crate::shared::now_ms;

const BATCH: usize = 400;
/// SQLite's page cache during an import, in KiB: the indexes of a million users fit.
const IMPORT_CACHE_KIB: u64 = 256 * 1024;
const MAX_ERRORS: usize = 100;
pub const PROGRESS_EVERY: u64 = 50_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    pub line: u64,
    pub message: String,
}

#[derive(Debug)]
pub enum ImportEvent {
    Progress { rows: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportSummary {
    pub users: u64,
    pub uris: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{} row(s) rejected; nothing was imported", .0.len())]
    Rows(Vec<RowError>),
    #[error("CSV: {0}")]
    Csv(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

struct ParsedRow {
    line: u64,
    id: String,
    display_name: String,
    uris: Vec<String>,
}

enum Parsed {
    Rows(Vec<ParsedRow>),
    Errors(Vec<RowError>),
    Fatal(String),
}

/// Parses the CSV on a blocking thread (the csv crate reads synchronously) and feeds batches.
fn parse(reader: impl Read, canonicalizer: Canonicalizer, out: mpsc::Sender<Parsed>) {
    let mut csv = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(reader);
    let headers = match csv.headers() {
        Ok(h) => h.clone(),
        Err(e) => {
            let _ = out.blocking_send(Parsed::Fatal(e.to_string()));
            return;
        }
    };
    let (Some(name_col), Some(uris_col)) = (
        headers.iter().position(|h| h == "display_name"),
        headers.iter().position(|h| h == "uris"),
    ) else {
        let _ = out.blocking_send(Parsed::Fatal(
            "the header must name the columns `display_name` and `uris`".into(),
        ));
        return;
    };
    let mut seen: HashSet<String> = HashSet::new();
    let mut batch = Vec::with_capacity(BATCH);
    let mut errors = Vec::new();
    for record in csv.records() {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map(|p| p.line()).unwrap_or(0);
                errors.push(RowError {
                    line,
                    message: e.to_string(),
                });
                if errors.len() >= MAX_ERRORS {
                    break;
                }
                continue;
            }
        };
        let line = record.position().map(|p| p.line()).unwrap_or(0);
        let display_name = record.get(name_col).unwrap_or("").to_string();
        let mut uris = Vec::new();
        let mut row_error = None;
        if let Err(e) = crate::registry::validate_display_name(&display_name) {
            row_error = Some(e.to_string());
        }
        for raw in record.get(uris_col).unwrap_or("").split_whitespace() {
            match canonicalizer.canonicalize(raw) {
                Ok(uri) => {
                    let uri = uri.into_string();
                    if !seen.insert(uri.clone()) {
                        row_error
                            .get_or_insert(format!("{uri} appears more than once in the file"));
                    }
                    uris.push(uri);
                }
                Err(e) => {
                    row_error.get_or_insert(format!("`{raw}`: {e}"));
                }
            }
        }
        if uris.is_empty() && row_error.is_none() {
            row_error = Some("no URI".into());
        }
        if let Some(message) = row_error {
            errors.push(RowError { line, message });
            if errors.len() >= MAX_ERRORS {
                break;
            }
            continue;
        }
        // Good rows still go to the database after a bad one, so that URIs already registered
        // are reported too; the transaction is rolled back at the end.
        batch.push(ParsedRow {
            line,
            id: crate::registry::new_user_id(),
            display_name,
            uris,
        });
        if batch.len() == BATCH
            && out
                .blocking_send(Parsed::Rows(std::mem::take(&mut batch)))
                .is_err()
        {
            return;
        }
    }
    if !batch.is_empty() {
        let _ = out.blocking_send(Parsed::Rows(batch));
    }
    if !errors.is_empty() {
        let _ = out.blocking_send(Parsed::Errors(errors));
    }
}

/// Imports a CSV read from `reader` (run on a blocking thread); progress goes to `progress`.
pub async fn import_csv<R: Read + Send + 'static>(
    db: &Db,
    canonicalizer: Canonicalizer,
    reader: R,
    progress: Option<mpsc::Sender<ImportEvent>>,
) -> Result<ImportSummary, ImportError> {
    let (tx, rx) = mpsc::channel(8);
    let parser = tokio::task::spawn_blocking(move || parse(reader, canonicalizer, tx));
    let mut db_tx = db.begin_write().await?;
    // SQLite's page cache (2 MiB by default) holds a small part of the indexes a large import
    // grows, so past the first rows each insert re-read pages from the WAL. The cache is a
    // connection's (the writer's), so its size is set back when the import ends.
    let cache_pages: Option<i64> = if db.backend() == Backend::Sqlite {
        let pages = query("PRAGMA cache_size")
            .fetch_one(&mut db_tx)
            .await?
            .try_get(0)?;
        query(format!("PRAGMA cache_size = -{IMPORT_CACHE_KIB}"))
            .execute(&mut db_tx)
            .await?;
        Some(pages)
    } else {
        None
    };
    let imported = import_rows(&mut db_tx, rx, progress).await;
    if let Some(pages) = cache_pages {
        query(format!("PRAGMA cache_size = {pages}"))
            .execute(&mut db_tx)
            .await?;
    }
    parser
        .await
        .map_err(|e| ImportError::Csv(format!("parser failed: {e}")))?;
    let summary = imported?;
    db_tx.commit().await?;
    Ok(summary)
}

/// Writes the parsed batches, all or nothing: the rows' errors, if any, instead.
async fn import_rows(
    db_tx: &mut WriteTx,
    mut rx: mpsc::Receiver<Parsed>,
    progress: Option<mpsc::Sender<ImportEvent>>,
) -> Result<ImportSummary, ImportError> {
    let mut summary = ImportSummary { users: 0, uris: 0 };
    let mut rows_done = 0u64;
    let mut errors = Vec::new();
    let now = now_ms();
    while let Some(parsed) = rx.recv().await {
        match parsed {
            Parsed::Fatal(message) => return Err(ImportError::Csv(message)),
            Parsed::Errors(mut rows) => errors.append(&mut rows),
            Parsed::Rows(rows) => {
                errors.extend(existing_uris(db_tx, &rows).await?);
                if !errors.is_empty() {
                    continue;
                }
                insert_batch(db_tx, &rows, now).await?;
                // On SQLite a batch's statements run in place on this worker (a few ms); the
                // worker's other tasks get their turn between batches.
                tokio::task::yield_now().await;
                let before = rows_done;
                rows_done += rows.len() as u64;
                summary.users += rows.len() as u64;
                summary.uris += rows.iter().map(|r| r.uris.len() as u64).sum::<u64>();
                if let Some(progress) = &progress {
                    if before / PROGRESS_EVERY != rows_done / PROGRESS_EVERY {
                        let _ = progress
                            .send(ImportEvent::Progress { rows: rows_done })
                            .await;
                    }
                }
            }
        }
    }
    if !errors.is_empty() {
        errors.sort_by_key(|e| e.line);
        errors.truncate(MAX_ERRORS);
        return Err(ImportError::Rows(errors));
    }
    Ok(summary)
}

/// The rows' URIs that already belong to a user, as errors of the rows that give them.
async fn existing_uris(tx: &mut WriteTx, rows: &[ParsedRow]) -> Result<Vec<RowError>, StoreError> {
    let uris: Vec<&str> = rows
        .iter()
        .flat_map(|r| r.uris.iter().map(String::as_str))
        .collect();
    Ok(registered_uris(tx, &uris)
        .await?
        .into_iter()
        .map(|uri| RowError {
            line: rows
                .iter()
                .find(|r| r.uris.contains(&uri))
                .map(|r| r.line)
                .unwrap_or(0),
            message: format!("{uri} already belongs to a user"),
        })
        .collect())
}

async fn insert_batch(tx: &mut WriteTx, rows: &[ParsedRow], now: i64) -> Result<(), StoreError> {
    let users: Vec<NewUser<'_>> = rows
        .iter()
        .map(|r| NewUser {
            id: &r.id,
            display_name: &r.display_name,
            uris: &r.uris,
            created_at: now,
        })
        .collect();
    insert_users(tx, &users).await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn cache_size(db: &Db) -> i64 {
        let mut tx = db.begin_write().await.unwrap();
        query("PRAGMA cache_size")
            .fetch_one(&mut tx)
            .await
            .unwrap()
            .get(0)
    }

    /// The cache asked for is the writer's, the connection the import ran on.
    #[tokio::test]
    async fn an_import_leaves_the_connections_page_cache_as_it_found_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::connect(&format!("sqlite:{}", dir.path().join("t.db").display()), 1)
            .await
            .unwrap();
        let before = cache_size(&db).await;
        let csv = "display_name,uris\nAda,tel:+442071000000 mailto:ada@example.com\n";
        let summary = import_csv(&db, Canonicalizer::new(None), csv.as_bytes(), None)
            .await
            .unwrap();
        assert_eq!(summary, ImportSummary { users: 1, uris: 2 });
        assert_eq!(cache_size(&db).await, before);
        // A refused import (the same URIs again) sets it back too, and writes nothing.
        let refused = import_csv(&db, Canonicalizer::new(None), csv.as_bytes(), None).await;
        assert!(matches!(refused, Err(ImportError::Rows(rows)) if rows.len() == 2));
        assert_eq!(cache_size(&db).await, before);
        assert_ne!(before, -(IMPORT_CACHE_KIB as i64));
    }
}
