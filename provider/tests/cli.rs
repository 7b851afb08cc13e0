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

/// `switchyard serve --config config` with `env` added to the environment, once it is ready.
fn serve(config: &std::path::Path, admin: &str, env: &[(&str, String)]) -> std::process::Child {
    let daemon = switchyard()
        .args(["serve", "--config"])
        .arg(config)
        .envs(env.iter().cloned())
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
    let start = || serve(&config, &admin, &[]);
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

/// A provider restarted from the shell of the README walkthrough's step 5, where the admin
/// command line's variables (`export SWITCHYARD_ADMIN_TOKEN=…`) are exported: `config check`
/// and `serve` take them for no configuration key, and the command line still reaches the
/// provider with them.
#[test]
fn a_provider_restarts_with_the_admin_variables_exported() {
    let dir = tempfile::tempdir().unwrap();
    let (config, admin, _) = write_config(dir.path());
    let mut daemon = serve(&config, &admin, &[]);
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    let token_file = dir.path().join("data/admin-token");
    let token = std::fs::read_to_string(&token_file).unwrap();
    let shell = [
        ("SWITCHYARD_ADMIN_URL", format!("http://{admin}")),
        ("SWITCHYARD_ADMIN_TOKEN", token.trim().to_string()),
        (
            "SWITCHYARD_ADMIN_TOKEN_FILE",
            token_file.display().to_string(),
        ),
    ];

    succeed(
        switchyard()
            .args(["config", "check"])
            .arg(&config)
            .envs(shell.iter().cloned()),
    );
    let mut daemon = serve(&config, &admin, &shell);
    succeed(
        switchyard()
            .args(["users", "list"])
            .envs(shell.iter().cloned()),
    );
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
    let mut daemon = serve(&config, &admin, &[]);
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
    // Operators of the web pages are made through the same API.
    let password_file = dir.path().join("viewer-password");
    std::fs::write(&password_file, "viewer password 22\n").unwrap();
    let added = admin_cli(
        &[
            "admin",
            "add",
            "watcher",
            "--role",
            "viewer",
            "--password-file",
        ]
        .into_iter()
        .chain([password_file.to_str().unwrap()])
        .collect::<Vec<_>>(),
    );
    assert_eq!(added["role"], "viewer", "{added}");
    let listed = admin_cli(&["admin", "list"]);
    assert_eq!(listed["operators"][0]["name"], "watcher", "{listed}");
    let audit = admin_cli(&["admin", "audit"]);
    assert_eq!(
        audit["entries"][0]["path"], "/admin/v1/operators",
        "{audit}"
    );
    let register = |uri: &str, name: &str, extra: &[&str]| {
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
                .arg(&state)
                .args(extra),
        );
        state
    };
    let alice = register("tel:+16502530000", "alice", &[]);
    let bob = register("mailto:bob@example.com", "bob", &[]);

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
    assert!(
        answered.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&answered.stderr)
    );
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

    // The identity keeps the registered capabilities; an audio-only endpoint's media cannot
    // offer video, so `call --video` is refused before anything is sent.
    let carol = register("mailto:carol@example.com", "carol", &["--audio-only"]);
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(carol.join("endpoint.json")).unwrap()).unwrap();
    assert_eq!(saved["capabilities"]["video"], false, "{saved}");
    assert_eq!(saved["capabilities"]["audio"], true, "{saved}");
    let refused = switchyard()
        .args(["endpoint", "call", "mailto:bob@example.com", "--video"])
        .arg("--state")
        .arg(&carol)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("registered as audio-only"), "{stderr}");

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
/// `switchyard demo` with its endpoint API, federation and directory listening on `public` (the
/// admin API and the SIP edge on loopback, free ports), once it has printed its instructions;
/// and what it printed.
fn start_demo(logs: &std::path::Path, public: &str) -> (Running, String) {
    let mut demo = spawn_logged(
        switchyard().args([
            "demo",
            "--endpoint-listen",
            public,
            "--admin-listen",
            "127.0.0.1:0",
            "--federation-listen",
            public,
            "--directory-listen",
            public,
            "--sip-listen",
            "127.0.0.1:0",
        ]),
        logs,
        "demo",
    );
    wait_for_output(&mut demo, logs, "demo", "Press Ctrl-C to stop");
    let printed = logged(logs, "demo", "out");
    (demo, printed)
}

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
    let (demo, printed) = start_demo(logs, "127.0.0.1:0");
    let temporary = printed_value(&printed, "temporary directory", 0);
    assert!(std::path::Path::new(&temporary).is_dir(), "{printed}");
    for provider in ["Provider A", "Provider B", "Provider C"] {
        assert!(printed.contains(provider), "{printed}");
    }

    // Each SIP port printed is the port of that transport: with `--sip-listen 127.0.0.1:0` UDP
    // and TCP get ports of their own, and something listens on the printed TCP one.
    let edges: Vec<&str> = printed
        .lines()
        .filter_map(|l| l.trim().strip_prefix("SIP edge     : "))
        .collect();
    assert_eq!(edges.len(), 3, "{printed}");
    for edge in edges {
        let tcp = edge
            .split(", ")
            .find_map(|part| {
                part.strip_suffix(" (TCP)")
                    .or_else(|| part.strip_suffix(" (UDP and TCP)"))
            })
            .unwrap_or_else(|| panic!("no TCP port in {edge:?}"));
        std::net::TcpStream::connect(tcp)
            .unwrap_or_else(|e| panic!("nothing listens on the printed TCP port {tcp}: {e}"));
    }

    // Step 1 also prints each provider's SIP edge and a sipp command registering its user's SIP
    // account: a SIP phone registers at provider A with digest authentication.
    let sipp = printed
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("sipp "))
        .unwrap_or_else(|| panic!("no sipp command in:\n{printed}"));
    let output = Command::new("sipp")
        .args(sipp.split_whitespace().skip(1))
        // The checkout found at run time: a shared build cache may have built this binary in
        // a checkout at another path.
        .current_dir(
            std::path::Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo"))
                .join(".."),
        )
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{sipp}: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

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
    // Each member's endpoint CA, as its provider generates it (a self-signed CA certificate).
    for id in ["a.example", "b.example"] {
        let mut init = switchyard();
        init.args([
            "ca",
            "init",
            "--name",
            &format!("{id} endpoints"),
            "--ca-cert",
        ])
        .arg(path(&format!("{id}-endpoint-ca.pem")))
        .arg("--ca-key")
        .arg(path(&format!("{id}-endpoint-ca.key")));
        succeed(&mut init);
    }
    let members = |b_cert: &str| {
        format!(
            "federation = \"test\"\nversion = 1\n\
             [[member]]\nprovider_id = \"a.example\"\ndisplay_name = \"A\"\nbase_uri = \"https://a.example:8443\"\ncertificate = \"a.example.pem\"\nendpoint_ca = \"a.example-endpoint-ca.pem\"\n\
             [[member]]\nprovider_id = \"b.example\"\ndisplay_name = \"B\"\nbase_uri = \"https://b.example:8443\"\nrelay_addresses = [\"b.example:3478\"]\ncertificate = \"{b_cert}\"\nendpoint_ca = \"b.example-endpoint-ca.pem\"\n"
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

/// What the media tests need of a real network: a Linux bridge in the root namespace on
/// `10.201.N.0/24`, the demo's providers (and their TURN relays) on its first address, and
/// network namespaces attached to it, either as hosts on the bridge itself or as hosts on a
/// private LAN behind a NAT router of their own. Each test takes its own `N`, and the names carry
/// the process id and a counter, so the tests can run at the same time. Removed on drop, even
/// after a failed assertion: the namespaces take their veths and nftables with them, the bridge
/// its routes.
struct Network {
    subnet: u8,
    tag: String,
    bridge: String,
    namespaces: Vec<String>,
}

fn run(args: &[&str]) {
    let status = Command::new(args[0]).args(&args[1..]).status().unwrap();
    assert!(status.success(), "{args:?} failed ({status})");
}

impl Network {
    /// The bridge on `10.201.{subnet}.0/24`, with no host yet.
    fn new(subnet: u8) -> Network {
        static BUILT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let built = BUILT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Short (interface names are 15 characters at most), and the same width for every
        // process, so that no two runs' names meet.
        let tag = format!("{:05}{built}", std::process::id() % 100_000);
        let network = Network {
            subnet,
            bridge: format!("sybr{tag}"),
            tag,
            namespaces: Vec::new(),
        };
        run(&["ip", "link", "add", &network.bridge, "type", "bridge"]);
        let host = format!("{}/24", network.host());
        run(&["ip", "addr", "add", &host, "dev", &network.bridge]);
        run(&["ip", "link", "set", &network.bridge, "up"]);
        network
    }

    /// The bridge's own address in the root namespace, where the demo's providers listen.
    fn host(&self) -> String {
        self.address(1)
    }

    /// `10.201.N.last`: an address on the bridge.
    fn address(&self, last: u8) -> String {
        format!("10.201.{}.{last}", self.subnet)
    }

    /// A new namespace (with `lo` up), known as host `i` from now on.
    fn add_namespace(&mut self, name: &str) -> usize {
        let ns = format!("sy{}{name}", self.tag);
        run(&["ip", "netns", "add", &ns]);
        self.namespaces.push(ns);
        let i = self.namespaces.len() - 1;
        self.exec(i, &["ip", "link", "set", "lo", "up"]);
        i
    }

    /// A host on the bridge: its `eth0` has `10.201.N.last`. Returns its index.
    fn attach(&mut self, name: &str, last: u8) -> usize {
        let i = self.add_namespace(name);
        let veth = format!("syv{}{i}", self.tag);
        let ns = self.namespace(i).to_string();
        run(&[
            "ip", "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]);
        run(&["ip", "link", "set", &veth, "master", &self.bridge, "up"]);
        let address = format!("{}/24", self.address(last));
        self.exec(i, &["ip", "addr", "add", &address, "dev", "eth0"]);
        self.exec(i, &["ip", "link", "set", "eth0", "up"]);
        i
    }

    /// A host at `{lan}.2` on the private LAN `{lan}.0/24`, behind a router on the bridge at
    /// `10.201.N.wan` (`{lan}.1` on the LAN side, the host's default route) whose NAT maps per
    /// destination: `masquerade fully-random` gives every new destination of a LAN socket its
    /// own external port (endpoint-dependent mapping, a "symmetric NAT"), and the router
    /// forwards nothing from the bridge that is not an answer to what went out. Returns the
    /// host's index; the router is host `index - 1`.
    fn behind_nat(&mut self, name: &str, wan: u8, lan: &str) -> usize {
        let router = self.attach(&format!("{name}r"), wan);
        let host = self.add_namespace(name);
        let host_ns = self.namespace(host).to_string();
        self.exec(
            router,
            &[
                "ip", "link", "add", "lan0", "type", "veth", "peer", "name", "eth0", "netns",
                &host_ns,
            ],
        );
        self.exec(
            router,
            &["ip", "addr", "add", &format!("{lan}.1/24"), "dev", "lan0"],
        );
        self.exec(router, &["ip", "link", "set", "lan0", "up"]);
        self.exec(router, &["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
        self.nft(
            router,
            "add table ip synat; \
             add chain ip synat post { type nat hook postrouting priority srcnat; policy accept; }; \
             add rule ip synat post oifname eth0 masquerade fully-random; \
             add chain ip synat forward { type filter hook forward priority 0; policy drop; }; \
             add rule ip synat forward iifname lan0 oifname eth0 accept; \
             add rule ip synat forward ct state established,related accept",
        );
        self.exec(
            host,
            &["ip", "addr", "add", &format!("{lan}.2/24"), "dev", "eth0"],
        );
        self.exec(host, &["ip", "link", "set", "eth0", "up"]);
        self.exec(
            host,
            &["ip", "route", "add", "default", "via", &format!("{lan}.1")],
        );
        // What the relays send to the LAN address (a host candidate) stays on the bridge, where
        // nobody answers for it, instead of following the root namespace's default route off
        // the machine.
        let route = format!("{lan}.0/24");
        run(&["ip", "route", "add", &route, "dev", &self.bridge]);
        host
    }

    fn namespace(&self, i: usize) -> &str {
        &self.namespaces[i]
    }

    /// `ARGS` inside host `i`'s namespace.
    fn exec(&self, i: usize, args: &[&str]) {
        let mut full = vec!["ip", "netns", "exec", self.namespace(i)];
        full.extend(args);
        run(&full);
    }

    /// Runs an nftables script inside host `i`'s namespace (its firewall).
    fn nft(&self, i: usize, script: &str) {
        self.exec(i, &["nft", script]);
    }

    /// `PROGRAM ARGS` inside host `i`'s namespace.
    fn command(&self, i: usize, program: &str) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", self.namespace(i)])
            .arg(program);
        command
    }

    /// `switchyard ARGS` inside host `i`'s namespace.
    fn switchyard(&self, i: usize, args: &[String]) -> Command {
        let mut command = self.command(i, env!("CARGO_BIN_EXE_switchyard"));
        command.args(args);
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

/// The demo's providers on a network's bridge, Alice registered at provider A from host
/// `caller` and Bob at provider B from host `callee`, and calls from Alice to Bob with each
/// one's media on the given address. The demo is killed on drop; `stop` insists on a clean stop.
struct Calls<'a> {
    network: &'a Network,
    demo: Running,
    caller: usize,
    callee: usize,
    call: Vec<String>,
    answer: Vec<String>,
    dir: tempfile::TempDir,
}

impl<'a> Calls<'a> {
    fn start(network: &'a Network, caller: (usize, &str), callee: (usize, &str)) -> Calls<'a> {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path();
        let on_bridge = format!("{}:0", network.host());
        let (demo, printed) = start_demo(logs, &on_bridge);
        for (host, device) in [(caller.0, "/alice-1"), (callee.0, "/bob-1")] {
            let register = printed_command(&printed, "endpoint register", device);
            let output = network.switchyard(host, &register[..]).output().unwrap();
            assert!(output.status.success(), "{output:?}");
        }
        let mut answer = printed_command(&printed, "endpoint answer", "--auto-accept");
        answer.extend(["--once", "--media-address", callee.1].map(String::from));
        let mut call = printed_command(&printed, "endpoint call", "/alice-1");
        call.extend(["--video", "--media-address", caller.1].map(String::from));
        Calls {
            network,
            demo,
            caller: caller.0,
            callee: callee.0,
            call,
            answer,
            dir,
        }
    }

    /// A call hung up by the caller after `seconds`; both sides' stdout.
    fn place(&self, name: &str, answer_extra: &[&str], seconds: &str) -> (String, String) {
        let (caller, callee, ()) = self.place_watching(name, answer_extra, seconds, |_, _| ());
        (caller, callee)
    }

    /// `place`, running `watch` (given the caller's and the callee's stdout files) while the
    /// call goes on.
    fn place_watching<T>(
        &self,
        name: &str,
        answer_extra: &[&str],
        seconds: &str,
        watch: impl FnOnce(&std::path::Path, &std::path::Path) -> T,
    ) -> (String, String, T) {
        let logs = self.dir.path();
        let mut answer_args = self.answer.clone();
        answer_args.extend(answer_extra.iter().map(|a| a.to_string()));
        let mut answerer = spawn_logged(
            &mut self.network.switchyard(self.callee, &answer_args),
            logs,
            name,
        );
        wait_for_output(&mut answerer, logs, name, "waiting for calls");
        let mut call_args = self.call.clone();
        call_args.extend(["--hangup-after".to_string(), seconds.to_string()]);
        let caller_name = format!("{name}-caller");
        let caller = spawn_logged(
            &mut self.network.switchyard(self.caller, &call_args),
            logs,
            &caller_name,
        );
        // A call left ringing is reported with the answerer's own logs, not only the caller's.
        wait_for_output(&mut answerer, logs, name, "accepted");
        let watched = watch(
            &logs.join(format!("{caller_name}.out")),
            &logs.join(format!("{name}.out")),
        );
        let (status, caller_out, err) = finish(caller, logs, &caller_name);
        assert!(status.success(), "{caller_out} {err}");
        let (status, answer_out, err) = finish(answerer, logs, name);
        assert!(status.success(), "{answer_out} {err}");
        (caller_out, answer_out, watched)
    }

    fn stop(self) {
        Command::new("kill")
            .arg(self.demo.0.id().to_string())
            .status()
            .unwrap();
        let (status, _, stderr) = finish(self.demo, self.dir.path(), "demo");
        assert!(status.success(), "{stderr}");
    }
}

/// The figure after `key` (e.g. `audio sent`, then `received`) on a `stats:` line.
fn figure(line: &str, stream: &str, key: &str) -> i64 {
    let part = line
        .split(" | ")
        .find(|p| p.trim_start_matches("stats: ").starts_with(stream))
        .unwrap_or_else(|| panic!("no {stream} in {line}"));
    part.split(&format!(" {key} "))
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {stream} {key} in {line}"))
}

/// The final `stats:` line's figure after `key` (e.g. `audio sent`, then `received`).
fn final_figure(stdout: &str, stream: &str, key: &str) -> i64 {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with("stats: "))
        .unwrap_or_else(|| panic!("no statistics: {stdout}"));
    figure(line, stream, key)
}

/// The lines of a process's stdout file, each stamped with when the test first saw it: the
/// CLI prints whole lines, and `poll` every 20 ms or so puts the stamps within that of the
/// printing.
struct Stamped {
    path: std::path::PathBuf,
    read: usize,
    lines: Vec<(Instant, String)>,
}

impl Stamped {
    fn new(path: &std::path::Path) -> Stamped {
        Stamped {
            path: path.to_path_buf(),
            read: 0,
            lines: Vec::new(),
        }
    }

    fn poll(&mut self) {
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        let now = Instant::now();
        if let Some(end) = text[self.read..].rfind('\n') {
            let new = &text[self.read..self.read + end + 1];
            self.lines.extend(new.lines().map(|l| (now, l.to_string())));
            self.read += end + 1;
        }
    }

    fn text(&self) -> String {
        self.lines.iter().map(|(_, l)| format!("{l}\n")).collect()
    }
}

/// Polls the caller's and the callee's output (in that order) until `done`, failing with both
/// after `deadline`.
fn poll_until(outs: &mut [Stamped; 2], deadline: Instant, done: &dyn Fn(&[Stamped; 2]) -> bool) {
    while !done(outs) {
        assert!(
            Instant::now() < deadline,
            "caller:\n{}\ncallee:\n{}",
            outs[0].text(),
            outs[1].text()
        );
        std::thread::sleep(Duration::from_millis(20));
        outs.iter_mut().for_each(Stamped::poll);
    }
}

/// Calls between two hosts in their own network namespaces, through the demo's providers on the
/// bridge: an open network gives a direct path; 5% loss toward the caller shows in its statistics
/// while the call holds; a callee whose firewall drops all UDP takes the call through its
/// provider's HTTP relay. Needs root (the test script runs as root; `ip netns` does not work
/// otherwise).
#[test]
fn media_across_network_namespaces() {
    let mut network = Network::new(0);
    let a = network.attach("a", 2);
    let b = network.attach("b", 3);
    let calls = Calls::start(&network, (a, "10.201.0.2"), (b, "10.201.0.3"));

    // An open network: the direct path between the two hosts.
    let (caller, callee) = calls.place("open", &[], "3");
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
    // The loss starts once both sides have secured their media: what is measured is media under
    // loss. (Handshakes under loss are not covered here: a run with the loss from the start once
    // left the caller without media for the whole call, and the cause is not found yet.)
    let (caller, callee, ()) = calls.place_watching("lossy", &[], "5", |caller_out, callee_out| {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut outs = [Stamped::new(caller_out), Stamped::new(callee_out)];
        poll_until(&mut outs, deadline, &|outs| {
            outs.iter()
                .all(|o| o.text().contains("media secured end to end"))
        });
        network.nft(
            a,
            "add table inet syloss; \
             add chain inet syloss in { type filter hook input priority 0; policy accept; }; \
             add rule inet syloss in meta l4proto udp numgen random mod 100 < 5 drop",
        );
    });
    network.nft(a, "delete table inet syloss");
    assert!(caller.contains("media path: host -> host"), "{caller}");
    assert!(callee.contains("media path: host -> host"), "{callee}");
    for out in [&caller, &callee] {
        assert!(out.contains("srtp failures 0"), "{out}");
    }
    assert!(
        final_figure(&callee, "audio", "received") >= 150,
        "{callee}"
    );
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
        b,
        "add table inet sy; \
         add chain inet sy out { type filter hook output priority 0; policy accept; }; \
         add chain inet sy in { type filter hook input priority 0; policy accept; }; \
         add rule inet sy out meta l4proto udp drop; \
         add rule inet sy in meta l4proto udp drop",
    );
    let (caller, callee) = calls.place("no-udp", &["--http-relay", "long-poll"], "3");
    assert!(callee.contains("media path: relay ->"), "{callee}");
    assert!(caller.contains("-> relay"), "{caller}");
    for out in [&caller, &callee] {
        assert!(final_figure(out, "audio", "received") >= 50, "{out}");
        assert!(out.contains("srtp failures 0"), "{out}");
    }

    calls.stop();
}

/// What a NAT does to one socket behind it that sends to two ports of the bridge's host: the
/// two sources the host sees (the router's address, a port for each destination), and what the
/// socket then received of a datagram to the second mapping from the first port (unsolicited:
/// a NAT that filters drops it) and of one from the second port (an answer: let in).
fn probe_nat(
    network: &Network,
    host: usize,
) -> (std::net::SocketAddr, std::net::SocketAddr, String) {
    let listen = || {
        let socket = std::net::UdpSocket::bind((network.host(), 0)).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        socket
    };
    let listeners = [listen(), listen()];
    let ports = listeners.each_ref().map(|l| l.local_addr().unwrap().port());
    let script = format!(
        "import socket\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.settimeout(1.5)\n\
         for port in {ports:?}:\n    s.sendto(b'probe', ('{}', port))\n\
         try:\n    while True:\n        print(s.recv(100).decode(), flush=True)\n\
         except socket.timeout:\n    pass\n",
        network.host(),
        ports = (ports[0], ports[1]),
    );
    let probe = network
        .command(host, "python3")
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 100];
    let from = listeners
        .each_ref()
        .map(|l| l.recv_from(&mut buf).unwrap().1);
    listeners[0].send_to(b"unsolicited", from[1]).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    listeners[1].send_to(b"answer", from[1]).unwrap();
    let output = probe.wait_with_output().unwrap();
    assert!(output.status.success(), "{output:?}");
    (
        from[0],
        from[1],
        String::from_utf8_lossy(&output.stdout).into(),
    )
}

/// Both endpoints behind NATs that map per destination ("symmetric" NATs): each on a private
/// LAN (10.211.1.0/24, 10.211.2.0/24) behind its own router namespace on the bridge
/// (10.201.2.2, 10.201.2.3) that masquerades with a random port for every new destination and
/// forwards nothing unsolicited inward. The endpoints reach the providers' HTTP APIs and TURN
/// relays on the bridge through their NAT, but no direct path between them can work: a host
/// candidate is a private address the other cannot route to, and a server-reflexive one is the
/// mapping toward the TURN server, which the NAT neither reuses toward the peer nor opens to
/// it. So the call must settle on a relayed path (TURN), with media flowing both ways. The NAT
/// is first checked to be what it claims.
#[test]
fn media_between_symmetric_nats_takes_the_relay() {
    let mut network = Network::new(2);
    let a = network.behind_nat("a", 2, "10.211.1");
    let b = network.behind_nat("b", 3, "10.211.2");

    let (first, second, received) = probe_nat(&network, a);
    assert_eq!(first.ip().to_string(), network.address(2), "{first}");
    assert_eq!(second.ip(), first.ip());
    assert_ne!(second.port(), first.port(), "one mapping per destination");
    assert_eq!(received, "answer\n", "only the answer gets through the NAT");
    eprintln!("one socket behind the NAT, two destinations: seen from {first} and {second}");

    let calls = Calls::start(&network, (a, "10.211.1.2"), (b, "10.211.2.2"));
    let (caller, callee) = calls.place("nat", &[], "5");
    for out in [&caller, &callee] {
        let paths: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with("media path: "))
            .collect();
        assert!(!paths.is_empty(), "{out}");
        for path in paths {
            eprintln!("{path}");
            let (kinds, _) = path["media path: ".len()..].split_once(" (").unwrap();
            assert!(kinds.contains("relay"), "a direct path: {path}\n{out}");
        }
        eprintln!(
            "{}",
            out.lines()
                .rev()
                .find(|l| l.starts_with("stats: "))
                .unwrap()
        );
        assert!(final_figure(out, "audio", "received") >= 150, "{out}");
        assert!(final_figure(out, "video", "received") >= 40, "{out}");
        assert!(out.contains("srtp failures 0"), "{out}");
    }
    calls.stop();
}

/// Two hosts on an open network (10.201.1.2 and 10.201.1.3 on the bridge, the providers and
/// their relays on 10.201.1.1): the call starts on the direct host path, and about 3 s in the
/// caller's firewall starts dropping all UDP between the two hosts' addresses, both ways, while
/// the providers stay reachable. The ICE agents keep a relayed pair as the backup of the direct
/// one (with consent checks on both), so each side must move to a relayed path on its own and
/// media must flow again within a bound: the design aims at 2 s, the test allows 5 s from the
/// cut to the first `stats:` line (printed each second) whose received audio grew since one
/// printed after the cut. The stdout lines are read as they come, stamped with the time.
#[test]
fn media_moves_to_the_relay_when_the_direct_link_is_cut() {
    let mut network = Network::new(1);
    let a = network.attach("a", 2);
    let b = network.attach("b", 3);
    let (caller_address, callee_address) = (network.address(2), network.address(3));
    let calls = Calls::start(&network, (a, &caller_address), (b, &callee_address));
    let cut_script = format!(
        "add table inet sycut; \
         add chain inet sycut in {{ type filter hook input priority 0; policy accept; }}; \
         add chain inet sycut out {{ type filter hook output priority 0; policy accept; }}; \
         add rule inet sycut in ip saddr {callee_address} meta l4proto udp drop; \
         add rule inet sycut out ip daddr {callee_address} meta l4proto udp drop"
    );

    let (caller, callee, (cut, stamped)) =
        calls.place_watching("cut", &[], "10", |caller_out, callee_out| {
            let mut outs = [Stamped::new(caller_out), Stamped::new(callee_out)];
            let deadline = Instant::now() + Duration::from_secs(40);
            poll_until(&mut outs, deadline, &|outs| {
                outs.iter().all(|o| {
                    o.lines
                        .iter()
                        .any(|(_, l)| l.starts_with("media path: host -> host"))
                })
            });
            // Polled until the cut, so that what was printed before it is stamped before it.
            let cut_at = Instant::now() + Duration::from_secs(3);
            poll_until(&mut outs, deadline, &|_| Instant::now() >= cut_at);
            let cut = Instant::now();
            network.nft(a, &cut_script);
            poll_until(&mut outs, deadline, &|outs| {
                outs[0].lines.iter().any(|(_, l)| l == "hung up")
            });
            (cut, outs)
        });

    for ((side, out), stamped) in [("caller", &caller), ("callee", &callee)]
        .into_iter()
        .zip(&stamped)
    {
        let before: Vec<&str> = stamped
            .lines
            .iter()
            .filter(|(t, _)| *t < cut)
            .map(|(_, l)| l.as_str())
            .collect();
        let after: Vec<(Instant, &str)> = stamped
            .lines
            .iter()
            .filter(|(t, _)| *t >= cut)
            .map(|(t, l)| (*t, l.as_str()))
            .collect();
        assert!(
            before
                .iter()
                .any(|l| l.starts_with("media path: host -> host")),
            "{out}"
        );
        let switch = after
            .iter()
            .position(|(_, l)| l.starts_with("media path: ") && l.contains("relay"))
            .unwrap_or_else(|| panic!("the {side} never moved to a relayed path:\n{out}"));
        let stats: Vec<(Instant, &str)> = after
            .iter()
            .copied()
            .filter(|(_, l)| l.starts_with("stats: "))
            .collect();
        let resumed = stats
            .windows(2)
            .find(|w| figure(w[1].1, "audio", "received") > figure(w[0].1, "audio", "received"))
            .map(|w| w[1].0)
            .unwrap_or_else(|| panic!("the {side}'s audio never resumed:\n{out}"));
        eprintln!(
            "{side}: relayed path {:.2} s after the cut ({}), audio flowing again by {:.2} s",
            (after[switch].0 - cut).as_secs_f64(),
            after[switch].1,
            (resumed - cut).as_secs_f64()
        );
        assert!(
            resumed - cut < Duration::from_secs(5),
            "the {side}'s audio took {:?} to resume:\n{out}",
            resumed - cut
        );
        // Media keeps flowing on the relayed path: from the first statistics after the switch
        // to the last, both streams grow (the call goes on for several seconds after it).
        let since_switch: Vec<&str> = after[switch..]
            .iter()
            .filter(|(_, l)| l.starts_with("stats: "))
            .map(|(_, l)| *l)
            .collect();
        let (first, last) = (since_switch[0], since_switch[since_switch.len() - 1]);
        for (stream, least) in [("audio", 100), ("video", 20)] {
            let grown = figure(last, stream, "received") - figure(first, stream, "received");
            assert!(grown >= least, "{side} {stream} grew by {grown}:\n{out}");
        }
        assert!(out.contains("srtp failures 0"), "{out}");
        assert!(!out.contains("media failed"), "{out}");
    }
    calls.stop();
}
