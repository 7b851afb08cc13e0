//! The `switchyard` binary itself: configuration checking, and durability across `kill -9`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn switchyard() -> Command {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
}

/// Runs the command and insists it succeeds, showing its stderr otherwise.
fn succeed(command: &mut Command) -> std::process::Output {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
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
    succeed(switchyard().args(["config", "check"]).arg(&good));
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
    succeed(switchyard().args(["config", "check"]).arg(&file));
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

/// A `switchyard serve` on loopback with its data in `dir/data`; returns the config path, the
/// admin address and the endpoint API port.
fn write_config(dir: &std::path::Path) -> (std::path::PathBuf, String, u16) {
    let admin = format!("127.0.0.1:{}", free_port());
    let endpoint_port = free_port();
    let config = dir.join("switchyard.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\nprovider_id = \"cli.example\"\n[endpoint_api]\nlisten = \"127.0.0.1:{endpoint_port}\"\n[admin]\nlisten = \"{admin}\"\n",
            dir.join("data"),
        ),
    )
    .unwrap();
    (config, admin, endpoint_port)
}

fn serve(config: &std::path::Path, admin: &str) -> std::process::Child {
    let daemon = switchyard()
        .args(["serve", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_ready(admin);
    daemon
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
    let (config, admin, _) = write_config(dir.path());
    let start = || serve(&config, &admin);
    let mut daemon = start();
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

/// Running a provider (README, "Running a provider") with the binary: users added and codes
/// issued with the admin CLI, `endpoint register`, `endpoint answer --auto-accept --once`,
/// `endpoint call --hangup-after`, then `--auto-reject busy`, all on one provider.
#[test]
fn endpoint_commands_place_answer_and_reject_calls() {
    let dir = tempfile::tempdir().unwrap();
    let (config, admin, endpoint_port) = write_config(dir.path());
    let mut daemon = serve(&config, &admin);
    let token_file = dir.path().join("data/admin-token");
    let admin_url = format!("http://{admin}");
    let admin_cli = |args: &[&str]| {
        let output = succeed(
            switchyard()
                .args(args)
                .args(["--admin-url", &admin_url, "--admin-token-file"])
                .arg(&token_file),
        );
        serde_json::from_slice::<serde_json::Value>(&output.stdout).unwrap()
    };
    let register = |uri: &str, name: &str| {
        let user = admin_cli(&["users", "add", "--uri", uri, "--name", name]);
        let code = admin_cli(&["users", "code", user["id"].as_str().unwrap()]);
        let state = dir.path().join(name);
        succeed(
            switchyard()
                .args([
                    "endpoint",
                    "register",
                    "--provider",
                    &format!("https://127.0.0.1:{endpoint_port}"),
                ])
                .arg("--ca")
                .arg(dir.path().join("data/endpoint-ca.pem"))
                .args(["--uri", uri])
                // `=`: a code may start with `-`.
                .arg(format!("--code={}", code["code"].as_str().unwrap()))
                .arg("--state")
                .arg(&state),
        );
        state
    };
    let alice = register("tel:+16502530000", "alice");
    let bob = register("mailto:bob@example.com", "bob");

    let answer = |mode: &[&str]| {
        let child = switchyard()
            .args([
                "endpoint",
                "answer",
                "--once",
                "--push",
                "long-poll",
                "--state",
            ])
            .arg(&bob)
            .args(mode)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(500));
        child
    };
    let call = || {
        switchyard()
            .args([
                "endpoint",
                "call",
                "mailto:bob@EXAMPLE.com",
                "--hangup-after",
                "1",
                "--state",
            ])
            .arg(&alice)
            .output()
            .unwrap()
    };

    let answerer = answer(&["--auto-accept"]);
    let caller = call();
    let stdout = String::from_utf8_lossy(&caller.stdout);
    assert!(
        caller.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&caller.stderr)
    );
    assert!(
        stdout.contains("answered by mailto:bob@example.com"),
        "{stdout}"
    );
    assert!(stdout.contains("hung up"), "{stdout}");
    let answered = answerer.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&answered.stdout);
    assert!(answered.status.success(), "{stdout}");
    assert!(
        stdout.contains("incoming call from tel:+16502530000"),
        "{stdout}"
    );
    assert!(stdout.contains("ended: ended"), "{stdout}");

    let answerer = answer(&["--auto-reject", "busy"]);
    let caller = call();
    assert_eq!(caller.status.code(), Some(3), "a rejected call exits 3");
    assert!(String::from_utf8_lossy(&caller.stdout).contains("rejected: busy"));
    assert!(answerer.wait_with_output().unwrap().status.success());

    daemon.kill().unwrap();
    daemon.wait().unwrap();
}

