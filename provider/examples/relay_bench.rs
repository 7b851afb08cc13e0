//! The relay benchmark's two halves (driven by `bench/relay/run.sh`):
//!
//! - `relay_bench serve <listen> <secret> <realm> <dir>`: a Switchyard TURN relay
//!   ([`switchyard_provider::relay::Relay`], loopback peers allowed, quotas out of the way) with
//!   its SQLite database in `<dir>`. Credentials use the REST scheme with the endpoint id `bench`,
//!   which is marked active. Prints `ready <addr>` and runs until killed.
//! - `relay_bench load <server> <secret> <realm> <payload bytes> <clients> <seconds> [<pkt/s>]`: the load
//!   generator, the same for any TURN server using the REST credential scheme (Switchyard, coturn
//!   with `--use-auth-secret`). `<clients>` allocations (the `turn` crate client), each with a
//!   channel bound to one loopback UDP sink peer; then one thread sends ChannelData frames round
//!   robin over the clients' sockets at `<pkt/s>` (0 or absent: as fast as it can) for `<seconds>`,
//!   and the sink counts what the
//!   relay delivered. Prints `sent <pkt/s> received <pkt/s> <payload Mbit/s> loss <%>`; the
//!   count window starts 0.5 s after sending starts.
//! - `relay_bench allocs <server> <secret> <realm> <n> <hold seconds>`: `<n>` allocations, held
//!   (each with its own socket and client) for `<hold seconds>`; prints `allocated <n>` once they
//!   are all up (the memory-per-allocation figure is the server's RSS before and after).

use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use switchyard_provider::db::Db;
use switchyard_provider::relay::auth::{rest_password, rest_username, unix_now};
use switchyard_provider::relay::turn::client::Client;
use switchyard_provider::relay::webrtc_util::Conn;
use switchyard_provider::relay::Relay;
use switchyard_provider::Config;
use tokio::net::UdpSocket;

const ENDPOINT: &str = "bench";
/// The first channel number the `turn` client assigns (its only binding here goes to the sink).
const CHANNEL: u16 = 0x4000;

fn arg<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> anyhow::Result<T> {
    args.get(i)
        .with_context(|| format!("missing {what}"))?
        .parse()
        .map_err(|_| anyhow::anyhow!("bad {what}: {}", args[i]))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("serve") => serve(&args).await,
        Some("load") => load(&args).await,
        Some("allocs") => allocs(&args).await,
        _ => bail!("usage: relay_bench serve|load|allocs ... (see the source)"),
    }
}

async fn serve(args: &[String]) -> anyhow::Result<()> {
    let listen: SocketAddr = arg(args, 2, "listen address")?;
    let secret: String = arg(args, 3, "secret")?;
    let realm: String = arg(args, 4, "realm")?;
    let dir: std::path::PathBuf = arg(args, 5, "directory")?;
    std::fs::create_dir_all(&dir)?;
    let secret_path = dir.join("relay-secret");
    std::fs::write(&secret_path, format!("{secret}\n"))?;
    let mut config = Config {
        data_dir: dir.clone(),
        ..Config::default()
    };
    config.relay.enabled = true;
    config.relay.listen = listen;
    config.relay.realm = Some(realm);
    config.relay.secret = Some(secret_path);
    config.relay.allow_loopback_peers = true;
    config.relay.max_allocations = 100_000;
    config.relay.max_allocations_per_endpoint = 100_000;
    // The load generator is one source: the per-source Allocate rate is lifted.
    config.relay.allocations_per_second_per_source = 1_000_000;
    config.relay.allocation_burst_per_source = 1_000_000;
    config.relay.credential_ttl_seconds = 86_400;
    // The endpoint `bench` is not in the database: keep the revocation re-check from finding out.
    config.push.recheck_interval_ms = 86_400_000;
    let db = Db::connect(&format!("sqlite://{}/bench.db", dir.display()), 2).await?;
    let relay = Relay::start(&config, db, None).await?;
    // The re-check's first tick fires at once; mark the endpoint active after it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    relay.state.issue(ENDPOINT, unix_now() + 86_400);
    println!("ready {}", relay.addr);
    tokio::signal::ctrl_c().await?;
    relay.shutdown().await;
    Ok(())
}

struct Allocation {
    client: Client,
    relayed: Box<dyn Conn + Send + Sync>,
    /// The client's socket, for sending ChannelData frames directly.
    raw: StdUdpSocket,
}

async fn allocate(server: SocketAddr, secret: &str, realm: &str) -> anyhow::Result<Allocation> {
    let std_socket = StdUdpSocket::bind("127.0.0.1:0")?;
    std_socket.set_nonblocking(true)?;
    let raw = std_socket.try_clone()?;
    let conn = UdpSocket::from_std(std_socket)?;
    let username = rest_username(unix_now() + 3600, ENDPOINT);
    let password = rest_password(secret.as_bytes(), &username);
    let client = switchyard_provider::relay::turn_client(
        server,
        &username,
        &password,
        realm,
        Arc::new(conn),
    )
    .await?;
    let relayed = tokio::time::timeout(Duration::from_secs(10), client.allocate())
        .await
        .context("allocate timed out")??;
    Ok(Allocation {
        client,
        relayed: Box::new(relayed),
        raw,
    })
}

