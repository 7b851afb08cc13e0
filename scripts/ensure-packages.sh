#!/usr/bin/env bash
# Installs the Debian packages the test suite needs (PostgreSQL server; coturn for
# `turnutils_uclient`, the reference TURN client of the relay tests, and `turnserver`, the reference
# relay of bench/relay; sipp, from sip-tester, for the SIP edge's interop tests and bench/sip;
# kamailio, the reference stateful proxy of bench/sip/calls.sh; baresip, the SIP phones with real
# audio of the SIP gateway's interop tests, see tests/interop/baresip/README.md), and libsrtp2 with
# a C compiler for bench/srtp, if missing.
set -euo pipefail

need=()
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    need+=(postgresql)
fi
if ! command -v turnutils_uclient >/dev/null 2>&1; then
    need+=(coturn)
fi
if [ ! -f /usr/include/srtp2/srtp.h ]; then
    need+=(libsrtp2-dev)
fi
if ! command -v sipp >/dev/null 2>&1; then
    need+=(sip-tester)
fi
# kamailio lives in /usr/sbin, which is not on an ordinary user's PATH.
if ! command -v kamailio >/dev/null 2>&1 && [ ! -x /usr/sbin/kamailio ]; then
    need+=(kamailio)
fi
# baresip-core holds the binary and every module the tests load (aufile, aubridge, sndfile, g711,
# dtls_srtp, ice).
if ! command -v baresip >/dev/null 2>&1; then
    need+=(baresip-core)
fi
# The media tests build networks in namespaces: veth, a bridge, nftables firewalls and loss, and
# check the NAT they build with a python3 probe.
if ! command -v ip >/dev/null 2>&1 || ! command -v tc >/dev/null 2>&1; then
    need+=(iproute2)
fi
if ! command -v nft >/dev/null 2>&1; then
    need+=(nftables)
fi
if ! command -v python3 >/dev/null 2>&1; then
    need+=(python3)
fi
# Node and npm for the admin UI's checks (admin-ui/package.json), and the browser its tests
# drive with playwright-core.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    need+=(nodejs npm)
fi
if ! command -v chromium >/dev/null 2>&1; then
    need+=(chromium)
fi
if ! command -v gcc >/dev/null 2>&1; then
    need+=(gcc libc6-dev)
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
