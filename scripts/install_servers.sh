#!/usr/bin/env bash
# The servers the tests start on loopback:
# - Debian's prometheus (with promtool) and prometheus-pushgateway (tests/prometheus_servers.py);
# - fake-gcs-server, a GCS emulator built from its Go module into BIN_DIR (tests/gcs_server.py).
# Idempotent: nothing to do for what is already there. The tests use ports of their own; a daemon a
# package may start on the default ports is not used.
# Usage: scripts/install_servers.sh [BIN_DIR]   (default ~/.cache/shardlake/bin)
set -euo pipefail
bin_dir=${1:-$HOME/.cache/shardlake/bin}
fake_gcs_version=v1.56.1
if [ ! -x "$bin_dir/fake-gcs-server" ]; then
    command -v go >/dev/null || { echo "install_servers: Go is needed to build fake-gcs-server (the GCS emulator" \
                                      "of the tests); install Go 1.26 or later" >&2; exit 1; }
    mkdir -p "$bin_dir"
    GOBIN="$(cd "$bin_dir" && pwd)" go install "github.com/fsouza/fake-gcs-server@$fake_gcs_version"
fi
if command -v prometheus >/dev/null && command -v prometheus-pushgateway >/dev/null && command -v promtool >/dev/null; then
    exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
    sudo=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    sudo=(sudo -n)
else
    echo "install_servers: prometheus, promtool and prometheus-pushgateway are missing and this user cannot install" \
         "them; run as root: apt-get install prometheus prometheus-pushgateway" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null; then
    echo "install_servers: no apt-get here; install Prometheus (with promtool) and the Pushgateway so that" \
         "prometheus, promtool and prometheus-pushgateway are on PATH" >&2
    exit 1
fi
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus prometheus-pushgateway
for tool in prometheus prometheus-pushgateway promtool; do
    command -v "$tool" >/dev/null || { echo "install_servers: $tool is still missing after apt-get install" >&2; exit 1; }
done
