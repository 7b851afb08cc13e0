#!/usr/bin/env bash
# Memory and service under floods: a release `switchyard serve` on loopback (endpoint API,
# admin, SIP edge over UDP and TCP, TURN relay; default limits) takes one flood after another
# (bench/floods/flood.py, from 127.0.0.2) while a legitimate SIP phone population registers with
# digest authentication from 127.0.0.1 (sipp, tests/interop/sipp/register.xml, 50 a second).
# For each flood it prints the provider's resident memory before, at its peak during and 5 s
# after the flood (VmRSS, sampled every 0.2 s), what the flood sent, and how many of the
# legitimate registrations succeeded. Loopback only; each flood is bounded in time.
#
#   bench/floods/run.sh [seconds per flood, default 20]
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-20}
rate=50
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/switchyard-target}"
command -v sipp >/dev/null || { echo "sipp missing: scripts/ensure-packages.sh" >&2; exit 1; }
ip -4 addr show lo | grep -q "127.0.0.1/8" || { echo "loopback must be 127.0.0.1/8 (127.0.0.2 floods)" >&2; exit 1; }
cargo build --locked --release -q -p switchyard-provider --bin switchyard
bin="$CARGO_TARGET_DIR/release/switchyard"

work=$(mktemp -d /tmp/switchyard-floods.XXXXXX)
pid=
trap 'if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi; rm -rf "$work"' EXIT
. bench/lib.sh
admin_port=$(free_port)
endpoint_port=$(free_port)
sip_port=$(free_port)
relay_port=$(free_port)
head -c 32 /dev/urandom | base64 >"$work/relay-secret"
# Default limits: the floods come from a client of their own, as they would.
cat >"$work/switchyard.toml" <<TOML
data_dir = "$work/data"
provider_id = "bench.test"
[endpoint_api]
listen = "127.0.0.1:$endpoint_port"
[admin]
listen = "127.0.0.1:$admin_port"
[sip]
enabled = true
udp_listen = "127.0.0.1:$sip_port"
tcp_listen = "127.0.0.1:$sip_port"
[relay]
enabled = true
listen = "127.0.0.1:$relay_port"
realm = "bench.test"
secret = "$work/relay-secret"
[log]
level = "warn"
TOML
start_provider "$bin" "$work" "$admin_port"
sip_accounts "$admin_port" "$work/data/admin-token" Bench tel:+442071234567 "$work/accounts.csv" \
    phone 200

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status"; }

echo "| flood | target | flood sent | RSS before | RSS peak | RSS 5 s after | legitimate registrations |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
for flood in "slow-headers admin 127.0.0.1:$admin_port" \
    "idle endpoint-api 127.0.0.1:$endpoint_port" \
    "slow-headers endpoint-api 127.0.0.1:$endpoint_port" \
    "invites sip-udp 127.0.0.1:$sip_port" \
    "sip-nonreader sip-tcp 127.0.0.1:$sip_port" \
    "allocates turn 127.0.0.1:$relay_port"; do
    read -r mode name target <<<"$flood"
    before=$(rss_kib)
    python3 bench/floods/flood.py "$mode" "$target" "$seconds" >"$work/flood.json" &
    flood_pid=$!
    total=$((rate * seconds))
    sipp "127.0.0.1:$sip_port" -sf tests/interop/sipp/register.xml -inf "$work/accounts.csv" \
        -key domain bench.test -auth_uri bench.test -t u1 -i 127.0.0.1 -p "$(free_port)" \
        -r "$rate" -m "$total" -timeout "$((seconds + 30))s" -nostdin \
        >"$work/sipp.out" 2>&1 &
    sipp_pid=$!
    peak=$before
    while kill -0 "$flood_pid" 2>/dev/null; do
        now=$(rss_kib)
        [ "$now" -gt "$peak" ] && peak=$now
        sleep 0.2
    done
    wait "$flood_pid"
    wait "$sipp_pid" || true
    sleep 5
    after=$(rss_kib)
    ok=$(awk -F'|' '/Successful call/ { n = $3 } END { gsub(/ /, "", n); print n + 0 }' "$work/sipp.out")
    sent=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); d.pop("mode"); print(", ".join(f"{k} {v:,}" for k, v in d.items()))' "$work/flood.json")
    printf '| %s | %s | %s | %d MiB | %d MiB | %d MiB | %d of %d |\n' "$mode" "$name" "$sent" \
        $((before / 1024)) $((peak / 1024)) $((after / 1024)) "$ok" "$total"
done
