//! Cross-provider call set-ups per second: an endpoint at provider A calls an endpoint at
//! provider B (Initiate Request → Initiate Forward → Initiate Push → Accept Request → Accept
//! Forward → Accept Push), measured from the Initiate Request to the caller's Accept Push.
//!
//! Both providers, their databases (SQLite by default, `SYTEST_DATABASE=postgres` for
//! PostgreSQL) and the endpoints run in this process on loopback, over real mutual TLS.
//!
//! `cargo bench -p switchyard-tests --bench call_setup [-- CALLS CONCURRENCY]`

use std::time::{Duration, Instant};

use switchyard_endpoint::client::PushMode;
use switchyard_protocol::dict::Encoding;
use switchyard_tests::federation::{ProviderSpec, TestFederation};
use switchyard_tests::{expect_push, session_id};

/// The daemon's allocator (`switchyard`'s `main.rs`), so that the providers here allocate as
/// the deployed binary does.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

/// Every endpoint here is one client, 127.0.0.1, sending as fast as the providers answer: the
/// per-client rate (a defence against one flooding address) is lifted to measure the call path.
fn one_loopback_client(config: &mut switchyard_provider::config::Config) {
    for limits in [
        &mut config.endpoint_api.limits,
        &mut config.federation.limits,
    ] {
        limits.requests_per_second_per_client = 1_000_000;
        limits.request_burst_per_client = 1_000_000;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = switchyard_tests::bench_arguments();
    let calls: usize = args.first().map(|a| a.parse()).transpose()?.unwrap_or(2000);
    let concurrency: usize = args.get(1).map(|a| a.parse()).transpose()?.unwrap_or(8);
    let fed = TestFederation::start(&[
        ProviderSpec::plist("a.test").tune(one_loopback_client),
        ProviderSpec::plist("b.test").tune(one_loopback_client),
    ])
    .await?;
    let a = fed.provider("a.test");
    let b = fed.provider("b.test");
    let mut pairs = Vec::new();
    for i in 0..concurrency {
        let caller_uri = format!("tel:+1650555{i:04}");
        let callee_uri = format!("tel:+1415555{i:04}");
        let caller_user = a.add_user(&format!("Caller {i}"), &[&caller_uri]).await?;
        let callee_user = b.add_user(&format!("Callee {i}"), &[&callee_uri]).await?;
        let caller = a
            .endpoint(&caller_user, &caller_uri, None, Encoding::Plist)
            .await?;
        let callee = b
            .endpoint(&callee_user, &callee_uri, None, Encoding::Plist)
            .await?;
        pairs.push((caller, callee, callee_uri));
    }
    fed.sync().await?;

    let per_worker = calls.div_ceil(concurrency);
    let started = Instant::now();
    let workers = pairs
        .into_iter()
        .map(|(caller, callee, callee_uri)| async move {
            let mut caller_push = caller.push_channel(PushMode::WebSocket).await?;
            let mut callee_push = callee.push_channel(PushMode::WebSocket).await?;
            let mut latencies = Vec::with_capacity(per_worker);
            for _ in 0..per_worker {
                let sid = session_id();
                let t0 = Instant::now();
                caller
                    .initiate(&sid, &callee_uri, b"offer", &["audio"])
                    .await?;
                let ring = expect_push(&mut callee_push, "initiate").await?;
                callee.accept(&ring, b"answer").await?;
                expect_push(&mut caller_push, "accept").await?;
                latencies.push(t0.elapsed());
            }
            anyhow::Ok(latencies)
        });
    let results = futures_util::future::join_all(workers).await;
    let elapsed = started.elapsed();
    let mut latencies = Vec::new();
    for result in results {
        latencies.extend(result?);
    }
    latencies.sort();
    let n = latencies.len();
    println!(
        "call_setup database={} calls={n} concurrency={concurrency}: {:.0} set-ups/s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        switchyard_tests::database_kind(),
        n as f64 / elapsed.as_secs_f64(),
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies[n - 1].as_secs_f64() * 1e3,
    );
    fed.shutdown().await;
    Ok(())
}
