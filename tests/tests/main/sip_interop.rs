//! The SIP edge with real SIP programs: sipp (Debian's `sip-tester`, installed by
//! `scripts/ensure-packages.sh`) registers with digest authentication over UDP and TCP.

use std::process::Command;

use switchyard_tests::sip::{free_sip_port, sipp_scenario, SipProvider};

const PASSWORD: &str = "sipp-secret-1";

#[tokio::test]
async fn sipp_registers_with_digest_over_udp_and_tcp() -> anyhow::Result<()> {
    let edge = SipProvider::start("a.test", "bob", PASSWORD, &["tel:+16502530002"], |_| {}).await?;
    let logs = tempfile::tempdir()?;
    std::fs::write(
        logs.path().join("accounts.csv"),
        format!("SEQUENTIAL\nbob;[authentication username=bob password={PASSWORD}]\n"),
    )?;
    for (transport, server) in [("u1", edge.udp), ("t1", edge.tcp)] {
        let output = tokio::task::spawn_blocking({
            let logs = logs.path().to_path_buf();
            move || {
                Command::new("sipp")
                    .arg(server.to_string())
                    .args(["-sf"])
                    .arg(sipp_scenario("register"))
                    .args(["-inf"])
                    .arg(logs.join("accounts.csv"))
                    .args(["-key", "domain", "a.test", "-auth_uri", "a.test"])
                    .args(["-t", transport, "-i", "127.0.0.1"])
                    .args(["-p", &free_sip_port().to_string()])
                    .args(["-m", "20", "-r", "50", "-timeout", "30s", "-nostdin"])
                    .args(["-trace_err", "-error_file"])
                    .arg(logs.join(format!("{transport}-errors.log")))
                    .current_dir(&logs)
                    .output()
            }
        })
        .await??;
        let errors = std::fs::read_to_string(logs.path().join(format!("{transport}-errors.log")))
            .unwrap_or_default();
        assert!(
            output.status.success(),
            "sipp over {transport} failed ({:?}):\n{}\n{}\n{errors}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let contacts = edge.contacts().await?;
    assert!(
        contacts
            .iter()
            .any(|c| c["user_agent"] == "sipp" && c["transport"] == "udp"),
        "{contacts:?}"
    );
    assert!(
        contacts
            .iter()
            .any(|c| c["user_agent"] == "sipp" && c["transport"] == "tcp"),
        "{contacts:?}"
    );
    edge.h.provider.shutdown().await;
    Ok(())
}
