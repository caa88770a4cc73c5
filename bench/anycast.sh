#!/usr/bin/env bash
# Anycast edges (issue #26): the topology of tests/anycast.rs (network namespaces: a client, a
# router running BIRD, two edges each running BIRD 2 and `meridian edge --anycast`, and the
# platform), each failure on the serving edge MERIDIAN_ANYCAST_ROUNDS times (3 unless set):
# graceful drain, all regions lost, hard kill of the edge process and of its machine, frozen
# machine and frozen process. Prints failed requests and the gap (ms) until the client is served
# by the other edge. Needs root, iproute2, nftables and bird2 (Debian's BIRD 2).
#
# The figures are about routing and detection, not CPU: the dev profile is enough (set
# CARGO_PROFILE=release for a release build).
set -euo pipefail
cd "$(dirname "$0")/.."
profile=()
if [ "${CARGO_PROFILE:-dev}" = release ]; then profile=(--release); fi
exec cargo test "${profile[@]}" -p meridian-cli --test anycast -- --ignored --exact anycast_bench --nocapture