/// Stops a spawned process when dropped (a failed assertion must not leave a demo running):
/// SIGTERM, so that it cleans up, then SIGKILL if it is still running after 10 s.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = Command::new("kill").arg(self.0.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.0.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `command` with stdout and stderr going to `dir/name.out` and `dir/name.err`.
fn spawn_logged(command: &mut Command, dir: &std::path::Path, name: &str) -> Running {
    let out = std::fs::File::create(dir.join(format!("{name}.out"))).unwrap();
    let err = std::fs::File::create(dir.join(format!("{name}.err"))).unwrap();
    Running(command.stdout(out).stderr(err).spawn().unwrap())
}

fn logged(dir: &std::path::Path, name: &str, stream: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{name}.{stream}"))).unwrap_or_default()
}

/// Waits until `dir/name.out` contains `text`, or the process ends (then panics).
fn wait_for_output(running: &mut Running, dir: &std::path::Path, name: &str, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if logged(dir, name, "out").contains(text) {
            return;
        }
        if let Some(status) = running.0.try_wait().unwrap() {
            panic!(
                "{name} ended ({status}) before printing {text:?}:\n{}\n{}",
                logged(dir, name, "out"),
                logged(dir, name, "err")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "{name} did not print {text:?}:\n{}\n{}",
        logged(dir, name, "out"),
        logged(dir, name, "err")
    );
}

/// Waits (up to a minute) for the process to end; returns its status, stdout and stderr.
fn finish(
    mut running: Running,
    dir: &std::path::Path,
    name: &str,
) -> (std::process::ExitStatus, String, String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = running.0.try_wait().unwrap() {
            return (status, logged(dir, name, "out"), logged(dir, name, "err"));
        }
        assert!(
            Instant::now() < deadline,
            "{name} did not end:\n{}\n{}",
            logged(dir, name, "out"),
            logged(dir, name, "err")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The command the demo printed on the line starting `switchyard {start}` and ending `end`,
/// as arguments for the binary.
fn printed_command(printed: &str, start: &str, end: &str) -> Vec<String> {
    let line = printed
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(&format!("switchyard {start}")) && l.ends_with(end))
        .unwrap_or_else(|| panic!("no `switchyard {start} … {end}` in:\n{printed}"));
    line.split_whitespace().skip(1).map(String::from).collect()
}

/// The value after `label :` on the demo's `n`th line with that label, up to the next space.
fn printed_value(printed: &str, label: &str, n: usize) -> String {
    let line = printed
        .lines()
        .filter_map(|l| l.trim().strip_prefix(label))
        .filter_map(|rest| rest.trim_start().strip_prefix(':'))
        .nth(n)
        .unwrap_or_else(|| panic!("no {label} #{n} in:\n{printed}"));
    line.split_whitespace().next().unwrap().to_string()
}

/// The README walkthrough with the binary: `switchyard demo` (a directory and providers A, B and
/// C on loopback), the printed `endpoint register` commands for Alice at A and Bob at B, the
/// printed `endpoint answer --auto-accept` for Bob (with `--once`) and `endpoint call` for Alice
/// (with `--hangup-after`): a call from provider A to provider B, answered and hung up. Then
/// `--auto-reject busy` with another spelling of Bob's URI, step 5's admin API and metrics, and
/// a clean stop on SIGTERM that removes the temporary directory.
#[test]
fn demo_walkthrough_calls_across_providers() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path();
    let mut demo = spawn_logged(
        switchyard().args([
            "demo",
            "--endpoint-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--federation-listen",
            "127.0.0.1:0",
            "--directory-listen",
            "127.0.0.1:0",
        ]),
        logs,
        "demo",
    );
    wait_for_output(&mut demo, logs, "demo", "Press Ctrl-C to stop");
    let printed = logged(logs, "demo", "out");
    let temporary = printed_value(&printed, "temporary directory", 0);
    assert!(std::path::Path::new(&temporary).is_dir(), "{printed}");
    for provider in ["Provider A", "Provider B", "Provider C"] {
        assert!(printed.contains(provider), "{printed}");
    }

    // Step 2: one device each for Alice (at A) and Bob (at B), with the printed commands.
    for device in ["/alice-1", "/bob-1"] {
        let register = printed_command(&printed, "endpoint register", device);
        let output = succeed(switchyard().args(&register));
        assert!(
            String::from_utf8_lossy(&output.stdout).contains("registered endpoint"),
            "{output:?}"
        );
    }

    // Steps 3 and 4: Bob answers at B, Alice calls him from A.
    // The printed command ends with `--auto-accept`: `mode` replaces it.
    let answer = |mode: &[&str], name: &str| {
        let mut args = printed_command(&printed, "endpoint answer", "--auto-accept");
        args.pop();
        args.extend(mode.iter().map(|a| a.to_string()));
        let mut answerer = spawn_logged(switchyard().args(&args).arg("--once"), logs, name);
        wait_for_output(&mut answerer, logs, name, "waiting for calls");
        answerer
    };
    let call = printed_command(&printed, "endpoint call", "/alice-1");
    assert_eq!(call[2], "mailto:bob@demo.example", "{call:?}");

    let answerer = answer(&["--auto-accept"], "answer-1");
    // An audio/video call: media end to end, video muted after a second and unmuted after two.
    let caller = spawn_logged(
        switchyard().args(&call).args([
            "--video",
            "--mute-video-after",
            "1",
            "--hangup-after",
            "4",
        ]),
        logs,
        "call-1",
    );
    let (status, stdout, stderr) = finish(caller, logs, "call-1");
    assert!(status.success(), "{stdout} {stderr}");
    assert!(
        stdout.contains("answered by mailto:bob@demo.example"),
        "{stdout}"
    );
    assert!(stdout.contains("media path: host -> host"), "{stdout}");
    assert!(
        stdout.contains("media secured end to end: SRTP_AEAD_AES_128_GCM"),
        "{stdout}"
    );
    assert!(
        stdout.contains("media negotiated: audio opus, video VP8"),
        "{stdout}"
    );
    assert!(
        stdout.contains("muted video") && stdout.contains("unmuted video"),
        "{stdout}"
    );
    assert!(stdout.contains("hung up"), "{stdout}");
    let final_stats = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with("stats: "))
        .unwrap_or_else(|| panic!("no statistics: {stdout}"));
    let received = |kind: &str| -> u64 {
        let rest = final_stats.split(&format!("{kind} sent ")).nth(1).unwrap();
        rest.split(" received ")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(received("audio") >= 75, "{final_stats}");
    assert!(received("video") >= 10, "{final_stats}");
    assert!(final_stats.ends_with("srtp failures 0"), "{final_stats}");
    let (status, stdout, stderr) = finish(answerer, logs, "answer-1");
    assert!(status.success(), "{stdout} {stderr}");
    assert!(
        stdout.contains("incoming call from tel:+16502530000"),
        "{stdout}"
    );
    assert!(
        stdout.contains("the other side muted its video"),
        "{stdout}"
    );
    assert!(
        stdout.contains("the other side unmuted its video"),
        "{stdout}"
    );
    assert!(
        stdout.contains("media: the other side hung up (SIP BYE)"),
        "{stdout}"
    );
    assert!(stdout.contains("ended: ended"), "{stdout}");

    // Bob on a network without UDP: his media goes through provider B's HTTP relay (long-polls).
    let mut answerer = answer(
        &["--auto-accept", "--http-relay", "long-poll"],
        "answer-http",
    );
    let caller = spawn_logged(
        switchyard().args(&call).args(["--hangup-after", "2"]),
        logs,
        "call-http",
    );
    // The answerer's own logs, should it fail before answering.
    wait_for_output(&mut answerer, logs, "answer-http", "accepted");
    let (status, stdout, stderr) = finish(caller, logs, "call-http");
    assert!(status.success(), "{stdout} {stderr}");
    assert!(stdout.contains("-> relay"), "{stdout}");
    assert!(stdout.contains("srtp failures 0"), "{stdout}");
    let (status, stdout, stderr) = finish(answerer, logs, "answer-http");
    assert!(status.success(), "{stdout} {stderr}");
    assert!(stdout.contains("media path: relay ->"), "{stdout}");
    let final_stats = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with("stats: "))
        .unwrap_or_else(|| panic!("no statistics: {stdout}"));
    assert!(
        !final_stats.starts_with("stats: audio sent 0 received 0"),
        "{final_stats}"
    );

    // Any spelling of Bob's URI reaches him; `--auto-reject busy` turns the call down.
    let answerer = answer(&["--auto-reject", "busy"], "answer-2");
    let mut rejected_call = call.clone();
    rejected_call[2] = "tel:+44 20 7946 0958".into();
    let caller = spawn_logged(switchyard().args(&rejected_call), logs, "call-2");
    let (status, stdout, _) = finish(caller, logs, "call-2");
    assert_eq!(status.code(), Some(3), "a rejected call exits 3: {stdout}");
    assert!(stdout.contains("rejected: busy"), "{stdout}");
    let (status, stdout, _) = finish(answerer, logs, "answer-2");
    assert!(status.success(), "{stdout}");
    assert!(stdout.contains("rejected (busy)"), "{stdout}");

    // Step 5: A's admin API (token as printed) and metrics.
    let admin_url = printed_value(&printed, "admin API", 0);
    let admin = admin_url.strip_prefix("http://").unwrap();
    let token = printed
        .lines()
        .find_map(|l| l.split("Bearer ").nth(1))
        .unwrap()
        .trim_end_matches(')')
        .to_string();
    let users = succeed(
        switchyard()
            .args(["users", "list"])
            .env("SWITCHYARD_ADMIN_URL", &admin_url)
            .env("SWITCHYARD_ADMIN_TOKEN", &token),
    );
    let users = String::from_utf8_lossy(&users.stdout);
    assert!(users.contains("tel:+16502530000"), "{users}");
    let body = |answer: String| -> serde_json::Value {
        assert!(answer.contains(" 200 "), "{answer}");
        serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap()
    };
    let calls = body(admin_request(admin, &token, "GET", "/admin/v1/calls", ""));
    let answered = calls["calls"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["to"] == "mailto:bob@demo.example")
        .unwrap_or_else(|| panic!("{calls}"));
    assert!(answered["answered_at"].is_i64(), "{answered}");
    assert!(
        answered["providers"]
            .as_array()
            .unwrap()
            .contains(&"b.demo.switchyard.test".into()),
        "{answered}"
    );
    let federation = body(admin_request(
        admin,
        &token,
        "GET",
        "/admin/v1/federation",
        "",
    ));
    let peers = federation["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 2, "{federation}");
    assert!(
        peers.iter().all(|p| p["generation"].is_u64()),
        "{federation}"
    );
    let metrics = admin_request(admin, "", "GET", "/metrics", "");
    assert!(metrics.contains("switchyard_calls_total"), "{metrics}");

    // Ctrl-C or SIGTERM stops everything cleanly and removes the temporary directory.
    Command::new("kill")
        .arg(demo.0.id().to_string())
        .status()
        .unwrap();
    let (status, stdout, stderr) = finish(demo, logs, "demo");
    assert!(status.success(), "SIGTERM is a clean stop: {stderr}");
    assert!(stdout.contains("stopping"), "{stdout}");
    assert!(!std::path::Path::new(&temporary).exists());
    // No problem logged, but for a peer's filter refused in the moment the providers install
    // the dictionary (possible on a loaded machine; the demo pulls every filter again).
    let problems: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("ERROR") || l.contains("WARN"))
        .filter(|l| !(l.contains("pulling the peer's filter failed") && l.contains("no-directory")))
        .collect();
    assert!(problems.is_empty(), "the demo logged problems:\n{stderr}");
}

