//! The `flips` of an incremental update: ascending bit positions, coded block by block.
//!
//! Churn touches bits all over the array, but each URI's bits sit in one block, one in each of
//! its eight words. So the code names the touched blocks, as gaps in a Golomb–Rice code (close
//! to the entropy of their nearly geometric gaps), and then, word by word, the bits flipped in
//! each; that takes about 11% less than Rice-coding every position's gap alone, and 40% less
//! than v1's LEB128 gaps.
//!
//! Positions are grouped by block (position / 256), blocks ascending: b₀ < b₁ < …. Each block is
//! written as its gap value, g₀ = b₀ and gᵢ = bᵢ − bᵢ₋₁ − 1, in a Rice code with parameter
//! r = `rice-bits` (q = g >> r one-bits, a zero-bit, then the low r bits of g, most significant
//! first), followed by its eight words in order, each as the number c of its flipped bits (c
//! one-bits, then a zero-bit; c at most 32) and then those bits' indexes within the word (0 to
//! 31), ascending, in 5 bits each. A block is written only if it has a flipped bit. Bits fill
//! each byte from its most significant bit; the last byte is padded with zero-bits.
//!
//! A decoder reads blocks until it has `flip-count` positions and refuses a block past the
//! filter's end, a block with no flipped bit, a word count above 32 or indexes not ascending, a
//! block that would pass `flip-count`, a code that ends early, and anything but zero padding
//! after the last block.

use super::filter::{BloomError, BLOCK_BITS};

/// The largest Rice parameter: a gap never needs more low bits than a block number has.
pub(super) const MAX_RICE_BITS: u32 = 34;

/// Bits of a word index within its 32-bit word.
const INDEX_BITS: u32 = 5;

/// The touched blocks' gap values, and for each block the slice of its positions.
fn blocks(flips: &[u64]) -> impl Iterator<Item = (u64, &[u64])> + '_ {
    let mut rest = flips;
    let mut previous: Option<u64> = None;
    std::iter::from_fn(move || {
        let block = rest.first()? / BLOCK_BITS;
        let len = rest.partition_point(|p| p / BLOCK_BITS == block);
        let (positions, tail) = rest.split_at(len);
        rest = tail;
        let gap = previous.map_or(block, |previous| block - previous - 1);
        previous = Some(block);
        Some((gap, positions))
    })
}

/// Bits a block's eight words take after its gap: per word, its count in unary and 5 bits a
/// flip.
fn words_bits(positions: &[u64]) -> u64 {
    8 + positions.len() as u64 * u64::from(1 + INDEX_BITS)
}

/// The code's length in bits for parameter `rice_bits`.
fn coded_bits(flips: &[u64], rice_bits: u32) -> u64 {
    blocks(flips)
        .map(|(gap, positions)| {
            (gap >> rice_bits) + 1 + u64::from(rice_bits) + words_bits(positions)
        })
        .sum()
}

/// The parameter giving the shortest code: the one minimizing the bits that depend on it, the
/// gaps' unary parts and their low bits.
fn best_rice_bits(flips: &[u64]) -> u32 {
    let gaps: Vec<u64> = blocks(flips).map(|(gap, _)| gap).collect();
    (0..=MAX_RICE_BITS)
        .min_by_key(|&r| {
            gaps.iter().map(|g| g >> r).sum::<u64>() + gaps.len() as u64 * u64::from(r)
        })
        .expect("a non-empty range")
}

/// The encoded length in bytes, with the best parameter.
pub(super) fn encoded_len(flips: &[u64]) -> u64 {
    coded_bits(flips, best_rice_bits(flips)).div_ceil(8)
}

struct BitWriter {
    bytes: Vec<u8>,
    /// Bits used of the last byte, 0 to 7 (0: a new byte is needed).
    used: u32,
}

impl BitWriter {
    fn push(&mut self, bit: bool) {
        if self.used == 0 {
            self.bytes.push(0);
        }
        if bit {
            *self.bytes.last_mut().expect("a byte was pushed") |= 0x80 >> self.used;
        }
        self.used = (self.used + 1) % 8;
    }

    fn unary(&mut self, count: u64) {
        for _ in 0..count {
            self.push(true);
        }
        self.push(false);
    }

    fn low_bits(&mut self, value: u64, bits: u32) {
        for shift in (0..bits).rev() {
            self.push(value >> shift & 1 != 0);
        }
    }
}

