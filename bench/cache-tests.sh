#!/usr/bin/env bash
# RFC 9111 conformance of the edge's cache: the HTTP caching test suite that cache-tests.fyi
# runs (https://github.com/http-tests/cache-tests) against `meridian proxy` with one caching
# route (`cache: {}`) in front of the suite's origin server, all on loopback. Prints the
# results by kind (required, optimal, check) beside the results the checkout carries for
# nginx and Varnish (results/*.json: the suite's own runs of them, not measured here), and
# the tests this cache did not pass.
# Usage: bench/cache-tests.sh SUITE_DIR   (a checkout of http-tests/cache-tests)
# Environment: MERIDIAN, a meridian binary to test instead of building the debug one;
# CACHE_TESTS_IP, the loopback address everything listens on (default 127.0.0.1).
set -euo pipefail
suite=$(realpath "${1:?usage: bench/cache-tests.sh SUITE_DIR}")
cd "$(dirname "$0")/.."
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm
fi
(cd "$suite" && npm i --omit=dev --no-audit --no-fund >/dev/null)
meridian="${MERIDIAN:-}"
if [[ -z "$meridian" ]]; then
  cargo build -p meridian-cli --bin meridian
  meridian="${CARGO_TARGET_DIR:-target}/debug/meridian"
fi
ip="${CACHE_TESTS_IP:-127.0.0.1}"
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}" $(cat "$work/server.pid" 2>/dev/null); do
    kill "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c "import socket; s=socket.socket(); s.bind(('$ip', 0)); print(s.getsockname()[1])"; }
origin=$(free_port)
proxy=$(free_port)
(cd "$suite" && exec npm run --silent server --port="$origin" --pidfile="$work/server.pid") \
  >"$work/server.log" 2>&1 &
pids+=($!)
cat >"$work/proxy.yaml" <<YAML
listeners:
  - name: public
    address: $ip:$proxy
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - cluster: origin
            cache: {}
clusters:
  - name: origin
    endpoints: [{address: "$ip:$origin"}]
YAML
"$meridian" proxy --config "$work/proxy.yaml" --admin "$ip:0" >"$work/proxy.log" 2>&1 &
pids+=($!)
deadline=$((SECONDS + 30))
until curl -s -o /dev/null "http://$ip:$origin/" && curl -s -o /dev/null "http://$ip:$proxy/"; do
  if ((SECONDS > deadline)); then
    echo "the suite's server or the proxy did not start:" >&2
    cat "$work/server.log" "$work/proxy.log" >&2
    exit 1
  fi
  sleep 0.2
done
(cd "$suite" && npm run --silent cli --base="http://$ip:$proxy") >"$work/results.json"
cat >"$work/summary.mjs" <<'JS'
import fs from 'fs'
const [suite, ours] = process.argv.slice(2)
const { default: index } = await import(`${suite}/tests/index.mjs`)
const tests = {}
for (const group of index) for (const t of group.tests) tests[t.id] = t
const kinds = ['required', 'optimal', 'check']
function tally (results) {
  const counts = Object.fromEntries(kinds.map(k => [k, { pass: 0, fail: 0, other: 0 }]))
  for (const [id, result] of Object.entries(results)) {
    const count = counts[tests[id]?.kind || 'required']
    if (!count) continue
    if (result === true) count.pass++
    else if (result === false || (Array.isArray(result) && result[0] === 'Assertion')) count.fail++
    else count.other++
  }
  return counts
}
const rows = [['meridian', JSON.parse(fs.readFileSync(ours, 'utf8'))]]
for (const name of ['varnish', 'nginx']) {
  const file = `${suite}/results/${name}.json`
  if (fs.existsSync(file)) rows.push([`${name} (published)`, JSON.parse(fs.readFileSync(file, 'utf8'))])
}
console.log('cache'.padEnd(22) + kinds.map(k => `${k}: pass/fail/other`.padEnd(32)).join(''))
for (const [name, results] of rows) {
  const counts = tally(results)
  console.log(name.padEnd(22) + kinds.map(k => `${counts[k].pass}/${counts[k].fail}/${counts[k].other}`.padEnd(32)).join(''))
}
console.log('\nnot passed by meridian (other: setup failures, harness errors, dependencies):')
for (const [id, result] of Object.entries(rows[0][1])) {
  if (result !== true) console.log(`  ${(tests[id]?.kind || 'required').padEnd(9)}${id}: ${JSON.stringify(result)}`)
}
JS
node "$work/summary.mjs" "$suite" "$work/results.json"
