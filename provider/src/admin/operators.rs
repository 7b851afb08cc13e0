//! Operators' sessions (log in, who am I, log out), operator accounts and the audit log.

use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::access::{audit, session_id, Principal};
use super::error::{page_limit, AdminError, AdminResult, ErrorBody, JsonBody};
use crate::app::App;
use crate::db::records::OperatorRecord;
use crate::operators::{self, LoginRefusal, Role};

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct Login {
    name: String,
    password: String,
}

/// Logs an operator in: the session cookie, and the CSRF token its changes must carry.
#[utoipa::path(post, path = "/admin/v1/session", tag = "operators", request_body = Login, responses((status = 200, description = "name, role, csrf_token, expires_at; the session cookie is set", body = Object), (status = 401, description = "Wrong name or password", body = ErrorBody), (status = 429, description = "Too many failed logins; see Retry-After", body = ErrorBody), (status = 503, description = "Too many logins being checked at once; see Retry-After", body = ErrorBody)))]
pub(super) async fn login(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    JsonBody(body): JsonBody<Login>,
) -> Response {
    let attempt = match app
        .login_limiter
        .begin(&body.name, peer.ip(), std::time::Instant::now())
    {
        Ok(attempt) => attempt,
        Err(refusal) => {
            let (status, code, message, wait) = match refusal {
                LoginRefusal::Limited(wait) => (
                    StatusCode::TOO_MANY_REQUESTS,
                    "too-many-logins",
                    format!(
                        "too many failed logins; try again in {} s",
                        wait.as_secs().max(1)
                    ),
                    wait.as_secs().max(1),
                ),
                LoginRefusal::Busy => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "busy",
                    "too many logins are being checked; try again".to_string(),
                    1,
                ),
            };
            let mut response = AdminError::new(status, code, message).into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(wait));
            return response;
        }
    };
    let record = match app.db.operator(&body.name).await {
        Ok(r) => r,
        Err(e) => return AdminError::from(e).into_response(),
    };
    let hash = record.as_ref().map_or_else(
        || operators::decoy_hash().to_string(),
        |r| r.password_hash.clone(),
    );
    let password = body.password.clone();
    let matches =
        tokio::task::spawn_blocking(move || operators::password_matches(&hash, &password))
            .await
            .unwrap_or(false);
    let Some(record) = record.filter(|_| matches) else {
        audit(
            &app,
            &body.name,
            &Method::POST,
            "/admin/v1/session",
            StatusCode::UNAUTHORIZED,
        )
        .await;
        return AdminError::new(
            StatusCode::UNAUTHORIZED,
            "bad-credentials",
            "wrong operator name or password",
        )
        .into_response();
    };
    attempt.succeeded();
    let (id, session) = operators::new_session(&record.name);
    if let Err(e) = app.db.add_operator_session(&session).await {
        return AdminError::from(e).into_response();
    }
    audit(
        &app,
        &record.name,
        &Method::POST,
        "/admin/v1/session",
        StatusCode::OK,
    )
    .await;
    let mut response = Json(json!({
        "name": record.name,
        "role": record.role,
        "csrf_token": session.csrf_token,
        "expires_at": session.expires_at,
    }))
    .into_response();
    if let Ok(cookie) = header::HeaderValue::from_str(&operators::session_cookie(&id)) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

/// Who the request's credentials are, and the CSRF token of a session (a page reads it here:
/// the cookie itself is out of the page's reach).
#[utoipa::path(get, path = "/admin/v1/session", tag = "operators", security(("token" = []), ("session" = [])), responses((status = 200, description = "name, role, via (session or token), csrf_token", body = Object), (status = 401, description = "No or wrong credentials", body = ErrorBody)))]
pub(super) async fn whoami(axum::Extension(principal): axum::Extension<Principal>) -> AdminResult {
    Ok(Json(match principal {
        Principal::Token => json!({"name": null, "role": "operator", "via": "token"}),
        Principal::Operator {
            name,
            role,
            csrf_token,
        } => json!({"name": name, "role": role, "via": "session", "csrf_token": csrf_token}),
    }))
}