/// [`allocate`], retried on a fresh socket: a new socket can reuse the port of one whose
/// allocation (from an earlier run) the server still holds, which it refuses (437).
async fn allocate_retrying(
    server: SocketAddr,
    secret: &str,
    realm: &str,
) -> anyhow::Result<Allocation> {
    let mut last = None;
    for _ in 0..5 {
        match allocate(server, secret, realm).await {
            Ok(a) => return Ok(a),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("at least one attempt"))
}

/// Deletes the allocations (Refresh with lifetime 0) so that the next run starts clean.
async fn release(allocations: Vec<Allocation>) {
    for a in allocations {
        let _ = a.relayed.close().await;
        let _ = a.client.close().await;
    }
}

async fn allocate_many(
    server: SocketAddr,
    secret: &str,
    realm: &str,
    n: usize,
) -> anyhow::Result<Vec<Allocation>> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let batch = (n - out.len()).min(50);
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..batch {
            let (secret, realm) = (secret.to_string(), realm.to_string());
            set.spawn(async move { allocate_retrying(server, &secret, &realm).await });
        }
        while let Some(a) = set.join_next().await {
            out.push(a??);
        }
    }
    Ok(out)
}

fn channel_data(payload: usize) -> Vec<u8> {
    let mut frame = Vec::with_capacity(4 + payload + 3);
    frame.extend_from_slice(&CHANNEL.to_be_bytes());
    frame.extend_from_slice(&(payload as u16).to_be_bytes());
    frame.extend((0..payload).map(|i| i as u8));
    while frame.len() % 4 != 0 {
        frame.push(0);
    }
    frame
}

async fn load(args: &[String]) -> anyhow::Result<()> {
    let server: SocketAddr = arg(args, 2, "server address")?;
    let secret: String = arg(args, 3, "secret")?;
    let realm: String = arg(args, 4, "realm")?;
    let payload: usize = arg(args, 5, "payload size")?;
    let clients: usize = arg(args, 6, "client count")?;
    let seconds: f64 = arg(args, 7, "seconds")?;
    let rate: f64 = if args.len() > 8 {
        arg(args, 8, "rate")?
    } else {
        0.0
    };

    // The sink peer: counts datagrams of the expected size on a thread of its own.
    let sink = StdUdpSocket::bind("127.0.0.1:0")?;
    sink.set_read_timeout(Some(Duration::from_millis(100)))?;
    let sink_addr = sink.local_addr()?;
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let counter = {
        let (received, stop) = (received.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                if let Ok(n) = sink.recv(&mut buf) {
                    if n == payload {
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };

    let allocations = allocate_many(server, &secret, &realm, clients).await?;
    // Through the client: a permission, then a channel bind in the background (the first
    // datagrams go as Send indications).
    for a in &allocations {
        a.relayed.send_to(&vec![0u8; payload], sink_addr).await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for a in &allocations {
        a.relayed.send_to(&vec![0u8; payload], sink_addr).await?;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Raw ChannelData on channel 0x4000 must now reach the sink from every allocation.
    let frame = channel_data(payload);
    let before = received.load(Ordering::Relaxed);
    for a in &allocations {
        a.raw.send_to(&frame, server)?;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = received.load(Ordering::Relaxed) - before;
    if got < clients as u64 {
        bail!("only {got} of {clients} ChannelData probes reached the sink: channels not bound?");
    }

    let raws: Vec<StdUdpSocket> = allocations
        .iter()
        .map(|a| a.raw.try_clone())
        .collect::<Result<_, _>>()?;
    let duration = Duration::from_secs_f64(seconds);
    let sender = std::thread::spawn(move || {
        let start = Instant::now();
        let mut sent = 0u64;
        let mut would_block = 0u64;
        'outer: loop {
            for s in &raws {
                match s.send_to(&frame, server) {
                    Ok(_) => sent += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        would_block += 1;
                        std::thread::yield_now();
                    }
                    Err(_) => {}
                }
            }
            let elapsed = start.elapsed();
            if elapsed >= duration {
                break 'outer;
            }
            if rate > 0.0 {
                // Paced: sleep off any lead over the schedule (the sink shares this core).
                let due = Duration::from_secs_f64(sent as f64 / rate);
                if due > elapsed + Duration::from_micros(200) {
                    std::thread::sleep(due - elapsed);
                }
            }
        }
        (sent, start.elapsed(), would_block)
    });
    let warmup = Duration::from_millis(500).min(duration / 4);
    tokio::time::sleep(warmup).await;
    let (c0, t0) = (received.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(duration - warmup).await;
    let (c1, t1) = (received.load(Ordering::Relaxed), Instant::now());
    let (sent, elapsed, _would_block) = sender.join().expect("sender thread");
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    counter.join().expect("sink thread");
    let total = received.load(Ordering::Relaxed) - before - got;
    let sent_pps = sent as f64 / elapsed.as_secs_f64();
    let pps = (c1 - c0) as f64 / (t1 - t0).as_secs_f64();
    let loss = 100.0 * (1.0 - total as f64 / sent as f64);
    println!(
        "sent {sent_pps:.0} received {pps:.0} {:.1} loss {loss:.1}",
        pps * payload as f64 * 8.0 / 1e6
    );
    let _ = tokio::time::timeout(Duration::from_secs(10), release(allocations)).await;
    Ok(())
}

async fn allocs(args: &[String]) -> anyhow::Result<()> {
    let server: SocketAddr = arg(args, 2, "server address")?;
    let secret: String = arg(args, 3, "secret")?;
    let realm: String = arg(args, 4, "realm")?;
    let n: usize = arg(args, 5, "allocation count")?;
    let hold: f64 = arg(args, 6, "hold seconds")?;
    let start = Instant::now();
    let allocations = allocate_many(server, &secret, &realm, n).await?;
    println!(
        "allocated {} in {:.2} s",
        allocations.len(),
        start.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs_f64(hold)).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), release(allocations)).await;
    Ok(())
}
