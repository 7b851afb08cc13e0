//! A call leg's side in the invitation protocol: the session as its gateway endpoint sees it
//! (its URIs, the peer's token, the latest state token, the peer's SDP and the media anchor),
//! and the gateway's Requests about it (Accept, Reject, Cancel, Update) through the call core.

use std::sync::Arc;

use switchyard_calls::CallError;
use switchyard_protocol::dict::Dict;
use switchyard_protocol::invitation::{
    AcceptRequest, CancelRequest, RejectReason, RejectRequest, SessionId, UpdateRequest,
};

use super::anchor::Anchor;
use super::sdp;
use crate::app::App;
use crate::auth::AuthEndpoint;
use crate::invitation;

pub struct Session {
    app: Arc<App>,
    /// The session id.
    pub id: String,
    pub gateway: AuthEndpoint,
    pub self_uri: String,
    pub peer_uri: String,
    pub state: String,
    pub peer_token: Option<String>,
    /// The other side's latest SDP (as it sent it), and how far the edge moved its version on.
    pub peer_sdp: Option<String>,
    pub version_step: u64,
    /// The call's media anchored here (see [`super::anchor`]).
    pub anchor: Option<Anchor>,
}

impl Session {
    /// The session `id` of `gateway`; the caller fills in what it knows of the call.
    pub fn new(app: Arc<App>, id: String, gateway: AuthEndpoint) -> Session {
        Session {
            app,
            id,
            gateway,
            self_uri: String::new(),
            peer_uri: String::new(),
            state: String::new(),
            peer_token: None,
            peer_sdp: None,
            version_step: 0,
            anchor: None,
        }
    }

    /// The base of an invitation-protocol request about this call.
    fn session_id(&self) -> Result<SessionId, CallError> {
        Ok(SessionId::parse(&self.id)?)
    }

    /// The gateway's Accept (or, with a reason, Reject) of the call.
    fn answer(&self, self_blob: Vec<u8>) -> Result<AcceptRequest, CallError> {
        Ok(AcceptRequest {
            session_id: self.session_id()?,
            self_uri: self.self_uri.clone(),
            self_token: self.gateway.endpoint.push_token.clone(),
            self_blob,
            peer_uri: self.peer_uri.clone(),
            peer_token: self.peer_token.clone().unwrap_or_default(),
            state: self.state.clone(),
        })
    }

    /// What every push tells of the call: the peer's SDP, its token, the state token. Returns
    /// the SDP the push's blob carries, if it carries one.
    pub fn take_push(&mut self, push: &Dict) -> Option<String> {
        let blob_sdp = match push.opt_data("peer-blob") {
            Ok(Some(blob)) => sdp::sdp_of(&blob),
            _ => None,
        };
        if let Some(sdp) = &blob_sdp {
            if self.peer_sdp.as_deref() != Some(sdp.as_str()) {
                self.set_peer_sdp(sdp.clone());
            }
        }
        if let Ok(token) = push.str("peer-token") {
            self.peer_token = Some(token.to_string());
        }
        if let Ok(state) = push.str("state") {
            self.state = state.to_string();
        }
        blob_sdp
    }

    /// The SDP to show the phone: the other side's, its version moved on by the edge's own
    /// revisions.
    pub fn peer_sdp_for_phone(&self, direction: Option<&str>) -> Option<String> {
        let sdp = self.peer_sdp.as_ref()?;
        let sdp = match direction {
            Some(d) => sdp::revised(sdp, self.version_step, d),
            None if self.version_step == 0 => sdp.clone(),
            None => sdp::revised(sdp, self.version_step, sdp::direction(sdp)),
        };
        Some(self.anchored(sdp))
    }

    /// An SDP of either side as the other sees it: moved to the anchor when there is one.
    pub fn anchored(&self, sdp: String) -> String {
        match &self.anchor {
            Some(anchor) => anchor.rewrite(&sdp),
            None => sdp,
        }
    }

    /// Takes the other side's new SDP (and its addresses, for the anchor).
    pub fn set_peer_sdp(&mut self, sdp: String) {
        if let Some(anchor) = &self.anchor {
            anchor.set_remote(&sdp);
        }
        self.peer_sdp = Some(sdp);
    }

    /// The gateway accepts the call with the phone's answer (`blob`).
    pub async fn accept(&self, blob: Vec<u8>) -> Result<(), CallError> {
        let request = self.answer(blob)?;
        let core = invitation::core(&self.app);
        let (result, deferred) = core
            .accept(&invitation::requester(&self.gateway), request)
            .await;
        invitation::spawn_deferred(&self.app, deferred);
        result.map(|_| ())
    }

    /// The gateway rejects the call; a refusal is logged.
    pub async fn reject(&self, reason: RejectReason, text: &str) {
        let rejected = async {
            let request = RejectRequest {
                answer: self.answer(Vec::new())?,
                reason,
                reason_text: Some(text.to_string()),
            };
            let core = invitation::core(&self.app);
            core.reject(&invitation::requester(&self.gateway), request)
                .await
        };
        if let Err(e) = rejected.await {
            tracing::info!(session = %self.id, error = %e, "SIP edge: Reject refused");
        }
    }

    /// Ends the call on the protocol side (Cancel while ringing, hang-up once answered).
    pub async fn cancel(&self) {
        let cancelled = async {
            let request = CancelRequest {
                session_id: self.session_id()?,
                self_uri: self.self_uri.clone(),
                self_token: self.gateway.endpoint.push_token.clone(),
                peer_uri: self.peer_uri.clone(),
                state: self.state.clone(),
            };
            let core = invitation::core(&self.app);
            core.cancel(&invitation::requester(&self.gateway), request)
                .await
        };
        if let Err(e) = cancelled.await {
            tracing::info!(session = %self.id, error = %e, "SIP edge: Cancel refused");
        }
    }

    /// The phone's new SDP (hold, resume, a new address) goes to the other side as an Update.
    pub async fn update(&self, sdp: &str) {
        let sdp = self.anchored(sdp.to_string());
        let updated = async {
            let request = UpdateRequest {
                session_id: self.session_id()?,
                self_uri: self.self_uri.clone(),
                self_token: self.gateway.endpoint.push_token.clone(),
                peer_uri: self.peer_uri.clone(),
                self_blob: sdp::blob_of(&sdp),
                state: self.state.clone(),
            };
            let core = invitation::core(&self.app);
            core.update(&invitation::requester(&self.gateway), request)
                .await
        };
        if let Err(e) = updated.await {
            tracing::info!(session = %self.id, error = %e, "SIP edge: Update refused");
        }
    }
}
