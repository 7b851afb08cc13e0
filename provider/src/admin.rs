//! The operators' API (JSON; the bearer token, or an operator's session cookie with its CSRF
//! token) plus `/healthz`, `/readyz` and `/metrics`. Every change is written to the audit log.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use futures_util::TryStreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::app::App;
use crate::db::endpoints::EndpointRecord;
use crate::db::operators::{AuditEntry, OperatorRecord};
use crate::db::registry::User;
use crate::db::StoreError;
use crate::import::{import_csv, ImportError, ImportEvent};
use crate::operators::{self, OperatorError, Role};
use crate::registry::{self, RegistryError};
use switchyard_calls::CallRecord;

pub struct AdminError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl AdminError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        AdminError {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"error": self.code, "message": self.message})),
        )
            .into_response()
    }
}

impl From<RegistryError> for AdminError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Invalid { .. } => {
                AdminError::new(StatusCode::BAD_REQUEST, "invalid-field", e.to_string())
            }
            RegistryError::InvalidCode => {
                AdminError::new(StatusCode::FORBIDDEN, "invalid-code", e.to_string())
            }
            RegistryError::Store(s) => s.into(),
            RegistryError::Pki(p) => {
                AdminError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", p.to_string())
            }
        }
    }
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(m) => AdminError::new(StatusCode::CONFLICT, "conflict", m),
            StoreError::NotFound(m) => AdminError::new(StatusCode::NOT_FOUND, "not-found", m),
            other => {
                tracing::error!(error = %other, "admin request failed");
                AdminError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    other.to_string(),
                )
            }
        }
    }
}

type AdminResult = Result<Json<Value>, AdminError>;

/// JSON bodies with errors in our format (400 naming the problem, 413 past the limit).
pub struct JsonBody<T>(T);

impl<T: serde::de::DeserializeOwned> axum::extract::FromRequest<Arc<App>> for JsonBody<T> {
    type Rejection = AdminError;

    async fn from_request(req: Request, app: &Arc<App>) -> Result<Self, AdminError> {
        let limit = app.config.admin.max_body_bytes;
        let bytes = axum::body::to_bytes(req.into_body(), limit)
            .await
            .map_err(|_| {
                AdminError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body-too-large",
                    format!("the body exceeds {limit} bytes"),
                )
            })?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| AdminError::new(StatusCode::BAD_REQUEST, "malformed-body", e.to_string()))
    }
}

/// The admin listener's routes, and the OpenAPI document that describes them: both come from
/// the same handlers (`utoipa::path`), so the document cannot miss or invent a route.
pub fn router(app: Arc<App>) -> Router {
    let (router, mut document) = routes(app.clone()).split_for_parts();
    document.info.version = env!("CARGO_PKG_VERSION").to_string();
    // Every provider of the process builds the same document; the first one is kept.
    let _ = DOCUMENT.set(document.to_json().unwrap_or_default());
    router.merge(crate::admin_ui::router()).with_state(app)
}

/// The OpenAPI document (JSON) that `GET /admin/api/openapi.json` serves.
static DOCUMENT: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn routes(app: Arc<App>) -> OpenApiRouter<Arc<App>> {
    let (schemas, paths, import_route) = utoipa_axum::routes!(import);
    let api = OpenApiRouter::new()
        .routes(utoipa_axum::routes!(add_user, list_users))
        .routes(utoipa_axum::routes!(get_user, remove_user))
        .routes(utoipa_axum::routes!(add_uri))
        .routes(utoipa_axum::routes!(remove_uri))
        .routes(utoipa_axum::routes!(provisioning_code))
        .routes(utoipa_axum::routes!(list_endpoints))
        .routes(utoipa_axum::routes!(revoke_endpoint))
        .routes(utoipa_axum::routes!(add_sip_account, list_sip_accounts))
        .routes(utoipa_axum::routes!(remove_sip_account))
        .routes(utoipa_axum::routes!(list_calls))
        .routes(utoipa_axum::routes!(calls_csv))
        .routes(utoipa_axum::routes!(live_calls))
        .routes(utoipa_axum::routes!(dashboard))
        .routes(utoipa_axum::routes!(settings))
        .routes(utoipa_axum::routes!(relay_status))
        .routes(utoipa_axum::routes!(federation_status))
        .routes(utoipa_axum::routes!(federation_resync))
        .routes((
            schemas,
            paths,
            import_route.layer(DefaultBodyLimit::disable()),
        ))
        .routes(utoipa_axum::routes!(whoami, logout))
        .routes(utoipa_axum::routes!(add_operator, list_operators))
        .routes(utoipa_axum::routes!(remove_operator))
        .routes(utoipa_axum::routes!(audit_log))
        .route_layer(middleware::from_fn_with_state(app, authenticate));
    OpenApiRouter::with_openapi(AdminApi::openapi())
        .routes(utoipa_axum::routes!(healthz))
        .routes(utoipa_axum::routes!(ready))
        .routes(utoipa_axum::routes!(metrics_text))
        .routes(utoipa_axum::routes!(openapi_document))
        // Logging in is the one admin request without credentials.
        .routes(utoipa_axum::routes!(login))
        .merge(api)
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Switchyard admin API",
        description = "Operate a Switchyard provider: users, endpoints, SIP accounts, calls, \
                       federation, operators and the audit log. Credentials: the bearer token \
                       (`admin.token_file`) or an operator's session cookie, with the session's \
                       CSRF token in `X-CSRF-Token` on every change (docs/protocol.md, Admin API).",
        license(name = "Apache-2.0")
    ),
    modifiers(&Credentials),
    components(schemas(ErrorBody)),
    tags(
        (name = "users", description = "Users, their URIs and provisioning codes"),
        (name = "endpoints", description = "Devices of users"),
        (name = "sip", description = "SIP accounts of users"),
        (name = "calls", description = "Call detail records"),
        (name = "federation", description = "The federation as this provider sees it"),
        (name = "operators", description = "Operator accounts, sessions and the audit log"),
        (name = "health", description = "Liveness, readiness and metrics")
    )
)]
struct AdminApi;

