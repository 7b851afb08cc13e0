#!/usr/bin/env bash
# TURN relay throughput (UDP, ChannelData) and memory per allocation: Switchyard's relay
# (switchyard_provider::relay::Relay, provider/examples/relay_bench.rs) next to coturn's
# `turnserver`, with the same load generator, in one run. Loopback only.
#
#   bench/relay/run.sh [seconds per case, default 5] [clients, default 8] [allocations, default 1000]
#
# Each server runs pinned to core 1 (`taskset -c 1`; coturn with one relay thread), the load
# generator and its sink peer on core 0. The generator makes <clients> allocations with a
# channel bound to the sink, then sends ChannelData frames as fast as it can; the figure is what
# the sink receives per second (after 0.5 s of warm-up), and the server's CPU use over the run
# (utime+stime from /proc) says how much of its core it used. Memory: the server's VmRSS before
# and after <allocations> allocations (held), divided by their number. The generator paces its
# sending (the sink shares its core): offered rates step up (RATES) until loss passes 10% and the
# relayed rate stops growing.
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-5}
clients=${2:-8}
nalloc=${3:-1000}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/switchyard-target}
SECRET=bench-secret-0123456789abcdef
REALM=bench.switchyard.invalid
SY_ADDR=127.0.0.1:34780
CT_PORT=34790
CT_ADDR=127.0.0.1:$CT_PORT
# Offered rates (pkt/s), tried in order per server and size until loss passes 10% and the
# relayed rate stops growing.
RATES=${RATES:-"25000 50000 75000 100000 125000 150000 200000 250000 300000"}
ulimit -n 65536 2>/dev/null || true
commas() { echo "$1" | sed -e ':a' -e 's/\B[0-9]\{3\}\>/,&/' -e 'ta'; }

command -v turnserver >/dev/null || { echo "turnserver missing: scripts/ensure-packages.sh" >&2; exit 1; }
cargo build --release -p switchyard-provider --example relay_bench >/dev/null 2>/tmp/relay_bench_build.log ||
    { cat /tmp/relay_bench_build.log >&2; exit 1; }
BIN=$CARGO_TARGET_DIR/release/examples/relay_bench

out=$(mktemp -d)
server_pid=
cleanup() {
    if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
    rm -rf "$out"
}
trap cleanup EXIT

pin_server=()
pin_load=()
if [ "$(nproc)" -ge 2 ]; then
    pin_server=(taskset -c 1)
    pin_load=(taskset -c 0)
fi

