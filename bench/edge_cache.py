#!/usr/bin/env python3
"""Edge cache benchmark: Meridian's HTTP cache next to Varnish and nginx proxy_cache, in one run.

Run it through bench/edge-cache.sh (it installs the tools and builds the release binary). Every
cache under test runs alone on CPU 1 with one worker (Meridian: `meridian proxy` with one
listener and a route with `cache: {}`, one CPU, so its current-thread runtime; Varnish: one
thread pool, malloc storage of 256 MiB, the same bound as Meridian's store, a VCL that only names
the backend; nginx: one worker process, `proxy_cache` with a keys zone and max_size 256m); wrk,
h2load and the origin (nginx, one worker, serving the objects with `Cache-Control:
max-age=3600`, as application/octet-stream so that no cache makes a compressed variant) run on
CPU 0. Targets are interleaved in rotating order over --rounds rounds after a discarded warm-up
round; the table shows medians and min-max, and the ratios of Meridian to Varnish and to nginx.

What each figure is (server = the cache under test; CPU = its utime+stime from /proc/PID/stat
over the run, all its processes summed):

- hits/s (1 KB, 100 KB): wrk, one thread, --connections keep-alive connections, GET of one
  object for --seconds, after the object was fetched once (a miss) and a second fetch was seen
  to be a hit (Meridian: `Cache-Status: Meridian; hit`; Varnish: two transaction ids in
  `X-Varnish` and an `Age`; nginx: `$upstream_cache_status` HIT in `X-Cache-Status`). The
  origin's access log is counted before and after the run: any request reaching the origin
  during a measured run fails the benchmark.
- server CPU µs/hit, and hits/s per server core (= 1e6 / that): what one hit costs the server.
  On two cores wrk saturates its core before a fast server saturates its own, so hits/s partly
  measures wrk; the target is checked on both.
- p50/p99 µs: wrk's latency percentiles of the same run (closed loop, --connections in flight).
- memory per cached 1 KB object: a fresh server process, warmed with a few hundred hits of an
  object of its own; its VmRSS (all processes) then; then --objects distinct 1 KB objects
  fetched once each (h2load --h1, one connection) and a second pass that must not reach the
  origin (all of them are held); (VmRSS after - VmRSS before) / --objects, in bytes. PSS is
  shown too: nginx's keys zone is shared memory its worker and cache manager both map, which
  RSS counts twice. nginx keeps the bodies in files (the page cache, in no process's RSS): their
  size on disk per object is shown on its own row.
"""

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import http.client

from proxy import (bench_arguments, children, cpu_seconds, interleaved, launch_reference, pss_kib,
                   rss_kib, start, stop, wait_port, write_configs)

# The loopback address everything listens on (--host).
HOST = "127.0.0.1"
ORIGIN_PORT = 19480
PORTS = {"meridian": 19481, "varnish": 19482, "nginx": 19483}
MERIDIAN_ADMIN_PORT = 19491
VARNISH_ADMIN_PORT = 19492
SERVER_CPU = 1
CLIENT_CPU = 0
OBJECTS = {"1k": 1024, "100k": 100 * 1024}
STORE_MIB = 256

WRK_LUA = """
done = function(summary, latency, requests)
  io.write(string.format("RESULT requests=%d errors=%d p50=%d p99=%d\\n",
    summary.requests,
    summary.errors.connect + summary.errors.read + summary.errors.write
      + summary.errors.status + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def docroot(tmp):
    """The origin's files: one object per size (random bytes)."""
    root = os.path.join(tmp, "origin")
    os.makedirs(root)
    for name, size in OBJECTS.items():
        with open(os.path.join(root, name), "wb") as f:
            f.write(os.urandom(size))
    return root


