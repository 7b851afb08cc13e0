//! Two real softphones across the federation: baresip (Debian's, installed by
//! `scripts/ensure-packages.sh`) registers Alice at provider A and Bob at provider B; Alice dials
//! Bob's `mailto:` address as a SIP URI, Bob's phone answers, and each phone must hear the other's
//! tone (`tests/interop/baresip/tone.py`), through the media anchors of both providers. The recipe and baresip's quirks are in
//! `tests/interop/baresip/README.md`.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use switchyard_endpoint::client::PushMode;
use switchyard_endpoint::media::{self as endpoint_media, MediaOptions};
use switchyard_media::session::{MediaCall, MediaEvent, Peer};
use switchyard_protocol::capabilities::MediaKind;
use switchyard_protocol::dict::Encoding;
use switchyard_provider::sip::digest::Algorithm;
use switchyard_tests::federation::{ProviderSpec, TestFederation, ALICE, BOB};
use switchyard_tests::netns::Lan;
use switchyard_tests::sip::{add_account, sip_alice_and_bob};
use switchyard_tests::{expect_push, session_id};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const PASSWORD: &str = "baresip-secret-1";
/// The tones each phone sends, so each recording shows which way the audio went.
const ALICE_HZ: u32 = 1000;
const BOB_HZ: u32 = 600;

fn interop(file: &str) -> PathBuf {
    switchyard_tests::manifest_dir().join(format!("interop/baresip/{file}"))
}

/// A baresip process and everything it printed so far.
struct Phone {
    name: &'static str,
    child: Child,
    output: Arc<Mutex<String>>,
    recordings: PathBuf,
}

/// How a phone runs.
struct PhoneSpec<'a> {
    name: &'static str,
    aor: &'a str,
    proxy: SocketAddr,
    tone_hz: u32,
    /// A URI to call once it is up.
    dial: Option<&'a str>,
    /// When baresip stops (hanging up its call).
    stop_after: Duration,
    /// On a LAN of its own, with ICE and DTLS-SRTP (the media a native endpoint takes);
    /// otherwise on loopback, without ICE.
    lan: Option<&'a Lan>,
    /// Without ICE: DTLS-SRTP rather than plain RTP.
    dtls_srtp: bool,
}

impl Phone {
    /// Writes the phone's configuration into `dir` (see the recipe) and starts it.
    async fn start(dir: &Path, spec: PhoneSpec<'_>) -> anyhow::Result<Phone> {
        let PhoneSpec {
            name,
            aor,
            proxy,
            tone_hz,
            dial,
            stop_after,
            lan,
            dtls_srtp,
        } = spec;
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
        let (address, rtcp_mux, secure_modules, secure_params) = match lan {
            Some(lan) => (
                lan.host,
                "yes",
                "module\tice.so\nmodule\tdtls_srtp.so\n",
                ";medianat=ice;mediaenc=dtls_srtp",
            ),
            None if dtls_srtp => (
                IpAddr::from([127, 0, 0, 1]),
                "no",
                "module\tdtls_srtp.so\n",
                ";mediaenc=dtls_srtp",
            ),
            None => (IpAddr::from([127, 0, 0, 1]), "no", "", ""),
        };
        let config = format!(
            "poll_method\tepoll\nsip_listen\t{address}:0\nnet_interface\t{address}\n\
             call_local_timeout\t120\ncall_max_calls\t4\naudio_player\taubridge,{name}\n\
             audio_alert\taubridge,{name}\naudio_source\taufile,{tone}\naudio_level\tno\n\
             ausrc_format\ts16\nauplay_format\ts16\nauenc_format\ts16\naudec_format\ts16\n\
             audio_buffer\t20-160\nrtp_ports\t20000-29999\nrtcp_mux\t{rtcp_mux}\n\
             jitter_buffer_delay\t5-10\nrtp_stats\tno\nrtp_timeout\t10\nstatmode_default\toff\n\
             ringback_disabled\tyes\nmodule_path\t/usr/lib/baresip/modules\nmodule\tg711.so\n\
             module\taufile.so\nmodule\taubridge.so\nmodule\tsndfile.so\n{secure_modules}\
             module_tmp\taccount.so\nmodule_app\tmenu.so\nsnd_path\t{recordings}\n",
            tone = tone.display(),
            recordings = recordings.display(),
        );
        std::fs::write(dir.join("config"), config)?;
        std::fs::write(
            dir.join("accounts"),
            format!(
                "<{aor}>;auth_pass={PASSWORD};outbound=\"sip:{proxy}\";regint=600;\
                 answermode=auto;audio_codecs=pcmu{secure_params}\n"
            ),
        )?;
        std::fs::write(dir.join("contacts"), "")?;
        let mut command = match lan {
            Some(lan) => lan.command("baresip"),
            None => Command::new("baresip"),
        };
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
    phones_at_two_providers_talk(false).await
}

/// The same with DTLS-SRTP and no ICE: the anchors forward the phones' DTLS handshake (RTP's and
/// RTCP's, without rtcp-mux) and SRTP untouched, holding no key.
#[tokio::test]
async fn dtls_srtp_phones_talk_through_the_anchors() -> anyhow::Result<()> {
    phones_at_two_providers_talk(true).await
}

async fn phones_at_two_providers_talk(dtls_srtp: bool) -> anyhow::Result<()> {
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
        &dir.path().join("bob"),
        PhoneSpec {
            name: "bob",
            aor: "sip:bob@b.test",
            proxy: proxy("b.test"),
            tone_hz: BOB_HZ,
            dial: None,
            stop_after: Duration::from_secs(40),
            lan: None,
            dtls_srtp,
        },
    )
    .await?;
    bob.wait_for("} 200 OK", Duration::from_secs(10)).await?;

