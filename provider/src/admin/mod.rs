//! The operators' API (JSON; the bearer token, or an operator's session cookie with its CSRF
//! token) plus `/healthz`, `/readyz` and `/metrics`. Every change is written to the audit log.

mod access;
mod calls;
mod error;
mod operators;
mod system;
mod users;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::header;
use axum::middleware::{self};
use axum::response::{IntoResponse, Response};
use axum::Router;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::app::App;
use access::authenticate;
use error::ErrorBody;

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
    let (schemas, paths, import_route) = utoipa_axum::routes!(users::import);
    let api = OpenApiRouter::new()
        .routes(utoipa_axum::routes!(users::add_user, users::list_users))
        .routes(utoipa_axum::routes!(users::get_user, users::remove_user))
        .routes(utoipa_axum::routes!(users::add_uri))
        .routes(utoipa_axum::routes!(users::remove_uri))
        .routes(utoipa_axum::routes!(users::provisioning_code))
        .routes(utoipa_axum::routes!(users::list_endpoints))
        .routes(utoipa_axum::routes!(users::revoke_endpoint))
        .routes(utoipa_axum::routes!(
            users::add_sip_account,
            users::list_sip_accounts
        ))
        .routes(utoipa_axum::routes!(users::remove_sip_account))
        .routes(utoipa_axum::routes!(calls::list_calls))
        .routes(utoipa_axum::routes!(calls::calls_csv))
        .routes(utoipa_axum::routes!(calls::live_calls))
        .routes(utoipa_axum::routes!(system::dashboard))
        .routes(utoipa_axum::routes!(system::settings))
        .routes(utoipa_axum::routes!(system::relay_status))
        .routes(utoipa_axum::routes!(system::federation_status))
        .routes(utoipa_axum::routes!(system::federation_resync))
        .routes((
            schemas,
            paths,
            import_route.layer(DefaultBodyLimit::disable()),
        ))
        .routes(utoipa_axum::routes!(operators::whoami, operators::logout))
        .routes(utoipa_axum::routes!(
            operators::add_operator,
            operators::list_operators
        ))
        .routes(utoipa_axum::routes!(operators::remove_operator))
        .routes(utoipa_axum::routes!(operators::audit_log))
        .route_layer(middleware::from_fn_with_state(app, authenticate));
    OpenApiRouter::with_openapi(AdminApi::openapi())
        .routes(utoipa_axum::routes!(system::healthz))
        .routes(utoipa_axum::routes!(system::ready))
        .routes(utoipa_axum::routes!(system::metrics_text))
        .routes(utoipa_axum::routes!(openapi_document))
        // Logging in is the one admin request without credentials.
        .routes(utoipa_axum::routes!(operators::login))
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
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(
                crate::operators::SESSION_COOKIE,
            ))),
        );
    }
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
