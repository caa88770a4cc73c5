#!/usr/bin/env python3
"""Scale to zero: what sleeping costs the first request, how fast a load step gets new
instances, and what a sleeping instance uses. Run it through bench/scale-to-zero.sh.

A whole platform on loopback (127.0.150.x, or `--base`): the global control plane, region fra's control
plane with its gateway (plain HTTP for the bench), one agent (host isolation, instances in
cgroups when it runs as root) pinned to core 1; everything else on core 0. Requests go
through the gateway, as an edge's would: gateway -> node proxy (mutual TLS) -> instance.

(a) Light wake: `sleep: {after: 1s, mode: light}`. Each round waits for the agent to freeze
    the idle instance ("instance asleep"), then times one GET / through the gateway: the node
    proxy holds it, rings the agent, which thaws the cgroup and opens the gate. Against the
    same request to the awake instance (median of many, same run): the latency the wake adds.
    The agent's own figure (first request held -> gate open) is its log's took_ms.
(b) Deep wake: `sleep: {after: 1s, mode: deep}`: the instance is stopped; the first request
    starts it and waits for its port. Against a direct start of the same meridian-hello by this
    script (spawn -> port accepts -> GET / answered), measured in the same rounds: the latency
    the platform adds beyond the application's own start.
(c) Load step: a service with `scale: {min: 1, max: 3, targets: {concurrency: 2}}`, each
    request taking 100 ms; 6 concurrent request loops start at once: time until requests are
    answered by 3 distinct instances (the autoscaler's decision, placement, start, health
    check, routes everywhere).
(d) Sleeping instances' CPU and memory, from the agent's cgroup figures
    (meridian_agent_instance_cpu_usage_seconds, ..._memory_usage_bytes) over 5 s: awake and
    idle, frozen (light), stopped (deep: nothing runs).
"""

import argparse
import http.client
import os
import queue
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

BASE = "127.0.150"


def addresses(base):
    """The addresses the bench uses under `base` (three octets): the global and regional
    control planes, the agent, the gateway, the agent's first instance, a direct start."""
    global GLOBAL_IP, REGION_IP, AGENT_IP, GATEWAY_IP, FIRST_INSTANCE, DIRECT_IP
    GLOBAL_IP, REGION_IP, AGENT_IP, GATEWAY_IP = (f"{base}.{n}" for n in (101, 102, 103, 104))
    FIRST_INSTANCE = f"{base}.110"
    DIRECT_IP = f"{base}.109"


addresses(BASE)
DEADLINE = 120.0
HOST = "bench.example.com"


class Platform:
    """Processes started by the bench, stopped (by pid, SIGTERM then SIGKILL) at the end."""

    def __init__(self, work):
        self.work = work
        self.procs = []

    def spawn(self, name, args, cpus="0", env=None):
        log = open(os.path.join(self.work, f"{name}.log"), "w")
        proc = subprocess.Popen(["taskset", "-c", cpus, *args], stdout=subprocess.PIPE,
                                stderr=log, env={**os.environ, **(env or {})}, text=True)
        lines = queue.Queue()
        threading.Thread(target=lambda: [lines.put(l) for l in proc.stdout], daemon=True).start()
        self.procs.append(proc)
        return proc, lines

    def stop(self):
        # Newest first: the agent stops its instances before the control planes go.
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def wait_line(lines, what, match):
    end = time.monotonic() + DEADLINE
    while True:
        try:
            line = lines.get(timeout=max(0.1, end - time.monotonic()))
        except queue.Empty:
            sys.exit(f"no {what} within {DEADLINE}s")
        if match(line):
            return line.strip()


def until(what, condition, deadline=DEADLINE, pause=0.01):
    end = time.monotonic() + deadline
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > end:
            sys.exit(f"timed out waiting for {what}")
        time.sleep(pause)


