//! Dictionaries on the endpoint API: reading request bodies in the client's encoding, and
//! answering, errors included, in the same encoding.

use axum::body::Body;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use switchyard_protocol::dict::{Dict, DictError, Encoding};

use switchyard_calls::{CallError, Refusal, RefusalCode};

use crate::db::StoreError;

/// An error answer: HTTP status, stable `error` code, human `message`, and the field at fault.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    pub fn field(field: &str, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "invalid-field",
            message: message.into(),
            field: Some(field.to_string()),
        }
    }

    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::FORBIDDEN, code, message)
    }

    pub fn internal(error: impl std::fmt::Display) -> Self {
        tracing::error!(%error, "internal error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the provider's logs",
        )
    }

    pub fn to_dict(&self) -> Dict {
        let mut dict = Dict::new()
            .with("error", self.code)
            .with("message", self.message.as_str());
        if let Some(field) = &self.field {
            dict.insert("field", field.as_str());
        }
        dict
    }
}

impl From<DictError> for ApiError {
    fn from(e: DictError) -> Self {
        match &e {
            DictError::UnsupportedMediaType(_) => ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                e.to_string(),
            ),
            DictError::Malformed { .. } => {
                ApiError::new(StatusCode::BAD_REQUEST, "malformed-body", e.to_string())
            }
            _ => {
                let mut err =
                    ApiError::new(StatusCode::BAD_REQUEST, "invalid-field", e.to_string());
                err.field = e.field().map(str::to_string);
                if matches!(e, DictError::MissingField(_)) {
                    err.code = "missing-field";
                }
                err
            }
        }
    }
}

/// The one table from the protocol's refusal codes to HTTP statuses. The SIP edge maps the same
/// codes to SIP statuses (`sip::status`).
pub fn http_status(code: RefusalCode) -> StatusCode {
    match code {
        RefusalCode::InvalidField | RefusalCode::MissingField | RefusalCode::MalformedBody => {
            StatusCode::BAD_REQUEST
        }
        RefusalCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        RefusalCode::NotAuthorized
        | RefusalCode::ProviderMismatch
        | RefusalCode::StaleForward
        | RefusalCode::BadAttestation
        | RefusalCode::EndpointCaMismatch => StatusCode::FORBIDDEN,
        RefusalCode::UnknownPeer | RefusalCode::UnknownSession => StatusCode::NOT_FOUND,
        RefusalCode::DuplicateSession
        | RefusalCode::AlreadyAnswered
        | RefusalCode::NotAnswered
        | RefusalCode::NotYetRinging
        | RefusalCode::ReplayedForward => StatusCode::CONFLICT,
        RefusalCode::CallEnded => StatusCode::GONE,
        RefusalCode::OriginRefused | RefusalCode::UpdateUndelivered => StatusCode::BAD_GATEWAY,
        RefusalCode::PeersUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        RefusalCode::PeersUnreachable | RefusalCode::OriginUnreachable => {
            StatusCode::GATEWAY_TIMEOUT
        }
    }
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> Self {
        ApiError {
            status: http_status(refusal.code),
            code: refusal.code.as_str(),
            message: refusal.message,
            field: refusal.field,
        }
    }
}

impl From<CallError> for ApiError {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Refused(refusal) => refusal.into(),
            CallError::Store(e) => ApiError::internal(e),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            StoreError::NotFound(m) => ApiError::new(StatusCode::NOT_FOUND, "not-found", m),
            other => ApiError::internal(other),
        }
    }
}

/// Counts an endpoint request by outcome and logs a refusal.
pub(crate) fn observe(action: &'static str, result: &Result<Dict, ApiError>) {
    let outcome = match result {
        Ok(_) => "ok",
        Err(e) => e.code,
    };
    metrics::counter!("switchyard_requests_total", "action" => action, "outcome" => outcome)
        .increment(1);
    if let Err(e) = result {
        tracing::info!(action, status = e.status.as_u16(), error = e.code, message = %e.message, "request refused");
    }
}

