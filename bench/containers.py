#!/usr/bin/env python3
"""Containers: start of an image instance with its layers cached vs a process instance of the same
meridian-hello, and pulls of a 50 MB image and of a version of it that differs in one 1 MB layer.
Run it through bench/containers.sh (root, runc, docker-registry, skopeo, iproute2, nftables).

A whole platform on loopback: a local registry (Debian's docker-registry, 127.0.218.1), the global
control plane (127.0.218.2), region fra's control plane (127.0.218.3), one agent (admin on
127.0.218.4, instances in network namespaces on 100.64.218.0/24), pinned to core 1; everything
else on core 0.

Start: from the agent beginning a run of an instance (its cgroup; for an image: the store
lookup, the overlay root and config.json, then runc) to its first passing health check (HTTP
/healthz every 10 ms), as the agent logs it ("instance started", took_ms) and counts it in
meridian_agent_instance_start_seconds{runtime}. Each round re-deploys both services (a new
environment value), process and image in rotating order; the first round (which pulls the
hello image) is a warm-up and not counted.

Pull: the agent's "image ready" time (manifest, blobs fetched and verified, layers unpacked)
and the bytes it fetched (meridian_agent_image_pulled_bytes_total; the registry's access log
says the same from its side), against `skopeo copy` of the same image to an OCI layout (fetch
and write only: it verifies but does not unpack), the new version into the same layout (which
reuses the blobs it has).
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import queue
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.request

from proxy import stop  # bench/proxy.py, beside this script

BASE = "127.0.218"
REGISTRY_IP, GLOBAL_IP, REGION_IP, AGENT_IP = (f"{BASE}.{n}" for n in (1, 2, 3, 4))
NETWORK = "100.64.218.0"
DEADLINE = 120.0
MB = 1 << 20


class Platform:
    """Processes started by the bench, stopped (by pid) and cleaned up at the end."""

    def __init__(self, work):
        self.work = work
        self.procs = []
        self.agent = None

    def spawn(self, name, args, cpus="0", env=None, stdout=subprocess.PIPE):
        log = open(os.path.join(self.work, f"{name}.log"), "w")
        proc = subprocess.Popen(["taskset", "-c", cpus, *args], stdout=stdout, stderr=log,
                                env={**os.environ, **(env or {})}, text=True)
        lines = queue.Queue()
        if stdout == subprocess.PIPE:
            threading.Thread(target=lambda: [lines.put(l) for l in proc.stdout],
                             daemon=True).start()
        self.procs.append(proc)
        return proc, lines

    def stop(self):
        # The agent first, with SIGTERM: it stops its instances and deletes its namespaces.
        if self.agent is not None and self.agent.poll() is None:
            stop(self.agent, timeout=40)
        for proc in reversed(self.procs):
            if proc.poll() is None:
                stop(proc)
        remove_namespaces()
        with open("/proc/self/mounts") as f:
            mounts = [line.split()[1] for line in f]
        for mount in reversed(mounts):
            if mount.startswith(self.work):
                subprocess.run(["umount", "-l", mount], check=False)


def remove_namespaces():
    """Deletes namespaces (and veth pairs) holding addresses of the bench's instance network:
    what an agent killed before it could clean up left."""
    listed = subprocess.run(["ip", "-o", "-4", "addr", "show", "to", f"{NETWORK}/24"],
                            capture_output=True, text=True).stdout
    for line in listed.splitlines():
        link = line.split()[1].split("@")[0]
        tag_and_id = link[2:] if link.startswith("mh") else ""
        if len(tag_and_id) == 12:
            namespace = f"mrd-{tag_and_id[:8]}-{tag_and_id[8:]}"
            subprocess.run(["ip", "netns", "delete", namespace], check=False)
            shutil.rmtree(f"/etc/netns/{namespace}", ignore_errors=True)
        subprocess.run(["ip", "link", "delete", link], check=False, stderr=subprocess.DEVNULL)


def free_port(ip):
    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


def wait_line(lines, what, match):
    end = time.monotonic() + DEADLINE
    while True:
        try:
            line = lines.get(timeout=max(0.1, end - time.monotonic()))
        except queue.Empty:
            sys.exit(f"no {what} within {DEADLINE}s")
        if match(line):
            return line.strip()


def until(what, condition, deadline=DEADLINE):
    end = time.monotonic() + deadline
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > end:
            sys.exit(f"timed out waiting for {what}")
        time.sleep(0.02)


# --- OCI images -------------------------------------------------------------------------------

def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Layout:
    """An OCI image layout being written: blobs, and the tags of index.json."""

    def __init__(self, path):
        self.path = path
        self.manifests = []
        os.makedirs(os.path.join(path, "blobs/sha256"), exist_ok=True)

    def blob(self, media_type, data):
        digest = sha256(data)
        with open(os.path.join(self.path, "blobs/sha256", digest[7:]), "wb") as f:
            f.write(data)
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    def image(self, tag, layers):
        """Image `tag` of `layers` (uncompressed tars, bottom first), running /hello."""
        descriptors = [self.blob("application/vnd.oci.image.layer.v1.tar+gzip",
                                 gzip.compress(t, compresslevel=1, mtime=0)) for t in layers]
        config = {"architecture": "amd64", "os": "linux",
                  "config": {"Entrypoint": ["/hello"], "User": "65534:65534"},
                  "rootfs": {"type": "layers", "diff_ids": [sha256(t) for t in layers]}}
        config = self.blob("application/vnd.oci.image.config.v1+json",
                           json.dumps(config).encode())
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": config, "layers": descriptors}
        manifest = self.blob("application/vnd.oci.image.manifest.v1+json",
                             json.dumps(manifest).encode())
        manifest["annotations"] = {"org.opencontainers.image.ref.name": tag}
        self.manifests.append(manifest)
        with open(os.path.join(self.path, "index.json"), "w") as f:
            json.dump({"schemaVersion": 2, "manifests": self.manifests}, f)
        with open(os.path.join(self.path, "oci-layout"), "w") as f:
            f.write('{"imageLayoutVersion":"1.0.0"}')
        return sum(d["size"] for d in descriptors)


def tar_of(files):
    """An uncompressed tar of (path in the image, bytes, mode) and of the directories above."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        dirs = {"tmp"}
        for path, _, _ in files:
            parts = path.split("/")[:-1]
            dirs.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
        for d in sorted(dirs):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755
            tar.addfile(info)
        for path, data, mode in files:
            info = tarfile.TarInfo(path)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def hello_layer(hello, marker):
    """meridian-hello as /hello with the libraries ldd lists for it, and /image naming it."""
    files = [("hello", open(hello, "rb").read(), 0o755), ("image", marker.encode(), 0o644)]
    ldd = subprocess.run(["ldd", hello], capture_output=True, text=True).stdout
    for word in ldd.split():
        if word.startswith("/") and os.path.exists(word):
            files.append((word.lstrip("/"), open(word, "rb").read(), 0o755))
    return tar_of(files)


