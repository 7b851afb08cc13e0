//! A call leg: the task that owns the phone's side of one call at this edge, fed with the
//! gateway endpoint's pushes, the responses to its client transactions and the phone's
//! in-dialog requests ([`Event`]). The phone called out ([`Role::Caller`]: the edge answers its
//! INVITE) or is called ([`Role::Callee`]: the edge forks INVITEs to its contacts, [`Fork`]);
//! either way the other side is the invitation protocol, through [`Session`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use rsip::{Header, Method};
use switchyard_protocol::dict::Dict;
use switchyard_protocol::invitation::RejectReason;
use tokio::sync::oneshot;

use super::calls::{Event, Events};
use super::dialog::{Dialog, Retransmit, ServerInvite};
use super::fork::Fork;
use super::handle::EdgeHandle;
use super::message::{self, tag_of, Inbound, InboundResponse, Transport};
use super::outbound::{new_branch, transport_param, Flow, OutRequest, T1, T2};
use super::sdp;
use super::session::Session;
use super::status::{reason_of_status, status_of_reason};
use super::uri::sip_form;
use crate::db::records::SipAccount;

/// Which side of the call the phone is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The phone called: the edge is its user agent server.
    Caller,
    /// The phone is called: the edge forked INVITEs to its contacts.
    Callee,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Ringing,
    Answered,
    Ended,
}

pub struct Leg {
    handle: Arc<EdgeHandle>,
    /// Its [`super::calls::leg_key`].
    leg_id: String,
    role: Role,
    account: SipAccount,
    /// The call on the protocol side.
    pub session: Session,
    phase: Phase,
    pub dialog: Option<Dialog>,
    /// The phone's INVITE, when the phone called.
    pub invite: Option<ServerInvite>,
    /// The INVITEs to the phone's contacts, when it is called.
    fork: Fork,
    next_tx: u32,
    /// Client transactions still open (BYE, re-INVITE, CANCEL), by id.
    requests: HashMap<u32, OutRequest>,
    retransmit: Option<Retransmit>,
    events: Events,
}

impl Leg {
    /// A call task's state, registered under `leg_id` so that pushes and requests find it from
    /// now on (in the channel a reservation made for it, if one did); the caller fills in what
    /// it knows of the call.
    pub fn new(
        handle: Arc<EdgeHandle>,
        leg_id: String,
        role: Role,
        account: SipAccount,
        session: Session,
    ) -> Leg {
        let events = handle.calls.add_leg(&leg_id);
        Leg {
            handle,
            leg_id,
            role,
            account,
            session,
            phase: Phase::Ringing,
            dialog: None,
            invite: None,
            fork: Fork::default(),
            next_tx: 0,
            requests: HashMap::new(),
            retransmit: None,
            events,
        }
    }

    pub fn id(&self) -> &str {
        &self.leg_id
    }

    fn contact(&self, flow: Flow) -> String {
        format!(
            "<sip:{}@{};transport={}>",
            self.session.id,
            self.handle.sent_by(flow),
            flow.transport.as_str()
        )
    }

    fn via(&self, flow: Flow) -> String {
        format!(
            "SIP/2.0/{} {}",
            transport_param(flow.transport),
            self.handle.sent_by(flow)
        )
    }

    fn tx_id(&mut self) -> u32 {
        self.next_tx += 1;
        self.next_tx
    }

    /// Starts `request` as one of the leg's client transactions.
    fn start_request(&mut self, flow: Flow, request: OutRequest) {
        let tx = self.tx_id();
        self.handle.start_client(flow, &request, &self.leg_id, tx);
        self.requests.insert(tx, request);
    }

