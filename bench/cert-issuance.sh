#!/usr/bin/env bash
# Certificate issuance benchmark: a domain added to a service → a valid certificate served by
# every edge of `meridian dev`, ordered over ACME from pebble on loopback (see
# bench/cert_issuance.py for what runs and what the figure means).
# Usage: bench/cert-issuance.sh [--rounds 5]
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v pebble >/dev/null || ! command -v pebble-challtestsrv >/dev/null \
   || ! command -v openssl >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pebble openssl
fi
source bench/release.sh
release_build -p meridian-cli
target="$RELEASE_DIR"
exec python3 bench/cert_issuance.py --meridian "$target/meridian" "$@"
