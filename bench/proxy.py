#!/usr/bin/env python3
"""Proxy benchmark: direct, Meridian, HAProxy and nginx in front of the same upstream.

Run through bench/proxy.sh (it installs the tools and builds Meridian). Each proxy runs alone on
CPU 1 with one worker thread; wrk/h2load and the upstream (nginx, `return 200`, one worker) run on
CPU 0. Targets are interleaved over several rounds after a warm-up; the tables show medians and
min-max, and the ratios of Meridian to HAProxy and to nginx measured in this same invocation.

With `--threads 2` (the multi-core figures) each proxy has two workers on both CPUs (Meridian: its
multi-threaded runtime with two workers; HAProxy: nbthread 2; nginx: two worker processes), and
wrk and h2load run two threads on both CPUs beside them: on a two-core machine the proxies then
share the cores with the load, so the figures compare the proxies with each other, in the same
conditions, rather than measure what two whole cores give.
"""

import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

UPSTREAM_PORT = 18080
PORTS = {"direct": UPSTREAM_PORT, "meridian": 18081, "haproxy": 18082, "nginx": 18083}
ADMIN_PORT = 18091
CLK_TCK = os.sysconf("SC_CLK_TCK")

WRK_LUA = """
done = function(summary, latency, requests)
  io.write(string.format("RESULT requests=%d errors=%d p50=%d p99=%d p999=%d\\n",
    summary.requests,
    summary.errors.connect + summary.errors.read + summary.errors.write
      + summary.errors.status + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
"""


def wait_port(port, deadline=20.0, host="127.0.0.1"):
    end = time.time() + deadline
    while time.time() < end:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def status_kib(pids, file, field):
    """The sum over `pids` of `field` (kB) in /proc/PID/`file`; a process gone counts 0."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/{file}") as f:
                for line in f:
                    if line.startswith(field + ":"):
                        total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total


def rss_kib(pids):
    return status_kib(pids, "status", "VmRSS")


def pss_kib(pids):
    return status_kib(pids, "smaps_rollup", "Pss")


def bench_arguments(doc):
    """A benchmark's argument parser with --meridian and --rounds, once the open-files limit is
    raised to its hard limit (load clients and held connections need many)."""
    import resource
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    parser = argparse.ArgumentParser(description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--meridian", default="target/release/meridian")
    parser.add_argument("--rounds", type=int, default=3)
    return parser


def children(pid):
    """pid and its descendants (nginx and haproxy fork workers)."""
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    pids = [pid]
    for child in out.stdout.split():
        pids += children(int(child))
    return pids


def start(cmd, cpu, **kw):
    return subprocess.Popen(["taskset", "-c", str(cpu)] + cmd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, **kw)


def stop(proc, timeout=5):
    """SIGTERM, then SIGKILL after `timeout` seconds."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def configs(tmp, meridian_http2, threads=1):
    up = f"127.0.0.1:{UPSTREAM_PORT}"
    files = {}
    files["upstream"] = upstream_config(tmp, up)
    files["nginx"] = f"""
worker_processes {threads}; daemon off; pid {tmp}/nginx.pid; error_log /dev/null crit;
events {{ worker_connections 8192; }}
http {{ access_log off; keepalive_requests 1000000;
  upstream up {{ server {up}; keepalive 1024; }}
  server {{ listen 127.0.0.1:{PORTS['nginx']}; listen 127.0.0.1:{PORTS['nginx'] + 100} http2;
    location / {{ proxy_pass http://up; proxy_http_version 1.1;
      proxy_set_header Connection ""; }} }} }}
"""
    files["haproxy"] = haproxy_config(
        [f"127.0.0.1:{PORTS['haproxy']}", f"127.0.0.1:{PORTS['haproxy'] + 100} proto h2"], up, threads=threads)
    listeners = [("web", PORTS["meridian"])]
    if meridian_http2:
        listeners.append(("web2", PORTS["meridian"] + 100))
    listener_yaml = "".join(
        f"""  - name: {name}
    address: 127.0.0.1:{port}
    virtual_hosts: [{{name: all, domains: ["*"], routes: [{{cluster: up}}]}}]
""" for name, port in listeners)
    files["meridian"] = f"""listeners:
{listener_yaml}clusters:
  - name: up
    endpoints: [{{address: "{up}"}}]
"""
    return write_configs(tmp, files)


def upstream_config(tmp, up):
    """nginx config of the upstream every proxy benchmark forwards to: `return 200 'ok'` at
    `up`, one worker, keep-alive."""
    return f"""
worker_processes 1; daemon off; pid {tmp}/upstream.pid; error_log /dev/null crit;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000;
  server {{ listen {up} reuseport; location / {{ return 200 'ok'; }} }} }}
"""


