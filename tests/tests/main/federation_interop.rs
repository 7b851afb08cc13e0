//! The federation protocol against an independent implementation of its peer side:
//! `tests/interop/federation_peer.py` (Python, standard library only) joins a test federation
//! as member `py.test` next to the Switchyard provider `a.test`. It serves its own Bloom filter
//! and the Forward paths over mutual TLS, pulls A's filter (full and incremental) and checks
//! membership from the wire format, notifies A, and sends and answers every Forward.
//!
//! The driver speaks to the script with one JSON command a line on its stdin and reads one
//! JSON answer a line from its stdout; every wait is bounded.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};
use switchyard_endpoint::client::{EndpointClient, PushMode};
use switchyard_protocol::bloom::{self, BloomUpdate};
use switchyard_protocol::dict::Encoding;
use switchyard_protocol::discovery::Member;
use switchyard_protocol::pki;
use switchyard_tests::federation::{ProviderSpec, TestFederation};
use switchyard_tests::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

fn script() -> std::path::PathBuf {
    switchyard_tests::manifest_dir().join("interop/federation_peer.py")
}

/// Hosted at A.
const ALICE: &str = "tel:+16502530000";
const BOB: &str = "mailto:bob@a.example";
/// Added at A during the test, to make an incremental filter update.
const CAROL: &str = "tel:+16502530042";
/// Hosted by the Python peer from the start, and added later.
const PY_CALLER: &str = "tel:+15105550100";
const PY_USER: &str = "mailto:pyuser@py.example";
const PY_LATER: &str = "tel:+15105550199";
/// Hosted nowhere.
const NOWHERE: &str = "tel:+16502539999";

/// How long any one answer of the script may take.
const STEP: Duration = Duration::from_secs(30);

struct PyPeer {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: tokio::task::JoinHandle<String>,
}

impl PyPeer {
    async fn start(args: &[&std::path::Path]) -> anyhow::Result<(PyPeer, Value)> {
        let mut child = tokio::process::Command::new("python3")
            .arg(script())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("python3 is required for the federation interop test")?;
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let mut stderr = child.stderr.take().expect("piped stderr");
        let stderr = tokio::spawn(async move {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text).await;
            text
        });
        let mut peer = PyPeer {
            child,
            stdin,
            stdout,
            stderr,
        };
        let hello = peer.read().await?;
        Ok((peer, hello))
    }

    async fn read(&mut self) -> anyhow::Result<Value> {
        let line = tokio::time::timeout(STEP, self.stdout.next_line())
            .await
            .context("the Python peer did not answer in time")??
            .context("the Python peer exited")?;
        serde_json::from_str(&line).with_context(|| format!("not JSON from the script: {line}"))
    }

    /// Sends one command; fails unless the script did it and every check so far passed.
    async fn call(&mut self, command: Value) -> anyhow::Result<Value> {
        let mut line = serde_json::to_string(&command)?;
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).await?;
        self.stdin.flush().await?;
        let answer = self.read().await?;
        let failures = answer["failures"].as_array().cloned().unwrap_or_default();
        if answer["ok"] != true || !failures.is_empty() {
            bail!(
                "the Python peer failed `{}`: {} {}",
                command["cmd"],
                answer["error"],
                Value::Array(failures)
            );
        }
        Ok(answer)
    }

    /// Ends the script; returns its exit status and everything it logged.
    async fn quit(mut self) -> anyhow::Result<(std::process::ExitStatus, String)> {
        self.stdin.write_all(b"{\"cmd\": \"quit\"}\n").await?;
        drop(self.stdin);
        let status = tokio::time::timeout(STEP, self.child.wait())
            .await
            .context("the Python peer did not exit")??;
        let log = self.stderr.await?;
        Ok((status, log))
    }
}

