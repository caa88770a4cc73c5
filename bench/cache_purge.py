#!/usr/bin/env python3
"""Purge benchmark: a purge accepted by the API -> no edge of `meridian dev` serves the object.

Run through bench/cache-purge.sh (it builds meridian and meridian-hello). It starts `meridian dev`
(the global control plane, three regions, two edges: par and nyc; its data in a temporary
directory, its ports away from the defaults), deploys meridian-hello in fra at
purge.example.com with `cache: {default_ttl: 1h}` (and `https: {redirect: false}`: the edges'
plain listener answers it), and then, for each round:

1. asks both edges for /tagged/bench-<round> (answered with `Cache-Tag: bench-<round>`) until each
   answers it from its cache (`Cache-Status: Meridian; hit`);
2. starts one poller per edge, asking it for the object back to back, then sends the purge
   (by tag in even rounds, by URL in odd ones) to the API;
3. each poller notes when its edge first answers the object not from its cache.

The figure is the time from the purge sent to the API to the last edge's first answer not from
its cache (both edges have dropped the object), with its median and maximum; the API's answer
time (the API answers once every connected edge applied the purge) is shown beside it. Target
(issue #22): < 1 s. Figures from a debug build of meridian are not credible: the script says so.
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

from proxy import bench_arguments, stop

API = "127.0.0.1:27170"
GATEWAY_PORT = 28180
EDGE_PORT = 28190
EDGE_HTTPS_PORT = 28543
EDGES = {"par": EDGE_PORT, "nyc": EDGE_PORT + 1}
HOST = "purge.example.com"
TARGET_S = 1.0
DEADLINE_S = 120.0

SERVICE = """\
org: bench
app: purge
name: web
regions: [fra]
runtime: {{process: {{command: {hello}}}}}
ports: [{{name: http, port: 8080}}]
routes: [{{path_prefix: /, port: http}}]
domains: [{host}]
https: {{redirect: false}}
health_checks: [{{http: {{port: http, path: /healthz}}, interval: 500ms, timeout: 500ms, grace_period: 10s}}]
cache: {{default_ttl: 1h}}
"""


def start_dev(meridian, data_dir):
    """`meridian dev` with its data in `data_dir`; the process, the API's URL and admin token."""
    proc = subprocess.Popen(
        [meridian, "dev", "--data-dir", data_dir, "--listen", API,
         "--gateway-port", str(GATEWAY_PORT), "--edge-port", str(EDGE_PORT),
         "--edge-https-port", str(EDGE_HTTPS_PORT)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "MERIDIAN_LOG": os.environ.get("MERIDIAN_LOG", "warn")})
    end = time.monotonic() + DEADLINE_S
    for line in proc.stdout:
        line = line.strip()
        if line.startswith("export MERIDIAN_API="):
            api, token = line[len("export MERIDIAN_API="):].split(" MERIDIAN_TOKEN=")
            # Keep reading its output, so that its prints never block on a full pipe.
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return proc, api, token.strip()
        if time.monotonic() > end:
            break
    stop(proc, timeout=60)
    raise RuntimeError("meridian dev did not say it was ready")


def deploy(meridian, api, token, hello, tmp):
    definition = os.path.join(tmp, "purge-bench.yaml")
    with open(definition, "w") as f:
        f.write(SERVICE.format(hello=hello, host=HOST))
    subprocess.run([meridian, "deploy", "-f", definition, "--detach"], check=True,
                   stdout=subprocess.DEVNULL,
                   env={**os.environ, "MERIDIAN_API": api, "MERIDIAN_TOKEN": token})


