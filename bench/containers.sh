#!/usr/bin/env bash
# Containers (see bench/containers.py): start of an image instance with its layers cached vs a
# process instance of the same meridian-hello (target: overhead < 150 ms), and pulls of a 50 MB
# image and of a new version sharing all but one 1 MB layer (only that layer moves), against
# skopeo copy. Needs root, runc, docker-registry, skopeo, iproute2 and nftables. Addresses
# 127.0.218.x and instances on 100.64.218.0/24; stops what it started and deletes its
# namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in runc docker-registry skopeo ip nft taskset; do
  command -v "$tool" >/dev/null || { echo "containers.sh needs $tool" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "containers.sh needs root (namespaces, mounts, runc)" >&2; exit 1; }
source bench/release.sh
release_build --bin meridian --bin meridian-hello
exec python3 bench/containers.py --meridian "$RELEASE_DIR"/meridian \
  --hello "$RELEASE_DIR"/meridian-hello "$@"
