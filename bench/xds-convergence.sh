#!/usr/bin/env bash
# xDS convergence benchmark: control planes pinned to CPU 1, the simulated clients to CPU 0.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin meridian --bin xds-convergence
# 10,000 clients need as many sockets in each process.
ulimit -n "$(ulimit -Hn)"
target="${CARGO_TARGET_DIR:-target}"
exec taskset -c 0 "$target"/release/xds-convergence --meridian "$target"/release/meridian --control-cpus 1 "$@"
