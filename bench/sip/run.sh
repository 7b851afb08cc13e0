#!/usr/bin/env bash
# SIP registrations per second with digest authentication: sipp (tests/interop/sipp/register.xml:
# REGISTER, 401, REGISTER with the answer, 200) against a release `switchyard serve` with its SIP
# edge on loopback and a fresh SQLite database. Loopback only, bounded by the registration count.
# BENCH_BIN=path runs that switchyard binary instead of building one.
#
#   bench/sip/run.sh [registrations, default 20000] [accounts, default 1000] [u1|t1, default u1]
#
# The provider runs pinned to core 1 and sipp to core 0 (`taskset`). sipp offers registrations
# faster than they can be served (-r 20000/s) with at most 200 in flight (-l 200); the figure is
# registrations completed divided by the wall time of the run. Every registration must succeed
# (sipp exits 0), and each is one database transaction (its bindings) plus one account lookup.
set -euo pipefail
cd "$(dirname "$0")/../.."
total=${1:-20000}
accounts=${2:-1000}
transport=${3:-u1}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/switchyard-target}"
command -v sipp >/dev/null || { echo "sipp missing: scripts/ensure-packages.sh" >&2; exit 1; }
. bench/lib.sh
bin=$(switchyard_binary)

work=$(mktemp -d /tmp/switchyard-sip-bench.XXXXXX)
pid=
trap 'if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi; rm -rf "$work"' EXIT
admin_port=$(free_port)
sip_port=$(free_port)
provider_config "$work" bench.test "$admin_port"
cat >> "$work/switchyard.toml" <<TOML
[sip]
enabled = true
udp_listen = "127.0.0.1:$sip_port"
tcp_listen = "127.0.0.1:$sip_port"
# sipp is one source: the per-source rate, a defence against one flooding address, is lifted.
requests_per_second_per_source = 1000000
request_burst_per_source = 1000000
[log]
level = "warn"
TOML

pin_server=()
pin_load=()
if [ "$(nproc)" -ge 2 ]; then
    pin_server=(taskset -c 1)
    pin_load=(taskset -c 0)
fi
start_provider "$bin" "$work" "$admin_port" "${pin_server[@]}"

# One user holding <accounts> SIP accounts user0..userN-1, and sipp's injection file for them.
sip_accounts "$admin_port" "$work/data/admin-token" Bench tel:+442071234567 "$work/accounts.csv" \
    user "$accounts"

echo "sipp: $total registrations of $accounts accounts over ${transport/u1/UDP}" >&2
start=$(date +%s.%N)
"${pin_load[@]}" sipp "127.0.0.1:$sip_port" -sf tests/interop/sipp/register.xml -inf "$work/accounts.csv" \
    -key domain bench.test -auth_uri bench.test -t "$transport" -i 127.0.0.1 -p "$(free_port)" \
    -r 20000 -rp 1000 -l 200 -m "$total" -timeout 300s -nostdin -trace_err -error_file "$work/errors.log" \
    >"$work/sipp.out" 2>&1 || { tail -30 "$work/sipp.out" >&2; head -20 "$work/errors.log" >&2; exit 1; }
end=$(date +%s.%N)
python3 -c "import sys; t=float(sys.argv[2])-float(sys.argv[1]); n=int(sys.argv[3]); print(f'{n} registrations in {t:.2f} s: {n/t:,.0f} registrations/s (each REGISTER, 401, REGISTER, 200)')" "$start" "$end" "$total"
grep -E "Successful call|Failed call" "$work/sipp.out" | tail -2 >&2