/// The two kinds of credentials, and every route but the open ones requiring either.
struct Credentials;

impl utoipa::Modify for Credentials {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme,
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(operators::SESSION_COOKIE))),
        );
    }
}

/// Every admin error: a machine-readable code and a sentence for people.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// `invalid-field`, `not-found`, `conflict`, `unauthorized`, `csrf`, `read-only`, …
    pub error: String,
    pub message: String,
}

/// Who makes an admin request.
#[derive(Debug, Clone)]
pub enum Principal {
    /// The bearer token (`admin.token_file`): the provider's own tools, with every right.
    Token,
    Operator {
        name: String,
        role: Role,
        csrf_token: String,
    },
}

impl Principal {
    /// The name the audit log records.
    fn actor(&self) -> String {
        match self {
            Principal::Token => "token".into(),
            Principal::Operator { name, .. } => name.clone(),
        }
    }
}

fn same_secret(a: &str, b: &str) -> bool {
    // Comparing digests keeps the comparison's timing independent of the secret's bytes.
    let digest = |s: &str| ring::digest::digest(&ring::digest::SHA256, s.as_bytes());
    digest(a).as_ref() == digest(b).as_ref()
}

fn unauthorized() -> AdminError {
    AdminError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "log in (POST /admin/v1/session) or present the admin bearer token",
    )
}

/// The principal of a request: the bearer token, else a live session cookie.
async fn principal_of(app: &App, headers: &HeaderMap) -> Result<Principal, AdminError> {
    if let Some(presented) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        return if same_secret(presented, &app.admin_token) {
            Ok(Principal::Token)
        } else {
            Err(AdminError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "wrong admin bearer token",
            ))
        };
    }
    let Some(id) = session_id(headers) else {
        return Err(unauthorized());
    };
    let (session, role) = app
        .db
        .operator_session(&operators::session_digest(id), crate::shared::now_ms())
        .await?
        .ok_or_else(unauthorized)?;
    let role = role
        .parse()
        .map_err(|_| AdminError::new(StatusCode::FORBIDDEN, "forbidden", "unknown role"))?;
    Ok(Principal::Operator {
        name: session.operator,
        role,
        csrf_token: session.csrf_token,
    })
}

fn session_id(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(operators::session_id_in)
}

