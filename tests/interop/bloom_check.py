#!/usr/bin/env python3
"""Independent check of Switchyard's `switchyard-bloom-v1` Bloom filter wire format.

Reads a full-filter dictionary (XML plist, or JSON with --json where `key` and
`filter` are base64 strings) and prints `1 uri` or `0 uri` for every line of a probe
file, computing membership from the wire format alone (see protocol/src/bloom.rs).

With --indexes URI, prints the URI's bit indexes instead, one per line; the parameters
come from the dictionary file or from --key/--bits/--hashes.
"""

import argparse
import base64
import hashlib
import hmac
import json
import plistlib
import sys

ALGORITHM = "switchyard-bloom-v1"
MASK64 = (1 << 64) - 1


def bit_indexes(key, bits, hashes, uri):
    d = hmac.new(key, uri.encode("utf-8"), hashlib.sha256).digest()
    h1 = int.from_bytes(d[0:8], "little")
    h2 = int.from_bytes(d[8:16], "little") | 1
    # The Rust side wraps at 2^64 before reducing modulo the bit count.
    return [((h1 + i * h2) & MASK64) % bits for i in range(hashes)]


def load(path, as_json):
    with open(path, "rb") as f:
        if as_json:
            d = json.load(f)
            d["key"] = base64.b64decode(d["key"], validate=True)
            d["filter"] = base64.b64decode(d["filter"], validate=True)
        else:
            d = plistlib.load(f, fmt=plistlib.FMT_XML)
    if d["algorithm"] != ALGORITHM:
        sys.exit(f"unsupported algorithm {d['algorithm']!r}")
    bits, hashes, key, bitmap = d["bits"], d["hashes"], bytes(d["key"]), bytes(d["filter"])
    if bits <= 0 or bits % 64 or bits > 1 << 34:
        sys.exit(f"invalid bit count {bits}")
    if not 1 <= hashes <= 30:
        sys.exit(f"invalid hash count {hashes}")
    if len(key) != 16:
        sys.exit(f"key must be 16 bytes, got {len(key)}")
    if len(bitmap) != bits // 8:
        sys.exit(f"filter must be {bits // 8} bytes, got {len(bitmap)}")
    return key, bits, hashes, bitmap


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("filter", nargs="?", help="full-filter dictionary file")
    parser.add_argument("probes", nargs="?", help="file of URIs, one per line")
    parser.add_argument("--json", action="store_true", help="the dictionary is JSON")
    parser.add_argument("--indexes", metavar="URI", help="print URI's bit indexes")
    parser.add_argument("--key", help="hex key for --indexes without a file")
    parser.add_argument("--bits", type=int, help="bit count for --indexes without a file")
    parser.add_argument("--hashes", type=int, help="hash count for --indexes without a file")
    args = parser.parse_args()

    if args.indexes is not None:
        if args.filter:
            key, bits, hashes, _ = load(args.filter, args.json)
        elif args.key and args.bits and args.hashes:
            key, bits, hashes = bytes.fromhex(args.key), args.bits, args.hashes
        else:
            parser.error("--indexes needs a filter file or --key, --bits and --hashes")
        for j in bit_indexes(key, bits, hashes, args.indexes):
            print(j)
        return

    if not (args.filter and args.probes):
        parser.error("need a filter file and a probe file")
    key, bits, hashes, bitmap = load(args.filter, args.json)
    out = []
    with open(args.probes, encoding="utf-8") as f:
        for line in f:
            uri = line.rstrip("\n")
            if not uri:
                continue
            present = all(bitmap[j // 8] >> (j % 8) & 1 for j in bit_indexes(key, bits, hashes, uri))
            out.append(f"{int(present)} {uri}")
    print("\n".join(out))


if __name__ == "__main__":
    main()
