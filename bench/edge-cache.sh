#!/usr/bin/env bash
# Edge cache benchmark: Meridian's HTTP cache vs Varnish and nginx proxy_cache (hits/s and server
# CPU µs per hit for a 1 KB and a 100 KB object, hit latency p50/p99, memory per cached 1 KB
# object), on the same pinned cores in one invocation (see bench/edge_cache.py for what each
# figure means).
# Usage: bench/edge-cache.sh [--rounds 3] [--seconds 5] [--connections 50] [--objects 20000]
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v varnishd >/dev/null || ! command -v nginx >/dev/null || ! command -v wrk >/dev/null \
   || ! command -v h2load >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq varnish nginx wrk nghttp2-client
fi
source bench/release.sh
release_build --bin meridian
exec python3 bench/edge_cache.py --meridian "$RELEASE_DIR"/meridian "$@"
