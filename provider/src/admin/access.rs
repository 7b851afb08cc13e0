//! Who makes an admin request and what they may do: the bearer token or an operator's session
//! (with its CSRF token), viewers read-only, and every change written to the audit log.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::AdminError;
use crate::app::App;
use crate::db::records::AuditEntry;
use crate::operators::{self, Role};

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

pub(super) fn unauthorized() -> AdminError {
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

pub(super) fn session_id(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(operators::session_id_in)
}

/// What a principal may not do: a cookie-authenticated change without the session's CSRF token,
/// and any change by a viewer (but logging out).
pub(super) fn refusal(
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
pub(super) async fn authenticate(
    State(app): State<Arc<App>>,
    mut req: Request,
    next: Next,
) -> Response {
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

pub(super) async fn audit(app: &App, actor: &str, method: &Method, path: &str, status: StatusCode) {
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