def start_platform(p, meridian):
    work = p.work
    _, lines = p.spawn("global", [meridian, "control", "--global", "--listen", f"{GLOBAL_IP}:0",
                                  "--xds", f"{GLOBAL_IP}:0", "--data-dir", f"{work}/global"],
                       env={"MERIDIAN_LOG": "warn"})
    api = xds = token = None
    while token is None:
        line = wait_line(lines, "global control plane line", lambda l: True)
        if line.startswith("meridian control (global) serving "):
            api = line.split()[4]
        elif line.startswith("regional control planes follow "):
            xds = line.split()[4]
        elif line.startswith("admin token"):
            token = line.split("stored hashed): ")[1].strip()
    cli = {"MERIDIAN_API": api, "MERIDIAN_TOKEN": token}

    def meridian_cli(*args):
        out = subprocess.run([meridian, *args], env={**os.environ, **cli}, capture_output=True,
                             text=True)
        if out.returncode != 0:
            sys.exit(f"meridian {' '.join(args)}: {out.stderr}")
        return out.stdout.strip()

    meridian_cli("region", "add", "fra", "--lat", "50.11", "--lon", "8.68")
    join = meridian_cli("join-token", "control/fra", "--api", api)
    _, lines = p.spawn("region", [meridian, "control", "--region", "fra", "--xds", f"{REGION_IP}:0",
                                  "--join-token", join, "--data-dir", f"{work}/region",
                                  "--admin", f"{REGION_IP}:0", "--api", api, "--global-xds", xds,
                                  "--gateway", f"{GATEWAY_IP}:8443",
                                  "--gateway-plaintext", f"{GATEWAY_IP}:0"],
                       env={"MERIDIAN_LOG": "warn,meridian_control::region=info"})
    line = wait_line(lines, "regional control plane", lambda l: "serving xDS on " in l)
    region_xds = line.split("serving xDS on ")[1].split(",")[0]
    region_admin = line.split("admin ")[1].split(",")[0]
    join = meridian_cli("join-token", "agent/fra-1", "--control", region_admin)
    _, lines = p.spawn("agent", [meridian, "agent", "--region", "fra", "--node", "fra-1",
                                 "--control", region_xds, "--join-token", join,
                                 "--isolation", "host", "--instance-addresses", FIRST_INSTANCE,
                                 "--capacity", "8", "--state-dir", f"{work}/agent",
                                 "--admin", f"{AGENT_IP}:0"],
                       cpus="1", env={"MERIDIAN_LOG": "info"})
    line = wait_line(lines, "agent admin", lambda l: l.startswith("meridian proxy admin on "))
    agent_admin = line.split("meridian proxy admin on ")[1].strip()
    join = meridian_cli("join-token", "gateway", "--control", region_admin)
    _, lines = p.spawn("gateway", [meridian, "gateway", "--region", "fra", "--control", region_xds,
                                   "--join-token", join, "--admin", f"{GATEWAY_IP}:0",
                                   "--state-dir", f"{work}/gateway"],
                       env={"MERIDIAN_LOG": "warn"})
    line = wait_line(lines, "gateway admin", lambda l: l.startswith("meridian proxy admin on "))
    gateway_admin = line.split("meridian proxy admin on ")[1].strip()

    def plaintext():
        try:
            listeners = urllib.request.urlopen(f"{gateway_admin}/listeners", timeout=5).read()
        except OSError:
            return None
        found = re.search(rb'"gateway-plaintext":"([^"]+)"', listeners)
        return found and found.group(1).decode()

    gateway = until("the gateway's listener", plaintext, pause=0.05)
    return meridian_cli, Agent(work, agent_admin), gateway


class Agent:
    def __init__(self, work, admin):
        self.log = os.path.join(work, "agent.log")
        self.admin = admin

    def lines(self, message):
        with open(self.log) as f:
            return [l for l in f if message in l]

    def metric(self, name, labels=""):
        text = urllib.request.urlopen(f"{self.admin}/metrics", timeout=5).read().decode()
        return sum(float(l.split()[-1]) for l in text.splitlines()
                   if l.startswith(name + "{") and labels in l)


def definition(name, scale, process, delay_ms=0):
    return f"""org: acme
app: bench
name: {name}
regions: [fra]
scale: {scale}
runtime: {{process: {process}}}
ports: [{{name: http, port: 8080}}]
routes: [{{path_prefix: /, port: http}}]
domains: [{name}.{HOST}]
health_checks: [{{http: {{port: http, path: /healthz}}, interval: 10ms, timeout: 10ms}}]
deploy: {{drain_delay: 0s, drain_timeout: 1s}}
"""


def deploy(meridian_cli, work, text):
    path = os.path.join(work, "service.yaml")
    with open(path, "w") as f:
        f.write(text)
    meridian_cli("deploy", "-f", path)


class Client:
    """Keep-alive HTTP/1.1 requests to the gateway for one host."""

    def __init__(self, gateway, host):
        ip, port = gateway.rsplit(":", 1)
        self.conn = http.client.HTTPConnection(ip, int(port), timeout=60)
        self.host = host

    def get(self, path="/"):
        """(status, body, seconds)."""
        begun = time.perf_counter()
        try:
            self.conn.request("GET", path, headers={"host": self.host})
            answer = self.conn.getresponse()
            body = answer.read().decode(errors="replace")
        except (OSError, http.client.HTTPException) as e:
            self.conn.close()
            return 0, str(e), time.perf_counter() - begun
        return answer.status, body, time.perf_counter() - begun


def ready(client, wanted="hello from"):
    status, body, _ = client.get()
    return status == 200 and wanted in body


