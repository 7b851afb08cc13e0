//! Bloom filters of hosted URIs, in Switchyard's own versioned wire format.
//!
//! Each provider publishes a Bloom filter over the canonical URIs it hosts
//! (`tel:+16502530000`, `mailto:Bob@example.com`); peers test a callee's URI against it
//! before forwarding a call. False positives are possible, false negatives are not.
//!
//! # Algorithm `switchyard-bloom-v1`
//!
//! Parameters: `bits` (m, a positive multiple of 64, at most 2^34), `hashes` (k, 1 to 30)
//! and `key`, 16 random bytes chosen by the filter's owner.
//!
//! - **Hash.** `d = HMAC-SHA256(key, uri)` over the UTF-8 bytes of the canonical URI
//!   exactly as given (this module does not canonicalize). `h1` is bytes 0..8 of `d`
//!   read as a little-endian u64; `h2` is bytes 8..16 read as a little-endian u64, then
//!   OR 1 (forced odd).
//! - **Indexes.** For `i` in `0..k`, bit index `(h1 + i * h2) mod m`, where the product
//!   and sum wrap modulo 2^64 before the reduction modulo m.
//! - **Layout.** Bit j is bit `j % 64` (least significant = 0) of u64 word `j / 64`.
//!   Words serialize little-endian, in order, so bit j is bit `j % 8` of byte `j / 8`;
//!   the byte string is `m / 8` bytes long.
//!
//! Sizing for n expected items and false-positive rate p (default 0.001):
//! `m = ceil(-n * ln p / (ln 2)^2)` rounded up to a multiple of 64 (at least 64), and
//! `k = round((m / n) * ln 2)` clamped to 1..=30 (k = 1 when n = 0).
//!
//! # Dictionaries
//!
//! A full filter:
//!
//! | key          | type    | value                                   |
//! |--------------|---------|-----------------------------------------|
//! | `algorithm`  | string  | `switchyard-bloom-v1`                   |
//! | `generation` | integer | the publisher's version of its filter   |
//! | `bits`       | integer | m                                       |
//! | `hashes`     | integer | k                                       |
//! | `key`        | data    | the 16-byte HMAC key                    |
//! | `items`      | integer | how many URIs were inserted             |
//! | `filter`     | data    | the bit array, `bits / 8` bytes         |
//!
//! An incremental update from generation `since` to `generation` carries `algorithm`,
//! `since`, `generation`, `bits`, `hashes`, `key` and `items` as above (all describing
//! the newer filter, whose parameters must equal the older one's), plus `flips` (data):
//! the positions of the bits that differ, strictly ascending, each written as the gap
//! from the previous one (the first as its position) in unsigned LEB128 (7 bits a byte,
//! least significant group first, high bit set on every byte but the last). Gaps after
//! the first are at least 1. The receiver flips those bits of its copy at `since`.
//! Churn touches bits all over the array, so positions, not words, are what shrink: gaps
//! average `bits / flips` and mostly fit one or two bytes. A publisher sends the
//! incremental form only when `flips` is shorter than the full filter's `bits / 8`
//! bytes. Integers are never negative. In JSON, data fields are base64 strings
//! (standard alphabet, padded).

use ring::hmac;

use crate::dict::{Dict, DictError};

/// Identifies the hash, index derivation and bit layout described in the module docs.
pub const ALGORITHM: &str = "switchyard-bloom-v1";

/// The false-positive rate filters are sized for unless the caller chooses another.
pub const DEFAULT_FALSE_POSITIVE_RATE: f64 = 0.001;

/// Largest bit count accepted (2 GiB of filter).
pub const MAX_BITS: u64 = 1 << 34;

/// Largest number of hash functions accepted.
pub const MAX_HASHES: u32 = 30;

