#!/usr/bin/env bash
# Reaction times of the dev topology: deploy -> first 200 through an edge, and an instance's
# health change -> every proxy updated (see src/dev_latency.rs). Needs root for the instances'
# network namespaces (as meridian dev does).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/release.sh
release_build --bin meridian --bin meridian-hello --bin dev-latency
exec "$RELEASE_DIR"/dev-latency --meridian "$RELEASE_DIR"/meridian "$@"