def configs(tmp, root):
    origin = f"{HOST}:{ORIGIN_PORT}"
    files = {}
    # Every request is logged (one line each) so that the benchmark sees any that reaches it.
    # /obj/<n>: distinct URLs with the 1 KB object's content, for the memory figure.
    files["origin"] = f"""
worker_processes 1; daemon off; pid {tmp}/origin.pid; error_log /dev/null crit;
events {{ worker_connections 4096; }}
http {{ keepalive_requests 1000000; default_type application/octet-stream;
  log_format uri '$request_uri'; access_log {tmp}/origin-access.log uri;
  server {{ listen {origin} reuseport; root {root};
    add_header Cache-Control "max-age=3600";
    location /obj/ {{ try_files /1k =404; }} }} }}
"""
    files["nginx"] = f"""
worker_processes 1; daemon off; pid {tmp}/nginx.pid; error_log /dev/null crit;
events {{ worker_connections 8192; }}
http {{ access_log off; keepalive_requests 1000000;
  proxy_cache_path {tmp}/nginx-cache levels=1:2 keys_zone=edge:32m max_size={STORE_MIB}m
    inactive=1d use_temp_path=off;
  upstream origin {{ server {origin}; keepalive 1024; }}
  server {{ listen {HOST}:{PORTS['nginx']};
    location / {{ proxy_pass http://origin; proxy_http_version 1.1;
      proxy_set_header Connection ""; proxy_cache edge;
      add_header X-Cache-Status $upstream_cache_status; }} }} }}
"""
    files["varnish"] = f"""vcl 4.1;
backend origin {{ .host = "{HOST}"; .port = "{ORIGIN_PORT}"; }}
"""
    files["meridian"] = f"""listeners:
  - name: edge
    address: {HOST}:{PORTS['meridian']}
    virtual_hosts: [{{name: all, domains: ["*"], routes: [{{cluster: origin, cache: {{}}}}]}}]
clusters:
  - name: origin
    endpoints: [{{address: "{origin}"}}]
"""
    return write_configs(tmp, files)


def launch(target, paths, args, tmp):
    if target == "meridian":
        return start([args.meridian, "proxy", "--config", paths["meridian"],
                      "--admin", f"{HOST}:{MERIDIAN_ADMIN_PORT}"], SERVER_CPU,
                     env={**os.environ, "MERIDIAN_LOG": "error"})
    if target == "varnish":
        workdir = os.path.join(tmp, "varnish")
        return start(["varnishd", "-F", "-j", "none", "-n", workdir,
                      "-a", f"{HOST}:{PORTS['varnish']}",
                      "-T", f"{HOST}:{VARNISH_ADMIN_PORT}", "-f", paths["varnish"],
                      "-s", f"malloc,{STORE_MIB}m", "-p", "thread_pools=1"], SERVER_CPU)
    if target == "nginx":
        # A cold cache for every process, as for the others (their stores are in memory).
        subprocess.run(["rm", "-rf", os.path.join(tmp, "nginx-cache")], check=True)
    return launch_reference(target, paths[target], SERVER_CPU)


def origin_requests(tmp):
    """How many requests the origin has logged."""
    # nginx logs a request after its response: give the last ones time to be written.
    time.sleep(0.2)
    with open(os.path.join(tmp, "origin-access.log"), "rb") as f:
        return sum(1 for _ in f)


def fetch(port, path):
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


def is_hit(target, headers):
    if target == "meridian":
        return any(member.strip().lower().startswith("meridian")
                   and "hit" in [p.strip() for p in member.split(";")[1:]]
                   for member in headers.get("cache-status", "").split(","))
    if target == "varnish":
        return len(headers.get("x-varnish", "").split()) == 2 and "age" in headers
    return headers.get("x-cache-status") == "HIT"


def warm(target, port, path, size):
    """Fetches `path` until it is answered from the cache (a deadline of 5 s); fails loudly if it
    never is or the content is wrong."""
    end = time.time() + 5
    while True:
        status, headers, body = fetch(port, path)
        if status != 200 or len(body) != size:
            raise RuntimeError(f"{target}: GET {path} answered {status} with {len(body)} bytes")
        if is_hit(target, headers):
            return
        if time.time() > end:
            raise RuntimeError(f"{target}: GET {path} is never a cache hit: {headers}")
        time.sleep(0.05)


def wrk(args, port, path, lua):
    out = subprocess.run(
        ["taskset", "-c", str(CLIENT_CPU), "wrk", "-t1", f"-c{args.connections}",
         f"-d{args.seconds}s", "-s", lua, f"http://{HOST}:{port}{path}"],
        capture_output=True, text=True, check=True).stdout
    m = re.search(r"RESULT requests=(\d+) errors=(\d+) p50=(\d+) p99=(\d+)", out)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not (m and rate):
        raise RuntimeError(f"wrk against port {port} gave no result:\n{out}")
    return {"req_s": float(rate.group(1)), "requests": int(m.group(1)),
            "errors": int(m.group(2)), "p50": int(m.group(3)), "p99": int(m.group(4))}


