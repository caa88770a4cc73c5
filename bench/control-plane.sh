#!/usr/bin/env bash
# Control-plane benchmark: control plane pinned to CPU 1, this load generator to CPU 0.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin meridian --bin meridian-bench
target="${CARGO_TARGET_DIR:-target}"
exec taskset -c 0 "$target"/release/meridian-bench --meridian "$target"/release/meridian --control-cpus 1 "$@"
