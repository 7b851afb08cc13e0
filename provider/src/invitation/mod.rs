//! The invitation protocol's shell in the daemon: Requests from endpoints (`/v1/initiate`,
//! `accept`, `reject`, `cancel`, `update`) and the ring timeout sweep, read into typed messages
//! once, run through the call core (`switchyard_calls`) over this daemon's ports, and answered
//! as dictionaries. The Forwards between providers have their shell in `federation::calls`.

pub mod ports;

use std::sync::Arc;

use switchyard_calls::ports::Requester;
use switchyard_calls::{CallError, Core, Deferred};
use switchyard_protocol::dict::Dict;
use switchyard_protocol::invitation::{
    AcceptRequest, CancelRequest, InitiateRequest, RejectRequest, UpdateRequest,
};

use crate::app::App;
use crate::auth::AuthEndpoint;
use crate::db::calls::endpoint_of;
use crate::wire::ApiError;
use ports::AppPorts;

/// The call core over this provider's ports, for one message.
pub fn core(app: &App) -> Core<AppPorts<'_>> {
    Core::new(AppPorts::new(app))
}

pub fn requester(auth: &AuthEndpoint) -> Requester {
    Requester {
        endpoint: endpoint_of(&auth.endpoint),
        uris: auth.uris.clone(),
    }
}

/// Runs what a flow left for after its answer, without holding the answer back.
pub fn spawn_deferred(app: &Arc<App>, work: Option<Deferred>) {
    if let Some(work) = work {
        let app = app.clone();
        tokio::spawn(async move { core(&app).run_deferred(work).await });
    }
}

pub async fn initiate(app: &Arc<App>, auth: &AuthEndpoint, dict: &Dict) -> Result<Dict, ApiError> {
    let request = InitiateRequest::from_dict(dict, &app.canonicalizer).map_err(CallError::from)?;
    let response = core(app).initiate(&requester(auth), request).await?;
    Ok(response.to_dict())
}

pub async fn accept(app: &Arc<App>, auth: &AuthEndpoint, dict: &Dict) -> Result<Dict, ApiError> {
    let request = AcceptRequest::from_dict(dict, &app.canonicalizer).map_err(CallError::from)?;
    let session_id = request.session_id.clone();
    let (result, deferred) = core(app).accept(&requester(auth), request).await;
    spawn_deferred(app, deferred);
    let state = result?;
    Ok(Dict::new()
        .with("session-id", session_id.as_str())
        .with("state", state))
}

pub async fn reject(app: &Arc<App>, auth: &AuthEndpoint, dict: &Dict) -> Result<Dict, ApiError> {
    let request = RejectRequest::from_dict(dict, &app.canonicalizer).map_err(CallError::from)?;
    let session_id = request.answer.session_id.clone();
    let remaining = core(app).reject(&requester(auth), request).await?;
    Ok(Dict::new()
        .with("session-id", session_id.as_str())
        .with("remaining", remaining))
}

pub async fn cancel(app: &Arc<App>, auth: &AuthEndpoint, dict: &Dict) -> Result<Dict, ApiError> {
    let request = CancelRequest::from_dict(dict, &app.canonicalizer).map_err(CallError::from)?;
    let session_id = request.session_id.clone();
    core(app).cancel(&requester(auth), request).await?;
    Ok(Dict::new().with("session-id", session_id.as_str()))
}

pub async fn update(app: &Arc<App>, auth: &AuthEndpoint, dict: &Dict) -> Result<Dict, ApiError> {
    let request = UpdateRequest::from_dict(dict, &app.canonicalizer).map_err(CallError::from)?;
    let session_id = request.session_id.clone();
    core(app).update(&requester(auth), request).await?;
    Ok(Dict::new().with("session-id", session_id.as_str()))
}

/// Ends answered calls past `invitation.max_call_duration_seconds`.
pub async fn end_overlong_calls(app: &Arc<App>) -> Result<usize, CallError> {
    let answered_before =
        crate::shared::now_ms().saturating_sub(app.call_settings.max_call_duration_ms);
    let overlong = app
        .db
        .overlong_calls(answered_before, 100)
        .await
        .map_err(|e| CallError::Store(Box::new(e)))?;
    core(app).end_overlong(overlong).await
}

/// Ends ringing calls whose deadline passed, with a Cancel Push to both sides.
pub async fn expire_overdue_calls(app: &Arc<App>) -> Result<usize, CallError> {
    let overdue = app
        .db
        .overdue_calls(100)
        .await
        .map_err(|e| CallError::Store(Box::new(e)))?;
    core(app).expire(overdue).await
}
