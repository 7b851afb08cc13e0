//! Registration with provisioning codes, identity certificates, and the admin API.

use serde_json::json;
use switchyard_endpoint::client;
use switchyard_protocol::dict::{Dict, Encoding};
use switchyard_tests::*;

const ALICE: &str = "tel:+16502530000";

#[tokio::test]
async fn registration_issues_a_certificate_with_the_users_uris() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let alice = h
        .add_user(
            "Alice",
            &["tel:+1 (650) 253-0000", "mailto:Alice@Example.COM"],
        )
        .await?;
    let code = h.code(&alice).await?;
    let identity = client::register(
        &h.provider_url,
        h.ca_pem(),
        "tel:+1-650-253-0000",
        &code,
        "phone",
        None,
        Encoding::Json,
    )
    .await?;
    assert_eq!(identity.uris, [ALICE, "mailto:Alice@example.com"]);
    assert!(identity.certificate_pem.contains("BEGIN CERTIFICATE"));
    assert!(identity.push_token.len() >= 32);

    // A code is good once.
    let reuse = client::register(
        &h.provider_url,
        h.ca_pem(),
        ALICE,
        &code,
        "tablet",
        None,
        Encoding::Plist,
    )
    .await
    .unwrap_err();
    assert_eq!(reuse.code(), Some("invalid-code"));
    // Another user's code does not register for Alice's URI.
    let bob = h.add_user("Bob", &["mailto:bob@example.com"]).await?;
    let bobs_code = h.code(&bob).await?;
    let wrong = client::register(
        &h.provider_url,
        h.ca_pem(),
        ALICE,
        &bobs_code,
        "x",
        None,
        Encoding::Plist,
    )
    .await
    .unwrap_err();
    assert_eq!(wrong.code(), Some("invalid-code"));
    // ...and the refusal did not consume it.
    client::register(
        &h.provider_url,
        h.ca_pem(),
        "mailto:bob@example.com",
        &bobs_code,
        "x",
        None,
        Encoding::Plist,
    )
    .await?;
    let unknown = client::register(
        &h.provider_url,
        h.ca_pem(),
        "tel:+442079460958",
        "nope",
        "x",
        None,
        Encoding::Plist,
    )
    .await
    .unwrap_err();
    assert_eq!(unknown.code(), Some("invalid-code"));

    let (_, endpoints) = h
        .admin_call(
            reqwest::Method::GET,
            &format!("/admin/v1/users/{alice}/endpoints"),
            None,
        )
        .await?;
    assert_eq!(endpoints["endpoints"].as_array().unwrap().len(), 1);
    Ok(())
}

#[tokio::test]
async fn bad_registrations_are_refused_without_using_the_code() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let alice = h.add_user("Alice", &[ALICE]).await?;
    let code = h.code(&alice).await?;
    let http = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(h.ca_pem().as_bytes())?])
        .build()?;
    let post = |body: Dict| {
        let http = http.clone();
        let url = format!("{}/v1/register", h.provider_url);
        async move {
            let response = http
                .post(url)
                .body(body.encode(Encoding::Plist))
                .send()
                .await?;
            let status = response.status().as_u16();
            anyhow::Ok((
                status,
                Dict::decode(&response.bytes().await?, Encoding::Plist)?,
            ))
        }
    };
    let base = Dict::new().with("uri", ALICE).with("code", code.as_str());
    let (status, answer) = post(base.clone().with("csr", "not a key")).await?;
    assert_eq!((status, answer.str("field")?), (400, "csr"));
    let (status, answer) = post(base.clone()).await?;
    assert_eq!(
        (status, answer.str("error")?, answer.str("field")?),
        (400, "missing-field", "csr")
    );
    let bad_caps = Dict::new()
        .with("audio", true)
        .with("audio-codecs", vec!["op us".to_string()]);
    let key = rcgen_free_csr();
    let (status, answer) = post(
        base.clone()
            .with("csr", key.as_str())
            .with("capabilities", bad_caps),
    )
    .await?;
    assert_eq!((status, answer.str("field")?), (400, "capabilities"));
    let (status, _) = post(base.clone().with("csr", key.as_str()).with("uri", "tel:12")).await?;
    assert_eq!(status, 400);
    // Without a valid code the key request is not even read: nothing is signed for a stranger.
    let (status, answer) = post(
        base.clone()
            .with("code", "not-the-code")
            .with("csr", "not a key"),
    )
    .await?;
    assert_eq!((status, answer.str("error")?), (403, "invalid-code"));
    // The code still works.
    client::register(
        &h.provider_url,
        h.ca_pem(),
        ALICE,
        &code,
        "phone",
        None,
        Encoding::Plist,
    )
    .await?;
    Ok(())
}

