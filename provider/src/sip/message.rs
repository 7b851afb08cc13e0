//! The SIP front door, free of I/O: framing on stream transports, and the checks every request
//! passes before the edge acts on it. Whatever fails a check is answered here with the status
//! RFC 3261 gives it (400, 413, 416, 420, 483, 501, 505) whenever the message has a Via to answer
//! along; otherwise it is dropped. RFC 4475's torture messages are what the checks are held to
//! (`tests/tests/main/sip_torture.rs`).
//!
//! rsip parses headers well but refuses unknown methods and `tel:` Request-URIs outright, so the
//! start line is read here and rsip is handed the message with a neutral start line; the method
//! and Request-URI are then judged on their own.

use std::net::SocketAddr;

use rsip::prelude::*;
use rsip::{headers, Header, Headers, Method, Request, Response};

pub const SIP_VERSION: &str = "SIP/2.0";
const BRANCH_MAGIC: &str = "z9hG4bK";

/// How a message reached the edge; responses go back the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }

    pub fn is_stream(self) -> bool {
        self != Transport::Udp
    }
}

/// The request methods the edge acts on; other known methods get 405 with this list in Allow.
pub const ALLOWED: &[Method] = &[
    Method::Register,
    Method::Options,
    Method::Invite,
    Method::Ack,
    Method::Cancel,
    Method::Bye,
    Method::Update,
];

/// A request that passed the front door.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub method: Method,
    /// The Request-URI as sent (`sip:`, `sips:` or `tel:`).
    pub request_uri: String,
    /// The request with its headers and body; its start line is neutral (see the module docs).
    pub request: Request,
    /// Its header fields as read (names spelled out), for lookups by name.
    pub fields: Fields,
    pub source: SocketAddr,
    pub transport: Transport,
}

/// A response to one of the edge's own requests.
#[derive(Debug, Clone)]
pub struct InboundResponse {
    pub status: u16,
    pub fields: Fields,
    pub body: Vec<u8>,
    pub source: SocketAddr,
    pub transport: Transport,
}

impl InboundResponse {
    /// The branch of the top Via: which of the edge's client transactions it answers.
    pub fn branch(&self) -> Option<&str> {
        let top = self.fields.first("Via")?.split(',').next()?;
        param(top, "branch")
    }

    /// The CSeq method (a CANCEL and its INVITE share a branch).
    pub fn cseq_method(&self) -> Option<&str> {
        self.fields.first("CSeq")?.split_whitespace().nth(1)
    }

    pub fn to_tag(&self) -> Option<&str> {
        tag_of(self.fields.first("To")?)
    }
}

/// The `tag` parameter of a From or To value.
pub fn tag_of(value: &str) -> Option<&str> {
    let params = match value.rfind('>') {
        Some(end) => &value[end + 1..],
        None => value,
    };
    param(params, "tag").filter(|t| !t.is_empty())
}

/// The value of parameter `name` among the `;`-separated parameters after the first `;` of
/// `value`, with the linear whitespace RFC 3261 §25.1 allows around `;` and `=` (`SEMI`,
/// `EQUAL`): `;  tag = 1` is a tag of `1` (RFC 4475 §3.1.1.1).
fn param<'a>(value: &'a str, name: &str) -> Option<&'a str> {
    value.split(';').skip(1).find_map(|p| {
        let (key, v) = p.split_once('=')?;
        key.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// What the front door made of a message.
#[derive(Debug)]
pub enum Received {
    Request(Box<Inbound>),
    Response(Box<InboundResponse>),
    /// Answered here: send these bytes back to the source.
    Answered(Vec<u8>),
    /// Nothing to answer (a response, an ACK to an error, or too broken to answer).
    Dropped(&'static str),
}

/// Limits of the front door.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_message_bytes: usize,
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
                )
        })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Splits a header value at the commas that separate entries, not those inside quotes or `<>`.
pub fn split_list(value: &str) -> Vec<String> {
    let mut entries = Vec::new();
    let (mut quoted, mut angle, mut escaped) = (false, false, false);
    let mut current = String::new();
    for c in value.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '<' if !quoted => angle = true,
            '>' if !quoted => angle = false,
            ',' if !quoted && !angle => {
                entries.push(std::mem::take(&mut current).trim().to_string());
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    entries.push(current.trim().to_string());
    entries.retain(|e| !e.is_empty());
    entries
}

/// The start line's three parts.
struct StartLine<'a> {
    method: &'a str,
    uri: &'a str,
    version: &'a str,
}

fn start_line(text: &str) -> Option<StartLine<'_>> {
    let mut parts = text.split(' ');
    let line = StartLine {
        method: parts.next()?,
        uri: parts.next()?,
        version: parts.next()?,
    };
    (parts.next().is_none() && !line.uri.is_empty()).then_some(line)
}

/// RFC 3261 §7.3.3 compact header names, which rsip does not know.
const COMPACT: &[(&str, &str)] = &[
    ("i", "Call-ID"),
    ("m", "Contact"),
    ("e", "Content-Encoding"),
    ("l", "Content-Length"),
    ("c", "Content-Type"),
    ("f", "From"),
    ("s", "Subject"),
    ("k", "Supported"),
    ("t", "To"),
    ("v", "Via"),
];

/// A message's header fields in order, names spelled out, values trimmed.
#[derive(Debug, Clone, Default)]
pub struct Fields(Vec<(String, String)>);

impl Fields {
    /// The values of every field called `name`.
    pub fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    pub fn first<'a>(&'a self, name: &'a str) -> Option<&'a str> {
        self.values(name).next()
    }
}