def random_layer(name, size):
    return tar_of([(f"data/{name}", os.urandom(size), 0o644)])


def push(layout, tag, registry, name):
    subprocess.run(["skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{layout}:{tag}",
                    f"docker://{registry}/{name}:{tag}"], check=True, stdout=subprocess.DEVNULL)


# --- the platform -----------------------------------------------------------------------------

def start_platform(p, meridian, registry):
    work = p.work
    _, lines = p.spawn("global", [meridian, "control", "--global", "--listen", f"{GLOBAL_IP}:0",
                                  "--xds", f"{GLOBAL_IP}:0", "--data-dir", f"{work}/global",
                                  "--insecure-registry", registry], env={"MERIDIAN_LOG": "warn"})
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
                                  "--admin", f"{REGION_IP}:0", "--api", api, "--global-xds", xds],
                       env={"MERIDIAN_LOG": "warn"})
    line = wait_line(lines, "regional control plane", lambda l: "serving xDS on " in l)
    region_xds = line.split("serving xDS on ")[1].split(",")[0]
    region_admin = line.split("admin ")[1].split(",")[0]
    join = meridian_cli("join-token", "agent/fra-1", "--control", region_admin)
    agent, lines = p.spawn("agent", [meridian, "agent", "--region", "fra", "--node", "fra-1",
                                     "--control", region_xds, "--join-token", join,
                                     "--isolation", "netns", "--instance-network", NETWORK,
                                     "--insecure-registry", registry, "--capacity", "4",
                                     "--state-dir", f"{work}/agent", "--admin", f"{AGENT_IP}:0"],
                           cpus="1", env={"MERIDIAN_LOG": "info"})
    p.agent = agent
    line = wait_line(lines, "agent admin", lambda l: l.startswith("meridian proxy admin on "))
    admin = line.split("meridian proxy admin on ")[1].strip()
    return meridian_cli, admin


