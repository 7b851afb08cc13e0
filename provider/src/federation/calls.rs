//! The Forwards this provider receives (`POST /federation/v1/initiate`, `accept`, `reject`,
//! `cancel`, `update`): read into typed messages once, with the sender's provider field checked
//! against the authenticated peer, and run through the call core (`switchyard_calls`), whose
//! originator's and answerer's flows keep the records, the replay log and the answers.

use std::sync::Arc;

use switchyard_calls::{CallError, Sender};
use switchyard_protocol::dict::Dict;
use switchyard_protocol::invitation::{
    AcceptForward, CancelForward, InitiateForward, RejectForward, UpdateForward,
};

use super::auth::AuthPeer;
use crate::app::App;
use crate::invitation::{core, spawn_deferred};
use crate::wire::ApiError;

fn sender(peer: &AuthPeer) -> Sender {
    Sender {
        provider_id: peer.provider_id.clone(),
        cert_der: peer.cert_der.clone(),
    }
}

pub async fn receive_initiate(
    app: &Arc<App>,
    peer: &AuthPeer,
    dict: &Dict,
) -> Result<Dict, ApiError> {
    let forward = InitiateForward::from_dict(dict, &app.canonicalizer, &peer.provider_id)
        .map_err(CallError::from)?;
    Ok(core(app).receive_initiate(&sender(peer), forward).await?)
}

pub async fn receive_accept(
    app: &Arc<App>,
    peer: &AuthPeer,
    dict: &Dict,
) -> Result<Dict, ApiError> {
    let forward = AcceptForward::from_dict(dict, &app.canonicalizer, &peer.provider_id)
        .map_err(CallError::from)?;
    let (answer, deferred) = core(app).receive_accept(&sender(peer), forward).await?;
    spawn_deferred(app, deferred);
    Ok(answer)
}

pub async fn receive_reject(
    app: &Arc<App>,
    peer: &AuthPeer,
    dict: &Dict,
) -> Result<Dict, ApiError> {
    let forward = RejectForward::from_dict(dict, &peer.provider_id).map_err(CallError::from)?;
    Ok(core(app).receive_reject(&sender(peer), forward).await?)
}

pub async fn receive_cancel(
    app: &Arc<App>,
    peer: &AuthPeer,
    dict: &Dict,
) -> Result<Dict, ApiError> {
    let forward = CancelForward::from_dict(dict, &peer.provider_id).map_err(CallError::from)?;
    Ok(core(app).receive_cancel(&sender(peer), forward).await?)
}

pub async fn receive_update(
    app: &Arc<App>,
    peer: &AuthPeer,
    dict: &Dict,
) -> Result<Dict, ApiError> {
    let forward = UpdateForward::from_dict(dict, &peer.provider_id).map_err(CallError::from)?;
    Ok(core(app).receive_update(&sender(peer), forward).await?)
}
