#!/usr/bin/env bash
# Memory per registered SIP contact: a release `switchyard serve` with its SIP edge on loopback
# (UDP), CONTACTS contacts registered with digest authentication by sipp, PER_AOR to an account
# (sip.max_contacts_per_aor is 10), and the daemon's resident memory before and after. Every
# REGISTER must succeed (sipp exits 0) and the database must then hold exactly CONTACTS contacts.
#
#   bench/sip/contacts.sh [contacts, default 100000] [per account, default 10]
#
# Prints the CPU the idle daemon spends in 10 s once the accounts exist; then its resident set
# (VmRSS) at that point, right after the last REGISTER, and once
# the edge's server transactions have expired (RFC 3261 Timer J, 32 s over UDP: each REGISTER's
# transaction keeps its final response for retransmissions that long), and the growth per contact
# at each point. BENCH_BIN=path runs that switchyard binary instead of building one.
set -euo pipefail
cd "$(dirname "$0")/../.."
contacts=${1:-100000}
per_aor=${2:-10}
[ "$per_aor" -ge 1 ] && [ "$per_aor" -le 10 ] || { echo "per account: 1 to 10" >&2; exit 2; }
[ $((contacts % per_aor)) -eq 0 ] || { echo "contacts must be a multiple of $per_aor" >&2; exit 2; }
accounts=$((contacts / per_aor))
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/switchyard-target}"
command -v sipp >/dev/null || { echo "sipp missing: scripts/ensure-packages.sh" >&2; exit 1; }
. bench/lib.sh
bin=$(switchyard_binary)

work=$(mktemp -d /tmp/switchyard-sip-contacts.XXXXXX)
trap 'kill "${pid:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT

admin_port=$(free_port)
sip_port=$(free_port)
provider_config "$work" bench.test "$admin_port"
sip_udp_config "$work" "$sip_port"
start_provider "$bin" "$work" "$admin_port"
rss() { awk '/^VmRSS:/ { print $2 * 1024 }' "/proc/$pid/status"; }

echo "making $accounts SIP accounts" >&2
sip_accounts "$admin_port" "$work/data/admin-token" Phones tel:+442071234567 "$work/phones.csv" \
    phone "$accounts"
before=$(rss)
# What the idle accounts cost: the daemon's CPU over 10 s with nothing to do.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$pid/stat"; }
idle_start=$(cpu_ticks)
sleep 10
idle_cpu=$(python3 -c "import os; print(f'{($(cpu_ticks) - $idle_start) / os.sysconf(\"SC_CLK_TCK\"):.2f}')")
echo "idle with $accounts accounts: $idle_cpu s of CPU in 10 s"

# register.xml with a contact of its own for each REGISTER: the injection file is read in
# order and wraps around, so each account gets PER_AOR distinct contacts.
sed 's/<sip:\[field0\]@\[local_ip\]/<sip:[field0]-[call_number]@[local_ip]/' \
    tests/interop/sipp/register.xml > "$work/register.xml"
grep -q '\[field0\]-\[call_number\]' "$work/register.xml"
echo "registering $contacts contacts ($per_aor per account)" >&2
started=$(date +%s.%N)
sipp "127.0.0.1:$sip_port" -sf "$work/register.xml" -inf "$work/phones.csv" \
    -key domain bench.test -auth_uri bench.test -t u1 -i 127.0.0.1 \
    -m "$contacts" -r 5000 -l 200 -timeout 600 -nostdin \
    -trace_err -error_file "$work/errors.log" >"$work/sipp.out" 2>&1 || {
    echo "sipp failed:" >&2
    tail -n 20 "$work/sipp.out" "$work/errors.log" >&2 || true
    exit 1
}
elapsed=$(python3 -c "import time; print(f'{time.time() - $started:.1f}')")
registered=$(rss)
stored=$(python3 - "$work/data" <<'PY'
import pathlib, sqlite3, sys
db = next(pathlib.Path(sys.argv[1]).glob("*.db"))
print(sqlite3.connect(f"file:{db}?mode=ro", uri=True).execute("SELECT count(*) FROM sip_contacts").fetchone()[0])
PY
)
[ "$stored" -eq "$contacts" ] || { echo "the database holds $stored contacts, not $contacts" >&2; exit 1; }
echo "waiting 40 s for the REGISTER transactions to expire" >&2
sleep 40
settled=$(rss)

python3 - "$contacts" "$before" "$registered" "$settled" "$elapsed" <<'PY'
import sys
n, before, registered, settled = map(int, sys.argv[1:5])
print(f"{n} contacts registered in {sys.argv[5]} s")
print(f"resident: {before / 2**20:.1f} MiB with the accounts, {registered / 2**20:.1f} MiB after the last REGISTER, {settled / 2**20:.1f} MiB 40 s later")
print(f"per contact: {(registered - before) / n:.0f} B right after, {(settled - before) / n:.0f} B once the transactions expired")
PY
