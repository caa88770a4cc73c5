#!/usr/bin/env bash
# Reaction times of the dev topology: deploy -> first 200 through an edge, and an instance's
# health change -> every proxy updated (see src/dev_latency.rs). Needs root for the instances'
# network namespaces (as meridian dev does).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin meridian --bin meridian-hello --bin dev-latency
target="${CARGO_TARGET_DIR:-target}"
exec "$target"/release/dev-latency --meridian "$target"/release/meridian "$@"