def baseline(client, count=200):
    """Median seconds of `count` requests to an awake instance."""
    times = []
    for _ in range(count):
        status, body, took = client.get()
        if status != 200:
            sys.exit(f"a request to the awake instance failed: {status} {body}")
        times.append(took)
    return statistics.median(times)


def wakes(agent, client, mode, rounds):
    """Seconds of the first request to an instance asleep in `mode`, and the agent's took_ms,
    for each of `rounds` sleeps."""
    firsts, agent_ms = [], []
    for _ in range(rounds):
        # Awake first (a request wakes it if it slept already), then idle until it sleeps.
        if not ready(client):
            sys.exit(f"the {mode} service does not answer")
        asleep = len(agent.lines("instance asleep"))
        until(f"a {mode} sleep", lambda: len(agent.lines("instance asleep")) > asleep
              and f'mode="{mode}"' in agent.lines("instance asleep")[-1], pause=0.05)
        # The sleep was logged as the gate closed; the freeze follows at once.
        time.sleep(0.2)
        awake = len(agent.lines("instance awake"))
        status, body, took = client.get()
        if status != 200:
            sys.exit(f"the request that woke the {mode} sleep failed: {status} {body}")
        firsts.append(took)
        until("the wake's log line", lambda: len(agent.lines("instance awake")) > awake)
        line = agent.lines("instance awake")[-1]
        agent_ms.append(float(re.search(r"took_ms=([\d.]+)", line).group(1)))
    return firsts, agent_ms


def asleep_again(agent, mode):
    """Waits for the next sleep of the instance just woken (mode `mode`), and a moment for
    its freeze or stop to be done."""
    asleep = len([l for l in agent.lines("instance asleep") if f'mode="{mode}"' in l])
    # The wake just logged: the sleep that follows is the next one.
    until(f"the {mode} instance asleep again",
          lambda: len([l for l in agent.lines("instance asleep")
                       if f'mode="{mode}"' in l]) > asleep, pause=0.05)
    time.sleep(0.5)


def direct_start(hello, port):
    """Seconds from spawning meridian-hello to its first GET / answered (port polled every
    millisecond, as the agent's probe does), the same program the deep wake starts."""
    env = {"MERIDIAN_ADDRESS": DIRECT_IP, "PORT": str(port), "GREETING": "hello",
           "PATH": "/usr/bin:/bin"}
    begun = time.perf_counter()
    proc = subprocess.Popen(["taskset", "-c", "1", hello], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                conn = http.client.HTTPConnection(DIRECT_IP, port, timeout=10)
                conn.request("GET", "/")
                conn.getresponse().read()
                return time.perf_counter() - begun
            except OSError:
                time.sleep(0.001)
    finally:
        proc.terminate()
        proc.wait()


def usage(agent, service, seconds=5.0):
    """(CPU seconds used over `seconds`, memory bytes at the end) of `service`'s instances."""
    labels = f'service="{service}"'
    cpu = agent.metric("meridian_agent_instance_cpu_usage_seconds", labels)
    time.sleep(seconds)
    return (agent.metric("meridian_agent_instance_cpu_usage_seconds", labels) - cpu,
            agent.metric("meridian_agent_instance_memory_usage_bytes", labels))


def load_step(meridian_cli, work, agent, gateway, hello):
    """Seconds from 6 request loops starting to answers from a second and from a third
    instance."""
    deploy(meridian_cli, work, definition(
        "step", "{min: 1, max: 3, targets: {concurrency: 2}, down_window: 1m}",
        f"{{command: {hello}, env: {{GREETING: hello, HELLO_DELAY_MS: '100'}}}}"))
    until("step to serve", lambda: ready(Client(gateway, f"step.{HOST}")), pause=0.1)
    seen, lock, stop = {}, threading.Lock(), threading.Event()
    begun = time.perf_counter()

    def loop():
        client = Client(gateway, f"step.{HOST}")
        while not stop.is_set():
            status, body, _ = client.get()
            found = re.search(r"step (step-\d+)", body)
            if status == 200 and found:
                with lock:
                    seen.setdefault(found.group(1), time.perf_counter() - begun)

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(6)]
    for t in threads:
        t.start()
    until("3 instances answering", lambda: len(seen) >= 3, pause=0.05)
    stop.set()
    for t in threads:
        t.join()
    times = sorted(seen.values())
    return times[1], times[2]


def ms(seconds):
    return seconds * 1000