/// A CSR made by the client library's own path (register() makes one internally).
fn rcgen_free_csr() -> String {
    "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEBqo1VdTbOsmEPqJ3jsL4/ly6Qqye\nLxkX7k6wtCwQ1sHhyAvHPtVtIugTh7dBz8zSlWz9vpyqPpKZ1xHsuCk8vg==\n-----END PUBLIC KEY-----\n".to_string()
}

#[tokio::test]
async fn admin_api_manages_users_and_refuses_bad_input() -> anyhow::Result<()> {
    use reqwest::Method;
    let h = Harness::start().await?;
    // Authentication.
    let response = h
        .admin
        .get(format!("{}/admin/v1/users", h.admin_url))
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 401);

    let (status, body) = h
        .admin_call(
            Method::POST,
            "/admin/v1/users",
            Some(json!({"display_name": "A", "uris": ["tel:+16502530000", "bogus:x"]})),
        )
        .await?;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("uris[1]"),
        "{body}"
    );
    let (status, _) = h
        .admin_call(Method::POST, "/admin/v1/users", Some(json!({"uris": []})))
        .await?;
    assert_eq!(status, 400);
    let (status, _) = h
        .admin_call(
            Method::POST,
            "/admin/v1/users",
            Some(json!({"uris": ["tel:+16502530000"], "extra": 1})),
        )
        .await?;
    assert_eq!(status, 400);
    assert_eq!(
        h.admin_call(Method::GET, "/admin/v1/users", None).await?.1["total"],
        0,
        "refusals created users"
    );

    let alice = h.add_user("Alice", &[ALICE]).await?;
    let (status, _) = h
        .admin_call(
            Method::POST,
            "/admin/v1/users",
            Some(json!({"uris": ["tel:+1 650 253 0000"]})),
        )
        .await?;
    assert_eq!(status, 409, "the same number in another spelling is taken");
    let (status, body) = h
        .admin_call(
            Method::POST,
            &format!("/admin/v1/users/{alice}/uris"),
            Some(json!({"uri": "mailto:alice@BÜCHER.example"})),
        )
        .await?;
    assert_eq!(status, 200);
    assert_eq!(body["uri"], "mailto:alice@xn--bcher-kva.example");
    h.add_user("Bob", &["mailto:bob@example.com"]).await?;

    let (_, found) = h
        .admin_call(Method::GET, "/admin/v1/users?q=bcher", None)
        .await?;
    assert_eq!(found["users"].as_array().unwrap().len(), 1);
    assert_eq!(found["users"][0]["id"], alice.as_str());
    let (_, page) = h
        .admin_call(Method::GET, "/admin/v1/users?limit=1", None)
        .await?;
    assert_eq!(page["users"].as_array().unwrap().len(), 1);
    let after = page["next_after"].as_str().unwrap();
    let (_, rest) = h
        .admin_call(
            Method::GET,
            &format!("/admin/v1/users?limit=1&after={after}"),
            None,
        )
        .await?;
    assert_ne!(rest["users"][0]["id"], page["users"][0]["id"]);

    let (status, _) = h
        .admin_call(
            Method::DELETE,
            "/admin/v1/uris/mailto%3Aalice%40xn--bcher-kva.example",
            None,
        )
        .await?;
    assert_eq!(status, 200);
    let (status, _) = h
        .admin_call(Method::DELETE, "/admin/v1/users/no-such-user", None)
        .await?;
    assert_eq!(status, 404);
    let (status, _) = h
        .admin_call(Method::DELETE, &format!("/admin/v1/users/{alice}"), None)
        .await?;
    assert_eq!(status, 200);
    assert_eq!(
        h.admin_call(Method::GET, "/admin/v1/users", None).await?.1["total"],
        1
    );

    let metrics = h.metrics().await?;
    assert!(metrics.contains("switchyard_"), "{metrics}");
    assert_eq!(
        h.admin
            .get(format!("{}/readyz", h.admin_url))
            .send()
            .await?
            .status()
            .as_u16(),
        200
    );
    Ok(())
}

