//! The admin API's OpenAPI document (`GET /admin/api/openapi.json`): valid OpenAPI (checked by
//! `admin-ui/tests/validate-openapi.mjs`, which `scripts/test.sh` installs with npm), every
//! operation it lists is served, and it lists exactly the admin routes `docs/protocol.md`
//! documents.

use std::collections::BTreeSet;
use std::path::PathBuf;

use reqwest::Method;
use switchyard_tests::Harness;

fn repository(path: &str) -> PathBuf {
    switchyard_tests::manifest_dir().join("..").join(path)
}

/// `METHOD /path` of every admin-listener route docs/protocol.md names in backquotes.
fn documented_routes() -> anyhow::Result<BTreeSet<String>> {
    let text = std::fs::read_to_string(repository("docs/protocol.md"))?;
    let mut routes = BTreeSet::new();
    for quoted in text.split('`').skip(1).step_by(2) {
        let Some((method, path)) = quoted.split_once(' ') else {
            continue;
        };
        // The API's routes; the web pages under /admin/ are not part of it.
        let admin_listener = path.starts_with("/admin/v1/")
            || path.starts_with("/admin/api/")
            || ["/healthz", "/readyz", "/metrics"].contains(&path);
        if ["GET", "POST", "DELETE", "PUT", "PATCH"].contains(&method) && admin_listener {
            routes.insert(format!("{method} {path}"));
        }
    }
    Ok(routes)
}

#[tokio::test]
async fn the_openapi_document_is_valid_served_and_matches_the_documented_routes(
) -> anyhow::Result<()> {
    let h = Harness::start().await?;
    // Served without credentials: it describes the API, it holds no secret.
    let response = h
        .admin
        .get(format!("{}/admin/api/openapi.json", h.admin_url))
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 200);
    let text = response.text().await?;
    let document: serde_json::Value = serde_json::from_str(&text)?;

    let file = h.dir.path().join("openapi.json");
    std::fs::write(&file, &text)?;
    let validation = std::process::Command::new("node")
        .arg(repository("admin-ui/tests/validate-openapi.mjs"))
        .arg(&file)
        .output()
        .map_err(|e| anyhow::anyhow!("running node (scripts/test.sh installs it): {e}"))?;
    assert!(
        validation.status.success(),
        "the OpenAPI document does not validate: {}{}",
        String::from_utf8_lossy(&validation.stdout),
        String::from_utf8_lossy(&validation.stderr)
    );

    let mut operations = BTreeSet::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("a path item").keys() {
            operations.insert(format!("{} {path}", method.to_uppercase()));
        }
    }
    let documented = documented_routes()?;
    assert_eq!(
        operations,
        documented,
        "in the OpenAPI document only: {:?}; in docs/protocol.md only: {:?}",
        operations.difference(&documented).collect::<Vec<_>>(),
        documented.difference(&operations).collect::<Vec<_>>()
    );

    // Every operation is routed: a request reaches its handler, which answers (an error about
    // the made-up ids and empty bodies, in JSON), where an unknown route gets axum's bare 404.
    let probe = |method: Method, path: String| {
        let request = h
            .admin
            .request(method, format!("{}{path}", h.admin_url))
            .bearer_auth(h.token());
        async move {
            let response = request.send().await?;
            let status = response.status().as_u16();
            // An event stream does not end: its first bytes show it is served.
            let streaming = response
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .is_some_and(|t| t.as_bytes().starts_with(b"text/event-stream"));
            let body = if streaming {
                "event stream".to_string()
            } else {
                response.text().await?
            };
            anyhow::Ok((status, body))
        }
    };
    let (status, body) = probe(Method::GET, "/admin/v1/no-such-route".into()).await?;
    assert_eq!((status, body.as_str()), (404, ""), "unrouted");
    for operation in &operations {
        let (method, path) = operation.split_once(' ').expect("METHOD path");
        let path = path
            .replace("{id}", "no-such-id")
            .replace("{name}", "no-such-operator")
            .replace("{uri}", "mailto%3Anobody%40example.com")
            .replace("{aor}", "sip%3Anobody%40example.com");
        let (status, body) = probe(method.parse()?, path.clone()).await?;
        assert_ne!(status, 405, "{operation}: method not routed");
        assert!(
            !(status == 404 && body.is_empty()),
            "{operation}: path not routed"
        );
    }
    h.provider.shutdown().await;
    Ok(())
}
