//! Calls between SIP phones at two providers of a federation, with sipp (Debian's `sip-tester`,
//! installed by `scripts/ensure-packages.sh`) playing the phones: a call answered and hung up by
//! either side, put on hold, rejected, cancelled while ringing, each from provider A's phone to
//! provider B's and the other way round; and bad INVITEs. At one provider, the pushes of calls
//! between its phones and endpoints reach the gateway endpoints in memory, never queued; what
//! the edge cannot act on is queued as for any endpoint.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::Context;
use sqlx::Row;
use switchyard_endpoint::client::PushMode;
use switchyard_protocol::capabilities::{Capabilities, MediaKind};
use switchyard_protocol::dict::{Dict, Encoding};
use switchyard_protocol::invitation::{CancelPush, CancelReason, InitiatePush, Push, SessionId};
use switchyard_provider::db::pushes::enqueue_push;
use switchyard_provider::push::Outbox;
use switchyard_provider::sip::sdp::blob_of;
use switchyard_tests::federation::{ProviderSpec, TestFederation, BOB};
use switchyard_tests::sip::{
    add_account, authorization, free_sip_port, sip_alice_and_bob, sipp_scenario, SipProvider,
    SipResponse, SipTransport, Ua,
};
use switchyard_tests::{expect_push, session_id, Harness};

const PASSWORD: &str = "sipp-secret-1";

/// One side of the federation: its provider, and the phone's SIP account there.
struct Side {
    id: &'static str,
    user: &'static str,
    /// How the other side's phone dials this one (the Request-URI without `sip:`).
    dialled_as: &'static str,
    sip: SocketAddr,
}

struct Federation {
    fed: TestFederation,
    a: Side,
    b: Side,
    logs: tempfile::TempDir,
    /// The providers' logs for this test ([`show_logs`]).
    _tracing: tracing::subscriber::DefaultGuard,
}

impl Federation {
    /// Alice and Bob with SIP accounts at a.test and b.test ([`sip_alice_and_bob`]).
    async fn start() -> anyhow::Result<Federation> {
        let tracing = show_logs();
        let fed = TestFederation::start(&[
            ProviderSpec::plist("a.test").with_sip(),
            ProviderSpec::plist("b.test").with_sip(),
        ])
        .await?;
        sip_alice_and_bob(&fed, PASSWORD).await?;
        let sip = |h: &Harness| h.provider.sip_udp_addr.expect("SIP over UDP");
        let logs = tempfile::tempdir()?;
        for user in ["alice", "bob"] {
            std::fs::write(
                logs.path().join(format!("{user}.csv")),
                format!(
                    "SEQUENTIAL\n{user};[authentication username={user} password={PASSWORD}]\n"
                ),
            )?;
        }
        Ok(Federation {
            a: Side {
                id: "a.test",
                user: "alice",
                dialled_as: "+16502530000@b.test",
                sip: sip(fed.provider("a.test")),
            },
            b: Side {
                id: "b.test",
                user: "bob",
                dialled_as: "bob@b.example",
                sip: sip(fed.provider("b.test")),
            },
            fed,
            logs,
            _tracing: tracing,
        })
    }

    /// Runs sipp to completion (bounded by its own -timeout); the scenario's log goes to
    /// `<name>-errors.log` in the log directory.
    async fn sipp(&self, name: &str, args: Vec<String>) -> anyhow::Result<Output> {
        let logs = self.logs.path().to_path_buf();
        let errors = logs.join(format!("{name}-errors.log"));
        let output = tokio::task::spawn_blocking(move || {
            Command::new("sipp")
                .args(&args)
                .args(["-i", "127.0.0.1", "-m", "1", "-timeout", "40s", "-nostdin"])
                .args(["-trace_err", "-error_file"])
                .arg(&errors)
                .current_dir(&logs)
                .output()
        })
        .await??;
        Ok(output)
    }

    fn errors(&self, name: &str) -> String {
        std::fs::read_to_string(self.logs.path().join(format!("{name}-errors.log")))
            .unwrap_or_default()
    }

    /// sipp as `side`'s phone talking to its provider: `scenario`, the account's credentials and
    /// domain, then `more`.
    fn phone_args(&self, side: &Side, scenario: &str, more: &[&str]) -> Vec<String> {
        let mut args = vec![
            side.sip.to_string(),
            "-sf".into(),
            path(&sipp_scenario(scenario)),
            "-inf".into(),
            path(&self.logs.path().join(format!("{}.csv", side.user))),
            "-key".into(),
            "domain".into(),
            side.id.into(),
        ];
        args.extend(more.iter().map(|a| a.to_string()));
        args
    }

    /// Registers `side`'s phone with its provider from `port`, where it then answers calls.
    async fn register(&self, side: &Side, port: u16) -> anyhow::Result<()> {
        let output = self
            .sipp(
                &format!("register-{}", side.user),
                self.phone_args(
                    side,
                    "register",
                    &["-auth_uri", side.id, "-p", &port.to_string()],
                ),
            )
            .await?;
        check(
            &output,
            "register",
            &self.errors(&format!("register-{}", side.user)),
        );
        Ok(())
    }