start_server() { # name
    case $1 in
        switchyard)
            rm -rf "$out/sy"
            "${pin_server[@]}" "$BIN" serve "$SY_ADDR" "$SECRET" "$REALM" "$out/sy" >"$out/sy.log" 2>&1 &
            server_pid=$!
            for _ in $(seq 100); do grep -q '^ready' "$out/sy.log" 2>/dev/null && break; sleep 0.1; done
            grep -q '^ready' "$out/sy.log" || { cat "$out/sy.log" >&2; exit 1; }
            ADDR=$SY_ADDR ;;
        coturn)
            "${pin_server[@]}" turnserver -n --listening-ip 127.0.0.1 --listening-port "$CT_PORT" \
                --relay-ip 127.0.0.1 --realm "$REALM" --use-auth-secret --static-auth-secret="$SECRET" \
                --no-tls --no-dtls --no-tcp --no-tcp-relay --allow-loopback-peers --no-cli \
                --relay-threads 1 --log-file "$out/coturn.log" --simple-log --pidfile "$out/coturn.pid" \
                >/dev/null 2>&1 &
            server_pid=$!
            sleep 1
            kill -0 "$server_pid" || { cat "$out"/coturn*.log >&2; exit 1; }
            ADDR=$CT_ADDR ;;
    esac
}
stop_server() {
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=
    sleep 0.5
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$server_pid/stat"; }
udp_drops() { awk '/^Udp:/ {n++; if (n == 1) for (i = 1; i <= NF; i++) if ($i == "RcvbufErrors") c = i; if (n == 2) print $c}' /proc/net/snmp; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$server_pid/status"; }

declare -A RES MAX MEM
for server in switchyard coturn; do
    start_server $server
    for size in 200 1200; do
        RES[$server,$size]="- - - - - - - - -"
        MAX[$server,$size]=0
        for rate in $RATES; do
            t0=$(cpu_ticks)
            d0=$(udp_drops)
            line=$(timeout $((secs + 60)) "${pin_load[@]}" "$BIN" load "$ADDR" "$SECRET" "$REALM" "$size" "$clients" "$secs" "$rate")
            t1=$(cpu_ticks)
            drops=$(( $(udp_drops) - d0 ))
            cpu=$(awk -v a="$t0" -v b="$t1" -v s="$secs" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.0f", 100 * (b - a) / hz / s}')
            echo "$server $size @ $rate pkt/s: $line, server CPU ~${cpu}% of a core, UDP receive-buffer drops (machine-wide) $drops" >&2
            # sent <pps> received <pps> <mbps> loss <pct>
            set -- $line
            grew=0
            if awk -v r="$4" -v m="${MAX[$server,$size]}" 'BEGIN {exit !(r > m)}'; then MAX[$server,$size]=$4; grew=1; fi
            if awk -v l="$7" 'BEGIN {exit !(l <= 1.0)}'; then
                RES[$server,$size]="$line cpu $cpu"
            elif [ $grew = 0 ] && awk -v l="$7" 'BEGIN {exit !(l > 10.0)}'; then
                break # saturated: more offered, no more relayed
            fi
        done
    done
    stop_server
    start_server $server
    sleep 1
    before=$(rss_kib)
    timeout 120 "${pin_load[@]}" "$BIN" allocs "$ADDR" "$SECRET" "$REALM" "$nalloc" 4 >"$out/allocs.txt" &
    apid=$!
    for _ in $(seq 600); do grep -q '^allocated' "$out/allocs.txt" 2>/dev/null && break; sleep 0.1; done
    sleep 1
    after=$(rss_kib)
    wait "$apid" || { echo "allocs against $server failed" >&2; exit 1; }
    MEM[$server]="$before $after $(cat "$out/allocs.txt")"
    echo "$server RSS $before -> $after KiB for $nalloc allocations ($(cat "$out/allocs.txt"))" >&2
    stop_server
done

echo "coturn $(dpkg-query -W -f='${Version}' coturn 2>/dev/null || echo '?'), ${secs} s per case, $clients allocations sending, $(date -u +%F)"
echo
echo "Highest paced rate relayed with at most 1% loss, and the most relayed at any offered rate:"
echo
echo "| server | payload B | offered pkt/s | relayed pkt/s | relayed Mbit/s (payload) | loss | server CPU (one core) | relayed pkt/s per core (relayed / CPU) | most relayed pkt/s |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
for size in 200 1200; do
    for server in switchyard coturn; do
        # sent <pps> received <pps> <mbps> loss <pct> cpu <pct>
        set -- ${RES[$server,$size]}
        percore=$(awk -v p="$4" -v c="$9" 'BEGIN {if (c > 0) printf "%.0f", p * 100 / c; else print "-"}')
        printf '| %s | %s | %s | %s | %s | %s%% | %s%% | %s | %s |\n' "$server" "$size" \
            "$(commas "$2")" "$(commas "$4")" "$5" "$7" "$9" "$(commas "$percore")" "$(commas "${MAX[$server,$size]}")"
    done
done
echo
echo "| server | RSS before | RSS after $nalloc allocations | per allocation |"
echo "| --- | ---: | ---: | ---: |"
for server in switchyard coturn; do
    set -- ${MEM[$server]}
    awk -v s="$server" -v a="$1" -v b="$2" -v n="$nalloc" \
        'BEGIN {printf "| %s | %.1f MiB | %.1f MiB | %.1f KiB |\n", s, a / 1024, b / 1024, (b - a) / n}'
done
