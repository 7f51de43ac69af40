#!/usr/bin/env bash
# Puts promtool in build/tools/ (tests/integration/test_ops_metrics.py checks the alert rules with it),
# taken from Debian's `prometheus` package without installing the package or starting a server.
set -euo pipefail
cd "$(dirname "$0")/../.."
if command -v promtool >/dev/null 2>&1 || [ -x build/tools/promtool ]; then exit 0; fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && apt-get download prometheus >/dev/null)
dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/root"
mkdir -p build/tools
cp "$tmp/root/usr/bin/promtool" build/tools/promtool
echo "promtool: $(build/tools/promtool --version 2>&1 | head -n1) in build/tools/"
