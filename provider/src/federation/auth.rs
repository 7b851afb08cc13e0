//! Who is calling the federation listener: the member whose certificate the mutual-TLS
//! connection presented, checked against the discovery dictionary in force on every request, and
//! the count and log of what each peer request was answered.

use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::StatusCode;
use switchyard_protocol::dict::Dict;

use super::identity::unix_now;
use super::Federation;
use crate::app::App;
use crate::auth::PeerCertificate;
use crate::wire::{encoding_of, ApiError, Reply};

/// The member provider on the other end of the connection.
pub struct AuthPeer {
    pub provider_id: String,
    /// Its certificate (DER), which verifies its attestations.
    pub cert_der: Vec<u8>,
    /// Its endpoint CA's fingerprint, as the dictionary in force pins it.
    pub endpoint_ca_sha256: String,
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
    let peer = identity
        .peers
        .verify(&cert, unix_now())
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
        endpoint_ca_sha256: member.endpoint_ca_sha256.clone(),
    })
}

impl<S: Send + Sync> FromRequestParts<S> for AuthPeer
where
    Arc<App>: FromRef<S>,
{
    type Rejection = Reply;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let app = Arc::<App>::from_ref(state);
        authenticate(&app, parts).map_err(|e| {
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