async fn import(h: &Harness, csv: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    let response = h
        .admin
        .post(format!("{}/admin/v1/import", h.admin_url))
        .bearer_auth(h.token())
        .body(csv.to_string())
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 200);
    Ok(response
        .text()
        .await?
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect())
}

#[tokio::test]
async fn csv_import_is_all_or_nothing() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    h.add_user("Existing", &["mailto:taken@example.com"])
        .await?;
    let bad = "display_name,uris\n\
               Ann,tel:+16502530000 mailto:ann@example.com\n\
               Ben,tel:+1 555\n\
               Cat,mailto:taken@example.com\n\
               Dan,mailto:ANN@example.com\n\
               Eve,mailto:ann@example.com\n";
    let events = import(&h, bad).await?;
    let failed = &events.last().unwrap()["failed"];
    let lines: Vec<i64> = failed["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["line"].as_i64().unwrap())
        .collect();
    assert_eq!(lines, [3, 4, 6], "{failed}");
    assert_eq!(
        h.admin_call(reqwest::Method::GET, "/admin/v1/users", None)
            .await?
            .1["total"],
        1
    );

    let events = import(&h, "name,uri\nx,y\n").await?;
    assert!(events.last().unwrap()["failed"]["message"]
        .as_str()
        .unwrap()
        .contains("display_name"));

    let mut good = String::from("display_name,uris\n");
    for i in 0..1234 {
        good.push_str(&format!(
            "\"User, {i}\",tel:+1650253{i:04} mailto:user{i}@example.com\n"
        ));
    }
    let events = import(&h, &good).await?;
    let done = &events.last().unwrap()["done"];
    assert_eq!(done["users"], 1234, "{events:?}");
    assert_eq!(done["uris"], 2468);
    let (_, found) = h
        .admin_call(reqwest::Method::GET, "/admin/v1/users?q=user1%40", None)
        .await?;
    assert_eq!(found["users"][0]["display_name"], "User, 1");
    assert_eq!(found["users"][0]["uris"][0], "mailto:user1@example.com");
    Ok(())
}

#[tokio::test]
async fn the_requested_database_backend_is_the_one_in_use() -> anyhow::Result<()> {
    use switchyard_provider::db::Backend;
    let h = Harness::start().await?;
    let expected = match database_kind().as_str() {
        "postgres" => Backend::Postgres,
        _ => Backend::Sqlite,
    };
    assert_eq!(h.provider.app.db.backend(), expected);
    Ok(())
}

#[tokio::test]
async fn search_treats_like_wildcards_literally() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    h.add_user("Under Score", &["mailto:first_last@example.com"])
        .await?;
    h.add_user("No Underscore", &["mailto:firstxlast@example.com"])
        .await?;
    h.add_user("Percent", &["mailto:100pct@example.com"])
        .await?;
    let found = |q: &str| {
        let q = q.to_string();
        let h = &h;
        async move {
            let (_, body) = h
                .admin_call(
                    reqwest::Method::GET,
                    &format!("/admin/v1/users?q={q}"),
                    None,
                )
                .await?;
            anyhow::Ok(
                body["users"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|u| u["display_name"].as_str().unwrap().to_string())
                    .collect::<Vec<_>>(),
            )
        }
    };
    assert_eq!(found("first_last").await?, ["Under Score"]);
    assert_eq!(
        found("%25").await?,
        Vec::<String>::new(),
        "`%` matches only a literal percent sign"
    );
    assert_eq!(found("FIRST").await?.len(), 2);
    Ok(())
}