/// Why a filter could not be sized, decoded or updated.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BloomError {
    #[error("false-positive rate {0} must be in (0, 0.5]")]
    InvalidFalsePositiveRate(f64),
    #[error("{items} items at false-positive rate {false_positive_rate} need more than 2^34 bits")]
    TooManyItems {
        items: u64,
        false_positive_rate: f64,
    },
    #[error("unsupported filter algorithm `{0}`; expected `{ALGORITHM}`")]
    UnsupportedAlgorithm(String),
    #[error("bit count {0} must be a positive multiple of 64 no greater than 2^34")]
    InvalidBits(i64),
    #[error("hash count {0} must be between 1 and 30")]
    InvalidHashes(i64),
    #[error("key must be 16 bytes, got {0}")]
    InvalidKeyLength(usize),
    #[error("field `{0}` must not be negative")]
    Negative(&'static str),
    #[error("filter must be {expected} bytes for its bit count, got {actual}")]
    FilterLength { expected: u64, actual: usize },
    #[error("`flips` ends inside a LEB128 number or holds one that overflows")]
    MalformedFlips,
    #[error("flipped bit {position} is out of range for a filter of {bits} bits")]
    FlipOutOfRange { position: u64, bits: u64 },
    #[error(
        "flipped bit {position} does not follow {previous}; positions must be strictly ascending"
    )]
    FlipsNotAscending { position: u64, previous: u64 },
    #[error("both `filter` and `flips` are present; an update is either full or incremental")]
    AmbiguousUpdate,
    #[error("filters have different parameters")]
    ParamsMismatch,
    #[error(transparent)]
    Dict(#[from] DictError),
}

/// A filter's size, hash count and HMAC key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BloomParams {
    pub bits: u64,
    pub hashes: u32,
    pub key: [u8; 16],
}

impl BloomParams {
    /// Parameters for `items` URIs at `false_positive_rate`, which must be in (0, 0.5].
    pub fn for_capacity(
        items: u64,
        false_positive_rate: f64,
        key: [u8; 16],
    ) -> Result<Self, BloomError> {
        let p = false_positive_rate;
        // Written so that NaN fails too.
        if !(p > 0.0 && p <= 0.5) {
            return Err(BloomError::InvalidFalsePositiveRate(p));
        }
        let ln2 = std::f64::consts::LN_2;
        let n = items as f64;
        let raw = (-n * p.ln() / (ln2 * ln2)).ceil();
        if raw > MAX_BITS as f64 {
            return Err(BloomError::TooManyItems {
                items,
                false_positive_rate,
            });
        }
        let bits = (raw as u64).div_ceil(64).max(1) * 64;
        let hashes = if items == 0 {
            1
        } else {
            ((bits as f64 / n) * ln2)
                .round()
                .clamp(1.0, f64::from(MAX_HASHES)) as u32
        };
        Ok(Self { bits, hashes, key })
    }

    /// Checks the bounds [`BloomFilter`] relies on: bits a positive multiple of 64 at
    /// most [`MAX_BITS`], hashes in `1..=MAX_HASHES`.
    pub fn validate(&self) -> Result<(), BloomError> {
        if self.bits == 0 || !self.bits.is_multiple_of(64) || self.bits > MAX_BITS {
            // Out-of-range values saturate; the message still shows they are too big.
            return Err(BloomError::InvalidBits(
                i64::try_from(self.bits).unwrap_or(i64::MAX),
            ));
        }
        if !(1..=MAX_HASHES).contains(&self.hashes) {
            return Err(BloomError::InvalidHashes(i64::from(self.hashes)));
        }
        Ok(())
    }

    fn words(&self) -> u64 {
        self.bits / 64
    }
}

/// `(h1, h2)` for `uri` under `key`, as the module docs define them.
fn hash_pair(key: &[u8; 16], uri: &str) -> (u64, u64) {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), uri.as_bytes());
    let d = tag.as_ref();
    let h1 = u64::from_le_bytes(d[0..8].try_into().expect("8-byte slice"));
    let h2 = u64::from_le_bytes(d[8..16].try_into().expect("8-byte slice")) | 1;
    (h1, h2)
}

