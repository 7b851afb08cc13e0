//! URI canonicalization throughput (one core): `cargo bench -p switchyard-protocol`.

use std::hint::black_box;
use std::time::Instant;

use switchyard_protocol::Canonicalizer;

fn measure(label: &str, inputs: &[String], canonicalizer: &Canonicalizer) {
    // One pass to warm caches, then the timed passes.
    for input in inputs.iter().take(1000) {
        black_box(canonicalizer.canonicalize(input).expect("valid input"));
    }
    let passes = 3;
    let start = Instant::now();
    for _ in 0..passes {
        for input in inputs {
            black_box(canonicalizer.canonicalize(input).expect("valid input"));
        }
    }
    let per_second = (inputs.len() * passes) as f64 / start.elapsed().as_secs_f64();
    println!(
        "{label:<40} {per_second:>12.0} URIs/s  ({:.2} µs each)",
        1e6 / per_second
    );
}

fn main() {
    let n = 100_000;
    let canonicalizer = Canonicalizer::new(Some(44));
    let tel_e164: Vec<String> = (0..n)
        .map(|i| format!("tel:+44207{:07}", 1_000_000 + i))
        .collect();
    let tel_visual: Vec<String> = (0..n)
        .map(|i| format!("tel:+44 20 7{:03} {:04}", 100 + i / 10_000, i % 10_000))
        .collect();
    let tel_national: Vec<String> = (0..n)
        .map(|i| format!("tel:020 7{:03} {:04}", 100 + i / 10_000, i % 10_000))
        .collect();
    // Every region's fixed-line and mobile examples: more patterns than phonenumber's
    // 100-entry regex cache holds.
    let tel_world: Vec<String> = phonenumber::metadata::DATABASE
        .iter()
        .flat_map(|meta| {
            let d = meta.descriptors();
            [d.fixed_line(), d.mobile()]
                .into_iter()
                .flatten()
                .filter_map(|d| d.example())
                .map(move |example| format!("tel:+{}{example}", meta.country_code()))
        })
        .filter(|uri| canonicalizer.canonicalize(uri).is_ok())
        .collect();
    let mailto: Vec<String> = (0..n)
        .map(|i| format!("mailto:User{i}@Example.COM"))
        .collect();
    let mailto_idn: Vec<String> = (0..n)
        .map(|i| format!("mailto:user{i}@bücher.example"))
        .collect();
    measure("tel: E.164", &tel_e164, &canonicalizer);
    measure(
        &format!("tel: E.164, {} numbers of all regions", tel_world.len()),
        &tel_world,
        &canonicalizer,
    );
    measure("tel: with visual separators", &tel_visual, &canonicalizer);
    measure(
        "tel: national (default country 44)",
        &tel_national,
        &canonicalizer,
    );
    measure("mailto: ASCII", &mailto, &canonicalizer);
    measure(
        "mailto: internationalized domain",
        &mailto_idn,
        &canonicalizer,
    );
}
