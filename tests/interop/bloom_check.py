#!/usr/bin/env python3
"""Independent check of Switchyard's `switchyard-bloom-v2` Bloom filter wire format.

Reads a full-filter dictionary (XML plist, or JSON with --json where `filter` is a base64
string) and prints `1 uri` or `0 uri` for every line of a probe file, computing membership
from the wire format alone (docs/protocol.md, "Bloom filters"; protocol/src/bloom/).

With --positions URI, prints the URI's eight bit positions instead, one per line; the size
comes from the dictionary file or from --bits. With --apply UPDATE, applies an incremental
update dictionary to the full filter first (decoding its block-coded `flips`).
"""

import argparse
import base64
import json
import math
import plistlib
import sys

ALGORITHM = "switchyard-bloom-v2"
MASK64 = (1 << 64) - 1
MASK32 = (1 << 32) - 1
SALT = [0x47B6137B, 0x44974D91, 0x8824AD5B, 0xA2B7289D,
        0x705495C7, 0x2DF1424B, 0x9EFC4947, 0x5C6BFB31]

P1 = 0x9E3779B185EBCA87
P2 = 0xC2B2AE3D27D4EB4F
P3 = 0x165667B19E3779F9
P4 = 0x85EBCA77C2B2AE63
P5 = 0x27D4EB2F165667C5


def rotl(x, r):
    return ((x << r) | (x >> (64 - r))) & MASK64


def xxh64_round(acc, lane):
    acc = (acc + lane * P2) & MASK64
    return (rotl(acc, 31) * P1) & MASK64


def xxh64(data, seed=0):
    """XXH64 as its specification (xxhash.com, doc/xxhash_spec.md) defines it."""
    n, i = len(data), 0
    if n >= 32:
        v = [(seed + P1 + P2) & MASK64, (seed + P2) & MASK64, seed, (seed - P1) & MASK64]
        while i + 32 <= n:
            for k in range(4):
                v[k] = xxh64_round(v[k], int.from_bytes(data[i + 8 * k:i + 8 * k + 8], "little"))
            i += 32
        h = (rotl(v[0], 1) + rotl(v[1], 7) + rotl(v[2], 12) + rotl(v[3], 18)) & MASK64
        for k in range(4):
            h = ((h ^ xxh64_round(0, v[k])) * P1 + P4) & MASK64
    else:
        h = (seed + P5) & MASK64
    h = (h + n) & MASK64
    while i + 8 <= n:
        h ^= xxh64_round(0, int.from_bytes(data[i:i + 8], "little"))
        h = (rotl(h, 27) * P1 + P4) & MASK64
        i += 8
    if i + 4 <= n:
        h ^= (int.from_bytes(data[i:i + 4], "little") * P1) & MASK64
        h = (rotl(h, 23) * P2 + P3) & MASK64
        i += 4
    while i < n:
        h ^= (data[i] * P5) & MASK64
        h = (rotl(h, 11) * P1) & MASK64
        i += 1
    h ^= h >> 33
    h = (h * P2) & MASK64
    h ^= h >> 29
    h = (h * P3) & MASK64
    h ^= h >> 32
    return h


