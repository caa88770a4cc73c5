#!/usr/bin/env bash
# Proxy benchmark: direct, Meridian, HAProxy and nginx on the same pinned cores (see proxy.py).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v haproxy >/dev/null || ! command -v nginx >/dev/null || ! command -v wrk >/dev/null \
   || ! command -v h2load >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy nginx wrk nghttp2-client
fi
source bench/release.sh
release_build --bin meridian
exec python3 bench/proxy.py --meridian "$RELEASE_DIR"/meridian "$@"
