use super::filter::{allowed_blocks, allowed_blocks_at_least, hash, positions};
use super::*;
use crate::dict::{DictError, Encoding, Value};

fn present(i: u32) -> String {
    format!("tel:+1650{i:07}")
}

fn absent(i: u32) -> String {
    format!("mailto:nobody{i}@absent.example")
}

fn filter_of(count: u32, p: f64) -> BloomFilter {
    let uris: Vec<String> = (0..count).map(present).collect();
    BloomFilter::build(uris.iter().map(String::as_str), p).unwrap()
}

#[test]
fn block_counts_are_one_to_fifteen_times_a_power_of_two() {
    let allowed: Vec<u64> = (13..=40).filter(|&b| allowed_blocks(b)).collect();
    assert_eq!(
        allowed,
        [13, 14, 15, 16, 18, 20, 22, 24, 26, 28, 30, 32, 36, 40]
    );
    assert!((1..=16).all(allowed_blocks));
    for b in 1..=5000 {
        let up = allowed_blocks_at_least(b);
        assert!(
            allowed_blocks(up) && up >= b && up * 8 <= b * 9,
            "{b} → {up}"
        );
        assert!((b..up).all(|c| !allowed_blocks(c)), "{b} → {up}");
    }
    assert_eq!(allowed_blocks_at_least(0), 1);
    assert_eq!(allowed_blocks_at_least(1 << 26), 1 << 26);
    assert!(!allowed_blocks(0));
}

#[test]
fn sizing_follows_the_formula() {
    // 1000 URIs at 1%: λ may reach about 24.3 per block, so 42 blocks, rounded up to 44.
    assert!(expected_false_positive_rate(1000, 41) > 0.01);
    assert!(expected_false_positive_rate(1000, 42) <= 0.01);
    assert_eq!(bits_for_capacity(1000, 0.01).unwrap(), 44 * 256);
    // 1,000,000 at 0.1%: 65,976 blocks (16.9 bits a URI), rounded up to 73,728.
    assert!(expected_false_positive_rate(1_000_000, 65_975) > 0.001);
    assert!(expected_false_positive_rate(1_000_000, 65_976) <= 0.001);
    assert_eq!(bits_for_capacity(1_000_000, 0.001).unwrap(), 73_728 * 256);
    assert_eq!(
        bits_for_capacity(0, DEFAULT_FALSE_POSITIVE_RATE).unwrap(),
        256
    );
    assert_eq!(bits_for_capacity(1, 0.5).unwrap(), 256);
    for p in [0.0, -0.1, 0.6, f64::NAN] {
        assert!(matches!(
            bits_for_capacity(10, p),
            Err(BloomError::InvalidFalsePositiveRate(_))
        ));
    }
    assert!(matches!(
        bits_for_capacity(u64::MAX, 0.001),
        Err(BloomError::TooManyItems { .. })
    ));
    // The rate at the largest size decides what fits: 2^26 blocks hold about 1.02 billion URIs
    // at 0.1%.
    assert!(bits_for_capacity(1_000_000_000, 0.001).is_ok());
    assert!(bits_for_capacity(1_100_000_000, 0.001).is_err());
    assert_eq!(expected_false_positive_rate(0, 1), 0.0);
    assert_eq!(expected_false_positive_rate(1_000_000, 1), 1.0);
}

#[test]
fn bit_counts_are_checked() {
    for bits in [256, 512, 768, 2560, MAX_BITS, 7 << 30] {
        assert_eq!(validate_bits(bits), Ok(()), "{bits}");
    }
    for bits in [
        0,
        64,
        255,
        257,
        17 * 256,
        34 * 256,
        4352 * 256,
        MAX_BITS + 256,
        u64::MAX,
    ] {
        assert!(
            matches!(validate_bits(bits), Err(BloomError::InvalidBits(_))),
            "{bits}"
        );
    }
    assert_eq!(
        validate_bits(u64::MAX),
        Err(BloomError::InvalidBits(i64::MAX))
    );
}

#[test]
fn test_vectors() {
    // XXH64 reference values (seed 0).
    assert_eq!(hash(""), 0xef46db3751d8e999);
    assert_eq!(hash("abc"), 0x44bc2cf5ad770999);
    // Computed independently by tests/interop/bloom_check.py --positions.
    let blocks = 44;
    let vectors: [(&str, [u64; 8]); 2] = [
        (
            "tel:+16502530000",
            [4100, 4130, 4166, 4199, 4247, 4287, 4310, 4339],
        ),
        (
            "mailto:bob@example.com",
            [7180, 7221, 7251, 7279, 7314, 7350, 7385, 7408],
        ),
    ];
    for (uri, expected) in vectors {
        assert_eq!(positions(hash(uri), blocks), expected, "{uri}");
        let mut filter = BloomFilter::empty(blocks * 256).unwrap();
        filter.insert(uri);
        let bytes = filter.bytes();
        for j in expected {
            assert_ne!(bytes[(j / 8) as usize] & (1 << (j % 8)), 0, "bit {j}");
        }
        let set: u32 = bytes.iter().map(|b| b.count_ones()).sum();
        assert_eq!(set, 8);
        assert_eq!(filter.set_positions().collect::<Vec<_>>(), expected);
    }
}