def positions(bits, uri):
    h = xxh64(uri.encode("utf-8"))
    block = ((h >> 32) * (bits // 256)) >> 32
    x = h & MASK32
    return [block * 256 + 32 * i + (((x * SALT[i]) & MASK32) >> 27) for i in range(8)]


def allowed_bits(bits):
    """m = 256·B with B = s·2^e, s in 1..15, and m at most 2^34."""
    if not isinstance(bits, int) or bits <= 0 or bits % 256 or bits > 1 << 34:
        return False
    odd = bits // 256
    while odd % 2 == 0:
        odd //= 2
    return odd <= 15


def expected_false_positive_rate(items, blocks):
    lam = items / blocks
    if lam == 0:
        return 0.0
    if lam > 1000:
        return 1.0
    last = math.ceil(lam + 12 * math.sqrt(lam) + 30)
    log_factorial, rate = 0.0, 0.0
    for j in range(last + 1):
        if j:
            log_factorial += math.log(j)
        rate += math.exp(-lam + j * math.log(lam) - log_factorial) * (1 - (31 / 32) ** j) ** 8
    return min(rate, 1.0)


def bits_for_capacity(items, rate):
    """The smallest block count reaching `rate`, rounded up to an allowed size, times 256."""
    low, high = 1, 1 << 26
    while low < high:
        middle = (low + high) // 2
        if expected_false_positive_rate(items, middle) <= rate:
            high = middle
        else:
            low = middle + 1
    shift = max(low.bit_length() - 4, 0)
    return (-(-low // (1 << shift)) << shift) * 256


class Bloom:
    """A switchyard-bloom-v2 filter: `bits`, the bit array `bitmap` (bytes) and `items`."""

    def __init__(self, bits, bitmap=None, items=0):
        if not allowed_bits(bits):
            raise ValueError(f"invalid bit count {bits}")
        self.bits, self.items = bits, items
        self.bitmap = bytearray(bitmap if bitmap is not None else bits // 8)
        if len(self.bitmap) != bits // 8:
            raise ValueError(f"filter must be {bits // 8} bytes, got {len(self.bitmap)}")

    @staticmethod
    def sized(capacity, rate):
        return Bloom(bits_for_capacity(capacity, rate))

    def copy(self):
        return Bloom(self.bits, bytes(self.bitmap), self.items)

    def insert(self, uri):
        for j in positions(self.bits, uri):
            self.bitmap[j // 8] |= 1 << (j % 8)
        self.items += 1

    def contains(self, uri):
        return all(self.bitmap[j // 8] >> (j % 8) & 1 for j in positions(self.bits, uri))

    def diff(self, older):
        """Ascending positions of the bits that differ from `older`."""
        out = []
        for i, (a, b) in enumerate(zip(self.bitmap, older.bitmap)):
            x = a ^ b
            while x:
                out.append(i * 8 + (x & -x).bit_length() - 1)
                x &= x - 1
        return out

    def flip(self, flipped):
        for j in flipped:
            self.bitmap[j // 8] ^= 1 << (j % 8)


def flip_blocks(flipped):
    """[(block gap value, [positions in the block])], blocks ascending."""
    out, previous = [], None
    for p in flipped:
        block = p // 256
        if out and block == out[-1][2]:
            out[-1][1].append(p)
            continue
        out.append((block if previous is None else block - previous - 1, [p], block))
        previous = block
    return [(gap, positions) for gap, positions, _ in out]


def encode_flips(flipped):
    """Ascending positions as (rice-bits, flips): Rice-coded block gaps, with the r giving the
    shortest code, each followed by its eight words' flip counts (unary) and 5-bit indexes."""
    blocks = flip_blocks(flipped)
    rice_bits = min(range(35), key=lambda r: sum((g >> r) + 1 + r for g, _ in blocks))
    parts = []
    for gap, positions in blocks:
        parts.append("1" * (gap >> rice_bits) + "0")
        if rice_bits:
            parts.append(format(gap & ((1 << rice_bits) - 1), f"0{rice_bits}b"))
        for word in range(8):
            indexes = [p % 32 for p in positions if p % 256 // 32 == word]
            parts.append("1" * len(indexes) + "0" + "".join(format(i, "05b") for i in indexes))
    stream = "".join(parts)
    stream += "0" * (-len(stream) % 8)
    return rice_bits, bytes(int(stream[i:i + 8], 2) for i in range(0, len(stream), 8))


def check_bits(bits):
    if not allowed_bits(bits):
        sys.exit(f"invalid bit count {bits}")


def load_dict(path, as_json):
    with open(path, "rb") as f:
        if as_json:
            d = json.load(f)
            for field in ("filter", "flips"):
                if field in d:
                    d[field] = base64.b64decode(d[field], validate=True)
        else:
            d = plistlib.load(f, fmt=plistlib.FMT_XML)
    if d["algorithm"] != ALGORITHM:
        sys.exit(f"unsupported algorithm {d['algorithm']!r}")
    check_bits(d["bits"])
    return d


def load(path, as_json):
    d = load_dict(path, as_json)
    bits, bitmap = d["bits"], bytearray(d["filter"])
    if len(bitmap) != bits // 8:
        sys.exit(f"filter must be {bits // 8} bytes, got {len(bitmap)}")
    return bits, bitmap


def decode_flips(coded, count, rice_bits, bits):
    """The positions of a block-coded `flips` (docs/protocol.md, "Bloom filters")."""
    stream = "".join(f"{byte:08b}" for byte in coded)
    at, out, next_block = 0, [], 0

    def unary():
        nonlocal at
        end = stream.find("0", at)
        if end < 0:
            raise ValueError("flips end early")
        value, at = end - at, end + 1
        return value

    def low_bits(n):
        nonlocal at
        if at + n > len(stream):
            raise ValueError("flips end early")
        value = int(stream[at:at + n], 2) if n else 0
        at += n
        return value

    while len(out) < count:
        block = next_block + (unary() << rice_bits | low_bits(rice_bits))
        if block >= bits // 256:
            raise ValueError(f"flipped block {block} out of range for {bits} bits")
        before = len(out)
        for word in range(8):
            n = unary()
            indexes = [low_bits(5) for _ in range(n)]
            if n > 32 or indexes != sorted(set(indexes)):
                raise ValueError("a word's indexes are not ascending")
            out.extend(block * 256 + word * 32 + i for i in indexes)
        if len(out) == before or len(out) > count:
            raise ValueError("a block without flips, or past flip-count")
        next_block = block + 1
    if (at + 7) // 8 != len(coded) or "1" in stream[at:]:
        raise ValueError("flips have bits after the last position")
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("filter", nargs="?", help="full-filter dictionary file")
    parser.add_argument("probes", nargs="?", help="file of URIs, one per line")
    parser.add_argument("--json", action="store_true", help="the dictionaries are JSON")
    parser.add_argument("--positions", metavar="URI", help="print URI's bit positions")
    parser.add_argument("--bits", type=int, help="bit count for --positions without a file")
    parser.add_argument("--apply", metavar="UPDATE", help="incremental update to apply first")
    parser.add_argument("--hash", metavar="TEXT", help="print XXH64(TEXT) in hex")
    args = parser.parse_args()

    if args.hash is not None:
        print(f"{xxh64(args.hash.encode('utf-8')):016x}")
        return
    if args.positions is not None:
        if args.filter:
            bits, _ = load(args.filter, args.json)
        elif args.bits:
            check_bits(args.bits)
            bits = args.bits
        else:
            parser.error("--positions needs a filter file or --bits")
        for j in positions(bits, args.positions):
            print(j)
        return

    if not (args.filter and args.probes):
        parser.error("need a filter file and a probe file")
    bits, bitmap = load(args.filter, args.json)
    if args.apply:
        update = load_dict(args.apply, args.json)
        if update["bits"] != bits:
            sys.exit("the update is for another filter size")
        for j in decode_flips(update["flips"], update["flip-count"], update["rice-bits"], bits):
            bitmap[j // 8] ^= 1 << (j % 8)
    out = []
    with open(args.probes, encoding="utf-8") as f:
        for line in f:
            uri = line.rstrip("\n")
            if not uri:
                continue
            present = all(bitmap[j // 8] >> (j % 8) & 1 for j in positions(bits, uri))
            out.append(f"{int(present)} {uri}")
    print("\n".join(out))


if __name__ == "__main__":
    main()