def haproxy_config(binds, up, frontend=(), threads=1):
    """HAProxy config: `threads` threads, its frontend bound by each of `binds` (`ADDR [options]`) with
    the further `frontend` lines, forwarding to `up` with keep-alive and connection reuse (up to
    1024 connections)."""
    bind_lines = "".join(f"  bind {bind}\n" for bind in binds)
    bind_lines += "".join(f"  {line}\n" for line in frontend)
    return f"""
global
  nbthread {threads}
  maxconn 9000
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend fe
{bind_lines}  default_backend be
backend be
  server s1 {up} maxconn 1024
"""


def write_configs(tmp, files):
    """Writes each config text of `files` (by name) to `tmp/<name>.conf`; their paths by name."""
    paths = {}
    for name, text in files.items():
        path = os.path.join(tmp, f"{name}.conf")
        with open(path, "w") as f:
            f.write(text)
        paths[name] = path
    return paths


def launch_reference(target, path, cpu):
    """Starts HAProxy or nginx (`target`) with the config at `path`, pinned to `cpu`."""
    if target == "haproxy":
        return start(["haproxy", "-db", "-f", path], cpu)
    if target == "nginx":
        return start(["nginx", "-c", path], cpu)
    raise ValueError(target)


def launch(target, paths, meridian, cpus="1"):
    """Starts `target` (meridian, haproxy or nginx) pinned to `cpus`."""
    if target == "meridian":
        return start([meridian, "proxy", "--config", paths["meridian"],
                      "--admin", f"127.0.0.1:{ADMIN_PORT}"], cpus,
                     env={**os.environ, "MERIDIAN_LOG": "error"})
    return launch_reference(target, paths[target], cpus)


def wrk(port, connections, seconds, lua, cpus="0", threads=1):
    out = subprocess.run(
        ["taskset", "-c", cpus, "wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "-s", lua,
         f"http://127.0.0.1:{port}/"], capture_output=True, text=True, check=True).stdout
    m = re.search(r"RESULT requests=(\d+) errors=(\d+) p50=(\d+) p99=(\d+) p999=(\d+)", out)
    req_s = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    return {"req_s": req_s, "requests": int(m.group(1)), "errors": int(m.group(2)),
            "p50": int(m.group(3)), "p99": int(m.group(4)), "p999": int(m.group(5))}


def h2load(port, seconds, cpus="0", threads=1):
    out = subprocess.run(
        ["taskset", "-c", cpus, "h2load", "-c10", "-m10", f"-t{threads}", f"-D{seconds}",
         f"http://127.0.0.1:{port}/"], capture_output=True, text=True).stdout
    m = re.search(r"finished in .*?, ([\d.]+) req/s", out)
    ok = re.search(r"(\d+) succeeded, (\d+) failed", out)
    return {"req_s": float(m.group(1)) if m else 0.0,
            "failed": int(ok.group(2)) if ok else -1}


def idle_connections(port, count):
    socks = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        socks.append(s)
    for s in socks:
        s.recv(4096)
    return socks


