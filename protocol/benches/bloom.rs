//! Bloom filter figures: size against the information-theoretic limit, false-positive rate,
//! lookups, incremental update size after churn, and dispatch of one URI against 1,000 peer
//! filters of 1,000,000 URIs each. `cargo bench -p switchyard-protocol --bench bloom`

use std::hint::black_box;
use std::time::Instant;

use switchyard_protocol::bloom::{BloomFilter, BloomParams, Probe};

const N: u64 = 1_000_000;
const P: f64 = 0.001;
const PEERS: usize = 1_000;

fn uri(i: u64) -> String {
    format!("tel:+4420{:08}", 10_000_000 + i)
}

fn key(seed: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..].copy_from_slice(&(!seed).to_le_bytes());
    key
}

fn main() {
    let uris: Vec<String> = (0..N).map(uri).collect();
    let start = Instant::now();
    let filter =
        BloomFilter::build(uris.iter().map(String::as_str), P, key(1)).expect("valid sizing");
    let build = start.elapsed();
    let params = filter.params().clone();
    let bits_per_uri = params.bits as f64 / N as f64;
    let limit = 1.44 * (1.0 / P).log2();
    println!(
        "filter of {N} URIs at p = {P}: {} bits, {} hashes, {:.2} MiB, built in {:.2} s",
        params.bits,
        params.hashes,
        params.bits as f64 / 8.0 / 1048576.0,
        build.as_secs_f64()
    );
    println!(
        "bits per URI: {bits_per_uri:.2} (limit 1.44·log2(1/p) = {limit:.2}, ratio {:.3})",
        bits_per_uri / limit
    );

    let absent: Vec<String> = (N..2 * N).map(uri).collect();
    let start = Instant::now();
    let false_positives = absent.iter().filter(|u| filter.contains(u)).count();
    let absent_ns = start.elapsed().as_nanos() as f64 / absent.len() as f64;
    let start = Instant::now();
    let present = uris.iter().filter(|u| filter.contains(u)).count();
    let present_ns = start.elapsed().as_nanos() as f64 / uris.len() as f64;
    assert_eq!(present as u64, N, "no false negatives");
    println!(
        "measured false-positive rate: {:.4}% over {} absent URIs (estimate {:.4}%)",
        100.0 * false_positives as f64 / absent.len() as f64,
        absent.len(),
        100.0 * filter.estimated_false_positive_rate()
    );
    println!("lookup (HMAC included): {present_ns:.0} ns present, {absent_ns:.0} ns absent");

    // 1% churn: 1% of the URIs leave, as many new ones arrive; the filter is rebuilt with the
    // same parameters and compared bit by bit.
    let churn = N / 100;
    let mut rebuilt = BloomFilter::new(params.clone());
    for u in uris.iter().skip(churn as usize) {
        rebuilt.insert(u);
    }
    for i in 0..churn {
        rebuilt.insert(&uri(2 * N + i));
    }
    let flips = rebuilt.diff(&filter).expect("same parameters");
    let full_bytes = params.bits / 8;
    let incremental = switchyard_protocol::bloom::to_incremental_dict(&rebuilt, 1, 2, &flips);
    let incremental_bytes = incremental.data("flips").expect("flips").len() as u64;
    println!(
        "after 1% churn: {} flipped bits, incremental {} bytes vs full {} bytes ({:.1}%)",
        flips.len(),
        incremental_bytes,
        full_bytes,
        100.0 * incremental_bytes as f64 / full_bytes as f64
    );

    // 1,000 peers: same fill as the real filter, each under its own key (the bits are reused, so
    // answers are meaningless, but the work per probe is what a real dispatch does).
    let bytes = filter.bytes();
    let peers: Vec<BloomFilter> = (0..PEERS as u64)
        .map(|i| {
            let params = BloomParams {
                key: key(100 + i),
                ..params.clone()
            };
            BloomFilter::from_bytes(params, N, &bytes).expect("same size")
        })
        .collect();
    let callees: Vec<String> = (0..200).map(|i| uri(5 * N + i)).collect();
    let start = Instant::now();
    let mut candidates = 0usize;
    for callee in &callees {
        for peer in &peers {
            let probe = Probe::new(callee, &peer.params().key);
            candidates += usize::from(black_box(peer.contains_probe(&probe)));
        }
    }
    let per_dispatch = start.elapsed().as_secs_f64() / callees.len() as f64;
    println!("dispatch of one URI against {PEERS} filters of {N} URIs (distinct keys): {:.0} µs ({:.2} candidates per dispatch)",
        per_dispatch * 1e6, candidates as f64 / callees.len() as f64);
    let shared_key = filter.params().key;
    let same_key: Vec<BloomFilter> = (0..PEERS)
        .map(|_| BloomFilter::from_bytes(params.clone(), N, &bytes).expect("same size"))
        .collect();
    let start = Instant::now();
    for callee in &callees {
        let probe = Probe::new(callee, &shared_key);
        for peer in &same_key {
            black_box(peer.contains_probe(&probe));
        }
    }
    let per_dispatch = start.elapsed().as_secs_f64() / callees.len() as f64;
    println!(
        "dispatch of one URI against {PEERS} filters of {N} URIs (one shared key): {:.0} µs",
        per_dispatch * 1e6
    );
}