def spread(samples):
    values = [ms(s) for s in samples]
    return f"{statistics.median(values):8.2f}  ({min(values):.2f}–{max(values):.2f})"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--meridian", required=True)
    parser.add_argument("--hello", required=True)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--base", default=BASE,
                        help="the first three octets of the loopback addresses to use")
    parser.add_argument("--only-step", action="store_true",
                        help="measure only the load step (c)")
    args = parser.parse_args()
    addresses(args.base)
    meridian, hello = os.path.abspath(args.meridian), os.path.abspath(args.hello)
    work = tempfile.mkdtemp(prefix="meridian-bench-scale-to-zero-")
    p = Platform(work)
    try:
        run(p, meridian, hello, args.rounds, args.only_step)
    except SystemExit:
        # What the agent said last tells why a wait failed.
        with open(os.path.join(work, "agent.log")) as f:
            print("".join(f.readlines()[-15:]), file=sys.stderr)
        raise
    finally:
        p.stop()
        shutil.rmtree(work, ignore_errors=True)


def run(p, meridian, hello, rounds, only_step):
    work = p.work
    meridian_cli, agent, gateway = start_platform(p, meridian)
    if only_step:
        print_step(load_step(meridian_cli, work, agent, gateway, hello), work)
        return
    process = f"{{command: {hello}, env: {{GREETING: hello}}}}"

    # (a) light, with the awake baseline and the figures of the awake and frozen instance.
    deploy(meridian_cli, work, definition("light", "{min: 0, sleep: {after: 1s, mode: light}}",
                                          process))
    client = Client(gateway, f"light.{HOST}")
    until("light to serve", lambda: ready(client), pause=0.1)
    awake = baseline(client)
    awake_use = usage(agent, "light")
    light, light_agent = wakes(agent, client, "light", rounds)
    asleep_again(agent, "light")
    light_use = usage(agent, "light")

    # (b) deep, against direct starts of the same program in the same rounds.
    deploy(meridian_cli, work, definition("deep", "{min: 0, sleep: {after: 1s, mode: deep}}",
                                          process))
    client = Client(gateway, f"deep.{HOST}")
    until("deep to serve", lambda: ready(client), pause=0.1)
    deep_awake = baseline(client, 50)
    port = free_port(DIRECT_IP)
    direct = [direct_start(hello, port) for _ in range(rounds)]
    deep, deep_agent = wakes(agent, client, "deep", rounds)
    asleep_again(agent, "deep")
    deep_use = usage(agent, "deep")
    direct += [direct_start(hello, port) for _ in range(rounds)]

    # (c) a load step.
    step = load_step(meridian_cli, work, agent, gateway, hello)

    light_added = [s - awake for s in light]
    deep_added = [s - statistics.median(direct) - deep_awake for s in deep]
    print()
    print(f"Scale to zero (meridian-hello through the gateway and the node proxy; {rounds} wakes "
          "each; agent and instances on core 1)")
    print(f"  {'':46} {'median ms':>9}  (min–max)")
    print(f"  {'request to the awake instance':46} {ms(awake):8.2f}")
    print(f"  {'first request after a light sleep (frozen)':46} {spread(light)}")
    print(f"  {'  added by the wake':46} {spread(light_added)}   target <= 10 ms: "
          f"{'met' if ms(statistics.median(light_added)) <= 10 else 'NOT met'}")
    print(f"  {'  agent: held -> thawed and gate open':46} "
          f"{spread([x / 1000 for x in light_agent])}")
    print(f"  {'direct start of meridian-hello (to 1st answer)':46} {spread(direct)}")
    print(f"  {'first request after a deep sleep (stopped)':46} {spread(deep)}")
    print(f"  {'  added beyond the app start and the hop':46} {spread(deep_added)}   "
          f"target <= 50 ms: {'met' if ms(statistics.median(deep_added)) <= 50 else 'NOT met'}")
    print(f"  {'  agent: held -> started and port accepts':46} "
          f"{spread([x / 1000 for x in deep_agent])}")
    print_step(step, work)
    print()
    print("Instance resources over 5 s (agent's cgroup figures)")
    for what, (cpu, memory) in (("awake, idle", awake_use), ("asleep, light (frozen)", light_use),
                                ("asleep, deep (stopped)", deep_use)):
        print(f"  {what:26} CPU {cpu * 1000:8.3f} ms   memory {memory / (1 << 20):7.2f} MiB")


def print_step(step, work):
    """The load step's figures, and the region's autoscaling decisions that made them."""
    print()
    print(f"Load step (6 loops of 100 ms requests, concurrency target 2, 1 -> 3 instances): "
          f"a second instance answering after {ms(step[0]):.0f} ms, a third after "
          f"{ms(step[1]):.0f} ms (target < 3000 ms)")
    with open(os.path.join(work, "region.log")) as f:
        for line in f:
            if "autoscale decision" in line:
                print("  " + re.sub(r"\x1b\[[0-9;]*m", "", line.strip()))


def free_port(ip):
    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    main()