    /// `caller`'s phone runs `uac` against its provider while `callee`'s runs `uas`; both must
    /// finish their scenarios.
    async fn call(&self, caller: &Side, callee: &Side, uac: &str, uas: &str) -> anyhow::Result<()> {
        let port = free_sip_port();
        self.register(callee, port).await?;
        let uas_log = format!("{uas}-{}", callee.user);
        let uas_run = self.sipp(
            &uas_log,
            vec![
                "-sf".into(),
                path(&sipp_scenario(uas)),
                "-p".into(),
                port.to_string(),
            ],
        );
        let uac_run = async {
            // The phone being called listens before this one dials.
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            self.sipp(
                &format!("{uac}-{}", caller.user),
                self.phone_args(
                    caller,
                    uac,
                    &[
                        "-key",
                        "callee",
                        callee.dialled_as,
                        "-auth_uri",
                        callee.dialled_as,
                        "-p",
                        &free_sip_port().to_string(),
                    ],
                ),
            )
            .await
        };
        let (uas_output, uac_output) = tokio::join!(uas_run, uac_run);
        check(
            &uac_output?,
            &format!("{uac} at {}", caller.id),
            &self.errors(&format!("{uac}-{}", caller.user)),
        );
        check(
            &uas_output?,
            &format!("{uas} at {}", callee.id),
            &self.errors(&format!("{uas}-{}", callee.user)),
        );
        Ok(())
    }

    /// The newest call record at `side`'s provider.
    async fn last_call(&self, side: &Side) -> anyhow::Result<serde_json::Value> {
        let calls = self.fed.provider(side.id).calls().await?;
        calls
            .into_iter()
            .max_by_key(|c| c["initiated_at"].as_i64().unwrap_or(0))
            .ok_or_else(|| anyhow::anyhow!("no call recorded at {}", side.id))
    }
}

/// The providers' logs, with RUST_LOG set, for when a call goes wrong, while the guard lives.
/// Scoped to the test's thread, where its runtime runs the providers: a process-wide subscriber
/// would also catch the other modules' tests in this binary, depending on which ran first.
fn show_logs() -> tracing::subscriber::DefaultGuard {
    tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .finish(),
    )
}

fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn check(output: &Output, what: &str, errors: &str) {
    assert!(
        output.status.success(),
        "sipp {what} failed ({:?}):\n{}\n{}\n{errors}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The call ends the way `expect` says at the caller's provider (which keeps the record that
/// arbitrates the call), within a few seconds of the phones' scenarios ending.
async fn assert_outcome(
    f: &Federation,
    caller: &Side,
    state: &str,
    reason: Option<&str>,
) -> anyhow::Result<()> {
    let mut last = serde_json::Value::Null;
    for _ in 0..50 {
        last = f.last_call(caller).await?;
        if last["state"] == state && reason.is_none_or(|r| last["outcome_reason"] == r) {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!(
        "expected the call to end {state} ({reason:?}) at {}: {last}",
        caller.id
    );
}

#[tokio::test]
async fn sip_phones_call_each_other_across_providers() -> anyhow::Result<()> {
    let f = Federation::start().await?;
    for (caller, callee) in [(&f.a, &f.b), (&f.b, &f.a)] {
        f.call(caller, callee, "uac-call", "uas-answer").await?;
        assert_outcome(&f, caller, "ended", Some("caller-hung-up")).await?;

        f.call(
            caller,
            callee,
            "uac-call-callee-hangs-up",
            "uas-answer-hang-up",
        )
        .await?;
        assert_outcome(&f, caller, "ended", Some("callee-hung-up")).await?;
    }
    f.fed.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn sip_calls_are_rejected_and_cancelled_across_providers() -> anyhow::Result<()> {
    let f = Federation::start().await?;
    for (caller, callee) in [(&f.a, &f.b), (&f.b, &f.a)] {
        f.call(caller, callee, "uac-call-rejected", "uas-reject")
            .await?;
        assert_outcome(&f, caller, "rejected", Some("busy")).await?;

        f.call(caller, callee, "uac-call-cancelled", "uas-ring")
            .await?;
        assert_outcome(&f, caller, "cancelled", Some("caller-cancelled")).await?;
    }
    f.fed.shutdown().await;
    Ok(())
}

/// An INVITE from `ua` to `request_uri` as `from`, with `body` as SDP and `extra` header lines;
/// with `credentials` (username, password), the 407 challenge is answered first. Returns the final response (100 Trying
/// and the challenge are read past, failures acknowledged).
#[allow(clippy::too_many_arguments)]
async fn invite(
    t: &mut SipTransport,
    ua: &Ua,
    branch: &str,
    request_uri: &str,
    from: &str,
    body: &str,
    extra: &str,
    credentials: Option<(&str, &str)>,
) -> anyhow::Result<SipResponse> {
    let build = |branch: &str, cseq: u32, auth: &str| {
        format!(
            "INVITE {request_uri} SIP/2.0\r\nVia: SIP/2.0/{transport} {local};branch=z9hG4bK{branch};rport\r\n\
             Max-Forwards: 70\r\nFrom: <{from}>;tag=t{branch}\r\nTo: <{request_uri}>\r\n\
             Call-ID: {branch}@test\r\nCSeq: {cseq} INVITE\r\nContact: <sip:phone@{local}>\r\n{auth}{extra}\
             Content-Type: application/sdp\r\nContent-Length: {len}\r\n\r\n{body}",
            transport = ua.transport,
            local = ua.local,
            len = body.len(),
        )
        .into_bytes()
    };
    let mut response = final_response(t, &build(branch, 1, "")).await?;
    if let (407, Some((user, password))) = (response.status, credentials) {
        ack_failure(t, ua, branch, request_uri, from, &response, 1).await?;
        let challenge = response
            .header("Proxy-Authenticate")
            .unwrap_or_default()
            .to_string();
        let auth = format!(
            "Proxy-Authorization: {}\r\n",
            authorization(&challenge, user, password, "INVITE", request_uri, 1)
        );
        let second = format!("{branch}-2");
        response = final_response(t, &build(&second, 2, &auth)).await?;
        if response.status >= 300 {
            ack_failure(t, ua, &second, request_uri, from, &response, 2).await?;
        }
    } else if response.status >= 300 {
        ack_failure(t, ua, branch, request_uri, from, &response, 1).await?;
    }
    Ok(response)
}

/// Sends `request` and reads responses until a final one.
async fn final_response(t: &mut SipTransport, request: &[u8]) -> anyhow::Result<SipResponse> {
    t.send(request).await?;
    loop {
        let bytes = t
            .receive(std::time::Duration::from_secs(10))
            .await?
            .ok_or_else(|| anyhow::anyhow!("no final response"))?;
        let response = SipResponse::parse(&bytes)?;
        if response.status >= 200 {
            return Ok(response);
        }
    }
}

async fn ack_failure(
    t: &mut SipTransport,
    ua: &Ua,
    branch: &str,
    request_uri: &str,
    from: &str,
    response: &SipResponse,
    cseq: u32,
) -> anyhow::Result<()> {
    let call_id = response.header("Call-ID").unwrap_or_default();
    let to = response.header("To").unwrap_or_default();
    t.send(
        format!(
            "ACK {request_uri} SIP/2.0\r\nVia: SIP/2.0/{transport} {local};branch=z9hG4bK{branch};rport\r\n\
             Max-Forwards: 70\r\nFrom: <{from}>;tag=t{branch_tag}\r\nTo: {to}\r\nCall-ID: {call_id}\r\n\
             CSeq: {cseq} ACK\r\nContent-Length: 0\r\n\r\n",
            transport = ua.transport,
            local = ua.local,
            branch_tag = branch.trim_end_matches("-2"),
        )
        .as_bytes(),
    )
    .await
}

const SDP: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
                   m=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";

#[tokio::test]
async fn bad_invites_get_the_right_answer_and_place_no_call() -> anyhow::Result<()> {
    let _logs = show_logs();
    let edge = SipProvider::start("a.test", "bob", PASSWORD, &["tel:+16502530002"], |_| {}).await?;
    let mut t = SipTransport::udp(edge.udp).await?;
    let ua = Ua::of(&t)?;
    let bob = "sip:bob@a.test";

    let challenged = invite(&mut t, &ua, "c1", "sip:alice@a.test", bob, SDP, "", None).await?;
    assert_eq!(challenged.status, 407, "{}", challenged.text);
    let challenges = challenged.all("Proxy-Authenticate");
    assert!(challenges[0].contains("algorithm=MD5"), "{challenges:?}");

    // A challenge over UDP is sent once, even with no ACK: the source may be spoofed, and
    // retransmitting until an ACK (at 0.5, 1.5, 3.5 s…) would reflect about ten datagrams.
    let unacked = format!(
        "INVITE sip:alice@a.test SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKnoack;rport\r\n\
         Max-Forwards: 70\r\nFrom: <{bob}>;tag=tnoack\r\nTo: <sip:alice@a.test>\r\n\
         Call-ID: noack@test\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
        local = ua.local
    );
    t.send(unacked.as_bytes()).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(2_500);
    let mut challenged_times = 0;
    while let Some(message) = t
        .receive(deadline.saturating_duration_since(tokio::time::Instant::now()))
        .await?
    {
        if message.starts_with(b"SIP/2.0 407") {
            challenged_times += 1;
        }
    }
    assert_eq!(
        challenged_times, 1,
        "407s sent for one unacknowledged INVITE"
    );

    let cases: Vec<(&str, &str, &str, &str, &str, u16)> = vec![
        // (branch, Request-URI, From, body, extra headers, status)
        ("c2", "sip:alice@a.test", "sip:mallory@a.test", SDP, "", 403),
        ("c3", "sip:alice@a.test", bob, "", "", 488),
        ("c4", "sip:alice@a.test", bob, "hello", "", 400),
        ("c5", "sip:nobody@elsewhere.test", bob, SDP, "", 404),
        ("c6", "tel:+1", bob, SDP, "", 484),
    ];
    for (branch, uri, from, body, extra, status) in cases {
        let answer = invite(
            &mut t,
            &ua,
            branch,
            uri,
            from,
            body,
            extra,
            Some(("bob", PASSWORD)),
        )
        .await?;
        assert_eq!(answer.status, status, "{branch}: {}", answer.text);
    }
    // No hops left: refused at the front door, before any challenge.
    let no_hops = String::from_utf8(
        format!(
            "INVITE sip:alice@a.test SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKmf0\r\n\
             Max-Forwards: 0\r\nFrom: <{bob}>;tag=1\r\nTo: <sip:alice@a.test>\r\nCall-ID: mf0\r\n\
             CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
            local = ua.local
        )
        .into_bytes(),
    )?;
    assert_eq!(
        final_response(&mut t, no_hops.as_bytes()).await?.status,
        483
    );
    // A request that already passed this edge (a branch of its own in the Vias) is a loop.
    let looped = invite(
        &mut t,
        &ua,
        "c8",
        "sip:alice@a.test",
        bob,
        SDP,
        "Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-sy-abc\r\n",
        None,
    )
    .await?;
    assert_eq!(looped.status, 482, "{}", looped.text);
    // In-dialog requests for no call.
    for method in ["BYE", "CANCEL"] {
        let stray = format!(
            "{method} sip:alice@a.test SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKs{method}\r\n\
             Max-Forwards: 70\r\nFrom: <{bob}>;tag=1\r\nTo: <sip:alice@a.test>;tag=2\r\nCall-ID: stray\r\n\
             CSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n",
            local = ua.local
        );
        assert_eq!(
            final_response(&mut t, stray.as_bytes()).await?.status,
            481,
            "{method}"
        );
    }
    let calls = edge.h.calls().await?;
    assert!(calls.is_empty(), "no call was placed: {calls:?}");

    // An account with no phone registered is not rung: the call is refused at once.
    let alice = edge.h.add_user("Alice", &["tel:+16502530001"]).await?;
    add_account(&edge.h, &alice, "sip:alice@a.test", PASSWORD).await?;
    let unavailable = invite(
        &mut t,
        &ua,
        "c9",
        "sip:alice@a.test",
        bob,
        SDP,
        "",
        Some(("bob", PASSWORD)),
    )
    .await?;
    assert_eq!(unavailable.status, 480, "{}", unavailable.text);
    edge.h.provider.shutdown().await;
    Ok(())
}

/// A request as a test phone reads it: its start line and header fields.
struct Request {
    start: String,
    fields: Vec<(String, String)>,
    body: String,
}

impl Request {
    fn parse(bytes: &[u8]) -> anyhow::Result<Request> {
        let text = String::from_utf8(bytes.to_vec())?;
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let mut lines = head.split("\r\n");
        let start = lines.next().unwrap_or_default().to_string();
        let fields = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        Ok(Request {
            start,
            fields,
            body: body.to_string(),
        })
    }

    fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.fields
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn header<'a>(&'a self, name: &'a str) -> &'a str {
        self.all(name).next().unwrap_or_default()
    }

    /// A response to this request, with `to_tag` added to its To and `extra` lines.
    fn response(&self, status: &str, to_tag: &str, extra: &str, body: &str) -> Vec<u8> {
        let mut text = format!("SIP/2.0 {status}\r\n");
        for via in self.all("Via") {
            text.push_str(&format!("Via: {via}\r\n"));
        }
        let to = self.header("To");
        let to = if to.contains(";tag=") {
            to.to_string()
        } else {
            format!("{to};tag={to_tag}")
        };
        text.push_str(&format!(
            "From: {}\r\nTo: {to}\r\nCall-ID: {}\r\nCSeq: {}\r\n{extra}Content-Length: {}\r\n\r\n{body}",
            self.header("From"),
            self.header("Call-ID"),
            self.header("CSeq"),
            body.len()
        ));
        text.into_bytes()
    }
}

/// Registers `user`'s phone at `domain` from `t` (its contact on `transport`), answering the
/// digest challenge.
async fn register(
    t: &mut SipTransport,
    ua: &Ua,
    domain: &str,
    user: &str,
    transport: &str,
) -> anyhow::Result<()> {
    let aor = format!("sip:{user}@{domain}");
    let contact = format!(
        "Contact: <sip:{user}@{};transport={transport}>\r\n",
        ua.local
    );
    let challenge = t
        .exchange(&ua.register(domain, &aor, "reg", 1, "reg1", &contact))
        .await?;
    assert_eq!(challenge.status, 401, "{}", challenge.text);
    let auth = format!(
        "Authorization: {}\r\n{contact}",
        authorization(
            challenge.header("WWW-Authenticate").unwrap_or_default(),
            user,
            PASSWORD,
            "REGISTER",
            &format!("sip:{domain}"),
            1
        )
    );
    let registered = t
        .exchange(&ua.register(domain, &aor, "reg", 2, "reg2", &auth))
        .await?;
    assert_eq!(registered.status, 200, "{}", registered.text);
    Ok(())
}

async fn next_request(t: &mut SipTransport) -> anyhow::Result<Request> {
    let bytes = t
        .receive(std::time::Duration::from_secs(10))
        .await?
        .ok_or_else(|| anyhow::anyhow!("no request from the edge"))?;
    Request::parse(&bytes)
}

/// A provider whose SIP edge serves Bob's account (`tel:+16502530002`) and Alice's
/// (`sip:alice@a.test`, `tel:+16502530001`), both with [`PASSWORD`].
async fn edge_of_alice_and_bob() -> anyhow::Result<SipProvider> {
    let edge = SipProvider::start("a.test", "bob", PASSWORD, &["tel:+16502530002"], |_| {}).await?;
    let alice = edge.h.add_user("Alice", &["tel:+16502530001"]).await?;
    add_account(&edge.h, &alice, "sip:alice@a.test", PASSWORD).await?;
    Ok(edge)
}

/// Alice's phone (sipp on UDP, the `uac-call` scenario) calls `bob@a.test` once through the
/// edge at `server`; its files and error log are in `dir`.
fn alice_calls_bob(
    server: SocketAddr,
    dir: &Path,
) -> anyhow::Result<tokio::task::JoinHandle<std::io::Result<Output>>> {
    std::fs::write(
        dir.join("alice.csv"),
        format!("SEQUENTIAL\nalice;[authentication username=alice password={PASSWORD}]\n"),
    )?;
    let dir = dir.to_path_buf();
    Ok(tokio::task::spawn_blocking(move || {
        Command::new("sipp")
            .arg(server.to_string())
            .arg("-sf")
            .arg(sipp_scenario("uac-call"))
            .arg("-inf")
            .arg(dir.join("alice.csv"))
            .args(["-key", "domain", "a.test", "-key", "callee", "bob@a.test"])
            .args(["-auth_uri", "bob@a.test", "-i", "127.0.0.1"])
            .args(["-p", &free_sip_port().to_string()])
            .args(["-m", "1", "-timeout", "30s", "-nostdin", "-trace_err"])
            .args(["-error_file"])
            .arg(dir.join("errors.log"))
            .current_dir(&dir)
            .output()
    }))
}

/// Two phones of one provider: Alice's (sipp, UDP) calls Bob's account, whose phone is registered
/// over TLS; the edge's INVITE and BYE reach Bob over the connection he registered on.
#[tokio::test]
async fn a_phone_registered_over_tls_is_called_over_its_connection() -> anyhow::Result<()> {
    let _logs = show_logs();
    let edge = edge_of_alice_and_bob().await?;

    let mut bob = SipTransport::tls(edge.tls, edge.h.ca_pem()).await?;
    let ua = Ua::of(&bob)?;
    register(&mut bob, &ua, "a.test", "bob", "tls").await?;

    let logs = tempfile::tempdir()?;
    let caller = alice_calls_bob(edge.udp, logs.path())?;

    let invite = next_request(&mut bob).await?;
    assert!(
        invite.start.starts_with("INVITE sip:bob@"),
        "{}",
        invite.start
    );
    assert!(
        invite.header("Via").starts_with("SIP/2.0/TLS "),
        "{}",
        invite.header("Via")
    );
    assert!(
        invite
            .header("From")
            .contains("+16502530001@a.test;user=phone"),
        "the caller is shown as her number: {}",
        invite.header("From")
    );
    assert!(invite.body.contains("m=audio"), "{}", invite.body);
    let contact = format!("Contact: <sip:bob@{};transport=tls>\r\n", ua.local);
    bob.send(&invite.response("180 Ringing", "bobtag", &contact, ""))
        .await?;
    let answer = SDP.replace("o=- 1 1", "o=bob 7 7");
    bob.send(&invite.response(
        "200 OK",
        "bobtag",
        &format!("{contact}Content-Type: application/sdp\r\n"),
        &answer,
    ))
    .await?;
    let ack = next_request(&mut bob).await?;
    assert!(ack.start.starts_with("ACK "), "{}", ack.start);
    let bye = next_request(&mut bob).await?;
    assert!(bye.start.starts_with("BYE "), "{}", bye.start);
    assert!(bye.header("To").contains("tag="), "{}", bye.header("To"));
    bob.send(&bye.response("200 OK", "bobtag", "", "")).await?;

    let output = caller.await??;
    check(
        &output,
        "uac-call to a TLS phone",
        &std::fs::read_to_string(logs.path().join("errors.log")).unwrap_or_default(),
    );
    let calls = edge.h.calls().await?;
    assert!(
        calls.iter().any(|c| c["state"] == "ended"
            && c["outcome_reason"] == "caller-hung-up"
            && c["to"] == "tel:+16502530002"),
        "{calls:?}"
    );
    edge.h.provider.shutdown().await;
    Ok(())
}

/// A called phone on UDP whose 200 is lost to the edge's ACK repeats it (RFC 3261 §13.3.1.4):
/// the edge's INVITE transaction ended at the first 200, but its record (Timer M, RFC 6026)
/// still takes the repeat to the call, which acknowledges it again. A response matching no
/// transaction changes nothing.
#[tokio::test]
async fn a_called_phone_repeating_its_200_is_acknowledged_again() -> anyhow::Result<()> {
    let _logs = show_logs();
    let edge = edge_of_alice_and_bob().await?;

    let mut bob = SipTransport::udp(edge.udp).await?;
    let ua = Ua::of(&bob)?;
    register(&mut bob, &ua, "a.test", "bob", "udp").await?;

    let logs = tempfile::tempdir()?;
    let caller = alice_calls_bob(edge.udp, logs.path())?;

    let invite = next_request(&mut bob).await?;
    assert!(invite.start.starts_with("INVITE "), "{}", invite.start);
    let contact = format!("Contact: <sip:bob@{};transport=udp>\r\n", ua.local);
    let answer = SDP.replace("o=- 1 1", "o=bob 7 7");
    let ok = invite.response(
        "200 OK",
        "bobtag",
        &format!("{contact}Content-Type: application/sdp\r\n"),
        &answer,
    );
    bob.send(&ok).await?;
    let ack = next_request(&mut bob).await?;
    assert!(ack.start.starts_with("ACK "), "{}", ack.start);
    // A response to a branch the edge never used goes nowhere.
    let stray = String::from_utf8(ok.clone())?.replace(
        invite.header("Via"),
        &format!("SIP/2.0/UDP {};branch=z9hG4bK-not-ours", ua.local),
    );
    bob.send(stray.as_bytes()).await?;
    bob.send(&ok).await?;
    // The caller hangs up half a second after its ACK: the edge's BYE may come first.
    let mut acks = 0;
    let mut bye = None;
    while acks == 0 || bye.is_none() {
        let request = next_request(&mut bob).await?;
        if request.start.starts_with("ACK ") {
            acks += 1;
        } else if request.start.starts_with("BYE ") {
            bye = Some(request);
        } else {
            anyhow::bail!("unexpected request: {}", request.start);
        }
    }
    let bye = bye.expect("a BYE");
    bob.send(&bye.response("200 OK", "bobtag", "", "")).await?;
    assert_eq!(
        acks, 1,
        "one ACK for the repeated 200, none for the stray one"
    );

    let output = caller.await??;
    check(
        &output,
        "uac-call to a phone repeating its 200",
        &std::fs::read_to_string(logs.path().join("errors.log")).unwrap_or_default(),
    );
    edge.h.provider.shutdown().await;
    Ok(())
}

/// A caller whose blob holds no SDP offer (`endpoint call` always puts one in; here, bytes that
/// are no blob at all) calling a user whose phone is a SIP phone: the phone could not use it, so
/// its gateway refuses the call (unsupported-media) without ringing it.
#[tokio::test]
async fn a_blob_without_an_sdp_offer_for_a_sip_phone_is_refused_as_unsupported_media(
) -> anyhow::Result<()> {
    let f = Federation::start().await?;
    let a = f.fed.provider("a.test");
    let carol_user = a.add_user("Carol", &["tel:+16502530009"]).await?;
    let carol = a
        .endpoint(&carol_user, "tel:+16502530009", None, Encoding::Plist)
        .await?;
    let mut carol_push = carol.push_channel(PushMode::WebSocket).await?;
    let mut bob = SipTransport::udp(f.b.sip).await?;
    let ua = Ua::of(&bob)?;
    register(&mut bob, &ua, "b.test", "bob", "udp").await?;

    carol
        .initiate(&session_id(), BOB, b"a native media blob", &["audio"])
        .await?;
    let reject = expect_push(&mut carol_push, "reject").await?;
    assert_eq!(reject.str("reason")?, "unsupported-media");
    assert!(
        bob.receive(std::time::Duration::from_millis(500))
            .await?
            .is_none(),
        "the SIP phone was not rung"
    );
    f.fed.shutdown().await;
    Ok(())
}

/// How many pushes were ever queued for `endpoint`: its queue's last sequence number.
async fn pushes_ever_queued(h: &Harness, endpoint: &str) -> anyhow::Result<i64> {
    sqlx::any::install_default_drivers();
    let url = h
        .provider
        .app
        .config
        .database
        .url
        .clone()
        .context("a database URL")?;
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&url).await?;
    let row = sqlx::query("SELECT push_seq FROM endpoints WHERE id = $1")
        .bind(endpoint)
        .fetch_one(&mut conn)
        .await?;
    Ok(row.try_get::<i64, _>(0)?)
}

/// The gateway endpoint of the SIP account `aor`, once the edge takes its pushes in memory (it
/// looks for new accounts once a second).
async fn gateway(h: &Harness, aor: &str) -> anyhow::Result<String> {
    let account = h
        .provider
        .app
        .db
        .sip_account(aor)
        .await?
        .context(aor.to_string())?;
    let endpoint = account.endpoint_id.context("a gateway endpoint")?;
    for _ in 0..100 {
        if h.provider.app.hub.has_sink(&endpoint) {
            return Ok(endpoint);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("the SIP edge never took {aor}'s gateway pushes")
}

/// sipp in `dir` with `args`, to completion (one call, bounded by its own -timeout); the
/// scenario must pass.
async fn run_sipp(dir: &Path, name: &str, args: Vec<String>) -> anyhow::Result<()> {
    let errors = dir.join(format!("{name}-errors.log"));
    let (cwd, log) = (dir.to_path_buf(), errors.clone());
    let output = tokio::task::spawn_blocking(move || {
        Command::new("sipp")
            .args(&args)
            .args(["-i", "127.0.0.1", "-m", "1", "-timeout", "40s", "-nostdin"])
            .args(["-trace_err", "-error_file"])
            .arg(&log)
            .current_dir(&cwd)
            .output()
    })
    .await??;
    check(
        &output,
        name,
        &std::fs::read_to_string(&errors).unwrap_or_default(),
    );
    Ok(())
}

/// sipp as `user`'s phone at a.test's edge `server`: `scenario`, then `more`.
fn phone_args(
    dir: &Path,
    server: SocketAddr,
    user: &str,
    scenario: &str,
    more: &[&str],
) -> Vec<String> {
    let mut args = vec![
        server.to_string(),
        "-sf".into(),
        path(&sipp_scenario(scenario)),
        "-inf".into(),
        path(&dir.join(format!("{user}.csv"))),
        "-key".into(),
        "domain".into(),
        "a.test".into(),
    ];
    args.extend(more.iter().map(|a| a.to_string()));
    args
}

/// sipp answering as the phone registered from `port`.
fn answering_phone_args(scenario: &str, port: u16) -> Vec<String> {
    vec![
        "-sf".into(),
        path(&sipp_scenario(scenario)),
        "-p".into(),
        port.to_string(),
    ]
}

/// Waits until the call to `callee` last placed at `h` has ended as `reason` says.
async fn assert_ended(h: &Harness, callee: &str, reason: &str) -> anyhow::Result<()> {
    let mut last = serde_json::Value::Null;
    for _ in 0..50 {
        if let Some(call) = h
            .calls()
            .await?
            .into_iter()
            .filter(|c| c["to"] == callee)
            .max_by_key(|c| c["initiated_at"].as_i64().unwrap_or(0))
        {
            if call["state"] == "ended" && call["outcome_reason"] == reason {
                return Ok(());
            }
            last = call;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("expected the call to {callee} to end ({reason}): {last}");
}

/// At one provider, Alice's phone calls Bob's, a native endpoint (Carol) calls Bob's phone and
/// Alice's phone calls Carol: every push of these calls for the phones' gateway endpoints is
/// handed to the SIP edge in memory, none queued, while Carol's are queued as for any endpoint.
#[tokio::test]
async fn a_providers_own_calls_hand_the_gateways_their_pushes_in_memory() -> anyhow::Result<()> {
    let _logs = show_logs();
    let edge = SipProvider::start("a.test", "bob", PASSWORD, &["tel:+16502530002"], |_| {}).await?;
    let h = &edge.h;
    let alice = h.add_user("Alice", &["tel:+16502530001"]).await?;
    add_account(h, &alice, "sip:alice@a.test", PASSWORD).await?;
    let carol_user = h.add_user("Carol", &["tel:+16502530009"]).await?;
    let carol = h
        .endpoint(&carol_user, "tel:+16502530009", None, Encoding::Plist)
        .await?;
    let mut carol_push = carol.push_channel(PushMode::WebSocket).await?;
    let alice_gateway = gateway(h, "sip:alice@a.test").await?;
    let bob_gateway = gateway(h, "sip:bob@a.test").await?;
    let logs = tempfile::tempdir()?;
    let dir = logs.path();
    for user in ["alice", "bob"] {
        std::fs::write(
            dir.join(format!("{user}.csv")),
            format!("SEQUENTIAL\n{user};[authentication username={user} password={PASSWORD}]\n"),
        )?;
    }
    let bob_port = free_sip_port();
    run_sipp(
        dir,
        "register-bob",
        phone_args(
            dir,
            edge.udp,
            "bob",
            "register",
            &["-auth_uri", "a.test", "-p", &bob_port.to_string()],
        ),
    )
    .await?;
    let caller_args = |callee: &str| {
        phone_args(
            dir,
            edge.udp,
            "alice",
            "uac-call",
            &[
                "-key",
                "callee",
                callee,
                "-auth_uri",
                callee,
                "-p",
                &free_sip_port().to_string(),
            ],
        )
    };

    // Phone to phone: Bob's answers, Alice hangs up.
    let bob_answers = run_sipp(
        dir,
        "bob-answers-alice",
        answering_phone_args("uas-answer", bob_port),
    );
    let alice_calls = async {
        // The phone being called listens before this one dials.
        tokio::time::sleep(Duration::from_millis(300)).await;
        run_sipp(dir, "alice-calls-bob", caller_args("bob@a.test")).await
    };
    let (answered, called) = tokio::join!(bob_answers, alice_calls);
    answered?;
    called?;
    assert_ended(h, "tel:+16502530002", "caller-hung-up").await?;

    // A native endpoint calls the phone, and hangs up once it answers.
    let bob_answers = run_sipp(
        dir,
        "bob-answers-carol",
        answering_phone_args("uas-answer", bob_port),
    );
    let carol_calls = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let sid = session_id();
        carol
            .initiate(&sid, "tel:+16502530002", &blob_of(SDP), &["audio"])
            .await?;
        let accepted = expect_push(&mut carol_push, "accept").await?;
        carol
            .cancel(
                &sid,
                accepted.str("self-uri")?,
                accepted.str("peer-uri")?,
                accepted.str("state")?,
            )
            .await?;
        anyhow::Ok(())
    };
    let (answered, called) = tokio::join!(bob_answers, carol_calls);
    answered?;
    called?;
    assert_ended(h, "tel:+16502530002", "caller-hung-up").await?;

    // The phone calls the native endpoint, which answers; the phone hangs up.
    let carol_answers = async {
        let ring = expect_push(&mut carol_push, "initiate").await?;
        let answer = SDP.replace("o=- 1 1", "o=carol 7 7");
        carol.accept(&ring, &blob_of(&answer)).await?;
        let ended = expect_push(&mut carol_push, "cancel").await?;
        anyhow::Ok(ended.str("reason")?.to_string())
    };
    let alice_calls = run_sipp(dir, "alice-calls-carol", caller_args("+16502530009@a.test"));
    let (ended, called) = tokio::join!(carol_answers, alice_calls);
    called?;
    assert_eq!(ended?, "ended");
    assert_ended(h, "tel:+16502530009", "caller-hung-up").await?;

    for (phone, gateway) in [("Alice", &alice_gateway), ("Bob", &bob_gateway)] {
        assert_eq!(
            pushes_ever_queued(h, gateway).await?,
            0,
            "{phone}'s gateway endpoint had a push queued"
        );
    }
    // Carol's WebSocket was open throughout: hers went to it from memory too.
    assert_eq!(
        pushes_ever_queued(h, &carol.identity.endpoint_id).await?,
        0,
        "a native endpoint with an open WebSocket had a push queued"
    );
    edge.h.provider.shutdown().await;
    Ok(())
}

/// A push for a gateway that its edge cannot act on here (a Cancel for a call whose leg it does
/// not hold, as for a call another replica holds) is queued, and left there for whoever holds
/// the call. Bad pushes in a gateway's queue (an undecodable one, an Initiate naming no session)
/// harm nothing: the queue's reader goes on to a good Initiate queued after them (as another
/// replica would queue it) and rings the phone.
#[tokio::test]
async fn gateway_pushes_the_edge_cannot_act_on_are_queued_and_bad_ones_harm_nothing(
) -> anyhow::Result<()> {
    let _logs = show_logs();
    let edge = SipProvider::start("a.test", "bob", PASSWORD, &["tel:+16502530002"], |_| {}).await?;
    let app = edge.h.provider.app.clone();
    let bob_gateway = gateway(&edge.h, "sip:bob@a.test").await?;
    let mut bob = SipTransport::udp(edge.udp).await?;
    let ua = Ua::of(&bob)?;
    register(&mut bob, &ua, "a.test", "bob", "udp").await?;

    let stray = session_id();
    let cancel = Push::Cancel(CancelPush {
        session_id: SessionId::parse(&stray)?,
        self_uri: "tel:+16502530002".into(),
        peer_uri: "tel:+16502530009".into(),
        reason: CancelReason::Cancelled,
    });
    let mut tx = app.db.begin_write().await?;
    let mut outbox = Outbox::default();
    assert!(
        outbox
            .push(&mut tx, &app.hub, &bob_gateway, &cancel, 60_000)
            .await?
    );
    tx.commit().await?;
    outbox.wake(&app.hub);

    let plist = |dict: &Dict| String::from_utf8(dict.encode(Encoding::Plist));
    let ring = Push::Initiate(InitiatePush {
        session_id: SessionId::parse(&session_id())?,
        self_uri: "tel:+16502530002".into(),
        self_token: "gateway-token".into(),
        peer_uri: "tel:+16502530009".into(),
        peer_token: "caller-token".into(),
        peer_blob: blob_of(SDP),
        peer_capabilities: Capabilities::default(),
        peer_ca: None,
        peer_attestation: None,
        peer_provider: None,
        relay_provider: "a.test".into(),
        media: vec![MediaKind::Audio],
        ring_deadline: switchyard_provider::shared::now_ms() + 30_000,
        state: "a-state".into(),
    });
    let expires = switchyard_provider::shared::now_ms() + 60_000;
    let mut tx = app.db.begin_write().await?;
    for body in [
        "not a property list".to_string(),
        plist(&Dict::new().with("action", "initiate"))?,
        plist(&ring.to_dict())?,
    ] {
        enqueue_push(&mut tx, &bob_gateway, &body, expires).await?;
    }
    tx.commit().await?;
    app.hub.notify(&bob_gateway);

    let invite = next_request(&mut bob).await?;
    assert!(
        invite.start.starts_with("INVITE sip:bob@"),
        "{}",
        invite.start
    );
    bob.send(&invite.response("486 Busy Here", "bobtag", "", ""))
        .await?;
    // A reading of the queue or two later: the stray Cancel is still queued, and so is the
    // undecodable push (left to expire); the Initiates were taken.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let queued: Vec<String> = app
        .db
        .pending_pushes(&bob_gateway, 0, 100)
        .await?
        .into_iter()
        .map(|p| p.body)
        .collect();
    assert_eq!(queued.len(), 2, "{queued:?}");
    assert!(queued.iter().any(|b| b.contains(&stray)), "{queued:?}");
    assert!(
        queued.iter().any(|b| b == "not a property list"),
        "{queued:?}"
    );
    edge.h.provider.shutdown().await;
    Ok(())
}
