//! Two real softphones across the federation: baresip (Debian's, installed by
//! `scripts/ensure-packages.sh`) registers Alice at provider A and Bob at provider B; Alice dials
//! Bob's `mailto:` address as a SIP URI, Bob's phone answers, and each phone must hear the other's
//! tone (`tests/interop/baresip/tone.py`), through the media anchors of both providers. The recipe and baresip's quirks are in
//! `tests/interop/baresip/README.md`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use switchyard_provider::sip::digest::Algorithm;
use switchyard_tests::federation::{ProviderSpec, TestFederation};
use switchyard_tests::sip::sip_alice_and_bob;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const PASSWORD: &str = "baresip-secret-1";
/// The tones each phone sends, so each recording shows which way the audio went.
const ALICE_HZ: u32 = 1000;
const BOB_HZ: u32 = 600;

fn interop(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("interop/baresip/{file}"))
}

/// A baresip process and everything it printed so far.
struct Phone {
    name: &'static str,
    child: Child,
    output: Arc<Mutex<String>>,
    recordings: PathBuf,
}

impl Phone {
    /// Writes the phone's configuration into `dir` (see the recipe) and starts it; `dial` is a
    /// URI to call once it is up.
    async fn start(
        name: &'static str,
        dir: &Path,
        aor: &str,
        proxy: std::net::SocketAddr,
        tone_hz: u32,
        dial: Option<&str>,
        stop_after: Duration,
    ) -> anyhow::Result<Phone> {
        std::fs::create_dir_all(dir)?;
        let recordings = dir.join("recordings");
        std::fs::create_dir_all(&recordings)?;
        let tone = dir.join("tone.wav");
        let status = std::process::Command::new("python3")
            .arg(interop("tone.py"))
            .arg("write")
            .arg(&tone)
            .arg("60")
            .arg(tone_hz.to_string())
            .status()?;
        if !status.success() {
            bail!("tone.py write failed");
        }
        let config = format!(
            "poll_method\tepoll\nsip_listen\t127.0.0.1:0\nnet_interface\t127.0.0.1\n\
             call_local_timeout\t120\ncall_max_calls\t4\naudio_player\taubridge,{name}\n\
             audio_alert\taubridge,{name}\naudio_source\taufile,{tone}\naudio_level\tno\n\
             ausrc_format\ts16\nauplay_format\ts16\nauenc_format\ts16\naudec_format\ts16\n\
             audio_buffer\t20-160\nrtp_ports\t20000-29999\nrtcp_mux\tno\n\
             jitter_buffer_delay\t5-10\nrtp_stats\tno\nrtp_timeout\t10\nstatmode_default\toff\n\
             ringback_disabled\tyes\nmodule_path\t/usr/lib/baresip/modules\nmodule\tg711.so\n\
             module\taufile.so\nmodule\taubridge.so\nmodule\tsndfile.so\n\
             module_tmp\taccount.so\nmodule_app\tmenu.so\nsnd_path\t{recordings}\n",
            tone = tone.display(),
            recordings = recordings.display(),
        );
        std::fs::write(dir.join("config"), config)?;
        std::fs::write(
            dir.join("accounts"),
            format!(
                "<{aor}>;auth_pass={PASSWORD};outbound=\"sip:{proxy}\";regint=600;\
                 answermode=auto;audio_codecs=pcmu\n"
            ),
        )?;
        std::fs::write(dir.join("contacts"), "")?;
        let mut command = Command::new("baresip");
        command
            .arg("-f")
            .arg(dir)
            .arg("-t")
            .arg(stop_after.as_secs().to_string());
        if let Some(uri) = dial {
            command.arg("-e").arg(format!("/dial {uri}"));
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting baresip")?;
        let output = Arc::new(Mutex::new(String::new()));
        let mut lines = BufReader::new(child.stdout.take().context("baresip stdout")?).lines();
        let sink = output.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let mut out = sink.lock().expect("phone output");
                out.push_str(&line);
                out.push('\n');
            }
        });
        Ok(Phone {
            name,
            child,
            output,
            recordings,
        })
    }

    fn output(&self) -> String {
        self.output.lock().expect("phone output").clone()
    }

    async fn wait_for(&self, what: &str, wait: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + wait;
        while tokio::time::Instant::now() < deadline {
            if self.output().contains(what) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!(
            "{} never printed `{what}`; its output:\n{}",
            self.name,
            self.output()
        )
    }

    /// Checks that this phone decoded `hz` (the other phone's tone) from the call's RTP.
    fn assert_heard(&self, hz: u32) -> anyhow::Result<()> {
        let decoded: Vec<PathBuf> = std::fs::read_dir(&self.recordings)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.to_string_lossy().ends_with("-dec.wav"))
            .collect();
        let [recording] = decoded.as_slice() else {
            bail!(
                "{} should have recorded one call, found {decoded:?}; its output:\n{}",
                self.name,
                self.output()
            );
        };
        let check = std::process::Command::new("python3")
            .arg(interop("tone.py"))
            .arg("check")
            .arg(recording)
            .arg(hz.to_string())
            .output()?;
        if !check.status.success() {
            bail!(
                "{} did not hear the {hz} Hz tone: {}{}",
                self.name,
                String::from_utf8_lossy(&check.stdout),
                String::from_utf8_lossy(&check.stderr)
            );
        }
        Ok(())
    }
}

