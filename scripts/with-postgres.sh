#!/usr/bin/env bash
# Runs a command against a throwaway PostgreSQL server: a fresh cluster in a temporary folder,
# listening on loopback only, stopped and deleted afterwards. The command sees its URL in
# SYTEST_POSTGRES_URL (tests create one database each under it). fsync is off unless
# SYTEST_PG_FSYNC=on (benchmarks set it).
#   scripts/with-postgres.sh COMMAND [ARGS...]
set -euo pipefail

bindir=$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n 1)")
[ -x "$bindir/initdb" ] || { echo "PostgreSQL server not installed; run scripts/ensure-packages.sh" >&2; exit 1; }

workdir=$(mktemp -d /tmp/switchyard-pg.XXXXXX)
# initdb refuses to run as root: run the server as the `postgres` user the package creates.
if [ "$(id -u)" -eq 0 ]; then
    chown postgres: "$workdir"
    as_pg() { runuser -u postgres -- "$@"; }
else
    as_pg() { "$@"; }
fi
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

cleanup() {
    as_pg "$bindir/pg_ctl" -D "$workdir/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$workdir"
}
trap cleanup EXIT

as_pg "$bindir/initdb" -D "$workdir/data" -U postgres --auth=trust --encoding=UTF8 --no-sync >/dev/null
as_pg "$bindir/pg_ctl" -D "$workdir/data" -l "$workdir/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $workdir -c max_connections=300 -c fsync=${SYTEST_PG_FSYNC:-off}" start >/dev/null

export SYTEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$port"
echo "PostgreSQL running at $SYTEST_POSTGRES_URL" >&2
"$@"
