//! What the edge sends to phones, at the wire level: where a phone is reached ([`Flow`]), the
//! requests the edge makes ([`OutRequest`]) with their branches, and the RFC 3261 timer values
//! its transactions run on.

use std::net::SocketAddr;
use std::time::Duration;

use rsip::Method;

use super::message::{self, InboundResponse, Transport};

/// RFC 3261 timer values.
pub const T1: Duration = Duration::from_millis(500);
pub const T2: Duration = Duration::from_secs(4);
/// Timers B, F and H: 64 × T1.
pub const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(32);
/// Whether a client transaction is remembered after its final response, for 64 × T1 (32 s), to
/// pass that response's retransmissions to its call: an INVITE's 2xx for Timer M (RFC 6026: the
/// call ACKs it again), its other finals for Timer D where the transport is unreliable (the call
/// ACKs them again too). A non-INVITE's retransmitted final is absorbed (Timer K) by matching no
/// transaction: the edge drops any response none claims, so Timer K needs no state here.
pub fn remembered_after_final(invite: bool, status: u16, reliable: bool) -> bool {
    invite && ((200..300).contains(&status) || !reliable)
}

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
    pub fn ack_of_failure(&self, response: &InboundResponse) -> OutRequest {
        OutRequest {
            method: Method::Ack,
            to: response.fields.first("To").unwrap_or(&self.to).to_string(),
            contact: None,
            sdp: None,
            ..self.clone()
        }
    }

    /// The CANCEL of this INVITE (RFC 3261 §9.1).
    pub fn cancel(&self) -> OutRequest {
        OutRequest {
            method: Method::Cancel,
            contact: None,
            sdp: None,
            ..self.clone()
        }
    }
}

/// The methods the edge acts on, as an Allow header value.
pub fn allowed() -> String {
    message::ALLOWED
        .iter()
        .map(|m| m.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A transport as a Via names it.
pub fn transport_param(transport: Transport) -> &'static str {
    match transport {
        Transport::Udp => "UDP",
        Transport::Tcp => "TCP",
        Transport::Tls => "TLS",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::sdp;

    #[test]
    fn only_invite_transactions_are_remembered_after_their_final_response() {
        // An INVITE's 2xx: Timer M on every transport.
        assert!(remembered_after_final(true, 200, false));
        assert!(remembered_after_final(true, 299, true));
        // An INVITE's other finals: Timer D on UDP, none on TCP or TLS.
        assert!(remembered_after_final(true, 486, false));
        assert!(!remembered_after_final(true, 486, true));
        // A non-INVITE's (a BYE's): absorbed by matching nothing.
        assert!(!remembered_after_final(false, 200, false));
        assert!(!remembered_after_final(false, 481, true));
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
