#!/usr/bin/env bash
# Runs every check and test: formatting, clippy, unit and integration tests on SQLite, and the
# integration tests again on a throwaway PostgreSQL. Installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/switchyard-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

scripts/ensure-packages.sh
# The admin UI's checks run on Node (admin-ui/package.json, locked).
(cd admin-ui && npm ci --no-audit --no-fund --loglevel=error)
log=$(mktemp /tmp/switchyard-test.XXXXXX)
trap 'rm -f "$log"' EXIT

echo "== cargo fmt --check" >&2
cargo fmt --all -- --check
echo "== cargo clippy" >&2
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== the endpoint crate without the daemon's dependencies" >&2
endpoint_deps=$(cargo tree -p switchyard-endpoint -e normal --locked)
if grep -E 'sqlx|rusqlite|axum|utoipa' <<<"$endpoint_deps"; then
    echo "switchyard-endpoint must not depend on sqlx, rusqlite, axum or utoipa (above)" >&2
    exit 1
fi

# The call core stays free of I/O: none of these may ever be among its dependencies.
echo "== switchyard-calls has no I/O dependencies" >&2
forbidden=$(cargo tree --locked -p switchyard-calls -e normal --prefix none | grep -E '^(tokio|sqlx|rusqlite|axum|reqwest|hyper) ' || true)
if [ -n "$forbidden" ]; then
    echo "switchyard-calls depends on: $forbidden" >&2
    exit 1
fi

echo "== no import circles between modules" >&2
scripts/check-module-cycles.sh switchyard-protocol switchyard-calls switchyard-media \
    switchyard-endpoint switchyard-provider switchyard-provider:switchyard switchyard-tests

echo "== tests on SQLite" >&2
SYTEST_DATABASE=sqlite cargo test --workspace --locked 2>&1 | tee -a "$log"

echo "== integration tests on PostgreSQL" >&2
scripts/with-postgres.sh env SYTEST_DATABASE=postgres \
    cargo test --locked -p switchyard-tests 2>&1 | tee -a "$log"

# One closing line over both runs (each cargo test prints one line per test binary).
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "all test runs: %d passed, %d failed\n", passed, failed }' "$log"