#[utoipa::path(delete, path = "/admin/v1/session", tag = "operators", security(("token" = []), ("session" = [])), responses((status = 204, description = "The session ended; the cookie is cleared"), (status = 400, description = "Not a session", body = ErrorBody), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "No or wrong credentials", body = ErrorBody), (status = 403, description = "CSRF token missing, or a viewer", body = ErrorBody)))]
pub(super) async fn logout(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> Result<Response, AdminError> {
    let id = session_id(&headers).ok_or_else(|| {
        AdminError::new(
            StatusCode::BAD_REQUEST,
            "no-session",
            "only a session logs out; the bearer token stays valid",
        )
    })?;
    app.db
        .remove_operator_session(&operators::session_digest(id))
        .await?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Ok(cookie) = header::HeaderValue::from_str(&operators::cleared_cookie()) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    Ok(response)
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct NewOperator {
    name: String,
    role: String,
    password: String,
}

fn operator_json(record: &OperatorRecord) -> Value {
    json!({"name": record.name, "role": record.role, "created_at": record.created_at})
}

#[utoipa::path(post, path = "/admin/v1/operators", tag = "operators", security(("token" = []), ("session" = [])), request_body = NewOperator, responses((status = 201, description = "name, role, created_at", body = Object), (status = 409, description = "The name is taken", body = ErrorBody), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "No or wrong credentials", body = ErrorBody), (status = 403, description = "CSRF token missing, or a viewer", body = ErrorBody)))]
pub(super) async fn add_operator(
    State(app): State<Arc<App>>,
    JsonBody(body): JsonBody<NewOperator>,
) -> Result<(StatusCode, Json<Value>), AdminError> {
    let role: Role = body.role.parse()?;
    let record = tokio::task::spawn_blocking(move || {
        operators::new_operator(&body.name, role, &body.password)
    })
    .await
    .map_err(|e| AdminError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))??;
    app.db.add_operator(&record).await?;
    Ok((StatusCode::CREATED, Json(operator_json(&record))))
}

#[utoipa::path(get, path = "/admin/v1/operators", tag = "operators", security(("token" = []), ("session" = [])), responses((status = 200, description = "operators: name, role, created_at", body = Object), (status = 401, description = "No or wrong credentials", body = ErrorBody)))]
pub(super) async fn list_operators(State(app): State<Arc<App>>) -> AdminResult {
    let operators: Vec<Value> = app
        .db
        .operators()
        .await?
        .iter()
        .map(operator_json)
        .collect();
    Ok(Json(json!({ "operators": operators })))
}

#[utoipa::path(delete, path = "/admin/v1/operators/{name}", tag = "operators", security(("token" = []), ("session" = [])), params(("name" = String, Path, description = "Operator name")), responses((status = 200, description = "Removed, its sessions ended", body = Object), (status = 404, description = "No such operator", body = ErrorBody), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "No or wrong credentials", body = ErrorBody), (status = 403, description = "CSRF token missing, or a viewer", body = ErrorBody)))]
pub(super) async fn remove_operator(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> AdminResult {
    app.db.remove_operator(&name).await?;
    Ok(Json(json!({ "removed": name })))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct AuditQuery {
    /// `next.before` of the previous page.
    before: Option<i64>,
    /// `next.before_id` of the previous page.
    before_id: Option<String>,
    /// 1 to 1000; default 100.
    limit: Option<i64>,
}

/// The audit log, newest first, a page at a time: the next page is the one `next` names.
#[utoipa::path(get, path = "/admin/v1/audit", tag = "operators", security(("token" = []), ("session" = [])), params(AuditQuery), responses((status = 200, description = "entries (id, at, actor, method, path, status), newest first, and next", body = Object), (status = 400, description = "Invalid limit", body = ErrorBody), (status = 401, description = "No or wrong credentials", body = ErrorBody)))]
pub(super) async fn audit_log(
    State(app): State<Arc<App>>,
    Query(q): Query<AuditQuery>,
) -> AdminResult {
    let limit = page_limit(q.limit, 100, 1000)?;
    // Without a cursor: from the newest (ids are base64url, all below `~`).
    let (before, before_id) = match q.before {
        Some(at) => (at, q.before_id.unwrap_or_default()),
        None => (i64::MAX, "~".to_string()),
    };
    let entries = app.db.audit(before, &before_id, limit).await?;
    let next = entries
        .last()
        .filter(|_| entries.len() as i64 == limit)
        .map(|e| json!({"before": e.at, "before_id": e.id}));
    Ok(Json(json!({ "entries": entries, "next": next })))
}
