//! Bloom filters of hosted URIs, in Switchyard's own versioned wire format.
//!
//! Each provider publishes a Bloom filter over the canonical URIs it hosts
//! (`tel:+16502530000`, `mailto:Bob@example.com`); peers test a callee's URI against it
//! before forwarding a call. False positives are possible, false negatives are not.
//!
//! # Algorithm `switchyard-bloom-v2`
//!
//! A split-block Bloom filter (Putze, Sanders and Singler; the block layout of Apache Parquet's
//! filters): a lookup reads one 32-byte block, so it costs one cache miss, and every filter
//! hashes a URI the same way, so one hash serves a dispatch against every peer ([`FilterIndex`]).
//!
//! - **Size.** `bits` m is 256·B for a block count B of the form s·2^e with s in 1..=15 (the
//!   sizes 1–16, 18, 20, …, 32, 36, 40, … blocks: eight sizes an octave, at most 12.5% above
//!   any size, so that filters of similar sizes share one index), with m at most 2^34.
//! - **Hash.** `h = XXH64(uri, seed 0)` over the UTF-8 bytes of the canonical URI exactly as
//!   given (this module does not canonicalize).
//! - **Block.** `b = ((h >> 32) · B) >> 32` (the product does not overflow 64 bits).
//! - **Bits.** With `x` the low 32 bits of `h`, for `i` in `0..8` the URI sets bit
//!   `((x · SALT[i]) mod 2^32) >> 27` of 32-bit word `i` of block `b`, where `SALT` is
//!   `47b6137b 44974d91 8824ad5b a2b7289d 705495c7 2df1424b 9efc4947 5c6bfb31` (hex).
//! - **Layout.** Block b is words `8b..8b+8`; bit j of the filter is bit `j % 32` (least
//!   significant = 0) of word `j / 32`. Words serialize little-endian, in order, so bit j is bit
//!   `j % 8` of byte `j / 8`; the byte string is `m / 8` bytes long.
//!
//! Sizing for n expected items and false-positive rate p (default 0.001): with λ = n/B URIs per
//! block, Poisson distributed, a URI not inserted tests present with probability
//! `Σ_j Pois(j; λ) · (1 − (31/32)^j)^8`. B is the smallest block count for which that is at most
//! p, rounded up to the next allowed size (B = 1 when n = 0).
//!
//! There is no key: the hash is public either way (v1's per-filter HMAC key travelled in the
//! filter), and one hash for every filter is what lets a dispatch hash a URI once.
//!
//! # Dictionaries
//!
//! A full filter:
//!
//! | key          | type    | value                                   |
//! |--------------|---------|-----------------------------------------|
//! | `algorithm`  | string  | `switchyard-bloom-v2`                   |
//! | `generation` | integer | the publisher's version of its filter   |
//! | `bits`       | integer | m                                       |
//! | `items`      | integer | how many URIs were inserted             |
//! | `filter`     | data    | the bit array, `bits / 8` bytes         |
//!
//! An incremental update from generation `since` to `generation` carries `algorithm`,
//! `since`, `generation`, `bits` and `items` as above (describing the newer filter, whose size
//! must equal the older one's), plus `flip-count` (integer), `rice-bits` (integer r, 0 to 34)
//! and `flips` (data): the positions of the bits that differ, strictly ascending, as a
//! Golomb–Rice code (see [`flips`]). The receiver flips those bits of its copy at `since`. A
//! publisher sends the incremental form only when `flips` is shorter than the full filter's
//! `bits / 8` bytes. Integers are never negative. In JSON, data fields are base64 strings
//! (standard alphabet, padded).

mod filter;
mod flips;
mod index;

pub use filter::{
    bits_for_capacity, expected_false_positive_rate, validate_bits, BloomError, BloomFilter,
    ALGORITHM, DEFAULT_FALSE_POSITIVE_RATE, MAX_BITS,
};
pub use index::FilterIndex;

use crate::dict::Dict;

/// A filter update received from a peer.
#[derive(Debug, Clone, PartialEq)]
pub enum BloomUpdate {
    Full {
        generation: u64,
        filter: BloomFilter,
    },
    /// Flip the bits at `flips` of the copy at generation `since` (which must have `bits` bits)
    /// and set `items` to get generation `generation`.
    Incremental {
        since: u64,
        generation: u64,
        bits: u64,
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

fn with_size(dict: Dict, filter: &BloomFilter) -> Dict {
    dict.with("bits", wire_int(filter.bits(), "bits"))
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
    with_size(dict, filter).with("filter", filter.bytes())
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
    let (rice_bits, coded) = flips::encode(flips);
    let dict = Dict::new()
        .with("algorithm", ALGORITHM)
        .with("since", wire_int(since, "since"))
        .with("generation", wire_int(generation, "generation"));
    with_size(dict, filter)
        .with("flip-count", wire_int(flips.len() as u64, "flip-count"))
        .with("rice-bits", i64::from(rice_bits))
        .with("flips", coded)
}

fn read_u64(dict: &Dict, field: &'static str) -> Result<u64, BloomError> {
    u64::try_from(dict.int(field)?).map_err(|_| BloomError::Negative(field))
}

fn read_bits(dict: &Dict) -> Result<u64, BloomError> {
    let bits = dict.int("bits")?;
    let bits = u64::try_from(bits).map_err(|_| BloomError::InvalidBits(bits))?;
    validate_bits(bits)?;
    Ok(bits)
}

/// Decodes and validates a full or incremental update (incremental when `flips` is
/// present).
pub fn from_dict(dict: &Dict) -> Result<BloomUpdate, BloomError> {
    let algorithm = dict.str("algorithm")?;
    if algorithm != ALGORITHM {
        return Err(BloomError::UnsupportedAlgorithm(algorithm.to_owned()));
    }
    let generation = read_u64(dict, "generation")?;
    let bits = read_bits(dict)?;
    let items = read_u64(dict, "items")?;
    if !dict.contains_key("flips") {
        let filter = BloomFilter::from_bytes(bits, items, &dict.data("filter")?)?;
        return Ok(BloomUpdate::Full { generation, filter });
    }
    if dict.contains_key("filter") {
        return Err(BloomError::AmbiguousUpdate);
    }
    let since = read_u64(dict, "since")?;
    let count = read_u64(dict, "flip-count")?;
    let rice_bits = dict.int("rice-bits")?;
    let rice_bits = u32::try_from(rice_bits)
        .ok()
        .filter(|&r| r <= flips::MAX_RICE_BITS)
        .ok_or(BloomError::InvalidRiceBits(rice_bits))?;
    let flips = flips::decode(&dict.data("flips")?, count, rice_bits, bits)?;
    Ok(BloomUpdate::Incremental {
        since,
        generation,
        bits,
        items,
        flips,
    })
}

/// Whether an incremental update flipping `flips` is smaller on the wire than the full
/// `bits`-bit filter.
pub fn incremental_is_smaller(bits: u64, flips: &[u64]) -> bool {
    flips::encoded_len(flips) < bits / 8
}

#[cfg(test)]
mod tests;
