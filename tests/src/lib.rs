//! A harness for the cross-crate tests: a real provider on loopback (port 0) with its own
//! database — SQLite in a temporary folder, or a fresh PostgreSQL database when
//! `SYTEST_DATABASE=postgres` (URL of the server in `SYTEST_POSTGRES_URL`).

use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};
use switchyard_endpoint::client::{self, EndpointClient, PushChannel, PushMode};
use switchyard_protocol::capabilities::Capabilities;
use switchyard_protocol::dict::{Dict, Encoding};
use switchyard_provider::{Config, Provider};

pub mod federation;
pub mod netns;
pub mod sip;

/// The candidate kinds of the path `call` selects first.
pub async fn first_path(
    call: &mut switchyard_media::session::MediaCall,
) -> (
    switchyard_media::blob::CandidateKind,
    switchyard_media::blob::CandidateKind,
) {
    use switchyard_media::session::MediaEvent;
    match wait_for(call, "a path", |e| {
        matches!(e, MediaEvent::PathSelected { .. })
    })
    .await
    {
        MediaEvent::PathSelected { local, remote, .. } => (local, remote),
        _ => unreachable!("wait_for returns a matching event"),
    }
}

/// Two seconds' worth of a negotiated call: each side receives at least 70 audio and 20 video
/// packets, within 10 s (a loaded machine, or a long-poll relay, delivers in bursts), refusing no
/// SRTP and dropping nothing from an unvalidated address.
pub async fn assert_two_seconds_of_media(
    caller: &switchyard_media::session::MediaCall,
    callee: &switchyard_media::session::MediaCall,
    context: &str,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (name, call) in [("caller", caller), ("callee", callee)] {
        let enough = |s: &switchyard_media::session::CallStats| {
            s.audio.packets_received >= 70 && s.video.packets_received >= 20
        };
        while !enough(&call.stats()) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let stats = call.stats();
        assert!(enough(&stats), "{name} ({context}): {stats:?}");
        assert_eq!(stats.srtp_failures, 0, "{name} ({context}): {stats:?}");
        assert_eq!(
            stats.dropped_unvalidated, 0,
            "{name} ({context}): {stats:?}"
        );
    }
}

/// The next media event that `matches`, within 15 s; panics naming `what` if the call fails,
/// ends or stays silent first.
pub async fn wait_for(
    call: &mut switchyard_media::session::MediaCall,
    what: &str,
    matches: impl Fn(&switchyard_media::session::MediaEvent) -> bool,
) -> switchyard_media::session::MediaEvent {
    use switchyard_media::session::MediaEvent;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match tokio::time::timeout(left, call.next_event()).await {
            Ok(Some(event)) if matches(&event) => return event,
            Ok(Some(MediaEvent::Failed(why))) => panic!("call failed waiting for {what}: {why}"),
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the call ended waiting for {what}"),
            Err(_) => panic!("no {what} within 15 s"),
        }
    }
}

pub const WAIT: Duration = Duration::from_secs(10);

pub struct Harness {
    pub provider: Provider,
    pub dir: tempfile::TempDir,
    pub admin: reqwest::Client,
    pub admin_url: String,
    pub provider_url: String,
}

/// The database the test run targets: `sqlite` (default) or `postgres`.
pub fn database_kind() -> String {
    std::env::var("SYTEST_DATABASE").unwrap_or_else(|_| "sqlite".into())
}

async fn fresh_database_url(dir: &std::path::Path) -> anyhow::Result<String> {
    match database_kind().as_str() {
        "sqlite" => Ok(format!("sqlite:{}", dir.join("switchyard.db").display())),
        "postgres" => {
            let server = std::env::var("SYTEST_POSTGRES_URL")
                .context("SYTEST_DATABASE=postgres needs SYTEST_POSTGRES_URL")?;
            sqlx::any::install_default_drivers();
            let name = format!("sy_{}", uuid::Uuid::new_v4().simple());
            let mut conn =
                <sqlx::AnyConnection as sqlx::Connection>::connect(&format!("{server}/postgres"))
                    .await?;
            sqlx::Executor::execute(
                &mut conn,
                sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")),
            )
            .await?;
            Ok(format!("{server}/{name}"))
        }
        other => bail!("SYTEST_DATABASE is `{other}`; expected sqlite or postgres"),
    }
}

/// Runs the SIP edge on UDP, TCP and TLS, each on a loopback port of its own.
pub fn enable_sip_on_loopback(config: &mut switchyard_provider::Config) -> anyhow::Result<()> {
    config.sip.enabled = true;
    config.sip.udp_listen = "127.0.0.1:0".parse()?;
    config.sip.tcp_listen = "127.0.0.1:0".parse()?;
    config.sip.tls_listen = "127.0.0.1:0".parse()?;
    config.sip.transports = vec![
        switchyard_provider::config::SipTransport::Udp,
        switchyard_provider::config::SipTransport::Tcp,
        switchyard_provider::config::SipTransport::Tls,
    ];
    Ok(())
}

