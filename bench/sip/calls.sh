#!/usr/bin/env bash
# SIP calls per second: sipp UAC -> server -> sipp UAS, short calls (no media, no pause), through
# Kamailio from Debian as a plain stateful proxy (bench/sip/kamailio.cfg: transactions, record
# routing, no database, no authentication) as the reference, then through a release `switchyard
# serve`'s SIP edge (a back-to-back user agent: each INVITE challenged for digest credentials,
# each call an invitation of the invitation protocol in a fresh SQLite database). Loopback only,
# bounded by the call count and sipp's -timeout.
#
#   bench/sip/calls.sh [calls, default 5000] [in flight, default 50] [caller accounts, default 1]
#
# Both servers get the same calls offered the same way, and each prints one line (repeated side
# by side at the end): calls completed divided by the wall time of the UAC, the share of its core
# the server was busy, and the two divided (calls per CPU-second of the server, which stays
# comparable when sipp rather than the server was the limit). The server runs pinned to core 1
# and both sipps to core 0 (`taskset`). The UAC offers calls faster than they can be served
# (-r 20000/s) with at most the given number in flight (-l). Every call must succeed on both
# sides: the UAC and the UAS (which stops after the same number of calls) each exit 0. Below each
# line (stderr): sipp's retransmissions and the datagrams dropped on full socket receive buffers.
#
# Kamailio serves 5000 calls in about a second, with sipp on core 0 the limit at 50 in flight (its
# server busy share says so); `calls.sh 20000 200` gives it more room. Switchyard's SIP socket has
# a 4 MiB receive buffer (sip.udp_receive_buffer_bytes), as Kamailio gets with -b: with the
# kernel's 208 kB default, 200 in flight overflowed it and calls failed.
#
# BENCH_BIN=path runs that switchyard binary instead of building one. On a failure the sipp logs
# and the provider's serve.log are kept (the path is printed).
set -euo pipefail
cd "$(dirname "$0")/../.."
total=${1:-5000}
limit=${2:-50}
callers=${3:-1}
rate=20000
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/switchyard-target}"
command -v sipp >/dev/null || { echo "sipp missing: scripts/ensure-packages.sh" >&2; exit 1; }
# Debian puts kamailio in /usr/sbin, which an ordinary user's PATH lacks.
kamailio=$(command -v kamailio || echo /usr/sbin/kamailio)
[ -x "$kamailio" ] || { echo "kamailio missing: scripts/ensure-packages.sh" >&2; exit 1; }
. bench/lib.sh
bin=$(switchyard_binary)

work=$(mktemp -d /tmp/switchyard-sip-calls.XXXXXX)
pids=()
cleanup() {
    local rc=$?
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    if [ "$rc" -eq 0 ]; then
        rm -rf "$work"
    else
        # The logs for a bug report; the database and keys go.
        rm -rf "$work/switchyard/data"
        echo "logs kept in $work" >&2
    fi
}
trap cleanup EXIT

pin_server=()
pin_load=()
if [ "$(nproc)" -ge 2 ]; then
    pin_server=(taskset -c 1)
    pin_load=(taskset -c 0)
fi

