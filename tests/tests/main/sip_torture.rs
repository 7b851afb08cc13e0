//! The 49 torture messages of RFC 4475 ("Session Initiation Protocol (SIP) Torture Test
//! Messages"), byte for byte as the RFC gives them (the fuzz seeds
//! `fuzz/corpus-seed/sip_front_door/rfc4475_*`), each sent to the edge as one UDP datagram from
//! a socket of its own; each must get what the RFC says a compliant element does: parsed and
//! answered by the edge's rules (OPTIONS 200, REGISTER a 401 challenge or the registrar's
//! refusal, a new INVITE 100 Trying and then a 407 challenge, an unknown method 501, a known
//! one the edge does not serve 405), refused with the status the RFC names, or, for a response
//! that answers no request of the edge's, nothing at all.
//!
//! Where the RFC allows either refusing a message or being liberal with it, the table says
//! which the edge does and why.

use std::time::Duration;

use switchyard_tests::sip::{SipProvider, SipResponse, SipTransport};
use switchyard_tests::WAIT;

/// What the edge must do with one message.
enum Expect {
    /// Answered with these statuses in this order (an INVITE's 100 Trying before its final
    /// answer), the last with a reason phrase starting with this text ("" for any), and then
    /// nothing more.
    Answered(&'static [u16], &'static str),
    /// Nothing sent back: a response to no request of the edge's.
    Silent,
}
use Expect::{Answered, Silent};

macro_rules! rfc4475 {
    ($name:literal) => {
        (
            $name,
            include_bytes!(concat!(
                "../../../fuzz/corpus-seed/sip_front_door/rfc4475_",
                $name
            ))
            .as_slice(),
        )
    };
}

/// A new INVITE from a source that has not authenticated: 100 Trying, then the proxy
/// challenge (the edge authenticates phones as their proxy before it looks further).
const CHALLENGED_INVITE: Expect = Answered(&[100, 407], "Proxy Authentication Required");
/// A REGISTER for the edge's domain without credentials it knows: the registrar's challenge.
const CHALLENGED_REGISTER: Expect = Answered(&[401], "Unauthorized");

/// A torture message: its name in the RFC's archive and its bytes.
type Message = (&'static str, &'static [u8]);

