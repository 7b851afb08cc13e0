#!/usr/bin/env bash
# Builds and starts `switchyard demo`: a provider on loopback with demo users (Ctrl-C stops it).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/switchyard-target}"
cargo build --locked --release -p switchyard-provider --bin switchyard
exec "$CARGO_TARGET_DIR/release/switchyard" demo "$@"
