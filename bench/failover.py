#!/usr/bin/env python3
"""Failover of the global control plane's replicas (docs/replicas.md): a PostgreSQL cluster of
its own (initdb in a temporary directory, on loopback), three `meridian control --global`
replicas on it and a region following all three (`--global-xds A,B,C`). Each round:

- replica killed -> region following another: the replica the region follows is killed
  (SIGKILL) and the time is taken until the region's log says its xDS stream is open at another
  replica (target: < 2 s);
- replica frozen -> region following another: the same with SIGSTOP (its connections stay open
  and nothing answers on them, as when its machine freezes or the network to it is cut; the
  region's HTTP/2 keep-alive pings notice), then SIGCONT and SIGKILL (target: < 2 s);
- lease holder killed -> new holder: the replica holding the lease is killed (SIGKILL) and the
  time is taken until another replica's /readyz says it holds the lease (target: < 5 s; the
  lease expires 3 s after its last renewal, and the others try every second).

The killed replica is started again (same addresses) before the next round. Figures: median,
min and max over the rounds, with their ratio to the target. Run through bench/control-plane.sh
(`--meridian PATH` takes a given binary, e.g. a debug build, instead of building).
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

HOST = "127.0.0.1"  # --host changes it
REGION_TARGET = 2.0
LEASE_TARGET = 5.0
DEADLINE = 60.0


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def postgres_bin():
    versions = sorted(
        (int(v), os.path.join("/usr/lib/postgresql", v, "bin"))
        for v in os.listdir("/usr/lib/postgresql") if v.isdigit()
    ) if os.path.isdir("/usr/lib/postgresql") else []
    if versions:
        return versions[-1][1]
    initdb = shutil.which("initdb")
    if initdb:
        return os.path.dirname(initdb)
    sys.exit("PostgreSQL is not installed (apt-get install postgresql)")


class Postgres:
    """A throwaway cluster; as root it runs as the postgres user (PostgreSQL refuses root)."""

    def __init__(self, work):
        self.bin = postgres_bin()
        self.dir = os.path.join(work, "postgres")
        os.mkdir(self.dir)
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            shutil.chown(self.dir, "postgres", "postgres")
        self.data = os.path.join(self.dir, "data")
        self.port = free_port()
        self.run("initdb", "--pgdata", self.data, "--username", "postgres", "--auth=trust",
                 "--encoding=UTF8", "--locale=C", "--no-sync")
        options = (f"-c listen_addresses={HOST} -c port={self.port} "
                   "-c unix_socket_directories='' -c fsync=off")
        self.run("pg_ctl", "start", "--wait", "--pgdata", self.data, "--log",
                 os.path.join(self.dir, "log"), "--options", options)
        self.url = f"postgres://postgres@{HOST}:{self.port}/postgres"

    def run(self, program, *args):
        subprocess.run(self.as_user + [os.path.join(self.bin, program), *args], check=True,
                       stdout=subprocess.DEVNULL)

    def stop(self):
        subprocess.run(self.as_user + [os.path.join(self.bin, "pg_ctl"), "stop", "--mode",
                                       "immediate", "--pgdata", self.data],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class Replica:
    def __init__(self, meridian, data_dir, url, log):
        self.meridian, self.data_dir, self.url, self.log = meridian, data_dir, url, log
        self.api = f"{HOST}:{free_port()}"
        self.xds = f"{HOST}:{free_port()}"
        self.token = None
        self.process = None

    def start(self):
        command = [self.meridian, "control", "--global", "--data-dir", self.data_dir,
                   "--store", self.url, "--listen", self.api, "--xds", self.xds]
        said = self.log + ".out"
        with open(said, "w") as out, open(self.log, "ab") as log:
            self.process = subprocess.Popen(command, stdout=out, stderr=log,
                                            env={**os.environ, "MERIDIAN_LOG": "info"})
        wait_for(lambda: http(f"http://{self.api}/readyz")[0] == 200, "a replica to be ready")
        with open(said) as out:
            for line in out:
                if "stored hashed): " in line:
                    self.token = line.split("stored hashed): ")[1].strip()

    def kill(self):
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def freeze(self):
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self):
        self.process.send_signal(signal.SIGCONT)

    def holds_lease(self):
        status, body = http(f"http://{self.api}/readyz")
        return status == 200 and "lease: held by this replica" in body


def http(url, method="GET", body=None, token=None):
    request = urllib.request.Request(url, method=method, data=body)
    if token:
        request.add_header("authorization", f"Bearer {token}")
    if body is not None:
        request.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""


def wait_for(condition, what, deadline=DEADLINE, every=0.005):
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            sys.exit(f"waited in vain for {what}")
        time.sleep(every)


def streams_opened(log_path):
    """The servers the region's log says its xDS stream opened at, in order."""
    with open(log_path, errors="replace") as log:
        return re.findall(r"xDS stream open.*?server=(https://\S+)", log.read())


