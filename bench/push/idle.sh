#!/usr/bin/env bash
# Provider memory per idle push WebSocket (issue 15: at most 8 KB each with 100,000 open): a
# release `switchyard serve` on loopback with a fresh SQLite database and ENDPOINTS registered
# endpoints, and a client process (tests/benches/push_idle.rs) opening CONNECTIONS push
# WebSockets (`GET /v1/push`, mutual TLS) round those endpoints, from 127.0.0.2, 127.0.0.3, …
# (10,000 each: one address has about 28,000 ephemeral ports, and finding a free one slows as
# they fill), and holding them idle.
#
#   bench/push/idle.sh [CONNECTIONS, default 100000] [ENDPOINTS, default 100]
#
# The provider's VmRSS (/proc/PID/status) and Pss and Anonymous (/proc/PID/smaps_rollup) are read
# after a warm-up of one channel per endpoint (what is built on first use is not counted) and
# again once all CONNECTIONS are open and have been idle for IDLE_SECONDS (default 5); the
# difference over CONNECTIONS is the cost of one idle channel. Kernel socket buffers are not in
# either figure. The open-channel gauge of the admin API's /metrics must count them all, and the
# client fails if a channel ends or a handshake fails. Also printed: the CPU time of the provider
# and the client while the channels opened, and the provider's while they were idle (with the
# default `push.recheck_interval_ms`, 2 s: the replica's watch over its channels, `push::replicas`).
#
# BENCH_BIN=path runs that switchyard binary instead of building one (to compare builds).
set -euo pipefail
cd "$(dirname "$0")/../.."
connections=${1:-100000}
endpoints=${2:-100}
idle_seconds=${IDLE_SECONDS:-5}
per_source=10000
sources=$(((connections + per_source - 1) / per_source))
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/switchyard-target}"

# Both processes hold a descriptor per connection (the provider a hundred or so of its own).
# Raising the hard limit takes CAP_SYS_RESOURCE (root, outside a container that drops it).
fds=$((connections + endpoints + 400))
if [ "$(ulimit -n)" -lt "$fds" ]; then
    ulimit -n "$fds" 2>/dev/null || {
        echo "need $fds file descriptors; the hard limit is $(ulimit -Hn) and this shell may" \
            "not raise it (CAP_SYS_RESOURCE)" >&2
        exit 1
    }
fi