#[test]
fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let (config, admin, _) = write_config(dir.path());
    let log = std::fs::File::create(dir.path().join("serve.log")).unwrap();
    let mut daemon = switchyard()
        .args(["serve", "--log-format", "json", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    wait_ready(&admin);
    // SIGTERM: the graceful path, which logs its own lines.
    Command::new("kill")
        .arg(daemon.id().to_string())
        .status()
        .unwrap();
    assert!(daemon.wait().unwrap().success(), "SIGTERM is a clean stop");
    let text = std::fs::read_to_string(dir.path().join("serve.log")).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let messages: Vec<&str> = lines
        .iter()
        .filter_map(|l| l["fields"]["message"].as_str())
        .collect();
    assert!(messages.contains(&"provider started"), "{messages:?}");
    assert!(messages.contains(&"provider stopped"), "{messages:?}");
}

#[test]
fn federation_ca_issue_sign_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    let ca_args = |cmd: &mut Command| {
        cmd.arg("--ca-cert")
            .arg(path("ca.pem"))
            .arg("--ca-key")
            .arg(path("ca.key"));
    };
    let mut init = switchyard();
    init.args(["ca", "init", "--name", "test"]);
    ca_args(&mut init);
    succeed(&mut init);
    // A second init must not overwrite the CA.
    let mut again = switchyard();
    again.args(["ca", "init"]);
    ca_args(&mut again);
    assert!(!again.output().unwrap().status.success());

    for id in ["a.example", "b.example"] {
        let mut issue = switchyard();
        issue.args([
            "ca",
            "issue-provider",
            "--provider-id",
            id,
            "--dns",
            id,
            "--cert-out",
        ]);
        issue
            .arg(path(&format!("{id}.pem")))
            .arg("--key-out")
            .arg(path(&format!("{id}.key")));
        ca_args(&mut issue);
        succeed(&mut issue);
    }
    let members = |b_cert: &str| {
        format!(
            "federation = \"test\"\nversion = 1\n\
             [[member]]\nprovider_id = \"a.example\"\ndisplay_name = \"A\"\nbase_uri = \"https://a.example:8443\"\ncertificate = \"a.example.pem\"\n\
             [[member]]\nprovider_id = \"b.example\"\ndisplay_name = \"B\"\nbase_uri = \"https://b.example:8443\"\nrelay_addresses = [\"b.example:3478\"]\ncertificate = \"{b_cert}\"\n"
        )
    };
    std::fs::write(path("members.toml"), members("b.example.pem")).unwrap();
    let mut sign = switchyard();
    sign.args(["federation", "sign", "--members"])
        .arg(path("members.toml"))
        .arg("--out")
        .arg(path("directory.plist"));
    ca_args(&mut sign);
    succeed(&mut sign);
    let verified = succeed(
        switchyard()
            .args(["federation", "verify", "--ca-cert"])
            .arg(path("ca.pem"))
            .arg(path("directory.plist")),
    );
    let listing = String::from_utf8_lossy(&verified.stdout);
    assert!(
        listing.contains("a.example") && listing.contains("b.example"),
        "{listing}"
    );

    // One changed byte in the signed document: refused.
    let mut bytes = std::fs::read(path("directory.plist")).unwrap();
    let text = String::from_utf8(bytes.clone()).unwrap();
    let at = text.find("<data>").unwrap() + 10;
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    std::fs::write(path("tampered.plist"), bytes).unwrap();
    let refused = switchyard()
        .args(["federation", "verify", "--ca-cert"])
        .arg(path("ca.pem"))
        .arg(path("tampered.plist"))
        .output()
        .unwrap();
    assert!(!refused.status.success());

    // A certificate listed under the wrong provider id is refused at signing.
    std::fs::write(path("members.toml"), members("a.example.pem")).unwrap();
    let mut wrong = switchyard();
    wrong
        .args(["federation", "sign", "--members"])
        .arg(path("members.toml"))
        .arg("--out")
        .arg(path("x.plist"));
    ca_args(&mut wrong);
    let output = wrong.output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("not of `b.example`"));
}