def hits(target, args, port, pids, name, lua, tmp):
    """Hit rate, server CPU per hit and latency for object `name`, only hits."""
    path = f"/{name}"
    warm(target, port, path, OBJECTS[name])
    before = origin_requests(tmp)
    cpu0 = sum(cpu_seconds(p) for p in pids)
    load = wrk(args, port, path, lua)
    cpu1 = sum(cpu_seconds(p) for p in pids)
    reached = origin_requests(tmp) - before
    if reached:
        raise RuntimeError(f"{target}: {reached} requests reached the origin during the "
                           f"measured hits of {path}: not all were hits")
    if load["errors"]:
        raise RuntimeError(f"{target}: wrk saw {load['errors']} errors on {path}")
    load["cpu_us"] = (cpu1 - cpu0) * 1e6 / max(load["requests"], 1)
    load["per_core"] = 1e6 / load["cpu_us"] if load["cpu_us"] else float("nan")
    return load


def h2load_pass(port, uris, count):
    """Each URI of the file `uris` once, in order, over one HTTP/1.1 connection."""
    out = subprocess.run(
        ["taskset", "-c", str(CLIENT_CPU), "h2load", "--h1", "-c1", "-t1", f"-n{count}",
         "-i", uris], capture_output=True, text=True).stdout
    ok = re.search(r"(\d+) succeeded, (\d+) failed", out)
    codes = re.search(r"status codes: (\d+) 2xx", out)
    if not (ok and codes and int(ok.group(1)) == count and int(codes.group(1)) == count):
        raise RuntimeError(f"h2load against port {port} did not get {count} 2xx:\n{out}")


def memory(target, args, port, pids, tmp):
    """Bytes of RSS (and PSS) per cached distinct 1 KB object, on a fresh process."""
    uris = os.path.join(tmp, f"uris-{port}.txt")
    with open(uris, "w") as f:
        f.write("".join(f"http://{HOST}:{port}/obj/{i}\n" for i in range(args.objects)))
    warm_uris = os.path.join(tmp, f"warm-{port}.txt")
    with open(warm_uris, "w") as f:
        f.write(f"http://{HOST}:{port}/obj/warm\n")
    # The first connection, the first miss and hits cost what any use of the server costs.
    h2load_pass(port, warm_uris, 300)
    time.sleep(0.3)
    rss0, pss0 = max(rss_kib(pids) for _ in range(3)), pss_kib(pids)
    before = origin_requests(tmp)
    h2load_pass(port, uris, args.objects)
    filled = origin_requests(tmp)
    h2load_pass(port, uris, args.objects)
    again = origin_requests(tmp) - filled
    if again:
        raise RuntimeError(f"{target}: {again} of {args.objects} objects were not held: the "
                           "second pass reached the origin")
    if filled - before != args.objects:
        raise RuntimeError(f"{target}: the fill of {args.objects} objects reached the origin "
                           f"{filled - before} times")
    time.sleep(0.3)
    rss1, pss1 = max(rss_kib(pids) for _ in range(3)), pss_kib(pids)
    row = {"rss_idle": rss0, "rss_per_obj": (rss1 - rss0) * 1024 / args.objects,
           "pss_per_obj": (pss1 - pss0) * 1024 / args.objects, "files_per_obj": float("nan")}
    if target == "nginx":
        du = subprocess.run(["du", "-sk", os.path.join(tmp, "nginx-cache")], capture_output=True,
                            text=True, check=True).stdout
        row["files_per_obj"] = int(du.split()[0]) * 1024 / (args.objects + 1)
    return row


def measure(target, paths, args, lua, tmp):
    proc = launch(target, paths, args, tmp)
    port = PORTS[target]
    row = {}
    try:
        wait_port(port, deadline=30, host=HOST)
        pids = children(proc.pid)
        time.sleep(0.3)
        # A fresh process first, so that the objects' memory is not served from what earlier
        # load left in the allocator.
        row.update(memory(target, args, port, pids, tmp))
        pids = children(proc.pid)
        for name in OBJECTS:
            for key, value in hits(target, args, port, pids, name, lua, tmp).items():
                row[f"{name}_{key}"] = value
    finally:
        stop(proc, timeout=10)
    return row


