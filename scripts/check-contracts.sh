#!/usr/bin/env bash
# The contracts, checked like code: `buf lint` (proto/buf.yaml says which rules), and
# `buf breaking` against the commit before this one (on a branch: against main), which holds
# events.proto's evolution rules and the APIs' compatibility. A canary proves the breaking
# check bites: removing a field from a copy of the contracts must be refused.
set -euo pipefail
cd "$(dirname "$0")/.."
BUF_VERSION=1.75.0
tools=target/tools/buf
buf=$tools/node_modules/.bin/buf
if ! [ -x "$buf" ] || [ "$("$buf" --version)" != "$BUF_VERSION" ]; then
  command -v npm >/dev/null || { apt-get install -y -q npm >/dev/null || { apt-get update -q && apt-get install -y -q npm; }; }
  rm -rf "$tools"
  mkdir -p "$tools"
  npm install --silent --no-audit --no-fund --prefix "$tools" "@bufbuild/buf@$BUF_VERSION"
fi
echo "buf $("$buf" --version)"

"$buf" lint proto
echo "buf lint: clean"

against=""
if git rev-parse --verify -q origin/main >/dev/null && [ "$(git rev-parse HEAD)" != "$(git rev-parse origin/main)" ]; then
  against=$(git merge-base HEAD origin/main)
elif git rev-parse --verify -q HEAD~1 >/dev/null; then
  against=$(git rev-parse HEAD~1)
fi
if [ -n "$against" ]; then
  "$buf" breaking proto --against ".git#ref=$against,subdir=proto"
  echo "buf breaking: nothing breaks against $against"
else
  echo "buf breaking: no earlier commit to compare with (a shallow clone); skipped"
fi

# The canary: the same check, on a copy whose EventEnvelope lost a field, must fail.
canary=$(mktemp -d)
trap 'rm -rf "$canary"' EXIT
cp -r proto "$canary/before"
cp -r proto "$canary/after"
sed -i '/^  string producer = 7;$/d' "$canary/after/events/v1/events.proto"
if ! grep -q 'string producer = 7;' "$canary/before/events/v1/events.proto" \
  || grep -q 'string producer = 7;' "$canary/after/events/v1/events.proto"; then
  echo "FATAL: the canary could not remove EventEnvelope.producer; update it" >&2
  exit 1
fi
if "$buf" breaking "$canary/after" --against "$canary/before" >/dev/null 2>&1; then
  echo "FATAL: buf breaking accepted a removed event field" >&2
  exit 1
fi
echo "buf breaking: refuses a removed event field (canary)"
