#!/usr/bin/env bash
# DNS benchmark: Meridian's .internal server against unbound on the same pinned cores (see dns.py).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v dnsperf >/dev/null || ! command -v unbound >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dnsperf unbound
fi
source bench/release.sh
release_build --bin meridian
exec python3 bench/dns.py --meridian "$RELEASE_DIR"/meridian "$@"
