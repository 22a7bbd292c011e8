# Shared helpers of the scripts in this folder; sourced, not run.

# Fails with a clear message when the Rust toolchain or its lint tools are missing.
require_rust() {
    if ! command -v cargo >/dev/null 2>&1; then
        echo "cargo not found: install Rust (https://rustup.rs) and retry" >&2
        exit 1
    fi
    for component in rustfmt clippy; do
        if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
            rustup component add "$component"
        fi
    done
    # The etcd client crate compiles etcd's protocol with protoc.
    ensure_apt protoc:protobuf-compiler
}

# Where tools built for the tests live, outside the repository, reused across runs.
TOOLS_DIR="${REGISTRY_PROXY_TOOLS:-/opt/registry-proxy-tools}"
GARAGE_VERSION=2.5.0

# Prints the path of the Garage binary, installing it with cargo the first
# time (about 13 minutes on 2 cores).
ensure_garage() {
    local root="$TOOLS_DIR/garage-$GARAGE_VERSION"
    if [ ! -x "$root/bin/garage" ]; then
        echo "installing garage $GARAGE_VERSION into $root (once; takes minutes)" >&2
        mkdir -p "$TOOLS_DIR"
        cargo install "garage@$GARAGE_VERSION" --locked --root "$root" >&2
    fi
    echo "$root/bin/garage"
}

# Unless S3_BUCKET is already set (a server of the user's: MinIO, AWS, ...),
# starts a private S3 server on 127.0.0.1, exports its variables, and stops
# it when the calling script exits.
use_s3_server() {
    if [ -n "${S3_BUCKET:-}" ]; then
        echo "S3: using the server already configured (bucket $S3_BUCKET)"
        return
    fi
    S3_STATE_DIR="$(mktemp -d)"
    trap 'scripts/s3-server.sh stop "$S3_STATE_DIR"; rm -rf "$S3_STATE_DIR"' EXIT
    scripts/s3-server.sh start "$S3_STATE_DIR"
    . "$S3_STATE_DIR/env"
    echo "S3: $S3_BACKEND at $AWS_ENDPOINT_URL"
}

# Installs the Debian packages named (by command: package pairs "cmd:pkg")
# whose command is missing.
ensure_apt() {
    local missing=()
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair##*:}")
    done
    [ ${#missing[@]} -eq 0 ] && return
    echo "installing ${missing[*]} with apt-get" >&2
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
}

# Prints the path of kubernetes-validate (Kubernetes manifests checked
# against the API's schemas, from PyPI), installed into a virtualenv under
# TOOLS_DIR the first time.
KUBERNETES_VALIDATE_VERSION=1.37.0
ensure_kubernetes_validate() {
    local venv="$TOOLS_DIR/kubernetes-validate-$KUBERNETES_VALIDATE_VERSION"
    if [ ! -x "$venv/bin/kubernetes-validate" ]; then
        echo "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION into $venv" >&2
        ensure_apt python3:python3
        python3 -m venv --help >/dev/null 2>&1 || ensure_apt _venv:python3-venv
        mkdir -p "$TOOLS_DIR"
        python3 -m venv "$venv" >&2
        "$venv/bin/pip" install -q "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" >&2
    fi
    echo "$venv/bin/kubernetes-validate"
}