# The built-in `-sn uac`/`-sn uas` cannot go through a record-routing proxy: the UAS does not copy
# Record-Route into its replies and the UAC sends ACK and BYE to the proxy's address without a
# Route (rrs is off), so the proxy cannot tell where they go. These are the same calls with the
# route set kept. sipp takes each call's messages strictly in order (a 180 after the 200, or an
# ACK after the BYE, fails the call), so the proxy must not reorder them.
cat > "$work/uac.xml" <<'XML'
<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="short call through a proxy">
  <send retrans="500">
    <![CDATA[

      INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:sipp@[local_ip]:[local_port]>
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=user1 53655765 2353687637 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0
      a=rtpmap:0 PCMU/8000

    ]]>
  </send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="183" optional="true"/>
  <recv response="200" rtd="true" rrs="true"/>
  <send>
    <![CDATA[

      ACK [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      [routes]
      From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <pause/>
  <send retrans="500">
    <![CDATA[

      BYE [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      [routes]
      From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 2 BYE
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <recv response="200"/>
</scenario>
XML
cat > "$work/uas.xml" <<'XML'
<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="answering UAS behind a proxy">
  <recv request="INVITE"/>
  <send>
    <![CDATA[

      SIP/2.0 180 Ringing
      [last_Via:]
      [last_Record-Route:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:[local_ip]:[local_port]>
      Content-Length: 0

    ]]>
  </send>
  <send retrans="500">
    <![CDATA[

      SIP/2.0 200 OK
      [last_Via:]
      [last_Record-Route:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:[local_ip]:[local_port]>
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=user1 53655765 2353687637 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0
      a=rtpmap:0 PCMU/8000

    ]]>
  </send>
  <recv request="ACK"/>
  <recv request="BYE"/>
  <send>
    <![CDATA[

      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

    ]]>
  </send>
  <!-- Absorbs a retransmitted BYE for a while, as the built-in UAS does. -->
  <timewait milliseconds="1000"/>
</scenario>
XML

# Each socket on the path holds up to -l calls' messages at once, and a loopback datagram takes
# a few kB of receive buffer: at 200 in flight sipp's default 64 kB and Kamailio's 256 kB
# overflow, the drops come back as retransmissions, and sipp fails calls on a retransmitted
# INVITE. 4 MB is the usual net.core.rmem_max; where that is lower the kernel caps the buffers,
# and failed calls say so. (Switchyard has no such setting: see the top of this file.)
buffer=4194304

# start_uas NAME PORT: sipp answering `total` calls on 127.0.0.1:PORT in the background (pinned
# with the load); sets uas_pid and waits until its socket is bound.
start_uas() {
    "${pin_load[@]}" sipp -sf "$work/uas.xml" -t u1 -i 127.0.0.1 -mi 127.0.0.1 -p "$2" \
        -buff_size "$buffer" -m "$total" -timeout 300s -timeout_error -nostdin \
        -trace_err -error_file "$work/$1-uas-errors.log" >"$work/$1-uas.out" 2>&1 &
    uas_pid=$!
    pids+=("$uas_pid")
    for _ in $(seq 50); do
        ss -Hlun "sport = :$2" | grep -q . && return 0
        sleep 0.1
    done
    echo "the sipp UAS did not bind 127.0.0.1:$2" >&2
    return 1
}

# cpu_seconds PID: user and system CPU time of PID (all its threads) and its direct children
# (Kamailio's workers).
cpu_seconds() {
    python3 - "$1" $(pgrep -P "$1" || true) <<'PY'
import os, sys
total = 0
for pid in sys.argv[1:]:
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        continue
    total += int(fields[11]) + int(fields[12])
print(total / os.sysconf("SC_CLK_TCK"))
PY
}

# run_uac NAME PORT SERVER_PID SIPP_ARGS...: `total` short calls to 127.0.0.1:PORT with the
# scenario in SIPP_ARGS, then checks that the UAS (uas_pid) answered them all; prints the calls
# per second and how busy the server was, and keeps that line in `results`.
results=()
run_uac() {
    local name=$1 port=$2 server=$3 start end cpu_start cpu_end drops_start drops_end socket ok
    local line rc=0
    shift 3
    drops_start=$(udp_drops)
    cpu_start=$(cpu_seconds "$server")
    start=$(date +%s.%N)
    "${pin_load[@]}" sipp "127.0.0.1:$port" "$@" -t u1 -i 127.0.0.1 \
        -mi 127.0.0.1 -p "$(free_port)" -buff_size "$buffer" -d 0 -r "$rate" -rp 1000 -l "$limit" \
        -m "$total" -timeout 300s -timeout_error -nostdin -trace_err \
        -error_file "$work/$name-uac-errors.log" >"$work/$name-uac.out" 2>&1 || rc=$?
    end=$(date +%s.%N)
    cpu_end=$(cpu_seconds "$server")
    drops_end=$(udp_drops)
    socket=$(server_socket "$port" || true)
    # sipp also exits 0 when it is interrupted (SIGINT) before the last call: count them too.
    ok=$(awk -F'|' '/Successful call/ { n = $3 } END { gsub(/ /, "", n); print n }' "$work/$name-uac.out")
    if [ "$rc" -ne 0 ] || [ "$ok" != "$total" ]; then
        echo "$name: the sipp UAC exited $rc with ${ok:-no} successful calls of $total" >&2
        tail -30 "$work/$name-uac.out" >&2
        head -40 "$work/$name-uac-errors.log" "$work/$name-uas-errors.log" >&2 2>/dev/null || true
        echo "  datagrams dropped on full receive buffers: $((drops_end - drops_start)) on the" \
            "whole host, $socket" >&2
        return 1
    fi
    # The UAS stops by itself once its last call's timewait (1 s) is over.
    for _ in $(seq 100); do kill -0 "$uas_pid" 2>/dev/null || break; sleep 0.1; done
    wait "$uas_pid" || rc=$?
    if [ "$rc" -ne 0 ]; then
        echo "$name: the sipp UAS exited $rc" >&2
        tail -30 "$work/$name-uas.out" >&2
        head -40 "$work/$name-uas-errors.log" >&2 2>/dev/null || true
        return 1
    fi
    line=$(python3 -c "
import sys
name, t, n, cpu = sys.argv[1], float(sys.argv[3]) - float(sys.argv[2]), int(sys.argv[4]), float(sys.argv[6]) - float(sys.argv[5])
print(f'{name:>10}: {n} calls in {t:6.2f} s: {n/t:6,.0f} calls/s, server busy {cpu/t:4.0%} of its core: {n/cpu if cpu else 0:6,.0f} calls per CPU-second')" \
        "$name" "$start" "$end" "$total" "$cpu_start" "$cpu_end")
    echo "$line"
    results+=("$line")
    grep -E "Successful call|Failed call" "$work/$name-uac.out" | tail -2 >&2
    # Retransmitted requests and responses (sipp's T1 is 500 ms): a server slower than that
    # to answer makes them, and many fail calls (see the top of this file).
    echo "  retransmissions: UAC $(retransmissions "$work/$name-uac.out")," \
        "UAS $(retransmissions "$work/$name-uas.out"); datagrams dropped on full receive" \
        "buffers: $((drops_end - drops_start)) on the whole host, $socket" >&2
}

# server_socket PORT: the receive buffer of the server's UDP socket on 127.0.0.1:PORT, and how
# many datagrams it dropped when full (ss's skmem rb and d).
server_socket() {
    ss -H -uanm "sport = :$1" | grep -o 'skmem:([^)]*)' | head -1 |
        sed -E 's/.*rb([0-9]+).*,d([0-9]+).*/\2 at the server'"'"'s socket (receive buffer \1 bytes)/'
}

# udp_drops: the host's count of UDP datagrams dropped on a full socket receive buffer.
udp_drops() {
    awk '$1 == "Udp:" {
        if ($2 !~ /^[0-9]+$/) { for (i = 2; i <= NF; i++) if ($i == "RcvbufErrors") f = i }
        else print $f
    }' /proc/net/snmp
}

# retransmissions SIPP_OUTPUT: the total of the Retrans column of sipp's last scenario screen.
retransmissions() {
    python3 - "$1" <<'PY'
import re, sys
text = open(sys.argv[1], errors="replace").read()
screen = text[text.rfind("Messages  Retrans"):]
screen = screen[:screen.find("Test Terminated")]
arrow = re.compile(r"-+>|<-+")
total = 0
for line in screen.splitlines():
    t = line.split()
    # The UAC's lines read `NAME ARROW MESSAGES RETRANS ...`, the UAS's `ARROW NAME MESSAGES ...`.
    if len(t) < 4 or not (arrow.fullmatch(t[0]) or arrow.fullmatch(t[1])):
        continue
    numbers = [x for x in t[2:] if not re.fullmatch(r"[EB]-RTD\d+", x)]
    if len(numbers) >= 2 and numbers[1].isdigit():
        total += int(numbers[1])
print(total)
PY
}

kamailio_calls() {
    local uas_port kam_port kam_pid
    uas_port=$(free_port)
    kam_port=$(free_port)
    start_uas kamailio "$uas_port"
    # -DD: stays in the foreground, so $! is the main process and SIGTERM takes the workers down;
    # -E: logs to stderr; -Y/-P/-w: runtime files in the temp dir, not root's /run/kamailio.
    # -n 1: one UDP worker, as it has one core, and several reorder a call's messages (two
    # workers relay the 180 and the 200, or the ACK and the BYE, in either order). -b: the receive
    # buffer above. -x tlsf: Debian's build defaults to qm, the debugging allocator, which held
    # this proxy to about 1,500 calls/s here and slows as transactions pile up. -m 2048: tm keeps
    # each transaction (some 14 kB of shared memory) for 5 s after it ends, two per call, so
    # 8,000 calls/s hold about 1 GB; 512 MB ran out at 20,000 calls (500 replies to BYEs).
    "${pin_server[@]}" "$kamailio" -f bench/sip/kamailio.cfg -l "udp:127.0.0.1:$kam_port" \
        -A "UAS_URI=\"sip:127.0.0.1:$uas_port\"" -DD -E -n 1 -b "$buffer" -x tlsf -m 2048 \
        -Y "$work" -P "$work/kamailio.pid" -w "$work" >"$work/kamailio.log" 2>&1 &
    kam_pid=$!
    pids+=("$kam_pid")
    # Ready when it answers an OPTIONS (405 from the config: only an INVITE starts a call).
    python3 - "$kam_port" <<'PY' || { echo "kamailio did not answer:" >&2; tail -20 "$work/kamailio.log" >&2; return 1; }
import socket, sys
port = int(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
s.settimeout(0.1)
me = s.getsockname()[1]
probe = (f"OPTIONS sip:probe@127.0.0.1:{port} SIP/2.0\r\n"
         f"Via: SIP/2.0/UDP 127.0.0.1:{me};branch=z9hG4bK-probe\r\n"
         "From: <sip:probe@127.0.0.1>;tag=1\r\nTo: <sip:probe@127.0.0.1>\r\nCall-ID: probe\r\n"
         "CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()
for _ in range(100):
    s.sendto(probe, ("127.0.0.1", port))
    try:
        if s.recv(65535).startswith(b"SIP/2.0 405"):
            sys.exit(0)
    except socket.timeout:
        pass
sys.exit(1)
PY
    echo "sipp: $total calls through kamailio $("$kamailio" -v | awk 'NR==1 {print $3}')" \
        "(stateful proxy) over UDP: INVITE, 100, 180, 200, ACK, BYE, 200, each relayed" >&2
    run_uac kamailio "$kam_port" "$kam_pid" -sf "$work/uac.xml" -s callee ||
        { tail -20 "$work/kamailio.log" >&2; return 1; }
}

# The same calls through `switchyard serve`'s SIP edge, a back-to-back user agent rather than a
# proxy: the caller's INVITE is challenged (407, ACK, INVITE with the digest answer), becomes an
# Initiate of the invitation protocol from the caller's user to the callee's, and the edge sends
# its own INVITE to the contact the callee's account registered from the UAS's port; 200 OK and
# BYE cross over, each leg's ACK stays on its leg. A fresh SQLite database in the temp dir, one
# provider (bench.test) with two users: tel:+442071234567 with the caller accounts
# sip:caller<i>@bench.test, tel:+442071234568 with sip:callee@bench.test. sipp's SDP has no ICE,
# so an edge that anchors such calls' media (sip.anchor_media = "auto") does so for every call.
#
# Of the order of one call in a million fails here by sipp's doing: it takes a response's CSeq method from
# the first "CSeq" anywhere in the message, and the edge's tags are random letters and digits, so
# a To tag such as BAZ9bCSeqJA makes the response unexpected ("while expecting '407' (index 2),
# received 'SIP/2.0 407"). Run again; Kamailio's hexadecimal tags cannot do it.
switchyard_calls() {
    local dir="$work/switchyard" admin_port sip_port uas_port pid rc=0
    mkdir -p "$dir"
    admin_port=$(free_port)
    sip_port=$(free_port)
    uas_port=$(free_port)
    provider_config "$dir" bench.test "$admin_port"
    sip_udp_config "$dir" "$sip_port"
    start_provider "$bin" "$dir" "$admin_port" "${pin_server[@]}" || rc=$?
    pids+=("$pid")
    [ "$rc" -eq 0 ] || return 1
    sip_accounts "$admin_port" "$dir/data/admin-token" Caller tel:+442071234567 "$dir/callers.csv" \
        caller "$callers" || return 1
    sip_accounts "$admin_port" "$dir/data/admin-token" Callee tel:+442071234568 "$dir/callee.csv" \
        callee || return 1
    # The callee's phone registers from the UAS's port, so the edge's INVITEs go to the UAS.
    "${pin_load[@]}" sipp "127.0.0.1:$sip_port" -sf tests/interop/sipp/register.xml \
        -inf "$dir/callee.csv" -key domain bench.test -auth_uri bench.test -t u1 -i 127.0.0.1 \
        -p "$uas_port" -m 1 -timeout 10s -timeout_error -nostdin -trace_err \
        -error_file "$work/switchyard-register-errors.log" >"$work/switchyard-register.out" 2>&1 || {
        echo "switchyard: the callee did not register:" >&2
        tail -20 "$work/switchyard-register.out" "$work/switchyard-register-errors.log" >&2 || true
        return 1
    }
    start_uas switchyard "$uas_port"
    echo "sipp: $total calls through switchyard $("$bin" --version | awk '{print $2}') (SIP edge," \
        "B2BUA; $callers caller account(s)) over UDP: INVITE, 100, 407, ACK, INVITE, 100, 180," \
        "200, ACK, BYE, 200 with the UAC; INVITE, 180, 200, ACK, BYE, 200 with the UAS" >&2
    run_uac switchyard "$sip_port" "$pid" -sf tests/interop/sipp/uac-auth-call.xml \
        -inf "$dir/callers.csv" -s callee -key domain bench.test -auth_uri callee@bench.test || {
        echo "switchyard: the last lines of its log ($dir/serve.log):" >&2
        tail -40 "$dir/serve.log" >&2
        return 1
    }
    # Warnings and errors (the log level) on a run where every call succeeded are news too.
    if [ -s "$dir/serve.log" ]; then
        echo "  switchyard logged $(wc -l <"$dir/serve.log") lines at warn or above; the first:" >&2
        head -5 "$dir/serve.log" >&2
    fi
}

kamailio_calls
switchyard_calls
echo "side by side ($total calls each, sipp -l $limit -r $rate, server on core 1, sipps on core 0):"
printf '%s\n' "${results[@]}"