#[test]
fn no_false_negatives_and_measured_rate_matches_target() {
    for p in [0.01, 0.001] {
        let filter = filter_of(100_000, p);
        assert_eq!(filter.items(), 100_000);
        assert!((0..100_000).all(|i| filter.contains(&present(i))));
        let trials = 400_000;
        let hits = (0..trials).filter(|&i| filter.contains(&absent(i))).count();
        let rate = hits as f64 / f64::from(trials);
        let expected = expected_false_positive_rate(100_000, filter.bits() / 256);
        assert!(
            expected <= p && expected > 0.5 * p,
            "p = {p}: expected {expected}"
        );
        assert!(
            (0.8 * expected..=1.25 * expected).contains(&rate),
            "p = {p}: measured {rate}, expected {expected}"
        );
        let estimate = filter.estimated_false_positive_rate();
        assert!(
            (0.8 * rate..=1.25 * rate).contains(&estimate),
            "estimate {estimate}, measured {rate}"
        );
    }
    let full = BloomFilter::from_bytes(256, 1, &[0xff; 32]).unwrap();
    assert_eq!(full.estimated_false_positive_rate(), 1.0);
    assert_eq!(
        BloomFilter::empty(256)
            .unwrap()
            .estimated_false_positive_rate(),
        0.0
    );
}

#[test]
fn bytes_round_trip_and_length_is_checked() {
    let filter = filter_of(500, 0.01);
    let bytes = filter.bytes();
    assert_eq!(bytes.len() as u64, filter.bits() / 8);
    let back = BloomFilter::from_bytes(filter.bits(), 500, &bytes).unwrap();
    assert_eq!(back, filter);
    assert_eq!(
        BloomFilter::from_bytes(filter.bits(), 500, &bytes[1..]),
        Err(BloomError::FilterLength {
            expected: bytes.len() as u64,
            actual: bytes.len() - 1
        })
    );
    assert!(matches!(
        BloomFilter::from_bytes(filter.bits() + 8, 0, &bytes),
        Err(BloomError::InvalidBits(_))
    ));
}

/// An older filter and a newer one of the same size with some URIs added.
fn older_and_newer() -> (BloomFilter, BloomFilter) {
    let mut older = BloomFilter::with_capacity(5000, 0.001).unwrap();
    (0..4000).for_each(|i| older.insert(&present(i)));
    let mut newer = older.clone();
    (4000..4050).for_each(|i| newer.insert(&present(i)));
    (older, newer)
}

#[test]
fn diff_and_apply_reproduce_the_newer_filter() {
    let (older, newer) = older_and_newer();
    let flips = newer.diff(&older).unwrap();
    assert!(!flips.is_empty());
    assert!(flips.windows(2).all(|w| w[0] < w[1]));
    assert!(incremental_is_smaller(newer.bits(), &flips));
    let mut patched = older.clone();
    patched.apply(&flips, newer.items()).unwrap();
    assert_eq!(patched, newer);
    // Flipping the same bits again goes back: a diff is its own inverse.
    patched.apply(&flips, older.items()).unwrap();
    assert_eq!(patched, older);
    assert_eq!(newer.diff(&newer).unwrap(), Vec::<u64>::new());

    let other = BloomFilter::with_capacity(10, 0.01).unwrap();
    assert_eq!(newer.diff(&other), Err(BloomError::SizeMismatch));
}

#[test]
fn bad_flips_leave_the_filter_unchanged() {
    let (older, _) = older_and_newer();
    let bits = older.bits();
    let cases = [
        (
            vec![0, bits],
            BloomError::FlipOutOfRange {
                position: bits,
                bits,
            },
        ),
        (
            vec![5, 5],
            BloomError::FlipsNotAscending {
                position: 5,
                previous: 5,
            },
        ),
        (
            vec![9, 3],
            BloomError::FlipsNotAscending {
                position: 3,
                previous: 9,
            },
        ),
    ];
    for (flips, error) in cases {
        let mut target = older.clone();
        assert_eq!(target.apply(&flips, 99), Err(error));
        assert_eq!(target, older);
    }
}

#[test]
fn incremental_is_smaller_compares_encoded_sizes() {
    // 256 bits = 32 bytes. c flips in the one block: a 1-bit gap, 8 counts and 6 bits a flip.
    let forty: Vec<u64> = (0..40).collect();
    assert_eq!(flips::encoded_len(&forty), 32);
    assert!(!incremental_is_smaller(256, &forty));
    assert_eq!(flips::encoded_len(&forty[..39]), 31);
    assert!(incremental_is_smaller(256, &forty[..39]));
    assert!(incremental_is_smaller(256, &[]));
}

