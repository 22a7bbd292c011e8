#!/usr/bin/env bash
# Starts or stops a single-node S3 server on 127.0.0.1 for the tests.
#
#   scripts/s3-server.sh start DIR   start (or restart, keeping data and ports) a server
#                                    whose state lives in DIR; writes DIR/env with
#                                    AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID,
#                                    AWS_SECRET_ACCESS_KEY and S3_BUCKET
#   scripts/s3-server.sh stop DIR    stop it (data stays in DIR)
#
# The server is Garage (installed once with cargo outside the repository, see
# ensure_garage in lib.sh), or MinIO when a `minio` binary is on PATH or
# S3_BACKEND=minio.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/lib.sh"

cmd="${1:?usage: s3-server.sh start|stop DIR}"
dir="${2:?usage: s3-server.sh start|stop DIR}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"

backend="${S3_BACKEND:-}"
if [ -z "$backend" ]; then
    if command -v minio >/dev/null 2>&1; then backend=minio; else backend=garage; fi
fi

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Settings are made once per DIR and reused, so that a restart keeps its address.
settings() {
    if [ ! -f "$dir/settings" ]; then
        {
            echo "s3_port=$(free_port)"
            echo "rpc_port=$(free_port)"
            echo "admin_port=$(free_port)"
            echo "access_key=GK$(openssl rand -hex 12)"
            echo "secret_key=$(openssl rand -hex 32)"
            echo "rpc_secret=$(openssl rand -hex 32)"
            echo "bucket=registry-proxy-test"
        } > "$dir/settings"
    fi
    . "$dir/settings"
}

wait_ready() {
    local url="$1"
    for _ in $(seq 1 200); do
        if curl -fsS -o /dev/null "$url" 2>/dev/null; then return 0; fi
        if ! kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
            echo "s3-server: $backend exited; its log:" >&2
            tail -n 30 "$dir/server.log" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "s3-server: $backend did not become ready at $url" >&2
    return 1
}

start_garage() {
    local garage
    garage="$(ensure_garage)"
    cat > "$dir/garage.toml" <<TOML
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc_port"
rpc_public_addr = "127.0.0.1:$rpc_port"
rpc_secret = "$rpc_secret"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$s3_port"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$admin_port"
TOML
    GARAGE_DEFAULT_ACCESS_KEY="$access_key" GARAGE_DEFAULT_SECRET_KEY="$secret_key" \
        GARAGE_DEFAULT_BUCKET="$bucket" RUST_LOG="${GARAGE_LOG:-warn}" \
        setsid "$garage" -c "$dir/garage.toml" server --single-node --default-bucket \
        >> "$dir/server.log" 2>&1 &
    echo $! > "$dir/pid"
    wait_ready "http://127.0.0.1:$admin_port/health"
    region=garage
}

start_minio() {
    MINIO_ROOT_USER="$access_key" MINIO_ROOT_PASSWORD="$secret_key" \
        setsid minio server "$dir/data" --address "127.0.0.1:$s3_port" \
        --console-address "127.0.0.1:$admin_port" >> "$dir/server.log" 2>&1 &
    echo $! > "$dir/pid"
    wait_ready "http://127.0.0.1:$s3_port/minio/health/live"
    region=us-east-1
    # Create the bucket (a 409 means it exists already).
    curl -sS -o /dev/null --aws-sigv4 "aws:amz:$region:s3" --user "$access_key:$secret_key" \
        -X PUT "http://127.0.0.1:$s3_port/$bucket"
}

case "$cmd" in
    start)
        settings
        if [ -f "$dir/pid" ] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
            echo "s3-server: already running (pid $(cat "$dir/pid"))" >&2
        else
            "start_$backend"
        fi
        region="$( [ "$backend" = garage ] && echo garage || echo us-east-1 )"
        cat > "$dir/env" <<ENV
export S3_BACKEND=$backend
export AWS_ENDPOINT_URL=http://127.0.0.1:$s3_port
export AWS_REGION=$region
export AWS_ACCESS_KEY_ID=$access_key
export AWS_SECRET_ACCESS_KEY=$secret_key
export S3_BUCKET=$bucket
ENV
        ;;
    stop)
        if [ -f "$dir/pid" ]; then
            pid="$(cat "$dir/pid")"
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -9 "$pid" 2>/dev/null || true
            rm -f "$dir/pid"
        fi
        ;;
    *)
        echo "usage: s3-server.sh start|stop DIR" >&2
        exit 2
        ;;
esac