/// The encoding a client speaks: its Content-Type, else its Accept, else XML property lists.
pub fn encoding_of(headers: &HeaderMap) -> Encoding {
    let get = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    [get(header::CONTENT_TYPE), get(header::ACCEPT)]
        .into_iter()
        .flatten()
        .find_map(|v| {
            v.split(',')
                .find_map(|part| Encoding::from_content_type(Some(part.trim())).ok())
        })
        .unwrap_or(Encoding::Plist)
}

pub fn dict_response(status: StatusCode, encoding: Encoding, dict: &Dict) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, encoding.content_type())],
        dict.encode(encoding),
    )
        .into_response()
}

/// A handler's answer, encoded as the request was.
pub struct Reply {
    pub encoding: Encoding,
    pub result: Result<Dict, ApiError>,
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        match self.result {
            Ok(dict) => dict_response(StatusCode::OK, self.encoding, &dict),
            Err(e) => dict_response(e.status, self.encoding, &e.to_dict()),
        }
    }
}

/// A request body read as a dictionary, within the configured size limit.
pub struct DictBody {
    pub encoding: Encoding,
    pub dict: Dict,
}

/// What a router's state tells [`DictBody`]: the largest body it reads, how long the client has
/// to send it, and the listener it serves (for the timeout metric).
pub trait BodyLimit {
    fn max_body_bytes(&self) -> usize;
    fn body_timeout(&self) -> std::time::Duration;
    fn listener(&self) -> &'static str;
}

impl<T: BodyLimit> BodyLimit for Arc<T> {
    fn max_body_bytes(&self) -> usize {
        T::max_body_bytes(self)
    }

    fn body_timeout(&self) -> std::time::Duration {
        T::body_timeout(self)
    }

    fn listener(&self) -> &'static str {
        T::listener(self)
    }
}

impl<S: BodyLimit + Send + Sync> FromRequest<S> for DictBody {
    type Rejection = Reply;

    async fn from_request(req: Request<Body>, state: &S) -> Result<Self, Self::Rejection> {
        let reply_encoding = encoding_of(req.headers());
        let fail = |e: ApiError| Reply {
            encoding: reply_encoding,
            result: Err(e),
        };
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap_or("invalid"))
            .map(str::to_string);
        let encoding =
            Encoding::from_content_type(content_type.as_deref()).map_err(|e| fail(e.into()))?;
        let limit = state.max_body_bytes();
        let timeout = state.body_timeout();
        let bytes = tokio::time::timeout(timeout, axum::body::to_bytes(req.into_body(), limit))
            .await
            .map_err(|_| {
                metrics::counter!("switchyard_http_timeouts_total", "listener" => state.listener(), "phase" => "body")
                    .increment(1);
                fail(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "body-timeout",
                    format!("the body did not arrive within {} s", timeout.as_secs()),
                ))
            })?
            .map_err(|_| {
                fail(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body-too-large",
                    format!("the body exceeds {limit} bytes"),
                ))
            })?;
        let dict = Dict::decode(&bytes, encoding).map_err(|e| fail(e.into()))?;
        Ok(DictBody { encoding, dict })
    }
}

#[cfg(test)]
mod refusal_table {
    use super::*;
    use switchyard_calls::refusal::RefusalClass;

    /// The originator tells a peer's refusals apart by class; the class the core gives a code
    /// must be the one its HTTP status says, or a Switchyard peer and the harness would differ.
    #[test]
    fn every_code_has_the_status_its_class_says() {
        for code in RefusalCode::ALL {
            let class = match http_status(*code) {
                StatusCode::NOT_FOUND => RefusalClass::NotFound,
                StatusCode::CONFLICT => RefusalClass::Conflict,
                StatusCode::GONE => RefusalClass::Gone,
                _ => RefusalClass::Other,
            };
            assert_eq!(code.class(), class, "{code}");
        }
    }
}
