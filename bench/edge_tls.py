#!/usr/bin/env python3
"""Edge TLS benchmark: Meridian's TLS listener next to nginx and HAProxy, in one invocation.

Run it through bench/edge-tls.sh (it installs the tools and builds the release binaries). Every
server under test runs alone on CPU 1 with one worker (Meridian: one CPU, so its current-thread
runtime; nginx: one worker process; HAProxy: nbthread 1); the clients (bench/src/tls_client.rs,
h2load) and the HTTP upstream (nginx `return 200`, one worker) run on CPU 0. All three servers get
the same ECDSA P-256 certificate, made for this run, and speak TLS 1.3. Targets are interleaved
in rotating order over --rounds rounds after a discarded warm-up round; the table shows medians and
min-max, and the ratios of Meridian to the reference each target names.

What each figure is (server = the process under test; CPU = its utime+stime from /proc/PID/stat
over the run, master and workers summed):

- handshakes/s: what the client achieved: TLS 1.3 handshakes (X25519, AES-128-GCM), each on a
  new TCP connection, no ALPN, then close_notify both ways; --concurrency at once. On two cores
  this is bounded by the client as much as by the server.
- server CPU µs/handshake, and handshakes/s per core (= 1e6 / that): the credible figure: what
  one handshake costs the server, TCP accept and close included. The target compares these.
- resumed: the same, each connection resuming with a ticket of the same client task's previous
  connection; "resumed %" says how many really resumed (Meridian resumes from its in-memory
  session cache, nginx and HAProxy from stateless tickets).
- h2 req/s and CPU µs/request: h2load over TLS (ALPN h2), 10 connections x 10 streams, small
  `GET /` proxied to the upstream over HTTP/1.1 keep-alive. nginx and HAProxy are configured to
  do what the edge must: set X-Forwarded-For/-Proto/-Host, Forwarded and a random X-Request-ID
  on each request, and Alt-Svc on each response.
- HTTP/3 req/s and CPU µs/request (Meridian only: Debian's nginx and HAProxy here have no
  QUIC): tls-client's `h3` mode, 10 QUIC connections x 10 requests in flight, the same `GET /`
  through the same listener (`http3: true`), shown beside Meridian's own HTTP/2 figures.
- RSS per idle h2 connection: a fresh server process, its VmRSS idle, then 1,000 TLS connections
  with ALPN h2 whose preface and SETTINGS have been exchanged (both acknowledged), held idle:
  (VmRSS with them - VmRSS idle) / 1000, in KiB (the kB of /proc). Target: <= 20.
"""

import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

from proxy import (bench_arguments, children, cpu_seconds, haproxy_config, interleaved,
                   launch_reference, rss_kib, start, stop, upstream_config, wait_port, write_configs)

UPSTREAM_PORT = 19380
PORTS = {"meridian": 19381, "nginx": 19382, "haproxy": 19383}
ADMIN_PORT = 19391
SNI = "bench.meridian.test"
SERVER_CPU = 1
CLIENT_CPU = 0
IDLE_CONNECTIONS = 1000


def certificate(tmp):
    """One self-signed ECDSA P-256 certificate and its key for every server of this run."""
    cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "2", "-subj", f"/CN={SNI}", "-addext", f"subjectAltName=DNS:{SNI}"],
                   check=True, capture_output=True)
    combined = os.path.join(tmp, "combined.pem")
    with open(combined, "w") as out:
        out.write(open(cert).read() + open(key).read())
    return cert, key, combined