def service(name, runtime, run):
    return f"""org: acme
app: bench
name: {name}
regions: [fra]
runtime: {runtime}
ports: [{{name: http, port: 8080}}]
health_checks: [{{http: {{port: http, path: /healthz}}, interval: 10ms, timeout: 10ms}}]
deploy: {{drain_delay: 0s, drain_timeout: 1s}}
"""


class Agent:
    def __init__(self, work, admin):
        self.log = os.path.join(work, "agent.log")
        self.admin = admin

    def lines(self, message):
        with open(self.log) as f:
            return [l for l in f if message in l]

    def starts(self, image):
        """took_ms of every start logged so far of an image (or process) instance."""
        flag = f"image={'true' if image else 'false'}"
        return [float(re.search(r"took_ms=([\d.]+)", l).group(1))
                for l in self.lines("instance started") if flag in l]

    def pulls(self, reference):
        return [float(re.search(r"took_ms=([\d.]+)", l).group(1))
                for l in self.lines("image ready") if reference in l]

    def metric(self, name):
        text = urllib.request.urlopen(f"{self.admin}/metrics", timeout=5).read().decode()
        values = [float(l.split()[-1]) for l in text.splitlines()
                  if l.startswith(name) and not l.startswith("#")]
        return sum(values)


def deploy(meridian_cli, work, definition):
    path = os.path.join(work, "service.yaml")
    with open(path, "w") as f:
        f.write(definition)
    meridian_cli("deploy", "-f", path)


def registry_blob_bytes(log):
    """Bytes of blobs the registry served, from its access log."""
    total = 0
    with open(log) as f:
        for line in f:
            if "/blobs/sha256:" in line and 'method=GET' in line:
                m = re.search(r"http\.response\.written=(\d+)", line)
                total += int(m.group(1)) if m else 0
    return total


def median_range(samples):
    return f"{statistics.median(samples):7.1f}  ({min(samples):.1f}–{max(samples):.1f})"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--meridian", required=True)
    parser.add_argument("--hello", required=True)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    meridian, hello = os.path.abspath(args.meridian), os.path.abspath(args.hello)
    work = tempfile.mkdtemp(prefix="meridian-bench-containers-")
    p = Platform(work)
    try:
        run(p, meridian, hello, args.rounds)
    finally:
        p.stop()
        shutil.rmtree(work, ignore_errors=True)