/// `systemctl reload` sends SIGHUP: the federation certificate is read again, and a broken one
/// is refused while the daemon keeps the one it has.
#[test]
fn sighup_reloads_the_federation_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    let (config, admin, _) = write_config(dir.path());
    let ca = |cmd: &mut Command| {
        cmd.arg("--ca-cert")
            .arg(path("ca.pem"))
            .arg("--ca-key")
            .arg(path("ca.key"));
    };
    let mut init = switchyard();
    init.args(["ca", "init"]);
    ca(&mut init);
    succeed(&mut init);
    let issue = |cert: &str, key: &str| {
        let mut issue = switchyard();
        issue.args([
            "ca",
            "issue-provider",
            "--provider-id",
            "cli.example",
            "--dns",
            "127.0.0.1",
            "--cert-out",
        ]);
        issue.arg(path(cert)).arg("--key-out").arg(path(key));
        ca(&mut issue);
        succeed(&mut issue);
    };
    issue("provider.pem", "provider.key");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "[federation]\nenabled = true\nlisten = \"127.0.0.1:{}\"\nca_cert = {:?}\ncert = {:?}\nkey = {:?}\n\
         bootstrap_uri = \"http://127.0.0.1:{}/federation/v1/directory\"\ncert_check_seconds = 3600\n",
        free_port(),
        path("ca.pem"),
        path("provider.pem"),
        path("provider.key"),
        free_port(),
    ));
    std::fs::write(&config, text).unwrap();
    let log = std::fs::File::create(path("serve.log")).unwrap();
    let mut daemon = switchyard()
        .args(["serve", "--log-format", "json", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    wait_ready(&admin);
    let token = std::fs::read_to_string(path("data/admin-token")).unwrap();
    let fingerprint = |admin: &str| {
        let answer = admin_request(admin, token.trim(), "GET", "/admin/v1/federation", "");
        let body = answer.split("\r\n\r\n").nth(1).unwrap().to_string();
        let value: serde_json::Value = serde_json::from_str(&body).unwrap();
        value["certificate"]["sha256"].as_str().unwrap().to_string()
    };
    let before = fingerprint(&admin);
    let hangup = |pid: u32| {
        Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap()
    };
    let wait_for = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = std::fs::read_to_string(path("serve.log")).unwrap();
            if log.matches(what).count() > 0 {
                return log;
            }
            assert!(Instant::now() < deadline, "no `{what}` in the log:\n{log}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };

    // A key that does not belong to the certificate: refused, the old identity stays.
    std::fs::rename(path("provider.key"), path("provider.key.good")).unwrap();
    issue("other.pem", "provider.key");
    assert!(hangup(daemon.id()).success());
    wait_for("keeping the previous one");
    assert_eq!(fingerprint(&admin), before);

    // A renewed certificate and its key: used from now on.
    std::fs::remove_file(path("provider.key")).unwrap();
    issue("renewed.pem", "provider.key");
    std::fs::rename(path("renewed.pem"), path("provider.pem")).unwrap();
    assert!(hangup(daemon.id()).success());
    wait_for("SIGHUP: federation certificate reloaded");
    let after = fingerprint(&admin);
    assert_ne!(after, before, "the renewed certificate is in use");

    Command::new("kill")
        .arg(daemon.id().to_string())
        .status()
        .unwrap();
    assert!(daemon.wait().unwrap().success(), "SIGTERM is a clean stop");
}

/// Two hosts on a bridge, each in its own network namespace, and the demo's providers on the
/// bridge's address: what the media tests need of a real network. Removed on drop.
struct Network {
    bridge: String,
    namespaces: Vec<String>,
}

fn run(args: &[&str]) {
    let status = Command::new(args[0]).args(&args[1..]).status().unwrap();
    assert!(status.success(), "{args:?} failed ({status})");
}

impl Network {
    const HOST: &'static str = "10.201.0.1";

    fn build(hosts: &[(&str, &str)]) -> Network {
        let tag = std::process::id() % 100_000;
        let bridge = format!("sybr{tag}");
        let mut network = Network {
            bridge: bridge.clone(),
            namespaces: Vec::new(),
        };
        run(&["ip", "link", "add", &bridge, "type", "bridge"]);
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", Self::HOST),
            "dev",
            &bridge,
        ]);
        run(&["ip", "link", "set", &bridge, "up"]);
        for (i, (name, address)) in hosts.iter().enumerate() {
            let ns = format!("sy{tag}{name}");
            let veth = format!("syv{tag}{i}");
            run(&["ip", "netns", "add", &ns]);
            network.namespaces.push(ns.clone());
            run(&[
                "ip", "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ]);
            run(&["ip", "link", "set", &veth, "master", &bridge, "up"]);
            for cmd in [
                vec!["ip", "addr", "add", &format!("{address}/24"), "dev", "eth0"],
                vec!["ip", "link", "set", "eth0", "up"],
                vec!["ip", "link", "set", "lo", "up"],
            ] {
                let mut full = vec!["ip", "netns", "exec", &ns];
                full.extend(cmd.iter().map(|s| &**s));
                run(&full);
            }
        }
        network
    }

    fn namespace(&self, i: usize) -> &str {
        &self.namespaces[i]
    }

    /// Runs an nftables script inside host `i`'s namespace (its firewall).
    fn nft(&self, i: usize, script: &str) {
        run(&["ip", "netns", "exec", self.namespace(i), "nft", script]);
    }

    /// `switchyard ARGS` inside host `i`'s namespace.
    fn switchyard(&self, i: usize, args: &[String]) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", self.namespace(i)])
            .arg(env!("CARGO_BIN_EXE_switchyard"))
            .args(args);
        command
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
    }
}

/// The final `stats:` line's figure after `key` (e.g. `audio sent`, then `received`).
fn final_figure(stdout: &str, stream: &str, key: &str) -> i64 {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with("stats: "))
        .unwrap_or_else(|| panic!("no statistics: {stdout}"));
    let part = line
        .split(" | ")
        .find(|p| p.trim_start_matches("stats: ").starts_with(stream))
        .unwrap();
    part.split(&format!(" {key} "))
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {stream} {key} in {line}"))
}

