//! The client side of `bench/push/idle.sh`: opens many push WebSockets (`GET /v1/push`, mutual
//! TLS) to one provider and holds them idle, for the provider's memory per idle channel.
//!
//! `push_idle STATE_ROOT CONNECTIONS [SOURCES] [CONCURRENCY]`
//!
//! STATE_ROOT holds one folder per registered endpoint (`switchyard endpoint register --state`);
//! the connections go round them. Each comes from one of SOURCES loopback addresses (127.0.0.2,
//! 127.0.0.3, …; default 1): one source address has about 28,000 ephemeral ports. At most
//! CONCURRENCY (default 256) handshakes are in flight, so the provider's listener backlog and
//! handshake timeout hold.
//!
//! First one warm-up connection per endpoint is opened and `warm N` printed on stdout; the
//! client then waits for a line on stdin (the script reads the provider's memory), opens the
//! CONNECTIONS, prints `open N` and holds them until stdin ends. A channel the provider closes,
//! or anything it sends on an idle channel, counts as lost; any failed handshake or lost channel
//! makes the exit status 1.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rustls::pki_types::ServerName;
use switchyard_endpoint::client::{EndpointClient, EndpointIdentity};
use switchyard_protocol::dict::Encoding;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpSocket;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsConnector;

/// A provider's push channel as one endpoint opens it: its TLS configuration (its certificate)
/// and the upgrade request.
struct Channel {
    tls: TlsConnector,
    request: Vec<u8>,
}

/// The same limit as the provider's header timeout by default.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

