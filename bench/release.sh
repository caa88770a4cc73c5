#!/usr/bin/env bash
# The release build of Meridian that the benchmarks measure and that a production install should
# run: `cargo build --release`, optimized with the profile in bench/pgo/meridian.profdata
# (profile-guided optimization; bench/pgo.sh writes the profile from the data plane's benchmark
# workloads). Run it (`bench/release.sh ARGS…`) or source it and call `release_build ARGS…`; the
# binaries are then in $RELEASE_DIR.
#
# The profile lays out and inlines the hot request path. Code it saw run rarely or never (the
# training runs the data plane, not every role) is built as without a profile: not for size
# (-pgso=false), inlined at the usual threshold rather than the cold one. A function changed since
# the profile was taken is built as without one, so a stale profile costs speed, never
# correctness; a missing profile builds a plain release.
#
# The profiled build has its own target directory ($CARGO_TARGET_DIR/pgo), so that it and plain
# `cargo build --release` (README) do not rebuild each other's dependencies.
release_build() {
  local root target flags
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  target="${CARGO_TARGET_DIR:-$root/target}"
  flags="-Csymbol-mangling-version=v0"
  local profile="$root/bench/pgo/meridian.profdata"
  if [ -f "$profile" ]; then
    flags="$flags -Cprofile-use=$profile -Cllvm-args=-no-pgo-warn-mismatch"
    flags="$flags -Cllvm-args=-pgso=false -Cllvm-args=-inline-cold-callsite-threshold=225"
    target="$target/pgo"
  fi
  RELEASE_DIR="$target/release"
  (cd "$root" && RUSTFLAGS="$flags" cargo build --release --target-dir "$target" "$@")
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  release_build "$@"
  echo "built into $RELEASE_DIR"
fi
