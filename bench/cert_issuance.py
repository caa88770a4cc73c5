#!/usr/bin/env python3
"""Certificate issuance: a domain added to a service, until every edge of `meridian dev` serves
a valid certificate for it, with certificates ordered over ACME from pebble on loopback.

Run through bench/cert-issuance.sh (it installs pebble and openssl and builds Meridian). What
runs: pebble-challtestsrv as pebble's DNS server (every name is 127.0.0.1: nothing resolves off
the machine), pebble (its HTTP-01 port is the Paris edge's plain port, its TLS-ALPN-01 port that
edge's HTTPS port), and `meridian dev --acme-directory` with pebble. Each round deploys a new
service of the example app with a new domain and times, from the deploy command's start, until
each edge completes a TLS handshake for that name with a chain that verifies against pebble's
issuing root. The figure is the slowest edge (every edge serves it), median over rounds, with
its ratio to the target of 3 s (pebble alone takes about 1 s per order on this kind of machine;
the global control plane's log has each order's own time).
"""

import argparse
import json
import os
import re
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

PEBBLE = 14900
PEBBLE_MANAGEMENT = 14901
DNS = 14902
CHALLTEST_MANAGEMENT = 14903
EDGE_HTTP = 18090  # meridian dev's Paris edge (plain); nyc follows
EDGE_HTTPS = 18443
EDGES = [("par", EDGE_HTTPS), ("nyc", EDGE_HTTPS + 1)]
TARGET_SECONDS = 3.0


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def pebble_https_certificate(tmp):
    """A CA and a certificate for 127.0.0.1 that pebble serves its API with."""
    ca_key, ca, key, csr, cert = (os.path.join(tmp, n) for n in
                                  ("ca.key", "ca.pem", "key.pem", "req.csr", "cert.pem"))
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    run(["openssl", "req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "2",
         "-subj", "/CN=bench pebble CA"])
    run(["openssl", "req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=localhost"])
    ext = os.path.join(tmp, "ext.cnf")
    with open(ext, "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n")
    run(["openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
         "-out", cert, "-days", "2", "-extfile", ext])
    return ca, cert, key


def start(cmd, log, **kw):
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            **kw)


def stop(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_port(port, deadline=30.0):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on 127.0.0.1:{port}")


def ensure_free(ports):
    for port in ports:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError as e:
                sys.exit(f"port {port} is taken ({e}); stop what holds it")


def serves(port, name, root):
    """Whether the edge at `port` completes a handshake for `name` that verifies against `root`."""
    context = ssl.create_default_context(cadata=root)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as raw:
            with context.wrap_socket(raw, server_hostname=name):
                return True
    except (OSError, ssl.SSLError):
        return False


def definition(template, service, domain):
    text = re.sub(r"(?m)^name: .*$", f"name: {service}", template, count=1)
    return re.sub(r"(?ms)^domains:.*?(?=^\S)", f"domains: [{domain}]\n", text, count=1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--meridian", required=True)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    ensure_free([PEBBLE, PEBBLE_MANAGEMENT, CHALLTEST_MANAGEMENT])
    procs = []
    tmp = tempfile.mkdtemp(prefix="meridian-bench-certs-")
    log = open(os.path.join(tmp, "log"), "w")
    try:
        ca, cert, key = pebble_https_certificate(tmp)
        procs.append(start(["pebble-challtestsrv", "-defaultIPv4", "127.0.0.1",
                            "-defaultIPv6", "", "-dns01", f"127.0.0.1:{DNS}", "-http01", "",
                            "-https01", "", "-tlsalpn01", "",
                            "-management", f"127.0.0.1:{CHALLTEST_MANAGEMENT}"], log))
        config = os.path.join(tmp, "pebble.json")
        with open(config, "w") as f:
            json.dump({"pebble": {
                "listenAddress": f"127.0.0.1:{PEBBLE}",
                "managementListenAddress": f"127.0.0.1:{PEBBLE_MANAGEMENT}",
                "certificate": cert, "privateKey": key,
                "httpPort": EDGE_HTTP, "tlsPort": EDGE_HTTPS,
                "ocspResponderURL": "", "externalAccountBindingRequired": False}}, f)
        env = dict(os.environ, PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT="0")
        pebble_log = open(os.path.join(tmp, "pebble.log"), "w")
        procs.append(start(["pebble", "-config", config, "-dnsserver", f"127.0.0.1:{DNS}"],
                           pebble_log, env=env))
        wait_port(PEBBLE)
        context = ssl.create_default_context(cafile=ca)
        root = urllib.request.urlopen(f"https://127.0.0.1:{PEBBLE_MANAGEMENT}/roots/0",
                                      context=context).read().decode()

        data = os.path.join(tmp, "dev")
        dev_out = os.path.join(tmp, "dev.out")
        dev = start([args.meridian, "dev", "--listen", "127.0.0.1:0", "--data-dir", data,
                     "--acme-directory", f"https://127.0.0.1:{PEBBLE}/dir",
                     "--acme-ca-root", ca], open(dev_out, "w"),
                    env=dict(os.environ, MERIDIAN_LOG="warn"))
        procs.append(dev)
        end = time.monotonic() + 300
        while "Ctrl-C stops everything" not in open(dev_out).read():
            if dev.poll() is not None or time.monotonic() > end:
                sys.exit(f"meridian dev did not come up:\n{open(dev_out).read()}")
            time.sleep(0.2)
        found = re.search(r"export MERIDIAN_API=(\S+) MERIDIAN_TOKEN=(\S+)", open(dev_out).read())
        client_env = dict(os.environ, MERIDIAN_API=found.group(1), MERIDIAN_TOKEN=found.group(2))
        template = open(os.path.join(os.path.dirname(__file__), "..", "examples",
                                     "hello.yaml")).read()

        times = []
        for i in range(args.rounds):
            service, domain = f"bench{i}", f"bench{i}.example.test"
            path = os.path.join(tmp, f"{service}.yaml")
            with open(path, "w") as f:
                f.write(definition(template, service, domain))
            start_time = time.monotonic()
            run([args.meridian, "deploy", "-f", path], env=client_env)
            waiting = dict(EDGES)
            served = {}
            while waiting and time.monotonic() - start_time < 60:
                for edge, port in list(waiting.items()):
                    if serves(port, domain, root):
                        served[edge] = time.monotonic() - start_time
                        del waiting[edge]
                time.sleep(0.01)
            if waiting:
                sys.exit(f"round {i}: {', '.join(waiting)} never served {domain}")
            slowest = max(served.values())
            times.append(slowest)
            detail = ", ".join(f"{e} {t:.2f} s" for e, t in served.items())
            print(f"round {i}: {domain} served by every edge after {slowest:.2f} s ({detail})")

        median = statistics.median(times)
        print()
        print(f"{'median [min-max] over':<44} {'meridian dev + pebble':>24} {'target':>8}")
        print(f"{'domain added -> served by every edge (s)':<44} "
              f"{median:>10.2f} [{min(times):.2f}-{max(times):.2f}] {TARGET_SECONDS:>8.1f}   "
              f"{median / TARGET_SECONDS:.2f}x target: "
              f"{'met' if median < TARGET_SECONDS else 'NOT met'}")
        print("where: pebble, pebble-challtestsrv and every meridian dev process share both "
              f"cores; meridian is {args.meridian}")
    finally:
        for proc in reversed(procs):
            stop(proc)
        log.close()


if __name__ == "__main__":
    main()