/// What a principal may not do: a cookie-authenticated change without the session's CSRF token,
/// and any change by a viewer (but logging out).
fn refusal(
    principal: &Principal,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Option<AdminError> {
    let Principal::Operator {
        role, csrf_token, ..
    } = principal
    else {
        return None;
    };
    if matches!(*method, Method::GET | Method::HEAD) {
        return None;
    }
    let presented = headers
        .get(operators::CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !same_secret(presented, csrf_token) {
        return Some(AdminError::new(
            StatusCode::FORBIDDEN,
            "csrf",
            "a change needs the session's CSRF token in the X-CSRF-Token header",
        ));
    }
    let logout = *method == Method::DELETE && path == "/admin/v1/session";
    if *role == Role::Viewer && !logout {
        return Some(AdminError::new(
            StatusCode::FORBIDDEN,
            "read-only",
            "viewers cannot change anything",
        ));
    }
    None
}

/// Authenticates every admin request but logging in, refuses what the principal may not do,
/// and writes each change (attempted or made) to the audit log.
async fn authenticate(State(app): State<Arc<App>>, mut req: Request, next: Next) -> Response {
    let principal = match principal_of(&app, req.headers()).await {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let response = match refusal(&principal, &method, &path, req.headers()) {
        Some(refused) => refused.into_response(),
        None => {
            req.extensions_mut().insert(principal.clone());
            next.run(req).await
        }
    };
    if !matches!(method, Method::GET | Method::HEAD) {
        audit(&app, &principal.actor(), &method, &path, response.status()).await;
    }
    response
}

async fn audit(app: &App, actor: &str, method: &Method, path: &str, status: StatusCode) {
    let entry = AuditEntry {
        id: crate::shared::random_token(12),
        at: crate::shared::now_ms(),
        actor: actor.to_string(),
        method: method.to_string(),
        path: path.to_string(),
        status: status.as_u16(),
    };
    if let Err(e) = app.db.add_audit(&entry).await {
        tracing::error!(error = %e, ?entry, "writing the audit log failed");
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
struct Login {
    name: String,
    password: String,
}

/// Logs an operator in: the session cookie, and the CSRF token its changes must carry.
#[utoipa::path(post, path = "/admin/v1/session", tag = "operators", request_body = Login, responses((status = 200, description = "name, role, csrf_token, expires_at; the session cookie is set", body = Object), (status = 401, description = "Wrong name or password", body = ErrorBody), (status = 429, description = "Too many failed logins; see Retry-After", body = ErrorBody)))]
async fn login(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    JsonBody(body): JsonBody<Login>,
) -> Response {
    let now = std::time::Instant::now();
    if let Err(wait) = app.login_limiter.check(&body.name, peer.ip(), now) {
        let mut response = AdminError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too-many-logins",
            format!(
                "too many failed logins; try again in {} s",
                wait.as_secs().max(1)
            ),
        )
        .into_response();
        response.headers_mut().insert(
            header::RETRY_AFTER,
            header::HeaderValue::from(wait.as_secs().max(1)),
        );
        return response;
    }
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
        app.login_limiter.failed(&body.name, peer.ip(), now);
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
    app.login_limiter.succeeded(&record.name);
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
async fn whoami(axum::Extension(principal): axum::Extension<Principal>) -> AdminResult {
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
async fn logout(State(app): State<Arc<App>>, headers: HeaderMap) -> Result<Response, AdminError> {
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

impl From<OperatorError> for AdminError {
    fn from(e: OperatorError) -> Self {
        match e {
            OperatorError::Invalid(..) => {
                AdminError::new(StatusCode::BAD_REQUEST, "invalid-field", e.to_string())
            }
            OperatorError::Hashing(_) => {
                AdminError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            }
        }
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
struct NewOperator {
    name: String,
    role: String,
    password: String,
}

fn operator_json(record: &OperatorRecord) -> Value {
    json!({"name": record.name, "role": record.role, "created_at": record.created_at})
}

#[utoipa::path(post, path = "/admin/v1/operators", tag = "operators", security(("token" = []), ("session" = [])), request_body = NewOperator, responses((status = 201, description = "name, role, created_at", body = Object), (status = 409, description = "The name is taken", body = ErrorBody), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "No or wrong credentials", body = ErrorBody), (status = 403, description = "CSRF token missing, or a viewer", body = ErrorBody)))]
async fn add_operator(
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
async fn list_operators(State(app): State<Arc<App>>) -> AdminResult {
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
async fn remove_operator(State(app): State<Arc<App>>, Path(name): Path<String>) -> AdminResult {
    app.db.remove_operator(&name).await?;
    Ok(Json(json!({ "removed": name })))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct AuditQuery {
    /// `next.before` of the previous page.
    before: Option<i64>,
    /// `next.before_id` of the previous page.
    before_id: Option<String>,
    /// 1 to 1000; default 100.
    limit: Option<i64>,
}

/// The audit log, newest first, a page at a time: the next page is the one `next` names.
#[utoipa::path(get, path = "/admin/v1/audit", tag = "operators", security(("token" = []), ("session" = [])), params(AuditQuery), responses((status = 200, description = "entries (id, at, actor, method, path, status), newest first, and next", body = Object), (status = 400, description = "Invalid limit", body = ErrorBody), (status = 401, description = "No or wrong credentials", body = ErrorBody)))]
async fn audit_log(State(app): State<Arc<App>>, Query(q): Query<AuditQuery>) -> AdminResult {
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

fn federation_or_404(app: &App) -> Result<&Arc<crate::federation::Federation>, AdminError> {
    app.federation.as_ref().ok_or_else(|| {
        AdminError::new(
            StatusCode::NOT_FOUND,
            "federation-disabled",
            "federation.enabled is false on this provider",
        )
    })
}

/// The discovery dictionary in force, this provider's filter, and each peer as seen from here.
#[utoipa::path(get, path = "/admin/v1/federation", tag = "federation", security(("token" = []), ("session" = [])), responses((status = 200, description = "provider_id, certificate, directory, filter, peers", body = Object), (status = 404, description = "Federation disabled", body = ErrorBody), (status = 401, description = "No or wrong credentials", body = ErrorBody)))]
async fn federation_status(State(app): State<Arc<App>>) -> AdminResult {
    let fed = federation_or_404(&app)?;
    let directory = fed.directory.current();
    let (last_fetch, last_error) = fed.directory.status();
    let identity = fed.identity.current();
    let own = fed.own.stats();
    let peers: Vec<Value> = fed
        .peers
        .status(directory.as_deref(), &fed.provider_id)
        .into_iter()
        .map(|p| {
            let member = directory.as_ref().and_then(|d| d.member(&p.provider_id));
            json!({
                "provider_id": p.provider_id,
                "display_name": member.map(|m| m.display_name.clone()),
                "base_uri": member.map(|m| m.base_uri.clone()),
                "generation": p.generation,
                "items": p.items,
                "bits": p.bits,
                "estimated_false_positive_rate": p.estimated_false_positive_rate,
                "last_sync_ms": p.fetched_at_ms,
                "latency_ms": p.latency_ms,
                "errors": p.errors,
                "last_error": p.last_error,
                "breaker_open": p.breaker_open,
            })
        })
        .collect();
    Ok(Json(json!({
        "provider_id": fed.provider_id,
        "certificate": {
            "sha256": identity.fingerprint,
            "not_after": identity.not_after,
        },
        "directory": directory.as_ref().map(|d| json!({
            "federation": d.federation,
            "version": d.version,
            "issued_at": d.issued_at,
            "expires": d.expires,
            "members": d.members.iter().map(|m| json!({
                "provider_id": m.provider_id,
                "display_name": m.display_name,
                "base_uri": m.base_uri,
                "relay_addresses": m.relay_addresses,
                "certificate_sha256": m.certificate_sha256,
            })).collect::<Vec<_>>(),
        })),
        "directory_last_fetch_ms": last_fetch,
        "directory_last_error": last_error,
        "filter": own.map(|f| json!({
            "generation": f.generation,
            "items": f.items,
            "bits": f.bits,
            "hashes": f.hashes,
            "estimated_false_positive_rate": f.estimated_false_positive_rate,
        })),
        "peers": peers,
    })))
}

/// Fetches the discovery dictionary, rebuilds this provider's filter and pulls every peer's, now.
#[utoipa::path(post, path = "/admin/v1/federation/resync", tag = "federation", security(("token" = []), ("session" = [])), responses((status = 200, description = "directory_error, version", body = Object), (status = 404, description = "Federation disabled", body = ErrorBody), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "No or wrong credentials", body = ErrorBody), (status = 403, description = "CSRF token missing, or a viewer", body = ErrorBody)))]
async fn federation_resync(State(app): State<Arc<App>>) -> AdminResult {
    let fed = federation_or_404(&app)?;
    let directory_error = fed.refresh_directory().await.err().map(|e| e.to_string());
    fed.rebuild_filter().await?;
    fed.pull_all().await;
    Ok(Json(json!({
        "directory_error": directory_error,
        "version": fed.directory.current().map(|d| d.version),
    })))
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, description = "ok", body = String, content_type = "text/plain")))]
async fn healthz() -> &'static str {
    "ok\n"
}

/// This document.
#[utoipa::path(get, path = "/admin/api/openapi.json", tag = "health", responses((status = 200, description = "The OpenAPI document of this API", body = Object)))]
async fn openapi_document() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        DOCUMENT.get().cloned().unwrap_or_default(),
    )
        .into_response()
}

#[utoipa::path(get, path = "/readyz", tag = "health", responses((status = 200, description = "The database answers and the provider is not stopping", body = String, content_type = "text/plain"), (status = 503, description = "Not ready", body = String, content_type = "text/plain")))]
async fn ready(State(app): State<Arc<App>>) -> Response {
    match app.db.ping().await {
        Ok(()) if !*app.shutdown.borrow() => (StatusCode::OK, "ready\n").into_response(),
        Ok(()) => (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("database unavailable: {e}\n"),
        )
            .into_response(),
    }
}

#[utoipa::path(get, path = "/metrics", tag = "health", responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
async fn metrics_text(State(app): State<Arc<App>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
        .into_response()
}

fn user_json(user: &User) -> Value {
    json!({
        "id": user.id,
        "display_name": user.display_name,
        "uris": user.uris,
        "active_endpoints": user.active_endpoints,
        "created_at": user.created_at,
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

fn call_json(c: &CallRecord) -> Value {
    json!({
        "session_id": c.session_id,
        "from": c.caller_uri,
        "to": c.callee_uri,
        "caller_endpoint": c.caller_endpoint,
        "rung_endpoints": c.rung_endpoints,
        "answered_by": c.answered_by,
        "media": c.media,
        "state": c.state.as_str(),
        "outcome_reason": c.reason,
        "providers": c.providers,
        "initiated_at": c.initiated_at,
        "answered_at": c.answered_at,
        "ended_at": c.ended_at,
    })
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewUserBody {
    #[serde(default)]
    display_name: String,
    uris: Vec<String>,
}

#[utoipa::path(post, path = "/admin/v1/users", tag = "users", security(("token" = []), ("session" = [])), request_body = NewUserBody, responses((status = 200, description = "The user: id, display_name, uris, active_endpoints, created_at", body = Object), (status = 409, description = "A URI is taken", body = ErrorBody), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "No or wrong credentials", body = ErrorBody), (status = 403, description = "CSRF token missing, or a viewer", body = ErrorBody)))]
async fn add_user(
    State(app): State<Arc<App>>,
    JsonBody(body): JsonBody<NewUserBody>,
) -> AdminResult {
    let user = registry::add_user(&app, &body.display_name, &body.uris).await?;
    Ok(Json(user_json(&user)))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListParams {
    /// Matches names and URIs, case-insensitively.
    q: Option<String>,
    /// The `next_after` of the previous page.
    after: Option<String>,
    /// 1 to 1000; default 100.
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/admin/v1/users", tag = "users", security(("token" = []), ("session" = [])), params(ListParams), responses((status = 200, description = "users, next_after, total", body = Object), (status = 401, description = "No or wrong credentials", body = ErrorBody)))]
async fn list_users(State(app): State<Arc<App>>, Query(params): Query<ListParams>) -> AdminResult {
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
async fn get_user(State(app): State<Arc<App>>, Path(id): Path<String>) -> AdminResult {
    let user = app.db.user(&id).await?.ok_or_else(|| {
        AdminError::new(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("no user `{id}`"),
        )
    })?;
    Ok(Json(user_json(&user)))
}

#[utoipa::path(delete, path = "/admin/v1/users/{id}", tag = "users", security(("token" = []), ("session" = [])), params(("id" = String, Path, description = "User id")), responses((status = 200, description = "Removed, its URIs removed and its endpoints revoked", body = Object), (status = 404, description = "No such user", body = ErrorBody), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "No or wrong credentials", body = ErrorBody), (status = 403, description = "CSRF token missing, or a viewer", body = ErrorBody)))]
async fn remove_user(State(app): State<Arc<App>>, Path(id): Path<String>) -> AdminResult {
    registry::remove_user(&app, &id).await?;
    Ok(Json(json!({"removed": id})))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct UriBody {
    uri: String,
}

#[utoipa::path(post, path = "/admin/v1/users/{id}/uris", tag = "users", security(("token" = []), ("session" = [])), params(("id" = String, Path, description = "User id")), request_body = UriBody, responses((status = 200, description = "user_id and the canonical uri", body = Object), (status = 409, description = "The URI is taken", body = ErrorBody), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "No or wrong credentials", body = ErrorBody), (status = 403, description = "CSRF token missing, or a viewer", body = ErrorBody)))]
async fn add_uri(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<UriBody>,
) -> AdminResult {
    let uri = app
        .canonicalizer
        .canonicalize(&body.uri)
        .map_err(|e| {
            AdminError::new(
                StatusCode::BAD_REQUEST,
                "invalid-field",
                format!("uri: {e}"),
            )
        })?
        .into_string();
    app.db.add_uri(&id, &uri).await?;
    app.registry_changed(1);
    Ok(Json(json!({"user_id": id, "uri": uri})))
}

#[utoipa::path(delete, path = "/admin/v1/uris/{uri}", tag = "users", security(("token" = []), ("session" = [])), params(("uri" = String, Path, description = "The URI, percent-encoded")), responses((status = 200, description = "removed: the canonical URI", body = Object), (status = 404, description = "No such URI", body = ErrorBody), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "No or wrong credentials", body = ErrorBody), (status = 403, description = "CSRF token missing, or a viewer", body = ErrorBody)))]
async fn remove_uri(State(app): State<Arc<App>>, Path(uri): Path<String>) -> AdminResult {
    let uri = app
        .canonicalizer
        .canonicalize(&uri)
        .map_err(|e| {
            AdminError::new(
                StatusCode::BAD_REQUEST,
                "invalid-field",
                format!("uri: {e}"),
            )
        })?
        .into_string();
    app.db.remove_uri(&uri).await?;
    app.registry_changed(1);
    Ok(Json(json!({"removed": uri})))
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CodeBody {
    ttl_seconds: Option<u64>,
}

#[utoipa::path(post, path = "/admin/v1/users/{id}/provisioning-codes", tag = "users", security(("token" = []), ("session" = [])), params(("id" = String, Path, description = "User id")), request_body(content = Option<CodeBody>, description = "Optional; an empty body takes the default lifetime"), responses((status = 200, description = "user_id, code (one-time), expires_at", body = Object), (status = 404, description = "No such user", body = ErrorBody), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "No or wrong credentials", body = ErrorBody), (status = 403, description = "CSRF token missing, or a viewer", body = ErrorBody)))]
async fn provisioning_code(
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
    let (code, expires_at) = registry::issue_provisioning_code(&app, &id, body.ttl_seconds).await?;
    Ok(Json(
        json!({"user_id": id, "code": code, "expires_at": expires_at}),
    ))
}

#[utoipa::path(get, path = "/admin/v1/users/{id}/endpoints", tag = "endpoints", security(("token" = []), ("session" = [])), params(("id" = String, Path, description = "User id")), responses((status = 200, description = "endpoints: id, user_id, name, capabilities, certificate_sha256, certificate_not_after, created_at, revoked_at", body = Object), (status = 404, description = "No such user", body = ErrorBody), (status = 401, description = "No or wrong credentials", body = ErrorBody)))]
async fn list_endpoints(State(app): State<Arc<App>>, Path(id): Path<String>) -> AdminResult {
    if app.db.user(&id).await?.is_none() {
        return Err(AdminError::new(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("no user `{id}`"),
        ));
    }
    let endpoints = app.db.endpoints_of_user(&id).await?;
    Ok(Json(
        json!({"endpoints": endpoints.iter().map(endpoint_json).collect::<Vec<_>>()}),
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct SipAccountBody {
    aor: String,
    username: Option<String>,
    password: String,
}

#[utoipa::path(post, path = "/admin/v1/users/{id}/sip-accounts", tag = "sip", security(("token" = []), ("session" = [])), params(("id" = String, Path, description = "User id")), request_body = SipAccountBody, responses((status = 200, description = "aor, user_id, username, realm", body = Object), (status = 404, description = "No such user", body = ErrorBody), (status = 409, description = "The AoR or username is taken", body = ErrorBody), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "No or wrong credentials", body = ErrorBody), (status = 403, description = "CSRF token missing, or a viewer", body = ErrorBody)))]
async fn add_sip_account(
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
async fn list_sip_accounts(State(app): State<Arc<App>>, Path(id): Path<String>) -> AdminResult {
    if app.db.user(&id).await?.is_none() {
        return Err(AdminError::new(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("no user `{id}`"),
        ));
    }
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
async fn remove_sip_account(State(app): State<Arc<App>>, Path(aor): Path<String>) -> AdminResult {
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
async fn revoke_endpoint(State(app): State<Arc<App>>, Path(id): Path<String>) -> AdminResult {
    registry::revoke_endpoint(&app, &id).await?;
    Ok(Json(json!({"revoked": id})))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct CallParams {
    /// Calls initiated before this time (ms since the epoch).
    before: Option<i64>,
    /// Only calls in this state: ringing, answered, rejected, cancelled, timeout or ended.
    state: Option<String>,
    /// Only calls whose caller or callee URI contains this text (case-insensitively).
    party: Option<String>,
    /// 1 to 1000; default 100.
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/admin/v1/calls", tag = "calls", security(("token" = []), ("session" = [])), params(CallParams), responses((status = 200, description = "calls: call detail records, newest first", body = Object), (status = 400, description = "Invalid limit", body = ErrorBody), (status = 401, description = "No or wrong credentials", body = ErrorBody)))]
async fn list_calls(State(app): State<Arc<App>>, Query(params): Query<CallParams>) -> AdminResult {
    let limit = page_limit(params.limit, 100, 1000)?;
    let calls = filtered_calls(&app, &params, limit).await?;
    Ok(Json(
        json!({"calls": calls.iter().map(call_json).collect::<Vec<_>>()}),
    ))
}

/// Streams the CSV into the importer and answers with NDJSON: progress lines as rows are
/// written, then one line with the outcome (`done` or `failed`).
#[utoipa::path(post, path = "/admin/v1/import", tag = "users", security(("token" = []), ("session" = [])), request_body(content = String, content_type = "text/csv", description = "A header naming display_name and uris; one user per row"), responses((status = 200, description = "NDJSON: progress lines, then done or failed", content_type = "application/x-ndjson", body = String), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "No or wrong credentials", body = ErrorBody), (status = 403, description = "CSRF token missing, or a viewer", body = ErrorBody)))]
async fn import(State(app): State<Arc<App>>, body: Body) -> Response {
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
                app.registry_changed(summary.uris);
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

/// The columns of the CDR export, in order.
const CDR_COLUMNS: [&str; 12] = [
    "session_id",
    "from",
    "to",
    "caller_endpoint",
    "answered_by",
    "media",
    "state",
    "outcome_reason",
    "providers",
    "initiated_at",
    "answered_at",
    "ended_at",
];

/// A CSV field, quoted when it holds a comma, quote or line break (RFC 4180), and defused when
/// a spreadsheet would take it for a formula.
fn csv_field(text: &str) -> String {
    let text = if text.starts_with(['=', '+', '-', '@']) {
        format!("'{text}")
    } else {
        text.to_string()
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

fn time_field(ms: Option<i64>) -> String {
    ms.and_then(|ms| {
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
    })
    .and_then(|t| {
        t.format(&time::format_description::well_known::Rfc3339)
            .ok()
    })
    .unwrap_or_default()
}

/// Call detail records as CSV, newest first (times in RFC 3339, UTC).
#[utoipa::path(get, path = "/admin/v1/calls.csv", tag = "calls", security(("token" = []), ("session" = [])), params(CallParams), responses((status = 200, description = "A header line, then one record per call", content_type = "text/csv", body = String), (status = 400, description = "Invalid limit", body = ErrorBody), (status = 401, description = "No or wrong credentials", body = ErrorBody)))]
async fn calls_csv(
    State(app): State<Arc<App>>,
    Query(params): Query<CallParams>,
) -> Result<Response, AdminError> {
    let limit = page_limit(params.limit, 10_000, 100_000)?;
    let calls = filtered_calls(&app, &params, limit).await?;
    let mut csv = CDR_COLUMNS.join(",");
    csv.push_str("\r\n");
    for c in &calls {
        let fields = [
            c.session_id.clone(),
            c.caller_uri.clone(),
            c.callee_uri.clone(),
            c.caller_endpoint.clone(),
            c.answered_by.clone().unwrap_or_default(),
            c.media.join(" "),
            c.state.as_str().to_string(),
            c.reason.clone().unwrap_or_default(),
            c.providers.join(" "),
            time_field(Some(c.initiated_at)),
            time_field(c.answered_at),
            time_field(c.ended_at),
        ];
        let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        csv.push_str(&line.join(","));
        csv.push_str("\r\n");
    }
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"calls.csv\"",
            ),
        ],
        csv,
    )
        .into_response())
}

/// Calls in progress as server-sent events: an event `calls` (`{"calls": [...]}`, the
/// records as `GET /admin/v1/calls` has them) at once and whenever the set changes, read from
/// the database every second, so every replica's calls show.
#[utoipa::path(get, path = "/admin/v1/calls/live", tag = "calls", security(("token" = []), ("session" = [])), responses((status = 200, description = "text/event-stream of `calls` events", content_type = "text/event-stream", body = String), (status = 401, description = "No or wrong credentials", body = ErrorBody)))]
async fn live_calls(State(app): State<Arc<App>>) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let stream =
        futures_util::stream::unfold((app, None::<String>), |(app, mut last)| async move {
            let mut shutdown = app.shutdown.clone();
            loop {
                if *shutdown.borrow() {
                    return None;
                }
                let current = match app.db.calls_in_progress(500).await {
                    Ok(calls) => json!({"calls": calls.iter().map(call_json).collect::<Vec<_>>()})
                        .to_string(),
                    Err(e) => {
                        tracing::warn!(error = %e, "live calls: reading the database");
                        String::new()
                    }
                };
                if !current.is_empty() && last.as_deref() != Some(current.as_str()) {
                    last = Some(current.clone());
                    let event = Event::default().event("calls").data(current);
                    return Some((Ok::<_, std::convert::Infallible>(event), (app, last)));
                }
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                    _ = crate::shared::shutting_down(&mut shutdown) => return None,
                }
            }
        });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// The value below which `share` of `sorted` lies (nearest rank).
fn percentile(sorted: &[i64], share: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((share * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// Certificates expiring within this many days are flagged.
const CERTIFICATE_WARNING_DAYS: i64 = 30;

/// What the dashboard shows: health, counts, the last hour's calls per minute with their setup
/// latency, peers up and down, and certificates about to expire.
#[utoipa::path(get, path = "/admin/v1/dashboard", tag = "calls", security(("token" = []), ("session" = [])), responses((status = 200, description = "ready, users, active_endpoints, calls_now, minutes (minute, calls, answered, setup_p50_ms, setup_p95_ms), peers, certificates", body = Object), (status = 401, description = "No or wrong credentials", body = ErrorBody)))]
async fn dashboard(State(app): State<Arc<App>>) -> AdminResult {
    let now = crate::shared::now_ms();
    let hour_ago = now - 3_600_000;
    let first_minute = hour_ago - hour_ago % 60_000;
    let times = app.db.call_times(hour_ago, 200_000).await?;
    let mut minutes: Vec<(i64, u64, Vec<i64>)> = (0..=60)
        .map(|i| (first_minute + i * 60_000, 0, Vec::new()))
        .filter(|(m, _, _)| *m <= now)
        .collect();
    for (initiated, answered) in times {
        let index = ((initiated - first_minute) / 60_000) as usize;
        if let Some((_, calls, setups)) = minutes.get_mut(index) {
            *calls += 1;
            if let Some(answered) = answered {
                setups.push(answered - initiated);
            }
        }
    }
    let minutes: Vec<Value> = minutes
        .into_iter()
        .map(|(minute, calls, mut setups)| {
            setups.sort_unstable();
            json!({
                "minute": minute,
                "calls": calls,
                "answered": setups.len(),
                "setup_p50_ms": percentile(&setups, 0.5),
                "setup_p95_ms": percentile(&setups, 0.95),
            })
        })
        .collect();
    let peers = app.federation.as_ref().map(|fed| {
        let directory = fed.directory.current();
        let status = fed.peers.status(directory.as_deref(), &fed.provider_id);
        let down = status
            .iter()
            .filter(|p| p.breaker_open || p.last_error.is_some())
            .count();
        json!({"up": status.len() - down, "down": down})
    });
    let mut certificates = Vec::new();
    let mut certificate = |name: &str, not_after: i64| {
        let days_left = (not_after - now).div_euclid(86_400_000);
        certificates.push(json!({
            "name": name,
            "not_after": not_after,
            "days_left": days_left,
            "warning": days_left < CERTIFICATE_WARNING_DAYS,
        }));
    };
    if let Some(not_after) = app.ca.not_after_ms() {
        certificate("endpoint CA", not_after);
    }
    if let Some(fed) = &app.federation {
        // The federation identity keeps Unix seconds.
        certificate(
            "federation certificate",
            fed.identity.current().not_after * 1000,
        );
    }
    Ok(Json(json!({
        "ready": app.db.ping().await.is_ok() && !*app.shutdown.borrow(),
        "users": app.db.count_users().await?,
        "active_endpoints": app.db.count_active_endpoints().await?,
        "calls_now": app.db.count_calls_in_progress().await?,
        "minutes": minutes,
        "peers": peers,
        "certificates": certificates,
    })))
}

/// The TURN relay's live allocations with the payload bytes each carried, and their totals.
#[utoipa::path(get, path = "/admin/v1/relay", tag = "federation", security(("token" = []), ("session" = [])), responses((status = 200, description = "enabled, address, allocations (endpoint, relayed_address, created_at, bytes_to_peer, bytes_from_peer), total", body = Object), (status = 401, description = "No or wrong credentials", body = ErrorBody)))]
async fn relay_status(relay: Option<axum::Extension<Arc<crate::relay::Relay>>>) -> AdminResult {
    let Some(axum::Extension(relay)) = relay else {
        return Ok(Json(json!({"enabled": false})));
    };
    use std::sync::atomic::Ordering;
    let (mut to_peer, mut from_peer) = (0u64, 0u64);
    let allocations: Vec<Value> = relay
        .state
        .live_allocations()
        .iter()
        .map(|a| {
            let (to, from) = (
                a.to_peer.load(Ordering::Relaxed),
                a.from_peer.load(Ordering::Relaxed),
            );
            to_peer += to;
            from_peer += from;
            json!({
                "endpoint": a.endpoint,
                "relayed_address": a.relayed.to_string(),
                "created_at": a.created_at,
                "bytes_to_peer": to,
                "bytes_from_peer": from,
            })
        })
        .collect();
    Ok(Json(json!({
        "enabled": true,
        "address": relay.public_addr.to_string(),
        "total": {
            "allocations": allocations.len(),
            "bytes_to_peer": to_peer,
            "bytes_from_peer": from_peer,
        },
        "allocations": allocations,
    })))
}

const CALL_STATES: [&str; 6] = [
    "ringing",
    "answered",
    "rejected",
    "cancelled",
    "timeout",
    "ended",
];

/// The calls `params` asks for; an unknown state is refused rather than matching nothing.
async fn filtered_calls(
    app: &App,
    params: &CallParams,
    limit: i64,
) -> Result<Vec<CallRecord>, AdminError> {
    let state = params.state.as_deref().filter(|s| !s.is_empty());
    if let Some(state) = state {
        if !CALL_STATES.contains(&state) {
            return Err(AdminError::new(
                StatusCode::BAD_REQUEST,
                "invalid-field",
                format!("state must be one of {}", CALL_STATES.join(", ")),
            ));
        }
    }
    let party = params.party.as_deref().filter(|p| !p.is_empty());
    Ok(app
        .db
        .list_calls(params.before, state, party, limit)
        .await?)
}

/// The configuration in force, as `switchyard config defaults` names its keys, with the
/// password of a database URL masked (secrets themselves live in files the keys name).
#[utoipa::path(get, path = "/admin/v1/settings", tag = "operators", security(("token" = []), ("session" = [])), responses((status = 200, description = "The effective configuration", body = Object), (status = 401, description = "No or wrong credentials", body = ErrorBody)))]
async fn settings(State(app): State<Arc<App>>) -> AdminResult {
    let mut value = serde_json::to_value(&app.config).map_err(|e| {
        AdminError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
    })?;
    mask_secrets(&mut value);
    Ok(Json(value))
}

/// Masks what could hold a secret inline: the password of any URL, and any value under a key
/// naming a password.
fn mask_secrets(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, item) in map.iter_mut() {
                if key.contains("password") && item.is_string() {
                    *item = Value::String("********".into());
                } else {
                    mask_secrets(item);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(mask_secrets),
        Value::String(text) => {
            if let Ok(mut url) = reqwest::Url::parse(text) {
                if url.password().is_some() && url.set_password(Some("********")).is_ok() {
                    *text = url.to_string();
                }
            }
        }
        _ => {}
    }
}

/// A page size: `default` when not given, else 1 to `max`.
fn page_limit(limit: Option<i64>, default: i64, max: i64) -> Result<i64, AdminError> {
    let limit = limit.unwrap_or(default);
    if (1..=max).contains(&limit) {
        Ok(limit)
    } else {
        Err(AdminError::new(
            StatusCode::BAD_REQUEST,
            "invalid-field",
            format!("limit must be 1-{max}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked_and_the_rest_kept() {
        let mut value = json!({
            "database": {"url": "postgres://switchyard:hunter2@db.example:5432/sy"},
            "sip": {"password": "inline", "domains": ["a.test"]},
            "admin": {"token_file": "/var/lib/switchyard/admin-token"},
        });
        mask_secrets(&mut value);
        assert_eq!(
            value["database"]["url"],
            "postgres://switchyard:********@db.example:5432/sy"
        );
        assert_eq!(value["sip"]["password"], "********");
        assert_eq!(value["sip"]["domains"][0], "a.test");
        assert_eq!(
            value["admin"]["token_file"],
            "/var/lib/switchyard/admin-token"
        );
    }

    #[test]
    fn csv_fields_are_quoted_and_formulas_defused() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("=cmd()"), "'=cmd()");
        assert_eq!(csv_field("+1,2"), "\"'+1,2\"");
    }
}
