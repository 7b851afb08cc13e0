//! The Forwards this provider receives (`POST /federation/v1/initiate`, `accept`, `reject`,
//! `cancel`, `update`), after `routes` authenticated the peer: run through the call core
//! (`switchyard_calls`), which reads each Forward once and whose originator's and answerer's
//! flows keep the records, the replay log and the answers.

use std::sync::Arc;

use switchyard_calls::Sender;
use switchyard_protocol::dict::Dict;
use switchyard_protocol::invitation::ForwardAction;

use super::auth::AuthPeer;
use crate::app::App;
use crate::invitation::{core, spawn_deferred};
use crate::wire::ApiError;

pub async fn receive(
    app: &Arc<App>,
    peer: &AuthPeer,
    action: ForwardAction,
    dict: &Dict,
) -> Result<Dict, ApiError> {
    let sender = Sender {
        provider_id: peer.provider_id.clone(),
        cert_der: peer.cert_der.clone(),
        endpoint_ca_sha256: peer.endpoint_ca_sha256.clone(),
    };
    let (answer, deferred) = core(app)
        .receive_forward(&sender, action, dict, &app.canonicalizer)
        .await;
    spawn_deferred(app, deferred);
    Ok(answer?)
}