/// (message, RFC 4475 section, what the edge must do)
fn table() -> Vec<(Message, &'static str, Expect)> {
    vec![
        // 3.1.1: valid messages; "parsers must accept" each.
        // An INVITE with a To tag (`tag    = 1918181833n`: LWS around `=` is allowed) is a
        // re-INVITE, and there is no such dialog (RFC 3261 §12.2.2). Its top Via branch has no
        // magic cookie: an RFC 2543 transaction (RFC 3261 §17.2.3).
        (
            rfc4475!("wsinv"),
            "3.1.1.1",
            Answered(&[481], "Call/Transaction Does Not Exist"),
        ),
        // "Endpoints will generate a 501 listing the methods they understand in an Allow".
        (
            rfc4475!("intmeth"),
            "3.1.1.2",
            Answered(&[501], "Not Implemented"),
        ),
        (rfc4475!("esc01"), "3.1.1.3", CHALLENGED_INVITE),
        (rfc4475!("escnull"), "3.1.1.4", CHALLENGED_REGISTER),
        // RE%47IST%45R is an unknown method, not REGISTER: "An endpoint would reject this
        // message with a 501".
        (
            rfc4475!("esc02"),
            "3.1.1.5",
            Answered(&[501], "Not Implemented"),
        ),
        (rfc4475!("lwsdisp"), "3.1.1.6", Answered(&[200], "OK")),
        // The top Via has no branch at all (RFC 2543 style).
        (rfc4475!("longreq"), "3.1.1.7", CHALLENGED_INVITE),
        // The REGISTER is handled; the INVITE after its (empty) body is noise to discard
        // (RFC 3261 §18.3): one answer only.
        (rfc4475!("dblreq"), "3.1.1.8", CHALLENGED_REGISTER),
        (rfc4475!("semiuri"), "3.1.1.9", Answered(&[200], "OK")),
        (rfc4475!("transports"), "3.1.1.10", Answered(&[200], "OK")),
        // Parsed, binary body part and all; the edge does not take MESSAGE.
        (
            rfc4475!("mpart01"),
            "3.1.1.11",
            Answered(&[405], "Method Not Allowed"),
        ),
        // Responses, well formed, to no request of the edge's.
        (rfc4475!("unreason"), "3.1.1.12", Silent),
        (rfc4475!("noreason"), "3.1.1.13", Silent),
        // 3.1.2: invalid messages.
        (rfc4475!("badinv01"), "3.1.2.1", Answered(&[400], "Bad Via")),
        (
            rfc4475!("clerr"),
            "3.1.2.2",
            Answered(&[400], "Content-Length Larger Than The Body"),
        ),
        (
            rfc4475!("ncl"),
            "3.1.2.3",
            Answered(&[400], "Bad Content-Length"),
        ),
        // "should respond with a 400 Bad Request due to the CSeq error".
        (
            rfc4475!("scalar02"),
            "3.1.2.4",
            Answered(&[400], "Bad CSeq"),
        ),
        // A response: "An element receiving this response will simply discard it."
        (rfc4475!("scalarlg"), "3.1.2.5", Silent),
        (rfc4475!("quotbal"), "3.1.2.6", Answered(&[400], "Bad To")),
        (
            rfc4475!("ltgtruri"),
            "3.1.2.7",
            Answered(&[400], "Bad Request-URI"),
        ),
        (
            rfc4475!("lwsruri"),
            "3.1.2.8",
            Answered(&[400], "Bad Request Line"),
        ),
        // "acceptable to reject this request as malformed": the edge does.
        (
            rfc4475!("lwsstart"),
            "3.1.2.9",
            Answered(&[400], "Bad Request Line"),
        ),
        (
            rfc4475!("trws"),
            "3.1.2.10",
            Answered(&[400], "Bad Request Line"),
        ),
        // "acceptable ... to reject this request with a 400": the edge does rather than route
        // on a Request-URI that carries headers.
        (
            rfc4475!("escruri"),
            "3.1.2.11",
            Answered(&[400], "Headers Not Allowed In The Request-URI"),
        ),
        // "could ignore this value altogether if it wasn't going to use the Date": the edge
        // does not use it.
        (rfc4475!("baddate"), "3.1.2.12", CHALLENGED_INVITE),
        (
            rfc4475!("regbadct"),
            "3.1.2.13",
            Answered(&[400], "Bad Contact"),
        ),
        // "reasonable to reject this request with a 400": the edge does.
        (rfc4475!("badaspec"), "3.1.2.14", Answered(&[400], "Bad To")),
        // The RFC's copy of this one also lacks the empty line after its header block.
        (rfc4475!("baddn"), "3.1.2.15", Answered(&[400], "Bad From")),
        (
            rfc4475!("badvers"),
            "3.1.2.16",
            Answered(&[505], "Version Not Supported"),
        ),
        (
            rfc4475!("mismatch01"),
            "3.1.2.17",
            Answered(&[400], "Bad CSeq"),
        ),
        // "should respond with a 501 Not Implemented".
        (
            rfc4475!("mismatch02"),
            "3.1.2.18",
            Answered(&[501], "Not Implemented"),
        ),
        (rfc4475!("bigcode"), "3.1.2.19", Silent),
        // 3.2: transaction layer. The magic cookie alone: "could reject the request with a
        // 400 Response (preferably statelessly)", as the front door does.
        (
            rfc4475!("badbranch"),
            "3.2.1",
            Answered(&[400], "Via Branch Is The Magic Cookie Alone"),
        ),
        // 3.3: application layer.
        // No To, From or Call-ID: "Ideally, it will respond with a 400 Bad Request".
        (rfc4475!("insuf"), "3.3.1", Answered(&[400], "Missing To")),
        (
            rfc4475!("unkscm"),
            "3.3.2",
            Answered(&[416], "Unsupported URI Scheme"),
        ),
        (
            rfc4475!("novelsc"),
            "3.3.3",
            Answered(&[416], "Unsupported URI Scheme"),
        ),
        // "A registrar would reject this request with a 400 Bad Request response, since the
        // To: header field is required to contain a SIP or SIPS URI as an AOR."
        (
            rfc4475!("unksm2"),
            "3.3.4",
            Answered(&[400], "The To Header Is Not A sip: Address Of Record"),
        ),
        // 420 with an Unsupported listing the Require's option tags (checked below).
        (
            rfc4475!("bext01"),
            "3.3.5",
            Answered(&[420], "Bad Extension"),
        ),
        (rfc4475!("invut"), "3.3.6", CHALLENGED_INVITE),
        // "will reject this request with a 401, issuing a new challenge with a scheme it
        // understands".
        (rfc4475!("regaut01"), "3.3.7", CHALLENGED_REGISTER),
        (
            rfc4475!("multi01"),
            "3.3.8",
            Answered(&[400], "Repeated To"),
        ),
        (
            rfc4475!("mcl01"),
            "3.3.9",
            Answered(&[400], "Repeated Content-Length"),
        ),
        // A response; never sent on to the broadcast address.
        (rfc4475!("bcast"), "3.3.10", Silent),
        // The edge answers OPTIONS itself, as an endpoint: "as if the Max-Forwards field value
        // were still positive".
        (rfc4475!("zeromf"), "3.3.11", Answered(&[200], "OK")),
        (rfc4475!("cparam01"), "3.3.12", CHALLENGED_REGISTER),
        (rfc4475!("cparam02"), "3.3.13", CHALLENGED_REGISTER),
        (rfc4475!("regescrt"), "3.3.14", CHALLENGED_REGISTER),
        (rfc4475!("sdp01"), "3.3.15", CHALLENGED_INVITE),
        // 3.4: backward compatibility. No branch, no From tag, no Max-Forwards, no
        // Content-Length: accepted as RFC 2543 allowed it.
        (rfc4475!("inv2543"), "3.4.1", CHALLENGED_INVITE),
    ]
}

