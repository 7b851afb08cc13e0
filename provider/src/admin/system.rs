//! The provider as a whole: liveness, readiness and metrics, the dashboard, the federation and
//! relay status, and the configuration in force.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::error::{AdminError, AdminResult, ErrorBody};
use crate::app::App;

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
pub(super) async fn federation_status(State(app): State<Arc<App>>) -> AdminResult {
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
                "consecutive_failures": p.consecutive_failures,
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
            "estimated_false_positive_rate": f.estimated_false_positive_rate,
        })),
        "peers": peers,
    })))
}

/// Fetches the discovery dictionary, rebuilds this provider's filter and pulls every peer's, now.
#[utoipa::path(post, path = "/admin/v1/federation/resync", tag = "federation", security(("token" = []), ("session" = [])), responses((status = 200, description = "directory_error, version", body = Object), (status = 404, description = "Federation disabled", body = ErrorBody), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "No or wrong credentials", body = ErrorBody), (status = 403, description = "CSRF token missing, or a viewer", body = ErrorBody)))]
pub(super) async fn federation_resync(State(app): State<Arc<App>>) -> AdminResult {
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
pub(super) async fn healthz() -> &'static str {
    "ok\n"
}

#[utoipa::path(get, path = "/readyz", tag = "health", responses((status = 200, description = "The database answers and the provider is not stopping", body = String, content_type = "text/plain"), (status = 503, description = "Not ready", body = String, content_type = "text/plain")))]
pub(super) async fn ready(State(app): State<Arc<App>>) -> Response {
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
pub(super) async fn metrics_text(State(app): State<Arc<App>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
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
pub(super) async fn dashboard(State(app): State<Arc<App>>) -> AdminResult {
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
pub(super) async fn relay_status(
    relay: Option<axum::Extension<Arc<crate::relay::Relay>>>,
) -> AdminResult {
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

/// The configuration in force, as `switchyard config defaults` names its keys, with the
/// password of a database URL masked (secrets themselves live in files the keys name).
#[utoipa::path(get, path = "/admin/v1/settings", tag = "operators", security(("token" = []), ("session" = [])), responses((status = 200, description = "The effective configuration", body = Object), (status = 401, description = "No or wrong credentials", body = ErrorBody)))]
pub(super) async fn settings(State(app): State<Arc<App>>) -> AdminResult {
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
}