def main():
    global HOST
    parser = bench_arguments(__doc__)
    parser.add_argument("--seconds", type=int, default=5, help="per measured wrk run")
    parser.add_argument("--connections", type=int, default=50, help="wrk's connections")
    parser.add_argument("--objects", type=int, default=20000,
                        help="distinct 1 KB objects for the memory figure")
    parser.add_argument("--host", default=HOST,
                        help="the loopback address every server listens on")
    args = parser.parse_args()
    HOST = args.host
    for port in [ORIGIN_PORT, *PORTS.values(), MERIDIAN_ADMIN_PORT, VARNISH_ADMIN_PORT]:
        try:
            wait_port(port, deadline=0.1, host=HOST)
        except RuntimeError:
            continue
        raise SystemExit(f"port {port} is taken: is another benchmark running?")
    targets = ["meridian", "varnish", "nginx"]
    tmp = tempfile.mkdtemp(prefix="meridian-edge-cache-")
    # nginx's workers (the origin's files, the proxy_cache directory) run as another user.
    os.chmod(tmp, 0o755)
    paths = configs(tmp, docroot(tmp))
    lua = os.path.join(tmp, "report.lua")
    with open(lua, "w") as f:
        f.write(WRK_LUA)
    origin = start(["nginx", "-c", paths["origin"]], CLIENT_CPU)
    print(f"caches on CPU {SERVER_CPU} (one worker each); wrk, h2load and the origin (nginx, "
          f"max-age=3600) on CPU {CLIENT_CPU}; hits only, {args.connections} connections, "
          f"{args.seconds}s per run; {args.objects} distinct 1 KB objects for memory; "
          f"{args.rounds} rounds + warm-up", flush=True)
    try:
        wait_port(ORIGIN_PORT, host=HOST)
        results = interleaved(targets, args.rounds,
                              lambda target: measure(target, paths, args, lua, tmp))
    finally:
        stop(origin)
        # The nginx cache's files of the last run (20,000 objects: about 150 MB on disk).
        shutil.rmtree(tmp, ignore_errors=True)
    report(results, targets, args)


def report(results, targets, args):
    def med(target, key):
        values = [row[key] for row in results[target]]
        return statistics.median(values), min(values), max(values)

    # (label, key, format, whether more is better, target ratio to Varnish or None)
    rows = []
    for name in OBJECTS:
        size = name.replace("k", " KB")
        rows += [
            (f"{size}: hits/s (client-bound)", f"{name}_req_s", "{:.0f}", True, 1.0),
            (f"{size}: server CPU µs/hit", f"{name}_cpu_us", "{:.1f}", False, None),
            (f"{size}: hits/s per server core", f"{name}_per_core", "{:.0f}", True, 1.0),
            (f"{size}: hit p50 µs", f"{name}_p50", "{:.0f}", False, None),
            (f"{size}: hit p99 µs", f"{name}_p99", "{:.0f}", False, None),
        ]
    rows += [
        ("RSS idle process KiB", "rss_idle", "{:.0f}", False, None),
        ("RSS bytes per cached 1 KB object", "rss_per_obj", "{:.0f}", False, None),
        ("PSS bytes per cached 1 KB object", "pss_per_obj", "{:.0f}", False, None),
        ("+ cache files bytes/object (disk)", "files_per_obj", "{:.0f}", False, None),
    ]
    print()
    print(f"{'median [min-max]':<36}" + "".join(f"{t:>24}" for t in targets)
          + f"{'/varnish':>10}{'/nginx':>10}  target")
    verdicts = []
    for label, key, fmt, more_is_better, goal in rows:
        cells = []
        for t in targets:
            m, lo, hi = med(t, key)
            cell = "-" if m != m else f"{fmt.format(m)} [{fmt.format(lo)}-{fmt.format(hi)}]"
            cells.append(f"{cell:>24}")
        ours = med("meridian", key)[0]
        ratios = []
        for ref in ("varnish", "nginx"):
            theirs = med(ref, key)[0]
            ratios.append(f"{ours / theirs:.2f}x" if theirs and theirs == theirs
                          and ours == ours else "-")
        verdict = ""
        if goal is not None:
            theirs = med("varnish", key)[0]
            met = ours >= goal * theirs if more_is_better else ours <= goal * theirs
            verdict = f">= {goal:.1f}x Varnish: {'met' if met else 'NOT met'}"
            verdicts.append(f"{label}: {'met' if met else 'NOT met'} ({ours / theirs:.2f}x)")
        print(f"{label:<36}" + "".join(cells) + f"{ratios[0]:>10}{ratios[1]:>10}  {verdict}")
    print()
    print("ratios are Meridian's median / the reference's median (for µs and bytes, lower is "
          "better); nginx's bodies are in files, outside RSS")
    print("target (Meridian >= 1.0x Varnish): " + "; ".join(verdicts))


if __name__ == "__main__":
    sys.exit(main())
