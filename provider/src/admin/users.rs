//! Users, their URIs, provisioning codes, endpoints and SIP accounts, and the CSV import.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::TryStreamExt;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::{page_limit, AdminError, AdminResult, ErrorBody, JsonBody};
use crate::app::App;
use crate::db::records::{EndpointRecord, User};
use crate::import::{import_csv, ImportError, ImportEvent};

fn user_json(user: &User) -> Value {
    json!({
        "id": user.id,
        "display_name": user.display_name,
        "uris": user.uris,
        "active_endpoints": user.active_endpoints,
        "created_at": user.created_at,
    })
}

/// The user with this id, or `404 not-found`.
async fn existing_user(app: &App, id: &str) -> Result<User, AdminError> {
    app.db.user(id).await?.ok_or_else(|| {
        AdminError::new(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("no user `{id}`"),
        )
    })
}

fn endpoint_json(e: &EndpointRecord) -> Value {
    json!({
        "id": e.id,
        "user_id": e.user_id,
        "name": e.name,
        "capabilities": e.capabilities,
        "certificate_sha256": e.cert_fingerprint,
        "certificate_not_after": e.cert_not_after,
        "created_at": e.created_at,
        "revoked_at": e.revoked_at,
    })
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewUserBody {
    #[serde(default)]
    display_name: String,
    uris: Vec<String>,
}

#[utoipa::path(post, path = "/admin/v1/users", tag = "users", security(("token" = []), ("session" = [])), request_body = NewUserBody, responses((status = 200, description = "The user: id, display_name, uris, active_endpoints, created_at", body = Object), (status = 409, description = "A URI is taken", body = ErrorBody), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "No or wrong credentials", body = ErrorBody), (status = 403, description = "CSRF token missing, or a viewer", body = ErrorBody)))]
pub(super) async fn add_user(
    State(app): State<Arc<App>>,
    JsonBody(body): JsonBody<NewUserBody>,
) -> AdminResult {
    let user = app
        .registry()
        .add_user(&body.display_name, &body.uris)
        .await?;
    Ok(Json(user_json(&user)))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ListParams {
    /// Matches names and URIs, case-insensitively.
    q: Option<String>,
    /// The `next_after` of the previous page.
    after: Option<String>,
    /// 1 to 1000; default 100.
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/admin/v1/users", tag = "users", security(("token" = []), ("session" = [])), params(ListParams), responses((status = 200, description = "users, next_after, total", body = Object), (status = 401, description = "No or wrong credentials", body = ErrorBody)))]
pub(super) async fn list_users(
    State(app): State<Arc<App>>,
    Query(params): Query<ListParams>,
) -> AdminResult {
    let limit = page_limit(params.limit, 100, 1000)?;
    let users = app
        .db
        .list_users(params.q.as_deref(), params.after.as_deref(), limit)
        .await?;
    let next = if users.len() as i64 == limit {
        users.last().map(|u| u.id.clone())
    } else {
        None
    };
    Ok(Json(json!({
        "users": users.iter().map(user_json).collect::<Vec<_>>(),
        "next_after": next,
        "total": app.db.count_users().await?,
    })))
}

#[utoipa::path(get, path = "/admin/v1/users/{id}", tag = "users", security(("token" = []), ("session" = [])), params(("id" = String, Path, description = "User id")), responses((status = 200, description = "The user", body = Object), (status = 404, description = "No such user", body = ErrorBody), (status = 401, description = "No or wrong credentials", body = ErrorBody)))]
pub(super) async fn get_user(State(app): State<Arc<App>>, Path(id): Path<String>) -> AdminResult {
    Ok(Json(user_json(&existing_user(&app, &id).await?)))
}

#[utoipa::path(delete, path = "/admin/v1/users/{id}", tag = "users", security(("token" = []), ("session" = [])), params(("id" = String, Path, description = "User id")), responses((status = 200, description = "Removed, its URIs removed and its endpoints revoked", body = Object), (status = 404, description = "No such user", body = ErrorBody), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "No or wrong credentials", body = ErrorBody), (status = 403, description = "CSRF token missing, or a viewer", body = ErrorBody)))]
pub(super) async fn remove_user(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> AdminResult {
    app.registry().remove_user(&id).await?;
    Ok(Json(json!({"removed": id})))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct UriBody {
    uri: String,
}

#[utoipa::path(post, path = "/admin/v1/users/{id}/uris", tag = "users", security(("token" = []), ("session" = [])), params(("id" = String, Path, description = "User id")), request_body = UriBody, responses((status = 200, description = "user_id and the canonical uri", body = Object), (status = 409, description = "The URI is taken", body = ErrorBody), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "No or wrong credentials", body = ErrorBody), (status = 403, description = "CSRF token missing, or a viewer", body = ErrorBody)))]
pub(super) async fn add_uri(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<UriBody>,
) -> AdminResult {
    let uri = app.registry().add_uri(&id, &body.uri).await?;
    Ok(Json(json!({"user_id": id, "uri": uri})))
}

#[utoipa::path(delete, path = "/admin/v1/uris/{uri}", tag = "users", security(("token" = []), ("session" = [])), params(("uri" = String, Path, description = "The URI, percent-encoded")), responses((status = 200, description = "removed: the canonical URI", body = Object), (status = 404, description = "No such URI", body = ErrorBody), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "No or wrong credentials", body = ErrorBody), (status = 403, description = "CSRF token missing, or a viewer", body = ErrorBody)))]
pub(super) async fn remove_uri(
    State(app): State<Arc<App>>,
    Path(uri): Path<String>,
) -> AdminResult {
    let uri = app.registry().remove_uri(&uri).await?;
    Ok(Json(json!({"removed": uri})))
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CodeBody {
    ttl_seconds: Option<u64>,
}

#[utoipa::path(post, path = "/admin/v1/users/{id}/provisioning-codes", tag = "users", security(("token" = []), ("session" = [])), params(("id" = String, Path, description = "User id")), request_body(content = Option<CodeBody>, description = "Optional; an empty body takes the default lifetime"), responses((status = 200, description = "user_id, code (one-time), expires_at", body = Object), (status = 404, description = "No such user", body = ErrorBody), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "No or wrong credentials", body = ErrorBody), (status = 403, description = "CSRF token missing, or a viewer", body = ErrorBody)))]
pub(super) async fn provisioning_code(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> AdminResult {
    let body: CodeBody = if body.iter().all(u8::is_ascii_whitespace) {
        CodeBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            AdminError::new(StatusCode::BAD_REQUEST, "malformed-body", e.to_string())
        })?
    };
    let (code, expires_at) = app
        .registry()
        .issue_provisioning_code(&id, body.ttl_seconds)
        .await?;
    Ok(Json(
        json!({"user_id": id, "code": code, "expires_at": expires_at}),
    ))
}

#[utoipa::path(get, path = "/admin/v1/users/{id}/endpoints", tag = "endpoints", security(("token" = []), ("session" = [])), params(("id" = String, Path, description = "User id")), responses((status = 200, description = "endpoints: id, user_id, name, capabilities, certificate_sha256, certificate_not_after, created_at, revoked_at", body = Object), (status = 404, description = "No such user", body = ErrorBody), (status = 401, description = "No or wrong credentials", body = ErrorBody)))]
pub(super) async fn list_endpoints(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> AdminResult {
    existing_user(&app, &id).await?;
    let endpoints = app.db.endpoints_of_user(&id).await?;
    Ok(Json(
        json!({"endpoints": endpoints.iter().map(endpoint_json).collect::<Vec<_>>()}),
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct SipAccountBody {
    aor: String,
    username: Option<String>,
    password: String,
}

#[utoipa::path(post, path = "/admin/v1/users/{id}/sip-accounts", tag = "sip", security(("token" = []), ("session" = [])), params(("id" = String, Path, description = "User id")), request_body = SipAccountBody, responses((status = 200, description = "aor, user_id, username, realm", body = Object), (status = 404, description = "No such user", body = ErrorBody), (status = 409, description = "The AoR or username is taken", body = ErrorBody), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "No or wrong credentials", body = ErrorBody), (status = 403, description = "CSRF token missing, or a viewer", body = ErrorBody)))]
pub(super) async fn add_sip_account(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<SipAccountBody>,
) -> AdminResult {
    let account = crate::sip::accounts::new_account(
        &app.config,
        &id,
        &body.aor,
        body.username.as_deref(),
        &body.password,
    )
    .map_err(|e| AdminError::new(StatusCode::BAD_REQUEST, "invalid-field", e.to_string()))?;
    app.db
        .add_sip_account(&account, crate::sip::gateway_capabilities())
        .await?;
    Ok(Json(json!({
        "aor": account.aor,
        "user_id": account.user_id,
        "username": account.username,
        "realm": account.realm,
    })))
}

#[utoipa::path(get, path = "/admin/v1/users/{id}/sip-accounts", tag = "sip", security(("token" = []), ("session" = [])), params(("id" = String, Path, description = "User id")), responses((status = 200, description = "sip_accounts with their registered contacts", body = Object), (status = 404, description = "No such user", body = ErrorBody), (status = 401, description = "No or wrong credentials", body = ErrorBody)))]
pub(super) async fn list_sip_accounts(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> AdminResult {
    existing_user(&app, &id).await?;
    let now = crate::shared::now_ms();
    let mut accounts = Vec::new();
    for account in app.db.sip_accounts_of_user(&id).await? {
        let contacts: Vec<Value> = app
            .db
            .sip_contacts(&account.aor, now)
            .await?
            .iter()
            .map(|c| {
                json!({
                    "contact": c.contact,
                    "expires_in": (c.expires_at - now) / 1000,
                    "transport": c.transport,
                    "source": c.source,
                    "user_agent": c.user_agent,
                    "q": c.q,
                })
            })
            .collect();
        accounts.push(json!({
            "aor": account.aor,
            "username": account.username,
            "realm": account.realm,
            "created_at": account.created_at,
            "contacts": contacts,
        }));
    }
    Ok(Json(json!({"sip_accounts": accounts})))
}

#[utoipa::path(delete, path = "/admin/v1/sip-accounts/{aor}", tag = "sip", security(("token" = []), ("session" = [])), params(("aor" = String, Path, description = "The address of record, percent-encoded")), responses((status = 200, description = "removed: the AoR", body = Object), (status = 404, description = "No such account", body = ErrorBody), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "No or wrong credentials", body = ErrorBody), (status = 403, description = "CSRF token missing, or a viewer", body = ErrorBody)))]
pub(super) async fn remove_sip_account(
    State(app): State<Arc<App>>,
    Path(aor): Path<String>,
) -> AdminResult {
    let canonical = crate::sip::uri::canonical_aor(&aor).ok_or_else(|| {
        AdminError::new(
            StatusCode::BAD_REQUEST,
            "invalid-field",
            format!("aor: `{aor}` is not a sip: address of record"),
        )
    })?;
    if let Some(endpoint) = app.db.remove_sip_account(&canonical).await? {
        app.hub.revoke(&endpoint);
    }
    Ok(Json(json!({"removed": canonical})))
}

#[utoipa::path(post, path = "/admin/v1/endpoints/{id}/revoke", tag = "endpoints", security(("token" = []), ("session" = [])), params(("id" = String, Path, description = "Endpoint id")), responses((status = 200, description = "Revoked: its next request is refused and its push channel closes", body = Object), (status = 404, description = "No such endpoint", body = ErrorBody), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "No or wrong credentials", body = ErrorBody), (status = 403, description = "CSRF token missing, or a viewer", body = ErrorBody)))]
pub(super) async fn revoke_endpoint(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> AdminResult {
    app.registry().revoke_endpoint(&id).await?;
    Ok(Json(json!({"revoked": id})))
}

/// Streams the CSV into the importer and answers with NDJSON: progress lines as rows are
/// written, then one line with the outcome (`done` or `failed`).
#[utoipa::path(post, path = "/admin/v1/import", tag = "users", security(("token" = []), ("session" = [])), request_body(content = String, content_type = "text/csv", description = "A header naming display_name and uris; one user per row"), responses((status = 200, description = "NDJSON: progress lines, then done or failed", content_type = "application/x-ndjson", body = String), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "No or wrong credentials", body = ErrorBody), (status = 403, description = "CSRF token missing, or a viewer", body = ErrorBody)))]
pub(super) async fn import(State(app): State<Arc<App>>, body: Body) -> Response {
    let limit = app.config.admin.max_import_bytes;
    let mut seen = 0u64;
    let stream = body
        .into_data_stream()
        .map_err(std::io::Error::other)
        .and_then(move |chunk| {
            seen += chunk.len() as u64;
            let over = seen > limit;
            async move {
                if over {
                    Err(std::io::Error::other(format!(
                        "the CSV exceeds admin.max_import_bytes ({limit} bytes)"
                    )))
                } else {
                    Ok(chunk)
                }
            }
        });
    let reader =
        tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(Box::pin(stream)));
    let (progress_tx, mut progress_rx) = tokio::sync::mpsc::channel(16);
    let (line_tx, line_rx) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(16);
    tokio::spawn(async move {
        let forward = {
            let line_tx = line_tx.clone();
            tokio::spawn(async move {
                while let Some(ImportEvent::Progress { rows }) = progress_rx.recv().await {
                    tracing::info!(rows, "import progress");
                    let _ = line_tx
                        .send(Ok(format!("{}\n", json!({"progress": {"rows": rows}}))))
                        .await;
                }
            })
        };
        let started = std::time::Instant::now();
        let outcome = import_csv(
            &app.db,
            app.canonicalizer.clone(),
            reader,
            Some(progress_tx),
        )
        .await;
        let _ = forward.await;
        let line = match outcome {
            Ok(summary) => {
                let seconds = started.elapsed().as_secs_f64();
                tracing::info!(users = summary.users, seconds, "import done");
                app.registry().uris_changed(summary.uris);
                json!({"done": {"users": summary.users, "uris": summary.uris, "seconds": seconds,
                                "rows_per_second": summary.users as f64 / seconds.max(1e-9)}})
            }
            Err(ImportError::Rows(errors)) => json!({"failed": {
                "message": "rows rejected; nothing was imported",
                "errors": errors.iter().map(|e| json!({"line": e.line, "message": e.message})).collect::<Vec<_>>(),
            }}),
            Err(e) => {
                json!({"failed": {"message": format!("{e}; nothing was imported"), "errors": []}})
            }
        };
        let _ = line_tx.send(Ok(format!("{line}\n"))).await;
    });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(tokio_stream_from(line_rx)),
    )
        .into_response()
}

fn tokio_stream_from<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}
