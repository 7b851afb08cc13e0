//! The SIP edge's registrar over UDP, TCP and TLS: digest challenges and answers (MD5 and SHA-256),
//! contacts with their expiry, several contacts per AoR, the RFC 3261 refusals, retransmissions
//! answered from the transaction, the front door's answers to bad input, and the admin API that
//! provisions the accounts.

use std::time::Duration;

use serde_json::json;
use switchyard_tests::sip::{authorization, SipProvider, SipResponse, SipTransport, Ua};

const DOMAIN: &str = "a.test";
const BOB: &str = "sip:bob@a.test";
const PASSWORD: &str = "correct horse battery";

async fn edge() -> anyhow::Result<SipProvider> {
    let edge = SipProvider::start(DOMAIN, "bob", PASSWORD, &["tel:+16502530001"], |config| {
        config.sip.min_expires_seconds = 2;
        config.sip.nonce_lifetime_seconds = 2;
        config.sip.max_contacts_per_aor = 4;
    })
    .await?;
    let (status, body) = edge
        .h
        .admin_call(
            reqwest::Method::GET,
            &format!("/admin/v1/users/{}/sip-accounts", edge.user_id),
            None,
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sip_accounts"][0]["realm"], DOMAIN);
    Ok(edge)
}

/// One registration attempt; the defaults are Bob's account with a contact of his.
struct Attempt<'a> {
    aor: &'a str,
    username: &'a str,
    password: &'a str,
    call_id: &'a str,
    cseq: u32,
    contact: &'a str,
    algorithm: &'a str,
    /// More header lines, each ending in CRLF.
    headers: &'a str,
}

impl Default for Attempt<'_> {
    fn default() -> Self {
        Attempt {
            aor: BOB,
            username: "bob",
            password: PASSWORD,
            call_id: "c",
            cseq: 1,
            contact: "<sip:bob@10.0.0.1>",
            algorithm: "MD5",
            headers: "",
        }
    }
}

/// REGISTER, answering the challenge that comes back; returns the final response.
async fn register_with(t: &mut SipTransport, attempt: Attempt<'_>) -> anyhow::Result<SipResponse> {
    let Attempt {
        aor,
        username,
        password,
        call_id,
        cseq,
        contact,
        algorithm,
        headers,
    } = attempt;
    let ua = Ua::of(t)?;
    let first = ua.register(
        DOMAIN,
        aor,
        call_id,
        cseq,
        &format!("{call_id}{cseq}a"),
        &format!("Contact: {contact}\r\n{headers}"),
    );
    let challenged = t.exchange(&first).await?;
    assert_eq!(challenged.status, 401, "{}", challenged.text);
    let challenge = challenged
        .all("WWW-Authenticate")
        .into_iter()
        .find(|c| c.contains(&format!("algorithm={algorithm}")))
        .unwrap_or_else(|| panic!("no {algorithm} challenge: {}", challenged.text))
        .to_string();
    let answer = authorization(
        &challenge,
        username,
        password,
        "REGISTER",
        &format!("sip:{DOMAIN}"),
        1,
    );
    let second = ua.register(
        DOMAIN,
        aor,
        call_id,
        cseq + 1,
        &format!("{call_id}{cseq}b"),
        &format!("Contact: {contact}\r\n{headers}Authorization: {answer}\r\n"),
    );
    t.exchange(&second).await
}

fn contacts(response: &SipResponse) -> Vec<String> {
    let mut all: Vec<String> = response
        .all("Contact")
        .iter()
        .map(|c| c.to_string())
        .collect();
    all.sort();
    all
}

