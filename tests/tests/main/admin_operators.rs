//! Operators of the admin API: accounts made with the bearer token, logins with a session
//! cookie (Secure, HttpOnly, SameSite=Strict) and a CSRF token for every change, viewers refused
//! by the API itself, login rate limiting, and the audit log of who changed what and when.

use reqwest::header::{COOKIE, RETRY_AFTER, SET_COOKIE};
use reqwest::Method;
use serde_json::{json, Value};
use switchyard_tests::Harness;

const OPS_PASSWORD: &str = "operator password 1";
const VIEWER_PASSWORD: &str = "viewer password 22";

/// A browser's view of a session: the cookie it was given and the CSRF token the page read.
struct Session {
    cookie: String,
    csrf: String,
}

async fn login(
    h: &Harness,
    name: &str,
    password: &str,
) -> anyhow::Result<(u16, Value, Option<String>)> {
    let response = h
        .admin
        .post(format!("{}/admin/v1/session", h.admin_url))
        .json(&json!({"name": name, "password": password}))
        .send()
        .await?;
    let status = response.status().as_u16();
    let cookie = response
        .headers()
        .get(SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    Ok((status, response.json().await?, cookie))
}

async fn logged_in(h: &Harness, name: &str, password: &str) -> anyhow::Result<Session> {
    let (status, body, cookie) = login(h, name, password).await?;
    anyhow::ensure!(status == 200, "login: {status} {body}");
    let set_cookie = cookie.expect("a session cookie");
    for attribute in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/admin"] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    let pair = set_cookie
        .split(';')
        .next()
        .expect("name=value")
        .to_string();
    Ok(Session {
        cookie: pair,
        csrf: body["csrf_token"].as_str().expect("csrf token").to_string(),
    })
}

/// A request with the session's cookie, and its CSRF token when `csrf`.
async fn call(
    h: &Harness,
    session: &Session,
    csrf: bool,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<(u16, Value)> {
    let mut request = h
        .admin
        .request(method, format!("{}{path}", h.admin_url))
        .header(COOKIE, &session.cookie);
    if csrf {
        request = request.header("X-CSRF-Token", &session.csrf);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let text = response.text().await?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

async fn user_count(h: &Harness) -> anyhow::Result<u64> {
    let (_, body) = h.admin_call(Method::GET, "/admin/v1/users", None).await?;
    Ok(body["total"].as_u64().expect("total"))
}

#[tokio::test]
async fn operators_log_in_viewers_only_look_and_every_change_is_audited() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    for (name, role, password) in [
        ("ops", "operator", OPS_PASSWORD),
        ("watcher", "viewer", VIEWER_PASSWORD),
    ] {
        let (status, body) = h
            .admin_call(
                Method::POST,
                "/admin/v1/operators",
                Some(json!({"name": name, "role": role, "password": password})),
            )
            .await?;
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["role"], role);
        assert!(body.get("password_hash").is_none(), "{body}");
    }
    // Bad input changes nothing.
    for (body, code, status) in [
        (
            json!({"name": "ops", "role": "viewer", "password": "another password 3"}),
            "conflict",
            409,
        ),
        (
            json!({"name": "new", "role": "admin", "password": "another password 3"}),
            "invalid-field",
            400,
        ),
        (
            json!({"name": "new", "role": "viewer", "password": "short"}),
            "invalid-field",
            400,
        ),
        (
            json!({"name": "has space", "role": "viewer", "password": "another password 3"}),
            "invalid-field",
            400,
        ),
        (json!({"name": "new"}), "malformed-body", 400),
    ] {
        let (got, answer) = h
            .admin_call(Method::POST, "/admin/v1/operators", Some(body.clone()))
            .await?;
        assert_eq!(
            (got, answer["error"].as_str()),
            (status, Some(code)),
            "{body}"
        );
    }
    let (_, listed) = h
        .admin_call(Method::GET, "/admin/v1/operators", None)
        .await?;
    assert_eq!(
        listed["operators"].as_array().map(Vec::len),
        Some(2),
        "{listed}"
    );

    // No credentials, or a made-up cookie: 401.
    let anonymous = h
        .admin
        .get(format!("{}/admin/v1/users", h.admin_url))
        .send()
        .await?;
    assert_eq!(anonymous.status().as_u16(), 401);
    let forged = Session {
        cookie: "switchyard_session=made-up".into(),
        csrf: "x".into(),
    };
    assert_eq!(
        call(&h, &forged, true, Method::GET, "/admin/v1/users", None)
            .await?
            .0,
        401
    );

    // The operator: reads, and changes with the CSRF token only.
    let ops = logged_in(&h, "ops", OPS_PASSWORD).await?;
    let (status, me) = call(&h, &ops, false, Method::GET, "/admin/v1/session", None).await?;
    assert_eq!(
        (status, me["name"].as_str(), me["role"].as_str()),
        (200, Some("ops"), Some("operator"))
    );
    assert_eq!(me["csrf_token"].as_str(), Some(ops.csrf.as_str()));
    let new_user = json!({"display_name": "Carol", "uris": ["tel:+16502530031"]});
    let (status, body) = call(
        &h,
        &ops,
        false,
        Method::POST,
        "/admin/v1/users",
        Some(new_user.clone()),
    )
    .await?;
    assert_eq!((status, body["error"].as_str()), (403, Some("csrf")));
    assert_eq!(user_count(&h).await?, 0);
    let (status, body) = call(
        &h,
        &ops,
        true,
        Method::POST,
        "/admin/v1/users",
        Some(new_user),
    )
    .await?;
    assert_eq!(status, 200, "{body}");
    let carol = body["id"].as_str().expect("id").to_string();
    assert_eq!(user_count(&h).await?, 1);

    // The viewer: reads everything, changes nothing, whatever it presents.
    let watcher = logged_in(&h, "watcher", VIEWER_PASSWORD).await?;
    let (status, users) = call(&h, &watcher, false, Method::GET, "/admin/v1/users", None).await?;
    assert_eq!((status, users["total"].as_u64()), (200, Some(1)));
    for (method, path, body) in [
        (
            Method::POST,
            "/admin/v1/users".to_string(),
            Some(json!({"display_name": "Eve", "uris": ["tel:+16502530032"]})),
        ),
        (Method::DELETE, format!("/admin/v1/users/{carol}"), None),
        (
            Method::POST,
            "/admin/v1/operators".to_string(),
            Some(json!({"name": "eve", "role": "operator", "password": "eve's password 1"})),
        ),
        (
            Method::POST,
            "/admin/v1/federation/resync".to_string(),
            None,
        ),
    ] {
        let (status, answer) = call(&h, &watcher, true, method.clone(), &path, body).await?;
        assert_eq!(
            (status, answer["error"].as_str()),
            (403, Some("read-only")),
            "{method} {path}"
        );
    }
    assert_eq!(user_count(&h).await?, 1);
    let (_, listed) = h
        .admin_call(Method::GET, "/admin/v1/operators", None)
        .await?;
    assert_eq!(listed["operators"].as_array().map(Vec::len), Some(2));

    // Logging out ends the session in the database, not only in the browser.
    let (status, _) = call(
        &h,
        &watcher,
        true,
        Method::DELETE,
        "/admin/v1/session",
        None,
    )
    .await?;
    assert_eq!(status, 204);
    assert_eq!(
        call(&h, &watcher, false, Method::GET, "/admin/v1/users", None)
            .await?
            .0,
        401
    );

    // Removing an operator ends its sessions.
    let (status, _) = h
        .admin_call(Method::DELETE, "/admin/v1/operators/ops", None)
        .await?;
    assert_eq!(status, 200);
    assert_eq!(
        call(&h, &ops, false, Method::GET, "/admin/v1/users", None)
            .await?
            .0,
        401
    );

    // Who changed what, newest first; reads are not recorded.
    let (_, audit) = h
        .admin_call(Method::GET, "/admin/v1/audit?limit=1000", None)
        .await?;
    let entries: Vec<(String, String, String, u64)> = audit["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap_or("").to_string(),
                e["method"].as_str().unwrap_or("").to_string(),
                e["path"].as_str().unwrap_or("").to_string(),
                e["status"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let has = |actor: &str, method: &str, path: &str, status: u64| {
        entries.contains(&(actor.into(), method.into(), path.into(), status))
    };
    assert!(
        has("token", "POST", "/admin/v1/operators", 201),
        "{entries:?}"
    );
    assert!(has("ops", "POST", "/admin/v1/session", 200), "{entries:?}");
    assert!(has("ops", "POST", "/admin/v1/users", 403), "{entries:?}");
    assert!(has("ops", "POST", "/admin/v1/users", 200), "{entries:?}");
    assert!(
        has(
            "watcher",
            "DELETE",
            &format!("/admin/v1/users/{carol}"),
            403
        ),
        "{entries:?}"
    );
    assert!(
        has("watcher", "DELETE", "/admin/v1/session", 204),
        "{entries:?}"
    );
    assert!(
        has("token", "DELETE", "/admin/v1/operators/ops", 200),
        "{entries:?}"
    );
    assert!(!entries.iter().any(|e| e.1 == "GET"), "{entries:?}");
    let times: Vec<i64> = audit["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["at"].as_i64().expect("at"))
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {times:?}"
    );

    // Paging two at a time walks the same entries.
    let mut paged = Vec::new();
    let mut path = "/admin/v1/audit?limit=2".to_string();
    loop {
        let (_, page) = h.admin_call(Method::GET, &path, None).await?;
        paged.extend(page["entries"].as_array().expect("entries").iter().cloned());
        let Some(next) = page["next"].as_object() else {
            break;
        };
        path = format!(
            "/admin/v1/audit?limit=2&before={}&before_id={}",
            next["before"],
            next["before_id"].as_str().expect("id")
        );
    }
    assert_eq!(&paged, audit["entries"].as_array().expect("entries"));
    h.provider.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn failed_logins_are_limited_and_give_nothing_away() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let (status, _) = h
        .admin_call(
            Method::POST,
            "/admin/v1/operators",
            Some(json!({"name": "ops", "role": "operator", "password": OPS_PASSWORD})),
        )
        .await?;
    assert_eq!(status, 201);
    // A wrong password and an unknown name look the same.
    let (status, wrong_password, cookie) = login(&h, "ops", "not the password").await?;
    assert_eq!((status, cookie), (401, None));
    let (status, unknown_name, _) = login(&h, "nobody", "not the password").await?;
    assert_eq!(status, 401);
    assert_eq!(wrong_password, unknown_name);
    for _ in 1..5 {
        assert_eq!(login(&h, "ops", "not the password").await?.0, 401);
    }
    // Five failures: even the right password waits now.
    let response = h
        .admin
        .post(format!("{}/admin/v1/session", h.admin_url))
        .json(&json!({"name": "ops", "password": OPS_PASSWORD}))
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 429);
    let retry: u64 = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!((1..=900).contains(&retry), "{retry}");
    // Another operator name is not held up by it.
    assert_eq!(login(&h, "someone", "not the password").await?.0, 401);
    h.provider.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn the_call_history_filters_by_state_and_party() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    for query in [
        "state=ended",
        "party=bob%40example",
        "state=answered&party=%25_",
        "state=",
    ] {
        let (status, body) = h
            .admin_call(Method::GET, &format!("/admin/v1/calls?{query}"), None)
            .await?;
        assert_eq!(status, 200, "{query}: {body}");
        assert_eq!(body["calls"].as_array().map(Vec::len), Some(0), "{query}");
    }
    let (status, body) = h
        .admin_call(Method::GET, "/admin/v1/calls?state=lost", None)
        .await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid-field"))
    );
    let response = h
        .admin
        .get(format!("{}/admin/v1/calls.csv?state=ended", h.admin_url))
        .bearer_auth(h.token())
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response.text().await?,
        "session_id,from,to,caller_endpoint,answered_by,media,state,outcome_reason,providers,initiated_at,answered_at,ended_at\r\n"
    );
    h.provider.shutdown().await;
    Ok(())
}
