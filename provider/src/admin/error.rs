//! Admin errors: one JSON shape (`error`, `message`) for every refusal, the mapping of the
//! registry's, store's and operators' errors to it, and the JSON body extractor.

use std::sync::Arc;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::app::App;
use crate::db::StoreError;
use crate::operators::OperatorError;
use crate::registry::RegistryError;

pub struct AdminError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl AdminError {
    pub(super) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
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

pub(super) type AdminResult = Result<Json<Value>, AdminError>;

/// JSON bodies with errors in our format (400 naming the problem, 413 past the limit).
pub struct JsonBody<T>(pub T);

impl<T: serde::de::DeserializeOwned> axum::extract::FromRequest<Arc<App>> for JsonBody<T> {
    type Rejection = AdminError;

    async fn from_request(req: Request, app: &Arc<App>) -> Result<Self, AdminError> {
        let limit = app.config.admin.max_body_bytes;
        let timeout = std::time::Duration::from_secs(app.config.admin.limits.body_timeout_seconds);
        let bytes = tokio::time::timeout(timeout, axum::body::to_bytes(req.into_body(), limit))
            .await
            .map_err(|_| {
                metrics::counter!("switchyard_http_timeouts_total", "listener" => "admin", "phase" => "body")
                    .increment(1);
                AdminError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "body-timeout",
                    format!("the body did not arrive within {} s", timeout.as_secs()),
                )
            })?
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

/// Every admin error: a machine-readable code and a sentence for people.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// `invalid-field`, `not-found`, `conflict`, `unauthorized`, `csrf`, `read-only`, …
    pub error: String,
    pub message: String,
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

/// A page size: `default` when not given, else 1 to `max`.
pub(super) fn page_limit(limit: Option<i64>, default: i64, max: i64) -> Result<i64, AdminError> {
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
