//! Sans-I/O SIP call signalling between two endpoints over a DTLS association.
//!
//! One SIP message travels per DTLS record, and records can be lost or repeated like UDP
//! datagrams, so requests are retransmitted (RFC 3261 Timer A/E: 500 ms doubling up to 4 s, given
//! up after 32 s) and repeated requests are answered again from the stored response without a
//! second event. A [`SipSession`] carries exactly one call (one dialog).
//!
//! The identities are the canonical user URIs (`tel:` / `mailto:`), put in From/To as is. rsip
//! cannot parse `tel:` Request-URIs, and routing is point to point anyway, so the Request-URI is
//! the fixed `sip:switchyard.invalid`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rsip::prelude::*;
use rsip::{headers, Header, Headers, Method, Request, Response, SipMessage};
use switchyard_protocol::CanonicalUri;

/// Largest SIP message accepted or produced.
pub const MAX_MESSAGE_SIZE: usize = 16 * 1024;
/// RFC 3261 T1: first retransmission interval.
pub const T1: Duration = Duration::from_millis(500);
/// RFC 3261 T2: retransmission interval cap.
pub const T2: Duration = Duration::from_secs(4);
/// RFC 3261 64*T1: when an unanswered request is given up.
pub const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(32);
pub const SDP_CONTENT_TYPE: &str = "application/sdp";
pub const MEDIA_STATE_CONTENT_TYPE: &str = "application/x-switchyard-media-state";
const REQUEST_HOST: &str = "switchyard.invalid";
const BRANCH_MAGIC: &str = "z9hG4bK";
/// How many answered peer requests are remembered to re-answer their retransmissions.
const REMEMBERED_RESPONSES: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SipError {
    #[error("SIP message of {0} bytes exceeds the {MAX_MESSAGE_SIZE}-byte limit")]
    TooLarge(usize),
    #[error("malformed SIP message: {0}")]
    Parse(String),
    #[error("SIP message lacks a {0} header")]
    MissingHeader(&'static str),
    #[error("bad {0} header: {1}")]
    BadHeader(&'static str, String),
    #[error("Content-Length says {declared} bytes but the body has {actual}")]
    ContentLength { declared: usize, actual: usize },
    #[error("unexpected Content-Type `{0}`")]
    UnexpectedContentType(String),
    #[error("message body is not UTF-8")]
    BodyNotUtf8,
    #[error("From/To do not name the expected parties")]
    WrongParty,
    #[error("request for a dialog this session does not have")]
    UnknownDialog,
    #[error("{0} is not valid in the current call state")]
    WrongState(&'static str),
    #[error("unsupported SIP method {0}")]
    UnsupportedMethod(String),
    #[error("bad media state `{0}`")]
    BadMediaState(String),
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SipFailure {
    /// No final response within [`TRANSACTION_TIMEOUT`].
    Timeout(Method),
    /// The peer answered with a non-2xx final response.
    Rejected { method: Method, status: u16 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SipEvent {
    /// Callee: a call arrived; answer with [`SipSession::accept`].
    IncomingCall {
        offer: String,
    },
    /// Caller: the callee accepted.
    Established {
        answer: String,
    },
    RemoteVideoMuted(bool),
    /// The peer hung up; the call is over.
    RemoteHangUp,
    /// Our hang-up completed (answered or timed out).
    Ended,
    /// A request failed; an INVITE failure ends the call.
    Failed(SipFailure),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    Calling,
    Ringing,
    Established,
    HangingUp,
    Terminated,
}

/// A request of ours awaiting its final response.
struct ClientTx {
    method: Method,
    cseq: u32,
    branch: String,
    bytes: Vec<u8>,
    interval: Duration,
    next_send: Instant,
    deadline: Instant,
}

/// The INVITE a callee received, kept to answer it (again).
struct IncomingInvite {
    request: Request,
    branch: String,
    response: Option<Vec<u8>>,
}

/// A peer request already answered.
struct Answered {
    cseq: u32,
    method: Method,
    branch: String,
    response: Vec<u8>,
}

pub struct SipSession {
    local: CanonicalUri,
    remote: CanonicalUri,
    state: State,
    call_id: Option<String>,
    local_tag: String,
    remote_tag: Option<String>,
    next_cseq: u32,
    highest_remote_cseq: u32,
    client_txs: Vec<ClientTx>,
    incoming_invite: Option<IncomingInvite>,
    /// Caller: the ACK of the 2xx, re-sent when the 2xx is retransmitted.
    ack: Option<(u32, Vec<u8>)>,
    answered: VecDeque<Answered>,
    transmit: VecDeque<Vec<u8>>,
    events: VecDeque<SipEvent>,
}

fn random_token() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Parses one datagram: size limit, rsip syntax, mandatory headers, exact Content-Length.
fn parse(bytes: &[u8]) -> Result<SipMessage, SipError> {
    if bytes.len() > MAX_MESSAGE_SIZE {
        return Err(SipError::TooLarge(bytes.len()));
    }
    let msg = SipMessage::try_from(bytes).map_err(|e| SipError::Parse(e.to_string()))?;
    let lengths: Vec<&headers::ContentLength> = msg
        .headers()
        .iter()
        .filter_map(|h| match h {
            Header::ContentLength(l) => Some(l),
            _ => None,
        })
        .collect();
    // rsip takes everything after the blank line as body; the datagram must match exactly.
    let declared = match lengths.as_slice() {
        [] => return Err(SipError::MissingHeader("Content-Length")),
        [one] => one
            .length()
            .map_err(|_| SipError::BadHeader("Content-Length", one.value().to_string()))?
            as usize,
        _ => {
            return Err(SipError::BadHeader(
                "Content-Length",
                "repeated".to_string(),
            ))
        }
    };
    if declared != msg.body().len() {
        return Err(SipError::ContentLength {
            declared,
            actual: msg.body().len(),
        });
    }
    msg.via_header()
        .map_err(|_| SipError::MissingHeader("Via"))?;
    msg.from_header()
        .map_err(|_| SipError::MissingHeader("From"))?;
    msg.to_header().map_err(|_| SipError::MissingHeader("To"))?;
    msg.call_id_header()
        .map_err(|_| SipError::MissingHeader("Call-ID"))?;
    msg.cseq_header()
        .map_err(|_| SipError::MissingHeader("CSeq"))?;
    Ok(msg)
}

fn cseq_of(msg: &impl HeadersExt) -> Result<(u32, Method), SipError> {
    let h = msg
        .cseq_header()
        .map_err(|_| SipError::MissingHeader("CSeq"))?;
    let typed = h
        .typed()
        .map_err(|_| SipError::BadHeader("CSeq", h.value().to_string()))?;
    Ok((typed.seq, typed.method))
}

/// The `branch` parameter of the top Via, which must carry the RFC 3261 magic cookie.
fn branch_of(msg: &impl HeadersExt) -> Result<String, SipError> {
    let via = msg
        .via_header()
        .map_err(|_| SipError::MissingHeader("Via"))?
        .value();
    via.split(';')
        .skip(1)
        .find_map(|p| p.trim().strip_prefix("branch="))
        .filter(|b| b.starts_with(BRANCH_MAGIC) && b.len() > BRANCH_MAGIC.len())
        .map(str::to_string)
        .ok_or_else(|| SipError::BadHeader("Via", via.to_string()))
}

/// Splits `<uri>;tag=x` by hand: rsip's typed From/To misread `tel:` URIs.
fn name_addr(value: &str, header: &'static str) -> Result<(String, Option<String>), SipError> {
    let bad = || SipError::BadHeader(header, value.to_string());
    let start = value.find('<').ok_or_else(bad)?;
    let end = value.find('>').filter(|&e| e > start).ok_or_else(bad)?;
    let uri = value[start + 1..end].trim().to_string();
    let tag = value[end + 1..]
        .split(';')
        .find_map(|p| p.trim().strip_prefix("tag="))
        .map(str::to_string);
    Ok((uri, tag))
}

fn call_id_of(msg: &impl HeadersExt) -> Result<String, SipError> {
    Ok(msg
        .call_id_header()
        .map_err(|_| SipError::MissingHeader("Call-ID"))?
        .value()
        .to_string())
}

fn content_type_of(msg: &impl HasHeaders) -> Option<String> {
    msg.headers().iter().find_map(|h| match h {
        Header::ContentType(c) => Some(c.value().trim().to_ascii_lowercase()),
        _ => None,
    })
}

/// The body as text, required to be of `content_type`.
fn text_body(msg: &impl HasHeaders, body: &[u8], content_type: &str) -> Result<String, SipError> {
    let ct = content_type_of(msg).unwrap_or_default();
    // Media type parameters (`;charset=...`) do not matter here.
    if ct.split(';').next().unwrap_or("").trim() != content_type {
        return Err(SipError::UnexpectedContentType(ct));
    }
    String::from_utf8(body.to_vec()).map_err(|_| SipError::BodyNotUtf8)
}

fn checked(bytes: Vec<u8>) -> Result<Vec<u8>, SipError> {
    if bytes.len() > MAX_MESSAGE_SIZE {
        return Err(SipError::TooLarge(bytes.len()));
    }
    Ok(bytes)
}

/// Adds `Content-Type` (with a body) and `Content-Length` (always) and returns the body bytes.
fn with_body(headers: &mut rsip::Headers, body: Option<(&str, &str)>) -> Vec<u8> {
    let body = match body {
        Some((ct, text)) => {
            headers.push(headers::ContentType::new(ct).into());
            text.as_bytes().to_vec()
        }
        None => vec![],
    };
    headers.push(headers::ContentLength::from(body.len() as u32).into());
    body
}

/// A response to `req`, echoing its Via, From, To (tagged with ours), Call-ID and CSeq.
fn response_to(
    req: &Request,
    status: u16,
    local_tag: &str,
    body: Option<(&str, &str)>,
) -> Result<Vec<u8>, SipError> {
    let mut headers = Headers::default();
    for h in req.headers().iter() {
        match h {
            Header::Via(_) | Header::From(_) | Header::CallId(_) | Header::CSeq(_) => {
                headers.push(h.clone())
            }
            Header::To(to) => {
                let value = to.value();
                if name_addr(value, "To")?.1.is_some() {
                    headers.push(h.clone());
                } else {
                    headers.push(headers::To::new(format!("{value};tag={local_tag}")).into());
                }
            }
            _ => {}
        }
    }
    let body = with_body(&mut headers, body);
    let response = Response {
        status_code: status.into(),
        version: rsip::Version::V2,
        headers,
        body,
    };
    checked(response.to_string().into_bytes())
}

impl SipSession {
    /// A session between `local` and `remote`; either side may then call or be called.
    pub fn new(local: CanonicalUri, remote: CanonicalUri) -> Self {
        SipSession {
            local,
            remote,
            state: State::Idle,
            call_id: None,
            local_tag: random_token(),
            remote_tag: None,
            next_cseq: 1,
            highest_remote_cseq: 0,
            client_txs: Vec::new(),
            incoming_invite: None,
            ack: None,
            answered: VecDeque::new(),
            transmit: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Caller: sends an INVITE carrying `offer` (SDP).
    pub fn start_call(&mut self, now: Instant, offer: &str) -> Result<(), SipError> {
        if self.state != State::Idle {
            return Err(SipError::WrongState("start_call"));
        }
        self.call_id = Some(format!("{}@{REQUEST_HOST}", random_token()));
        self.send_request(now, Method::Invite, Some((SDP_CONTENT_TYPE, offer)))?;
        self.state = State::Calling;
        Ok(())
    }

    /// Callee: accepts the incoming call with `answer` (SDP): 200 OK.
    pub fn accept(&mut self, answer: &str) -> Result<(), SipError> {
        let invite = match (&mut self.incoming_invite, self.state) {
            (Some(invite), State::Ringing) => invite,
            _ => return Err(SipError::WrongState("accept")),
        };
        let ok = response_to(
            &invite.request,
            200,
            &self.local_tag,
            Some((SDP_CONTENT_TYPE, answer)),
        )?;
        invite.response = Some(ok.clone());
        self.transmit.push_back(ok);
        self.state = State::Established;
        Ok(())
    }

    /// Callee: declines the incoming call with a final error response, e.g. 488 (Not Acceptable
    /// Here) when none of the offered media can be taken; the caller fails at once instead of
    /// retransmitting its INVITE until the transaction times out.
    pub fn decline(&mut self, status: u16) -> Result<(), SipError> {
        if !(300..=699).contains(&status) {
            return Err(SipError::WrongState("decline with a non-error status"));
        }
        let invite = match (&mut self.incoming_invite, self.state) {
            (Some(invite), State::Ringing) => invite,
            _ => return Err(SipError::WrongState("decline")),
        };
        let response = response_to(&invite.request, status, &self.local_tag, None)?;
        invite.response = Some(response.clone());
        self.transmit.push_back(response);
        self.state = State::Terminated;
        Ok(())
    }

    /// Tells the peer whether our video is muted (a MESSAGE).
    pub fn set_video_muted(&mut self, now: Instant, muted: bool) -> Result<(), SipError> {
        if self.state != State::Established {
            return Err(SipError::WrongState("set_video_muted"));
        }
        let body = if muted {
            "video=muted"
        } else {
            "video=unmuted"
        };
        self.send_request(now, Method::Message, Some((MEDIA_STATE_CONTENT_TYPE, body)))
    }

    /// Ends the call with a BYE; [`SipEvent::Ended`] follows its answer or timeout. Before the
    /// call is answered this also uses BYE (both ends are this implementation, which treats it as
    /// a cancellation) rather than CANCEL.
    pub fn hang_up(&mut self, now: Instant) -> Result<(), SipError> {
        if !matches!(
            self.state,
            State::Calling | State::Ringing | State::Established
        ) {
            return Err(SipError::WrongState("hang_up"));
        }
        // Pending INVITE/MESSAGE retransmissions are pointless once the call is going away.
        self.client_txs.clear();
        self.send_request(now, Method::Bye, None)?;
        self.state = State::HangingUp;
        Ok(())
    }

    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmit.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<SipEvent> {
        self.events.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.client_txs
            .iter()
            .map(|tx| tx.next_send.min(tx.deadline))
            .min()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let mut expired = Vec::new();
        for tx in &mut self.client_txs {
            if now >= tx.deadline {
                expired.push(tx.method);
            } else if now >= tx.next_send {
                self.transmit.push_back(tx.bytes.clone());
                tx.interval = (tx.interval * 2).min(T2);
                tx.next_send = now + tx.interval;
            }
        }
        self.client_txs.retain(|tx| now < tx.deadline);
        for method in expired {
            match method {
                Method::Bye => {
                    self.state = State::Terminated;
                    self.events.push_back(SipEvent::Ended);
                }
                Method::Invite => {
                    self.state = State::Terminated;
                    self.events
                        .push_back(SipEvent::Failed(SipFailure::Timeout(Method::Invite)));
                }
                other => self
                    .events
                    .push_back(SipEvent::Failed(SipFailure::Timeout(other))),
            }
        }
    }

    /// Feeds one received datagram. On error nothing changed, except that a response telling the
    /// peer why may have been queued.
    /// `_now` keeps the driver's calling convention uniform; no received message starts a timer.
    pub fn handle_incoming(&mut self, _now: Instant, bytes: &[u8]) -> Result<(), SipError> {
        match parse(bytes)? {
            SipMessage::Request(req) => self.on_request(req),
            SipMessage::Response(resp) => self.on_response(resp),
        }
    }

    fn send_request(
        &mut self,
        now: Instant,
        method: Method,
        body: Option<(&str, &str)>,
    ) -> Result<(), SipError> {
        let cseq = self.next_cseq;
        let branch = format!("{BRANCH_MAGIC}{}", random_token());
        let bytes = self.request_bytes(method, cseq, &branch, body)?;
        self.next_cseq += 1;
        self.transmit.push_back(bytes.clone());
        self.client_txs.push(ClientTx {
            method,
            cseq,
            branch,
            bytes,
            interval: T1,
            next_send: now + T1,
            deadline: now + TRANSACTION_TIMEOUT,
        });
        Ok(())
    }

    fn request_bytes(
        &self,
        method: Method,
        cseq: u32,
        branch: &str,
        body: Option<(&str, &str)>,
    ) -> Result<Vec<u8>, SipError> {
        let call_id = self
            .call_id
            .clone()
            .ok_or(SipError::WrongState("request without a call"))?;
        let to = match &self.remote_tag {
            Some(tag) => format!("<{}>;tag={tag}", self.remote),
            None => format!("<{}>", self.remote),
        };
        let mut headers = Headers::default();
        headers
            .push(headers::Via::new(format!("SIP/2.0/DTLS {REQUEST_HOST};branch={branch}")).into());
        headers.push(headers::MaxForwards::new("70").into());
        headers.push(headers::From::new(format!("<{}>;tag={}", self.local, self.local_tag)).into());
        headers.push(headers::To::new(to).into());
        headers.push(headers::CallId::new(call_id).into());
        headers.push(headers::CSeq::new(format!("{cseq} {method}")).into());
        let body = with_body(&mut headers, body);
        let request = Request {
            method,
            uri: rsip::Uri {
                scheme: Some(rsip::Scheme::Sip),
                host_with_port: rsip::Domain::from(REQUEST_HOST).into(),
                ..Default::default()
            },
            version: rsip::Version::V2,
            headers,
            body,
        };
        checked(request.to_string().into_bytes())
    }

    fn respond(&mut self, req: &Request, status: u16) -> Result<Vec<u8>, SipError> {
        let bytes = response_to(req, status, &self.local_tag, None)?;
        self.transmit.push_back(bytes.clone());
        Ok(bytes)
    }

    fn on_request(&mut self, req: Request) -> Result<(), SipError> {
        let (cseq, cseq_method) = cseq_of(&req)?;
        if cseq_method != req.method {
            return Err(SipError::BadHeader("CSeq", format!("{cseq} {cseq_method}")));
        }
        let branch = branch_of(&req)?;
        let call_id = call_id_of(&req)?;
        let (from_uri, from_tag) = name_addr(
            req.from_header()
                .map_err(|_| SipError::MissingHeader("From"))?
                .value(),
            "From",
        )?;
        let (to_uri, _) = name_addr(
            req.to_header()
                .map_err(|_| SipError::MissingHeader("To"))?
                .value(),
            "To",
        )?;
        if from_uri != self.remote.as_str() || to_uri != self.local.as_str() {
            return Err(SipError::WrongParty);
        }
        let in_dialog = self.call_id.as_deref() == Some(call_id.as_str())
            && (self.remote_tag.is_none() || self.remote_tag == from_tag);

        if req.method == Method::Invite {
            if let Some(invite) = &self.incoming_invite {
                if in_dialog && invite.branch == branch {
                    // A retransmission: re-answer if we have answered, else it is still ringing.
                    if let Some(ok) = &invite.response {
                        self.transmit.push_back(ok.clone());
                    }
                    return Ok(());
                }
            }
            if self.state != State::Idle {
                return Err(SipError::WrongState("INVITE"));
            }
            let offer = text_body(&req, &req.body, SDP_CONTENT_TYPE)?;
            let tag = from_tag.ok_or_else(|| SipError::BadHeader("From", "no tag".into()))?;
            self.call_id = Some(call_id);
            self.remote_tag = Some(tag);
            self.highest_remote_cseq = cseq;
            self.incoming_invite = Some(IncomingInvite {
                request: req,
                branch,
                response: None,
            });
            self.state = State::Ringing;
            self.events.push_back(SipEvent::IncomingCall { offer });
            return Ok(());
        }

        if !in_dialog {
            if req.method != Method::Ack {
                self.respond(&req, 481)?;
            }
            return Err(SipError::UnknownDialog);
        }
        if let Some(done) = self
            .answered
            .iter()
            .find(|a| a.cseq == cseq && a.method == req.method && a.branch == branch)
        {
            self.transmit.push_back(done.response.clone());
            return Ok(());
        }
        let fresh = cseq > self.highest_remote_cseq;
        let response = match req.method {
            // ACK of our 2xx: nothing to do since the 2xx is only re-sent on INVITE repeats.
            Method::Ack => return Ok(()),
            Method::Message => {
                let body = match text_body(&req, &req.body, MEDIA_STATE_CONTENT_TYPE) {
                    Ok(body) => body,
                    Err(e) => {
                        self.respond(&req, 415)?;
                        return Err(e);
                    }
                };
                let muted = match body.trim() {
                    "video=muted" => true,
                    "video=unmuted" => false,
                    other => {
                        self.respond(&req, 400)?;
                        return Err(SipError::BadMediaState(other.to_string()));
                    }
                };
                // A late retransmission of an older state is acknowledged but not acted on.
                if fresh {
                    self.events.push_back(SipEvent::RemoteVideoMuted(muted));
                }
                self.respond(&req, 200)?
            }
            Method::Bye => {
                self.client_txs.clear();
                self.state = State::Terminated;
                self.events.push_back(SipEvent::RemoteHangUp);
                self.respond(&req, 200)?
            }
            ref other => {
                self.respond(&req, 501)?;
                return Err(SipError::UnsupportedMethod(other.to_string()));
            }
        };
        self.highest_remote_cseq = self.highest_remote_cseq.max(cseq);
        if self.answered.len() == REMEMBERED_RESPONSES {
            self.answered.pop_front();
        }
        self.answered.push_back(Answered {
            cseq,
            method: req.method,
            branch,
            response,
        });
        Ok(())
    }

    fn on_response(&mut self, resp: Response) -> Result<(), SipError> {
        let (cseq, method) = cseq_of(&resp)?;
        let branch = branch_of(&resp)?;
        if self.call_id.as_deref() != Some(call_id_of(&resp)?.as_str()) {
            return Err(SipError::UnknownDialog);
        }
        let status = resp.status_code.code();
        let Some(idx) = self
            .client_txs
            .iter()
            .position(|tx| tx.cseq == cseq && tx.method == method && tx.branch == branch)
        else {
            // A retransmitted 2xx means our ACK was lost: send it again.
            if let Some((ack_cseq, ack)) = &self.ack {
                if method == Method::Invite && *ack_cseq == cseq && (200..300).contains(&status) {
                    self.transmit.push_back(ack.clone());
                }
            }
            return Ok(());
        };
        if status < 200 {
            return Ok(());
        }
        match method {
            Method::Invite if (200..300).contains(&status) => {
                let answer = text_body(&resp, &resp.body, SDP_CONTENT_TYPE)?;
                let (_, tag) = name_addr(
                    resp.to_header()
                        .map_err(|_| SipError::MissingHeader("To"))?
                        .value(),
                    "To",
                )?;
                self.remote_tag =
                    Some(tag.ok_or_else(|| SipError::BadHeader("To", "no tag".into()))?);
                self.client_txs.remove(idx);
                // The ACK of a 2xx is a transaction of its own (RFC 3261 §13.2.2.4).
                let ack_branch = format!("{BRANCH_MAGIC}{}", random_token());
                let ack = self.request_bytes(Method::Ack, cseq, &ack_branch, None)?;
                self.transmit.push_back(ack.clone());
                self.ack = Some((cseq, ack));
                self.state = State::Established;
                self.events.push_back(SipEvent::Established { answer });
            }
            Method::Invite => {
                self.client_txs.remove(idx);
                // A non-2xx ACK belongs to the INVITE transaction: same branch.
                let ack = self.request_bytes(Method::Ack, cseq, &branch, None)?;
                self.transmit.push_back(ack);
                self.state = State::Terminated;
                self.events
                    .push_back(SipEvent::Failed(SipFailure::Rejected {
                        method: Method::Invite,
                        status,
                    }));
            }
            Method::Bye => {
                self.client_txs.remove(idx);
                self.state = State::Terminated;
                self.events.push_back(SipEvent::Ended);
            }
            _ => {
                let tx = self.client_txs.remove(idx);
                if !(200..300).contains(&status) {
                    self.events
                        .push_back(SipEvent::Failed(SipFailure::Rejected {
                            method: tx.method,
                            status,
                        }));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_protocol::Canonicalizer;

    const OFFER: &str =
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n";
    const ANSWER: &str =
        "v=0\r\no=- 2 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\n";

    fn uri(s: &str) -> CanonicalUri {
        Canonicalizer::new(None).canonicalize(s).unwrap()
    }

    fn pair() -> (SipSession, SipSession) {
        let alice = uri("tel:+16505550100");
        let bob = uri("mailto:bob@example.com");
        (
            SipSession::new(alice.clone(), bob.clone()),
            SipSession::new(bob, alice),
        )
    }

    /// Says whether to drop a message (`true` = sent by `a`).
    type DropRule = Box<dyn FnMut(bool, &str) -> bool>;

    /// Two sessions joined by a link that drops what `drop` says, under a simulated clock.
    struct Net {
        a: SipSession,
        b: SipSession,
        now: Instant,
        a_events: Vec<SipEvent>,
        b_events: Vec<SipEvent>,
        drop: DropRule,
        sent: Vec<(bool, String)>,
    }

    impl Net {
        fn new(drop: impl FnMut(bool, &str) -> bool + 'static) -> Self {
            let (a, b) = pair();
            Net {
                a,
                b,
                now: Instant::now(),
                a_events: vec![],
                b_events: vec![],
                drop: Box::new(drop),
                sent: vec![],
            }
        }

        fn deliver(&mut self) {
            loop {
                let mut moved = false;
                while let Some(m) = self.a.poll_transmit() {
                    moved = true;
                    let text = String::from_utf8(m.clone()).unwrap();
                    self.sent.push((true, text.clone()));
                    if !(self.drop)(true, &text) {
                        self.b.handle_incoming(self.now, &m).unwrap();
                    }
                }
                while let Some(m) = self.b.poll_transmit() {
                    moved = true;
                    let text = String::from_utf8(m.clone()).unwrap();
                    self.sent.push((false, text.clone()));
                    if !(self.drop)(false, &text) {
                        self.a.handle_incoming(self.now, &m).unwrap();
                    }
                }
                while let Some(e) = self.a.poll_event() {
                    self.a_events.push(e);
                }
                while let Some(e) = self.b.poll_event() {
                    self.b_events.push(e);
                }
                if !moved {
                    return;
                }
            }
        }

        /// Delivers and fires timers up to `for_how_long` from now.
        fn run(&mut self, for_how_long: Duration) {
            let end = self.now + for_how_long;
            loop {
                self.deliver();
                let next = [self.a.poll_timeout(), self.b.poll_timeout()]
                    .into_iter()
                    .flatten()
                    .min();
                match next {
                    Some(t) if t <= end => {
                        self.now = self.now.max(t);
                        self.a.handle_timeout(self.now);
                        self.b.handle_timeout(self.now);
                    }
                    _ => {
                        self.now = end;
                        return;
                    }
                }
            }
        }

        fn establish(&mut self) {
            self.a.start_call(self.now, OFFER).unwrap();
            self.run(Duration::from_millis(10));
            self.b.accept(ANSWER).unwrap();
            self.run(Duration::from_secs(10));
            assert_eq!(
                self.a_events,
                vec![SipEvent::Established {
                    answer: ANSWER.into()
                }]
            );
            self.a_events.clear();
            self.b_events.clear();
        }
    }

    fn first_only(start: &'static str) -> impl FnMut(bool, &str) -> bool {
        let mut dropped = false;
        move |_, text| {
            if !dropped && text.starts_with(start) {
                dropped = true;
                return true;
            }
            false
        }
    }

    #[test]
    fn invite_carries_the_required_headers() {
        let (mut a, _) = pair();
        a.start_call(Instant::now(), OFFER).unwrap();
        let invite = String::from_utf8(a.poll_transmit().unwrap()).unwrap();
        assert!(
            invite.starts_with("INVITE sip:switchyard.invalid SIP/2.0\r\n"),
            "{invite}"
        );
        assert!(invite.contains("\r\nFrom: <tel:+16505550100>;tag="));
        assert!(invite.contains("\r\nTo: <mailto:bob@example.com>\r\n"));
        assert!(invite.contains(";branch=z9hG4bK"));
        assert!(invite.contains("\r\nCall-ID: "));
        assert!(invite.contains("\r\nCSeq: 1 INVITE\r\n"));
        assert!(invite.contains("\r\nContent-Type: application/sdp\r\n"));
        assert!(invite.contains(&format!("\r\nContent-Length: {}\r\n", OFFER.len())));
        assert!(invite.ends_with(&format!("\r\n\r\n{OFFER}")));
    }

    #[test]
    fn a_declined_call_fails_at_once_for_the_caller() {
        let mut net = Net::new(|_, _| false);
        net.a.start_call(net.now, OFFER).unwrap();
        net.run(Duration::from_millis(10));
        assert!(net.b.decline(200).is_err(), "only error statuses decline");
        net.b.decline(488).unwrap();
        net.run(Duration::from_millis(10));
        assert_eq!(
            net.a_events,
            vec![SipEvent::Failed(SipFailure::Rejected {
                method: Method::Invite,
                status: 488
            })]
        );
        assert_eq!(
            net.a.poll_timeout(),
            None,
            "the INVITE is not retransmitted"
        );
        assert!(
            net.b.accept(ANSWER).is_err(),
            "a declined call cannot be accepted"
        );
    }

    #[test]
    fn lossy_link_still_establishes() {
        let mut drops = (first_only("INVITE"), first_only("SIP/2.0 200"));
        let mut net = Net::new(move |_, t| (drops.0)(false, t) || (drops.1)(false, t));
        let t0 = net.now;
        net.a.start_call(t0, OFFER).unwrap();
        net.run(Duration::from_secs(1));
        // The first INVITE was lost; the retransmission at 500 ms got through, once.
        assert_eq!(
            net.b_events,
            vec![SipEvent::IncomingCall {
                offer: OFFER.into()
            }]
        );
        net.b.accept(ANSWER).unwrap();
        net.run(Duration::from_secs(10));
        assert_eq!(
            net.a_events,
            vec![SipEvent::Established {
                answer: ANSWER.into()
            }]
        );
        assert_eq!(net.b_events.len(), 1);
        assert_eq!(net.a.poll_timeout(), None, "no request left pending");
        let invites = net
            .sent
            .iter()
            .filter(|(_, t)| t.starts_with("INVITE"))
            .count();
        let oks = net
            .sent
            .iter()
            .filter(|(_, t)| t.starts_with("SIP/2.0 200"))
            .count();
        // INVITE at 0, 0.5 s, 1.5 s; the 200 first on accept (lost), then on the 1.5 s INVITE.
        assert_eq!((invites, oks), (3, 2));
        assert!(net.sent.iter().any(|(a, t)| *a && t.starts_with("ACK ")));
    }

    #[test]
    fn duplicate_invite_gets_the_same_200_and_one_event() {
        let (mut a, mut b) = pair();
        let now = Instant::now();
        a.start_call(now, OFFER).unwrap();
        let invite = a.poll_transmit().unwrap();
        b.handle_incoming(now, &invite).unwrap();
        b.handle_incoming(now, &invite).unwrap();
        assert_eq!(
            b.poll_transmit(),
            None,
            "nothing to repeat before accepting"
        );
        b.accept(ANSWER).unwrap();
        let ok = b.poll_transmit().unwrap();
        b.handle_incoming(now, &invite).unwrap();
        assert_eq!(b.poll_transmit(), Some(ok.clone()));
        assert!(matches!(
            b.poll_event(),
            Some(SipEvent::IncomingCall { .. })
        ));
        assert_eq!(b.poll_event(), None);

        // A repeated 200 gets the same ACK again, and no second Established.
        a.handle_incoming(now, &ok).unwrap();
        let ack = a.poll_transmit().unwrap();
        a.handle_incoming(now, &ok).unwrap();
        assert_eq!(a.poll_transmit(), Some(ack.clone()));
        assert!(matches!(a.poll_event(), Some(SipEvent::Established { .. })));
        assert_eq!(a.poll_event(), None);
        b.handle_incoming(now, &ack).unwrap();
        assert_eq!(b.poll_event(), None);
    }

    #[test]
    fn mute_and_unmute_round_trip_with_a_lost_message() {
        let mut net = Net::new(first_only("MESSAGE"));
        net.establish();
        net.a.set_video_muted(net.now, true).unwrap();
        net.run(Duration::from_secs(5));
        assert_eq!(net.b_events, vec![SipEvent::RemoteVideoMuted(true)]);
        assert!(net.sent.iter().any(|(_, t)| t
            .contains("Content-Type: application/x-switchyard-media-state\r\n")
            && t.ends_with("\r\n\r\nvideo=muted")));
        net.b.set_video_muted(net.now, false).unwrap();
        net.a.set_video_muted(net.now, false).unwrap();
        net.run(Duration::from_secs(5));
        assert_eq!(net.a_events, vec![SipEvent::RemoteVideoMuted(false)]);
        assert_eq!(
            net.b_events,
            vec![
                SipEvent::RemoteVideoMuted(true),
                SipEvent::RemoteVideoMuted(false)
            ]
        );
        assert_eq!(net.a.poll_timeout(), None);
        assert_eq!(net.b.poll_timeout(), None);
    }

    #[test]
    fn bye_from_either_side() {
        let mut net = Net::new(first_only(
            "SIP/2.0 200 OK\r\nVia: SIP/2.0/DTLS switchyard.invalid;branch=z9hG4bK",
        ));
        net.establish();
        net.a.hang_up(net.now).unwrap();
        net.run(Duration::from_secs(5));
        assert_eq!(net.b_events, vec![SipEvent::RemoteHangUp]);
        assert_eq!(net.a_events, vec![SipEvent::Ended]);
        assert_eq!(
            net.a.set_video_muted(net.now, true),
            Err(SipError::WrongState("set_video_muted"))
        );

        // The other way, with the BYE's 200 lost once: the repeated BYE is answered again.
        let mut net = Net::new(|_, _| false);
        net.establish();
        let mut drop_ok = first_only("SIP/2.0 200");
        net.drop = Box::new(move |_, t| drop_ok(false, t));
        net.b.hang_up(net.now).unwrap();
        net.run(Duration::from_secs(5));
        assert_eq!(net.a_events, vec![SipEvent::RemoteHangUp]);
        assert_eq!(net.b_events, vec![SipEvent::Ended]);
    }

    #[test]
    fn unanswered_requests_retransmit_then_give_up() {
        let mut net = Net::new(|_, _| true);
        net.a.start_call(net.now, OFFER).unwrap();
        net.run(Duration::from_secs(40));
        assert_eq!(
            net.a_events,
            vec![SipEvent::Failed(SipFailure::Timeout(Method::Invite))]
        );
        // 0, 0.5, 1.5, 3.5, 7.5, then every 4 s up to 31.5 s.
        assert_eq!(net.sent.len(), 11);

        let mut net = Net::new(|_, _| false);
        net.establish();
        net.drop = Box::new(|_, _| true);
        net.a.hang_up(net.now).unwrap();
        net.run(Duration::from_secs(31));
        assert!(net.a_events.is_empty());
        net.run(Duration::from_secs(2));
        assert_eq!(net.a_events, vec![SipEvent::Ended]);
    }

    #[test]
    fn garbage_is_refused_without_panicking() {
        let (mut a, mut b) = pair();
        let now = Instant::now();
        assert!(matches!(
            b.handle_incoming(now, b""),
            Err(SipError::Parse(_))
        ));
        assert!(matches!(
            b.handle_incoming(now, b"hello world\r\n\r\n"),
            Err(SipError::Parse(_))
        ));
        let big = vec![b'A'; MAX_MESSAGE_SIZE + 1];
        assert_eq!(
            b.handle_incoming(now, &big),
            Err(SipError::TooLarge(MAX_MESSAGE_SIZE + 1))
        );
        a.start_call(now, OFFER).unwrap();
        let invite = String::from_utf8(a.poll_transmit().unwrap()).unwrap();
        let longer = format!("{invite}extra");
        assert_eq!(
            b.handle_incoming(now, longer.as_bytes()),
            Err(SipError::ContentLength {
                declared: OFFER.len(),
                actual: OFFER.len() + 5
            })
        );
        let no_length: String = invite
            .split("\r\n")
            .filter(|l| !l.starts_with("Content-Length"))
            .collect::<Vec<_>>()
            .join("\r\n");
        assert_eq!(
            b.handle_incoming(now, no_length.as_bytes()),
            Err(SipError::MissingHeader("Content-Length"))
        );
        let no_call_id: String = invite
            .split("\r\n")
            .filter(|l| !l.starts_with("Call-ID"))
            .collect::<Vec<_>>()
            .join("\r\n");
        assert_eq!(
            b.handle_incoming(now, no_call_id.as_bytes()),
            Err(SipError::MissingHeader("Call-ID"))
        );
        let bad_branch = invite.replace("branch=z9hG4bK", "branch=old");
        assert!(matches!(
            b.handle_incoming(now, bad_branch.as_bytes()),
            Err(SipError::BadHeader("Via", _))
        ));
        let stranger = invite.replace("tel:+16505550100", "tel:+16505550999");
        assert_eq!(
            b.handle_incoming(now, stranger.as_bytes()),
            Err(SipError::WrongParty)
        );
        // Every truncation and a sweep of single-byte corruptions: errors, never panics.
        let bytes = invite.as_bytes();
        for cut in 0..bytes.len() {
            let _ = b.handle_incoming(now, &bytes[..cut]);
        }
        for i in 0..bytes.len() {
            let mut m = bytes.to_vec();
            m[i] = m[i].wrapping_add(0x5A);
            let _ = SipSession::new(uri("mailto:bob@example.com"), uri("tel:+16505550100"))
                .handle_incoming(now, &m);
        }
        let noise: Vec<u8> = (0..2000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        assert!(b.handle_incoming(now, &noise).is_err());
        // None of that started a call.
        assert_eq!(b.poll_event(), None);
        // The real INVITE still works.
        b.handle_incoming(now, bytes).unwrap();
        assert!(matches!(
            b.poll_event(),
            Some(SipEvent::IncomingCall { .. })
        ));
    }
}
