//! Starting a call's leg at this edge: a phone's INVITE, once authenticated, becomes the
//! gateway endpoint's Initiate Request ([`outgoing`]); an Initiate Push for a gateway rings the
//! account's phones ([`incoming`]).

use std::sync::Arc;

use switchyard_protocol::dict::Dict;
use switchyard_protocol::invitation::{InitiateRequest, SessionId};

use super::accounts::gateway_of;
use super::calls::{leg_key, InviteKey};
use super::dialog::{Dialog, ServerInvite};
use super::handle::EdgeHandle;
use super::leg::{Leg, Role};
use super::message::{self, Inbound};
use super::sdp;
use super::session::Session;
use super::status::{refusal_of, Refusal};
use super::uri::{callee_of, canonical_aor, name_addr};
use crate::db::records::SipAccount;
use crate::invitation;

/// The phone's INVITE `key`, authenticated as `account`, becomes an Initiate Request; its call
/// task runs from then on.
pub async fn outgoing(
    handle: &Arc<EdgeHandle>,
    account: SipAccount,
    inbound: Box<Inbound>,
    key: InviteKey,
) -> Result<(), Refusal> {
    let from = inbound.fields.first("From").unwrap_or("");
    let from_aor = name_addr(from).and_then(|(uri, _)| canonical_aor(&uri));
    if from_aor.as_deref() != Some(account.aor.as_str()) {
        return Err(Refusal(
            403,
            "From Is Not The Authenticated Account".into(),
            vec![],
        ));
    }
    let offer = sdp::check(&inbound.request.body).map_err(|e| {
        Refusal(
            if inbound.request.body.is_empty() {
                488
            } else {
                400
            },
            if inbound.request.body.is_empty() {
                "An INVITE Needs An SDP Offer".to_string()
            } else {
                format!("Bad SDP: {e}")
            },
            vec![],
        )
    })?;
    let app = &handle.app;
    let callee = callee_of(app, &inbound.request_uri).await?;
    let gateway = gateway_of(app, &account).await?;
    let anchor = handle
        .open_anchor(&[inbound.source.ip()], inbound.source, &offer)
        .await?;
    if let Some(anchor) = &anchor {
        anchor.set_phone(&offer);
    }
    let sent_sdp = anchor.as_ref().map_or(offer.clone(), |a| a.rewrite(&offer));
    let self_uri = gateway
        .uris
        .first()
        .cloned()
        .ok_or_else(|| Refusal(403, "The Account's User Has No URI".into(), vec![]))?;
    let session = format!("sip-{}", crate::shared::random_token(16));
    let request = InitiateRequest {
        session_id: SessionId::parse(&session)
            .map_err(|_| Refusal(500, "Server Internal Error".into(), vec![]))?,
        self_uri: self_uri.clone(),
        self_token: gateway.endpoint.push_token.clone(),
        self_blob: sdp::blob_of(&sent_sdp),
        peer_uri: callee.clone(),
        media: sdp::media_kinds(&offer),
    };
    let aor = account.aor.clone();
    // Registered before the Initiate, whose pushes may come back at once.
    let leg_id = leg_key(&session, &gateway.endpoint.id);
    let session = Session::new(app.clone(), session, gateway);
    let mut leg = Leg::new(handle.clone(), leg_id, Role::Caller, account, session);
    let initiated = invitation::core(app)
        .initiate(&invitation::requester(&leg.session.gateway), request)
        .await;
    let (state, rung) = match initiated {
        Ok(response) => (response.state, response.rung),
        Err(e) => {
            handle.calls.remove_leg(leg.id());
            tracing::info!(error = %e, "SIP call's Initiate refused");
            return Err(refusal_of(&e));
        }
    };
    let dialog = Dialog::of_invite(&inbound, message::new_tag(6));
    handle.calls.add_dialog(
        dialog.call_id.clone(),
        dialog.local_tag.clone(),
        leg.id().to_string(),
    );
    handle.calls.set_invite_leg(&key, leg.id());
    tracing::info!(session = %leg.session.id, caller = %self_uri, %callee, %aor, "SIP call placed");
    metrics::counter!("switchyard_sip_calls_total", "direction" => "from-phone").increment(1);
    leg.session.self_uri = self_uri;
    leg.session.peer_uri = callee;
    leg.session.state = state;
    leg.dialog = Some(dialog);
    leg.invite = Some(ServerInvite {
        inbound,
        key,
        answered: false,
    });
    leg.session.anchor = anchor;
    // A local callee with no endpoint to ring is told by a Reject Push instead.
    if rung > 0 {
        leg.send_provisional(180, "Ringing").await;
    }
    tokio::spawn(leg.run());
    Ok(())
}

/// An Initiate Push for `account`'s gateway: the account's phones are rung. A reservation made
/// for the leg when the push was handed over in memory is taken up, or given up if the call
/// cannot start.
pub async fn incoming(handle: &Arc<EdgeHandle>, account: SipAccount, push: Dict) {
    let session = match push.str("session-id") {
        Ok(s) => s.to_string(),
        Err(_) => return,
    };
    let gateway = match gateway_of(&handle.app, &account).await {
        Ok(g) => g,
        Err(_) => {
            if let Some(endpoint) = &account.endpoint_id {
                handle.calls.release(&leg_key(&session, endpoint));
            }
            return;
        }
    };
    let leg_id = leg_key(&session, &gateway.endpoint.id);
    let session = Session::new(handle.app.clone(), session, gateway);
    let mut leg = Leg::new(handle.clone(), leg_id, Role::Callee, account, session);
    leg.session.self_uri = push.str("self-uri").unwrap_or_default().to_string();
    leg.session.peer_uri = push.str("peer-uri").unwrap_or_default().to_string();
    leg.session.state = push.str("state").unwrap_or_default().to_string();
    leg.session.peer_token = push.str("peer-token").ok().map(str::to_string);
    leg.session.peer_sdp = push
        .opt_data("peer-blob")
        .ok()
        .flatten()
        .and_then(|b| sdp::sdp_of(&b));
    metrics::counter!("switchyard_sip_calls_total", "direction" => "to-phone").increment(1);
    leg.ring().await;
    tokio::spawn(leg.run());
}
