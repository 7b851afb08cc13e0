# Shared by the bench scripts (source it): the binary to measure, free loopback ports, and a
# release `switchyard serve` on loopback.

# switchyard_binary: the release `switchyard` to measure, printed: $BENCH_BIN when set (to compare
# builds), else the workspace's, built first.
switchyard_binary() {
    if [ -n "${BENCH_BIN:-}" ]; then
        echo "$BENCH_BIN"
        return
    fi
    cargo build --locked --release -q -p switchyard-provider --bin switchyard
    echo "$CARGO_TARGET_DIR/release/switchyard"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# provider_config WORK PROVIDER_ID ADMIN_PORT: writes WORK/switchyard.toml (data in WORK/data,
# the endpoint API on a free port); callers append sections of their own. The load generators
# are one client (127.0.0.1) each, so the per-client request rates, a defence against one
# flooding address, are lifted: the benchmarks measure what the provider can serve.
provider_config() {
    cat > "$1/switchyard.toml" <<TOML
data_dir = "$1/data"
provider_id = "$2"
[endpoint_api]
listen = "127.0.0.1:$(free_port)"
[endpoint_api.limits]
requests_per_second_per_client = 1000000
request_burst_per_client = 1000000
[admin]
listen = "127.0.0.1:$3"
[admin.limits]
requests_per_second_per_client = 1000000
request_burst_per_client = 1000000
TOML
}

# sip_udp_config WORK SIP_PORT: appends to WORK/switchyard.toml a SIP edge on UDP
# 127.0.0.1:SIP_PORT, with the per-source rate lifted (sipp is one source; the limit is a defence
# against one flooding address), and warnings-only logs.
sip_udp_config() {
    cat >> "$1/switchyard.toml" <<TOML
[sip]
enabled = true
transports = ["udp"]
udp_listen = "127.0.0.1:$2"
requests_per_second_per_source = 1000000
request_burst_per_source = 1000000
[log]
level = "warn"
TOML
}

# start_provider BIN WORK ADMIN_PORT [PREFIX...]: starts BIN serve on WORK/switchyard.toml (under
# PREFIX, e.g. taskset), logging to WORK/serve.log; sets `pid` and waits until it is ready.
start_provider() {
    local bin=$1 work=$2 admin_port=$3
    shift 3
    "$@" "$bin" serve --config "$work/switchyard.toml" 2>"$work/serve.log" &
    pid=$!
    for _ in $(seq 100); do
        curl -sf "http://127.0.0.1:$admin_port/readyz" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "the provider did not become ready:" >&2
    tail -20 "$work/serve.log" >&2
    return 1
}

# sip_accounts ADMIN_PORT TOKEN_FILE DISPLAY_NAME TEL CSV NAME [COUNT]: makes a user (with the
# `tel:` URI TEL) holding SIP accounts in domain bench.test, NAME0..NAME{COUNT-1} or NAME alone,
# each with password NAME-secret, and writes sipp's injection file for them to CSV
# (`SEQUENTIAL`, then `user;[authentication username=user password=…]` per account).
sip_accounts() {
    python3 - "$@" <<'PY'
import sys
sys.path.insert(0, "bench")
from admin_api import AdminApi
port, token_file, display_name, tel, csv, name = sys.argv[1:7]
names = [f"{name}{i}" for i in range(int(sys.argv[7]))] if len(sys.argv) > 7 else [name]
call = AdminApi(port, token_file).post
user = call("/admin/v1/users", {"display_name": display_name, "uris": [tel]})["id"]
with open(csv, "w") as out:
    out.write("SEQUENTIAL\n")
    for n in names:
        call(f"/admin/v1/users/{user}/sip-accounts", {"aor": f"sip:{n}@bench.test", "password": f"{n}-secret"})
        out.write(f"{n};[authentication username={n} password={n}-secret]\n")
PY
}
