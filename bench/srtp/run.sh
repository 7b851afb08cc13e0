#!/usr/bin/env bash
# SRTP protect/unprotect throughput, Switchyard (webrtc-srtp, media/benches/srtp.rs) next to
# libsrtp2 (Debian's libsrtp2-dev, bench/srtp/srtp_bench.c), one core each, in one run.
#
#   bench/srtp/run.sh [seconds per case, default 2]
#
# Both run pinned to one core (taskset -c 1 when there are two or more), one after the other.
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-2}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/switchyard-target}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

gcc -O2 -Wall -Wextra -o "$out/srtp_bench" bench/srtp/srtp_bench.c -lsrtp2
cargo bench -p switchyard-media --bench srtp --no-run >/dev/null 2>"$out/build.log" ||
    { cat "$out/build.log" >&2; exit 1; }
# The bench binary cargo just built (the newest srtp-* executable).
rust_bin=$(ls -t "$CARGO_TARGET_DIR"/release/deps/srtp-* | grep -v '\.d$' | head -1)

pin=()
if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
    pin=(taskset -c 1)
fi
SRTP_BENCH_SECONDS=$secs timeout 300 "${pin[@]}" "$rust_bin" >"$out/rust.txt"
timeout 300 "${pin[@]}" "$out/srtp_bench" "$secs" >"$out/c.txt"

echo "libsrtp $(dpkg-query -W -f='${Version}' libsrtp2-1 2>/dev/null || echo '?'), ${secs} s per case, $(date -u +%F)"
echo
echo "| profile | op | payload B | Switchyard pkt/s | Switchyard Mbit/s | libsrtp pkt/s | libsrtp Mbit/s | Switchyard / libsrtp |"
echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
join -j1 <(awk '{print $2"|"$3"|"$4, $5, $6}' "$out/rust.txt" | sort) \
         <(awk '{print $2"|"$3"|"$4, $5, $6}' "$out/c.txt" | sort) |
    awk 'function c(x,  s, r) { s = sprintf("%.0f", x); r = "";
                                while (length(s) > 3) { r = "," substr(s, length(s) - 2) r; s = substr(s, 1, length(s) - 3) }
                                return s r }
         {split($1, k, "|"); printf "| %s | %s | %s | %s | %s | %s | %s | %.2f |\n",
          k[1], k[2], k[3], c($2), c($3), c($4), c($5), $2 / $4}' |
    sort -t'|' -k2,2r -k4,4n -k3,3