. bench/lib.sh
bin=$(switchyard_binary)
client=$(cargo build --locked --release -q -p switchyard-tests --bench push_idle \
    --message-format=json | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "push_idle" and m.get("executable"):
        print(m["executable"])')

work=$(mktemp -d /tmp/switchyard-push-idle.XXXXXX)
pid=
client_pid=
cleanup() {
    local rc=$?
    exec 3>&-
    # The client first: the provider then sees the channels close, and stops at once.
    for p in $client_pid $pid; do
        kill "$p" 2>/dev/null || true
        for _ in $(seq 150); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    if [ "$rc" -ne 0 ]; then
        [ -s "$work/serve.log" ] && tail -20 "$work/serve.log" >&2
        [ -s "$work/client.err" ] && tail -20 "$work/client.err" >&2
    fi
    rm -rf "$work"
}
trap cleanup EXIT

admin_port=$(free_port)
provider_config "$work" bench.switchyard.invalid "$admin_port"
cat >> "$work/switchyard.toml" <<TOML
[log]
level = "warn"
TOML
# The endpoint API's connection cap (16,384 by default) and each client address's share of it
# (an eighth) would turn the channels away: every channel is open at once, from a few addresses.
# An idle channel moves no byte, so the idle timeout (120 s) would close those opened first.
limits=(
    SWITCHYARD_ENDPOINT_API__LIMITS__MAX_CONNECTIONS=$fds
    SWITCHYARD_ENDPOINT_API__LIMITS__MAX_CONNECTIONS_PER_CLIENT=$fds
    SWITCHYARD_ENDPOINT_API__LIMITS__IDLE_TIMEOUT_SECONDS=3600
)
start_provider "$bin" "$work" "$admin_port" env "${limits[@]}"
endpoint_api=$(awk -F'"' '/^listen/ { print $2; exit }' "$work/switchyard.toml")

# ENDPOINTS users (tel:+442071000000, +442071000001, …), each with a one-time provisioning code
# (codes.txt: index, URI, code), each registered as an endpoint by `switchyard endpoint register`
# (it makes a key pair and sends a CSR with the code).
python3 - "$admin_port" "$work/data/admin-token" "$endpoints" > "$work/codes.txt" <<'PY'
import sys
sys.path.insert(0, "bench")
from admin_api import AdminApi
port, token_file, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
call = AdminApi(port, token_file).post
for i in range(n):
    uri = f"tel:+44207{1_000_000 + i:07d}"
    user = call("/admin/v1/users", {"display_name": f"Idle {i}", "uris": [uri]})["id"]
    print(i, uri, call(f"/admin/v1/users/{user}/provisioning-codes", {})["code"])
PY
mkdir "$work/endpoints"
export bin work endpoint_api
xargs -P 4 -L 1 bash -c 'exec "$bin" endpoint register --provider "https://$endpoint_api" \
    --ca "$work/data/endpoint-ca.pem" --uri "$1" --code="$2" --name "idle $0" \
    --state "$work/endpoints/$(printf %05d "$0")" >/dev/null' < "$work/codes.txt"

# memory: VmRSS, Pss and Anonymous of the provider, in KiB.
memory() {
    awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status"
    awk '$1 == "Pss:" || $1 == "Anonymous:" { print $2 }' "/proc/$pid/smaps_rollup"
}

# cpu_seconds PID: user and system CPU time of PID (all its threads).
cpu_seconds() {
    awk -v tck="$(getconf CLK_TCK)" '{ sub(/.*\) /, ""); print ($12 + $13) / tck }' "/proc/$1/stat"
}

channels_open() {
    curl -sf "http://127.0.0.1:$admin_port/metrics" |
        awk '$1 == "switchyard_push_channels_open" { print $2 }'
}

# wait_for LINE SECONDS: until the client printed LINE on stdout (it fails fast by itself).
wait_for() {
    for _ in $(seq $(($2 * 10))); do
        grep -qx "$1" "$work/client.out" && return 0
        kill -0 "$client_pid" 2>/dev/null || { echo "the client exited:" >&2; return 1; }
        sleep 0.1
    done
    echo "no '$1' from the client within $2 s" >&2
    return 1
}

mkfifo "$work/control"
"$client" "$work/endpoints" "$connections" "$sources" 256 <"$work/control" \
    >"$work/client.out" 2>"$work/client.err" &
client_pid=$!
exec 3>"$work/control"
wait_for "warm $endpoints" 120
sleep 2
read -r rss0 pss0 anon0 < <(memory | paste -sd' ')
cpu_p0=$(cpu_seconds "$pid")
cpu_c0=$(cpu_seconds "$client_pid")
start=$(date +%s.%N)
echo >&3
echo "opening $connections push WebSockets from $sources source address(es) to $endpoint_api" >&2
wait_for "open $connections" $((120 + connections / 100))
end=$(date +%s.%N)
cpu_p1=$(cpu_seconds "$pid")
cpu_c1=$(cpu_seconds "$client_pid")
sleep "$idle_seconds"
cpu_p2=$(cpu_seconds "$pid")
read -r rss1 pss1 anon1 < <(memory | paste -sd' ')
gauge=$(channels_open)
# Ends the client's stdin: it checks that no channel was lost and exits.
exec 3>&-
for _ in $(seq 600); do kill -0 "$client_pid" 2>/dev/null || break; sleep 0.1; done
rc=0
kill -0 "$client_pid" 2>/dev/null && { echo "the client did not exit" >&2; exit 1; }
wait "$client_pid" || rc=$?
client_pid=
[ "$rc" -eq 0 ] || { echo "the client failed ($rc):" >&2; exit 1; }
grep -v ' of .* open (' "$work/client.err" >&2 || true

python3 - "$connections" "$endpoints" "$gauge" "$start" "$end" "$cpu_p0" "$cpu_p1" "$cpu_c0" "$cpu_c1" \
    "$rss0" "$rss1" "$pss0" "$pss1" "$anon0" "$anon1" "$cpu_p2" "$idle_seconds" <<'PY'
import sys
n, endpoints = int(sys.argv[1]), int(sys.argv[2])
gauge = float(sys.argv[3] or "nan")
start, end, p0, p1, c0, c1 = map(float, sys.argv[4:10])
mem = list(map(int, sys.argv[10:16]))
p2, idle = float(sys.argv[16]), float(sys.argv[17])
print(f"{n} idle push WebSockets ({endpoints} endpoints, plus one warm-up channel each), "
      f"opened in {end - start:.1f} s; switchyard_push_channels_open = {gauge:.0f}")
for name, (before, after) in zip(("VmRSS", "Pss", "Anonymous"), zip(mem[0::2], mem[1::2])):
    print(f"  {name:>9}: {before / 1024:8.1f} -> {after / 1024:8.1f} MiB: "
          f"{(after - before) * 1024 / n:8,.0f} bytes per connection")
print(f"  CPU while opening: provider {p1 - p0:.1f} s, client {c1 - c0:.1f} s")
print(f"  CPU while idle for {idle:.0f} s: provider {p2 - p1:.2f} s")
if gauge != n + endpoints:
    sys.exit(f"the gauge counts {gauge:.0f} open channels, not {n + endpoints}")
PY