/// The `hashes` bit indexes of a URI hashing to `(h1, h2)` in a filter of `bits` bits.
fn bit_indexes(h1: u64, h2: u64, params: &BloomParams) -> impl Iterator<Item = u64> {
    let bits = params.bits;
    (0..u64::from(params.hashes)).map(move |i| h1.wrapping_add(i.wrapping_mul(h2)) % bits)
}

/// A URI hashed once, to test against many filters sharing the same key.
#[derive(Debug, Clone)]
pub struct Probe {
    /// Kept so a filter with a different key can still be tested, by rehashing.
    uri: String,
    key: [u8; 16],
    h1: u64,
    h2: u64,
}

impl Probe {
    pub fn new(uri: &str, key: &[u8; 16]) -> Self {
        let (h1, h2) = hash_pair(key, uri);
        Self {
            uri: uri.to_owned(),
            key: *key,
            h1,
            h2,
        }
    }
}

/// A Bloom filter of canonical URIs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BloomFilter {
    params: BloomParams,
    words: Vec<u64>,
    items: u64,
}

impl BloomFilter {
    /// An empty filter.
    ///
    /// # Panics
    ///
    /// If `params` fail [`BloomParams::validate`]; parameters from
    /// [`BloomParams::for_capacity`] or [`from_dict`] always pass.
    pub fn new(params: BloomParams) -> Self {
        if let Err(e) = params.validate() {
            panic!("invalid Bloom filter parameters: {e}");
        }
        let words = vec![0; params.words() as usize];
        Self {
            params,
            words,
            items: 0,
        }
    }

    /// A filter sized for, and holding, every URI of `uris`.
    pub fn build<'a>(
        uris: impl IntoIterator<Item = &'a str>,
        false_positive_rate: f64,
        key: [u8; 16],
    ) -> Result<Self, BloomError> {
        let uris: Vec<&str> = uris.into_iter().collect();
        let params = BloomParams::for_capacity(uris.len() as u64, false_positive_rate, key)?;
        let mut filter = Self::new(params);
        for uri in uris {
            filter.insert(uri);
        }
        Ok(filter)
    }

    pub fn insert(&mut self, uri: &str) {
        let (h1, h2) = hash_pair(&self.params.key, uri);
        for j in bit_indexes(h1, h2, &self.params) {
            self.words[(j / 64) as usize] |= 1 << (j % 64);
        }
        self.items += 1;
    }

    pub fn contains(&self, uri: &str) -> bool {
        let (h1, h2) = hash_pair(&self.params.key, uri);
        self.contains_hashes(h1, h2)
    }

    /// Like [`BloomFilter::contains`] for the probe's URI, without rehashing when the
    /// probe was made with this filter's key.
    pub fn contains_probe(&self, probe: &Probe) -> bool {
        if probe.key == self.params.key {
            self.contains_hashes(probe.h1, probe.h2)
        } else {
            self.contains(&probe.uri)
        }
    }

    fn contains_hashes(&self, h1: u64, h2: u64) -> bool {
        bit_indexes(h1, h2, &self.params)
            .all(|j| self.words[(j / 64) as usize] & (1 << (j % 64)) != 0)
    }

    pub fn params(&self) -> &BloomParams {
        &self.params
    }

    /// How many times [`BloomFilter::insert`] was called (duplicates count each time).
    pub fn items(&self) -> u64 {
        self.items
    }

    /// The bit array: words little-endian, `bits / 8` bytes.
    pub fn bytes(&self) -> Vec<u8> {
        self.words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    /// A filter from its parameters, item count and [`BloomFilter::bytes`].
    pub fn from_bytes(params: BloomParams, items: u64, bytes: &[u8]) -> Result<Self, BloomError> {
        params.validate()?;
        let expected = params.bits / 8;
        if bytes.len() as u64 != expected {
            return Err(BloomError::FilterLength {
                expected,
                actual: bytes.len(),
            });
        }
        let words = bytes
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8-byte chunk")))
            .collect();
        Ok(Self {
            params,
            words,
            items,
        })
    }

    /// `(fraction of set bits)^hashes`: the chance an absent URI tests present.
    pub fn estimated_false_positive_rate(&self) -> f64 {
        let set: u64 = self.words.iter().map(|w| u64::from(w.count_ones())).sum();
        let fraction = set as f64 / self.params.bits as f64;
        fraction.powi(self.params.hashes as i32)
    }

    /// Positions of the bits that differ from `older` (same params required), ascending:
    /// the incremental update.
    pub fn diff(&self, older: &BloomFilter) -> Result<Vec<u64>, BloomError> {
        if self.params != older.params {
            return Err(BloomError::ParamsMismatch);
        }
        let mut flips = Vec::new();
        for (index, (new, old)) in self.words.iter().zip(&older.words).enumerate() {
            let mut changed = new ^ old;
            while changed != 0 {
                flips.push(index as u64 * 64 + u64::from(changed.trailing_zeros()));
                changed &= changed - 1;
            }
        }
        Ok(flips)
    }

    /// Flips the given bits and sets the item count. Positions must be in range and
    /// strictly ascending; on error the filter is unchanged.
    pub fn apply(&mut self, flips: &[u64], items: u64) -> Result<(), BloomError> {
        validate_flips(flips, self.params.bits)?;
        for &position in flips {
            self.words[(position / 64) as usize] ^= 1 << (position % 64);
        }
        self.items = items;
        Ok(())
    }
}