def run(p, meridian, hello, rounds):
    work = p.work
    remove_namespaces()
    registry = f"{REGISTRY_IP}:{free_port(REGISTRY_IP)}"
    config = os.path.join(work, "registry.yml")
    with open(config, "w") as f:
        f.write(f"version: 0.1\nlog: {{level: info, formatter: text}}\nstorage:\n  filesystem:\n"
                f"    rootdirectory: {work}/registry\nhttp:\n  addr: {registry}\n")
    p.spawn("registry", ["docker-registry", "serve", config], stdout=subprocess.DEVNULL)
    until("the registry", lambda: _connects(registry))

    layout = os.path.join(work, "layout")
    images = Layout(layout)
    images.image("hello-v1", [hello_layer(hello, "hello")])
    # 50 MB compressed: the base (hello, ~15 MB) and random layers, the top one of 1 MB.
    base = hello_layer(hello, "big")
    fill = 49 * MB - len(gzip.compress(base, compresslevel=1, mtime=0))
    shared = [random_layer(f"r{i}", fill // 7) for i in range(7)]
    big_v1 = images.image("big-v1", [base, *shared, random_layer("top", MB)])
    big_v2 = images.image("big-v2", [base, *shared, random_layer("top", MB)])
    for tag in ("hello-v1", "big-v1", "big-v2"):
        push(layout, tag, registry, "bench")

    meridian_cli, admin = start_platform(p, meridian, registry)
    agent = Agent(work, admin)
    proc_runtime = lambda run: f'{{process: {{command: {hello}, env: {{RUN: "{run}"}}}}}}'
    image_runtime = lambda ref, run: f'{{image: {{ref: "{registry}/bench:{ref}", env: {{RUN: "{run}"}}}}}}'
    targets = {
        "process": lambda run: service("proc", proc_runtime(run), run),
        "image": lambda run: service("box", image_runtime("hello-v1", run), run),
    }

    # (a) starts: the first round is a warm-up (it pulls the hello image).
    order, deployed, deploys = ["process", "image"], set(), 0
    for round_ in range(rounds + 1):
        for target in order:
            image = target == "image"
            before = len(agent.starts(image))
            deploy(meridian_cli, work, targets[target](round_))
            deployed.add(target)
            deploys += 1
            until(f"a start of {target}", lambda: len(agent.starts(image)) > before)
            # The previous version's instance stopped and gone before the next start.
            until("the old instance to stop",
                  lambda: len(agent.lines("stopping instance")) >= deploys - len(deployed)
                  and agent.metric("meridian_agent_instances{") == len(deployed))
        order.reverse()
    process = agent.starts(False)[1:]
    container = agent.starts(True)[1:]
    first_container = agent.starts(True)[0]

    # (b) pulls: the 50 MB image, then the version that differs in its top 1 MB layer.
    pulls = []
    for tag, size in (("big-v1", big_v1), ("big-v2", big_v2)):
        bytes_before = agent.metric("meridian_agent_image_pulled_bytes_total")
        served_before = registry_blob_bytes(os.path.join(work, "registry.log"))
        deploy(meridian_cli, work, service("big", image_runtime(tag, 0), 0))
        until(f"the pull of {tag}", lambda: agent.pulls(f"bench:{tag}"))
        took = agent.pulls(f"bench:{tag}")[0]
        fetched = agent.metric("meridian_agent_image_pulled_bytes_total") - bytes_before
        served = registry_blob_bytes(os.path.join(work, "registry.log")) - served_before
        copy = os.path.join(work, "skopeo-copy")
        begun = time.monotonic()
        subprocess.run(["taskset", "-c", "1", "skopeo", "copy", "-q", "--src-tls-verify=false",
                        f"docker://{registry}/bench:{tag}", f"oci:{copy}:{tag}"], check=True)
        skopeo_ms = (time.monotonic() - begun) * 1000
        pulls.append((tag, size, took, fetched, served, skopeo_ms))
    stored = agent.metric("meridian_agent_image_store_bytes")

    print()
    print(f"Container start vs process start (meridian-hello, {rounds} re-deploys each after a "
          "warm-up; from the agent beginning the run to the first passing /healthz check, 10 ms "
          "interval; agent and instances on core 1)")
    print(f"  {'':28} {'median ms':>9}  (min–max)")
    print(f"  {'process instance':28} {median_range(process)}")
    print(f"  {'image instance, layers cached':28} {median_range(container)}")
    overhead = statistics.median(container) - statistics.median(process)
    ratio = statistics.median(container) / statistics.median(process)
    print(f"  container overhead: {overhead:.1f} ms median (×{ratio:.2f} the process start); "
          f"target < 150 ms: {'met' if overhead < 150 else 'NOT met'}")
    print(f"  first start of the image instance (its pull from the registry included): "
          f"{first_container:.1f} ms")
    print()
    print("Pulls (agent: manifest, blobs fetched and verified, layers unpacked; reference: "
          "skopeo copy to an OCI layout, the second into the same layout)")
    print(f"  {'image':8} {'size MB':>8} {'agent ms':>9} {'fetched MB':>10} {'registry MB':>11} "
          f"{'skopeo ms':>9} {'agent/skopeo':>12}")
    for tag, size, took, fetched, served, skopeo_ms in pulls:
        print(f"  {tag:8} {size / MB:8.1f} {took:9.1f} {fetched / MB:10.2f} {served / MB:11.2f} "
              f"{skopeo_ms:9.1f} {took / skopeo_ms:12.2f}")
    v1, v2 = pulls
    print(f"  new version: {v2[3] / MB:.2f} MB fetched of {v2[1] / MB:.1f} MB "
          f"({100 * v2[3] / v2[1]:.1f}%), in {v2[2] / v1[2]:.2f}× the time of the full pull")
    print(f"  image store now: {stored / MB:.1f} MB (blobs + unpacked layers)")


def _connects(address):
    host, port = address.split(":")
    try:
        socket.create_connection((host, int(port)), 1).close()
        return True
    except OSError:
        return False


if __name__ == "__main__":
    main()