async fn user_endpoint(
    h: &Harness,
    name: &str,
    uris: &[&str],
    encoding: Encoding,
) -> anyhow::Result<EndpointClient> {
    let id = h.add_user(name, uris).await?;
    h.endpoint(&id, uris[0], None, encoding).await
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_peer_performs_every_federation_action() -> anyhow::Result<()> {
    let mut fed = TestFederation::start(&[ProviderSpec::plist("a.test")]).await?;
    let a = fed.provider("a.test");
    let alice = user_endpoint(a, "Alice", &[ALICE], Encoding::Plist).await?;
    let bob = user_endpoint(a, "Bob", &[BOB], Encoding::Json).await?;

    // The Python peer's certificate, from the federation's CA.
    let issued = fed
        .ca
        .issue_provider("py.test", &["127.0.0.1".into(), "localhost".into()], 30)?;
    let py_cert = fed.dir.path().join("py.test.pem");
    let py_key = fed.dir.path().join("py.test.key");
    std::fs::write(&py_cert, &issued.cert_pem)?;
    std::fs::write(&py_key, &issued.key_pem)?;
    let py_fingerprint = pki::certificate_fingerprint(&pki::certs_from_pem(&issued.cert_pem)?[0]);
    let a_member = fed.member("a.test")?;
    let params = fed.dir.path().join("py-params.json");
    std::fs::write(
        &params,
        serde_json::to_vec(&json!({
            "provider-id": "py.test",
            "peer-id": "a.test",
            "peer-fingerprint": a_member.certificate_sha256,
            "hosted": [PY_CALLER, PY_USER],
        }))?,
    )?;
    let ca = fed.dir.path().join("ca.pem");
    let a_url = std::path::PathBuf::from(&a_member.base_uri);
    let (mut py, hello) =
        PyPeer::start(&[&ca, &py_cert, &py_key, a_url.as_path(), &params]).await?;
    let port = hello["port"].as_u64().context("port")?;
    let py_generation = hello["generation"].as_u64().context("generation")?;

    let result = scenarios(
        &mut fed,
        &mut py,
        port,
        &py_fingerprint,
        py_generation,
        &alice,
        &bob,
    )
    .await;
    let (status, log) = py.quit().await?;
    eprintln!("--- federation_peer.py ---\n{log}");
    result?;
    assert!(
        status.success(),
        "federation_peer.py failed ({status}):\n{log}"
    );
    fed.shutdown().await;
    Ok(())
}

async fn scenarios(
    fed: &mut TestFederation,
    py: &mut PyPeer,
    port: u64,
    py_fingerprint: &str,
    py_generation: u64,
    alice: &EndpointClient,
    bob: &EndpointClient,
) -> anyhow::Result<()> {
    // The directory lists the Python peer; A fetches it and pulls the Python filter. The peer
    // sends no endpoint CA (its calls carry none), but the directory pins one all the same.
    let py_endpoint_ca = pki::FederationCa::init(
        &fed.dir.path().join("py-endpoint-ca.pem"),
        &fed.dir.path().join("py-endpoint-ca.key"),
        "py.test endpoints",
    )?;
    let members = vec![
        fed.member("a.test")?,
        Member {
            provider_id: "py.test".into(),
            display_name: "Python peer".into(),
            base_uri: format!("https://127.0.0.1:{port}"),
            relay_addresses: vec![],
            certificate_sha256: py_fingerprint.to_string(),
            endpoint_ca_sha256: pki::pem_fingerprint(py_endpoint_ca.cert_pem())?,
        },
    ];
    fed.write_directory(members, 86_400)?;
    fed.refresh_all().await?;
    let h = fed.provider("a.test");
    let a_fed = fed.fed("a.test");
    a_fed.pull("py.test").await;
    let status = |a_fed: &switchyard_provider::federation::Federation| {
        a_fed
            .peers
            .status(a_fed.directory.current().as_deref(), "a.test")
            .into_iter()
            .find(|s| s.provider_id == "py.test")
            .expect("py.test is a member")
    };
    let seen = status(a_fed);
    assert_eq!(
        seen.generation,
        Some(py_generation),
        "A pulled the Python filter: {seen:?}"
    );
    let directory = a_fed.directory.current().context("directory")?;
    let at_py = |uri: &str| {
        let (found, _) = a_fed.peers.candidates(&directory, "a.test", uri);
        found.iter().any(|m| m.provider_id == "py.test")
    };
    assert!(
        at_py(PY_USER) && at_py(PY_CALLER),
        "A reads the Python filter"
    );
    assert!(!at_py(PY_LATER), "not yet hosted by the Python peer");

    // 1. Python pulls A's full filter (plist), then an update after a user joins at A.
    a_fed.rebuild_filter().await?;
    let full = py.call(json!({"cmd": "pull-full"})).await?;
    let before = a_fed.own.stats().context("A's filter")?;
    assert_eq!(full["generation"], before.generation);
    assert_eq!(full["bits"], before.bits);
    assert_eq!(full["items"], before.items);
    h.add_user("Carol", &[CAROL]).await?;
    a_fed.rebuild_filter().await?;
    let after = a_fed.own.stats().context("A's filter")?;
    assert!(after.generation > before.generation, "A rebuilt its filter");
    // A told the Python peer about the new generation.
    py.call(json!({"cmd": "wait-notified", "generation": after.generation}))
        .await?;
    let update = py.call(json!({"cmd": "pull-since"})).await?;
    assert_eq!(update["since"], before.generation);
    assert_eq!(update["generation"], after.generation);
    assert_eq!(
        update["form"], "incremental",
        "one more user flips far fewer bits than the filter holds: {update}"
    );
    let hosted = [ALICE, BOB, CAROL];
    let mut probes: Vec<String> = hosted.iter().map(|s| s.to_string()).collect();
    probes.extend((0..300).map(|i| format!("tel:+4420{i:08}")));
    probes.extend((0..100).map(|i| format!("mailto:nobody{i}@a.example")));
    probes.extend([PY_USER.to_string(), "mailto:Bob@a.example".to_string()]);
    let answer = py
        .call(json!({"cmd": "probe", "uris": probes, "hosted": hosted}))
        .await?;
    let (dict, _) = a_fed.own.update_since(None).context("A's filter")?;
    let BloomUpdate::Full { generation, filter } = bloom::from_dict(&dict)? else {
        bail!("update_since(None) must be a full filter");
    };
    assert_eq!(answer["generation"], generation);
    let membership: BTreeMap<String, bool> = serde_json::from_value(answer["membership"].clone())?;
    assert_eq!(membership.len(), probes.len());
    for uri in &probes {
        assert_eq!(
            membership[uri],
            filter.contains(uri),
            "Python and Rust disagree on {uri}"
        );
    }
    for uri in hosted {
        assert!(membership[uri], "{uri} is hosted at A");
    }

    // 2. Python hosts one more URI and notifies A (plist); A pulls the update incrementally.
    let hosted_now = py.call(json!({"cmd": "host", "uri": PY_LATER})).await?;
    let new_generation = hosted_now["generation"].as_u64().context("generation")?;
    py.call(json!({"cmd": "notify", "encoding": "application/x-plist"}))
        .await?;
    let served = py
        .call(json!({"cmd": "wait-served", "since": py_generation, "generation": new_generation}))
        .await?;
    assert_eq!(served["form"], "incremental", "{served}");
    let deadline = tokio::time::Instant::now() + WAIT;
    while status(a_fed).generation != Some(new_generation) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "A did not pull the notified generation: {:?}",
            status(a_fed)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(status(a_fed).last_error.is_none(), "{:?}", status(a_fed));
    assert!(at_py(PY_LATER), "A applied the Python peer's flips");
    assert!(at_py(PY_USER) && at_py(PY_CALLER));

    let mut alice_push = alice.push_channel(PushMode::WebSocket).await?;
    let mut bob_push = bob.push_channel(PushMode::LongPoll).await?;

    // 3. Python as the originator (JSON): Bob at A answers, then Python hangs up.
    let call = py
        .call(json!({
            "cmd": "initiate", "encoding": "application/json", "caller": PY_CALLER,
            "token": "py-caller-token", "callee": BOB, "blob": "py-offer",
            "media": ["audio", "video"], "replay-checks": true,
        }))
        .await?;
    let sid = call["session-id"].as_str().context("sid")?.to_string();
    let ring = expect_push(&mut bob_push, "initiate").await?;
    assert_eq!(ring.str("session-id")?, sid);
    assert_eq!(ring.str("self-uri")?, BOB);
    assert_eq!(ring.str("peer-uri")?, PY_CALLER);
    assert_eq!(ring.str("peer-token")?, "py-caller-token");
    assert_eq!(ring.data("peer-blob")?, b"py-offer");
    assert!(
        ring.opt_str("peer-attestation")?.is_none(),
        "no attestation was sent, so none verified"
    );
    assert_eq!(ring.str("peer-provider")?, "py.test");
    assert_eq!(ring.string_array("media")?, ["audio", "video"]);
    let caps = ring.dict("peer-capabilities")?;
    assert_eq!(caps.string_array("audio-codecs")?, ["opus", "PCMU"]);
    assert_eq!(caps.string_array("video-codecs")?, ["VP8"]);
    // The retried Initiate rang nobody a second time.
    expect_silence(&mut bob_push).await?;
    bob.accept(&ring, b"bob-answer").await?;
    let accept = py
        .call(json!({"cmd": "wait-forward", "action": "accept", "session-id": sid}))
        .await?;
    assert_eq!(accept["status"], 200);
    assert_eq!(accept["encoding"], "application/x-plist");
    assert_eq!(accept["answering-provider"], "a.test");
    assert_eq!(accept["origin-state"], call["origin-state"]);
    assert_eq!(accept["callee-uri"], BOB);
    assert_eq!(accept["callee-token"], bob.identity.push_token.as_str());
    assert_eq!(accept["callee-blob"], hex(b"bob-answer"));
    assert_eq!(h.call_record(&sid).await?["state"], "answered");
    py.call(json!({"cmd": "cancel", "session-id": sid, "reason": "ended", "encoding": "application/json"}))
        .await?;
    let ended = expect_push(&mut bob_push, "cancel").await?;
    assert_eq!(ended.str("session-id")?, sid);
    assert_eq!(ended.str("reason")?, "ended");
    assert_eq!(h.call_record(&sid).await?["state"], "ended");

    // Bob rejects a second call: Python gets the Reject Forward.
    let call = py
        .call(json!({
            "cmd": "initiate", "encoding": "application/json", "caller": PY_CALLER,
            "token": "py-caller-token", "callee": BOB, "blob": "again",
        }))
        .await?;
    let sid = call["session-id"].as_str().context("sid")?.to_string();
    let ring = expect_push(&mut bob_push, "initiate").await?;
    assert_eq!(ring.str("session-id")?, sid);
    bob.reject(&ring, "busy", Some("in a meeting")).await?;
    let reject = py
        .call(json!({"cmd": "wait-forward", "action": "reject", "session-id": sid}))
        .await?;
    assert_eq!(reject["status"], 200);
    assert_eq!(reject["answering-provider"], "a.test");
    assert_eq!(reject["origin-state"], call["origin-state"]);
    assert_eq!(reject["reason"], "busy");
    assert_eq!(reject["reason-text"], "in a meeting");
    assert_eq!(h.call_record(&sid).await?["state"], "rejected");

    // Bob answers a third call and hangs up: Python gets a Cancel with its origin-state.
    let call = py
        .call(json!({
            "cmd": "initiate", "encoding": "application/x-plist", "caller": PY_CALLER,
            "token": "py-caller-token", "callee": BOB, "blob": "third",
        }))
        .await?;
    let sid = call["session-id"].as_str().context("sid")?.to_string();
    let ring = expect_push(&mut bob_push, "initiate").await?;
    bob.accept(&ring, b"ok").await?;
    py.call(json!({"cmd": "wait-forward", "action": "accept", "session-id": sid}))
        .await?;
    bob.cancel(&sid, BOB, PY_CALLER, ring.str("state")?).await?;
    let cancel = py
        .call(json!({"cmd": "wait-forward", "action": "cancel", "session-id": sid}))
        .await?;
    assert_eq!(cancel["status"], 200);
    assert_eq!(cancel["from-provider"], "a.test");
    assert_eq!(cancel["reason"], "ended");
    assert_eq!(cancel["origin-state"], call["origin-state"]);
    assert_eq!(h.call_record(&sid).await?["state"], "ended");

    // 4. Python as the answering provider (plist): Alice calls a URI only it hosts.
    let sid = session_id();
    let answer = alice
        .initiate(&sid, PY_USER, b"alice-offer", &["audio"])
        .await?;
    assert_eq!(answer.int("rung")?, 1);
    assert_eq!(answer.string_array("providers")?, ["py.test"]);
    let initiate = py
        .call(json!({"cmd": "wait-forward", "action": "initiate", "session-id": sid}))
        .await?;
    assert_eq!(initiate["encoding"], "application/x-plist");
    assert_eq!(initiate["originating-provider"], "a.test");
    assert_eq!(initiate["caller-uri"], ALICE);
    assert_eq!(initiate["callee-uri"], PY_USER);
    assert_eq!(initiate["caller-token"], alice.identity.push_token.as_str());
    assert_eq!(initiate["caller-blob"], hex(b"alice-offer"));
    assert_eq!(initiate["media"], json!(["audio"]));
    assert!(initiate["attestation"]
        .as_str()
        .is_some_and(|a| !a.is_empty()));
    py.call(json!({
        "cmd": "accept", "session-id": sid, "token": "py-callee-token",
        "blob": "py-answer", "tamper-checks": true,
    }))
    .await?;
    let accepted = expect_push(&mut alice_push, "accept").await?;
    assert_eq!(accepted.str("session-id")?, sid);
    assert_eq!(accepted.data("peer-blob")?, b"py-answer");
    assert_eq!(accepted.str("peer-token")?, "py-callee-token");
    assert_eq!(accepted.str("peer-provider")?, "py.test");
    assert_eq!(accepted.str("peer-uri")?, PY_USER);
    assert_eq!(h.call_record(&sid).await?["state"], "answered");
    py.call(json!({"cmd": "cancel", "session-id": sid, "reason": "ended", "as-answerer": true}))
        .await?;
    let ended = expect_push(&mut alice_push, "cancel").await?;
    assert_eq!(ended.str("session-id")?, sid);
    assert_eq!(ended.str("reason")?, "ended");
    assert_eq!(h.call_record(&sid).await?["state"], "ended");

    // A second call: Python rejects it.
    let sid = session_id();
    alice
        .initiate(&sid, PY_USER, b"alice-again", &["audio"])
        .await?;
    py.call(json!({"cmd": "wait-forward", "action": "initiate", "session-id": sid}))
        .await?;
    py.call(json!({
        "cmd": "reject", "session-id": sid, "reason": "declined", "text": "not now",
        "encoding": "application/json",
    }))
    .await?;
    let rejected = expect_push(&mut alice_push, "reject").await?;
    assert_eq!(rejected.str("session-id")?, sid);
    assert_eq!(rejected.str("reason")?, "declined");
    assert_eq!(rejected.str("reason-text")?, "not now");
    assert_eq!(rejected.str("peer-provider")?, "py.test");
    assert_eq!(h.call_record(&sid).await?["state"], "rejected");

    // A third call: Alice cancels while it rings; Python gets the Cancel Forward.
    let sid = session_id();
    let answer = alice.initiate(&sid, PY_USER, b"x", &["audio"]).await?;
    py.call(json!({"cmd": "wait-forward", "action": "initiate", "session-id": sid}))
        .await?;
    alice
        .cancel(&sid, ALICE, PY_USER, answer.str("state")?)
        .await?;
    let cancel = py
        .call(json!({"cmd": "wait-forward", "action": "cancel", "session-id": sid}))
        .await?;
    assert_eq!(cancel["from-provider"], "a.test");
    assert_eq!(cancel["reason"], "cancelled");
    assert!(cancel.get("origin-state").is_none(), "{cancel}");
    assert_eq!(h.call_record(&sid).await?["state"], "cancelled");

    // 5. Forwards A must refuse, each answered with an error dictionary.
    py.call(json!({"cmd": "errors", "caller": PY_CALLER, "callee": BOB, "nowhere": NOWHERE}))
        .await?;
    expect_silence(&mut bob_push).await?;
    Ok(())
}