/// Calls between two hosts in their own network namespaces, through the demo's providers on the
/// bridge: an open network gives a direct path; 5% loss toward the caller shows in its statistics
/// while the call holds; a callee whose firewall drops all UDP takes the call through its
/// provider's HTTP relay. Needs root (the test script runs as root; `ip netns` does not work
/// otherwise).
#[test]
fn media_across_network_namespaces() {
    let network = Network::build(&[("a", "10.201.0.2"), ("b", "10.201.0.3")]);
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path();
    let on_bridge = format!("{}:0", Network::HOST);
    let mut demo = spawn_logged(
        switchyard().args([
            "demo",
            "--endpoint-listen",
            &on_bridge,
            "--admin-listen",
            "127.0.0.1:0",
            "--federation-listen",
            &on_bridge,
            "--directory-listen",
            &on_bridge,
        ]),
        logs,
        "demo",
    );
    wait_for_output(&mut demo, logs, "demo", "Press Ctrl-C to stop");
    let printed = logged(logs, "demo", "out");
    for (host, device) in [(0, "/alice-1"), (1, "/bob-1")] {
        let register = printed_command(&printed, "endpoint register", device);
        let output = network.switchyard(host, &register[..]).output().unwrap();
        assert!(output.status.success(), "{output:?}");
    }
    let mut answer = printed_command(&printed, "endpoint answer", "--auto-accept");
    answer.extend([
        "--once".into(),
        "--media-address".into(),
        "10.201.0.3".into(),
    ]);
    let mut call = printed_command(&printed, "endpoint call", "/alice-1");
    call.extend([
        "--video".into(),
        "--media-address".into(),
        "10.201.0.2".into(),
    ]);
    let place = |name: &str, answer_extra: &[&str], seconds: &str| {
        let mut answer_args = answer.clone();
        answer_args.extend(answer_extra.iter().map(|a| a.to_string()));
        let mut answerer = spawn_logged(&mut network.switchyard(1, &answer_args), logs, name);
        wait_for_output(&mut answerer, logs, name, "waiting for calls");
        let mut call_args = call.clone();
        call_args.extend(["--hangup-after".to_string(), seconds.to_string()]);
        let caller_name = format!("{name}-caller");
        let caller = spawn_logged(&mut network.switchyard(0, &call_args), logs, &caller_name);
        let (status, caller_out, err) = finish(caller, logs, &caller_name);
        assert!(status.success(), "{caller_out} {err}");
        let (status, answer_out, err) = finish(answerer, logs, name);
        assert!(status.success(), "{answer_out} {err}");
        (caller_out, answer_out)
    };

    // An open network: the direct path between the two hosts.
    let (caller, callee) = place("open", &[], "3");
    assert!(
        caller.contains("media path: host -> host (10.201.0.3:"),
        "{caller}"
    );
    assert!(
        callee.contains("media path: host -> host (10.201.0.2:"),
        "{callee}"
    );
    for out in [&caller, &callee] {
        assert!(final_figure(out, "audio", "received") >= 75, "{out}");
        assert!(final_figure(out, "video", "received") >= 20, "{out}");
        assert!(out.contains("srtp failures 0"), "{out}");
    }

    // 5% loss on the link toward the caller: the call holds and the statistics show the loss.
    // (`tc netem` is the usual tool, but this kernel has no netem qdisc; nftables drops a random
    // 5% of the UDP arriving at the caller instead.)
    network.nft(
        0,
        "add table inet syloss; \
         add chain inet syloss in { type filter hook input priority 0; policy accept; }; \
         add rule inet syloss in meta l4proto udp numgen random mod 100 < 5 drop",
    );
    let (caller, callee) = place("lossy", &[], "5");
    network.nft(0, "delete table inet syloss");
    let received = final_figure(&caller, "audio", "received");
    let lost = final_figure(&caller, "audio", "lost");
    assert!(received >= 150, "{caller}");
    assert!(
        lost >= 1 && lost * 100 <= (received + lost) * 15,
        "{caller}"
    );
    assert!(callee.contains("ended: ended"), "{callee}");

    // The callee's firewall drops all UDP: its media goes through provider B's HTTP relay.
    network.nft(
        1,
        "add table inet sy; \
         add chain inet sy out { type filter hook output priority 0; policy accept; }; \
         add chain inet sy in { type filter hook input priority 0; policy accept; }; \
         add rule inet sy out meta l4proto udp drop; \
         add rule inet sy in meta l4proto udp drop",
    );
    let (caller, callee) = place("no-udp", &["--http-relay", "long-poll"], "3");
    assert!(callee.contains("media path: relay ->"), "{callee}");
    assert!(caller.contains("-> relay"), "{caller}");
    for out in [&caller, &callee] {
        assert!(final_figure(out, "audio", "received") >= 50, "{out}");
        assert!(out.contains("srtp failures 0"), "{out}");
    }

    Command::new("kill")
        .arg(demo.0.id().to_string())
        .status()
        .unwrap();
    let (status, _, stderr) = finish(demo, logs, "demo");
    assert!(status.success(), "{stderr}");
}
