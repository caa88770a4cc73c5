#!/usr/bin/env bash
# Edge TLS benchmark: Meridian's TLS listener vs nginx (handshakes, full and resumed) and HAProxy
# (HTTP/2 over TLS, proxied), and RSS per idle TLS HTTP/2 connection of all three, on the same
# pinned cores in one invocation (see bench/edge_tls.py for what each figure means).
# Usage: bench/edge-tls.sh [--rounds 3] [--seconds 5] [--concurrency 32]
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v haproxy >/dev/null || ! command -v nginx >/dev/null || ! command -v h2load >/dev/null \
   || ! command -v openssl >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy nginx nghttp2-client openssl
fi
# Two builds, as each package alone unifies its dependencies' features (one build of both would
# build them again the other way).
source bench/release.sh
release_build -p meridian-cli
release_build -p meridian-bench --bin tls-client
target="$RELEASE_DIR"
exec python3 bench/edge_tls.py --meridian "$target/meridian" --client "$target/tls-client" "$@"