/// A configuration for a test provider on loopback with its own database.
pub async fn test_config() -> anyhow::Result<(Config, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let mut config = Config {
        data_dir: dir.path().to_path_buf(),
        provider_id: "test.switchyard.invalid".into(),
        ..Config::default()
    };
    config.endpoint_api.listen = "127.0.0.1:0".parse()?;
    config.admin.listen = "127.0.0.1:0".parse()?;
    config.database.url = Some(fresh_database_url(dir.path()).await?);
    config.invitation.sweep_interval_ms = 100;
    config.push.recheck_interval_ms = 200;
    Ok((config, dir))
}

impl Harness {
    pub async fn start() -> anyhow::Result<Harness> {
        let (config, dir) = test_config().await?;
        Harness::start_with(config, dir).await
    }

    /// A provider whose endpoint API lets each client send `per_second` requests a second,
    /// with bursts of `burst` (every client of a test is 127.0.0.1).
    pub async fn start_with_endpoint_rate(per_second: u32, burst: u32) -> anyhow::Result<Harness> {
        let (mut config, dir) = test_config().await?;
        config.endpoint_api.limits.requests_per_second_per_client = per_second;
        config.endpoint_api.limits.request_burst_per_client = burst;
        Harness::start_with(config, dir).await
    }

    pub async fn start_with(config: Config, dir: tempfile::TempDir) -> anyhow::Result<Harness> {
        let provider = Provider::start(config).await?;
        let admin_url = format!("http://{}", provider.admin_addr);
        let provider_url = format!("https://{}", provider.endpoint_addr);
        Ok(Harness {
            provider,
            dir,
            admin: reqwest::Client::new(),
            admin_url,
            provider_url,
        })
    }

    pub fn token(&self) -> &str {
        &self.provider.app.admin_token
    }

    /// The provider's Prometheus metrics, as its admin listener serves them.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        Ok(self
            .admin
            .get(format!("{}/metrics", self.admin_url))
            .send()
            .await?
            .text()
            .await?)
    }

    /// Calls the admin API; returns (status, JSON body).
    pub async fn admin_call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut request = self
            .admin
            .request(method, format!("{}{path}", self.admin_url))
            .bearer_auth(self.token());
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, value))
    }

    pub async fn add_user(&self, name: &str, uris: &[&str]) -> anyhow::Result<String> {
        let (status, body) = self
            .admin_call(
                reqwest::Method::POST,
                "/admin/v1/users",
                Some(json!({"display_name": name, "uris": uris})),
            )
            .await?;
        anyhow::ensure!(status == 200, "adding user: {status} {body}");
        Ok(body["id"].as_str().expect("id").to_string())
    }

    pub async fn code(&self, user_id: &str) -> anyhow::Result<String> {
        let (status, body) = self
            .admin_call(
                reqwest::Method::POST,
                &format!("/admin/v1/users/{user_id}/provisioning-codes"),
                None,
            )
            .await?;
        anyhow::ensure!(status == 200, "code: {status} {body}");
        Ok(body["code"].as_str().expect("code").to_string())
    }

    pub fn ca_pem(&self) -> &str {
        self.provider.app.ca.cert_pem()
    }

    /// Registers a new endpoint for the user owning `uri`.
    pub async fn endpoint(
        &self,
        user_id: &str,
        uri: &str,
        capabilities: Option<Capabilities>,
        encoding: Encoding,
    ) -> anyhow::Result<EndpointClient> {
        let code = self.code(user_id).await?;
        let identity = client::register(
            &self.provider_url,
            self.ca_pem(),
            uri,
            &code,
            "test-device",
            capabilities,
            encoding,
        )
        .await?;
        Ok(EndpointClient::new(identity, encoding)?)
    }

    pub async fn calls(&self) -> anyhow::Result<Vec<Value>> {
        let (status, body) = self
            .admin_call(reqwest::Method::GET, "/admin/v1/calls", None)
            .await?;
        anyhow::ensure!(status == 200, "calls: {status}");
        Ok(body["calls"].as_array().cloned().unwrap_or_default())
    }

    pub async fn call_record(&self, session_id: &str) -> anyhow::Result<Value> {
        self.calls()
            .await?
            .into_iter()
            .find(|c| c["session_id"] == session_id)
            .with_context(|| format!("no call record for {session_id}"))
    }
}

/// Waits for the next push of `action` on `channel`, failing after `WAIT`.
pub async fn expect_push(channel: &mut PushChannel, action: &str) -> anyhow::Result<Dict> {
    match channel.next_action(action, WAIT).await? {
        Some(push) => Ok(push),
        None => bail!("no `{action}` push within {WAIT:?}"),
    }
}

/// Asserts nothing arrives on `channel` for a short while.
pub async fn expect_silence(channel: &mut PushChannel) -> anyhow::Result<()> {
    if let Some(push) = channel.next(Duration::from_millis(600)).await? {
        bail!("unexpected push: {push:?}");
    }
    Ok(())
}

pub fn session_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

pub const MODES: [PushMode; 2] = [PushMode::WebSocket, PushMode::LongPoll];

/// The tests crate's directory, found at run time rather than compile time: a build cache
/// shared by checkouts at other paths may hand a test binary over from one of them, and a path
/// compiled in would then name the other checkout.
pub fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .expect("run by cargo")
        .into()
}

/// A bench binary's own arguments: `cargo bench` adds `--bench` (and may add other flags) to
/// what follows its `--`, which the benches here do not take.
pub fn bench_arguments() -> Vec<String> {
    std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect()
}