/// How long to listen for an answer that must not come.
const QUIET: Duration = Duration::from_millis(400);

#[tokio::test]
async fn the_rfc_4475_torture_messages_get_what_the_rfc_says() -> anyhow::Result<()> {
    let table = table();
    assert_eq!(table.len(), 49);
    // The edge serves example.com, the domain the torture REGISTERs are for.
    let e = SipProvider::start(
        "example.com",
        "user",
        "torture tests",
        &["tel:+16502530001"],
        |_| {},
    )
    .await?;
    let mut failures = Vec::new();
    for ((name, bytes), section, expect) in &table {
        if let Err(why) = check(e.udp, bytes, expect).await {
            failures.push(format!("§{section} {name}: {why}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    e.h.provider.shutdown().await;
    Ok(())
}

async fn check(edge: std::net::SocketAddr, bytes: &[u8], expect: &Expect) -> anyhow::Result<()> {
    let mut t = SipTransport::udp(edge).await?;
    t.send(bytes).await?;
    let (statuses, reason): (&[u16], &str) = match expect {
        Silent => (&[], ""),
        Answered(statuses, reason) => (statuses, reason),
    };
    for (i, &status) in statuses.iter().enumerate() {
        let Some(answer) = t.receive(WAIT).await? else {
            anyhow::bail!("no answer {status} within {WAIT:?}");
        };
        let answer = SipResponse::parse(&answer)?;
        anyhow::ensure!(
            answer.status == status,
            "{} instead of {status}",
            answer.text
        );
        if i + 1 < statuses.len() {
            continue;
        }
        anyhow::ensure!(answer.reason.starts_with(reason), "{}", answer.text);
        let needs = match status {
            401 => Some("WWW-Authenticate"),
            407 => Some("Proxy-Authenticate"),
            405 | 501 => Some("Allow"),
            420 => Some("Unsupported"),
            _ => None,
        };
        if let Some(header) = needs {
            anyhow::ensure!(answer.header(header).is_some(), "{}", answer.text);
        }
        if status == 420 {
            anyhow::ensure!(
                answer.header("Unsupported")
                    == Some("nothingSupportsThis, nothingSupportsThisEither"),
                "{}",
                answer.text
            );
        }
        // An answer keeps the To's tag, or adds one: never two.
        let tags = answer
            .header("To")
            .map_or(0, |to| to.to_ascii_lowercase().matches("tag").count());
        anyhow::ensure!(tags <= 1, "{}", answer.text);
    }
    if let Some(more) = t.receive(QUIET).await? {
        anyhow::bail!("unexpected: {}", String::from_utf8_lossy(&more));
    }
    Ok(())
}