/// The header fields with folded lines joined (RFC 3261 §7.3.1) and compact names spelled out,
/// where the body starts, and whether a line that is no header at all was left out.
fn read_fields(rest: &[u8]) -> Option<(Fields, usize, bool)> {
    let head_end = find(rest, b"\r\n\r\n")?;
    let head = std::str::from_utf8(&rest[..head_end]).ok()?;
    let mut fields: Vec<(String, String)> = Vec::new();
    let mut malformed = false;
    for line in head.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            let (_, value) = fields.last_mut()?;
            value.push(' ');
            value.push_str(line.trim());
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            malformed = true;
            continue;
        };
        let name = name.trim_end();
        let name = COMPACT
            .iter()
            .find(|(short, _)| short.eq_ignore_ascii_case(name))
            .map_or(name, |(_, long)| long);
        fields.push((name.to_string(), value.trim().to_string()));
    }
    Some((Fields(fields), head_end, malformed))
}

/// Parses everything but the start line, which is replaced by a neutral one, from the fields
/// as read; true when a malformed header line had to be left out.
fn parse_rest(rest: &[u8]) -> Option<(Request, Fields, bool)> {
    let (fields, head_end, malformed) = read_fields(rest)?;
    const NEUTRAL_LINE: &[u8] = b"OPTIONS sip:invalid SIP/2.0";
    let mut neutral = Vec::with_capacity(NEUTRAL_LINE.len() + rest.len() + 4 * fields.0.len());
    neutral.extend_from_slice(NEUTRAL_LINE);
    for (name, value) in &fields.0 {
        for piece in [b"\r\n", name.as_bytes(), b": ", value.as_bytes()] {
            neutral.extend_from_slice(piece);
        }
    }
    neutral.extend_from_slice(&rest[head_end..]);
    match rsip::SipMessage::try_from(neutral.as_slice()) {
        Ok(rsip::SipMessage::Request(request)) => Some((request, fields, malformed)),
        _ => None,
    }
}

/// Enough to answer: a Via to send the answer back along. What else an answer copies (From,
/// To, Call-ID, CSeq) it copies if present; a request without them is refused with 400 (RFC
/// 4475 §3.3.1).
fn answerable(request: &Request) -> bool {
    request.via_header().is_ok()
}

/// The header fields every request must have (RFC 3261 §8.1.1); Max-Forwards is left out, as
/// RFC 2543 requests lack it (RFC 4475 §3.4.1).
const REQUIRED: &[&str] = &["To", "From", "Call-ID", "CSeq", "Via"];

/// The header fields that take one value (RFC 3261 §20, RFC 4475 §3.3.8); Content-Length is
/// judged with the body.
const SINGLE: &[&str] = &["To", "From", "Call-ID", "CSeq", "Max-Forwards"];

/// The top Via value (the first entry of the first Via field).
fn top_via(fields: &Fields) -> Option<&str> {
    fields.first("Via")?.split(',').next().map(str::trim)
}

/// What the top Via's `branch` says (RFC 3261 §8.1.1.7, §17.2.3).
enum Branch {
    /// An RFC 3261 branch: the magic cookie and an identifier.
    Rfc3261(String),
    /// No branch, or one without the cookie: an RFC 2543 request, matched on its other fields.
    Rfc2543,
    /// The cookie and nothing else (RFC 4475 §3.2.1): refused.
    CookieOnly,
}

fn branch_of(fields: &Fields) -> Branch {
    match top_via(fields).and_then(|via| param(via, "branch")) {
        Some(b) if b == BRANCH_MAGIC => Branch::CookieOnly,
        Some(b) if b.starts_with(BRANCH_MAGIC) => Branch::Rfc3261(b.to_string()),
        _ => Branch::Rfc2543,
    }
}

/// The identifier of the request's server transaction: the top Via's branch, or for an RFC
/// 2543 request (no RFC 3261 branch) what RFC 3261 §17.2.3 matches such a request on (the
/// Request-URI, the From tag, the Call-ID, the CSeq number and the top Via; the method is part
/// of the edge's keys already, and the To tag is left out so that the ACK of a failure matches
/// its INVITE).
pub fn top_branch(inbound: &Inbound) -> Option<String> {
    match branch_of(&inbound.fields) {
        Branch::Rfc3261(branch) => Some(branch),
        Branch::CookieOnly => None,
        Branch::Rfc2543 => {
            let fields = &inbound.fields;
            let number = fields.first("CSeq")?.split_whitespace().next()?;
            let via: String = top_via(fields)?
                .chars()
                .filter(|c| !c.is_whitespace())
                .collect();
            Some(format!(
                "rfc2543 {} {} {} {number} {via}",
                inbound.request_uri,
                fields.first("From").and_then(tag_of).unwrap_or(""),
                fields.first("Call-ID")?,
            ))
        }
    }
}

/// A Via value's sent-protocol and sent-by, with the linear whitespace RFC 3261 §25.1 allows
/// around its `/` (`SLASH`) taken out.
fn via_sent_by(entry: &str) -> Option<(String, String)> {
    let head = entry.split(';').next()?;
    let joined: Vec<&str> = head.split('/').map(str::trim).collect();
    let joined = joined.join("/");
    let mut parts = joined.split_whitespace();
    let (protocol, sent_by) = (parts.next()?, parts.next()?);
    let well_formed = parts.next().is_none()
        && protocol.split('/').count() == 3
        && protocol.split('/').all(is_token);
    well_formed.then(|| (protocol.to_string(), sent_by.to_string()))
}