fn validate_flips(flips: &[u64], bits: u64) -> Result<(), BloomError> {
    let mut previous: Option<u64> = None;
    for &position in flips {
        if position >= bits {
            return Err(BloomError::FlipOutOfRange { position, bits });
        }
        if let Some(previous) = previous.filter(|&p| p >= position) {
            return Err(BloomError::FlipsNotAscending { position, previous });
        }
        previous = Some(position);
    }
    Ok(())
}

/// Ascending positions as LEB128 gaps (the first gap is from 0).
fn encode_flips(flips: &[u64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(flips.len() * 2);
    let mut previous = 0;
    for (i, &position) in flips.iter().enumerate() {
        let mut gap = if i == 0 {
            position
        } else {
            position - previous
        };
        previous = position;
        loop {
            let byte = (gap & 0x7f) as u8;
            gap >>= 7;
            if gap == 0 {
                out.push(byte);
                break;
            }
            out.push(byte | 0x80);
        }
    }
    out
}

/// Decodes LEB128 gaps back to positions; a gap of 0 after the first is left for
/// [`validate_flips`] to report as not ascending.
fn decode_flips(bytes: &[u8]) -> Result<Vec<u64>, BloomError> {
    let mut flips = Vec::new();
    let mut position: u64 = 0;
    let mut gap: u64 = 0;
    let mut shift = 0;
    for (i, &byte) in bytes.iter().enumerate() {
        if shift > 63 || (shift == 63 && byte & 0x7e != 0) {
            return Err(BloomError::MalformedFlips);
        }
        gap |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 != 0 {
            shift += 7;
            if i + 1 == bytes.len() {
                return Err(BloomError::MalformedFlips);
            }
            continue;
        }
        position = if flips.is_empty() {
            gap
        } else {
            position
                .checked_add(gap)
                .ok_or(BloomError::MalformedFlips)?
        };
        flips.push(position);
        gap = 0;
        shift = 0;
    }
    Ok(flips)
}

/// A filter update received from a peer.
#[derive(Debug, Clone, PartialEq)]
pub enum BloomUpdate {
    Full {
        generation: u64,
        filter: BloomFilter,
    },
    /// Flip the bits at `flips` of the copy at generation `since` (whose params must
    /// equal `params`) and set `items` to get generation `generation`.
    Incremental {
        since: u64,
        generation: u64,
        params: BloomParams,
        items: u64,
        flips: Vec<u64>,
    },
}

/// Dictionary integers are i64.
///
/// # Panics
///
/// Above `i64::MAX`, which generation and item counts never reach in practice.
fn wire_int(value: u64, field: &str) -> i64 {
    i64::try_from(value).unwrap_or_else(|_| panic!("`{field}` {value} exceeds i64::MAX"))
}

fn with_params(dict: Dict, filter: &BloomFilter) -> Dict {
    let params = filter.params();
    dict.with("bits", wire_int(params.bits, "bits"))
        .with("hashes", i64::from(params.hashes))
        .with("key", params.key.to_vec())
        .with("items", wire_int(filter.items(), "items"))
}

/// The full-filter dictionary (see the module docs).
///
/// # Panics
///
/// If `generation` or the item count exceeds `i64::MAX`.
pub fn to_full_dict(filter: &BloomFilter, generation: u64) -> Dict {
    let dict = Dict::new()
        .with("algorithm", ALGORITHM)
        .with("generation", wire_int(generation, "generation"));
    with_params(dict, filter).with("filter", filter.bytes())
}

/// The incremental-update dictionary from `since` to `generation` for `filter`, the
/// newer filter; `flips` comes from [`BloomFilter::diff`] (ascending positions).
///
/// # Panics
///
/// If `since`, `generation` or the item count exceeds `i64::MAX`.
pub fn to_incremental_dict(
    filter: &BloomFilter,
    since: u64,
    generation: u64,
    flips: &[u64],
) -> Dict {
    let dict = Dict::new()
        .with("algorithm", ALGORITHM)
        .with("since", wire_int(since, "since"))
        .with("generation", wire_int(generation, "generation"));
    with_params(dict, filter).with("flips", encode_flips(flips))
}

fn read_u64(dict: &Dict, field: &'static str) -> Result<u64, BloomError> {
    u64::try_from(dict.int(field)?).map_err(|_| BloomError::Negative(field))
}

fn read_params(dict: &Dict) -> Result<BloomParams, BloomError> {
    let bits = dict.int("bits")?;
    let bits = u64::try_from(bits).map_err(|_| BloomError::InvalidBits(bits))?;
    let hashes = dict.int("hashes")?;
    let hashes = u32::try_from(hashes).map_err(|_| BloomError::InvalidHashes(hashes))?;
    let key = dict.data("key")?;
    let key: [u8; 16] = key
        .as_slice()
        .try_into()
        .map_err(|_| BloomError::InvalidKeyLength(key.len()))?;
    let params = BloomParams { bits, hashes, key };
    params.validate()?;
    Ok(params)
}

/// Decodes and validates a full or incremental update (incremental when `flips` is
/// present).
pub fn from_dict(dict: &Dict) -> Result<BloomUpdate, BloomError> {
    let algorithm = dict.str("algorithm")?;
    if algorithm != ALGORITHM {
        return Err(BloomError::UnsupportedAlgorithm(algorithm.to_owned()));
    }
    let generation = read_u64(dict, "generation")?;
    let params = read_params(dict)?;
    let items = read_u64(dict, "items")?;
    if !dict.contains_key("flips") {
        let filter = BloomFilter::from_bytes(params, items, &dict.data("filter")?)?;
        return Ok(BloomUpdate::Full { generation, filter });
    }
    if dict.contains_key("filter") {
        return Err(BloomError::AmbiguousUpdate);
    }
    let since = read_u64(dict, "since")?;
    let flips = decode_flips(&dict.data("flips")?)?;
    validate_flips(&flips, params.bits)?;
    Ok(BloomUpdate::Incremental {
        since,
        generation,
        params,
        items,
        flips,
    })
}

/// Whether an incremental update flipping `flips` is smaller on the wire than the full
/// `bits`-bit filter.
pub fn incremental_is_smaller(bits: u64, flips: &[u64]) -> bool {
    (encode_flips(flips).len() as u64) < bits / 8
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dict::{Encoding, Value};

    const KEY: [u8; 16] = [0x5a; 16];

    fn present(i: u32) -> String {
        format!("tel:+1650{i:07}")
    }

    fn absent(i: u32) -> String {
        format!("mailto:nobody{i}@absent.example")
    }

    fn filter_of(count: u32, p: f64) -> BloomFilter {
        let uris: Vec<String> = (0..count).map(present).collect();
        BloomFilter::build(uris.iter().map(String::as_str), p, KEY).unwrap()
    }

    #[test]
    fn sizing_follows_the_formulas() {
        let params = BloomParams::for_capacity(1000, 0.01, KEY).unwrap();
        assert_eq!((params.bits, params.hashes), (9600, 7));
        let empty = BloomParams::for_capacity(0, DEFAULT_FALSE_POSITIVE_RATE, KEY).unwrap();
        assert_eq!((empty.bits, empty.hashes), (64, 1));
        // One item at p = 0.5 needs 2 bits, so the 64-bit minimum makes k large.
        let one = BloomParams::for_capacity(1, 0.5, KEY).unwrap();
        assert_eq!((one.bits, one.hashes), (64, 30));
        for p in [0.0, -0.1, 0.6, f64::NAN] {
            assert!(matches!(
                BloomParams::for_capacity(10, p, KEY),
                Err(BloomError::InvalidFalsePositiveRate(_))
            ));
        }
        assert!(matches!(
            BloomParams::for_capacity(u64::MAX, 0.001, KEY),
            Err(BloomError::TooManyItems { .. })
        ));
    }

    #[test]
    fn a_filter_of_exactly_max_bits_is_allowed_and_no_larger() {
        // 1,195,424,635 URIs at p = 0.001003 need exactly MAX_BITS bits; one more needs 14 more.
        let largest = BloomParams::for_capacity(1_195_424_635, 0.001003, KEY).unwrap();
        assert_eq!(largest.bits, MAX_BITS);
        largest.validate().unwrap();
        assert!(matches!(
            BloomParams::for_capacity(1_195_424_636, 0.001003, KEY),
            Err(BloomError::TooManyItems { .. })
        ));
        let past = BloomParams {
            bits: MAX_BITS + 64,
            ..largest
        };
        assert!(matches!(past.validate(), Err(BloomError::InvalidBits(_))));
    }

    #[test]
    fn test_vectors() {
        let key: [u8; 16] = std::array::from_fn(|i| i as u8);
        let params = BloomParams::for_capacity(1000, 0.01, key).unwrap();
        assert_eq!(params.bits, 9600);
        assert_eq!(params.hashes, 7);
        // Computed independently by tests/interop/bloom_check.py --indexes.
        let vectors: [(&str, [u64; 7]); 2] = [
            (
                "tel:+16502530000",
                [9097, 4388, 9279, 4570, 5877, 1168, 6059],
            ),
            (
                "mailto:bob@example.com",
                [2746, 403, 4076, 7749, 5406, 9079, 6736],
            ),
        ];
        for (uri, expected) in vectors {
            let (h1, h2) = hash_pair(&key, uri);
            let indexes: Vec<u64> = bit_indexes(h1, h2, &params).collect();
            assert_eq!(indexes, expected, "{uri}");
            let mut filter = BloomFilter::new(params.clone());
            filter.insert(uri);
            let bytes = filter.bytes();
            for j in expected {
                assert_ne!(bytes[(j / 8) as usize] & (1 << (j % 8)), 0, "bit {j}");
            }
            let set: u32 = bytes.iter().map(|b| b.count_ones()).sum();
            assert_eq!(set, 7);
        }
    }

    #[test]
    fn no_false_negatives_and_measured_rate_matches_target() {
        for p in [0.01, 0.001] {
            let filter = filter_of(100_000, p);
            assert_eq!(filter.items(), 100_000);
            assert!((0..100_000).all(|i| filter.contains(&present(i))));
            let trials = 200_000;
            let hits = (0..trials).filter(|&i| filter.contains(&absent(i))).count();
            let rate = hits as f64 / f64::from(trials);
            assert!(
                (0.5 * p..=1.6 * p).contains(&rate),
                "p = {p}: measured {rate}"
            );
            let estimate = filter.estimated_false_positive_rate();
            assert!(
                (0.5 * p..=1.6 * p).contains(&estimate),
                "estimate {estimate}"
            );
        }
    }

    #[test]
    fn probes_match_contains_whatever_their_key() {
        let filter = filter_of(1000, 0.01);
        let other_key = [0xa5; 16];
        for uri in (0..200).map(present).chain((0..2000).map(absent)) {
            let expected = filter.contains(&uri);
            assert_eq!(filter.contains_probe(&Probe::new(&uri, &KEY)), expected);
            assert_eq!(
                filter.contains_probe(&Probe::new(&uri, &other_key)),
                expected
            );
        }
    }

    #[test]
    fn bytes_round_trip_and_length_is_checked() {
        let filter = filter_of(500, 0.01);
        let bytes = filter.bytes();
        assert_eq!(bytes.len() as u64, filter.params().bits / 8);
        let back = BloomFilter::from_bytes(filter.params().clone(), 500, &bytes).unwrap();
        assert_eq!(back, filter);
        assert_eq!(
            BloomFilter::from_bytes(filter.params().clone(), 500, &bytes[1..]),
            Err(BloomError::FilterLength {
                expected: bytes.len() as u64,
                actual: bytes.len() - 1
            })
        );
        let mut bad = filter.params().clone();
        bad.bits += 8;
        assert!(matches!(
            BloomFilter::from_bytes(bad, 0, &bytes),
            Err(BloomError::InvalidBits(_))
        ));
    }

    /// An older filter and a newer one with the same params and some URIs added.
    fn older_and_newer() -> (BloomFilter, BloomFilter) {
        let params = BloomParams::for_capacity(5000, 0.001, KEY).unwrap();
        let mut older = BloomFilter::new(params);
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
        assert!(incremental_is_smaller(newer.params().bits, &flips));
        let mut patched = older.clone();
        patched.apply(&flips, newer.items()).unwrap();
        assert_eq!(patched, newer);
        // Flipping the same bits again goes back: a diff is its own inverse.
        patched.apply(&flips, older.items()).unwrap();
        assert_eq!(patched, older);
        assert_eq!(newer.diff(&newer).unwrap(), Vec::<u64>::new());

        let other = BloomFilter::new(BloomParams::for_capacity(10, 0.01, KEY).unwrap());
        assert_eq!(newer.diff(&other), Err(BloomError::ParamsMismatch));
    }

    #[test]
    fn bad_flips_leave_the_filter_unchanged() {
        let (older, _) = older_and_newer();
        let bits = older.params().bits;
        let cases = [
            (
                vec![0, bits],
                BloomError::FlipOutOfRange {
                    position: bits,
                    bits,
                },
            ),
            (
                vec![5, 3],
                BloomError::FlipsNotAscending {
                    position: 3,
                    previous: 5,
                },
            ),
            (
                vec![5, 5],
                BloomError::FlipsNotAscending {
                    position: 5,
                    previous: 5,
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
    fn flips_encode_as_leb128_gaps() {
        assert_eq!(encode_flips(&[]), Vec::<u8>::new());
        // 3, then gap 127 (one byte), then gap 128 (two bytes: 0x80 0x01), then gap 300.
        let flips = [3, 130, 258, 558];
        let encoded = encode_flips(&flips);
        assert_eq!(encoded, [0x03, 0x7f, 0x80, 0x01, 0xac, 0x02]);
        assert_eq!(decode_flips(&encoded).unwrap(), flips);
        let large = [0, MAX_BITS - 1];
        assert_eq!(decode_flips(&encode_flips(&large)).unwrap(), large);
        assert_eq!(decode_flips(&[0x80]), Err(BloomError::MalformedFlips));
        assert_eq!(decode_flips(&[0xff; 11]), Err(BloomError::MalformedFlips));
        // A gap takes at most ten bytes, the tenth carrying bit 63 alone.
        let widest = encode_flips(&[u64::MAX]);
        assert_eq!(widest.len(), 10);
        assert_eq!(decode_flips(&widest).unwrap(), [u64::MAX]);
        let mut past_bit_63 = widest.clone();
        past_bit_63[9] = 0x02;
        assert_eq!(decode_flips(&past_bit_63), Err(BloomError::MalformedFlips));
    }

    #[test]
    fn incremental_is_smaller_compares_encoded_sizes() {
        // 1024 bits = 128 bytes; gaps below 128 take one byte each.
        let one_byte_gaps: Vec<u64> = (0..127).collect();
        assert!(incremental_is_smaller(1024, &one_byte_gaps));
        let too_many: Vec<u64> = (0..128).collect();
        assert!(!incremental_is_smaller(1024, &too_many));
    }

    #[test]
    fn full_dict_round_trips_in_both_encodings() {
        let filter = filter_of(300, 0.01);
        let dict = to_full_dict(&filter, 42);
        assert_eq!(dict.str("algorithm").unwrap(), ALGORITHM);
        for encoding in [Encoding::Plist, Encoding::Json] {
            let decoded = Dict::decode(&dict.encode(encoding), encoding).unwrap();
            assert_eq!(
                from_dict(&decoded).unwrap(),
                BloomUpdate::Full {
                    generation: 42,
                    filter: filter.clone()
                },
                "{encoding:?}"
            );
        }
    }

    #[test]
    fn incremental_dict_round_trips_in_both_encodings() {
        let (older, newer) = older_and_newer();
        let flips = newer.diff(&older).unwrap();
        let dict = to_incremental_dict(&newer, 7, 8, &flips);
        assert_eq!(dict.data("flips").unwrap(), encode_flips(&flips));
        for encoding in [Encoding::Plist, Encoding::Json] {
            let decoded = Dict::decode(&dict.encode(encoding), encoding).unwrap();
            let update = from_dict(&decoded).unwrap();
            assert_eq!(
                update,
                BloomUpdate::Incremental {
                    since: 7,
                    generation: 8,
                    params: newer.params().clone(),
                    items: newer.items(),
                    flips: flips.clone(),
                },
                "{encoding:?}"
            );
        }
    }

    #[test]
    fn from_dict_rejects_invalid_fields() {
        let filter = filter_of(300, 0.01);
        let full = to_full_dict(&filter, 1);
        let bits = filter.params().bits as i64;
        let cases: Vec<(Dict, BloomError)> = vec![
            (
                full.clone().with("algorithm", "bloom-v0"),
                BloomError::UnsupportedAlgorithm("bloom-v0".into()),
            ),
            (
                full.clone().with("bits", bits + 8),
                BloomError::InvalidBits(bits + 8),
            ),
            (full.clone().with("bits", -64), BloomError::InvalidBits(-64)),
            (
                full.clone().with("bits", (1i64 << 34) + 64),
                BloomError::InvalidBits((1 << 34) + 64),
            ),
            (full.clone().with("hashes", 0), BloomError::InvalidHashes(0)),
            (
                full.clone().with("hashes", 31),
                BloomError::InvalidHashes(31),
            ),
            (
                full.clone().with("key", vec![0u8; 15]),
                BloomError::InvalidKeyLength(15),
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
                incremental(&[]).with("flips", vec![0x80u8]),
                BloomError::MalformedFlips,
            ),
            (
                incremental(&[bits]),
                BloomError::FlipOutOfRange {
                    position: bits,
                    bits,
                },
            ),
            (
                // A zero gap repeats a position.
                incremental(&[]).with("flips", vec![2u8, 0]),
                BloomError::FlipsNotAscending {
                    position: 2,
                    previous: 2,
                },
            ),
        ];
        for (dict, error) in cases {
            assert_eq!(from_dict(&dict), Err(error));
        }
    }
}