def configs(tmp, cert, key, combined):
    up = f"127.0.0.1:{UPSTREAM_PORT}"
    files = {"upstream": upstream_config(tmp, up)}
    # The same work per request as Meridian's edge, which must do it: the forwarding headers
    # (X-Forwarded-For/-Proto/-Host, Forwarded, a random X-Request-ID) on each request and, as
    # the edge serves HTTP/3 on the same port, Alt-Svc on each response.
    files["nginx"] = f"""
worker_processes 1; daemon off; pid {tmp}/nginx.pid; error_log /dev/null crit;
events {{ worker_connections 8192; }}
http {{ access_log off; keepalive_requests 1000000;
  ssl_protocols TLSv1.3; ssl_session_tickets on;
  ssl_certificate {cert}; ssl_certificate_key {key};
  upstream up {{ server {up}; keepalive 1024; }}
  server {{ listen 127.0.0.1:{PORTS['nginx']} ssl http2;
    location / {{ proxy_pass http://up; proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $http_host;
      proxy_set_header X-Forwarded-For $remote_addr;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Host $http_host;
      proxy_set_header Forwarded "for=$remote_addr;proto=$scheme;host=\\"$http_host\\"";
      proxy_set_header X-Request-ID $request_id;
      add_header Alt-Svc 'h3=":{PORTS['nginx']}"; ma=86400'; }} }} }}
"""
    files["haproxy"] = haproxy_config(
        [f"127.0.0.1:{PORTS['haproxy']} ssl crt {combined} alpn h2,http/1.1 ssl-min-ver TLSv1.3 "
         "prefer-client-ciphers"], up,
        ["option forwardfor",
         "http-request set-header X-Forwarded-Proto https",
         "http-request set-header X-Forwarded-Host %[req.hdr(host)]",
         'http-request set-header Forwarded "for=%[src];proto=https;host=\\"%[req.hdr(host)]\\""',
         "unique-id-format %[uuid()]",
         "unique-id-header X-Request-ID",
         f"http-response set-header Alt-Svc 'h3=\":{PORTS['haproxy']}\"; ma=86400'"])
    files["meridian"] = f"""listeners:
  - name: edge
    address: 127.0.0.1:{PORTS['meridian']}
    tls: {{cert_file: {cert}, key_file: {key}, http3: true}}
    virtual_hosts: [{{name: all, domains: ["*"], routes: [{{cluster: up}}]}}]
clusters:
  - name: up
    endpoints: [{{address: "{up}"}}]
"""
    return write_configs(tmp, files)


def meridian_command(meridian, config):
    """Meridian's HTTPS listener under test. Today the edge serves HTTPS through the same proxy
    code as `meridian proxy` with a `tls` listener; once `meridian edge` has its own HTTPS
    listener (certificates by SNI from xDS), this is the one place to start that instead."""
    return [meridian, "proxy", "--config", config, "--admin", f"127.0.0.1:{ADMIN_PORT}"]


def launch(target, paths, meridian):
    if target == "meridian":
        return start(meridian_command(meridian, paths["meridian"]), SERVER_CPU,
                     env={**os.environ, "MERIDIAN_LOG": "error"})
    return launch_reference(target, paths[target], SERVER_CPU)


def client(args, port, *command, **kw):
    return ["taskset", "-c", str(CLIENT_CPU), args.client, "--server", f"127.0.0.1:{port}",
            "--sni", SNI, *command]


def handshakes(args, port, pids, resume):
    """Handshake rate, server CPU per handshake and resumed share against `port`."""
    cpu0 = sum(cpu_seconds(p) for p in pids)
    command = client(args, port, "handshakes", "--concurrency", str(args.concurrency),
                     "--seconds", str(args.seconds)) + (["--resume"] if resume else [])
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    cpu1 = sum(cpu_seconds(p) for p in pids)
    m = dict(re.findall(r"(\w+)=(\S+)", out.split("RESULT", 1)[1]))
    done = int(m["handshakes"])
    return {"rate": done / float(m["seconds"]), "cpu_us": (cpu1 - cpu0) * 1e6 / max(done, 1),
            "resumed_pct": 100.0 * int(m["resumed"]) / max(done, 1), "errors": int(m["errors"]),
            "suite": f"{m['suite']} {m['group']}"}


def h2load(args, port, pids):
    """h2load over TLS with ALPN h2: req/s and server CPU per request."""
    cpu0 = sum(cpu_seconds(p) for p in pids)
    out = subprocess.run(
        ["taskset", "-c", str(CLIENT_CPU), "h2load", "-c10", "-m10", "-t1", f"-D{args.seconds}",
         f"https://127.0.0.1:{port}/"], capture_output=True, text=True).stdout
    cpu1 = sum(cpu_seconds(p) for p in pids)
    rate = re.search(r"finished in .*?, ([\d.]+) req/s", out)
    ok = re.search(r"(\d+) succeeded, (\d+) failed", out)
    alpn = re.search(r"Application protocol: (\S+)", out)
    if not (rate and ok and alpn and alpn.group(1) == "h2"):
        raise RuntimeError(f"h2load against port {port} did not run HTTP/2 over TLS:\n{out}")
    done = int(ok.group(1))
    return {"req_s": float(rate.group(1)), "cpu_us": (cpu1 - cpu0) * 1e6 / max(done, 1),
            "failed": int(ok.group(2))}


