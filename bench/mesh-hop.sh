#!/usr/bin/env bash
# Mesh hop benchmark: plaintext vs mutual TLS between two proxies (see src/mesh_hop.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null || ! command -v curl >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx wrk curl
fi
source bench/release.sh
release_build --bin meridian --bin mesh-hop
exec "$RELEASE_DIR"/mesh-hop --meridian "$RELEASE_DIR"/meridian "$@"
