#!/usr/bin/env bash
# Builds and starts `switchyard demo`: a federation on loopback (a directory and three providers,
# A, B and C, with a demo user each); Ctrl-C stops it. Options go to `switchyard demo`, e.g.
# `scripts/demo.sh --endpoint-listen 127.0.0.1:9443` (see `switchyard demo --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/switchyard-target}"
cargo build --locked --release -p switchyard-provider --bin switchyard
exec "$CARGO_TARGET_DIR/release/switchyard" demo "$@"