def idle_rss(args, port, pids):
    """KiB of RSS per idle TLS + HTTP/2 connection, and how many stayed open meanwhile."""
    idle = rss_kib(pids)
    holder = subprocess.Popen(client(args, port, "idle-h2", "--connections",
                                     str(IDLE_CONNECTIONS)),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        ready = holder.stdout.readline()
        if not ready.startswith("READY"):
            raise RuntimeError(f"the idle-connection client failed against port {port}")
        # Let the server finish what it does after the exchange (buffers given back, timers).
        time.sleep(0.5)
        held = max(rss_kib(pids) for _ in range(3))
        holder.stdin.write("\n")
        holder.stdin.flush()
        still_open = int(holder.stdout.readline().split()[1])
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    return {"rss_idle": idle, "per_conn": (held - idle) / IDLE_CONNECTIONS,
            "still_open": still_open}


def measure(target, paths, args):
    proc = launch(target, paths, args.meridian)
    port = PORTS[target]
    row = {}
    try:
        wait_port(port)
        pids = children(proc.pid)
        time.sleep(0.3)
        # A fresh process first, so that the connections' memory is not served from what
        # earlier load left in the allocator.
        row.update(idle_rss(args, port, pids))
        for resume in (False, True):
            for key, value in handshakes(args, port, pids, resume).items():
                row[("resumed_" if resume else "full_") + key] = value
        for key, value in h2load(args, port, pids).items():
            row["h2_" + key] = value
        if target == "meridian":
            for key, value in http3_load(args, port, pids).items():
                row["h3_" + key] = value
    finally:
        stop(proc)
    return row


def http3_load(args, port, pids):
    """tls-client's HTTP/3 load (10 QUIC connections x 10 requests in flight): req/s and server
    CPU per request."""
    cpu0 = sum(cpu_seconds(p) for p in pids)
    out = subprocess.run(client(args, port, "h3", "--seconds", str(args.seconds)),
                         capture_output=True, text=True, check=True).stdout
    cpu1 = sum(cpu_seconds(p) for p in pids)
    m = dict(re.findall(r"(\w+)=(\S+)", out.split("RESULT", 1)[1]))
    done = int(m["requests"])
    return {"req_s": done / float(m["seconds"]), "cpu_us": (cpu1 - cpu0) * 1e6 / max(done, 1),
            "errors": int(m["errors"])}


def main():
    parser = bench_arguments(__doc__)
    parser.add_argument("--client", default="target/release/tls-client")
    parser.add_argument("--seconds", type=int, default=5, help="per handshake and h2load run")
    parser.add_argument("--concurrency", type=int, default=32, help="handshakes in flight")
    args = parser.parse_args()
    for port in [UPSTREAM_PORT, *PORTS.values(), ADMIN_PORT]:
        try:
            wait_port(port, deadline=0.1)
        except RuntimeError:
            continue
        raise SystemExit(f"port {port} is taken: is another benchmark running?")
    targets = ["meridian", "nginx", "haproxy"]
    tmp = tempfile.mkdtemp(prefix="meridian-edge-tls-")
    paths = configs(tmp, *certificate(tmp))
    upstream = start(["nginx", "-c", paths["upstream"]], CLIENT_CPU)
    print(f"servers on CPU {SERVER_CPU} (one worker each); tls-client, h2load and the upstream "
          f"(nginx return 200) on CPU {CLIENT_CPU}; ECDSA P-256, TLS 1.3; {args.seconds}s per run, "
          f"{args.concurrency} handshakes in flight, {IDLE_CONNECTIONS} idle h2 connections; "
          f"{args.rounds} rounds + warm-up", flush=True)
    try:
        wait_port(UPSTREAM_PORT)
        results = interleaved(targets, args.rounds, lambda target: measure(target, paths, args))
    finally:
        stop(upstream)
    suites = {f"{t}: {row['full_suite']}" for t, rows in results.items() for row in rows}
    report(results, targets, suites)


def report(results, targets, suites):
    def med(target, key):
        values = [row[key] for row in results[target]]
        return statistics.median(values), min(values), max(values)

    for rows in results.values():
        for row in rows:
            for kind in ("full", "resumed"):
                row[f"{kind}_per_core"] = 1e6 / row[f"{kind}_cpu_us"]
    # (label, key, format, reference, whether more is better, target ratio or None)
    rows = [
        ("full handshakes/s (client-bound)", "full_rate", "{:.0f}", "nginx", True, None),
        ("full: server CPU µs/handshake", "full_cpu_us", "{:.1f}", "nginx", False, None),
        ("full: handshakes/s per server core", "full_per_core", "{:.0f}", "nginx", True, 1.0),
        ("full: client errors", "full_errors", "{:.0f}", None, False, None),
        ("resumed handshakes/s (client-bound)", "resumed_rate", "{:.0f}", "nginx", True, None),
        ("resumed: server CPU µs/handshake", "resumed_cpu_us", "{:.1f}", "nginx", False, None),
        ("resumed: handshakes/s per server core", "resumed_per_core", "{:.0f}", "nginx", True,
         1.0),
        ("resumed: % really resumed", "resumed_resumed_pct", "{:.0f}", None, True, None),
        ("resumed: client errors", "resumed_errors", "{:.0f}", None, False, None),
        ("h2 req/s (TLS, 10x10 streams)", "h2_req_s", "{:.0f}", "haproxy", True, 1.0),
        ("h2: server CPU µs/request", "h2_cpu_us", "{:.1f}", "haproxy", False, 1.0),
        ("h2: failed requests", "h2_failed", "{:.0f}", None, False, None),
        ("RSS idle process KiB", "rss_idle", "{:.0f}", None, False, None),
        ("RSS per idle TLS h2 conn KiB", "per_conn", "{:.1f}", None, False, None),
        (f"idle conns still open (of {IDLE_CONNECTIONS})", "still_open", "{:.0f}", None, True,
         None),
    ]
    print()
    print(f"negotiated by tls-client: {'; '.join(sorted(suites))}")
    print(f"{'median [min-max]':<40}" + "".join(f"{t:>26}" for t in targets)
          + f"{'Meridian/ref':>16}  target")
    verdicts = []
    for label, key, fmt, ref, more_is_better, target in rows:
        cells = []
        for t in targets:
            m, lo, hi = med(t, key)
            cells.append(f"{fmt.format(m) + ' [' + fmt.format(lo) + '-' + fmt.format(hi) + ']':>26}")
        ratio, goal = "", ""
        if ref:
            ours, theirs = med("meridian", key)[0], med(ref, key)[0]
            ratio = f"{ours / theirs:.2f}x {ref}" if theirs else "n/a"
            if target is not None:
                met = ours >= target * theirs if more_is_better else ours <= target * theirs
                goal = f"{'>=' if more_is_better else '<='} {target:.1f}x: {'met' if met else 'NOT met'}"
                verdicts.append(f"{label}: {goal}")
        print(f"{label:<40}" + "".join(cells) + f"{ratio:>16}  {goal}")
    for label, key, h2_key, fmt in [("HTTP/3 req/s (QUIC, 10x10 streams)", "h3_req_s", "h2_req_s", "{:.0f}"),
                                    ("h3: server CPU µs/request", "h3_cpu_us", "h2_cpu_us", "{:.1f}"),
                                    ("h3: failed requests", "h3_errors", None, "{:.0f}")]:
        m, lo, hi = med("meridian", key)
        cell = f"{fmt.format(m) + ' [' + fmt.format(lo) + '-' + fmt.format(hi) + ']':>26}"
        beside = f"{m / med('meridian', h2_key)[0]:.2f}x own h2" if h2_key else ""
        print(f"{label:<40}{cell}{'(no HTTP/3 here)':>26}{'(no HTTP/3 here)':>26}{beside:>16}")
    per_conn = med("meridian", "per_conn")[0]
    goal = f"<= 20 KiB: {'met' if per_conn <= 20 else 'NOT met'} ({per_conn:.1f})"
    print()
    print("targets (Meridian): " + "; ".join(verdicts + [f"RSS per idle h2 conn {goal}"]))


if __name__ == "__main__":
    sys.exit(main())