/// Every Via value has a sent-protocol, a sent-by and no empty parameter (RFC 4475 §3.1.2.1).
fn vias_well_formed(fields: &Fields) -> bool {
    fields.values("Via").all(|value| {
        value.split(',').all(|entry| {
            via_sent_by(entry).is_some() && entry.split(';').skip(1).all(|p| !p.trim().is_empty())
        })
    })
}

/// A From, To or Contact value as RFC 3261 §20.10 has it: a `name-addr` whose display name is
/// a quoted string or tokens (RFC 4475 §3.1.2.15) and whose `<addr-spec>` holds no whitespace
/// (§3.1.2.14), or a bare `addr-spec` without a `?` (headers need the angle brackets,
/// §3.1.2.13); quotes balanced either way (§3.1.2.6). Parameters after it are not judged.
fn name_addr_well_formed(value: &str) -> bool {
    let value = value.trim();
    let (mut quoted, mut escaped, mut angle) = (false, false, None);
    for (i, c) in value.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '<' if !quoted => {
                angle = Some(i);
                break;
            }
            _ => {}
        }
    }
    if quoted {
        return false;
    }
    let Some(start) = angle else {
        let addr_spec = value.split(';').next().unwrap_or("").trim();
        return !addr_spec.is_empty() && !addr_spec.contains(['?', '"', ' ', '\t']);
    };
    let Some(len) = value[start + 1..].find('>') else {
        return false;
    };
    let addr_spec = &value[start + 1..start + 1 + len];
    let display = value[..start].trim();
    let display_ok = match display.strip_prefix('"') {
        // One quoted string: its closing quote is the last character.
        Some(inner) => {
            let mut escaped = false;
            let close = inner.char_indices().find_map(|(i, c)| match c {
                _ if escaped => {
                    escaped = false;
                    None
                }
                '\\' => {
                    escaped = true;
                    None
                }
                '"' => Some(i),
                _ => None,
            });
            close == Some(inner.len() - 1)
        }
        None => display.split_whitespace().all(is_token),
    };
    display_ok && !addr_spec.is_empty() && !addr_spec.contains(char::is_whitespace)
}

/// What is wrong with the header fields, if anything: a required one missing or a single one
/// repeated, a bad Via, or a From, To or Contact that is no address.
fn fields_problem(fields: &Fields) -> Option<String> {
    if let Some(missing) = REQUIRED.iter().find(|n| fields.first(n).is_none()) {
        return Some(format!("Missing {missing}"));
    }
    if let Some(repeated) = SINGLE.iter().find(|n| fields.values(n).count() > 1) {
        return Some(format!("Repeated {repeated}"));
    }
    if !vias_well_formed(fields) {
        return Some("Bad Via".into());
    }
    for name in ["From", "To"] {
        if !fields.values(name).all(name_addr_well_formed) {
            return Some(format!("Bad {name}"));
        }
    }
    let contacts_ok = fields
        .values("Contact")
        .flat_map(split_list)
        .all(|c| c == "*" || name_addr_well_formed(&c));
    (!contacts_ok).then(|| "Bad Contact".into())
}

/// What is wrong with the Request-URI, if anything: no URI at all (RFC 3261 §19.1.1 `scheme
/// ":"`, so not `<sip:…>`, RFC 4475 §3.1.2.7) or a `sip:`/`sips:` URI with headers, which a
/// Request-URI must not have (RFC 3261 §19.1.1's table, RFC 4475 §3.1.2.11).
fn request_uri_problem(uri: &str) -> Option<&'static str> {
    let Some((scheme, rest)) = uri.split_once(':') else {
        return Some("Bad Request-URI");
    };
    let mut chars = scheme.chars();
    let scheme_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !scheme_ok || uri.contains(['<', '>', '"']) {
        return Some("Bad Request-URI");
    }
    let sip = scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips");
    // The user part may hold a `?` (RFC 4475 §3.1.1.2); headers follow the host.
    let after_user = rest.split_once('@').map_or(rest, |(_, host)| host);
    (sip && after_user.contains('?')).then_some("Headers Not Allowed In The Request-URI")
}

/// The `CSeq` number and method name.
pub fn cseq(request: &Request) -> Option<(u32, String)> {
    let value = request.cseq_header().ok()?.value().trim().to_string();
    let (number, method) = value.split_once(char::is_whitespace)?;
    Some((number.parse().ok()?, method.trim().to_string()))
}

/// A response to `request` (RFC 3261 §8.2.6): its Vias (the top one marked with where it came
/// from, RFC 3261 §18.2.1 and RFC 3581), From, To (with `to_tag` when it has none and `to_tag` is
/// not empty), Call-ID and CSeq,
/// then `extra` headers and an empty body.
pub fn response(
    request: &Request,
    source: SocketAddr,
    status: u16,
    reason: &str,
    to_tag: &str,
    extra: Vec<Header>,
) -> Vec<u8> {
    response_with_body(request, source, status, reason, to_tag, extra, &[])
}

