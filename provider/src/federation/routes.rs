//! The paths peers call, on the federation listener (mutual TLS). Every request is checked
//! against the discovery dictionary in force: the client certificate (already verified against
//! the federation CA by TLS) must be the one the dictionary lists for a current member.

use std::sync::Arc;

use axum::extract::{FromRef, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use switchyard_protocol::dict::Dict;
use switchyard_protocol::invitation::ForwardAction;

use super::auth::{federation_of, observe, AuthPeer};
use crate::app::App;
use crate::wire::{dict_response, encoding_of, ApiError, BodyLimit, DictBody, Reply};

/// The federation router's state: the provider, whose request bodies are read with the
/// federation listener's limits rather than the endpoint API's.
#[derive(Clone)]
pub struct FederationState(pub Arc<App>);

impl FromRef<FederationState> for Arc<App> {
    fn from_ref(state: &FederationState) -> Self {
        state.0.clone()
    }
}

impl BodyLimit for FederationState {
    fn max_body_bytes(&self) -> usize {
        self.0.config.federation.max_body_bytes
    }

    fn body_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.0.config.federation.limits.body_timeout_seconds)
    }

    fn listener(&self) -> &'static str {
        "federation"
    }
}

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
        .with_state(FederationState(app))
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
    ($name:ident, $action:expr) => {
        async fn $name(State(app): State<Arc<App>>, peer: AuthPeer, body: DictBody) -> Reply {
            let result = match federation_of(&app) {
                Ok(_) => super::calls::receive(&app, &peer, $action, &body.dict).await,
                Err(e) => Err(e),
            };
            observe($action.as_str(), &peer.provider_id, &result);
            Reply {
                encoding: body.encoding,
                result,
            }
        }
    };
}

forward_route!(initiate, ForwardAction::Initiate);
forward_route!(accept, ForwardAction::Accept);
forward_route!(reject, ForwardAction::Reject);
forward_route!(cancel, ForwardAction::Cancel);
forward_route!(update, ForwardAction::Update);