    // Alice dials Bob's mailto: address as a SIP URI; her phone hangs up when it stops, 6 s in.
    let mut alice = Phone::start(
        &dir.path().join("alice"),
        PhoneSpec {
            name: "alice",
            aor: "sip:alice@a.test",
            proxy: proxy("a.test"),
            tone_hz: ALICE_HZ,
            dial: Some("sip:bob@b.example"),
            stop_after: Duration::from_secs(6),
            lan: None,
            dtls_srtp,
        },
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

/// The LAN of [`a_phone_and_a_native_endpoint_call_each_other`]: provider A's SIP edge and Bob's
/// media listen on its root side, the phone lives on the other.
const PHONE_LAN: u8 = 7;

/// Waits (up to 15 s) for the media of a call with a phone to be secured, negotiated as PCMU,
/// and to have brought at least 100 authenticated packets from the phone; returns the
/// address the checks chose.
async fn phone_media_flows(call: &mut MediaCall, phone: &Phone) -> anyhow::Result<SocketAddr> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let (mut path, mut secured, mut negotiated) = (None, false, false);
    while !(secured && negotiated && path.is_some()) {
        let event = tokio::time::timeout_at(deadline, call.next_event())
            .await
            .with_context(|| format!("media events stopped; the phone said:\n{}", phone.output()))?
            .context("the media session ended")?;
        match event {
            MediaEvent::PathSelected { remote_address, .. } => path = Some(remote_address),
            MediaEvent::Secured { .. } => secured = true,
            MediaEvent::Negotiated { audio, video } => {
                assert_eq!((audio.as_deref(), video), (Some("PCMU"), None));
                negotiated = true;
            }
            MediaEvent::Failed(why) => bail!("media failed: {why}\n{}", phone.output()),
            _ => {}
        }
    }
    while call.stats().audio.packets_received < 100 {
        if tokio::time::Instant::now() > deadline {
            bail!("too little audio from the phone: {:?}", call.stats());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stats = call.stats();
    assert_eq!(stats.srtp_failures, 0, "{stats:?}");
    assert!(stats.audio.packets_sent >= 100, "{stats:?}");
    phone
        .wait_for("DTLS-SRTP complete", Duration::from_secs(1))
        .await?;
    // The phone decrypted our SRTP: its RTP stream is up.
    phone
        .wait_for(
            "incoming rtp for 'audio' established",
            Duration::from_secs(1),
        )
        .await?;
    path.context("no path")
}

/// A baresip phone with ICE and DTLS-SRTP registered at provider A, and Bob's native endpoint
/// at provider B, call each other: the phone's SDP offer is Bob's peer blob and his SDP answer
/// goes back in the 200 OK; then Bob's blob carries an SDP offer the phone answers. Media runs
/// straight between them (the edge anchors nothing: the phone does ICE), encrypted end to end
/// with keys from a DTLS handshake checked against the fingerprints of the SDP.
#[tokio::test]
async fn a_phone_and_a_native_endpoint_call_each_other() -> anyhow::Result<()> {
    // The phone is on a LAN of its own: baresip's ICE gathers no loopback candidates.
    let lan = Lan::new(PHONE_LAN)?;
    let sip_on_the_lan: fn(&mut switchyard_provider::Config) = |config| {
        config.sip.digest_algorithms = vec![Algorithm::Md5];
        config.sip.udp_listen = SocketAddr::from(([10, 202, PHONE_LAN, 1], 0));
    };
    let fed = TestFederation::start(&[
        ProviderSpec::plist("a.test")
            .with_sip()
            .tune(sip_on_the_lan),
        ProviderSpec::plist("b.test"),
    ])
    .await?;
    assert_eq!(
        fed.provider("a.test").provider.sip_udp_addr.map(|a| a.ip()),
        Some(lan.gateway)
    );
    let (a, b) = (fed.provider("a.test"), fed.provider("b.test"));
    let alice_user = a.add_user("Alice", &[ALICE]).await?;
    add_account(a, &alice_user, "sip:alice@a.test", PASSWORD).await?;
    let bob_user = b.add_user("Bob", &[BOB]).await?;
    let bob = b.endpoint(&bob_user, BOB, None, Encoding::Plist).await?;
    fed.sync().await?;
    let mut bob_push = bob.push_channel(PushMode::WebSocket).await?;
    let options = MediaOptions {
        address: lan.gateway,
        relay_only: false,
        mute_video_after: None,
        http_relay: None,
    };
    let proxy = a.provider.sip_udp_addr.context("SIP over UDP")?;
    let dir = tempfile::tempdir()?;

    // The phone calls Bob's mailto: address; it hangs up when it stops, 10 s in.
    let mut phone = Phone::start(
        &dir.path().join("caller"),
        PhoneSpec {
            name: "alice",
            aor: "sip:alice@a.test",
            proxy,
            tone_hz: ALICE_HZ,
            dial: Some("sip:bob@b.example"),
            stop_after: Duration::from_secs(10),
            lan: Some(&lan),
            dtls_srtp: true,
        },
    )
    .await?;
    let ring = expect_push(&mut bob_push, "initiate").await?;
    let Peer::Sdp(offer) = endpoint_media::peer(&ring)? else {
        bail!("the phone's blob is not an SDP blob");
    };
    assert!(offer.contains("a=ice-ufrag:"), "{offer}");
    let (mut media, _) = endpoint_media::prepare(
        &bob,
        BOB,
        endpoint_media::media_kinds(&ring)?,
        &options,
        ring.opt_str("relay-provider")?,
    )
    .await?;
    media.answer_sdp(&offer)?;
    bob.accept(&ring, &media.blob().to_bytes()).await?;
    let mut call = endpoint_media::start(media, false, &ring)?;
    let path = phone_media_flows(&mut call, &phone).await?;
    assert_eq!(path.ip(), lan.host, "straight to the phone");
    phone
        .wait_for("Call established", Duration::from_secs(1))
        .await?;
    // The phone's BYE ends the call at Bob's end too.
    let ended = expect_push(&mut bob_push, "cancel").await?;
    assert_eq!(ended.str("reason")?, "ended");
    let status = tokio::time::timeout(Duration::from_secs(20), phone.child.wait())
        .await
        .context("the phone did not stop")??;
    assert!(status.success(), "{status}\n{}", phone.output());
    call.close().await;

    // Bob calls the phone, which answers at once.
    let phone = Phone::start(
        &dir.path().join("callee"),
        PhoneSpec {
            name: "alice",
            aor: "sip:alice@a.test",
            proxy,
            tone_hz: ALICE_HZ,
            dial: None,
            stop_after: Duration::from_secs(40),
            lan: Some(&lan),
            dtls_srtp: true,
        },
    )
    .await?;
    phone.wait_for("} 200 OK", Duration::from_secs(10)).await?;
    let (mut media, _) =
        endpoint_media::prepare(&bob, BOB, vec![MediaKind::Audio], &options, None).await?;
    media.offer_sdp()?;
    let sid = session_id();
    bob.initiate(&sid, ALICE, &media.blob().to_bytes(), &["audio"])
        .await?;
    let accepted = expect_push(&mut bob_push, "accept").await?;
    assert!(matches!(endpoint_media::peer(&accepted)?, Peer::Sdp(_)));
    let mut call = endpoint_media::start(media, true, &accepted)?;
    let path = phone_media_flows(&mut call, &phone).await?;
    assert_eq!(path.ip(), lan.host, "straight to the phone");
    // Bob hangs up: the edge sends the phone a BYE.
    call.hang_up();
    bob.cancel(
        &sid,
        accepted.str("self-uri")?,
        accepted.str("peer-uri")?,
        accepted.str("state")?,
    )
    .await?;
    phone
        .wait_for("terminated (duration", Duration::from_secs(10))
        .await?;
    call.close().await;
    drop(phone);
    fed.shutdown().await;
    Ok(())
}
