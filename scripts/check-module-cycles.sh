#!/usr/bin/env bash
# Fails if the modules of any named package import each other in a circle. cargo-modules reads
# the module graph as rust-analyzer resolves it (the "uses" edges between modules, items folded
# into their modules); tsort (coreutils) then finds any loop in it. `cargo modules dependencies
# --acyclic` cannot be used for this: it also counts a type and its own methods as a circle.
# Usage: scripts/check-module-cycles.sh TARGET...   (TARGET: PACKAGE for its library, or
# PACKAGE:BIN for one of its binaries)
set -euo pipefail
cd "$(dirname "$0")/.."

# 0.27 is the last release that builds with the toolchain the project pins (0.28 needs 1.98).
if ! cargo modules --version 2>/dev/null | grep -q '^cargo-modules 0\.27\.'; then
    echo "installing cargo-modules 0.27.0" >&2
    cargo install --locked cargo-modules --version 0.27.0
fi

status=0
for target in "$@"; do
    package=${target%%:*}
    if [ "$target" = "$package" ]; then
        selector=(--lib)
    else
        selector=(--bin "${target#*:}")
    fi
    graph=$(cargo modules dependencies --package "$package" "${selector[@]}" \
        --no-externs --no-sysroot --no-fns --no-types --no-traits --no-owns)
    edges=$(printf '%s\n' "$graph" | sed -nE 's/^ *"([^"]+)" -> "([^"]+)" \[label="uses".*/\1 \2/p')
    if [ -z "$edges" ]; then
        echo "$target: cargo-modules reported no module edges; cannot check" >&2
        status=1
        continue
    fi
    if ! loop=$(printf '%s\n' "$edges" | tsort 2>&1 >/dev/null); then
        echo "$target: modules import each other in a circle:" >&2
        printf '%s\n' "$loop" | sed -n 's/^tsort: //p' | grep -v 'input contains a loop' >&2
        status=1
    elif [ -n "$loop" ]; then
        echo "$target: modules import each other in a circle:" >&2
        printf '%s\n' "$loop" >&2
        status=1
    fi
done
exit $status
