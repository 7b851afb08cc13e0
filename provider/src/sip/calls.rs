//! Calls through the SIP edge: a back-to-back user agent between SIP phones and the invitation
//! protocol.
//!
//! Each SIP account acts through a gateway endpoint of its user (see
//! [`crate::db::sip::gateway_endpoint`]). A phone's INVITE, once authenticated, becomes that
//! endpoint's Initiate Request; the pushes queued for the gateway become SIP: an Initiate Push
//! forks INVITEs to every registered contact of the account, an Accept Push becomes the phone's
//! 200 OK, a Reject its 486, 603, 480, 488 or 403, a Cancel its 487 (or a BYE once answered),
//! and an Update a re-INVITE. The phone's SDP travels as the blob ([`super::sdp`]); media never
//! passes through the edge.
//!
//! Each call has one task (a [`Leg`]) that owns the phone's side of it, fed with the pushes,
//! the responses to its requests and the phone's in-dialog requests. SIP dialogs live in the
//! memory of the replica that holds the phone's transaction; the invitation protocol underneath
//! stays stateless.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rsip::{Header, Method};
use switchyard_calls::{CallError, RefusalCode};
use switchyard_protocol::dict::Dict;
use switchyard_protocol::invitation::{
    AcceptRequest, CancelRequest, InitiateRequest, RejectReason, RejectRequest, SessionId,
    UpdateRequest,
};
use tokio::sync::{mpsc, oneshot};

use super::anchor::Anchor;
use super::message::{self, tag_of, Inbound, InboundResponse, Transport};
use super::registrar::{canonical_aor, name_addr, Refusal};
use super::sdp;
use super::SipEdge;
use crate::auth::AuthEndpoint;
use crate::db::records::{EndpointRecord, SipAccount};
use crate::invitation;

/// RFC 3261 timer values.
pub const T1: Duration = Duration::from_millis(500);
pub const T2: Duration = Duration::from_secs(4);
/// Timers B, F and H: 64 × T1.
pub const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(32);
/// The prefix of every branch the edge makes, so a request that already passed it is a loop.
pub const BRANCH_PREFIX: &str = "z9hG4bK-sy-";

/// Where a phone is reached: the transport and address its messages came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Flow {
    pub transport: Transport,
    pub addr: SocketAddr,
}

impl Flow {
    /// A registered contact's flow (`transport` and `source` as the registrar stored them).
    pub fn of_contact(transport: &str, source: &str) -> Option<Flow> {
        let transport = match transport {
            "udp" => Transport::Udp,
            "tcp" => Transport::Tcp,
            "tls" => Transport::Tls,
            _ => return None,
        };
        Some(Flow {
            transport,
            addr: source.parse().ok()?,
        })
    }
}

pub fn new_branch() -> String {
    format!("{BRANCH_PREFIX}{}", message::new_tag(9))
}

/// A request the edge sends to a phone.
#[derive(Debug, Clone)]
pub struct OutRequest {
    pub method: Method,
    pub uri: String,
    pub via: String,
    pub branch: String,
    pub from: String,
    pub to: String,
    pub call_id: String,
    pub cseq: u32,
    pub route: Vec<String>,
    pub contact: Option<String>,
    pub sdp: Option<String>,
}

impl OutRequest {
    pub fn bytes(&self) -> Vec<u8> {
        let mut text = format!(
            "{} {} SIP/2.0\r\nVia: {};branch={};rport\r\nMax-Forwards: 70\r\n",
            self.method, self.uri, self.via, self.branch
        );
        for route in &self.route {
            text.push_str(&format!("Route: {route}\r\n"));
        }
        text.push_str(&format!(
            "From: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {} {}\r\n",
            self.from, self.to, self.call_id, self.cseq, self.method
        ));
        if let Some(contact) = &self.contact {
            text.push_str(&format!("Contact: {contact}\r\n"));
        }
        if matches!(self.method, Method::Invite | Method::Update) {
            text.push_str(&format!("Allow: {}\r\n", allowed()));
        }
        text.push_str(concat!(
            "User-Agent: switchyard/",
            env!("CARGO_PKG_VERSION"),
            "\r\n"
        ));
        match &self.sdp {
            Some(sdp) => text.push_str(&format!(
                "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
                sdp.len()
            )),
            None => text.push_str("Content-Length: 0\r\n\r\n"),
        }
        text.into_bytes()
    }

    /// The ACK of a non-2xx final response: same branch, the response's To (RFC 3261 §17.1.1.3).
    fn ack_of_failure(&self, response: &InboundResponse) -> OutRequest {
        OutRequest {
            method: Method::Ack,
            to: response.fields.first("To").unwrap_or(&self.to).to_string(),
            contact: None,
            sdp: None,
            ..self.clone()
        }
    }

    /// The CANCEL of this INVITE (RFC 3261 §9.1).
    fn cancel(&self) -> OutRequest {
        OutRequest {
            method: Method::Cancel,
            contact: None,
            sdp: None,
            ..self.clone()
        }
    }
}