/// [`response`] with a body (its Content-Type among `extra`).
pub fn response_with_body(
    request: &Request,
    source: SocketAddr,
    status: u16,
    reason: &str,
    to_tag: &str,
    extra: Vec<Header>,
    body: &[u8],
) -> Vec<u8> {
    let mut headers = Headers::default();
    let mut first_via = true;
    for h in request.headers.iter() {
        match h {
            Header::Via(via) if first_via => {
                first_via = false;
                headers.push(headers::Via::new(mark_via(via.value(), source)).into());
            }
            Header::Via(_) | Header::From(_) | Header::CallId(_) | Header::CSeq(_) => {
                headers.push(h.clone())
            }
            Header::To(to) => {
                let value = to.value();
                // An empty `to_tag` answers outside any dialog (100 Trying): no tag added.
                if tag_of(value).is_some() || to_tag.is_empty() {
                    headers.push(h.clone());
                } else {
                    headers.push(headers::To::new(format!("{value};tag={to_tag}")).into());
                }
            }
            _ => {}
        }
    }
    for h in extra {
        headers.push(h);
    }
    headers.push(headers::Server::new(concat!("switchyard/", env!("CARGO_PKG_VERSION"))).into());
    headers.push(headers::ContentLength::from(body.len() as u32).into());
    let response = Response {
        status_code: status.into(),
        version: rsip::Version::V2,
        headers,
        body: body.to_vec(),
    };
    // rsip prints its own reason phrase for known codes; ours says why.
    let text = response.to_string();
    let first_end = text.find("\r\n").unwrap_or(text.len());
    let mut bytes = format!("{SIP_VERSION} {status} {reason}").into_bytes();
    bytes.extend_from_slice(&text.as_bytes()[first_end..]);
    bytes
}

/// Adds `received` when the Via's host is not the source address, and fills an empty `rport`.
fn mark_via(value: &str, source: SocketAddr) -> String {
    let mut params: Vec<String> = value.split(';').map(|p| p.trim().to_string()).collect();
    let sent_by_host = via_sent_by(value)
        .map(|(_, hostport)| {
            if let Some(v6) = hostport.strip_prefix('[') {
                v6.split(']').next().unwrap_or("").to_string()
            } else {
                hostport.split(':').next().unwrap_or("").to_string()
            }
        })
        .unwrap_or_default();
    let source_ip = source.ip().to_string();
    let mut has_received = false;
    for p in params.iter_mut().skip(1) {
        if p.eq_ignore_ascii_case("rport") {
            *p = format!("rport={}", source.port());
        }
        if p.to_ascii_lowercase().starts_with("received=") {
            has_received = true;
        }
    }
    if sent_by_host != source_ip && !has_received {
        params.push(format!("received={source_ip}"));
    }
    params.join(";")
}

fn answer(
    request: &Request,
    source: SocketAddr,
    status: u16,
    reason: &str,
    extra: Vec<Header>,
) -> Received {
    Received::Answered(response(
        request,
        source,
        status,
        reason,
        &new_tag(6),
        extra,
    ))
}

/// A fresh tag, Call-ID part or branch suffix: lowercase hex, so that no header of the edge
/// holds a word such as `CSeq` that lenient parsers (sipp's) search whole messages for.
pub fn new_tag(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut buf)
        .expect("system randomness");
    hex::encode(buf)
}

pub fn allow_header() -> Header {
    let methods: Vec<String> = ALLOWED.iter().map(|m| m.to_string()).collect();
    Header::Other("Allow".into(), methods.join(", "))
}

/// Checks one complete message (a datagram, or one framed off a stream).
pub fn receive(bytes: &[u8], source: SocketAddr, transport: Transport, limits: Limits) -> Received {
    let line_end = match find(bytes, b"\r\n") {
        Some(end) => end,
        None => return Received::Dropped("no start line"),
    };
    let Ok(first) = std::str::from_utf8(&bytes[..line_end]) else {
        return Received::Dropped("start line is not UTF-8");
    };
    let rest = &bytes[line_end + 2..];
    if let Some(status_line) = first.strip_prefix("SIP/2.0 ") {
        return receive_response(status_line, rest, source, transport);
    }
    // A datagram whose header block runs to its end without the empty line (RFC 4475
    // §3.1.2.15 is one) is read as far as it goes, to be refused with 400.
    let unterminated =
        !transport.is_stream() && rest.ends_with(b"\r\n") && find(rest, b"\r\n\r\n").is_none();
    let terminated;
    let rest = if unterminated {
        terminated = [rest, b"\r\n"].concat();
        &terminated[..]
    } else {
        rest
    };
    let Some((request, fields, malformed)) = parse_rest(rest) else {
        return Received::Dropped("headers do not parse");
    };
    if !answerable(&request) {
        return Received::Dropped("no Via to answer along");
    }
    let is_ack = first.starts_with("ACK ");
    // An ACK is never answered (RFC 3261 §17.2.1): what fails below is dropped for it.
    let refuse = |status: u16, reason: &str, extra: Vec<Header>| {
        if is_ack {
            Received::Dropped("a bad ACK")
        } else {
            answer(&request, source, status, reason, extra)
        }
    };
    if bytes.len() > limits.max_message_bytes {
        return refuse(413, "Message Too Large", vec![]);
    }
    let Some(line) = start_line(first) else {
        return refuse(400, "Bad Request Line", vec![]);
    };
    if !line.version.eq_ignore_ascii_case(SIP_VERSION) {
        return refuse(505, "Version Not Supported", vec![]);
    }
    if !is_token(line.method) {
        return refuse(400, "Bad Method", vec![]);
    }
    if malformed {
        return refuse(400, "Malformed Header Line", vec![]);
    }
    if let Some(problem) = fields_problem(&fields) {
        return refuse(400, &problem, vec![]);
    }
    if unterminated {
        return refuse(400, "Header Block Not Terminated", vec![]);
    }
    let Ok(method) = line.method.parse::<Method>() else {
        return refuse(501, "Not Implemented", vec![allow_header()]);
    };
    if let Branch::CookieOnly = branch_of(&fields) {
        return refuse(400, "Via Branch Is The Magic Cookie Alone", vec![]);
    }
    match cseq(&request) {
        Some((_, cseq_method)) if cseq_method.eq_ignore_ascii_case(line.method) => {}
        _ => return refuse(400, "Bad CSeq", vec![]),
    }
    let body_length = match content_length(&request, transport) {
        Ok(length) => length,
        Err(reason) => return refuse(400, reason, vec![]),
    };
    if let Some(problem) = request_uri_problem(line.uri) {
        return refuse(400, problem, vec![]);
    }
    let scheme = line
        .uri
        .split_once(':')
        .map(|(s, _)| s.to_ascii_lowercase());
    match scheme.as_deref() {
        Some("sip" | "sips" | "tel") => {}
        _ => return refuse(416, "Unsupported URI Scheme", vec![]),
    }
    match fields.first("Max-Forwards").map(|v| v.parse::<u8>()) {
        None => {}
        Some(Err(_)) => return refuse(400, "Bad Max-Forwards", vec![]),
        Some(Ok(0)) if !matches!(method, Method::Register | Method::Options) => {
            return refuse(483, "Too Many Hops", vec![]);
        }
        Some(Ok(_)) => {}
    }
    if !matches!(method, Method::Ack | Method::Cancel) {
        let required: Vec<&str> = fields
            .values("Require")
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .collect();
        if !required.is_empty() {
            let unsupported = Header::Other("Unsupported".into(), required.join(", "));
            return refuse(420, "Bad Extension", vec![unsupported]);
        }
    }
    if !ALLOWED.contains(&method) {
        return refuse(405, "Method Not Allowed", vec![allow_header()]);
    }
    let mut request = request;
    request.body.truncate(body_length);
    Received::Request(Box::new(Inbound {
        method,
        request_uri: line.uri.to_string(),
        request,
        fields,
        source,
        transport,
    }))
}

