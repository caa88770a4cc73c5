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
source bench/release.sh
release_build --bin meridian --bin meridian-hello
exec python3 bench/startup_order.py --meridian "$RELEASE_DIR"/meridian \
  --hello "$RELEASE_DIR"/meridian-hello --output crates/cli/startup-order.txt