fn allowed() -> String {
    message::ALLOWED
        .iter()
        .map(|m| m.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// What a leg's task is told.
pub enum Event {
    Push(Dict),
    /// A response to the leg's client transaction `tx`.
    Response(u32, InboundResponse),
    /// Client transaction `tx` got no final response in time (Timer B or F).
    Timeout(u32),
    /// A request from the phone within the call: ACK, BYE, re-INVITE, UPDATE, or the CANCEL of
    /// its INVITE. Non-INVITE requests are answered through `reply`.
    Request(Box<Inbound>, Option<oneshot::Sender<Vec<u8>>>),
}

/// A phone's INVITE transaction: its top Via branch and where it came from.
type InviteKey = (String, SocketAddr);
/// The call task it started (its leg key; empty until it has one), and the response a retransmission of it gets
/// (none once acknowledged).
type InviteEntry = (String, Option<Vec<u8>>);

/// A call's task at this edge is named by the session and the gateway endpoint it acts as: in a
/// call between two phones of this provider both sides run here, under one session id.
pub fn leg_key(session: &str, endpoint: &str) -> String {
    format!("{session} {endpoint}")
}

/// The calls in progress at this edge, by [`leg_key`].
pub struct Calls {
    /// Each call's task.
    legs: std::sync::Mutex<HashMap<String, mpsc::UnboundedSender<Event>>>,
    /// In-dialog requests find their call by Call-ID and the edge's tag.
    dialogs: std::sync::Mutex<HashMap<(String, String), String>>,
    /// A phone's INVITE (its branch and source) and the call it started, for retransmissions,
    /// its CANCEL and the ACK of a failure.
    invites: std::sync::Mutex<HashMap<InviteKey, InviteEntry>>,
    /// The edge's client transactions by branch.
    clients: std::sync::Mutex<HashMap<String, mpsc::UnboundedSender<InboundResponse>>>,
    /// Sessions that ended here lately, so late pushes for them are taken off the queue.
    ended: std::sync::Mutex<super::expiry::ExpiringMap<String, ()>>,
}

/// How long an ended call's late pushes are still recognised.
const ENDED_MEMORY: Duration = Duration::from_secs(120);
/// Ended calls remembered at most (a bound on memory whatever the call rate).
const ENDED_REMEMBERED: usize = 1_000_000;

impl Default for Calls {
    fn default() -> Self {
        Calls {
            legs: Default::default(),
            dialogs: Default::default(),
            invites: Default::default(),
            clients: Default::default(),
            ended: std::sync::Mutex::new(super::expiry::ExpiringMap::new(
                ENDED_MEMORY,
                ENDED_REMEMBERED,
            )),
        }
    }
}

impl Calls {
    pub fn has_leg(&self, leg: &str) -> bool {
        self.legs.lock().expect("legs").contains_key(leg)
            || self
                .ended
                .lock()
                .expect("ended")
                .get(leg, Instant::now())
                .is_some()
    }

    pub(super) fn send_event(&self, leg: &str, event: Event) -> bool {
        match self.legs.lock().expect("legs").get(leg) {
            Some(tx) => tx.send(event).is_ok(),
            None => false,
        }
    }

    /// The response a retransmission of the INVITE `key` gets from now on (RFC 3261 §17.2.1;
    /// for a 2xx, §13.3.1.4).
    fn remember_response(&self, key: &InviteKey, bytes: &[u8]) {
        if let Some(entry) = self.invites.lock().expect("invites").get_mut(key) {
            entry.1 = Some(bytes.to_vec());
        }
    }
}

/// The SIP status a Reject reason becomes, and back.
pub fn status_of_reason(reason: &str) -> (u16, &'static str) {
    match reason {
        "busy" => (486, "Busy Here"),
        "declined" => (603, "Decline"),
        "unsupported-media" => (488, "Not Acceptable Here"),
        "not-authorized" => (403, "Forbidden"),
        _ => (480, "Temporarily Unavailable"),
    }
}

pub fn reason_of_status(status: u16) -> RejectReason {
    match status {
        486 | 600 => RejectReason::Busy,
        603 => RejectReason::Declined,
        488 | 606 => RejectReason::UnsupportedMedia,
        401 | 403 | 407 => RejectReason::NotAuthorized,
        _ => RejectReason::Unavailable,
    }
}

/// Of several final failures of a forked INVITE, the one to report (RFC 3261 §16.7 step 6,
/// simplified: a 6xx wins, then the most specific 4xx over 5xx and timeouts).
fn best_failure(statuses: &[u16]) -> u16 {
    let rank = |s: u16| match s {
        600..=699 => 0,
        486 | 488 | 403 => 1,
        400..=499 if s != 408 => 2,
        _ => 3,
    };
    statuses
        .iter()
        .copied()
        .min_by_key(|s| rank(*s))
        .unwrap_or(480)
}

/// The invitation-protocol URI a phone's Request-URI names: `tel:` as given, a `sip:` URI with a
/// telephone number as user (`+` and digits, or `user=phone`) as `tel:`, another account of this
/// provider as its user's first URI, anything else `sip:user@host` as `mailto:user@host`.
async fn callee_of(edge: &SipEdge, request_uri: &str) -> Result<String, Refusal> {
    let not_found = || Refusal(404, "Not Found".into(), vec![]);
    let canonical = |raw: &str| {
        edge.app
            .canonicalizer
            .canonicalize(raw)
            .map(|u| u.into_string())
            .map_err(|_| Refusal(484, "Address Incomplete".into(), vec![]))
    };
    let lower = request_uri.to_ascii_lowercase();
    if lower.starts_with("tel:") {
        return canonical(request_uri.split(';').next().unwrap_or(request_uri));
    }
    let aor = canonical_aor(request_uri).ok_or_else(not_found)?;
    let user_part = aor
        .strip_prefix("sip:")
        .and_then(|r| r.rsplit_once('@'))
        .map(|(user, _)| user)
        .unwrap_or("");
    let user = decoded_user(user_part);
    let phone = lower.contains(";user=phone")
        || (user.starts_with('+')
            && user.len() > 1
            && user[1..].bytes().all(|b| b.is_ascii_digit()));
    if phone {
        return canonical(&format!("tel:{user}"));
    }
    if let Some(account) = edge.app.db.sip_account(&aor).await.map_err(db_refusal)? {
        return uris_of(edge, &account)
            .await?
            .into_iter()
            .next()
            .ok_or_else(not_found);
    }
    let host = aor.rsplit_once('@').map(|(_, h)| h).unwrap_or("");
    canonical(&format!("mailto:{user}@{host}"))
}

/// A SIP URI's user part with its `%XX` escapes decoded (`alice%40b.test` is `alice@b.test`);
/// a `%` not followed by two hex digits stays as it is.
fn decoded_user(part: &str) -> String {
    percent_encoding::percent_decode_str(part)
        .decode_utf8_lossy()
        .into_owned()
}

/// How a phone is shown an invitation-protocol URI: `tel:` numbers as `sip:number@domain;
/// user=phone`, `mailto:` addresses as `sip:` ones.
fn sip_form(uri: &str, domain: &str) -> String {
    if let Some(number) = uri.strip_prefix("tel:") {
        format!("<sip:{number}@{domain};user=phone>")
    } else if let Some(address) = uri.strip_prefix("mailto:") {
        format!("<sip:{address}>")
    } else {
        format!("<{uri}>")
    }
}

fn db_refusal(e: crate::db::StoreError) -> Refusal {
    tracing::error!(error = %e, "SIP edge: database");
    Refusal(500, "Database Unavailable".into(), vec![])
}

/// The SIP answer to a refused Initiate Request: from the protocol's refusal code, as the
/// endpoint API answers it over HTTP from the same code (`wire::http_status`).
fn refusal_of(e: &CallError) -> Refusal {
    let (status, reason) = match e {
        CallError::Refused(refusal) => match refusal.code {
            RefusalCode::UnknownPeer => (404, "Not Found"),
            RefusalCode::NotAuthorized => (403, "Forbidden"),
            RefusalCode::DuplicateSession => (482, "Loop Detected"),
            code if crate::wire::http_status(code).is_server_error() => {
                (503, "Service Unavailable")
            }
            _ => (403, "Forbidden"),
        },
        CallError::Store(_) => (503, "Service Unavailable"),
    };
    Refusal(status, reason.into(), vec![])
}

/// Which side of the call the phone is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
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

/// The phone's dialog, as the edge sees it.
#[derive(Debug, Clone)]
struct Dialog {
    call_id: String,
    local_tag: String,
    /// The From or To the edge presents (with its tag) and the phone's (with its tag, once known).
    local: String,
    remote: String,
    remote_target: String,
    route: Vec<String>,
    local_cseq: u32,
    remote_cseq: u32,
    flow: Flow,
}

/// One INVITE fork towards a contact of the called phone.
struct Branch {
    tx: u32,
    flow: Flow,
    request: OutRequest,
    provisional: bool,
    cancel_when_provisional: bool,
    final_status: Option<u16>,
}

/// A response the edge keeps sending until the phone acknowledges it (a 2xx until its ACK, a
/// failure until the ACK of the INVITE transaction), on UDP only.
struct Retransmit {
    bytes: Vec<u8>,
    cseq: u32,
    next: Instant,
    interval: Duration,
    give_up: Instant,
    /// The call's answer (its first 2xx): not acknowledged in time, it ends the call (RFC 3261
    /// §13.3.1.4).
    answers_call: bool,
}

impl Retransmit {
    fn new(bytes: Vec<u8>, cseq: u32, answers_call: bool) -> Retransmit {
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

/// The phone's INVITE, kept to answer it.
struct ServerInvite {
    inbound: Box<Inbound>,
    key: InviteKey,
    answered: bool,
}

pub struct Leg {
    edge: Arc<SipEdge>,
    /// Its [`leg_key`].
    leg_id: String,
    session: String,
    role: Role,
    account: SipAccount,
    gateway: AuthEndpoint,
    self_uri: String,
    peer_uri: String,
    state: String,
    peer_token: Option<String>,
    phase: Phase,
    dialog: Option<Dialog>,
    invite: Option<ServerInvite>,
    branches: Vec<Branch>,
    next_tx: u32,
    /// Client transactions still open (BYE, re-INVITE), by id.
    requests: HashMap<u32, OutRequest>,
    retransmit: Option<Retransmit>,
    /// The other side's latest SDP (as it sent it), and how far the edge moved its version on.
    peer_sdp: Option<String>,
    /// The call's media anchored here (see [`super::anchor`]).
    anchor: Option<Anchor>,
    version_step: u64,
    events: mpsc::UnboundedReceiver<Event>,
    sender: mpsc::UnboundedSender<Event>,
}

/// The gateway endpoint of an account, authenticated as its user's endpoint.
async fn gateway_of(edge: &SipEdge, account: &SipAccount) -> Result<AuthEndpoint, Refusal> {
    let unavailable = || Refusal(480, "Account Has No Gateway Endpoint".into(), vec![]);
    let id = account.endpoint_id.as_deref().ok_or_else(unavailable)?;
    let endpoint: EndpointRecord = edge
        .app
        .db
        .endpoint(id)
        .await
        .map_err(db_refusal)?
        .ok_or_else(unavailable)?;
    let uris = uris_of(edge, account).await?;
    Ok(AuthEndpoint { endpoint, uris })
}

/// The URIs of the user an account acts for.
async fn uris_of(edge: &SipEdge, account: &SipAccount) -> Result<Vec<String>, Refusal> {
    edge.app
        .db
        .uris_of(&account.user_id)
        .await
        .map_err(db_refusal)
}

impl SipEdge {
    /// A new INVITE from a phone (the transaction layer saw it first): answered with 100 Trying
    /// here, and by its call's task from then on.
    pub(super) async fn on_invite(self: &Arc<Self>, inbound: Box<Inbound>) -> Option<Vec<u8>> {
        let branch = message::top_branch(&inbound.request)?;
        let key = (branch, inbound.source);
        {
            let invites = self.calls.invites.lock().expect("invites");
            if let Some((_, last)) = invites.get(&key) {
                // A retransmission: the last response again (nothing yet: absorbed).
                return last.clone();
            }
        }
        let to_tag = inbound
            .fields
            .first("To")
            .and_then(tag_of)
            .map(str::to_string);
        if let Some(tag) = to_tag {
            let call_id = inbound.fields.first("Call-ID").unwrap_or("").to_string();
            let session = self
                .calls
                .dialogs
                .lock()
                .expect("dialogs")
                .get(&(call_id, tag))
                .cloned();
            let refusal = self.refuse(&inbound, 481, "Call/Transaction Does Not Exist");
            return match session {
                Some(session)
                    if self
                        .calls
                        .send_event(&session, Event::Request(inbound, None)) =>
                {
                    None
                }
                _ => Some(refusal),
            };
        }
        if self.is_loop(&inbound) {
            return Some(self.refuse(&inbound, 482, "Loop Detected"));
        }
        // No To tag: 100 Trying comes from no dialog (RFC 3261 §8.2.6.2).
        let trying = message::response(&inbound.request, inbound.source, 100, "Trying", "", vec![]);
        self.calls
            .invites
            .lock()
            .expect("invites")
            .insert(key.clone(), (String::new(), Some(trying.clone())));
        let edge = self.clone();
        tokio::spawn(async move {
            if let Err(Refusal(status, reason, extra)) = edge
                .clone()
                .start_outgoing(inbound.clone(), key.clone())
                .await
            {
                let bytes = message::response(
                    &inbound.request,
                    inbound.source,
                    status,
                    &reason,
                    &message::new_tag(6),
                    extra,
                );
                tracing::info!(source = %inbound.source, status, reason, "SIP INVITE refused");
                edge.answer_invite_failure(&inbound, key, bytes).await;
            }
        });
        Some(trying)
    }

    /// Whether this request went through this edge already (a branch of ours in its Vias).
    fn is_loop(&self, inbound: &Inbound) -> bool {
        inbound
            .fields
            .values("Via")
            .flat_map(|v| v.split(','))
            .any(|via| via.contains(&format!("branch={BRANCH_PREFIX}")))
    }

    fn refuse(&self, inbound: &Inbound, status: u16, reason: &str) -> Vec<u8> {
        message::response(
            &inbound.request,
            inbound.source,
            status,
            reason,
            &message::new_tag(6),
            vec![],
        )
    }

    /// Sends a failure for an INVITE that never got a call task, and retransmits it on UDP
    /// until its ACK (Timer G) or Timer H.
    async fn answer_invite_failure(
        self: &Arc<Self>,
        inbound: &Inbound,
        key: InviteKey,
        bytes: Vec<u8>,
    ) {
        let flow = Flow {
            transport: inbound.transport,
            addr: inbound.source,
        };
        self.calls
            .invites
            .lock()
            .expect("invites")
            .insert(key.clone(), (String::new(), Some(bytes.clone())));
        self.send(flow, &bytes).await;
        if flow.transport.is_stream() {
            self.forget_invite_later(key);
            return;
        }
        let mut interval = T1;
        let give_up = Instant::now() + TRANSACTION_TIMEOUT;
        while Instant::now() < give_up {
            tokio::time::sleep(interval).await;
            let still = self
                .calls
                .invites
                .lock()
                .expect("invites")
                .get(&key)
                .is_some_and(|(_, last)| last.is_some());
            if !still {
                break;
            }
            self.send(flow, &bytes).await;
            interval = (interval * 2).min(T2);
        }
        self.calls.invites.lock().expect("invites").remove(&key);
    }

    /// Keeps an INVITE transaction's key for a while, to absorb retransmissions after its end.
    fn forget_invite_later(self: &Arc<Self>, key: InviteKey) {
        let edge = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(TRANSACTION_TIMEOUT).await;
            edge.calls.invites.lock().expect("invites").remove(&key);
        });
    }

    /// An ACK: for a failure of an INVITE transaction (same branch) it ends that transaction's
    /// retransmissions; otherwise it belongs to a dialog (the ACK of a 2xx).
    pub(super) fn on_ack(&self, inbound: Box<Inbound>) {
        if let Some(branch) = message::top_branch(&inbound.request) {
            let mut invites = self.calls.invites.lock().expect("invites");
            if let Some((leg, last)) = invites.get_mut(&(branch, inbound.source)) {
                *last = None;
                let leg = leg.clone();
                drop(invites);
                if !leg.is_empty() {
                    self.calls.send_event(&leg, Event::Request(inbound, None));
                }
                return;
            }
        }
        let Some(session) = self.dialog_of(&inbound) else {
            return;
        };
        self.calls
            .send_event(&session, Event::Request(inbound, None));
    }

    fn dialog_of(&self, inbound: &Inbound) -> Option<String> {
        let call_id = inbound.fields.first("Call-ID")?.to_string();
        let tag = tag_of(inbound.fields.first("To")?)?.to_string();
        self.calls
            .dialogs
            .lock()
            .expect("dialogs")
            .get(&(call_id, tag))
            .cloned()
    }

    /// The call a CANCEL's INVITE started (by the INVITE's branch and source).
    fn cancelled_session(&self, inbound: &Inbound) -> Option<String> {
        let branch = message::top_branch(&inbound.request)?;
        self.calls
            .invites
            .lock()
            .expect("invites")
            .get(&(branch, inbound.source))
            .map(|(session, _)| session.clone())
            .filter(|s| !s.is_empty())
    }

    /// CANCEL, BYE and UPDATE. A CANCEL is answered here (200 when its INVITE is known; the
    /// call's task then ends the INVITE, see [`SipEdge::cancel_invite`]); BYE and UPDATE are
    /// answered by their call's task.
    pub(super) async fn on_call_request(&self, inbound: &Inbound) -> Vec<u8> {
        if inbound.method == Method::Cancel {
            return match self.cancelled_session(inbound) {
                Some(_) => message::response(
                    &inbound.request,
                    inbound.source,
                    200,
                    "OK",
                    &message::new_tag(6),
                    vec![],
                ),
                None => self.refuse(inbound, 481, "Call/Transaction Does Not Exist"),
            };
        }
        let Some(session) = self.dialog_of(inbound) else {
            tracing::debug!(call_id = ?inbound.fields.first("Call-ID"), to = ?inbound.fields.first("To"), method = %inbound.method, "SIP request for no dialog");
            return self.refuse(inbound, 481, "Call/Transaction Does Not Exist");
        };
        let (reply, answer) = oneshot::channel();
        if !self.calls.send_event(
            &session,
            Event::Request(Box::new(inbound.clone()), Some(reply)),
        ) {
            return self.refuse(inbound, 481, "Call/Transaction Does Not Exist");
        }
        match tokio::time::timeout(TRANSACTION_TIMEOUT, answer).await {
            Ok(Ok(bytes)) => bytes,
            _ => self.refuse(inbound, 500, "Call Ended While Answering"),
        }
    }

    /// Tells a cancelled INVITE's call task, once the CANCEL is answered.
    pub(super) fn cancel_invite(&self, inbound: Box<Inbound>) {
        if let Some(session) = self.cancelled_session(&inbound) {
            self.calls
                .send_event(&session, Event::Request(inbound, None));
        }
    }

    /// A response to one of the edge's requests: to its client transaction.
    pub(super) fn on_response(&self, response: InboundResponse) {
        let Some(branch) = response.branch() else {
            return;
        };
        // A CANCEL shares its INVITE's branch; their responses differ in the CSeq method.
        let key = if response.cseq_method() == Some("CANCEL") {
            format!("{branch} CANCEL")
        } else {
            branch.to_string()
        };
        let client = self
            .calls
            .clients
            .lock()
            .expect("clients")
            .get(&key)
            .cloned();
        match client {
            Some(tx) => {
                let _ = tx.send(response);
            }
            None => tracing::debug!(
                branch,
                status = response.status,
                "SIP response to no transaction"
            ),
        }
    }

    /// Starts a client transaction: sends `request` to `flow`, retransmits it on UDP (Timers A
    /// and E), and reports its responses (or its timeout) to `events` as transaction `tx`.
    fn start_client(
        self: &Arc<Self>,
        flow: Flow,
        request: &OutRequest,
        tx: u32,
        events: mpsc::UnboundedSender<Event>,
    ) {
        let (responses_tx, mut responses) = mpsc::unbounded_channel();
        let branch = &request.branch;
        let key = if request.method == Method::Cancel {
            format!("{branch} CANCEL")
        } else {
            branch.clone()
        };
        self.calls
            .clients
            .lock()
            .expect("clients")
            .insert(key.clone(), responses_tx);
        let bytes = request.bytes();
        let invite = request.method == Method::Invite;
        let edge = self.clone();
        tokio::spawn(async move {
            edge.send(flow, &bytes).await;
            let start = Instant::now();
            let mut interval = T1;
            let mut next = (!flow.transport.is_stream()).then(|| start + interval);
            let mut finished = false;
            loop {
                let deadline = if finished {
                    // After a final response: a while longer for its retransmissions (a 2xx
                    // to re-ACK), then the transaction is gone.
                    start + TRANSACTION_TIMEOUT * 2
                } else {
                    start + TRANSACTION_TIMEOUT
                };
                let wake = next.map_or(deadline, |n| n.min(deadline));
                tokio::select! {
                    response = responses.recv() => {
                        let Some(response) = response else { break };
                        let status = response.status;
                        let _ = events.send(Event::Response(tx, response));
                        if status >= 200 {
                            finished = true;
                            next = None;
                        } else if invite {
                            next = None;
                        } else if next.is_some() {
                            interval = T2;
                        }
                    }
                    _ = tokio::time::sleep_until(wake.into()) => {
                        let now = Instant::now();
                        if now >= deadline {
                            if !finished {
                                let _ = events.send(Event::Timeout(tx));
                            }
                            break;
                        }
                        edge.send(flow, &bytes).await;
                        interval = if invite { interval * 2 } else { (interval * 2).min(T2) };
                        next = Some(now + interval);
                    }
                }
            }
            edge.calls.clients.lock().expect("clients").remove(&key);
        });
    }

    /// The phone's INVITE, authenticated, becomes an Initiate Request.
    async fn start_outgoing(
        self: Arc<Self>,
        inbound: Box<Inbound>,
        key: InviteKey,
    ) -> Result<(), Refusal> {
        let account = self.authenticate(&inbound, true).await?;
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
        let callee = callee_of(&self, &inbound.request_uri).await?;
        let gateway = gateway_of(&self, &account).await?;
        let anchor = self
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
        // Registered before the Initiate, whose pushes may come back at once.
        let mut leg = self.new_leg(session, Role::Caller, account, gateway);
        let initiated = invitation::core(&self.app)
            .initiate(&invitation::requester(&leg.gateway), request)
            .await;
        let (state, rung) = match initiated {
            Ok(response) => (response.state, response.rung),
            Err(e) => {
                self.calls.legs.lock().expect("legs").remove(&leg.leg_id);
                tracing::info!(error = %e, "SIP call's Initiate refused");
                return Err(refusal_of(&e));
            }
        };
        let local_tag = message::new_tag(6);
        let remote = from.to_string();
        let to = inbound.fields.first("To").unwrap_or("").to_string();
        let dialog = Dialog {
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
                .flat_map(super::registrar::split_list)
                .collect(),
            local_cseq: 0,
            remote_cseq: message::cseq(&inbound.request).map_or(0, |(n, _)| n),
            flow: Flow {
                transport: inbound.transport,
                addr: inbound.source,
            },
        };
        self.calls.dialogs.lock().expect("dialogs").insert(
            (dialog.call_id.clone(), dialog.local_tag.clone()),
            leg.leg_id.clone(),
        );
        if let Some(entry) = self.calls.invites.lock().expect("invites").get_mut(&key) {
            entry.0 = leg.leg_id.clone();
        }
        tracing::info!(session = %leg.session, caller = %self_uri, %callee, aor = %leg.account.aor, "SIP call placed");
        metrics::counter!("switchyard_sip_calls_total", "direction" => "from-phone").increment(1);
        leg.self_uri = self_uri;
        leg.peer_uri = callee;
        leg.state = state;
        leg.dialog = Some(dialog);
        leg.invite = Some(ServerInvite {
            inbound,
            key,
            answered: false,
        });
        leg.anchor = anchor;
        // A local callee with no endpoint to ring is told by a Reject Push instead.
        if rung > 0 {
            leg.send_provisional(180, "Ringing").await;
        }
        tokio::spawn(leg.run());
        Ok(())
    }

    /// An Initiate Push for an account's gateway: the account's phones are rung.
    pub(super) async fn start_incoming(self: &Arc<Self>, account: SipAccount, push: Dict) {
        let session = match push.str("session-id") {
            Ok(s) => s.to_string(),
            Err(_) => return,
        };
        let gateway = match gateway_of(self, &account).await {
            Ok(g) => g,
            Err(_) => return,
        };
        let mut leg = self.new_leg(session, Role::Callee, account, gateway);
        leg.self_uri = push.str("self-uri").unwrap_or_default().to_string();
        leg.peer_uri = push.str("peer-uri").unwrap_or_default().to_string();
        leg.state = push.str("state").unwrap_or_default().to_string();
        leg.peer_token = push.str("peer-token").ok().map(str::to_string);
        leg.peer_sdp = push
            .opt_data("peer-blob")
            .ok()
            .flatten()
            .and_then(|b| sdp::sdp_of(&b));
        metrics::counter!("switchyard_sip_calls_total", "direction" => "to-phone").increment(1);
        leg.ring().await;
        tokio::spawn(leg.run());
    }

    /// Anchors the media of a call whose offer is `offer` when `sip.anchor_media` says so, the
    /// phone's packets accepted from `phone_ips`; `toward` picks the media address when the edge
    /// listens on every interface.
    async fn open_anchor(
        &self,
        phone_ips: &[std::net::IpAddr],
        toward: SocketAddr,
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

    /// A call task's state, registered under its [`leg_key`] so that pushes and requests find it
    /// from now on; the caller fills in what it knows of the call.
    fn new_leg(
        self: &Arc<Self>,
        session: String,
        role: Role,
        account: SipAccount,
        gateway: AuthEndpoint,
    ) -> Leg {
        let (sender, events) = mpsc::unbounded_channel();
        let leg_id = leg_key(&session, &gateway.endpoint.id);
        self.calls
            .legs
            .lock()
            .expect("legs")
            .insert(leg_id.clone(), sender.clone());
        Leg {
            edge: self.clone(),
            leg_id,
            session,
            role,
            account,
            gateway,
            self_uri: String::new(),
            peer_uri: String::new(),
            state: String::new(),
            peer_token: None,
            phase: Phase::Ringing,
            dialog: None,
            invite: None,
            branches: Vec::new(),
            next_tx: 0,
            requests: HashMap::new(),
            retransmit: None,
            peer_sdp: None,
            anchor: None,
            version_step: 0,
            events,
            sender,
        }
    }

    /// Where the edge says it is, for the Via and Contact of what it sends over `flow`.
    fn sent_by(&self, flow: Flow) -> String {
        let listen = self.local_addr(flow.transport);
        let ip = match listen.map(|a| a.ip()) {
            Some(ip) if !ip.is_unspecified() => ip,
            _ => local_ip_toward(flow.addr),
        };
        let port = listen.map_or(5060, |a| a.port());
        SocketAddr::new(ip, port).to_string()
    }
}

/// The local address the system would send from to reach `peer` (no packet is sent).
fn local_ip_toward(peer: SocketAddr) -> std::net::IpAddr {
    let unspecified: SocketAddr = if peer.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    std::net::UdpSocket::bind(unspecified)
        .and_then(|s| {
            s.connect(peer)?;
            s.local_addr()
        })
        .map(|a| a.ip())
        .unwrap_or(unspecified.ip())
}

fn transport_param(transport: Transport) -> &'static str {
    match transport {
        Transport::Udp => "UDP",
        Transport::Tcp => "TCP",
        Transport::Tls => "TLS",
    }
}

impl Leg {
    fn contact(&self, flow: Flow) -> String {
        format!(
            "<sip:{}@{};transport={}>",
            self.session,
            self.edge.sent_by(flow),
            flow.transport.as_str()
        )
    }

    fn via(&self, flow: Flow) -> String {
        format!(
            "SIP/2.0/{} {}",
            transport_param(flow.transport),
            self.edge.sent_by(flow)
        )
    }

    fn tx_id(&mut self) -> u32 {
        self.next_tx += 1;
        self.next_tx
    }

    /// The base of an invitation-protocol request about this call.
    fn session_id(&self) -> Result<SessionId, CallError> {
        Ok(SessionId::parse(&self.session)?)
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

    /// The SDP to show the phone: the other side's, its version moved on by the edge's own
    /// revisions.
    fn peer_sdp_for_phone(&self, direction: Option<&str>) -> Option<String> {
        let sdp = self.peer_sdp.as_ref()?;
        let sdp = match direction {
            Some(d) => sdp::revised(sdp, self.version_step, d),
            None if self.version_step == 0 => sdp.clone(),
            None => sdp::revised(sdp, self.version_step, sdp::direction(sdp)),
        };
        Some(self.anchored(sdp))
    }

    /// An SDP of either side as the other sees it: moved to the anchor when there is one.
    fn anchored(&self, sdp: String) -> String {
        match &self.anchor {
            Some(anchor) => anchor.rewrite(&sdp),
            None => sdp,
        }
    }

    /// Takes the other side's new SDP (and its addresses, for the anchor).
    fn set_peer_sdp(&mut self, sdp: String) {
        if let Some(anchor) = &self.anchor {
            anchor.set_remote(&sdp);
        }
        self.peer_sdp = Some(sdp);
    }

    /// Rings every contact of the account with the caller's SDP.
    async fn ring(&mut self) {
        let Some(offer) = self.peer_sdp.clone() else {
            self.reject(
                RejectReason::UnsupportedMedia,
                "the caller's media blob holds no SDP offer, which a SIP phone needs",
            )
            .await;
            return;
        };
        let contacts = match self
            .edge
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
            match self.edge.open_anchor(&phone_ips, first.addr, &offer).await {
                Ok(anchor) => {
                    self.anchor = anchor;
                    self.set_peer_sdp(offer.clone());
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
        let offer = self.anchored(offer);
        let domain = self
            .account
            .aor
            .rsplit_once('@')
            .map(|(_, d)| d.to_string())
            .unwrap_or_default();
        let local_tag = message::new_tag(6);
        let call_id = format!("{}@{}", message::new_tag(9), domain);
        let from = format!("{};tag={local_tag}", sip_form(&self.peer_uri, &domain));
        let to = format!("<{}>", self.account.aor);
        self.edge
            .calls
            .dialogs
            .lock()
            .expect("dialogs")
            .insert((call_id.clone(), local_tag.clone()), self.leg_id.clone());
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
            self.edge
                .start_client(flow, &request, tx, self.sender.clone());
            self.branches.push(Branch {
                tx,
                flow,
                request,
                provisional: false,
                cancel_when_provisional: false,
                final_status: None,
            });
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
            flow: self.branches.first().map_or(
                Flow {
                    transport: Transport::Udp,
                    addr: SocketAddr::from(([127, 0, 0, 1], 0)),
                },
                |b| b.flow,
            ),
        });
        if self.branches.is_empty() {
            self.reject(
                RejectReason::Unavailable,
                "no registered contact can be reached",
            )
            .await;
        }
    }

    async fn reject(&mut self, reason: RejectReason, text: &str) {
        let rejected = async {
            let request = RejectRequest {
                answer: self.answer(Vec::new())?,
                reason,
                reason_text: Some(text.to_string()),
            };
            let core = invitation::core(&self.edge.app);
            core.reject(&invitation::requester(&self.gateway), request)
                .await
        };
        if let Err(e) = rejected.await {
            tracing::info!(session = %self.session, error = %e, "SIP edge: Reject refused");
        }
        self.phase = Phase::Ended;
    }

    /// Ends the call on the protocol side (Cancel while ringing, hang-up once answered).
    async fn cancel_call(&mut self) {
        let cancelled = async {
            let request = CancelRequest {
                session_id: self.session_id()?,
                self_uri: self.self_uri.clone(),
                self_token: self.gateway.endpoint.push_token.clone(),
                peer_uri: self.peer_uri.clone(),
                state: self.state.clone(),
            };
            let core = invitation::core(&self.edge.app);
            core.cancel(&invitation::requester(&self.gateway), request)
                .await
        };
        if let Err(e) = cancelled.await {
            tracing::info!(session = %self.session, error = %e, "SIP edge: Cancel refused");
        }
    }

    async fn run(mut self) {
        let mut tick = tokio::time::interval(T1 / 2);
        loop {
            let done = self.phase == Phase::Ended
                && self.retransmit.is_none()
                && self.requests.is_empty()
                && self.branches.iter().all(|b| b.final_status.is_some());
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
        let calls = &self.edge.calls;
        calls.legs.lock().expect("legs").remove(&self.leg_id);
        if let Some(dialog) = &self.dialog {
            calls
                .dialogs
                .lock()
                .expect("dialogs")
                .remove(&(dialog.call_id.clone(), dialog.local_tag.clone()));
        }
        calls
            .ended
            .lock()
            .expect("ended")
            .insert(self.leg_id.clone(), (), Instant::now());
        if let Some(invite) = self.invite.take() {
            self.edge.forget_invite_later(invite.key);
        }
        tracing::debug!(session = %self.session, "SIP call task done");
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
                tracing::info!(session = %self.session, "SIP phone never acknowledged the 200 OK: hanging up");
                self.cancel_call().await;
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
                self.edge.send(dialog.flow, &bytes).await;
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
        let contact = self.contact(dialog.flow);
        let Some(invite) = &mut self.invite else {
            return;
        };
        if invite.answered {
            return;
        }
        invite.answered = true;
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
            &invite.inbound.request,
            invite.inbound.source,
            status,
            reason,
            &dialog.local_tag,
            extra,
            body.as_bytes(),
        );
        let flow = dialog.flow;
        let cseq = message::cseq(&invite.inbound.request).map_or(0, |(n, _)| n);
        self.edge.send(flow, &bytes).await;
        self.edge.calls.remember_response(&invite.key, &bytes);
        if !flow.transport.is_stream() {
            self.retransmit = Some(Retransmit::new(bytes, cseq, status < 300));
        }
    }

    async fn send_provisional(&mut self, status: u16, reason: &str) {
        let Some(invite) = &self.invite else {
            return;
        };
        if invite.answered {
            return;
        }
        let dialog = self.dialog.as_ref().expect("a phone's call has a dialog");
        let bytes = message::response(
            &invite.inbound.request,
            invite.inbound.source,
            status,
            reason,
            &dialog.local_tag,
            vec![Header::Contact(self.contact(dialog.flow).into())],
        );
        self.edge.calls.remember_response(&invite.key, &bytes);
        self.edge.send(dialog.flow, &bytes).await;
    }

    async fn on_push(&mut self, push: Dict) {
        let action = push.str("action").unwrap_or_default().to_string();
        if let Ok(Some(blob)) = push.opt_data("peer-blob") {
            if let Some(sdp) = sdp::sdp_of(&blob) {
                if self.peer_sdp.as_deref() != Some(sdp.as_str()) {
                    self.set_peer_sdp(sdp);
                }
            }
        }
        if let Ok(token) = push.str("peer-token") {
            self.peer_token = Some(token.to_string());
        }
        if let Ok(state) = push.str("state") {
            self.state = state.to_string();
        }
        match (self.role, action.as_str(), self.phase) {
            (Role::Caller, "accept", Phase::Ringing) => {
                let answer = push
                    .opt_data("peer-blob")
                    .ok()
                    .flatten()
                    .and_then(|b| sdp::sdp_of(&b));
                match answer {
                    Some(answer) => {
                        self.phase = Phase::Answered;
                        let answer = self.anchored(answer);
                        self.answer_invite(200, "OK", Some(&answer)).await;
                        tracing::info!(session = %self.session, "SIP call answered");
                    }
                    None => {
                        // Answered by an endpoint whose media the phone cannot use.
                        self.answer_invite(488, "Answered Without SDP", None).await;
                        self.cancel_call().await;
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
                tracing::debug!(session = %self.session, ?role, action, ?phase, "SIP edge: push ignored");
            }
        }
    }

    fn cancel_branches(&mut self) {
        let mut cancels = Vec::new();
        for branch in &mut self.branches {
            if branch.final_status.is_some() {
                continue;
            }
            if branch.provisional {
                cancels.push((branch.flow, branch.request.cancel()));
            } else {
                // RFC 3261 §9.1: no CANCEL before a provisional response.
                branch.cancel_when_provisional = true;
            }
        }
        for (flow, cancel) in cancels {
            let tx = self.tx_id();
            self.edge
                .start_client(flow, &cancel, tx, self.sender.clone());
            self.requests.insert(tx, cancel);
        }
    }

    async fn send_in_dialog(&mut self, method: Method, sdp: Option<String>) {
        let Some(dialog) = &mut self.dialog else {
            return;
        };
        if dialog.remote_target.is_empty() {
            return;
        }
        dialog.local_cseq += 1;
        let request = OutRequest {
            method,
            uri: dialog.remote_target.clone(),
            via: String::new(),
            branch: new_branch(),
            from: dialog.local.clone(),
            to: dialog.remote.clone(),
            call_id: dialog.call_id.clone(),
            cseq: dialog.local_cseq,
            route: dialog.route.clone(),
            contact: None,
            sdp,
        };
        let flow = dialog.flow;
        let mut request = OutRequest {
            via: self.via(flow),
            ..request
        };
        if request.method == Method::Invite {
            request.contact = Some(self.contact(flow));
        }
        let tx = self.tx_id();
        self.edge
            .start_client(flow, &request, tx, self.sender.clone());
        self.requests.insert(tx, request);
    }

    async fn send_bye(&mut self) {
        self.send_in_dialog(Method::Bye, None).await;
    }

    /// The other side's new SDP (an Update) goes to the phone as a re-INVITE.
    async fn send_reinvite(&mut self) {
        let Some(sdp) = self.peer_sdp_for_phone(None) else {
            return;
        };
        self.send_in_dialog(Method::Invite, Some(sdp)).await;
    }

    async fn on_timeout(&mut self, tx: u32) {
        if let Some(request) = self.requests.remove(&tx) {
            if request.method == Method::Bye || request.method == Method::Invite {
                tracing::info!(session = %self.session, method = %request.method, "SIP phone did not answer an in-dialog request");
            }
            return;
        }
        if let Some(branch) = self.branches.iter_mut().find(|b| b.tx == tx) {
            branch.final_status = Some(408);
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
                        self.edge
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
        let Some(index) = self.branches.iter().position(|b| b.tx == tx) else {
            return;
        };
        let status = response.status;
        if status < 200 {
            let branch = &mut self.branches[index];
            if !branch.provisional {
                branch.provisional = true;
                if branch.cancel_when_provisional {
                    let cancel = branch.request.cancel();
                    let flow = branch.flow;
                    let tx = self.tx_id();
                    self.edge
                        .start_client(flow, &cancel, tx, self.sender.clone());
                    self.requests.insert(tx, cancel);
                }
            }
            return;
        }
        if status >= 300 {
            let branch = &mut self.branches[index];
            let ack = branch.request.ack_of_failure(&response);
            self.edge.send(branch.flow, &ack.bytes()).await;
            if branch.final_status.is_none() {
                branch.final_status = Some(status);
                self.branch_failed().await;
            }
            return;
        }
        // A 2xx: this contact answered (or repeats its 200, which is acknowledged again).
        let request = self.branches[index].request.clone();
        let flow = self.branches[index].flow;
        let retransmitted = self.branches[index].final_status.is_some();
        self.branches[index].final_status = Some(status);
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
            let loser = self.dialog_from_answer(&request, &response, flow);
            let ack = self.ack_request(&loser, &request);
            self.edge.send(flow, &ack.bytes()).await;
            let bye = OutRequest {
                method: Method::Bye,
                branch: new_branch(),
                cseq: request.cseq + 1,
                sdp: None,
                contact: None,
                ..ack
            };
            let tx = self.tx_id();
            self.edge.start_client(flow, &bye, tx, self.sender.clone());
            self.requests.insert(tx, bye);
            return;
        }
        let dialog = self.dialog_from_answer(&request, &response, flow);
        self.dialog = Some(dialog);
        self.ack_in_dialog(&request, &response).await;
        self.phase = Phase::Answered;
        let answer = sdp::check(&response.body).ok();
        let Some(answer) = answer else {
            tracing::info!(session = %self.session, "SIP phone answered without SDP: hanging up");
            self.reject(
                RejectReason::UnsupportedMedia,
                "the SIP phone answered without SDP",
            )
            .await;
            self.send_bye().await;
            return;
        };
        if let Some(anchor) = &self.anchor {
            anchor.restrict_phone(&[flow.addr.ip()]);
            anchor.set_phone(&answer);
        }
        let answer = self.anchored(answer);
        let accepted = match self.answer(sdp::blob_of(&answer)) {
            Ok(request) => {
                let core = invitation::core(&self.edge.app);
                let (result, deferred) = core
                    .accept(&invitation::requester(&self.gateway), request)
                    .await;
                invitation::spawn_deferred(&self.edge.app, deferred);
                result
            }
            Err(e) => Err(e),
        };
        match accepted {
            Ok(_) => tracing::info!(session = %self.session, "SIP phone answered"),
            Err(e) => {
                tracing::info!(session = %self.session, error = %e, "SIP edge: Accept refused: hanging up");
                self.send_bye().await;
                self.phase = Phase::Ended;
            }
        }
        for branch in &mut self.branches {
            if branch.final_status.is_none() && branch.provisional {
                let cancel = branch.request.cancel();
                let flow = branch.flow;
                self.next_tx += 1;
                let tx = self.next_tx;
                self.edge
                    .start_client(flow, &cancel, tx, self.sender.clone());
                self.requests.insert(tx, cancel);
            } else if branch.final_status.is_none() {
                branch.cancel_when_provisional = true;
            }
        }
    }

    /// The dialog a 2xx to an INVITE of the edge sets up (RFC 3261 §12.1.2).
    fn dialog_from_answer(
        &self,
        request: &OutRequest,
        response: &InboundResponse,
        flow: Flow,
    ) -> Dialog {
        let local_tag = tag_of(&request.from).unwrap_or("").to_string();
        let mut route: Vec<String> = response
            .fields
            .values("Record-Route")
            .flat_map(super::registrar::split_list)
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

    /// The ACK of the 2xx to `request` in `dialog` (a new transaction, RFC 3261 §13.2.2.4).
    fn ack_request(&self, dialog: &Dialog, request: &OutRequest) -> OutRequest {
        OutRequest {
            method: Method::Ack,
            uri: dialog.remote_target.clone(),
            via: self.via(dialog.flow),
            branch: new_branch(),
            from: dialog.local.clone(),
            to: dialog.remote.clone(),
            call_id: dialog.call_id.clone(),
            cseq: request.cseq,
            route: dialog.route.clone(),
            contact: None,
            sdp: None,
        }
    }

    /// The ACK of a 2xx to the edge's INVITE (a new transaction, RFC 3261 §13.2.2.4).
    async fn ack_in_dialog(&mut self, request: &OutRequest, response: &InboundResponse) {
        if response.status >= 300 {
            return;
        }
        let Some(dialog) = &self.dialog else {
            return;
        };
        let ack = self.ack_request(dialog, request);
        self.edge.send(dialog.flow, &ack.bytes()).await;
    }

    /// A fork failed; once all have, the call is rejected with the best of their answers.
    async fn branch_failed(&mut self) {
        if self.phase != Phase::Ringing {
            return;
        }
        let statuses: Vec<u16> = self
            .branches
            .iter()
            .map(|b| b.final_status)
            .collect::<Option<Vec<u16>>>()
            .unwrap_or_default();
        if statuses.is_empty() {
            return;
        }
        let status = best_failure(&statuses);
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
                    let mut invites = self.edge.calls.invites.lock().expect("invites");
                    if let Some(entry) = invites.get_mut(&invite.key) {
                        entry.1 = None;
                    }
                }
                // An offer-less re-INVITE is answered in the ACK.
                if let Ok(sdp) = sdp::check(&inbound.request.body) {
                    self.update_peer(&sdp).await;
                }
            }
            Method::Cancel => {
                if self.phase == Phase::Ringing && self.role == Role::Caller {
                    self.answer_invite(487, "Request Terminated", None).await;
                    self.cancel_call().await;
                    self.phase = Phase::Ended;
                }
            }
            Method::Bye => {
                let ok = answer(200, "OK", vec![], "");
                if let Some(reply) = reply {
                    let _ = reply.send(ok);
                }
                if self.phase == Phase::Answered {
                    self.cancel_call().await;
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
                        self.edge.send(flow, &bytes).await;
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
                        self.version_step += 1;
                        let direction = offer.as_deref().map(sdp::direction);
                        let body = self
                            .peer_sdp_for_phone(direction.or(Some("sendrecv")))
                            .unwrap_or_default();
                        if let Some(offer) = &offer {
                            self.update_peer(offer).await;
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
                    self.edge.send(flow, &bytes).await;
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

    /// The phone's new SDP (hold, resume, a new address) goes to the other side as an Update.
    async fn update_peer(&mut self, sdp: &str) {
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
            let core = invitation::core(&self.edge.app);
            core.update(&invitation::requester(&self.gateway), request)
                .await
        };
        if let Err(e) = updated.await {
            tracing::info!(session = %self.session, error = %e, "SIP edge: Update refused");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_and_statuses_map_both_ways() {
        for reason in RejectReason::ALL {
            let (status, _) = status_of_reason(reason.as_str());
            assert_eq!(reason_of_status(status), *reason, "{reason}");
        }
        assert_eq!(reason_of_status(408), RejectReason::Unavailable);
        assert_eq!(reason_of_status(600), RejectReason::Busy);
    }

    #[test]
    fn the_best_failure_of_a_fork_is_reported() {
        assert_eq!(best_failure(&[408, 486]), 486);
        assert_eq!(best_failure(&[486, 603]), 603);
        assert_eq!(best_failure(&[408, 503]), 408);
        assert_eq!(best_failure(&[404, 408]), 404);
    }

    #[test]
    fn uris_are_shown_to_phones_in_sip_form() {
        assert_eq!(
            sip_form("tel:+15551234567", "a.test"),
            "<sip:+15551234567@a.test;user=phone>"
        );
        assert_eq!(sip_form("mailto:bob@b.test", "a.test"), "<sip:bob@b.test>");
        assert_eq!(decoded_user("alice%40b.test"), "alice@b.test");
        assert_eq!(decoded_user("100%"), "100%");
    }

    #[test]
    fn requests_of_the_edge_are_well_formed() {
        let request = OutRequest {
            method: Method::Invite,
            uri: "sip:bob@192.0.2.9:5062".into(),
            via: "SIP/2.0/UDP 192.0.2.1:5060".into(),
            branch: new_branch(),
            from: "<sip:+15551234567@a.test;user=phone>;tag=abc".into(),
            to: "<sip:bob@a.test>".into(),
            call_id: "c1@a.test".into(),
            cseq: 1,
            route: vec![],
            contact: Some("<sip:s@192.0.2.1:5060>".into()),
            sdp: Some("v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\nm=audio 4000 RTP/AVP 0\r\n".into()),
        };
        let source: SocketAddr = "192.0.2.1:5060".parse().unwrap();
        let limits = message::Limits {
            max_message_bytes: 65_535,
        };
        let message::Received::Request(inbound) =
            message::receive(&request.bytes(), source, Transport::Udp, limits)
        else {
            panic!("the edge's own INVITE does not pass its front door");
        };
        assert_eq!(inbound.method, Method::Invite);
        assert!(sdp::check(&inbound.request.body).is_ok());
        let cancel = request.cancel();
        let text = String::from_utf8(cancel.bytes()).unwrap();
        assert!(
            text.starts_with("CANCEL sip:bob@192.0.2.9:5062 SIP/2.0"),
            "{text}"
        );
        assert!(
            text.contains(&format!("branch={}", request.branch)),
            "{text}"
        );
        assert!(text.contains("CSeq: 1 CANCEL"), "{text}");
        assert!(!text.contains("application/sdp"), "{text}");
    }
}
