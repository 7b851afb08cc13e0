//! The `switchyard` binary itself: configuration checking, and durability across `kill -9`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn switchyard() -> Command {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
}

#[test]
fn config_check_reports_every_error_with_its_key_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "provider_id = \"ok.example\"\nlistn = 1\n[database]\nmax_connections = \"many\"\n[invitation]\nring_timeout_seconds = -1\n",
    )
    .unwrap();
    let output = switchyard()
        .args(["config", "check"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    for key in [
        "listn",
        "database.max_connections",
        "invitation.ring_timeout_seconds",
    ] {
        assert!(stderr.contains(key), "missing {key} in: {stderr}");
    }

    let good = dir.path().join("good.toml");
    std::fs::write(&good, "provider_id = \"ok.example\"\n").unwrap();
    let output = switchyard()
        .args(["config", "check"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Environment overrides are checked too.
    let output = switchyard()
        .args(["config", "check"])
        .arg(&good)
        .env("SWITCHYARD_PUSH__TTL_SECONDS", "never")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("push.ttl_seconds"));
}

#[test]
fn config_defaults_pass_the_check() {
    let dir = tempfile::tempdir().unwrap();
    let defaults = switchyard().args(["config", "defaults"]).output().unwrap();
    assert!(defaults.status.success());
    let file = dir.path().join("defaults.toml");
    std::fs::write(&file, &defaults.stdout).unwrap();
    let output = switchyard()
        .args(["config", "check"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_ready(admin: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(mut stream) = std::net::TcpStream::connect(admin) {
            use std::io::{Read, Write};
            let _ = write!(stream, "GET /readyz HTTP/1.0\r\n\r\n");
            let mut answer = String::new();
            let _ = stream.read_to_string(&mut answer);
            if answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200") {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("provider did not become ready");
}

fn admin_request(admin: &str, token: &str, method: &str, path: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(admin).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

#[test]
fn acknowledged_writes_survive_kill_dash_nine() {
    let dir = tempfile::tempdir().unwrap();
    let admin = format!("127.0.0.1:{}", free_port());
    let config = dir.path().join("switchyard.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\nprovider_id = \"durable.example\"\n[endpoint_api]\nlisten = \"127.0.0.1:{}\"\n[admin]\nlisten = \"{admin}\"\n",
            dir.path().join("data"),
            free_port()
        ),
    )
    .unwrap();
    let start = || {
        switchyard()
            .args(["serve", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut daemon = start();
    wait_ready(&admin);
    let token = std::fs::read_to_string(dir.path().join("data/admin-token")).unwrap();
    let token = token.trim();
    let mut created = Vec::new();
    for i in 0..20 {
        let answer = admin_request(
            &admin,
            token,
            "POST",
            "/admin/v1/users",
            &format!("{{\"display_name\": \"u{i}\", \"uris\": [\"mailto:u{i}@example.com\"]}}"),
        );
        assert!(answer.contains(" 200 "), "{answer}");
        created.push(i);
    }
    // SIGKILL: no chance to flush anything that was not already durable.
    daemon.kill().unwrap();
    daemon.wait().unwrap();

    let mut daemon = start();
    wait_ready(&admin);
    let answer = admin_request(&admin, token, "GET", "/admin/v1/users?limit=1000", "");
    for i in created {
        assert!(
            answer.contains(&format!("mailto:u{i}@example.com")),
            "user {i} lost: {answer}"
        );
    }
    daemon.kill().unwrap();
    daemon.wait().unwrap();
}
