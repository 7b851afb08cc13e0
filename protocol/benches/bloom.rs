//! Bloom filter figures: size against the information-theoretic limit, false-positive rate,
//! lookups, incremental update size after churn, and dispatch of one URI against 1,000 peer
//! filters of 1,000,000 URIs each, through the bit-sliced index and, for comparison, filter by
//! filter. `cargo bench -p switchyard-protocol --bench bloom`

use std::hint::black_box;
use std::time::Instant;

use switchyard_protocol::bloom::{
    bits_for_capacity, to_incremental_dict, BloomFilter, FilterIndex,
};

const N: u64 = 1_000_000;
const P: f64 = 0.001;
const PEERS: usize = 1_000;
/// Distinct filter contents among the peers: building 1,000 filters of a million URIs each
/// would take most of the run, and the lookups' cost does not depend on which bits are set.
const DISTINCT: u64 = 16;

fn uri(i: u64) -> String {
    format!("tel:+4420{:08}", 10_000_000 + i)
}

fn per_item_ns(start: Instant, items: usize) -> f64 {
    start.elapsed().as_nanos() as f64 / items as f64
}

/// Flipped bits and incremental bytes against full bytes after 1% of `uris` leave and as many
/// arrive, for a filter of `bits` bits.
fn churn(uris: &[String], bits: u64) -> (usize, u64, u64) {
    let mut older = BloomFilter::empty(bits).expect("valid size");
    uris.iter().for_each(|u| older.insert(u));
    let churn = uris.len() / 100;
    let mut newer = BloomFilter::empty(bits).expect("valid size");
    for u in &uris[churn..] {
        newer.insert(u);
    }
    for i in 0..churn as u64 {
        newer.insert(&uri(2 * N + i));
    }
    let flips = newer.diff(&older).expect("same size");
    let incremental = to_incremental_dict(&newer, 1, 2, &flips);
    let bytes = incremental.data("flips").expect("flips").len() as u64;
    (flips.len(), bytes, bits / 8)
}

fn main() {
    let uris: Vec<String> = (0..N).map(uri).collect();
    let start = Instant::now();
    let filter = BloomFilter::build(uris.iter().map(String::as_str), P).expect("valid sizing");
    let build = start.elapsed();
    let bits_per_uri = filter.bits() as f64 / N as f64;
    let limit = 1.44 * (1.0 / P).log2();
    println!(
        "filter of {N} URIs at p = {P}: {} bits ({} blocks), {:.2} MiB, built in {:.2} s",
        filter.bits(),
        filter.bits() / 256,
        filter.bits() as f64 / 8.0 / 1048576.0,
        build.as_secs_f64()
    );
    println!(
        "bits per URI: {bits_per_uri:.2} (limit 1.44·log2(1/p) = {limit:.2}, ratio {:.3})",
        bits_per_uri / limit
    );

    let absent: Vec<String> = (N..2 * N).map(uri).collect();
    let false_positives = absent.iter().filter(|u| filter.contains(u)).count();
    assert!(
        uris.iter().all(|u| filter.contains(u)),
        "no false negatives"
    );
    println!(
        "measured false-positive rate: {:.4}% over {} absent URIs (estimate {:.4}%)",
        100.0 * false_positives as f64 / absent.len() as f64,
        absent.len(),
        100.0 * filter.estimated_false_positive_rate()
    );
    // A third of the URIs as probes, so that their blocks cover the whole filter and are not
    // all in the cache from one round to the next. Five rounds, as the machine is shared: the
    // range is printed.
    let probes = |from: &[String]| -> Vec<String> { from.iter().step_by(3).cloned().collect() };
    for (name, sample) in [("present", probes(&uris)), ("absent", probes(&absent))] {
        let rounds: Vec<f64> = (0..5)
            .map(|_| {
                let start = Instant::now();
                for probe in &sample {
                    black_box(filter.contains(black_box(probe)));
                }
                per_item_ns(start, sample.len())
            })
            .collect();
        let (low, high) = rounds
            .iter()
            .fold((f64::MAX, 0.0f64), |(l, h), &r| (l.min(r), h.max(r)));
        println!("lookup (XXH64 included), {name}: {low:.1}-{high:.1} ns over 5 rounds");
    }

    let (flips, bytes, full) = churn(&uris, filter.bits());
    println!(
        "after 1% churn, filter sized for n: {flips} flipped bits, incremental {bytes} bytes vs full {full} bytes ({:.2}%)",
        100.0 * bytes as f64 / full as f64
    );
    // A provider sizes its own filter for n + n/4 (provider/src/federation/filters.rs).
    let provider_bits = bits_for_capacity(N + N / 4, P).expect("valid sizing");
    let (flips, bytes, full) = churn(&uris, provider_bits);
    println!(
        "after 1% churn, filter sized for n + n/4 as a provider publishes it: {flips} flipped bits, incremental {bytes} bytes vs full {full} bytes ({:.2}%)",
        100.0 * bytes as f64 / full as f64
    );

    // Peer filters of N URIs each: DISTINCT contents, each a different million URIs.
    let contents: Vec<BloomFilter> = (0..DISTINCT)
        .map(|c| {
            let mut peer = BloomFilter::empty(filter.bits()).expect("valid size");
            (0..N).for_each(|i| peer.insert(&uri(10 * N + c * N + i)));
            peer
        })
        .collect();
    let start = Instant::now();
    let mut index = FilterIndex::new();
    for slot in 0..PEERS {
        index.insert(slot, &contents[slot % DISTINCT as usize]);
    }
    println!(
        "index of {PEERS} filters: {:.0} MiB, built in {:.1} s",
        index.matrix_bytes() as f64 / 1048576.0,
        start.elapsed().as_secs_f64()
    );
    // Callees: half hosted by the peers holding one of the contents (1,000 / 16 of them), half
    // by none.
    let callees: Vec<String> = (0..20_000u64)
        .map(|i| {
            if i % 2 == 0 {
                uri(10 * N + (i % DISTINCT) * N + i)
            } else {
                uri(40 * N + i)
            }
        })
        .collect();
    let mut candidates = 0usize;
    let start = Instant::now();
    for callee in &callees {
        index.candidates(callee, |slot| {
            black_box(slot);
            candidates += 1;
        });
    }
    let per_dispatch = per_item_ns(start, callees.len()) / 1000.0;
    println!(
        "dispatch of one URI against {PEERS} filters of {N} URIs (bit-sliced index): {per_dispatch:.2} µs ({:.2} candidates per dispatch)",
        candidates as f64 / callees.len() as f64
    );
    drop(index);

    let copies: Vec<BloomFilter> = (0..PEERS)
        .map(|slot| contents[slot % DISTINCT as usize].clone())
        .collect();
    let sample = &callees[..2_000];
    let start = Instant::now();
    let mut loop_candidates = 0usize;
    for callee in sample {
        for peer in &copies {
            loop_candidates += usize::from(black_box(peer.contains(callee)));
        }
    }
    println!(
        "dispatch of one URI against {PEERS} filters of {N} URIs (filter by filter, hashing for each): {:.1} µs ({:.2} candidates per dispatch)",
        per_item_ns(start, sample.len()) / 1000.0,
        loop_candidates as f64 / sample.len() as f64
    );
}
