#!/usr/bin/env bash
# Installs the Debian packages the test suite needs (PostgreSQL server; coturn for
# `turnutils_uclient`, the reference TURN client of the relay tests), if missing.
set -euo pipefail

need=()
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    need+=(postgresql)
fi
if ! command -v turnutils_uclient >/dev/null 2>&1; then
    need+=(coturn)
fi
if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}" >&2
    if [ "$(id -u)" -ne 0 ]; then
        SUDO=sudo
    else
        SUDO=
    fi
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${need[@]}"
fi
