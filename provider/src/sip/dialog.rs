//! The SIP state a call leg keeps with its phone: the dialog (RFC 3261 §12), the phone's INVITE
//! it answers, and the response it retransmits until the phone acknowledges it.

use std::time::{Duration, Instant};

use rsip::{Header, Method};

use super::calls::InviteKey;
use super::message::{self, tag_of, Inbound, InboundResponse};
use super::outbound::{allowed, new_branch, Flow, OutRequest, T1, TRANSACTION_TIMEOUT};
use super::uri::{name_addr, split_list};

/// The phone's dialog, as the edge sees it.
#[derive(Debug, Clone)]
pub struct Dialog {
    pub call_id: String,
    pub local_tag: String,
    /// The From or To the edge presents (with its tag) and the phone's (with its tag, once known).
    pub local: String,
    pub remote: String,
    pub remote_target: String,
    pub route: Vec<String>,
    pub local_cseq: u32,
    pub remote_cseq: u32,
    pub flow: Flow,
}

impl Dialog {
    /// The dialog a phone's INVITE sets up, the edge answering it with `local_tag` (RFC 3261
    /// §12.1.1).
    pub fn of_invite(inbound: &Inbound, local_tag: String) -> Dialog {
        let remote = inbound.fields.first("From").unwrap_or("").to_string();
        let to = inbound.fields.first("To").unwrap_or("").to_string();
        Dialog {
            call_id: inbound.fields.first("Call-ID").unwrap_or("").to_string(),
            local: format!("{to};tag={local_tag}"),
            local_tag,
            remote,
            remote_target: inbound
                .fields
                .first("Contact")
                .and_then(name_addr)
                .map(|(uri, _)| uri)
                .unwrap_or_else(|| inbound.request_uri.clone()),
            route: inbound
                .fields
                .values("Record-Route")
                .flat_map(split_list)
                .collect(),
            local_cseq: 0,
            remote_cseq: message::cseq(&inbound.request).map_or(0, |(n, _)| n),
            flow: Flow {
                transport: inbound.transport,
                addr: inbound.source,
            },
        }
    }

    /// The dialog a 2xx to an INVITE of the edge sets up (RFC 3261 §12.1.2).
    pub fn of_answer(request: &OutRequest, response: &InboundResponse, flow: Flow) -> Dialog {
        let local_tag = tag_of(&request.from).unwrap_or("").to_string();
        let mut route: Vec<String> = response
            .fields
            .values("Record-Route")
            .flat_map(split_list)
            .collect();
        route.reverse();
        Dialog {
            call_id: request.call_id.clone(),
            local_tag,
            local: request.from.clone(),
            remote: response
                .fields
                .first("To")
                .unwrap_or(&request.to)
                .to_string(),
            remote_target: response
                .fields
                .first("Contact")
                .and_then(name_addr)
                .map(|(uri, _)| uri)
                .unwrap_or_else(|| request.uri.clone()),
            route,
            local_cseq: request.cseq,
            remote_cseq: 0,
            flow,
        }
    }

    /// What in-dialog requests find the dialog by: its Call-ID and the edge's tag.
    pub fn key(&self) -> (String, String) {
        (self.call_id.clone(), self.local_tag.clone())
    }

    /// The ACK of the 2xx to `request` in this dialog (a new transaction, RFC 3261 §13.2.2.4),
    /// sent with `via`.
    pub fn ack(&self, request: &OutRequest, via: String) -> OutRequest {
        OutRequest {
            method: Method::Ack,
            uri: self.remote_target.clone(),
            via,
            branch: new_branch(),
            from: self.local.clone(),
            to: self.remote.clone(),
            call_id: self.call_id.clone(),
            cseq: request.cseq,
            route: self.route.clone(),
            contact: None,
            sdp: None,
        }
    }

    /// The edge's next request in the dialog, its CSeq taken (none before the phone's target
    /// is known); its Via (and Contact) are the sender's to fill in.
    pub fn next_request(&mut self, method: Method, sdp: Option<String>) -> Option<OutRequest> {
        if self.remote_target.is_empty() {
            return None;
        }
        self.local_cseq += 1;
        Some(OutRequest {
            method,
            uri: self.remote_target.clone(),
            via: String::new(),
            branch: new_branch(),
            from: self.local.clone(),
            to: self.remote.clone(),
            call_id: self.call_id.clone(),
            cseq: self.local_cseq,
            route: self.route.clone(),
            contact: None,
            sdp,
        })
    }
}

/// The phone's INVITE, kept to answer it.
pub struct ServerInvite {
    pub inbound: Box<Inbound>,
    pub key: InviteKey,
    pub answered: bool,
}

impl ServerInvite {
    /// The final response to the INVITE (none if it was answered already), from the edge's
    /// `tag` and `contact`, and the INVITE's CSeq.
    pub fn answer(
        &mut self,
        tag: &str,
        contact: String,
        status: u16,
        reason: &str,
        sdp: Option<&str>,
    ) -> Option<(Vec<u8>, u32)> {
        if self.answered {
            return None;
        }
        self.answered = true;
        let mut extra = Vec::new();
        if status < 300 {
            extra.push(Header::Contact(contact.into()));
            extra.push(Header::Other("Allow".into(), allowed()));
        }
        let body = sdp.unwrap_or("");
        if !body.is_empty() {
            extra.push(Header::ContentType("application/sdp".into()));
        }
        let bytes = message::response_with_body(
            &self.inbound.request,
            self.inbound.source,
            status,
            reason,
            tag,
            extra,
            body.as_bytes(),
        );
        let cseq = message::cseq(&self.inbound.request).map_or(0, |(n, _)| n);
        Some((bytes, cseq))
    }

    /// A provisional response to the INVITE, unless it was answered already.
    pub fn provisional(
        &self,
        tag: &str,
        contact: String,
        status: u16,
        reason: &str,
    ) -> Option<Vec<u8>> {
        (!self.answered).then(|| {
            message::response(
                &self.inbound.request,
                self.inbound.source,
                status,
                reason,
                tag,
                vec![Header::Contact(contact.into())],
            )
        })
    }
}

/// A response the edge keeps sending until the phone acknowledges it (a 2xx until its ACK, a
/// failure until the ACK of the INVITE transaction), on UDP only.
pub struct Retransmit {
    pub bytes: Vec<u8>,
    pub cseq: u32,
    pub next: Instant,
    pub interval: Duration,
    pub give_up: Instant,
    /// The call's answer (its first 2xx): not acknowledged in time, it ends the call (RFC 3261
    /// §13.3.1.4).
    pub answers_call: bool,
}

impl Retransmit {
    pub fn new(bytes: Vec<u8>, cseq: u32, answers_call: bool) -> Retransmit {
        let now = Instant::now();
        Retransmit {
            bytes,
            cseq,
            next: now + T1,
            interval: T1,
            give_up: now + TRANSACTION_TIMEOUT,
            answers_call,
        }
    }
}