def measure(target, paths, meridian, args, lua):
    proxy_cpus, client_cpus = ("1", "0") if args.threads == 1 else ("0,1", "0,1")
    proc = None if target == "direct" else launch(target, paths, meridian, proxy_cpus)
    port = PORTS[target]
    wait_port(port)
    pids = [] if proc is None else children(proc.pid)
    row = {}
    try:
        time.sleep(0.3)
        row["rss_idle"] = rss_kib(pids)
        cpu0 = sum(cpu_seconds(p) for p in pids)
        load = wrk(port, args.connections, args.seconds, lua, client_cpus, args.threads)
        cpu1 = sum(cpu_seconds(p) for p in pids)
        row.update(load)
        row["cpu_us"] = (cpu1 - cpu0) * 1e6 / max(load["requests"], 1) if pids else float("nan")
        row["rss_load"] = rss_kib(children(proc.pid)) if proc else 0
        single = wrk(port, 1, max(2, args.seconds // 2), lua, client_cpus)
        row["single_p50"] = single["p50"]
        h2_port = port + 100 if target != "direct" else None
        row["h2_req_s"] = (h2load(h2_port, args.seconds, client_cpus, args.threads)["req_s"]
                           if h2_port else float("nan"))
        socks = idle_connections(port, 1000)
        time.sleep(0.3)
        row["rss_1000"] = rss_kib(children(proc.pid)) if proc else 0
        for s in socks:
            s.close()
    finally:
        if proc:
            stop(proc)
    return row


def interleaved(targets, rounds, measure_one):
    """`measure_one(target)` for every target, in rotating order (A B C, B C A, ...), over a
    warm-up round (discarded) and `rounds` rounds; the rows of the measured rounds by target."""
    results = {t: [] for t in targets}
    for r in range(rounds + 1):
        order = targets[r % len(targets):] + targets[:r % len(targets)]
        for target in order:
            row = measure_one(target)
            if r > 0:
                results[target].append(row)
        print(f"round {r}{' (warm-up, discarded)' if r == 0 else ''}: order {' '.join(order)}",
              flush=True)
    return results


def main():
    parser = bench_arguments(__doc__)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--threads", type=int, choices=[1, 2], default=1,
                        help="workers per proxy (2: proxies and load on both CPUs)")
    args = parser.parse_args()
    targets = ["direct", "meridian", "haproxy", "nginx"]
    tmp = tempfile.mkdtemp(prefix="meridian-bench-")
    paths = configs(tmp, meridian_http2=True, threads=args.threads)
    lua = os.path.join(tmp, "report.lua")
    with open(lua, "w") as f:
        f.write(WRK_LUA)
    upstream = start(["nginx", "-c", paths["upstream"]], 0 if args.threads == 1 else "0,1")
    wait_port(UPSTREAM_PORT)
    placement = ("proxies on CPU 1 (one worker each); wrk, h2load and the upstream on CPU 0"
                 if args.threads == 1 else
                 "proxies with two workers each, wrk and h2load with two threads, and the "
                 "upstream, all on CPUs 0 and 1")
    print(f"{placement}; {args.connections} connections, {args.seconds}s per run, {args.rounds} rounds + warm-up")
    try:
        results = interleaved(targets, args.rounds,
                              lambda target: measure(target, paths, args.meridian, args, lua))
    finally:
        stop(upstream)

    def med(target, key):
        values = [row[key] for row in results[target]]
        return statistics.median(values), min(values), max(values)

    columns = [("req/s", "req_s", "{:.0f}"), ("p50 µs", "p50", "{:.0f}"), ("p99 µs", "p99", "{:.0f}"),
               ("p99.9 µs", "p999", "{:.0f}"), ("CPU µs/req", "cpu_us", "{:.1f}"),
               ("errors", "errors", "{:.0f}"), ("1-conn p50 µs", "single_p50", "{:.0f}"),
               ("h2 req/s", "h2_req_s", "{:.0f}"), ("RSS idle MiB", "rss_idle", "{:.1f}"),
               ("RSS load MiB", "rss_load", "{:.1f}"), ("RSS 1000 conns MiB", "rss_1000", "{:.1f}")]
    print()
    print(f"{'median [min-max]':<20}" + "".join(f"{t:>26}" for t in targets))
    for label, key, fmt in columns:
        cells = []
        for t in targets:
            m, lo, hi = med(t, key)
            if key.startswith("rss"):
                m, lo, hi = m / 1024, lo / 1024, hi / 1024
            cell = f"{fmt.format(m)} [{fmt.format(lo)}-{fmt.format(hi)}]"
            cells.append(f"{cell:>26}")
        print(f"{label:<20}" + "".join(cells))
    print()
    for ref in ["haproxy", "nginx"]:
        ratios = []
        for label, key, _ in columns[:5] + columns[6:8]:
            ours, theirs = med("meridian", key)[0], med(ref, key)[0]
            if theirs:
                ratios.append(f"{label} {ours / theirs:.2f}x")
        print(f"Meridian / {ref}: " + ", ".join(ratios))
    mer = {key: med("meridian", key)[0] for _, key, _ in columns}
    hap = {key: med("haproxy", key)[0] for _, key, _ in columns}
    print()
    print("targets: req/s >= 1.0x HAProxy: {}; p99 <= HAProxy's: {}; idle RSS <= 10 MB: {} ({:.1f} MiB); "
          "RSS with 1000 idle connections <= 50 MB: {} ({:.1f} MiB)".format(
              "met" if mer["req_s"] >= hap["req_s"] else "NOT met",
              "met" if mer["p99"] <= hap["p99"] else "NOT met",
              "met" if mer["rss_idle"] <= 10 * 1024 else "NOT met", mer["rss_idle"] / 1024,
              "met" if mer["rss_1000"] <= 50 * 1024 else "NOT met", mer["rss_1000"] / 1024))


if __name__ == "__main__":
    sys.exit(main())
