#!/usr/bin/env bash
# xDS convergence benchmark: control planes pinned to CPU 1, the simulated clients to CPU 0.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/release.sh
release_build --bin meridian --bin xds-convergence
# 10,000 clients need as many sockets in each process.
ulimit -n "$(ulimit -Hn)"
exec taskset -c 0 "$RELEASE_DIR"/xds-convergence --meridian "$RELEASE_DIR"/meridian --control-cpus 1 "$@"
