//! The "directory" role: a server at the federation's bootstrap URI that publishes the signed
//! discovery dictionary a file holds (written by `switchyard federation sign`).

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use switchyard_protocol::dict::{Dict, Encoding};

use crate::wire::{dict_response, encoding_of, ApiError};

/// The directory role: `GET /federation/v1/directory` answers with the signed dictionary in
/// `file`, in the encoding the client asks for.
pub fn directory_router(file: PathBuf) -> Router {
    Router::new()
        .route("/federation/v1/directory", get(serve_directory))
        .fallback(|headers: HeaderMap| async move {
            let error = ApiError::new(
                StatusCode::NOT_FOUND,
                "not-found",
                "this server publishes only /federation/v1/directory",
            );
            dict_response(error.status, encoding_of(&headers), &error.to_dict())
        })
        .with_state(Arc::new(file))
}

async fn serve_directory(State(file): State<Arc<PathBuf>>, headers: HeaderMap) -> Response {
    let encoding = encoding_of(&headers);
    let envelope = std::fs::read(file.as_path())
        .map_err(|e| e.to_string())
        .and_then(|bytes| {
            // `switchyard federation sign` writes a property list, or JSON with --json.
            let encoding = if bytes.trim_ascii_start().first() == Some(&b'{') {
                Encoding::Json
            } else {
                Encoding::Plist
            };
            Dict::decode(&bytes, encoding).map_err(|e| e.to_string())
        });
    match envelope {
        Ok(envelope) => dict_response(StatusCode::OK, encoding, &envelope),
        Err(message) => {
            tracing::error!(file = %file.display(), %message, "cannot serve the discovery dictionary");
            let error = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "directory-unavailable",
                "the discovery dictionary cannot be read; see the directory's logs",
            );
            dict_response(error.status, encoding, &error.to_dict())
        }
    }
}