fn receive_response(
    status_line: &str,
    rest: &[u8],
    source: SocketAddr,
    transport: Transport,
) -> Received {
    let Some(status) = status_line
        .split(' ')
        .next()
        .and_then(|code| code.parse::<u16>().ok())
        .filter(|code| (100..700).contains(code))
    else {
        return Received::Dropped("a response with a bad status line");
    };
    let Some((fields, head_end, _)) = read_fields(rest) else {
        return Received::Dropped("a response whose headers do not parse");
    };
    let body = rest[head_end + 4..].to_vec();
    let response = InboundResponse {
        status,
        fields,
        body,
        source,
        transport,
    };
    if response.branch().is_none() || response.cseq_method().is_none() {
        return Received::Dropped("a response without a Via branch or CSeq");
    }
    Received::Response(Box::new(response))
}

/// The length of the body: the Content-Length, which on a datagram must not be more than the
/// octets after the header block (RFC 3261 §18.3 lets a receiver refuse that) and may be less,
/// the rest being discarded (§18.3 again, RFC 4475 §3.1.1.8); on a stream it was what framed
/// the message. A datagram may leave it out: the body is then the rest of the datagram.
fn content_length(request: &Request, transport: Transport) -> Result<usize, &'static str> {
    let declared: Vec<&headers::ContentLength> = request
        .headers
        .iter()
        .filter_map(|h| match h {
            Header::ContentLength(l) => Some(l),
            _ => None,
        })
        .collect();
    match declared.as_slice() {
        [] if transport.is_stream() => Err("Content-Length Required On A Stream"),
        [] => Ok(request.body.len()),
        [one] => match one.length() {
            Ok(n) if n as usize <= request.body.len() => Ok(n as usize),
            Ok(_) => Err("Content-Length Larger Than The Body"),
            Err(_) => Err("Bad Content-Length"),
        },
        _ => Err("Repeated Content-Length"),
    }
}

/// Splits a byte stream (TCP, TLS) into messages by their Content-Length.
#[derive(Debug, Default)]
pub struct StreamFramer {
    buffer: Vec<u8>,
}

