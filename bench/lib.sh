# Shared by the bench scripts (source it): free loopback ports, and a release `switchyard serve`
# on loopback.

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# provider_config WORK PROVIDER_ID ADMIN_PORT: writes WORK/switchyard.toml (data in WORK/data,
# the endpoint API on a free port); callers append sections of their own.
provider_config() {
    cat > "$1/switchyard.toml" <<TOML
data_dir = "$1/data"
provider_id = "$2"
[endpoint_api]
listen = "127.0.0.1:$(free_port)"
[admin]
listen = "127.0.0.1:$3"
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
