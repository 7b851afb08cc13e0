//! The narrow handle a call leg holds on the edge: the app, the SIP configuration, the calls
//! table and the sockets, and what a leg does through them: send to a phone, run a client
//! transaction (RFC 3261 §17.1), open a media anchor. It knows no edge, so the legs and the
//! gateway's push intake do not point back at the edge (`SipEdge`).

use std::sync::Arc;
use std::time::Instant;

use rsip::Method;

use super::anchor::Anchor;
use super::calls::{Calls, Stage};
use super::outbound::{Flow, OutRequest, T1, T2, TRANSACTION_TIMEOUT};
use super::sdp;
use super::sockets::{local_ip_toward, Sockets};
use super::status::Refusal;
use crate::app::App;
use crate::config::SipConfig;

pub struct EdgeHandle {
    pub app: Arc<App>,
    pub config: SipConfig,
    pub calls: Calls,
    pub sockets: Arc<Sockets>,
}

impl EdgeHandle {
    /// Sends `bytes` over `flow` ([`Sockets::send`]).
    pub async fn send(&self, flow: Flow, bytes: &[u8]) {
        self.sockets.send(flow, bytes).await
    }

    /// Where the edge says it is, for the Via and Contact of what it sends over `flow`.
    pub fn sent_by(&self, flow: Flow) -> String {
        self.sockets.sent_by(flow)
    }

    /// Starts a client transaction: sends `request` to `flow`, retransmits it on UDP (Timers A
    /// and E), and ends it at its final response or its timeout (Timer B or F). The responses go
    /// to the call `leg` as transaction `tx`, through [`Calls::client_response`]; the task holds
    /// the request only until the final one.
    pub fn start_client(self: &Arc<Self>, flow: Flow, request: &OutRequest, leg: &str, tx: u32) {
        let branch = &request.branch;
        let key = if request.method == Method::Cancel {
            format!("{branch} CANCEL")
        } else {
            branch.clone()
        };
        let invite = request.method == Method::Invite;
        let reliable = flow.transport.is_stream();
        let progress = self
            .calls
            .add_client(key.clone(), leg, tx, invite, reliable);
        let bytes = request.bytes();
        let handle = self.clone();
        tokio::spawn(async move {
            handle.send(flow, &bytes).await;
            let start = Instant::now();
            let deadline = start + TRANSACTION_TIMEOUT;
            let mut interval = T1;
            let mut next = (!reliable).then(|| start + interval);
            loop {
                let wake = next.map_or(deadline, |n| n.min(deadline));
                tokio::select! {
                    () = progress.changed() => match progress.stage() {
                        Stage::Final => return,
                        // An INVITE's provisional response ends its retransmissions (Timer A);
                        // another request's slows them to T2 (RFC 3261 §17.1.2.2).
                        Stage::Provisional if invite => next = None,
                        Stage::Provisional if next.is_some() => interval = T2,
                        Stage::Provisional | Stage::Sent => {}
                    },
                    () = tokio::time::sleep_until(wake.into()) => {
                        let now = Instant::now();
                        if now >= deadline {
                            handle.calls.time_out_client(&key);
                            return;
                        }
                        handle.send(flow, &bytes).await;
                        interval = if invite { interval * 2 } else { (interval * 2).min(T2) };
                        next = Some(now + interval);
                    }
                }
            }
        });
    }

    /// Anchors the media of a call whose offer is `offer` when `sip.anchor_media` says so, the
    /// phone's packets accepted from `phone_ips`; `toward` picks the media address when the edge
    /// listens on every interface.
    pub async fn open_anchor(
        &self,
        phone_ips: &[std::net::IpAddr],
        toward: std::net::SocketAddr,
        offer: &str,
    ) -> Result<Option<Anchor>, Refusal> {
        let anchored = match self.config.anchor_media {
            crate::config::AnchorMedia::Always => true,
            crate::config::AnchorMedia::Never => false,
            crate::config::AnchorMedia::Auto => !sdp::has_ice(offer),
        };
        if !anchored {
            return Ok(None);
        }
        // The other side's description, from another provider, has not met `sdp::check`.
        if sdp::streams(offer).len() > sdp::MAX_STREAMS {
            return Err(Refusal(488, "Too Many Media Streams".into(), vec![]));
        }
        let bind = self.config.udp_listen.ip();
        let advertise = self
            .config
            .media_address
            .unwrap_or(if bind.is_unspecified() {
                local_ip_toward(toward)
            } else {
                bind
            });
        match Anchor::open(bind, advertise, phone_ips, offer).await {
            Ok(anchor) => Ok(Some(anchor)),
            Err(e) => {
                tracing::warn!(error = %e, "SIP edge: no sockets to anchor media");
                Err(Refusal(503, "No Media Ports".into(), vec![]))
            }
        }
    }
}