    /// Rings every contact of the account with the caller's SDP.
    pub async fn ring(&mut self) {
        let Some(offer) = self.session.peer_sdp.clone() else {
            self.reject(
                RejectReason::UnsupportedMedia,
                "the caller's media blob holds no SDP offer, which a SIP phone needs",
            )
            .await;
            return;
        };
        let contacts = match self
            .handle
            .app
            .db
            .sip_contacts(&self.account.aor, crate::shared::now_ms())
            .await
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "SIP edge: reading contacts");
                Vec::new()
            }
        };
        if contacts.is_empty() {
            self.reject(
                RejectReason::Unavailable,
                "no SIP phone of the account is registered",
            )
            .await;
            return;
        }
        let flows: Vec<Flow> = contacts
            .iter()
            .filter_map(|c| Flow::of_contact(&c.transport, &c.source))
            .collect();
        let phone_ips: Vec<std::net::IpAddr> = flows.iter().map(|f| f.addr.ip()).collect();
        if let Some(first) = flows.first() {
            match self
                .handle
                .open_anchor(&phone_ips, first.addr, &offer)
                .await
            {
                Ok(anchor) => {
                    self.session.anchor = anchor;
                    self.session.set_peer_sdp(offer.clone());
                }
                Err(_) => {
                    self.reject(
                        RejectReason::Unavailable,
                        "no sockets to anchor the call's media",
                    )
                    .await;
                    return;
                }
            }
        }
        let offer = self.session.anchored(offer);
        let domain = self
            .account
            .aor
            .rsplit_once('@')
            .map(|(_, d)| d.to_string())
            .unwrap_or_default();
        let local_tag = message::new_tag(6);
        let call_id = format!("{}@{}", message::new_tag(9), domain);
        let from = format!(
            "{};tag={local_tag}",
            sip_form(&self.session.peer_uri, &domain)
        );
        let to = format!("<{}>", self.account.aor);
        self.handle
            .calls
            .add_dialog(call_id.clone(), local_tag.clone(), self.leg_id.clone());
        for contact in contacts {
            let Some(flow) = Flow::of_contact(&contact.transport, &contact.source) else {
                continue;
            };
            let request = OutRequest {
                method: Method::Invite,
                uri: contact.contact.clone(),
                via: self.via(flow),
                branch: new_branch(),
                from: from.clone(),
                to: to.clone(),
                call_id: call_id.clone(),
                cseq: 1,
                route: Vec::new(),
                contact: Some(self.contact(flow)),
                sdp: Some(offer.clone()),
            };
            let tx = self.tx_id();
            self.handle.start_client(flow, &request, &self.leg_id, tx);
            self.fork.add(tx, flow, request);
        }
        self.dialog = Some(Dialog {
            call_id,
            local: from,
            local_tag,
            remote: to,
            remote_target: String::new(),
            route: Vec::new(),
            local_cseq: 1,
            remote_cseq: 0,
            flow: self.fork.first_flow().unwrap_or(Flow {
                transport: Transport::Udp,
                addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            }),
        });
        if self.fork.is_empty() {
            self.reject(
                RejectReason::Unavailable,
                "no registered contact can be reached",
            )
            .await;
        }
    }

    async fn reject(&mut self, reason: RejectReason, text: &str) {
        self.session.reject(reason, text).await;
        self.phase = Phase::Ended;
    }

    pub async fn run(mut self) {
        let mut tick = tokio::time::interval(T1 / 2);
        loop {
            let done = self.phase == Phase::Ended
                && self.retransmit.is_none()
                && self.requests.is_empty()
                && self.fork.settled();
            if done {
                break;
            }
            tokio::select! {
                event = self.events.recv() => {
                    let Some(event) = event else { break };
                    self.on_event(event).await;
                }
                _ = tick.tick() => self.on_tick().await,
            }
        }
        self.finish();
    }

    fn finish(&mut self) {
        self.handle
            .calls
            .finish(&self.leg_id, self.dialog.as_ref().map(Dialog::key));
        if let Some(invite) = self.invite.take() {
            self.handle.calls.forget_invite_later(invite.key);
        }
        tracing::debug!(session = %self.session.id, "SIP call task done");
    }

    async fn on_tick(&mut self) {
        let Some(r) = &mut self.retransmit else {
            return;
        };
        let now = Instant::now();
        if now >= r.give_up {
            let answered_call = r.answers_call;
            self.retransmit = None;
            if answered_call && self.phase == Phase::Answered {
                tracing::info!(session = %self.session.id, "SIP phone never acknowledged the 200 OK: hanging up");
                self.session.cancel().await;
                self.send_bye().await;
                self.phase = Phase::Ended;
            }
            return;
        }
        if now >= r.next {
            let bytes = r.bytes.clone();
            r.interval = (r.interval * 2).min(T2);
            r.next = now + r.interval;
            if let Some(dialog) = &self.dialog {
                self.handle.send(dialog.flow, &bytes).await;
            }
        }
    }

    async fn on_event(&mut self, event: Event) {
        match event {
            Event::Push(push) => self.on_push(push).await,
            Event::Response(tx, response) => self.on_response(tx, response).await,
            Event::Timeout(tx) => self.on_timeout(tx).await,
            Event::Request(inbound, reply) => self.on_phone_request(inbound, reply).await,
        }
    }

    /// Answers the phone's INVITE (a final response), and keeps sending it on UDP until it is
    /// acknowledged.
    async fn answer_invite(&mut self, status: u16, reason: &str, sdp: Option<&str>) {
        let dialog = self.dialog.as_ref().expect("a phone's call has a dialog");
        let (flow, tag, contact) = (
            dialog.flow,
            dialog.local_tag.clone(),
            self.contact(dialog.flow),
        );
        let Some(invite) = &mut self.invite else {
            return;
        };
        let Some((bytes, cseq)) = invite.answer(&tag, contact, status, reason, sdp) else {
            return;
        };
        let key = invite.key.clone();
        self.handle.send(flow, &bytes).await;
        self.handle.calls.remember_response(&key, &bytes);
        if !flow.transport.is_stream() {
            self.retransmit = Some(Retransmit::new(bytes, cseq, status < 300));
        }
    }

    pub async fn send_provisional(&mut self, status: u16, reason: &str) {
        let (Some(invite), Some(dialog)) = (&self.invite, &self.dialog) else {
            return;
        };
        let contact = self.contact(dialog.flow);
        let Some(bytes) = invite.provisional(&dialog.local_tag, contact, status, reason) else {
            return;
        };
        self.handle.calls.remember_response(&invite.key, &bytes);
        self.handle.send(dialog.flow, &bytes).await;
    }

    async fn on_push(&mut self, push: Dict) {
        let action = push.str("action").unwrap_or_default().to_string();
        let blob_sdp = self.session.take_push(&push);
        match (self.role, action.as_str(), self.phase) {
            (Role::Caller, "accept", Phase::Ringing) => {
                match blob_sdp {
                    Some(answer) => {
                        self.phase = Phase::Answered;
                        let answer = self.session.anchored(answer);
                        self.answer_invite(200, "OK", Some(&answer)).await;
                        tracing::info!(session = %self.session.id, "SIP call answered");
                    }
                    None => {
                        // Answered by an endpoint whose media the phone cannot use.
                        self.answer_invite(488, "Answered Without SDP", None).await;
                        self.session.cancel().await;
                        self.phase = Phase::Ended;
                    }
                }
            }
            (Role::Caller, "reject", Phase::Ringing) => {
                let (status, reason) = status_of_reason(push.str("reason").unwrap_or(""));
                self.answer_invite(status, reason, None).await;
                self.phase = Phase::Ended;
            }
            (Role::Caller, "cancel", Phase::Ringing) => {
                let (status, reason) = match push.str("reason").unwrap_or("") {
                    "timeout" => (480, "No Answer"),
                    _ => (487, "Request Terminated"),
                };
                self.answer_invite(status, reason, None).await;
                self.phase = Phase::Ended;
            }
            (Role::Callee, "cancel", Phase::Ringing) => {
                self.cancel_branches();
                self.phase = Phase::Ended;
            }
            (_, "cancel", Phase::Answered) => {
                self.send_bye().await;
                self.phase = Phase::Ended;
            }
            (_, "update", Phase::Answered) => self.send_reinvite().await,
            (_, "update", Phase::Ringing) => {}
            (role, action, phase) => {
                tracing::debug!(session = %self.session.id, ?role, action, ?phase, "SIP edge: push ignored");
            }
        }
    }

    /// CANCELs the forks still ringing (those with no provisional response yet, once they have
    /// one).
    fn cancel_branches(&mut self) {
        for (flow, cancel) in self.fork.cancel_pending() {
            self.start_request(flow, cancel);
        }
    }

    async fn send_in_dialog(&mut self, method: Method, sdp: Option<String>) {
        let Some(dialog) = &mut self.dialog else {
            return;
        };
        let Some(request) = dialog.next_request(method, sdp) else {
            return;
        };
        let flow = dialog.flow;
        let mut request = OutRequest {
            via: self.via(flow),
            ..request
        };
        if request.method == Method::Invite {
            request.contact = Some(self.contact(flow));
        }
        self.start_request(flow, request);
    }

    async fn send_bye(&mut self) {
        self.send_in_dialog(Method::Bye, None).await;
    }

    /// The other side's new SDP (an Update) goes to the phone as a re-INVITE.
    async fn send_reinvite(&mut self) {
        let Some(sdp) = self.session.peer_sdp_for_phone(None) else {
            return;
        };
        self.send_in_dialog(Method::Invite, Some(sdp)).await;
    }

    async fn on_timeout(&mut self, tx: u32) {
        if let Some(request) = self.requests.remove(&tx) {
            if request.method == Method::Bye || request.method == Method::Invite {
                tracing::info!(session = %self.session.id, method = %request.method, "SIP phone did not answer an in-dialog request");
            }
            return;
        }
        if self.fork.timed_out(tx) {
            self.branch_failed().await;
        }
    }

    async fn on_response(&mut self, tx: u32, response: InboundResponse) {
        if let Some(request) = self.requests.get(&tx).cloned() {
            if response.status >= 200 {
                self.requests.remove(&tx);
                if request.method == Method::Invite {
                    self.ack_in_dialog(&request, &response).await;
                    if response.status >= 300 {
                        let failed = request.ack_of_failure(&response);
                        self.handle
                            .send(self.dialog.as_ref().expect("dialog").flow, &failed.bytes())
                            .await;
                    }
                }
                if request.method == Method::Bye || response.status == 481 {
                    self.phase = Phase::Ended;
                }
            }
            return;
        }
        if !self.fork.has(tx) {
            return;
        }
        let status = response.status;
        if status < 200 {
            if let Some((flow, cancel)) = self.fork.provisional(tx) {
                self.start_request(flow, cancel);
            }
            return;
        }
        if status >= 300 {
            if let Some((flow, ack, first)) = self.fork.failed(tx, &response) {
                self.handle.send(flow, &ack.bytes()).await;
                if first {
                    self.branch_failed().await;
                }
            }
            return;
        }
        // A 2xx: this contact answered (or repeats its 200, which is acknowledged again).
        let Some((request, flow, retransmitted)) = self.fork.answered(tx, status) else {
            return;
        };
        self.on_phone_answer(request, response, flow, retransmitted)
            .await;
    }

    /// A 2xx from a contact the fork rang: the first answers the call, the others are hung up.
    async fn on_phone_answer(
        &mut self,
        request: OutRequest,
        response: InboundResponse,
        flow: Flow,
        retransmitted: bool,
    ) {
        let won = !retransmitted && self.phase == Phase::Ringing;
        if retransmitted {
            let to = response
                .fields
                .first("To")
                .unwrap_or(&request.to)
                .to_string();
            if self.dialog.as_ref().and_then(|d| tag_of(&d.remote)) == tag_of(&to) {
                self.ack_in_dialog(&request, &response).await;
            }
            return;
        }
        if !won {
            // Another contact answered first, or the call ended: this one is hung up.
            let loser = Dialog::of_answer(&request, &response, flow);
            let ack = loser.ack(&request, self.via(loser.flow));
            self.handle.send(flow, &ack.bytes()).await;
            let bye = OutRequest {
                method: Method::Bye,
                branch: new_branch(),
                cseq: request.cseq + 1,
                sdp: None,
                contact: None,
                ..ack
            };
            self.start_request(flow, bye);
            return;
        }
        let dialog = Dialog::of_answer(&request, &response, flow);
        self.dialog = Some(dialog);
        self.ack_in_dialog(&request, &response).await;
        self.phase = Phase::Answered;
        let answer = sdp::check(&response.body).ok();
        let Some(answer) = answer else {
            tracing::info!(session = %self.session.id, "SIP phone answered without SDP: hanging up");
            self.reject(
                RejectReason::UnsupportedMedia,
                "the SIP phone answered without SDP",
            )
            .await;
            self.send_bye().await;
            return;
        };
        if let Some(anchor) = &self.session.anchor {
            anchor.restrict_phone(&[flow.addr.ip()]);
            anchor.set_phone(&answer);
        }
        let answer = self.session.anchored(answer);
        match self.session.accept(sdp::blob_of(&answer)).await {
            Ok(()) => tracing::info!(session = %self.session.id, "SIP phone answered"),
            Err(e) => {
                tracing::info!(session = %self.session.id, error = %e, "SIP edge: Accept refused: hanging up");
                self.send_bye().await;
                self.phase = Phase::Ended;
            }
        }
        self.cancel_branches();
    }

    /// The ACK of a 2xx to the edge's INVITE (a new transaction, RFC 3261 §13.2.2.4).
    async fn ack_in_dialog(&mut self, request: &OutRequest, response: &InboundResponse) {
        if response.status >= 300 {
            return;
        }
        let Some(dialog) = &self.dialog else {
            return;
        };
        let ack = dialog.ack(request, self.via(dialog.flow));
        self.handle.send(dialog.flow, &ack.bytes()).await;
    }

    /// A fork failed; once all have, the call is rejected with the best of their answers.
    async fn branch_failed(&mut self) {
        if self.phase != Phase::Ringing {
            return;
        }
        let Some(status) = self.fork.failure() else {
            return;
        };
        let reason = reason_of_status(status);
        self.reject(reason, &format!("the SIP phone answered {status}"))
            .await;
    }

    async fn on_phone_request(
        &mut self,
        inbound: Box<Inbound>,
        reply: Option<oneshot::Sender<Vec<u8>>>,
    ) {
        let tag = self
            .dialog
            .as_ref()
            .map(|d| d.local_tag.clone())
            .unwrap_or_default();
        let answer = |status: u16, reason: &str, extra: Vec<Header>, body: &str| {
            message::response_with_body(
                &inbound.request,
                inbound.source,
                status,
                reason,
                &tag,
                extra,
                body.as_bytes(),
            )
        };
        match inbound.method {
            Method::Ack => {
                let cseq = message::cseq(&inbound.request).map_or(0, |(n, _)| n);
                if self.retransmit.as_ref().is_some_and(|r| r.cseq == cseq) {
                    self.retransmit = None;
                }
                if let Some(invite) = &self.invite {
                    self.handle.calls.acknowledge_invite(&invite.key);
                }
                // An offer-less re-INVITE is answered in the ACK.
                if let Ok(sdp) = sdp::check(&inbound.request.body) {
                    self.session.update(&sdp).await;
                }
            }
            Method::Cancel => {
                if self.phase == Phase::Ringing && self.role == Role::Caller {
                    self.answer_invite(487, "Request Terminated", None).await;
                    self.session.cancel().await;
                    self.phase = Phase::Ended;
                }
            }
            Method::Bye => {
                let ok = answer(200, "OK", vec![], "");
                if let Some(reply) = reply {
                    let _ = reply.send(ok);
                }
                if self.phase == Phase::Answered {
                    self.session.cancel().await;
                }
                self.retransmit = None;
                self.phase = Phase::Ended;
            }
            Method::Invite | Method::Update => {
                let cseq = message::cseq(&inbound.request).map_or(0, |(n, _)| n);
                if inbound.method == Method::Invite {
                    if let Some(r) = self.retransmit.as_ref().filter(|r| r.cseq == cseq) {
                        // A retransmitted re-INVITE: its 200 again.
                        let bytes = r.bytes.clone();
                        let flow = Flow {
                            transport: inbound.transport,
                            addr: inbound.source,
                        };
                        self.handle.send(flow, &bytes).await;
                        return;
                    }
                }
                let stale = self.dialog.as_ref().is_some_and(|d| cseq <= d.remote_cseq);
                let bytes = if self.phase != Phase::Answered {
                    answer(491, "Request Pending", vec![], "")
                } else if stale {
                    answer(500, "CSeq Out Of Order", vec![], "")
                } else {
                    if let Some(d) = &mut self.dialog {
                        d.remote_cseq = cseq;
                    }
                    let offer = sdp::check(&inbound.request.body).ok();
                    if !inbound.request.body.is_empty() && offer.is_none() {
                        answer(488, "Bad SDP", vec![], "")
                    } else {
                        self.session.version_step += 1;
                        let direction = offer.as_deref().map(sdp::direction);
                        let body = self
                            .session
                            .peer_sdp_for_phone(direction.or(Some("sendrecv")))
                            .unwrap_or_default();
                        if let Some(offer) = &offer {
                            self.session.update(offer).await;
                        }
                        let flow = self.dialog.as_ref().expect("dialog").flow;
                        answer(
                            200,
                            "OK",
                            vec![
                                Header::Contact(self.contact(flow).into()),
                                Header::ContentType("application/sdp".into()),
                            ],
                            &body,
                        )
                    }
                };
                if inbound.method == Method::Invite {
                    let flow = Flow {
                        transport: inbound.transport,
                        addr: inbound.source,
                    };
                    self.handle.send(flow, &bytes).await;
                    if !flow.transport.is_stream() && bytes.starts_with(b"SIP/2.0 2") {
                        self.retransmit = Some(Retransmit::new(bytes, cseq, false));
                    }
                } else if let Some(reply) = reply {
                    let _ = reply.send(bytes);
                }
            }
            _ => {
                if let Some(reply) = reply {
                    let _ = reply.send(answer(405, "Method Not Allowed", vec![], ""));
                }
            }
        }
    }
}
