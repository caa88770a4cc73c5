#!/usr/bin/env bash
# Rolling deploys and rollbacks on the dev topology, under load (see src/rollout.rs): a rolling
# deploy of 3 instances in each of 3 regions against a fresh service applied at the same time,
# failed requests, and gate failure -> previous version alone in service. Needs root for the
# instances' network namespaces (as meridian dev does).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/release.sh
release_build --bin meridian --bin meridian-hello --bin rollout-bench
exec "$RELEASE_DIR"/rollout-bench --meridian "$RELEASE_DIR"/meridian "$@"
