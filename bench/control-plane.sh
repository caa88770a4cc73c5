#!/usr/bin/env bash
# Control-plane benchmark: control plane pinned to CPU 1, this load generator to CPU 0 with the
# regional control planes that follow the first replica (meridian-bench --followers, default 2);
# then the failover of global replicas on PostgreSQL (bench/failover.py).
#
#   bench/control-plane.sh [--meridian PATH] [--failover-only] [meridian-bench options…]
#
# --meridian PATH takes that meridian binary (a debug build, say) instead of building a release:
# the throughput part then runs meridian-bench from the same directory if it is there.
# --failover-only runs only the failover figures.
set -euo pipefail
cd "$(dirname "$0")/.."
meridian=""
failover_only=""
rest=()
while [ $# -gt 0 ]; do
  case "$1" in
    --meridian) meridian="$2"; shift 2 ;;
    --failover-only) failover_only=1; shift ;;
    *) rest+=("$1"); shift ;;
  esac
done
if [ -z "$meridian" ]; then
  source bench/release.sh
  release_build --bin meridian --bin meridian-bench
  meridian="$RELEASE_DIR/meridian"
fi
bench="$(dirname "$meridian")/meridian-bench"
if [ -z "$failover_only" ]; then
  if [ -x "$bench" ]; then
    taskset -c 0 "$bench" --meridian "$meridian" --control-cpus 1 ${rest[@]+"${rest[@]}"}
  else
    echo "no meridian-bench beside $meridian: throughput figures skipped" >&2
  fi
fi
python3 bench/failover.py --meridian "$meridian" ${FAILOVER_ARGS:-}
