//! Checks the Bloom filter wire format against an independent Python implementation
//! (`tests/interop/bloom_check.py`, standard library only).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use switchyard_protocol::bloom::{to_full_dict, to_incremental_dict, BloomFilter};
use switchyard_protocol::Encoding;

/// The Python evaluator; found at run time, not compile time: a build cache shared by checkouts
/// at other paths may hand this binary over from one of them.
fn script() -> PathBuf {
    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo"))
        .join("../tests/interop/bloom_check.py")
}

/// Runs the script on a dictionary file (and an update to apply to it) and a probe file,
/// returning its `(bit, uri)` lines.
fn python_membership(
    dict: &Path,
    update: Option<&Path>,
    probes: &Path,
    json: bool,
) -> Vec<(bool, String)> {
    let mut command = Command::new("python3");
    command.arg(script()).arg(dict).arg(probes);
    if let Some(update) = update {
        command.arg("--apply").arg(update);
    }
    if json {
        command.arg("--json");
    }
    let output = command
        .output()
        .expect("python3 is required for the Bloom filter interop test");
    assert!(
        output.status.success(),
        "bloom_check.py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let (bit, uri) = line.split_once(' ').expect("`bit uri` line");
            match bit {
                "0" => (false, uri.to_owned()),
                "1" => (true, uri.to_owned()),
                other => panic!("unexpected membership {other:?}"),
            }
        })
        .collect()
}

#[test]
fn python_agrees_with_rust_on_membership() {
    // Mixed schemes and non-ASCII text exercise the exact UTF-8 bytes being hashed.
    let present: Vec<String> = (0..5000)
        .map(|i| match i % 3 {
            0 => format!("tel:+1650{i:07}"),
            1 => format!("mailto:user{i}@example.com"),
            _ => format!("mailto:usér{i}@bücher.example"),
        })
        .collect();
    let absent: Vec<String> = (0..20_000).map(|i| format!("tel:+4420{i:08}")).collect();
    let filter = BloomFilter::build(present.iter().map(String::as_str), 0.01).unwrap();
    // The next generation: a tenth of the URIs gone, as many new ones (URIs of 32 bytes and
    // more take XXH64's other path).
    let mut newer = BloomFilter::empty(filter.bits()).unwrap();
    let arrived: Vec<String> = (0..500)
        .map(|i| format!("mailto:a-much-longer-local-part-{i}@arrivals.example"))
        .collect();
    for uri in present[500..].iter().chain(&arrived) {
        newer.insert(uri);
    }
    let flips = newer.diff(&filter).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let probes = dir.path().join("probes.txt");
    let all: Vec<&String> = present.iter().chain(&arrived).chain(&absent).collect();
    let probe_text: String = all.iter().map(|uri| format!("{uri}\n")).collect();
    fs::write(&probes, probe_text).unwrap();

    let dict = to_full_dict(&filter, 1);
    let update = to_incremental_dict(&newer, 1, 2, &flips);
    for (encoding, name, json) in [
        (Encoding::Plist, "plist", false),
        (Encoding::Json, "json", true),
    ] {
        let path = dir.path().join(format!("filter.{name}"));
        fs::write(&path, dict.encode(encoding)).unwrap();
        let update_path = dir.path().join(format!("update.{name}"));
        fs::write(&update_path, update.encode(encoding)).unwrap();
        for (applied, expected_filter) in [(None, &filter), (Some(&update_path), &newer)] {
            let answers = python_membership(&path, applied.map(|p| p.as_path()), &probes, json);
            assert_eq!(answers.len(), all.len(), "{name}");
            for ((in_python, uri), expected) in answers.iter().zip(&all) {
                assert_eq!(uri, *expected, "{name}");
                assert_eq!(*in_python, expected_filter.contains(uri), "{name}: {uri}");
            }
        }
        assert!(present.iter().all(|uri| filter.contains(uri)));
        assert!(arrived.iter().all(|uri| newer.contains(uri)));
    }
}
