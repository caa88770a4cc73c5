#!/usr/bin/env bash
# Purge benchmark: a purge accepted by the API -> neither edge of `meridian dev` serves the
# object (median and max over --rounds purges, default 20; target < 1 s). Needs root for the
# instances' network namespaces (as meridian dev does). See bench/cache_purge.py.
# Usage: bench/cache-purge.sh [--rounds 20]
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/release.sh
release_build --bin meridian --bin meridian-hello
exec python3 bench/cache_purge.py --meridian "$RELEASE_DIR"/meridian "$@"