#[tokio::test]
async fn phones_register_with_digest_over_udp_tcp_and_tls() -> anyhow::Result<()> {
    let e = edge().await?;
    let ca = e.h.provider.app.ca.cert_pem().to_string();
    for (i, (mut t, algorithm)) in [
        (SipTransport::udp(e.udp).await?, "MD5"),
        (SipTransport::tcp(e.tcp).await?, "SHA-256"),
        (SipTransport::tls(e.tls, &ca).await?, "MD5"),
    ]
    .into_iter()
    .enumerate()
    {
        let contact = format!("<sip:bob@10.0.0.{}:5060>;expires=600", i + 1);
        let ok = register_with(
            &mut t,
            Attempt {
                call_id: &format!("c{i}"),
                contact: &contact,
                algorithm,
                ..Attempt::default()
            },
        )
        .await?;
        assert_eq!(ok.status, 200, "{}", ok.text);
        assert!(ok.header("Date").is_some(), "{}", ok.text);
        let listed = contacts(&ok);
        assert_eq!(listed.len(), i + 1, "{}", ok.text);
        assert!(
            listed
                .iter()
                .any(|c| c.starts_with(&format!("<sip:bob@10.0.0.{}:5060>;expires=", i + 1))),
            "{listed:?}"
        );
    }
    // Expiry is capped at sip.max_expires_seconds (3600) and counts down.
    let mut t = SipTransport::udp(e.udp).await?;
    let ok = register_with(
        &mut t,
        Attempt {
            call_id: "c9",
            contact: "<sip:bob@10.0.0.9>;expires=99999",
            ..Attempt::default()
        },
    )
    .await?;
    assert!(
        contacts(&ok).contains(&"<sip:bob@10.0.0.9>;expires=3600".to_string()),
        "{}",
        ok.text
    );

    // The admin API lists the account with its contacts.
    let (status, body) =
        e.h.admin_call(
            reqwest::Method::GET,
            &format!("/admin/v1/users/{}/sip-accounts", e.user_id),
            None,
        )
        .await?;
    assert_eq!(status, 200);
    let listed = body["sip_accounts"][0]["contacts"].as_array().unwrap();
    assert_eq!(listed.len(), 4, "{body}");
    for transport in ["udp", "tcp", "tls"] {
        assert!(listed.iter().any(|c| c["transport"] == transport), "{body}");
    }
    assert!(
        listed.iter().all(|c| c["user_agent"] == "switchyard-tests"),
        "{body}"
    );

    // A fifth contact is over sip.max_contacts_per_aor (4).
    let refused = register_with(
        &mut t,
        Attempt {
            call_id: "c10",
            contact: "<sip:bob@10.0.0.10>",
            ..Attempt::default()
        },
    )
    .await?;
    assert_eq!(refused.status, 403, "{}", refused.text);

    // Contact: * with Expires: 0 removes them all.
    let mut t = SipTransport::udp(e.udp).await?;
    let cleared = register_with(
        &mut t,
        Attempt {
            call_id: "c11",
            contact: "*",
            headers: "Expires: 0\r\n",
            algorithm: "SHA-256",
            ..Attempt::default()
        },
    )
    .await?;
    assert_eq!(cleared.status, 200, "{}", cleared.text);
    assert!(contacts(&cleared).is_empty(), "{}", cleared.text);
    e.h.provider.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn registrations_are_refused_as_rfc_3261_says() -> anyhow::Result<()> {
    let e = edge().await?;
    let mut t = SipTransport::udp(e.udp).await?;
    // Wrong password, unknown user, and someone else's AoR: all 403.
    for (aor, username, password) in [(BOB, "bob", "not the password"), (BOB, "mallory", PASSWORD)]
    {
        let refused = register_with(
            &mut t,
            Attempt {
                aor,
                username,
                password,
                call_id: "r1",
                contact: "<sip:x@10.0.0.1>",
                ..Attempt::default()
            },
        )
        .await?;
        assert_eq!(refused.status, 403, "{aor} {username}: {}", refused.text);
    }
    let (status, body) =
        e.h.admin_call(
            reqwest::Method::POST,
            &format!("/admin/v1/users/{}/sip-accounts", e.user_id),
            Some(json!({"aor": "sip:alice@a.test", "password": "alice's password"})),
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    let refused = register_with(
        &mut t,
        Attempt {
            aor: "sip:alice@a.test",
            call_id: "r2",
            contact: "<sip:x@10.0.0.1>",
            ..Attempt::default()
        },
    )
    .await?;
    assert_eq!(refused.status, 403, "{}", refused.text);

    // Too brief an interval: 423 with Min-Expires.
    let brief = register_with(
        &mut t,
        Attempt {
            call_id: "r3",
            contact: "<sip:x@10.0.0.1>;expires=1",
            ..Attempt::default()
        },
    )
    .await?;
    assert_eq!(brief.status, 423, "{}", brief.text);
    assert_eq!(brief.header("Min-Expires"), Some("2"));

    // A domain this provider does not serve.
    let ua = Ua::of(&t)?;
    let foreign = t
        .exchange(&ua.register(
            "b.test",
            "sip:bob@b.test",
            "r4",
            1,
            "f1",
            "Contact: <sip:x@10.0.0.1>\r\n",
        ))
        .await?;
    assert_eq!(foreign.status, 403, "{}", foreign.text);

    // A REGISTER with the same Call-ID and a CSeq not above the binding's is out of order.
    let ok = register_with(
        &mut t,
        Attempt {
            call_id: "r5",
            cseq: 10,
            contact: "<sip:bob@10.0.0.5>",
            ..Attempt::default()
        },
    )
    .await?;
    assert_eq!(ok.status, 200, "{}", ok.text);
    let stale = register_with(
        &mut t,
        Attempt {
            call_id: "r5",
            cseq: 3,
            contact: "<sip:bob@10.0.0.5>",
            ..Attempt::default()
        },
    )
    .await?;
    assert_eq!(stale.status, 400, "{}", stale.text);

    // An answer to a nonce older than sip.nonce_lifetime_seconds gets a stale challenge.
    let first = t
        .exchange(&ua.register(
            DOMAIN,
            BOB,
            "r6",
            1,
            "s1",
            "Contact: <sip:bob@10.0.0.6>\r\n",
        ))
        .await?;
    let challenge = first.all("WWW-Authenticate")[0].to_string();
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let answer = authorization(&challenge, "bob", PASSWORD, "REGISTER", "sip:a.test", 1);
    let late = t
        .exchange(&ua.register(
            DOMAIN,
            BOB,
            "r6",
            2,
            "s2",
            &format!("Contact: <sip:bob@10.0.0.6>\r\nAuthorization: {answer}\r\n"),
        ))
        .await?;
    assert_eq!(late.status, 401, "{}", late.text);
    assert!(late.text.contains("stale=true"), "{}", late.text);

    // Contacts expire: the 10-minute one from above stays, a 2-second one goes.
    let short = register_with(
        &mut t,
        Attempt {
            call_id: "r7",
            contact: "<sip:bob@10.0.0.7>;expires=2",
            ..Attempt::default()
        },
    )
    .await?;
    assert_eq!(short.status, 200, "{}", short.text);
    assert_eq!(contacts(&short).len(), 2, "{}", short.text);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_, body) =
        e.h.admin_call(
            reqwest::Method::GET,
            &format!("/admin/v1/users/{}/sip-accounts", e.user_id),
            None,
        )
        .await?;
    let bob = body["sip_accounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["aor"] == BOB)
        .unwrap()
        .clone();
    assert_eq!(bob["contacts"].as_array().unwrap().len(), 1, "{body}");
    e.h.provider.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn retransmissions_get_the_same_answer_and_bad_input_the_right_status() -> anyhow::Result<()>
{
    let e = edge().await?;
    let mut t = SipTransport::udp(e.udp).await?;
    let ua = Ua::of(&t)?;
    let local = ua.local;
    let request = ua.register(
        DOMAIN,
        BOB,
        "t1",
        1,
        "same",
        "Contact: <sip:bob@10.0.0.1>\r\n",
    );
    let first = t.exchange(&request).await?;
    let again = t.exchange(&request).await?;
    assert_eq!(
        first.text, again.text,
        "a retransmission is answered from the transaction"
    );

    let options = format!(
        "OPTIONS sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKopt;rport\r\nMax-Forwards: 70\r\n\
         From: <sip:probe@b.test>;tag=1\r\nTo: <sip:{DOMAIN}>\r\nCall-ID: o1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    );
    let ok = t.exchange(options.as_bytes()).await?;
    assert_eq!(ok.status, 200, "{}", ok.text);
    assert_eq!(
        ok.header("Allow"),
        Some("REGISTER, OPTIONS, INVITE, ACK, CANCEL, BYE, UPDATE")
    );
    assert!(
        ok.text.contains(&format!("rport={}", local.port())),
        "{}",
        ok.text
    );

    let with = |start: &str, branch: &str, extra: &str| {
        format!(
            "{start}\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{branch}\r\nMax-Forwards: 70\r\n\
             From: <sip:bob@a.test>;tag=1\r\nTo: <sip:bob@a.test>\r\nCall-ID: {branch}\r\nCSeq: 1 {method}\r\n{extra}Content-Length: 0\r\n\r\n",
            method = start.split(' ').next().unwrap()
        )
        .into_bytes()
    };
    for (bytes, status) in [
        (with("SUBSCRIBE sip:bob@a.test SIP/2.0", "b1", ""), 405),
        (with("FROB sip:a.test SIP/2.0", "b2", ""), 501),
        (with("REGISTER mailto:bob@a.test SIP/2.0", "b3", ""), 416),
        (
            with("REGISTER sip:a.test SIP/2.0", "b4", "Require: gruu\r\n"),
            420,
        ),
        (
            with(
                "REGISTER sip:a.test SIP/2.0",
                "b5",
                &format!("X-Big: {}\r\n", "x".repeat(20_000)),
            ),
            413,
        ),
        (with("REGISTER sip:a.test SIP/2.1", "b6", ""), 505),
    ] {
        let answer = t.exchange(&bytes).await?;
        assert_eq!(
            answer.status,
            status,
            "{}",
            String::from_utf8_lossy(&bytes[..60])
        );
    }
    // Nothing to answer with: dropped, and the edge goes on serving.
    t.send(b"\x16\x03\x01 not SIP at all").await?;
    assert!(t.receive(Duration::from_millis(300)).await?.is_none());
    assert_eq!(
        t.exchange(options.replace("z9hG4bKopt", "z9hG4bKopt2").as_bytes())
            .await?
            .status,
        200
    );

    // On TCP, a message without Content-Length closes the connection.
    let mut tcp = SipTransport::tcp(e.tcp).await?;
    tcp.send(b"OPTIONS sip:a.test SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bKx\r\n\r\n")
        .await?;
    assert!(tcp.receive(Duration::from_secs(2)).await.is_err(), "closed");
    e.h.provider.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn sip_accounts_are_checked_and_removed_through_the_admin_api() -> anyhow::Result<()> {
    let e = edge().await?;
    let path = format!("/admin/v1/users/{}/sip-accounts", e.user_id);
    for (body, status) in [
        (json!({"aor": "sip:bob@b.test", "password": PASSWORD}), 400),
        (
            json!({"aor": "tel:+15551234567", "password": PASSWORD}),
            400,
        ),
        (json!({"aor": "sip:carol@a.test", "password": "short"}), 400),
        (json!({"aor": BOB, "password": PASSWORD}), 409),
        (
            json!({"aor": "sip:carol@a.test", "username": "bob", "password": PASSWORD}),
            409,
        ),
        (json!({"aor": "sip:carol@a.test"}), 400),
    ] {
        let (got, answer) =
            e.h.admin_call(reqwest::Method::POST, &path, Some(body.clone()))
                .await?;
        assert_eq!(got, status, "{body}: {answer}");
    }
    let (got, _) =
        e.h.admin_call(
            reqwest::Method::POST,
            "/admin/v1/users/nobody/sip-accounts",
            Some(json!({"aor": "sip:dave@a.test", "password": PASSWORD})),
        )
        .await?;
    assert_eq!(got, 404);

    let mut t = SipTransport::tcp(e.tcp).await?;
    let ok = register_with(
        &mut t,
        Attempt {
            call_id: "d1",
            contact: "<sip:bob@10.0.0.1;transport=tcp>",
            algorithm: "SHA-256",
            ..Attempt::default()
        },
    )
    .await?;
    assert_eq!(ok.status, 200, "{}", ok.text);
    let (got, _) =
        e.h.admin_call(
            reqwest::Method::DELETE,
            "/admin/v1/sip-accounts/sip:bob@a.test",
            None,
        )
        .await?;
    assert_eq!(got, 200);
    let gone = register_with(
        &mut t,
        Attempt {
            call_id: "d2",
            ..Attempt::default()
        },
    )
    .await?;
    assert_eq!(gone.status, 403, "{}", gone.text);
    let (got, _) =
        e.h.admin_call(
            reqwest::Method::DELETE,
            "/admin/v1/sip-accounts/sip:bob@a.test",
            None,
        )
        .await?;
    assert_eq!(got, 404);
    e.h.provider.shutdown().await;
    Ok(())
}
