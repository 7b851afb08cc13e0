//! The paths peers call, on the federation listener (mutual TLS). Every request is checked
//! against the discovery dictionary in force: the client certificate (already verified against
//! the federation CA by TLS) must be the one the dictionary lists for a current member.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use switchyard_protocol::dict::Dict;
use switchyard_protocol::pki;

use super::identity::unix_now;
use super::Federation;
use crate::app::App;
use crate::auth::PeerCertificate;
use crate::wire::{dict_response, encoding_of, ApiError, DictBody, Reply};

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/federation/v1/bloom", get(bloom))
        .route("/federation/v1/bloom/notify", post(notify))
        .route("/federation/v1/initiate", post(initiate))
        .route("/federation/v1/accept", post(accept))
        .route("/federation/v1/reject", post(reject))
        .route("/federation/v1/cancel", post(cancel))
        .route("/federation/v1/update", post(update))
        .route(
            "/federation/v1/relay-credentials",
            post(crate::relay::choice::federation_route),
        )
        .fallback(not_found)
        .with_state(app)
}

async fn not_found(headers: HeaderMap) -> Reply {
    Reply {
        encoding: encoding_of(&headers),
        result: Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "no such federation path",
        )),
    }
}

/// The member provider on the other end of the connection.
pub struct AuthPeer {
    pub provider_id: String,
    /// Its certificate (DER), which verifies its attestations.
    pub cert_der: Vec<u8>,
}

pub fn federation_of(app: &App) -> Result<&Arc<Federation>, ApiError> {
    app.federation.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "federation-disabled",
            "this provider is not in a federation",
        )
    })
}

fn authenticate(app: &App, parts: &Parts) -> Result<AuthPeer, ApiError> {
    let fed = federation_of(app)?;
    let cert = parts
        .extensions
        .get::<PeerCertificate>()
        .and_then(|p| p.0.clone())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "certificate-required",
                "present this provider's federation certificate (mutual TLS)",
            )
        })?;
    let identity = fed.identity.current();
    let peer = pki::verify_provider_cert(&cert, &identity.ca_der, unix_now())
        .map_err(|e| ApiError::forbidden("untrusted-certificate", e.to_string()))?;
    let directory = fed.directory.current().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no-directory",
            "this provider has no valid discovery dictionary yet",
        )
    })?;
    let member = directory.member(&peer.provider_id).ok_or_else(|| {
        ApiError::forbidden(
            "not-a-member",
            format!(
                "provider `{}` is not a member in discovery dictionary version {}",
                peer.provider_id, directory.version
            ),
        )
    })?;
    if member.certificate_sha256 != peer.sha256_fingerprint {
        return Err(ApiError::forbidden(
            "certificate-mismatch",
            format!(
                "the certificate presented for `{}` ({}) is not the one the discovery dictionary lists ({})",
                peer.provider_id, peer.sha256_fingerprint, member.certificate_sha256
            ),
        ));
    }
    Ok(AuthPeer {
        provider_id: peer.provider_id,
        cert_der: cert.to_vec(),
    })
}

impl FromRequestParts<Arc<App>> for AuthPeer {
    type Rejection = Reply;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &Arc<App>,
    ) -> Result<Self, Self::Rejection> {
        authenticate(app, parts).map_err(|e| {
            tracing::info!(status = e.status.as_u16(), error = e.code, message = %e.message, "federation request refused");
            metrics::counter!("switchyard_federation_requests_total", "action" => "auth", "outcome" => e.code)
                .increment(1);
            Reply {
                encoding: encoding_of(&parts.headers),
                result: Err(e),
            }
        })
    }
}

/// Counts a request from a peer by outcome and logs a refusal.
pub(crate) fn observe(action: &'static str, peer: &str, result: &Result<Dict, ApiError>) {
    let outcome = match result {
        Ok(_) => "ok",
        Err(e) => e.code,
    };
    metrics::counter!("switchyard_federation_requests_total", "action" => action, "outcome" => outcome)
        .increment(1);
    if let Err(e) = result {
        tracing::info!(action, peer, status = e.status.as_u16(), error = e.code, message = %e.message, "federation request refused");
    }
}

#[derive(Deserialize)]
struct BloomQuery {
    since: Option<String>,
}

async fn bloom(
    State(app): State<Arc<App>>,
    _peer: AuthPeer,
    headers: HeaderMap,
    Query(query): Query<BloomQuery>,
) -> Response {
    let encoding = encoding_of(&headers);
    let result = (|| {
        let fed = federation_of(&app)?;
        let since = match query.since.as_deref() {
            None => None,
            Some(raw) => Some(raw.parse::<u64>().map_err(|_| {
                ApiError::field(
                    "since",
                    format!("since must be a generation number, not `{raw}`"),
                )
            })?),
        };
        fed.own.update_since(since).ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "filter-not-ready",
                "this provider's filter is being built; try again shortly",
            )
        })
    })();
    match result {
        Ok((dict, form)) => {
            let response = dict_response(StatusCode::OK, encoding, &dict);
            let bytes = dict.encode(encoding).len() as u64;
            metrics::counter!("switchyard_bloom_sent_bytes_total", "form" => form).increment(bytes);
            metrics::counter!("switchyard_bloom_sent_total", "form" => form).increment(1);
            response
        }
        Err(e) => dict_response(e.status, encoding, &e.to_dict()),
    }
}

async fn notify(State(app): State<Arc<App>>, peer: AuthPeer, body: DictBody) -> Reply {
    let result = (|| {
        let fed = federation_of(&app)?;
        let claimed = body.dict.str("provider-id")?;
        if claimed != peer.provider_id {
            return Err(ApiError::forbidden(
                "provider-mismatch",
                format!(
                    "a notification from `{}` cannot speak for `{claimed}`",
                    peer.provider_id
                ),
            ));
        }
        let generation = body.dict.int("generation")?;
        if generation < 0 {
            return Err(ApiError::field(
                "generation",
                "generation must not be negative",
            ));
        }
        fed.pull_soon(&peer.provider_id);
        Ok(Dict::new().with("provider-id", fed.provider_id.as_str()))
    })();
    observe("notify", &peer.provider_id, &result);
    Reply {
        encoding: body.encoding,
        result,
    }
}

macro_rules! forward_route {
    ($name:ident, $action:literal, $handler:path) => {
        async fn $name(State(app): State<Arc<App>>, peer: AuthPeer, body: DictBody) -> Reply {
            let result = match federation_of(&app) {
                Ok(_) => $handler(&app, &peer, &body.dict).await,
                Err(e) => Err(e),
            };
            observe($action, &peer.provider_id, &result);
            Reply {
                encoding: body.encoding,
                result,
            }
        }
    };
}

forward_route!(initiate, "initiate", super::calls::receive_initiate);
forward_route!(accept, "accept", super::calls::receive_accept);
forward_route!(reject, "reject", super::calls::receive_reject);
forward_route!(cancel, "cancel", super::calls::receive_cancel);
forward_route!(update, "update", super::calls::receive_update);
