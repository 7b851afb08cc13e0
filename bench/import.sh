#!/usr/bin/env bash
# Bulk-import benchmark: generates a CSV of N users (default 1,000,000; each with a tel: and a
# mailto: URI), starts a release `switchyard serve` on loopback with a fresh database, imports it
# with `switchyard users import`, and prints rows/s.
#   bench/import.sh [ROWS] [sqlite|postgres]
# BENCH_BIN=path runs that switchyard binary instead of building one (to compare two builds).
set -euo pipefail
cd "$(dirname "$0")/.."
rows=${1:-1000000}
backend=${2:-sqlite}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/switchyard-target}"
. bench/lib.sh
bin=$(switchyard_binary)

work=$(mktemp -d /tmp/switchyard-bench.XXXXXX)
trap 'kill "${pid:-0}" 2>/dev/null || true; [ -s "$work/serve.log" ] && tail -5 "$work/serve.log" >&2; rm -rf "$work"' EXIT
python3 - "$rows" > "$work/users.csv" <<'PY'
import sys
n = int(sys.argv[1])
out = sys.stdout
out.write("display_name,uris\n")
for i in range(n):
    # London numbers 020 7xxx xxxx and 020 3xxx xxxx are valid E.164 numbers.
    prefix = "+44207" if i < 9_000_000 else "+44203"
    out.write(f"User {i},tel:{prefix}{1_000_000 + i % 9_000_000:07d} mailto:user{i}@bench.example\n")
PY

admin_port=$(free_port)
provider_config "$work" bench.switchyard.invalid "$admin_port"

run() {
    start_provider "$bin" "$work" "$admin_port"
    echo "importing $rows rows ($(du -h "$work/users.csv" | cut -f1)) into $backend" >&2
    "$bin" users import "$work/users.csv" --admin-url "http://127.0.0.1:$admin_port" \
        --admin-token-file "$work/data/admin-token"
}

case "$backend" in
    sqlite) run ;;
    postgres)
        export -f run free_port start_provider
        export bin work rows backend admin_port
        SYTEST_PG_FSYNC=on scripts/with-postgres.sh bash -c '
            psql "$SYTEST_POSTGRES_URL/postgres" -qc "CREATE DATABASE bench" >/dev/null
            echo "[database]" >> "$work/switchyard.toml"
            echo "url = \"$SYTEST_POSTGRES_URL/bench\"" >> "$work/switchyard.toml"
            run; kill $pid' ;;
    *) echo "backend must be sqlite or postgres" >&2; exit 2 ;;
esac
