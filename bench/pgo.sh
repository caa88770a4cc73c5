#!/usr/bin/env bash
# Regenerates bench/pgo/meridian.profdata, the profile that release builds of `meridian` are
# optimized with (bench/release.sh): builds `meridian` instrumented (-Cprofile-generate), runs
# the data plane's benchmark workloads through it briefly (HTTP/1.1 and h2c proxying, TLS
# handshakes and HTTP/2 over TLS, HTTP/3, cache hits, the mutual-TLS mesh hop, DNS), and merges
# what the processes wrote. Run it when the request path changes, as bench/startup-order.sh;
# a profile that no longer matches a function is ignored for that function (it is then built
# as without a profile), so a stale profile costs speed, never correctness.
# Usage: bench/pgo.sh [--instrumented PATH] [--clients DIR]
#   --instrumented PATH: an instrumented build to train instead of building one; it must have
#     been built with -Cprofile-generate=$MERIDIAN_PGO_DATA.
#   --clients DIR: where release builds of tls-client and mesh-hop (the load drivers) are, instead
#     of building them.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
target="${CARGO_TARGET_DIR:-target}"
profdata="$(rustc --print sysroot)/lib/rustlib/x86_64-unknown-linux-gnu/bin/llvm-profdata"
if [ ! -x "$profdata" ]; then
  rustup component add llvm-tools
fi
if ! command -v haproxy >/dev/null || ! command -v nginx >/dev/null || ! command -v wrk >/dev/null \
   || ! command -v h2load >/dev/null || ! command -v varnishd >/dev/null \
   || ! command -v dnsperf >/dev/null || ! command -v unbound >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy nginx wrk nghttp2-client varnish \
    dnsperf unbound curl openssl
fi
data="${MERIDIAN_PGO_DATA:-$(mktemp -d /tmp/meridian-pgo-XXXXXX)}"
instrumented=""
clients=""
while [ $# -gt 0 ]; do
  case "$1" in
    --instrumented) instrumented="$2"; shift 2 ;;
    --clients) clients="$2"; shift 2 ;;
    *) echo "unknown argument $1 (see the usage at the top of bench/pgo.sh)" >&2; exit 2 ;;
  esac
done
if [ -z "$instrumented" ]; then
  RUSTFLAGS="-Csymbol-mangling-version=v0 -Cprofile-generate=$data" \
    cargo build --release --bin meridian --target-dir "$target/pgo-generate"
  instrumented="$target/pgo-generate/release/meridian"
fi
# The build's own build scripts wrote profiles too: only `meridian`'s runs are kept.
rm -f "$data"/*.profraw
if [ -z "$clients" ]; then
  # The drivers (load clients) are built as the benchmarks build them.
  source bench/release.sh
  release_build -p meridian-bench --bin tls-client --bin mesh-hop
  clients="$RELEASE_DIR"
fi
echo "training $instrumented (profiles in $data)"
python3 bench/proxy.py --meridian "$instrumented" --rounds 1 --seconds 3
python3 bench/edge_tls.py --meridian "$instrumented" --client "$clients/tls-client" --rounds 1 --seconds 2
python3 bench/edge_cache.py --meridian "$instrumented" --rounds 1 --seconds 2 --objects 2000
python3 bench/dns.py --meridian "$instrumented" --rounds 1 --seconds 2
"$clients/mesh-hop" --meridian "$instrumented" --rounds 1 --seconds 2
ls "$data"/*.profraw >/dev/null
mkdir -p bench/pgo
# Sparse: the functions that never ran are left out (1.7 MB instead of 27).
"$profdata" merge -sparse -o "$root/bench/pgo/meridian.profdata" "$data"/*.profraw
echo "wrote bench/pgo/meridian.profdata ($(du -h bench/pgo/meridian.profdata | cut -f1))"
