//! A host on a LAN of its own: a network namespace joined to the root namespace by a veth pair
//! on `10.202.N.0/24` (the root side `.1`, the namespace's `eth0` `.2`). Programs that must see a
//! real interface rather than loopback (baresip's ICE gathers no loopback candidates) run in it,
//! and reach what listens on the root side's address. Needs root, as the test script runs. The
//! names carry the process id and a counter, so runs never meet; dropped, the namespace takes its
//! end of the pair with it.

use std::net::IpAddr;
use std::process::Command;

use anyhow::{bail, Context};

pub struct Lan {
    namespace: String,
    /// The root namespace's address on the LAN.
    pub gateway: IpAddr,
    /// The namespace's address.
    pub host: IpAddr,
}

fn run(args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new(args[0])
        .args(&args[1..])
        .status()
        .with_context(|| format!("running {args:?}"))?;
    if !status.success() {
        bail!("{args:?} failed ({status})");
    }
    Ok(())
}

impl Lan {
    pub fn new(subnet: u8) -> anyhow::Result<Lan> {
        static BUILT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let built = BUILT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Interface names are 15 characters at most.
        let tag = format!("{:05}{built}", std::process::id() % 100_000);
        let lan = Lan {
            namespace: format!("sylan{tag}"),
            gateway: format!("10.202.{subnet}.1").parse()?,
            host: format!("10.202.{subnet}.2").parse()?,
        };
        run(&["ip", "netns", "add", &lan.namespace])?;
        let veth = format!("sylv{tag}");
        run(&[
            "ip",
            "link",
            "add",
            &veth,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &lan.namespace,
        ])?;
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", lan.gateway),
            "dev",
            &veth,
        ])?;
        run(&["ip", "link", "set", &veth, "up"])?;
        lan.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", lan.host),
            "dev",
            "eth0",
        ])?;
        lan.exec(&["ip", "link", "set", "eth0", "up"])?;
        lan.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(lan)
    }

    fn exec(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut full = vec!["ip", "netns", "exec", &self.namespace];
        full.extend(args);
        run(&full)
    }

    /// `program` to be run inside the namespace.
    pub fn command(&self, program: &str) -> tokio::process::Command {
        let mut command = tokio::process::Command::new("ip");
        command
            .args(["netns", "exec", &self.namespace])
            .arg(program);
        command
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.namespace])
            .status();
    }
}
