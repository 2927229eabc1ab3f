#!/usr/bin/env bash
# The Prometheus servers the tests start on loopback (tests/prometheus_servers.py): Debian's prometheus
# (with promtool) and prometheus-pushgateway. Idempotent: nothing to do when all three are on PATH.
# The tests use ports of their own; a daemon the package may start on the default ports is not used.
set -euo pipefail
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