fn channels(root: &Path) -> anyhow::Result<(SocketAddr, Vec<Channel>)> {
    let mut dirs = std::fs::read_dir(root)
        .with_context(|| format!("reading {}", root.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()?;
    dirs.sort();
    let mut provider = None;
    let mut channels = Vec::new();
    for dir in dirs {
        let identity = EndpointIdentity::load(&dir)?;
        let authority = identity
            .provider
            .strip_prefix("https://")
            .context("the provider's URL is not https://")?
            .to_string();
        provider.get_or_insert(authority.clone());
        // The endpoint crate's own TLS configuration (its certificate, the provider's CA,
        // HTTP/1.1 by ALPN); the socket is made here, to bind it to a source address.
        let tls = EndpointClient::new(identity, Encoding::Plist)?.tls_config();
        // An idle channel needs only the upgrade: no frame goes either way until a push. The
        // key is RFC 6455's example; the provider only answers it.
        let request = format!(
            "GET /v1/push?encoding=plist HTTP/1.1\r\nHost: {authority}\r\nConnection: Upgrade\r\n\
             Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        channels.push(Channel {
            tls: TlsConnector::from(tls),
            request: request.into_bytes(),
        });
    }
    let provider = provider.context("no endpoint folders")?;
    Ok((provider.parse()?, channels))
}

/// Leaves the choice of the source port to `connect` (Linux's `IP_BIND_ADDRESS_NO_PORT`): a
/// `bind` to port 0 picks one by searching every port bound on the address, which took most of
/// the client's CPU time (kernel time in `inet_csk_get_port`) by 10,000 connections.
fn bind_address_no_port(socket: &TcpSocket) -> std::io::Result<()> {
    const IPPROTO_IP: i32 = 0;
    const IP_BIND_ADDRESS_NO_PORT: i32 = 24;
    extern "C" {
        fn setsockopt(fd: i32, level: i32, name: i32, value: *const i32, len: u32) -> i32;
    }
    let on: i32 = 1;
    // SAFETY: the descriptor is the socket's own, open while it is borrowed; the value is an
    // int of the length given, as the option takes.
    let rc = unsafe {
        setsockopt(
            socket.as_raw_fd(),
            IPPROTO_IP,
            IP_BIND_ADDRESS_NO_PORT,
            &on,
            size_of::<i32>() as u32,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Opens one push WebSocket from `source` and holds it until `stop`; a channel that ends or
/// receives anything before counts in `lost`.
async fn open(
    channel: &Channel,
    provider: SocketAddr,
    source: IpAddr,
    stop: watch::Receiver<bool>,
    lost: Arc<AtomicUsize>,
) -> anyhow::Result<()> {
    let handshake = async {
        let socket = TcpSocket::new_v4()?;
        bind_address_no_port(&socket)?;
        socket.bind(SocketAddr::new(source, 0))?;
        let tcp = socket.connect(provider).await?;
        tcp.set_nodelay(true)?;
        let mut tls = channel
            .tls
            .connect(ServerName::from(provider.ip()), tcp)
            .await?;
        tls.write_all(&channel.request).await?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        // Byte by byte: nothing may be read past the response's head.
        while !head.ends_with(b"\r\n\r\n") {
            if tls.read(&mut byte).await? == 0 || head.len() > 4096 {
                bail!("no upgrade response: {:?}", String::from_utf8_lossy(&head));
            }
            head.push(byte[0]);
        }
        if !head.starts_with(b"HTTP/1.1 101 ") {
            let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
            bail!("upgrade refused: {}", String::from_utf8_lossy(line));
        }
        anyhow::Ok(tls)
    };
    let mut tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .context("handshake timed out")??;
    tokio::spawn(async move {
        let mut stop = stop;
        let mut byte = [0u8; 1];
        tokio::select! {
            read = tls.read(&mut byte) => {
                if lost.fetch_add(1, Ordering::Relaxed) == 0 {
                    eprintln!("push_idle: a channel from {source} ended or received data: {read:?}");
                }
            }
            _ = stop.wait_for(|s| *s) => {}
        }
    });
    Ok(())
}

/// What every connection shares: the endpoints, where they connect from and to, and how the
/// held channels are stopped and counted when lost.
struct Opener {
    channels: Vec<Channel>,
    provider: SocketAddr,
    sources: usize,
    concurrency: usize,
    stop: watch::Receiver<bool>,
    lost: Arc<AtomicUsize>,
}

/// Opens `count` channels, numbered from `first`, with at most `concurrency` handshakes at once;
/// stops at the first failure.
async fn open_all(opener: &Arc<Opener>, first: usize, count: usize) -> anyhow::Result<()> {
    let concurrency = opener.concurrency;
    let permits = Arc::new(Semaphore::new(concurrency));
    let opened = Arc::new(AtomicUsize::new(0));
    let (failed_tx, mut failed) = tokio::sync::mpsc::channel::<anyhow::Error>(1);
    let started = Instant::now();
    let progress = {
        let opened = opened.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            tick.tick().await;
            loop {
                tick.tick().await;
                let n = opened.load(Ordering::Relaxed);
                eprintln!(
                    "push_idle: {n} of {count} open ({:.0}/s)",
                    n as f64 / started.elapsed().as_secs_f64()
                );
            }
        })
    };
    for i in first..first + count {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit?,
            Some(e) = failed.recv() => { progress.abort(); return Err(e); }
        };
        let opener = opener.clone();
        let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % opener.sources) as u8));
        let (opened, failed_tx) = (opened.clone(), failed_tx.clone());
        tokio::spawn(async move {
            let channel = &opener.channels[i % opener.channels.len()];
            let (stop, lost) = (opener.stop.clone(), opener.lost.clone());
            match open(channel, opener.provider, source, stop, lost).await {
                Ok(()) => {
                    opened.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    let _ = failed_tx.try_send(e.context(format!(
                        "connection {i} from {source} ({} open)",
                        opened.load(Ordering::Relaxed)
                    )));
                }
            }
            drop(permit);
        });
    }
    // Every handshake has ended once all permits are back.
    let all = permits.acquire_many(concurrency as u32);
    let result = tokio::select! {
        _ = all => match failed.try_recv() {
            Ok(e) => Err(e),
            Err(_) => Ok(()),
        },
        Some(e) = failed.recv() => Err(e),
    };
    progress.abort();
    result
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // The cause chain on one line, without the backtrace anyhow adds under RUST_BACKTRACE.
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("push_idle: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let args = switchyard_tests::bench_arguments();
    let (Some(root), Some(count)) = (args.first(), args.get(1)) else {
        bail!("usage: push_idle STATE_ROOT CONNECTIONS [SOURCES] [CONCURRENCY]");
    };
    let count: usize = count.parse()?;
    let sources: usize = args.get(2).map(|a| a.parse()).transpose()?.unwrap_or(1);
    let concurrency: usize = args.get(3).map(|a| a.parse()).transpose()?.unwrap_or(256);
    if !(1..=250).contains(&sources) {
        bail!("SOURCES must be 1 to 250 (127.0.0.2 to 127.0.0.251)");
    }
    let (provider, channels) = channels(Path::new(root))?;
    let (stop_tx, stop) = watch::channel(false);
    let warm = channels.len();
    let opener = Arc::new(Opener {
        channels,
        provider,
        sources,
        concurrency,
        stop,
        lost: Arc::new(AtomicUsize::new(0)),
    });
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();

    open_all(&opener, 0, warm).await.context("warm-up")?;
    println!("warm {warm}");
    stdin.next_line().await?;

    let started = Instant::now();
    open_all(&opener, warm, count).await?;
    eprintln!(
        "push_idle: {count} channels open in {:.1} s ({:.0}/s) from {sources} source address(es), \
         {concurrency} handshakes at once",
        started.elapsed().as_secs_f64(),
        count as f64 / started.elapsed().as_secs_f64()
    );
    println!("open {count}");
    while stdin.next_line().await?.is_some() {}
    let _ = stop_tx.send(true);
    let lost = opener.lost.load(Ordering::Relaxed);
    if lost > 0 {
        bail!("{lost} of {} channels were lost while idle", warm + count);
    }
    Ok(())
}