#[test]
fn full_dict_round_trips_in_both_encodings() {
    let filter = filter_of(300, 0.01);
    let dict = to_full_dict(&filter, 42);
    assert_eq!(dict.str("algorithm").unwrap(), ALGORITHM);
    assert_eq!(dict.int("bits").unwrap(), filter.bits() as i64);
    for encoding in [Encoding::Plist, Encoding::Json] {
        let decoded = Dict::decode(&dict.encode(encoding), encoding).unwrap();
        assert_eq!(
            from_dict(&decoded).unwrap(),
            BloomUpdate::Full {
                generation: 42,
                filter: filter.clone()
            }
        );
    }
}

#[test]
fn incremental_dict_round_trips_in_both_encodings() {
    let (older, newer) = older_and_newer();
    let flips = newer.diff(&older).unwrap();
    let dict = to_incremental_dict(&newer, 6, 7, &flips);
    let (rice_bits, coded) = flips::encode(&flips);
    assert_eq!(dict.data("flips").unwrap(), coded);
    assert_eq!(dict.int("rice-bits").unwrap(), i64::from(rice_bits));
    assert_eq!(dict.int("flip-count").unwrap(), flips.len() as i64);
    for encoding in [Encoding::Plist, Encoding::Json] {
        let decoded = Dict::decode(&dict.encode(encoding), encoding).unwrap();
        assert_eq!(
            from_dict(&decoded).unwrap(),
            BloomUpdate::Incremental {
                since: 6,
                generation: 7,
                bits: newer.bits(),
                items: newer.items(),
                flips: flips.clone(),
            }
        );
    }
}

#[test]
fn from_dict_rejects_invalid_fields() {
    let filter = filter_of(300, 0.01);
    let full = to_full_dict(&filter, 1);
    let bits = filter.bits() as i64;
    assert_eq!(bits, 13 * 256);
    let cases: Vec<(Dict, BloomError)> = vec![
        (
            full.clone().with("algorithm", "switchyard-bloom-v1"),
            BloomError::UnsupportedAlgorithm("switchyard-bloom-v1".into()),
        ),
        (
            // 13 blocks and 4 more: 17 is not an allowed block count.
            full.clone().with("bits", bits + 256 * 4),
            BloomError::InvalidBits(bits + 256 * 4),
        ),
        (
            full.clone().with("bits", -256),
            BloomError::InvalidBits(-256),
        ),
        (
            full.clone().with("bits", (1i64 << 34) + 256),
            BloomError::InvalidBits((1 << 34) + 256),
        ),
        (
            full.clone().with("filter", vec![0u8; 8]),
            BloomError::FilterLength {
                expected: bits as u64 / 8,
                actual: 8,
            },
        ),
        (
            full.clone().with("generation", -1),
            BloomError::Negative("generation"),
        ),
        (
            full.clone().with("items", -1),
            BloomError::Negative("items"),
        ),
        (
            full.clone().with("flips", Vec::<u8>::new()),
            BloomError::AmbiguousUpdate,
        ),
        (
            full.clone().with("filter", Value::Integer(3)),
            BloomError::Dict(DictError::WrongType {
                field: "filter".into(),
                expected: "data (or a base64 string)",
            }),
        ),
    ];
    for (dict, error) in cases {
        assert_eq!(from_dict(&dict), Err(error));
    }

    let incremental = |flips: &[u64]| to_incremental_dict(&filter, 1, 2, flips);
    let bits = bits as u64;
    let cases = [
        (
            incremental(&[3]).with("flips", vec![0xffu8]),
            BloomError::MalformedFlips,
        ),
        (
            incremental(&[])
                .with("flip-count", 1)
                .with("flips", vec![0xffu8; bits as usize / 8 + 1]),
            BloomError::FlipOutOfRange {
                position: bits,
                bits,
            },
        ),
        (
            incremental(&[]).with("rice-bits", 35),
            BloomError::InvalidRiceBits(35),
        ),
        (
            incremental(&[]).with("rice-bits", -1),
            BloomError::InvalidRiceBits(-1),
        ),
        (
            incremental(&[]).with("flip-count", bits as i64 + 1),
            BloomError::TooManyFlips {
                count: bits + 1,
                bits,
            },
        ),
        (
            incremental(&[]).with("flip-count", -1),
            BloomError::Negative("flip-count"),
        ),
        (
            incremental(&[]).with("since", -1),
            BloomError::Negative("since"),
        ),
    ];
    for (dict, error) in cases {
        assert_eq!(from_dict(&dict), Err(error));
    }
}
