//! The filter itself: sizes, the hash and bit positions, lookups, and differences between two
//! generations (the module docs of [`super`] define the algorithm).

use crate::dict::DictError;

/// Identifies the hash, block layout and flip coding described in the module docs of [`super`].
pub const ALGORITHM: &str = "switchyard-bloom-v2";

/// The false-positive rate filters are sized for unless the caller chooses another.
pub const DEFAULT_FALSE_POSITIVE_RATE: f64 = 0.001;

/// Largest bit count accepted (2 GiB of filter).
pub const MAX_BITS: u64 = 1 << 34;

/// Bits in a block: eight 32-bit words.
pub(super) const BLOCK_BITS: u64 = 256;

const SALT: [u32; 8] = [
    0x47b6137b, 0x44974d91, 0x8824ad5b, 0xa2b7289d, 0x705495c7, 0x2df1424b, 0x9efc4947, 0x5c6bfb31,
];

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
    #[error(
        "bit count {0} must be 256 times 1 to 15 times a power of two, and no greater than 2^34"
    )]
    InvalidBits(i64),
    #[error("field `{0}` must not be negative")]
    Negative(&'static str),
    #[error("filter must be {expected} bytes for its bit count, got {actual}")]
    FilterLength { expected: u64, actual: usize },
    #[error("`rice-bits` {0} must be between 0 and 34")]
    InvalidRiceBits(i64),
    #[error("`flip-count` {count} exceeds the filter's {bits} bits")]
    TooManyFlips { count: u64, bits: u64 },
    #[error("`flips` ends before `flip-count` positions, or has bits after them")]
    MalformedFlips,
    #[error("flipped bit {position} is out of range for a filter of {bits} bits")]
    FlipOutOfRange { position: u64, bits: u64 },
    #[error(
        "flipped bit {position} does not follow {previous}; positions must be strictly ascending"
    )]
    FlipsNotAscending { position: u64, previous: u64 },
    #[error("both `filter` and `flips` are present; an update is either full or incremental")]
    AmbiguousUpdate,
    #[error("filters have different sizes")]
    SizeMismatch,
    #[error(transparent)]
    Dict(#[from] DictError),
}

/// Whether `blocks` is an allowed block count: s·2^e with s in 1..=15.
pub(super) fn allowed_blocks(blocks: u64) -> bool {
    blocks > 0 && blocks >> blocks.trailing_zeros() <= 15
}

/// The smallest allowed block count of at least `blocks` (at least 1).
pub(super) fn allowed_blocks_at_least(blocks: u64) -> u64 {
    let blocks = blocks.max(1);
    let shift = (64 - blocks.leading_zeros()).saturating_sub(4);
    blocks.div_ceil(1 << shift) << shift
}

/// The chance that a URI not inserted tests present in a filter of `blocks` blocks holding
/// `items` URIs (the sizing formula of the module docs).
pub fn expected_false_positive_rate(items: u64, blocks: u64) -> f64 {
    let lambda = items as f64 / blocks.max(1) as f64;
    if lambda == 0.0 {
        return 0.0;
    }
    // Past a thousand URIs a block, every word of every block is full to within 2^-45.
    if lambda > 1000.0 {
        return 1.0;
    }
    let last = (lambda + 12.0 * lambda.sqrt() + 30.0).ceil() as u64;
    let miss_one = 31.0f64 / 32.0;
    let mut log_factorial = 0.0;
    let mut rate = 0.0;
    for j in 0..=last {
        if j > 0 {
            log_factorial += (j as f64).ln();
        }
        let poisson = (-lambda + j as f64 * lambda.ln() - log_factorial).exp();
        rate += poisson * (1.0 - miss_one.powi(j as i32)).powi(8);
    }
    rate.min(1.0)
}

/// The bit count for `items` URIs at `false_positive_rate`, which must be in (0, 0.5].
pub fn bits_for_capacity(items: u64, false_positive_rate: f64) -> Result<u64, BloomError> {
    let p = false_positive_rate;
    // Written so that NaN fails too.
    if !(p > 0.0 && p <= 0.5) {
        return Err(BloomError::InvalidFalsePositiveRate(p));
    }
    let max_blocks = MAX_BITS / BLOCK_BITS;
    if expected_false_positive_rate(items, max_blocks) > p {
        return Err(BloomError::TooManyItems {
            items,
            false_positive_rate,
        });
    }
    // The rate falls as blocks are added: the smallest block count that reaches p.
    let (mut low, mut high) = (1, max_blocks);
    while low < high {
        let middle = low + (high - low) / 2;
        if expected_false_positive_rate(items, middle) <= p {
            high = middle;
        } else {
            low = middle + 1;
        }
    }
    Ok(allowed_blocks_at_least(low) * BLOCK_BITS)
}

/// Checks a bit count: a positive multiple of 256 whose block count is allowed, at most
/// [`MAX_BITS`].
pub fn validate_bits(bits: u64) -> Result<(), BloomError> {
    if bits == 0
        || !bits.is_multiple_of(BLOCK_BITS)
        || bits > MAX_BITS
        || !allowed_blocks(bits / BLOCK_BITS)
    {
        // Out-of-range values saturate; the message still shows they are too big.
        return Err(BloomError::InvalidBits(
            i64::try_from(bits).unwrap_or(i64::MAX),
        ));
    }
    Ok(())
}

/// The XXH64 hash every filter uses.
pub(super) fn hash(uri: &str) -> u64 {
    xxhash_rust::xxh64::xxh64(uri.as_bytes(), 0)
}

