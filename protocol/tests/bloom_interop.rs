//! Checks the Bloom filter wire format against an independent Python implementation
//! (`tests/interop/bloom_check.py`, standard library only).

use std::fs;
use std::path::Path;
use std::process::Command;

use switchyard_protocol::bloom::{to_full_dict, BloomFilter};
use switchyard_protocol::Encoding;

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/interop/bloom_check.py"
);

/// Runs the script on a dictionary file and probe file, returning its `(bit, uri)` lines.
fn python_membership(dict: &Path, probes: &Path, json: bool) -> Vec<(bool, String)> {
    let mut command = Command::new("python3");
    command.arg(SCRIPT).arg(dict).arg(probes);
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
    let key: [u8; 16] = std::array::from_fn(|i| (i as u8).wrapping_mul(37) ^ 0xc3);
    // Mixed schemes and non-ASCII text exercise the exact UTF-8 bytes being hashed.
    let present: Vec<String> = (0..5000)
        .map(|i| match i % 3 {
            0 => format!("tel:+1650{i:07}"),
            1 => format!("mailto:user{i}@example.com"),
            _ => format!("mailto:usér{i}@bücher.example"),
        })
        .collect();
    let absent: Vec<String> = (0..20_000).map(|i| format!("tel:+4420{i:08}")).collect();
    let filter = BloomFilter::build(present.iter().map(String::as_str), 0.01, key).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let probes = dir.path().join("probes.txt");
    let all: Vec<&String> = present.iter().chain(&absent).collect();
    let probe_text: String = all.iter().map(|uri| format!("{uri}\n")).collect();
    fs::write(&probes, probe_text).unwrap();

    let dict = to_full_dict(&filter, 1);
    for (encoding, name, json) in [
        (Encoding::Plist, "filter.plist", false),
        (Encoding::Json, "filter.json", true),
    ] {
        let path = dir.path().join(name);
        fs::write(&path, dict.encode(encoding)).unwrap();
        let answers = python_membership(&path, &probes, json);
        assert_eq!(answers.len(), all.len(), "{name}");
        for ((in_python, uri), expected) in answers.iter().zip(&all) {
            assert_eq!(uri, *expected, "{name}");
            assert_eq!(*in_python, filter.contains(uri), "{name}: {uri}");
        }
        assert!(
            answers[..present.len()].iter().all(|(bit, _)| *bit),
            "{name}"
        );
    }
}
