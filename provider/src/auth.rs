//! Who is calling the endpoint API: the endpoint whose identity certificate (mutual TLS) the
//! connection presented, looked up on every request so a revocation takes effect at once.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::StatusCode;
use rustls_pki_types::CertificateDer;

use crate::app::App;
use crate::db::records::EndpointRecord;
use crate::pki::fingerprint;
use crate::wire::{encoding_of, ApiError, Reply};

/// The leaf certificate the TLS client presented, if any; set per connection by the server.
#[derive(Clone, Debug, Default)]
pub struct PeerCertificate(pub Option<Arc<CertificateDer<'static>>>);

pub struct AuthEndpoint {
    pub endpoint: EndpointRecord,
    /// The canonical URIs the endpoint may act as.
    pub uris: Vec<String>,
}

impl AuthEndpoint {
    pub fn owns(&self, uri: &str) -> bool {
        self.uris.iter().any(|u| u == uri)
    }
}

impl FromRequestParts<Arc<App>> for AuthEndpoint {
    type Rejection = Reply;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &Arc<App>,
    ) -> Result<Self, Self::Rejection> {
        let encoding = encoding_of(&parts.headers);
        let fail = |e: ApiError| Reply {
            encoding,
            result: Err(e),
        };
        let cert = parts
            .extensions
            .get::<PeerCertificate>()
            .and_then(|p| p.0.clone())
            .ok_or_else(|| {
                fail(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "certificate-required",
                    "present the endpoint's identity certificate (mutual TLS)",
                ))
            })?;
        let (endpoint, uris) = app
            .db
            .endpoint_by_fingerprint(&fingerprint(&cert))
            .await
            .map_err(|e| fail(e.into()))?
            .ok_or_else(|| {
                fail(ApiError::forbidden(
                    "endpoint-revoked",
                    "this endpoint's certificate is revoked or unknown",
                ))
            })?;
        Ok(AuthEndpoint { endpoint, uris })
    }
}
