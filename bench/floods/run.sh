#!/usr/bin/env bash
# Memory and service under floods: a release `switchyard serve` on loopback (endpoint API,
# admin, SIP edge over UDP and TCP, TURN relay; default limits) takes one flood after another
# (bench/floods/flood.py, from 127.0.0.2) while legitimate SIP phones on 127.0.0.1 register with
# digest authentication (sipp, tests/interop/sipp/register.xml, 50 a second) and place calls
# (tests/interop/sipp/uac-auth-call.xml, 10 a second: INVITE challenged for digest, answered by
# a registered sipp phone, tests/interop/sipp/uas-answer.xml, one second long, hung up). For each
# flood it prints the provider's resident memory before, at its peak during and 5 s after the
# flood (VmRSS, sampled every 0.2 s), what the flood sent, and how many of the legitimate
# registrations and calls succeeded. Loopback only; each flood is bounded in time.
#
#   bench/floods/run.sh [seconds per flood, default 20]
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-20}
rate=50
call_rate=10
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
sip_accounts "$admin_port" "$work/data/admin-token" Callee tel:+442071234568 "$work/callee.csv" \
    callee
# The callee's phone registers from the answering sipp's port, so the edge's INVITEs go there.
callee_port=$(free_port)
sipp "127.0.0.1:$sip_port" -sf tests/interop/sipp/register.xml -inf "$work/callee.csv" \
    -key domain bench.test -auth_uri bench.test -t u1 -i 127.0.0.1 -p "$callee_port" -m 1 \
    -timeout 10s -timeout_error -nostdin >"$work/callee-register.out" 2>&1 ||
    { echo "the callee did not register:" >&2; tail -20 "$work/callee-register.out" >&2; exit 1; }

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status"; }

echo "| flood | target | flood sent | RSS before | RSS peak | RSS 5 s after | legitimate registrations | legitimate calls |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
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
    calls=$((call_rate * seconds))
    sipp -sf tests/interop/sipp/uas-answer.xml -t u1 -i 127.0.0.1 -p "$callee_port" -m "$calls" \
        -timeout "$((seconds + 40))s" -nostdin >"$work/uas.out" 2>&1 &
    uas_pid=$!
    sipp "127.0.0.1:$sip_port" -sf tests/interop/sipp/uac-auth-call.xml -inf "$work/accounts.csv" \
        -s callee -key domain bench.test -auth_uri callee@bench.test -d 1000 -t u1 -i 127.0.0.1 \
        -p "$(free_port)" -r "$call_rate" -m "$calls" -timeout "$((seconds + 30))s" -nostdin \
        >"$work/uac.out" 2>&1 &
    uac_pid=$!
    peak=$before
    while kill -0 "$flood_pid" 2>/dev/null; do
        now=$(rss_kib)
        [ "$now" -gt "$peak" ] && peak=$now
        sleep 0.2
    done
    wait "$flood_pid"
    wait "$sipp_pid" || true
    wait "$uac_pid" || true
    # The answering phone stops after its count of calls; one that missed some is stopped here.
    kill "$uas_pid" 2>/dev/null || true
    wait "$uas_pid" 2>/dev/null || true
    sleep 5
    after=$(rss_kib)
    successful() { awk -F'|' '/Successful call/ { n = $3 } END { gsub(/ /, "", n); print n + 0 }' "$1"; }
    ok=$(successful "$work/sipp.out")
    calls_ok=$(successful "$work/uac.out")
    sent=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); d.pop("mode"); print(", ".join(f"{k} {v:,}" for k, v in d.items()))' "$work/flood.json")
    printf '| %s | %s | %s | %d MiB | %d MiB | %d MiB | %d of %d | %d of %d |\n' "$mode" "$name" \
        "$sent" $((before / 1024)) $((peak / 1024)) $((after / 1024)) "$ok" "$total" "$calls_ok" \
        "$calls"
done