def summary(name, figures, target):
    median = statistics.median(figures)
    print(f"{name}: median {median * 1000:.0f} ms (min {min(figures) * 1000:.0f}, "
          f"max {max(figures) * 1000:.0f}; {len(figures)} rounds), target < {target:.0f} s: "
          f"{median / target:.2f} of it")


def main():
    global HOST
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--meridian", required=True, help="the meridian binary")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--host", default=HOST, help="the loopback address everything binds")
    args = parser.parse_args()
    HOST = args.host
    work = tempfile.mkdtemp(prefix="meridian-failover-")
    if os.geteuid() == 0:
        os.chmod(work, 0o755)
    cluster = Postgres(work)
    replicas, region = [], None
    try:
        first_dir = os.path.join(work, "replica-0")
        replicas.append(Replica(args.meridian, first_dir, cluster.url,
                                os.path.join(work, "replica-0.log")))
        replicas[0].start()
        token = replicas[0].token
        for i in (1, 2):
            data_dir = os.path.join(work, f"replica-{i}")
            shutil.copytree(first_dir, data_dir)
            replicas.append(Replica(args.meridian, data_dir, cluster.url,
                                    os.path.join(work, f"replica-{i}.log")))
            replicas[i].start()
        api = f"http://{replicas[0].api}"
        status, body = http(f"{api}/v1/regions/fra", "PUT",
                            json.dumps({"lat": 50.1, "lon": 8.7}).encode(), token)
        assert status == 200, (status, body)
        join = subprocess.run([args.meridian, "join-token", "control/fra", "--api", api],
                              env={**os.environ, "MERIDIAN_TOKEN": token}, check=True,
                              capture_output=True, text=True).stdout.strip()
        region_log = os.path.join(work, "region.log")
        global_xds = ",".join(f"https://{r.xds}" for r in replicas)
        region = subprocess.Popen(
            [args.meridian, "control", "--region", "fra", "--xds", f"{HOST}:0",
             "--join-token", join, "--data-dir", os.path.join(work, "region"),
             "--admin", f"{HOST}:0", "--api", api, "--global-xds", global_xds],
            stdout=subprocess.DEVNULL, stderr=open(region_log, "ab"),
            env={**os.environ, "MERIDIAN_LOG": "info"})
        wait_for(lambda: streams_opened(region_log), "the region to follow a replica")

        region_figures, frozen_figures, lease_figures = [], [], []
        for _ in range(args.rounds):
            for lose, figures in ((Replica.kill, region_figures),
                                  (Replica.freeze, frozen_figures)):
                opened = streams_opened(region_log)
                followed = next(r for r in replicas if f"https://{r.xds}" == opened[-1])
                lose(followed)
                lost = time.monotonic()
                wait_for(lambda: len(streams_opened(region_log)) > len(opened),
                         "the region to follow another replica")
                figures.append(time.monotonic() - lost)
                if lose is Replica.freeze:
                    followed.thaw()
                    followed.kill()
                followed.start()

            wait_for(lambda: sum(r.holds_lease() for r in replicas) == 1, "a lease holder",
                     every=0.02)
            holder = next(r for r in replicas if r.holds_lease())
            holder.kill()
            killed = time.monotonic()
            wait_for(lambda: any(r.holds_lease() for r in replicas if r is not holder),
                     "a new lease holder", every=0.02)
            lease_figures.append(time.monotonic() - killed)
            holder.start()
        print(f"failover of {len(replicas)} global replicas on PostgreSQL ({args.meridian}):")
        summary("replica killed -> region following another", region_figures, REGION_TARGET)
        summary("replica frozen -> region following another", frozen_figures, REGION_TARGET)
        summary("lease holder killed -> new holder", lease_figures, LEASE_TARGET)
    finally:
        if region:
            region.kill()
            region.wait()
        for replica in replicas:
            if replica.process and replica.process.poll() is None:
                replica.kill()
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
