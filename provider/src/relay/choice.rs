//! Which relay serves a call when no direct path works, and credentials for it.
//!
//! The caller's provider chooses (`relay.calls_use`): its own relay (the default), the relay of
//! the callee's provider, or the federation-wide relay the discovery dictionary names
//! (`federation-relay`). The choice is sealed into the session state and travels in the Initiate
//! Forward (`relay-choice`); every Initiate and Accept Push names the provider it resolves to
//! (`relay-provider`). An endpoint always asks its own provider for credentials
//! (`POST /v1/relay-credentials`, optionally naming `relay-provider`); for another member's relay
//! the provider fetches them over the federation (`POST /federation/v1/relay-credentials`, mutual
//! TLS), and that relay counts the allocations of `<provider id>/<endpoint id>` against the same
//! quotas as its own endpoints', dropping them when the provider leaves the federation.
//!
//! When the callee's provider serves the call, the caller learns which relay that is only from
//! the Accept Push: it starts with direct candidates, then allocates and sends the new blob in
//! an Update.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Extension;
use switchyard_protocol::dict::Dict;
use switchyard_protocol::invitation::RelayChoice;

use super::{relay_disabled, Relay};
use crate::app::App;
use crate::auth::AuthEndpoint;
use crate::federation::auth::{federation_of, AuthPeer};
use crate::wire::{ApiError, DictBody, Reply};

/// The relay for a call an endpoint of this provider is about to place; None when it is known
/// only with the answer (the callee's provider's).
fn for_new_call(app: &App) -> Option<String> {
    match app.config.relay.calls_use {
        RelayChoice::CalleeProvider => None,
        choice => Some(choice.provider(
            &app.config.provider_id,
            "",
            federation_relay(app).as_deref(),
        )),
    }
}

fn federation_relay(app: &App) -> Option<String> {
    app.federation
        .as_ref()
        .and_then(|fed| fed.directory.current())
        .and_then(|directory| directory.federation_relay.clone())
}

/// Credentials at the relay an endpoint asks for (`relay-provider`), or at the one this
/// provider's choice gives for a new call.
async fn endpoint_credentials(
    app: &App,
    relay: Option<&Relay>,
    endpoint_id: &str,
    dict: &Dict,
) -> Result<Dict, ApiError> {
    let wanted = match dict.opt_str("relay-provider")? {
        Some(provider) => Some(provider.to_string()),
        None => for_new_call(app),
    };
    let Some(provider) = wanted else {
        return Ok(Dict::new().with("deferred", true));
    };
    let credentials = if provider == app.config.provider_id {
        relay.ok_or_else(relay_disabled)?.credentials(endpoint_id)
    } else {
        peer_credentials(app, &provider, endpoint_id).await?
    };
    Ok(credentials.with("relay-provider", provider.as_str()))
}

/// Credentials at a member's relay, fetched over the federation for one of our endpoints.
async fn peer_credentials(app: &App, provider: &str, endpoint_id: &str) -> Result<Dict, ApiError> {
    let fed = federation_of(app)?;
    let member = fed.member(provider).ok_or_else(|| {
        ApiError::field(
            "relay-provider",
            format!("`{provider}` is not a member of the federation"),
        )
    })?;
    if member.relay_addresses.is_empty() {
        return Err(ApiError::field(
            "relay-provider",
            format!("`{provider}` lists no relay in the discovery dictionary"),
        ));
    }
    let identity = fed.identity.current();
    let answer = fed
        .peers
        .request(
            &identity,
            &member,
            reqwest::Method::POST,
            "/federation/v1/relay-credentials",
            Some(&Dict::new().with("endpoint", endpoint_id)),
        )
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "relay-unavailable",
                format!("credentials at the relay of `{provider}`: {e}"),
            )
        })?;
    let bad = |e: switchyard_protocol::dict::DictError| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "relay-unavailable",
            format!("`{provider}` answered unusable relay credentials: {e}"),
        )
    };
    Ok(Dict::new()
        .with("username", answer.str("username").map_err(bad)?)
        .with("password", answer.str("password").map_err(bad)?)
        .with("ttl", answer.int("ttl").map_err(bad)?)
        .with("uris", answer.string_array("uris").map_err(bad)?)
        .with("realm", answer.str("realm").map_err(bad)?))
}

/// `POST /v1/relay-credentials`: short-lived TURN credentials for the calling endpoint, at the
/// relay named by `relay-provider` or the one this provider chooses for a new call;
/// `deferred` when that relay is known only with the answer.
pub async fn credentials_route(
    State(app): State<Arc<App>>,
    relay: Option<Extension<Arc<Relay>>>,
    auth: AuthEndpoint,
    body: DictBody,
) -> Reply {
    let relay = relay.map(|Extension(r)| r);
    let result = endpoint_credentials(&app, relay.as_deref(), &auth.endpoint.id, &body.dict).await;
    crate::wire::observe("relay-credentials", &result);
    Reply {
        encoding: body.encoding,
        result,
    }
}

/// `POST /federation/v1/relay-credentials`: credentials at this provider's relay for an endpoint
/// (`endpoint`, its id at the asking member).
pub async fn federation_route(
    State(app): State<Arc<App>>,
    peer: AuthPeer,
    relay: Option<Extension<Arc<Relay>>>,
    body: DictBody,
) -> Reply {
    let result = (|| {
        federation_of(&app)?;
        let endpoint = body.dict.str("endpoint")?;
        let valid = (1..=128).contains(&endpoint.len())
            && endpoint
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !valid {
            return Err(ApiError::field(
                "endpoint",
                "endpoint must be 1-128 characters of letters, digits, `-`, `_` and `.`",
            ));
        }
        let Some(Extension(relay)) = &relay else {
            return Err(relay_disabled());
        };
        Ok(relay.credentials(&super::auth::peer_principal(&peer.provider_id, endpoint)))
    })();
    crate::federation::auth::observe("relay-credentials", &peer.provider_id, &result);
    Reply {
        encoding: body.encoding,
        result,
    }
}