/// Ascending positions as `(rice-bits, flips)`.
pub(super) fn encode(flips: &[u64]) -> (u32, Vec<u8>) {
    let rice_bits = best_rice_bits(flips);
    let capacity = coded_bits(flips, rice_bits).div_ceil(8) as usize;
    let mut out = BitWriter {
        bytes: Vec::with_capacity(capacity),
        used: 0,
    };
    for (gap, positions) in blocks(flips) {
        out.unary(gap >> rice_bits);
        out.low_bits(gap, rice_bits);
        let mut rest = positions;
        for word in 0..8 {
            let len = rest.partition_point(|p| p % BLOCK_BITS / 32 == word);
            let (in_word, tail) = rest.split_at(len);
            rest = tail;
            out.unary(len as u64);
            // The low 5 bits of a position are its index in its word.
            for &p in in_word {
                out.low_bits(p, INDEX_BITS);
            }
        }
    }
    (rice_bits, out.bytes)
}

struct BitReader<'a> {
    bytes: &'a [u8],
    next: usize,
}

impl BitReader<'_> {
    fn bit(&mut self) -> Result<bool, BloomError> {
        let byte = self
            .bytes
            .get(self.next / 8)
            .ok_or(BloomError::MalformedFlips)?;
        let bit = byte & (0x80 >> (self.next % 8)) != 0;
        self.next += 1;
        Ok(bit)
    }

    fn low_bits(&mut self, bits: u32) -> Result<u64, BloomError> {
        let mut value = 0;
        for _ in 0..bits {
            value = value << 1 | u64::from(self.bit()?);
        }
        Ok(value)
    }
}