#[tokio::test]
async fn baresip_phones_at_two_providers_talk() -> anyhow::Result<()> {
    // baresip 1.0 gives up on a SHA-256 digest challenge, so these providers offer MD5 only.
    let md5_only: fn(&mut switchyard_provider::Config) = |config| {
        config.sip.digest_algorithms = vec![Algorithm::Md5];
    };
    let fed = TestFederation::start(&[
        ProviderSpec::plist("a.test").with_sip().tune(md5_only),
        ProviderSpec::plist("b.test").with_sip().tune(md5_only),
    ])
    .await?;
    sip_alice_and_bob(&fed, PASSWORD).await?;
    let proxy = |id: &str| {
        fed.provider(id)
            .provider
            .sip_udp_addr
            .expect("SIP over UDP")
    };
    let dir = tempfile::tempdir()?;

    let bob = Phone::start(
        "bob",
        &dir.path().join("bob"),
        "sip:bob@b.test",
        proxy("b.test"),
        BOB_HZ,
        None,
        Duration::from_secs(40),
    )
    .await?;
    bob.wait_for("} 200 OK", Duration::from_secs(10)).await?;

    // Alice dials Bob's mailto: address as a SIP URI; her phone hangs up when it stops, 6 s in.
    let mut alice = Phone::start(
        "alice",
        &dir.path().join("alice"),
        "sip:alice@a.test",
        proxy("a.test"),
        ALICE_HZ,
        Some("sip:bob@b.example"),
        Duration::from_secs(6),
    )
    .await?;
    alice
        .wait_for("Call established", Duration::from_secs(10))
        .await?;
    bob.wait_for("Call established", Duration::from_secs(5))
        .await?;
    alice
        .wait_for(
            "incoming rtp for 'audio' established",
            Duration::from_secs(5),
        )
        .await?;
    bob.wait_for(
        "incoming rtp for 'audio' established",
        Duration::from_secs(5),
    )
    .await?;
    let status = tokio::time::timeout(Duration::from_secs(20), alice.child.wait())
        .await
        .context("alice's baresip did not stop")??;
    assert!(
        status.success(),
        "alice's baresip: {status}\n{}",
        alice.output()
    );
    // Alice's hang-up reaches Bob's phone through both providers as a BYE.
    bob.wait_for("terminated (duration", Duration::from_secs(10))
        .await?;
    alice.assert_heard(BOB_HZ)?;
    bob.assert_heard(ALICE_HZ)?;
    // Neither phone does ICE, so both providers anchored the media (sip.anchor_media = auto):
    // the tones went phone → A's anchor → B's anchor → phone and back.
    let metrics = fed.provider("a.test").metrics().await?;
    let anchored: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("switchyard_sip_anchored_packets_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    // Two tones of about 3 s, 50 packets a second, each through two anchors.
    assert!(anchored > 400.0, "anchored packets: {anchored}\n{metrics}");

    let calls = fed.provider("a.test").calls().await?;
    assert!(
        calls
            .iter()
            .any(|c| c["state"] == "ended" && c["outcome_reason"] == "caller-hung-up"),
        "{calls:?}"
    );
    drop(bob);
    fed.shutdown().await;
    Ok(())
}
