#!/usr/bin/env python3
"""DNS benchmark: Meridian's .internal server against unbound serving an equal zone.

Run through bench/dns.sh (it installs dnsperf and unbound and builds Meridian). Each server runs
alone on CPU 1 (unbound with one thread); dnsperf runs on CPU 0. Both serve the same 1,000
names of the `internal.` zone and answer the same query mix (A records, and names that do not
exist). Rounds are interleaved after a warm-up. Throughput: dnsperf as fast as it can for a few
seconds, queries/s and the median over rounds. Latency: a fixed rate every server sustains, each
query's latency from dnsperf's verbose output, p50/p99/p99.9. The ratios are Meridian to unbound
measured in this same invocation.
"""

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

PORTS = {"meridian": 15300, "unbound": 15301}
NAMES = 1000


def wait_udp(port, deadline=20.0):
    """Waits until something answers a DNS query on 127.0.0.1:port."""
    query = bytes.fromhex("abcd01000001000000000000") + b"\x03svc\x04test\x08internal\x00\x00\x01\x00\x01"
    end = time.time() + deadline
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        while time.time() < end:
            try:
                s.sendto(query, ("127.0.0.1", port))
                s.recvfrom(512)
                return
            except OSError:
                time.sleep(0.05)
    raise SystemExit(f"nothing answers DNS on port {port}")


def zone(directory):
    names = {f"svc{i}.app{i % 10}.internal": f"100.64.{i // 250}.{i % 250 + 1}" for i in range(NAMES)}
    table = {"127.0.0.1": {n: {"address": a, "ports": {"http": 8080}} for n, a in names.items()}}
    table_file = os.path.join(directory, "table.json")
    with open(table_file, "w") as f:
        json.dump(table, f)
    conf = os.path.join(directory, "unbound.conf")
    with open(conf, "w") as f:
        f.write("server:\n")
        f.write(f"  interface: 127.0.0.1@{PORTS['unbound']}\n")
        f.write("  num-threads: 1\n  do-daemonize: no\n  use-syslog: no\n  logfile: \"\"\n")
        f.write("  verbosity: 0\n  username: \"\"\n  chroot: \"\"\n  directory: \"" + directory + "\"\n")
        f.write("  access-control: 127.0.0.0/8 allow\n  do-ip6: no\n  so-reuseport: no\n")
        f.write("  local-zone: \"internal.\" static\n")
        for name, address in names.items():
            f.write(f"  local-data: \"{name}. 5 IN A {address}\"\n")
    queries = os.path.join(directory, "queries.txt")
    with open(queries, "w") as f:
        for i in range(NAMES):
            f.write(f"svc{i}.app{i % 10}.internal A\n")
            if i % 10 == 0:
                f.write(f"missing{i}.app.internal A\n")
    return table_file, conf, queries


def start(target, meridian, table_file, conf):
    if target == "meridian":
        cmd = [meridian, "dns", "--listen", f"127.0.0.1:{PORTS['meridian']}", "--table", table_file]
        env = dict(os.environ, MERIDIAN_LOG="warn")
    else:
        cmd = ["unbound", "-d", "-c", conf]
        env = dict(os.environ)
    process = subprocess.Popen(["taskset", "-c", "1"] + cmd, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=env)
    wait_udp(PORTS[target])
    return process


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def throughput(target, queries, seconds, pid):
    before = cpu_seconds(pid)
    out = subprocess.run(
        ["taskset", "-c", "0", "dnsperf", "-s", "127.0.0.1", "-p", str(PORTS[target]), "-d", queries,
         "-l", str(seconds), "-c", "4", "-q", "200"],
        capture_output=True, text=True, check=True).stdout
    cpu = cpu_seconds(pid) - before
    qps = float(re.search(r"Queries per second:\s+([\d.]+)", out).group(1))
    completed = int(re.search(r"Queries completed:\s+(\d+)", out).group(1))
    lost = int(re.search(r"Queries lost:\s+(\d+)", out).group(1))
    return qps, lost, cpu * 1e6 / max(completed, 1)


def latency(target, queries, seconds, rate):
    out = subprocess.run(
        ["taskset", "-c", "0", "dnsperf", "-s", "127.0.0.1", "-p", str(PORTS[target]), "-d", queries,
         "-l", str(seconds), "-Q", str(rate), "-v"],
        capture_output=True, text=True, check=True).stdout
    samples = sorted(float(m.group(1)) for m in re.finditer(r"^> \S+ .* ([\d.]+)$", out, re.M))
    if not samples:
        raise SystemExit(f"no per-query latencies from dnsperf -v for {target}")
    pick = lambda q: samples[min(len(samples) - 1, int(q * len(samples)))] * 1e6
    return pick(0.5), pick(0.99), pick(0.999)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--meridian", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rate", type=int, default=20000, help="queries/s of the latency runs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="meridian-bench-dns-") as directory:
        table_file, conf, queries = zone(directory)
        results = {t: {"qps": [], "lost": [], "cpu_us": [], "p50": [], "p99": [], "p999": []}
                   for t in PORTS}
        print(f"servers pinned to CPU 1, dnsperf to CPU 0; {NAMES} names; {args.seconds}s per run, "
              f"{args.rounds} rounds + warm-up; latency at {args.rate} queries/s")
        for round_ in range(args.rounds + 1):
            print(f"round {round_}" + (" (warm-up, discarded)" if round_ == 0 else ""), flush=True)
            order = list(PORTS) if round_ % 2 == 0 else list(reversed(PORTS))
            for target in order:
                process = start(target, args.meridian, table_file, conf)
                try:
                    qps, lost, cpu_us = throughput(target, queries, args.seconds, process.pid)
                    p50, p99, p999 = latency(target, queries, args.seconds, args.rate)
                finally:
                    process.send_signal(signal.SIGTERM)
                    process.wait(timeout=10)
                if round_ == 0:
                    continue
                for key, value in (("qps", qps), ("lost", lost), ("cpu_us", cpu_us), ("p50", p50),
                                   ("p99", p99), ("p999", p999)):
                    results[target][key].append(value)
        med = lambda t, k: statistics.median(results[t][k])
        rng = lambda t, k: f"{min(results[t][k]):.0f}-{max(results[t][k]):.0f}"
        print()
        print(f"{'':28}{'meridian':>18}{'unbound':>18}{'ratio':>8}")
        rows = [("queries/s (median)", "qps", True), ("CPU µs per query", "cpu_us", False),
                ("p50 µs at fixed rate", "p50", False), ("p99 µs at fixed rate", "p99", False),
                ("p99.9 µs at fixed rate", "p999", False)]
        for label, key, _ in rows:
            m, u = med("meridian", key), med("unbound", key)
            print(f"{label:28}{m:>12.1f} ({rng('meridian', key)}){u:>10.1f} ({rng('unbound', key)}) {m / u:>6.2f}x")
        print(f"{'queries lost (median)':28}{med('meridian', 'lost'):>12.0f}{med('unbound', 'lost'):>18.0f}")
        ratio = med("meridian", "qps") / med("unbound", "qps")
        p99 = med("meridian", "p99")
        print()
        print(f"targets: queries/s >= 1.0x unbound: {'met' if ratio >= 1.0 else 'NOT met'} ({ratio:.2f}x); "
              f"p99 < 1 ms: {'met' if p99 < 1000 else 'NOT met'} ({p99:.0f} µs)")


if __name__ == "__main__":
    sys.exit(main())