/// Decodes `count` positions of a filter of `bits` bits; `rice_bits` is at most
/// [`MAX_RICE_BITS`]. Work and memory are bounded by the input's length.
pub(super) fn decode(
    bytes: &[u8],
    count: u64,
    rice_bits: u32,
    bits: u64,
) -> Result<Vec<u64>, BloomError> {
    if count > bits {
        return Err(BloomError::TooManyFlips { count, bits });
    }
    let blocks = bits / BLOCK_BITS;
    // A position takes at least six bits, so a count past that is caught when the input runs
    // out; it must not size the allocation.
    let mut flips = Vec::with_capacity(count.min(bytes.len() as u64 * 8 / 6) as usize);
    let mut reader = BitReader { bytes, next: 0 };
    let mut next_block = 0u64;
    while (flips.len() as u64) < count {
        let mut quotient = 0u64;
        while reader.bit()? {
            quotient += 1;
            if quotient << rice_bits >= blocks {
                return Err(BloomError::FlipOutOfRange {
                    position: next_block.saturating_add(quotient << rice_bits) * BLOCK_BITS,
                    bits,
                });
            }
        }
        let block = next_block.saturating_add(quotient << rice_bits | reader.low_bits(rice_bits)?);
        if block >= blocks {
            return Err(BloomError::FlipOutOfRange {
                position: block.saturating_mul(BLOCK_BITS),
                bits,
            });
        }
        let before = flips.len();
        for word in 0..8 {
            let mut in_word = 0;
            while reader.bit()? {
                in_word += 1;
                if in_word > 32 {
                    return Err(BloomError::MalformedFlips);
                }
            }
            let mut previous = None;
            for _ in 0..in_word {
                let index = reader.low_bits(INDEX_BITS)?;
                if previous.is_some_and(|p| p >= index) {
                    return Err(BloomError::MalformedFlips);
                }
                previous = Some(index);
                flips.push(block * BLOCK_BITS + word * 32 + index);
            }
        }
        if flips.len() == before || flips.len() as u64 > count {
            return Err(BloomError::MalformedFlips);
        }
        next_block = block + 1;
    }
    // Only zero padding, shorter than a byte, may follow.
    if reader.next.div_ceil(8) != bytes.len() {
        return Err(BloomError::MalformedFlips);
    }
    while !reader.next.is_multiple_of(8) {
        if reader.bit()? {
            return Err(BloomError::MalformedFlips);
        }
    }
    Ok(flips)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bits of a code, as `0` and `1` characters (spaces ignored), packed into bytes.
    fn packed(bits: &str) -> Vec<u8> {
        let mut out = BitWriter {
            bytes: Vec::new(),
            used: 0,
        };
        bits.chars()
            .filter(|c| *c != ' ')
            .for_each(|c| out.push(c == '1'));
        out.bytes
    }

    #[test]
    fn a_known_code() {
        // Block 1 (bit 3 of word 0, bits 1 and 30 of word 7) and block 4 (bit 0 of word 2), at
        // r = 1: gap 1 = `0 1`; counts and indexes; gap 2 = `10 0`; counts and index.
        let flips = [256 + 3, 256 + 7 * 32 + 1, 256 + 7 * 32 + 30, 4 * 256 + 64];
        let code = packed(
            "0 1  10 00011  0 0 0 0 0 0  110 00001 11110 \
             10 0  0 0  10 00000  0 0 0 0 0",
        );
        assert_eq!(coded_bits(&flips, 1), 45);
        assert_eq!(decode(&code, 4, 1, 8 * 256).unwrap(), flips);
        let (rice_bits, coded) = encode(&flips);
        assert_eq!(decode(&coded, 4, rice_bits, 8 * 256).unwrap(), flips);
    }

    #[test]
    fn the_chosen_parameter_is_the_shortest() {
        let flips: Vec<u64> = (0..1000).map(|i| i * 3000 + (i * 7919) % 256).collect();
        let (rice_bits, coded) = encode(&flips);
        for r in 0..=MAX_RICE_BITS {
            assert!(
                coded_bits(&flips, rice_bits) <= coded_bits(&flips, r),
                "r = {r}"
            );
        }
        assert_eq!(coded.len() as u64, encoded_len(&flips));
        assert_eq!(decode(&coded, 1000, rice_bits, 3000 * 1024).unwrap(), flips);
        assert_eq!(encode(&[]), (0, Vec::new()));
        assert_eq!(decode(&[], 0, 0, 256).unwrap(), Vec::<u64>::new());
    }

    #[test]
    fn round_trips_at_the_edges() {
        let bits = 1 << 34;
        for flips in [
            vec![0],
            vec![bits - 1],
            vec![0, 1, 2, 3],
            vec![0, bits - 1],
            // Every bit of a block, then of the next: counts of 32.
            (0..512).collect(),
            (0..64).map(|i| i * 256 + 255).collect(),
        ] {
            let (r, coded) = encode(&flips);
            assert_eq!(decode(&coded, flips.len() as u64, r, bits).unwrap(), flips);
        }
    }

    #[test]
    fn malformed_codes_are_refused() {
        let flips = [5, 40, 300, 301];
        let (r, coded) = encode(&flips);
        assert_eq!(decode(&coded, 4, r, 512).unwrap(), flips);
        // The count must end at a block's end, and the code must hold that many.
        assert_eq!(decode(&coded, 3, r, 512), Err(BloomError::MalformedFlips));
        assert!(decode(&coded, 5, r, 512).is_err());
        let mut longer = coded.clone();
        longer.push(0);
        assert_eq!(decode(&longer, 4, r, 512), Err(BloomError::MalformedFlips));
        // Past the last block.
        assert_eq!(
            decode(&coded, 4, r, 256),
            Err(BloomError::FlipOutOfRange {
                position: 256,
                bits: 256
            })
        );
        assert!(matches!(
            decode(&[0xff; 8], 1, 0, 40 * 256),
            Err(BloomError::FlipOutOfRange { bits: 10240, .. })
        ));
        // With r = 2, the tenth one-bit of the unary part already reaches block 40, the end.
        assert_eq!(
            decode(&[0xff; 8], 1, 2, 40 * 256),
            Err(BloomError::FlipOutOfRange {
                position: 10240,
                bits: 10240
            })
        );
        // Every bit of the filter may flip, but no more than that many.
        let every: Vec<u64> = (0..256).collect();
        let (r, coded) = encode(&every);
        assert_eq!(decode(&coded, 256, r, 256).unwrap(), every);
        assert_eq!(
            decode(&coded, 257, r, 256),
            Err(BloomError::TooManyFlips {
                count: 257,
                bits: 256
            })
        );
        assert_eq!(
            decode(&[], u64::MAX, 0, 256),
            Err(BloomError::TooManyFlips {
                count: u64::MAX,
                bits: 256
            })
        );
        let refused = [
            // A block with no flipped bit.
            ("0  0 0 0 0 0 0 0 0", 1),
            // Indexes not ascending, or repeated, within a word.
            ("0  110 00011 00001  0 0 0 0 0 0 0", 2),
            ("0  110 00011 00011  0 0 0 0 0 0 0", 2),
            // Non-zero padding after the last block.
            ("0  10 00011  0 0 0 0 0 0 0  1", 1),
        ];
        for (code, count) in refused {
            assert_eq!(
                decode(&packed(code), count, 0, 256),
                Err(BloomError::MalformedFlips),
                "{code}"
            );
        }
        // A word count past 32.
        let mut too_many = "0 ".to_string() + &"1".repeat(33);
        too_many.push_str(&"0".repeat(8));
        assert_eq!(
            decode(&packed(&too_many), 40, 0, 256),
            Err(BloomError::MalformedFlips)
        );
    }
}