def fetch(port, path):
    """The status of `GET path` for HOST at the edge on `port`, and whether it was a hit."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"host": HOST})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            response.read()
            cache_status = response.headers.get("cache-status", "")
            return response.status, cache_status.startswith("Meridian; hit")
    except urllib.error.HTTPError as e:
        return e.code, False
    except OSError:
        return 0, False


def until_cached(port, path):
    end = time.monotonic() + DEADLINE_S
    while time.monotonic() < end:
        status, hit = fetch(port, path)
        if status == 200 and hit:
            return
        time.sleep(0.05)
    raise RuntimeError(f"the edge on port {port} never answered {path} from its cache")


def purge(api, token, body):
    """Sends a purge; its answer."""
    request = urllib.request.Request(
        f"{api}/v1/orgs/bench/apps/purge/purges", data=json.dumps(body).encode(),
        method="POST", headers={"authorization": f"Bearer {token}",
                                "content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def poll_until_gone(port, path, started, gone, stop_at):
    """Asks the edge on `port` for `path` until it answers it not from its cache; records when,
    in seconds after `started`, in `gone`."""
    while time.monotonic() < stop_at:
        status, hit = fetch(port, path)
        if status == 200 and not hit:
            gone[port] = time.monotonic() - started
            return


def one_round(api, token, number):
    path = f"/tagged/bench-{number}"
    for port in EDGES.values():
        until_cached(port, path)
    body = {"tag": f"bench-{number}"} if number % 2 == 0 else {"url": f"http://{HOST}{path}"}
    gone = {}
    started = time.monotonic()
    pollers = [threading.Thread(target=poll_until_gone,
                                args=(port, path, started, gone, started + DEADLINE_S))
               for port in EDGES.values()]
    for poller in pollers:
        poller.start()
    answer = purge(api, token, body)
    answered = time.monotonic() - started
    for poller in pollers:
        poller.join()
    if len(gone) != len(EDGES):
        raise RuntimeError(f"round {number}: an edge kept serving the purged object")
    edges = answer.get("edges") or {}
    return {"kind": "tag" if "tag" in body else "url", "api": answered,
            "edges": [gone[port] for port in EDGES.values()],
            "applied": f"{edges.get('applied', '?')}/{edges.get('connected', '?')}"}


def report(rounds, meridian):
    print()
    if "release" not in os.path.abspath(meridian).split(os.sep):
        print(f"NOTE: {meridian} is not a release build: these figures are not credible; "
              "run bench/cache-purge.sh for them.")
    print(f"purge sent to the API -> neither edge serves the object (meridian dev, 2 edges, "
          f"{len(rounds)} purges), ms")
    names = list(EDGES)
    print(f"{'round':>5}  {'kind':<4}  {'api answer':>10}  "
          + "  ".join(f"{n:>7}" for n in names) + f"  {'both':>7}  applied")
    for i, r in enumerate(rounds):
        both = max(r["edges"])
        print(f"{i:>5}  {r['kind']:<4}  {r['api'] * 1000:>10.1f}  "
              + "  ".join(f"{t * 1000:>7.1f}" for t in r["edges"])
              + f"  {both * 1000:>7.1f}  {r['applied']}")
    both = [max(r["edges"]) for r in rounds]
    api = [r["api"] for r in rounds]
    print(f"both edges: median {statistics.median(both) * 1000:.1f} ms, "
          f"max {max(both) * 1000:.1f} ms (target < {TARGET_S * 1000:.0f} ms: "
          f"{'met' if max(both) < TARGET_S else 'NOT met'})")
    print(f"API answer: median {statistics.median(api) * 1000:.1f} ms, "
          f"max {max(api) * 1000:.1f} ms")


def main():
    parser = bench_arguments(__doc__)
    parser.set_defaults(rounds=20)
    args = parser.parse_args()
    meridian = os.path.abspath(args.meridian)
    hello = os.path.join(os.path.dirname(meridian), "meridian-hello")
    if not os.path.exists(hello):
        sys.exit(f"{hello} is missing: build it beside meridian")
    with tempfile.TemporaryDirectory(prefix="cache-purge-") as tmp:
        dev, api, token = start_dev(meridian, os.path.join(tmp, "dev"))
        try:
            deploy(meridian, api, token, hello, tmp)
            # Warm-up round (the first requests start connections), not counted.
            one_round(api, token, 0)
            rounds = [one_round(api, token, n) for n in range(1, args.rounds + 1)]
        finally:
            stop(dev, timeout=60)
    report(rounds, meridian)


if __name__ == "__main__":
    main()
