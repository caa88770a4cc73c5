#!/usr/bin/env bash
# Scale to zero (see bench/scale_to_zero.py): latency a light wake (frozen instance) and a deep
# wake (stopped instance) add to the first request through the gateway (targets: <= 10 ms light,
# <= 50 ms deep beyond a direct start of the same app measured in the same run), time from a
# load step to new instances serving (target < 3 s), and the CPU and memory of sleeping
# instances. Run as root for cgroups (the freezer; without it, SIGSTOP). Addresses 127.0.150.x
# (`--base 127.0.N`); stops what it started. `PROFILE=debug` measures a debug build;
# `--only-step` measures only the load step.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v taskset >/dev/null || { echo "scale-to-zero.sh needs taskset" >&2; exit 1; }
profile="${PROFILE:-release}"
case "$profile" in
  release) source bench/release.sh; release_build --bin meridian --bin meridian-hello
    binaries="$RELEASE_DIR" ;;
  debug) cargo build --bin meridian --bin meridian-hello
    binaries="${CARGO_TARGET_DIR:-target}/debug" ;;
  *) echo "PROFILE must be release or debug, not $profile" >&2; exit 1 ;;
esac
exec python3 bench/scale_to_zero.py --meridian "$binaries/meridian" \
  --hello "$binaries/meridian-hello" "$@"
