#!/usr/bin/env bash
# Regenerates crates/cli/startup-order.txt, the linker's layout of the functions `meridian proxy`
# runs at start (see bench/startup_order.py and crates/cli/build.rs). Run it when the code that runs
# at start changes, then rebuild: bench/proxy.sh shows the idle RSS.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v valgrind >/dev/null || ! command -v curl >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind curl
fi
cargo build --release --bin meridian --bin meridian-hello
target="${CARGO_TARGET_DIR:-target}"
exec python3 bench/startup_order.py --meridian "$target"/release/meridian \
  --hello "$target"/release/meridian-hello --output crates/cli/startup-order.txt