/// The block a hash falls in, of `blocks`.
fn block_of(hash: u64, blocks: u64) -> u64 {
    ((hash >> 32) * blocks) >> 32
}

/// The bit a hash sets in each of its block's eight words.
fn word_bits(hash: u64) -> [u32; 8] {
    let x = hash as u32;
    std::array::from_fn(|i| x.wrapping_mul(SALT[i]) >> 27)
}

/// The eight bit positions of a hash in a filter of `blocks` blocks, ascending.
pub(super) fn positions(hash: u64, blocks: u64) -> [u64; 8] {
    let base = block_of(hash, blocks) * BLOCK_BITS;
    let bits = word_bits(hash);
    std::array::from_fn(|i| base + 32 * i as u64 + u64::from(bits[i]))
}

/// A Bloom filter of canonical URIs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BloomFilter {
    bits: u64,
    words: Vec<u32>,
    items: u64,
}

impl BloomFilter {
    /// An empty filter of `bits` bits (see [`validate_bits`]).
    pub fn empty(bits: u64) -> Result<Self, BloomError> {
        validate_bits(bits)?;
        Ok(Self {
            bits,
            words: vec![0; (bits / 32) as usize],
            items: 0,
        })
    }

    /// An empty filter sized for `items` URIs at `false_positive_rate`.
    pub fn with_capacity(items: u64, false_positive_rate: f64) -> Result<Self, BloomError> {
        Self::empty(bits_for_capacity(items, false_positive_rate)?)
    }

    /// A filter sized for, and holding, every URI of `uris`.
    pub fn build<'a>(
        uris: impl IntoIterator<Item = &'a str>,
        false_positive_rate: f64,
    ) -> Result<Self, BloomError> {
        let uris: Vec<&str> = uris.into_iter().collect();
        let mut filter = Self::with_capacity(uris.len() as u64, false_positive_rate)?;
        for uri in uris {
            filter.insert(uri);
        }
        Ok(filter)
    }

    fn block(&self, hash: u64) -> usize {
        (block_of(hash, self.bits / BLOCK_BITS) * 8) as usize
    }

    pub fn insert(&mut self, uri: &str) {
        let hash = hash(uri);
        let start = self.block(hash);
        let block = &mut self.words[start..start + 8];
        for (word, bit) in block.iter_mut().zip(word_bits(hash)) {
            *word |= 1 << bit;
        }
        self.items += 1;
    }

    pub fn contains(&self, uri: &str) -> bool {
        let hash = hash(uri);
        let start = self.block(hash);
        let block = &self.words[start..start + 8];
        block
            .iter()
            .zip(word_bits(hash))
            .fold(true, |all, (word, bit)| all & (word >> bit & 1 != 0))
    }

    pub fn bits(&self) -> u64 {
        self.bits
    }

    /// How many times [`BloomFilter::insert`] was called (duplicates count each time).
    pub fn items(&self) -> u64 {
        self.items
    }

    /// The bit array: words little-endian, `bits / 8` bytes.
    pub fn bytes(&self) -> Vec<u8> {
        self.words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    /// A filter from its bit count, item count and [`BloomFilter::bytes`].
    pub fn from_bytes(bits: u64, items: u64, bytes: &[u8]) -> Result<Self, BloomError> {
        validate_bits(bits)?;
        let expected = bits / 8;
        if bytes.len() as u64 != expected {
            return Err(BloomError::FilterLength {
                expected,
                actual: bytes.len(),
            });
        }
        let words = bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4-byte chunk")))
            .collect();
        Ok(Self { bits, words, items })
    }

    /// The chance an absent URI tests present, from the bits actually set: the mean over blocks
    /// of the product of each word's share of set bits.
    pub fn estimated_false_positive_rate(&self) -> f64 {
        let total: f64 = self
            .words
            .chunks_exact(8)
            .map(|block| {
                block
                    .iter()
                    .map(|w| f64::from(w.count_ones()) / 32.0)
                    .product::<f64>()
            })
            .sum();
        total / (self.words.len() / 8) as f64
    }

    /// Positions of the bits that differ from `older` (same size required), ascending: the
    /// incremental update.
    pub fn diff(&self, older: &BloomFilter) -> Result<Vec<u64>, BloomError> {
        if self.bits != older.bits {
            return Err(BloomError::SizeMismatch);
        }
        let mut flips = Vec::new();
        for (index, (new, old)) in self.words.iter().zip(&older.words).enumerate() {
            let mut changed = new ^ old;
            while changed != 0 {
                flips.push(index as u64 * 32 + u64::from(changed.trailing_zeros()));
                changed &= changed - 1;
            }
        }
        Ok(flips)
    }

    /// Flips the given bits and sets the item count. Positions must be in range and
    /// strictly ascending; on error the filter is unchanged.
    pub fn apply(&mut self, flips: &[u64], items: u64) -> Result<(), BloomError> {
        validate_flips(flips, self.bits)?;
        for &position in flips {
            self.words[(position / 32) as usize] ^= 1 << (position % 32);
        }
        self.items = items;
        Ok(())
    }

    /// The positions of the set bits, ascending.
    pub(super) fn set_positions(&self) -> impl Iterator<Item = u64> + '_ {
        self.words.iter().enumerate().flat_map(|(index, &word)| {
            let mut rest = word;
            std::iter::from_fn(move || {
                (rest != 0).then(|| {
                    let bit = rest.trailing_zeros();
                    rest &= rest - 1;
                    index as u64 * 32 + u64::from(bit)
                })
            })
        })
    }
}

pub(super) fn validate_flips(flips: &[u64], bits: u64) -> Result<(), BloomError> {
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