/// What the framer found.
#[derive(Debug, PartialEq, Eq)]
pub enum Framed {
    Message(Vec<u8>),
    /// A keep-alive ping (RFC 5626 §3.5.1: CRLFCRLF), answered with CRLF.
    Ping,
    /// The stream cannot be read on (no or bad Content-Length, or a message over the limit):
    /// the connection closes.
    Broken(&'static str),
}

impl StreamFramer {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next complete message, if the buffer holds one.
    pub fn next(&mut self, max_message_bytes: usize) -> Option<Framed> {
        if self.buffer.starts_with(b"\r\n\r\n") {
            self.buffer.drain(..4);
            return Some(Framed::Ping);
        }
        let skip = self
            .buffer
            .iter()
            .take_while(|&&b| b == b'\r' || b == b'\n')
            .count();
        if skip > 0 && skip < self.buffer.len() {
            self.buffer.drain(..skip);
        }
        let Some(head_end) = find(&self.buffer, b"\r\n\r\n") else {
            return (self.buffer.len() > max_message_bytes)
                .then_some(Framed::Broken("a header block over the size limit"));
        };
        let head = String::from_utf8_lossy(&self.buffer[..head_end]);
        let mut lengths = head.split("\r\n").skip(1).filter_map(|line| {
            let (name, value) = line.split_once(':')?;
            let name = name.trim();
            (name.eq_ignore_ascii_case("Content-Length") || name.eq_ignore_ascii_case("l"))
                .then(|| value.trim().parse::<usize>().ok())
        });
        let length = match (lengths.next(), lengths.next()) {
            (Some(Some(n)), None) => n,
            (None, _) => return Some(Framed::Broken("no Content-Length on a stream")),
            _ => return Some(Framed::Broken("a bad or repeated Content-Length")),
        };
        // Saturating: a Content-Length near usize::MAX must not wrap round to a short frame.
        let total = (head_end + 4).saturating_add(length);
        if total > max_message_bytes {
            return Some(Framed::Broken("a message over the size limit"));
        }
        if self.buffer.len() < total {
            return None;
        }
        Some(Framed::Message(self.buffer.drain(..total).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_message_bytes: 4096,
    };

    fn source() -> SocketAddr {
        "192.0.2.7:5062".parse().unwrap()
    }

    fn request(start: &str, extra: &str, body: &str) -> Vec<u8> {
        format!(
            "{start}\r\nVia: SIP/2.0/UDP 10.0.0.1:5062;branch=z9hG4bK776asdhds;rport\r\n\
             Max-Forwards: 70\r\nTo: <sip:bob@a.test>\r\nFrom: <sip:bob@a.test>;tag=1928301774\r\n\
             Call-ID: a84b4c76e66710\r\nCSeq: 1 {method}\r\n{extra}Content-Length: {len}\r\n\r\n{body}",
            method = start.split(' ').next().unwrap(),
            len = body.len()
        )
        .into_bytes()
    }

    fn status_of(received: &Received) -> (u16, String) {
        let Received::Answered(bytes) = received else {
            panic!("not answered: {received:?}");
        };
        let text = String::from_utf8(bytes.clone()).unwrap();
        let line = text.lines().next().unwrap();
        let mut parts = line.splitn(3, ' ');
        parts.next();
        (parts.next().unwrap().parse().unwrap(), text)
    }

    #[test]
    fn a_good_register_passes_and_keeps_its_request_uri() {
        let received = receive(
            &request("REGISTER sip:a.test SIP/2.0", "", ""),
            source(),
            Transport::Udp,
            LIMITS,
        );
        let Received::Request(inbound) = received else {
            panic!("{received:?}")
        };
        assert_eq!(inbound.method, Method::Register);
        assert_eq!(inbound.request_uri, "sip:a.test");
    }

    #[test]
    fn bad_requests_get_the_status_rfc_3261_gives_them() {
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (request("FROBNICATE sip:a.test SIP/2.0", "", ""), 501),
            (request("SUBSCRIBE sip:a.test SIP/2.0", "", ""), 405),
            (request("MESSAGE sip:a.test SIP/2.0", "", ""), 405),
            (request("REGISTER mailto:bob@a.test SIP/2.0", "", ""), 416),
            (request("REGISTER http://a.test SIP/2.0", "", ""), 416),
            (request("REGISTER sip:a.test SIP/3.0", "", ""), 505),
            (request("REGISTER  sip:a.test SIP/2.0", "", ""), 400),
            (
                request("REGISTER sip:a.test SIP/2.0", "Require: 100rel\r\n", ""),
                420,
            ),
            (
                request("INVITE sip:bob@a.test SIP/2.0", "", "").replace_max_forwards("0"),
                483,
            ),
            (
                request("REGISTER sip:a.test SIP/2.0", "", "").replace_max_forwards("x"),
                400,
            ),
            (
                request("REGISTER sip:a.test SIP/2.0", "", "v=0\r\n").replace_content_length("99"),
                400,
            ),
            (
                request("REGISTER sip:a.test SIP/2.0", "", "")
                    .replace_first("branch=z9hG4bK776asdhds", "branch=z9hG4bK"),
                400,
            ),
            (
                request("REGISTER sip:a.test SIP/2.0", "", "")
                    .replace_first("CSeq: 1 REGISTER", "CSeq: 1 INVITE"),
                400,
            ),
            (
                request(
                    "REGISTER sip:a.test SIP/2.0",
                    "a line that is no header\r\n",
                    "",
                ),
                400,
            ),
            (
                request(
                    "REGISTER sip:a.test SIP/2.0",
                    &format!("X-Padding: {}\r\n", "p".repeat(5000)),
                    "",
                ),
                413,
            ),
        ];
        for (bytes, status) in cases {
            let received = receive(&bytes, source(), Transport::Udp, LIMITS);
            assert_eq!(
                status_of(&received).0,
                status,
                "{}",
                String::from_utf8_lossy(&bytes)
            );
        }
        let (_, text) = status_of(&receive(
            &request("FROBNICATE sip:a.test SIP/2.0", "", ""),
            source(),
            Transport::Udp,
            LIMITS,
        ));
        assert!(
            text.contains("Allow: REGISTER, OPTIONS, INVITE, ACK, CANCEL, BYE, UPDATE"),
            "{text}"
        );
        assert!(text.contains("CSeq: 1 FROBNICATE"), "{text}");
        let (_, text) = status_of(&receive(
            &request(
                "REGISTER sip:a.test SIP/2.0",
                "Require: 100rel, path\r\n",
                "",
            ),
            source(),
            Transport::Udp,
            LIMITS,
        ));
        assert!(text.contains("Unsupported: 100rel, path"), "{text}");
    }

    fn passes(bytes: &[u8]) -> Box<Inbound> {
        match receive(bytes, source(), Transport::Udp, LIMITS) {
            Received::Request(inbound) => inbound,
            other => panic!("{other:?}: {}", String::from_utf8_lossy(bytes)),
        }
    }

    /// RFC 3261 §17.2.3: a request without an RFC 3261 branch (RFC 4475 §3.1.1.1, §3.4.1) is
    /// served, its transaction matched on its other fields; the ACK of a failure and a CANCEL
    /// match their INVITE.
    #[test]
    fn rfc_2543_requests_pass_with_a_transaction_of_their_own() {
        let invite = request("INVITE sip:bob@a.test SIP/2.0", "", "")
            .replace_first(";branch=z9hG4bK776asdhds", "");
        let id = top_branch(&passes(&invite)).unwrap();
        assert!(
            id.starts_with("rfc2543 sip:bob@a.test 1928301774 a84b4c76e66710 1 "),
            "{id}"
        );
        let ack = invite
            .clone()
            .replace_first("INVITE sip", "ACK sip")
            .replace_first("1 INVITE", "1 ACK")
            .replace_first("<sip:bob@a.test>\r\nFrom", "<sip:bob@a.test>;tag=x\r\nFrom");
        assert_eq!(top_branch(&passes(&ack)).unwrap(), id);
        let other = invite.clone().replace_first("CSeq: 1", "CSeq: 2");
        assert_ne!(top_branch(&passes(&other)).unwrap(), id);
        let without_cookie = request("REGISTER sip:a.test SIP/2.0", "", "")
            .replace_first("branch=z9hG4bK776asdhds", "branch=390skdjuw");
        assert!(top_branch(&passes(&without_cookie))
            .unwrap()
            .starts_with("rfc2543 "));
        let good = passes(&request("REGISTER sip:a.test SIP/2.0", "", ""));
        assert_eq!(top_branch(&good).as_deref(), Some("z9hG4bK776asdhds"));
    }

    #[test]
    fn tags_and_parameters_may_have_whitespace_around_their_equals() {
        assert_eq!(
            tag_of("sip:a@b.test ;   tag    = 1918181833n"),
            Some("1918181833n")
        );
        assert_eq!(tag_of("\"x\" <sip:a@b.test;tag=no> ; TAG=yes"), Some("yes"));
        assert_eq!(tag_of("<sip:a@b.test>;tag="), None);
        // The answer keeps the To's tag instead of adding a second one.
        let bytes = request("FROBNICATE sip:a.test SIP/2.0", "", "")
            .replace_first("To: <sip:bob@a.test>", "To: <sip:bob@a.test> ; tag = 7");
        let (status, text) = status_of(&receive(&bytes, source(), Transport::Udp, LIMITS));
        assert_eq!(status, 501);
        assert_eq!(text.matches("tag").count(), 2, "{text}");
    }

    #[test]
    fn octets_after_the_body_of_a_datagram_are_discarded() {
        let mut bytes = request("OPTIONS sip:a.test SIP/2.0", "", "v=0\r\n");
        bytes.extend_from_slice(b"\r\nINVITE sip:joe@a.test SIP/2.0\r\n\r\n");
        assert_eq!(passes(&bytes).request.body, b"v=0\r\n");
        let without_length = request("OPTIONS sip:a.test SIP/2.0", "", "")
            .replace_first("Content-Length: 0\r\n", "");
        assert!(passes(&without_length).request.body.is_empty());
    }

    /// The syntax errors RFC 4475 §3.1.2 and §3.3 name, each refused with 400.
    #[test]
    fn malformed_fields_and_request_uris_are_refused() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                request("OPTIONS sip:a.test SIP/2.0", "", "")
                    .replace_first("Call-ID: a84b4c76e66710\r\n", ""),
                "Missing Call-ID",
            ),
            (
                request("OPTIONS sip:a.test SIP/2.0", "Call-ID: other\r\n", ""),
                "Repeated Call-ID",
            ),
            (
                request("OPTIONS sip:a.test SIP/2.0", "Max-Forwards: 5\r\n", ""),
                "Repeated Max-Forwards",
            ),
            (
                request("OPTIONS sip:a.test SIP/2.0", "", "").replace_first(";rport", ";;,;,,"),
                "Bad Via",
            ),
            (
                request("OPTIONS sip:a.test SIP/2.0", "", "")
                    .replace_first("To: <sip:bob@a.test>", "To: \"Mr. J. User <sip:j@a.test>"),
                "Bad To",
            ),
            (
                request("OPTIONS sip:a.test SIP/2.0", "", "")
                    .replace_first("To: <sip:bob@a.test>", "To: Watson, Thomas <sip:t@a.test>"),
                "Bad To",
            ),
            (
                request("OPTIONS sip:a.test SIP/2.0", "", "")
                    .replace_first("To: <sip:bob@a.test>", "To: \"W\" < sip:t@a.test >"),
                "Bad To",
            ),
            (
                request(
                    "REGISTER sip:a.test SIP/2.0",
                    "Contact: sip:bob@a.test?Route=%3Csip:b.test%3E\r\n",
                    "",
                ),
                "Bad Contact",
            ),
            (
                request("OPTIONS <sip:a.test> SIP/2.0", "", ""),
                "Bad Request-URI",
            ),
            (
                request(
                    "OPTIONS sip:bob@a.test?Route=%3Csip:b.test%3E SIP/2.0",
                    "",
                    "",
                ),
                "Headers Not Allowed In The Request-URI",
            ),
            (
                request("OPTIONS sip:a.test SIP/2.0", "", "")
                    .replace_first("Content-Length: 0\r\n\r\n", "Content-Length: 0\r\n"),
                "Header Block Not Terminated",
            ),
        ];
        for (bytes, reason) in cases {
            let (status, text) = status_of(&receive(&bytes, source(), Transport::Udp, LIMITS));
            assert_eq!(status, 400, "{text}");
            assert!(
                text.starts_with(&format!("SIP/2.0 400 {reason}\r\n")),
                "{text}"
            );
        }
        // What the grammar allows passes: tokens as a display name (RFC 4475 §3.1.1.6), a
        // quoted one with escapes, headers inside angle brackets, `?` in a user part.
        for (from, to) in [
            ("To: <sip:bob@a.test>", "To: caller<sip:bob@a.test>"),
            ("To: <sip:bob@a.test>", "To: A. Bell <sip:bob@a.test>"),
            (
                "To: <sip:bob@a.test>",
                "To: \"J \\\\\\\"\" <sip:bob@a.test>",
            ),
            ("OPTIONS sip:a.test", "OPTIONS sip:a?b@a.test"),
        ] {
            passes(&request("OPTIONS sip:a.test SIP/2.0", "", "").replace_first(from, to));
        }
        passes(&request(
            "OPTIONS sip:a.test SIP/2.0",
            "Contact: <sip:bob@a.test?Route=%3Csip:b.test%3E>, *\r\n",
            "",
        ));
    }

    #[test]
    fn compact_and_folded_headers_are_read() {
        let bytes = b"REGISTER sip:a.test SIP/2.0\r\nv: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKc1\r\n\
            t: <sip:bob@a.test>\r\nf: <sip:bob@a.test>\r\n ;tag=9\r\ni: c1\r\n\
            CSeq: 2 REGISTER\r\nl: 0\r\n\r\n";
        let Received::Request(inbound) = receive(bytes, source(), Transport::Udp, LIMITS) else {
            panic!("refused")
        };
        assert_eq!(
            inbound.request.from_header().unwrap().value(),
            "<sip:bob@a.test> ;tag=9"
        );
    }

    #[test]
    fn responses_mark_the_via_and_tag_the_to() {
        let (_, text) = status_of(&receive(
            &request("FROBNICATE sip:a.test SIP/2.0", "", ""),
            source(),
            Transport::Udp,
            LIMITS,
        ));
        assert!(
            text.contains("branch=z9hG4bK776asdhds;rport=5062;received=192.0.2.7"),
            "{text}"
        );
        assert!(text.contains("To: <sip:bob@a.test>;tag="), "{text}");
        assert!(
            text.starts_with("SIP/2.0 501 Not Implemented\r\n"),
            "{text}"
        );
        assert!(text.ends_with("Content-Length: 0\r\n\r\n"), "{text}");
    }

    #[test]
    fn unanswerable_messages_responses_and_bad_acks_are_dropped() {
        for bytes in [
            b"garbage".to_vec(),
            b"\x00\xff\r\n\r\n".to_vec(),
            b"REGISTER sip:a.test SIP/2.0\r\nFrom: <sip:x@a.test>\r\n\r\n".to_vec(),
            b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\n\r\n".to_vec(),
            request("ACK sip:a.test SIP/3.0", "", ""),
        ] {
            assert!(
                matches!(
                    receive(&bytes, source(), Transport::Udp, LIMITS),
                    Received::Dropped(_)
                ),
                "{}",
                String::from_utf8_lossy(&bytes)
            );
        }
    }

    #[test]
    fn streams_are_framed_by_content_length() {
        let one = request("OPTIONS sip:a.test SIP/2.0", "", "");
        let two = request("REGISTER sip:a.test SIP/2.0", "", "");
        let mut framer = StreamFramer::default();
        let mut stream = b"\r\n\r\n".to_vec();
        stream.extend_from_slice(&one);
        stream.extend_from_slice(&two);
        // Arbitrary chunking must not matter.
        let mut out = Vec::new();
        for chunk in stream.chunks(7) {
            framer.push(chunk);
            while let Some(framed) = framer.next(4096) {
                out.push(framed);
            }
        }
        assert_eq!(
            out,
            vec![Framed::Ping, Framed::Message(one), Framed::Message(two)]
        );
        let mut framer = StreamFramer::default();
        framer.push(b"OPTIONS sip:a.test SIP/2.0\r\nVia: x\r\n\r\n");
        assert!(matches!(framer.next(4096), Some(Framed::Broken(_))));
        let mut framer = StreamFramer::default();
        framer.push(&vec![b'a'; 5000]);
        assert!(matches!(framer.next(4096), Some(Framed::Broken(_))));
        let mut framer = StreamFramer::default();
        framer.push(b"OPTIONS sip:a.test SIP/2.0\r\nContent-Length: 9000\r\n\r\n");
        assert!(matches!(framer.next(4096), Some(Framed::Broken(_))));
        // Found by the fuzz seed `huge_content_length`: the frame's length overflowed.
        let mut framer = StreamFramer::default();
        framer.push(b"OPTIONS sip:a.test SIP/2.0\r\nContent-Length: 18446744073709551615\r\n\r\n");
        assert!(matches!(framer.next(4096), Some(Framed::Broken(_))));
    }

    /// Test helpers to edit one header of a built request.
    trait Edit {
        fn replace_first(self, from: &str, to: &str) -> Vec<u8>;
        fn replace_max_forwards(self, value: &str) -> Vec<u8>;
        fn replace_content_length(self, value: &str) -> Vec<u8>;
    }

    impl Edit for Vec<u8> {
        fn replace_first(self, from: &str, to: &str) -> Vec<u8> {
            String::from_utf8(self)
                .unwrap()
                .replacen(from, to, 1)
                .into_bytes()
        }
        fn replace_max_forwards(self, value: &str) -> Vec<u8> {
            self.replace_first("Max-Forwards: 70", &format!("Max-Forwards: {value}"))
        }
        fn replace_content_length(self, value: &str) -> Vec<u8> {
            let text = String::from_utf8(self).unwrap();
            let at = text.find("Content-Length: ").unwrap();
            let end = at + text[at..].find("\r\n").unwrap();
            format!("{}Content-Length: {value}{}", &text[..at], &text[end..]).into_bytes()
        }
    }
}
