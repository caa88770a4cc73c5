//! Instances from OCI images: a local registry (Debian's `docker-registry`) holds an image
//! built here from `meridian-hello` and the libraries it links; a service with
//! `runtime.image` runs it with runc in the instance's network namespace, reached through an
//! edge. The control plane pins the tag to its digest at deploy time: moving the tag changes
//! nothing until the next deploy. A missing tag is refused at deploy; a missing digest is
//! reported by the agent and retried.
//!
//! A container runs in its run's cgroup with the service's `resources`: its CPU quota and
//! memory limit are in the cgroup's files; one that allocates past its memory limit is
//! killed, shown `oom_killed` with the limit by `meridian status`, and restarted.
//!
//! A TCP service in a container is reached by name from another service's instance, and a
//! caller of another org is refused.
//!
//! The node's image store keeps to its bound: a layer no instance uses any more is evicted,
//! one in use never is.
//!
//! A private registry (htpasswd) is asked with the credential the definition takes from the
//! org's secrets (the app has none of that name), at deploy and by the agent; without it, or with a wrong one, the deploy is
//! refused naming the field, and an image pinned by digest is reported unauthorized in
//! `meridian status`. The password appears nowhere else.
//!
//! Needs root, runc, docker-registry and skopeo (and iproute2, nftables; htpasswd from
//! apache2-utils for the private registry): skipped without them unless
//! MERIDIAN_TEST_STRICT=1. Addresses: 127.0.210.1 (registry), 127.0.211.1 (gateway),
//! 127.0.212.1, 127.0.215.1, 127.0.216.1 and 127.0.217.1 (more registries), 127.0.217.2 (a
//! gateway), 127.0.213.1 (the private registry), 127.0.214.x (its gateway and edge),
//! 100.64.210.0/24, 100.64.212.0/24, 100.64.213.0/24, 100.64.215.0/24, 100.64.216.0/24 and
//! 100.64.217.0/24 (instances).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use support::tcp::{
    address_in, assert_other_org_refused, deploy_callers, hello_service, ECHO_PORT,
};
use support::{
    agent_with_env, answers, cgroup_dir, edge, edge_at, files_containing, gateway, problems, read,
    through, Agent, Cli, Deployed, Killed, RegionalPlane, HELLO, PARIS,
};

const DEADLINE: Duration = Duration::from_secs(90);
const REGISTRY_IP: &str = "127.0.210.1";

/// Whether the tools are here; in CI (strict) they must be.
fn prerequisites() -> bool {
    prerequisites_and(&[])
}

/// /// [`prerequisites`], and the tools `more`.
fn prerequisites_and(more: &[&str]) -> bool {
    let tool = |name: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let missing: Vec<&str> = ["runc", "docker-registry", "skopeo"]
        .iter()
        .chain(more)
        .copied()
        .filter(|t| !tool(t))
        .collect();
    let namespaces = meridian_agent::netns_available();
    if missing.is_empty() && namespaces {
        return true;
    }
    let why =
        format!("missing {missing:?}, network namespaces available: {namespaces} (needs root)");
    assert!(!support::strict(), "{why} (MERIDIAN_TEST_STRICT=1)");
    eprintln!("skipped: {why}");
    false
}

/// `docker-registry serve` on a free port of 127.0.210.1, its storage in `dir`.
struct Registry {
    _process: Killed,
    address: String,
}

/// `docker-registry serve` on a free port of `ip`, its storage under `dir`.
fn start_registry_at(dir: &Path, ip: &str) -> Registry {
    start_registry_with(dir, ip, "")
}

/// [`start_registry_at`], with `more` added to its configuration (YAML).
fn start_registry_with(dir: &Path, ip: &str, more: &str) -> Registry {
    let port = std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("{ip}:{port}");
    let config = dir.join("registry.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog: {{level: error}}\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {address}\n{more}",
            dir.join("registry").display()
        ),
    )
    .unwrap();
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("registry.log")).unwrap())
        .spawn()
        .unwrap();
    let process = Killed(child);
    let end = Instant::now() + DEADLINE;
    while std::net::TcpStream::connect(&address).is_err() {
        assert!(
            Instant::now() < end,
            "the registry never listened on {address}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Registry {
        _process: process,
        address,
    }
}

fn sha256(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Writes `bytes` as a blob of the OCI layout at `layout`; its descriptor.
fn blob(layout: &Path, media_type: &str, bytes: &[u8]) -> serde_json::Value {
    let digest = sha256(bytes);
    let dir = layout.join("blobs/sha256");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(&digest["sha256:".len()..]), bytes).unwrap();
    serde_json::json!({"mediaType": media_type, "digest": digest, "size": bytes.len()})
}

/// An OCI layout in `dir` with image `tag`: one layer holding meridian-hello as `/hello` and
/// the libraries `ldd` lists for it, its configuration's Env greeting with `greeting`.
fn build_image(dir: &Path, tag: &str, greeting: &str) -> PathBuf {
    let root = dir.join(format!("root-{tag}"));
    let mut files = vec![(PathBuf::from(HELLO), PathBuf::from("hello"))];
    let ldd = Command::new("ldd").arg(HELLO).output().unwrap();
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        let path = line
            .split_whitespace()
            .find(|word| word.starts_with('/'))
            .map(PathBuf::from);
        if let Some(path) = path {
            files.push((path.clone(), path.strip_prefix("/").unwrap().to_owned()));
        }
    }
    for (from, to) in &files {
        let to = root.join(to);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, &to).unwrap();
    }
    std::fs::create_dir_all(root.join("tmp")).unwrap();
    let tar_file = dir.join(format!("layer-{tag}.tar"));
    let tar = Command::new("tar")
        .args(["--numeric-owner", "--owner=0", "--group=0", "-cf"])
        .arg(&tar_file)
        .arg("-C")
        .arg(&root)
        .arg(".")
        .status()
        .unwrap();
    assert!(tar.success());
    let diff_id = sha256(&std::fs::read(&tar_file).unwrap());
    let gz_file = dir.join(format!("layer-{tag}.tar.gz"));
    let gzip = Command::new("gzip")
        .arg("-c")
        .arg(&tar_file)
        .stdout(std::fs::File::create(&gz_file).unwrap())
        .status()
        .unwrap();
    assert!(gzip.success());
    let layer = std::fs::read(&gz_file).unwrap();
    let layout = dir.join(format!("layout-{tag}"));
    let layer = blob(
        &layout,
        "application/vnd.oci.image.layer.v1.tar+gzip",
        &layer,
    );
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": ["/hello"], "Env": [format!("GREETING={greeting}")], "User": "65534:65534"},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    });
    let config = blob(
        &layout,
        "application/vnd.oci.image.config.v1+json",
        config.to_string().as_bytes(),
    );
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config, "layers": [layer],
    });
    let mut manifest = blob(
        &layout,
        "application/vnd.oci.image.manifest.v1+json",
        manifest.to_string().as_bytes(),
    );
    manifest["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": tag});
    std::fs::write(
        layout.join("index.json"),
        serde_json::json!({"schemaVersion": 2, "manifests": [manifest]}).to_string(),
    )
    .unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    layout
}

/// Pushes the layout's image `tag` to `registry` as `hello:as_tag`.
fn push(layout: &Path, tag: &str, registry: &str, as_tag: &str) {
    push_as(layout, tag, registry, as_tag, &[]);
}

/// [`push`], with skopeo's `options` (e.g. `--dest-creds`).
fn push_as(layout: &Path, tag: &str, registry: &str, as_tag: &str, options: &[&str]) {
    let output = Command::new("skopeo")
        .args(["copy", "--dest-tls-verify=false"])
        .args(options)
        .arg(format!("oci:{}:{tag}", layout.display()))
        .arg(format!("docker://{registry}/hello:{as_tag}"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "skopeo: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A registry on a free port of `ip` holding image `hello:v1` (meridian-hello greeting with
/// `greeting`), and that image's reference.
fn registry_with_hello(dir: &Path, ip: &str, greeting: &str) -> (Registry, String) {
    let registry = start_registry_at(dir, ip);
    let image = build_image(dir, "v1", greeting);
    push(&image, "v1", &registry.address, "v1");
    let reference = format!("{}/hello:v1", registry.address);
    (registry, reference)
}

fn service(reference: &str) -> String {
    service_with(reference, "")
}

/// [`service`], with `more` in the image's fields (`, credentials: …`).
fn service_with(reference: &str, more: &str) -> String {
    format!(
        "\
org: acme
app: shop
name: web
regions: [fra]
runtime: {{image: {{ref: \"{reference}\", read_only_root_fs: true{more}}}}}
ports: [{{name: http, port: 8080}}]
routes: [{{path_prefix: /, port: http}}]
domains: [shop.example.com]
health_checks: [{{http: {{port: http, path: /healthz}}, interval: 200ms, timeout: 200ms, grace_period: 5s}}]
"
    )
}

/// Node `fra-1` of `region`, its instances in namespaces on `network`, pulling from
/// `registry` over plain HTTP; `extra` arguments after.
fn node_of(
    region: &RegionalPlane,
    dir: &Path,
    network: &str,
    registry: &Registry,
    extra: &[&str],
) -> Agent {
    node_with_env(region, dir, network, registry, extra, &[])
}

/// [`node_of`], started with `env` added to the test's environment.
fn node_with_env(
    region: &RegionalPlane,
    dir: &Path,
    network: &str,
    registry: &Registry,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Agent {
    let registry = ["--insecure-registry", registry.address.as_str()];
    let isolation = ["--isolation", "netns", "--instance-network", network];
    agent_with_env(
        region,
        "fra-1",
        dir,
        &[&isolation[..], &registry[..], extra].concat(),
        env,
    )
}

/// Waits until the edge answers for the shop with `greeting`.
async fn greets(edge: &str, greeting: &str) {
    let what = format!("with {greeting}");
    support::until_the_shop_answers(edge, &what, |body| body.starts_with(greeting)).await;
}

/// The pinned image of the current deployment, as `meridian get deployments` shows it.
fn current_image(platform: &Deployed) -> String {
    let table = platform
        .cli
        .ok(&["get", "deployments", "web", "--app", "shop"]);
    let current = table
        .lines()
        .find(|l| {
            l.split_whitespace()
                .next()
                .is_some_and(|v| v.ends_with('*'))
        })
        .unwrap_or_else(|| panic!("no current version in {table}"));
    current.split_whitespace().nth(3).unwrap().to_owned()
}

/// The digest the registry has for `hello:tag`.
fn registry_digest(registry: &str, tag: &str) -> String {
    registry_digest_as(registry, tag, &[])
}

/// [`registry_digest`], with skopeo's `options` (e.g. `--creds`).
fn registry_digest_as(registry: &str, tag: &str, options: &[&str]) -> String {
    let output = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--format", "{{.Digest}}"])
        .args(options)
        .arg(format!("docker://{registry}/hello:{tag}"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_runs_pinned_to_its_digest_until_the_next_deploy() {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let registry = start_registry_at(dir.path(), REGISTRY_IP);
    let v1 = build_image(dir.path(), "v1", "from-v1");
    let v2 = build_image(dir.path(), "v2", "from-v2");
    push(&v1, "v1", &registry.address, "v1");
    let v1_digest = registry_digest(&registry.address, "v1");
    assert!(v1_digest.starts_with("sha256:"), "{v1_digest}");

    let reference = format!("{}/hello:v1", registry.address);
    let insecure = ["--insecure-registry", registry.address.as_str()];
    let platform = Deployed::start_with(dir.path(), &service(&reference), &insecure);
    assert_eq!(current_image(&platform), format!("{reference}@{v1_digest}"));
    let region = RegionalPlane::start(
        &platform.global,
        &platform.token,
        "fra",
        Some("127.0.211.1:8080"),
    );
    let node = node_of(&region, dir.path(), "100.64.210.0", &registry, &[]);
    let (_gateway, _) = gateway(&region, dir.path()).await;
    let (_edge, edge) = edge(&platform, &region, dir.path());
    greets(&edge, "from-v1").await;

    // The tag moves: what runs does not, until the next deploy pins the tag again.
    push(&v2, "v2", &registry.address, "v1");
    let v2_digest = registry_digest(&registry.address, "v1");
    assert_ne!(v1_digest, v2_digest);
    assert_eq!(current_image(&platform), format!("{reference}@{v1_digest}"));
    greets(&edge, "from-v1").await;
    platform.deploy(&service(&reference));
    assert_eq!(current_image(&platform), format!("{reference}@{v2_digest}"));
    greets(&edge, "from-v2").await;

    // A tag the registry does not have is refused at deploy, naming the field; nothing changes.
    std::fs::write(
        &platform.definition,
        service(&format!("{}/hello:missing", registry.address)),
    )
    .unwrap();
    let refused = platform
        .cli
        .fails(&["deploy", "-f", platform.definition.to_str().unwrap()]);
    assert!(
        refused.contains("runtime.image.ref") && refused.contains("not found"),
        "{refused}"
    );
    assert_eq!(current_image(&platform), format!("{reference}@{v2_digest}"));

    // A digest the registry does not have (pinned by its writer, so not asked at deploy) is
    // reported by the agent and retried; the running version keeps serving.
    let ghost = format!("{}/hello@sha256:{}", registry.address, "0".repeat(64));
    platform.deploy(&service(&ghost));
    let end = Instant::now() + DEADLINE;
    while node.log().matches("pulling the image failed").count() < 2 {
        assert!(
            Instant::now() < end,
            "the agent never retried the pull: {}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        node.log().contains("not found in the registry"),
        "{}",
        node.log()
    );
    greets(&edge, "from-v2").await;
}

/// The pid of container `id`'s first process, as runc (under the agent's `--root`) says.
fn container_pid(state_dir: &Path, id: &str) -> Option<String> {
    let state = Command::new("runc")
        .arg("--root")
        .arg(state_dir.join("runc"))
        .args(["state", id])
        .output()
        .ok()?;
    let state: serde_json::Value = serde_json::from_slice(&state.stdout).ok()?;
    Some(state["pid"].as_u64().filter(|pid| *pid > 0)?.to_string())
}

/// Waits until container `id` of the agent with `state_dir` runs; its first process's pid.
async fn runs(state_dir: &Path, id: &str) -> String {
    let end = Instant::now() + DEADLINE;
    loop {
        if let Some(pid) = container_pid(state_dir, id) {
            return pid;
        }
        assert!(Instant::now() < end, "container {id} never ran");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_containers_resources_are_in_its_cgroup() {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (registry, reference) = registry_with_hello(dir.path(), "127.0.212.1", "limited");
    let limited =
        service(&reference).replace("ports:", "resources: {cpu: 0.25, memory: 48Mi}\nports:");
    let insecure = ["--insecure-registry", registry.address.as_str()];
    let platform = Deployed::start_with(dir.path(), &limited, &insecure);
    let region = RegionalPlane::start(&platform.global, &platform.token, "fra", None);
    let _node = node_of(&region, dir.path(), "100.64.212.0", &registry, &[]);
    let pid = runs(&dir.path().join("fra-1"), "acme.shop.web-0").await;
    let read = |controller: &str, file: &str| {
        let path = cgroup_dir(&pid, controller).join(file);
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .trim()
            .to_owned()
    };
    if cgroup_dir(&pid, "cpu").join("cpu.cfs_quota_us").exists() {
        assert_eq!(read("cpu", "cpu.cfs_quota_us"), "25000");
        assert_eq!(read("memory", "memory.limit_in_bytes"), "50331648");
    } else {
        assert_eq!(read("cpu", "cpu.max"), "25000 100000");
        assert_eq!(read("memory", "memory.max"), "50331648");
    }
    assert_eq!(read("pids", "pids.max"), "4096");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_over_its_memory_limit_is_killed_reported_and_restarted() {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (registry, reference) = registry_with_hello(dir.path(), "127.0.216.1", "greedy");
    // Allocating 96 MiB under a 48 MiB limit.
    let greedy = service(&reference)
        .replace(
            "read_only_root_fs: true",
            "read_only_root_fs: true, env: {HELLO_ALLOCATE_MIB: \"96\"}",
        )
        .replace("ports:", "resources: {memory: 48Mi}\nports:");
    let insecure = ["--insecure-registry", registry.address.as_str()];
    let platform = Deployed::start_with(dir.path(), &greedy, &insecure);
    let region = RegionalPlane::start(&platform.global, &platform.token, "fra", None);
    let _node = node_of(&region, dir.path(), "100.64.216.0", &registry, &[]);

    // Killed, reported with its limit, restarted: the next run is killed the same way (runc
    // started it again), and waits longer before its next restart.
    let oom_killed = "web-0 unhealthy: oom_killed: used more than its memory limit of 48Mi";
    let fra = platform
        .status_until("web", "oom_killed after a restart", |fra| {
            problems(fra)
                .iter()
                .any(|p| p.starts_with(oom_killed) && p.contains("restarting in 2s"))
        })
        .await;
    assert_eq!(problems(&fra).len(), 1, "{fra}");
    let log = dir.path().join("fra-1/logs/acme.shop.web-0/stdout.log");
    let log = std::fs::read_to_string(log).unwrap();
    assert!(log.matches("allocating 96 MiB").count() >= 2, "{log}");

    // Without the allocation, the same limit lets it run: healthy, and no problem reported.
    platform.deploy(&greedy.replace("env: {HELLO_ALLOCATE_MIB: \"96\"}", "env: {}"));
    platform.until_running_without_problems("web").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_service_in_a_container_is_reached_by_name_and_other_orgs_are_refused() {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (registry, reference) = registry_with_hello(dir.path(), "127.0.217.1", "echoing");
    let container = format!("{{image: {{ref: \"{reference}\", read_only_root_fs: true}}}}");
    let insecure = ["--insecure-registry", registry.address.as_str()];
    let echo = hello_service("acme", "echo", &container, true, "fra");
    let platform = Deployed::start_with(dir.path(), &echo, &insecure);
    deploy_callers(&platform, dir.path());
    let region = RegionalPlane::start(
        &platform.global,
        &platform.token,
        "fra",
        Some("127.0.217.2:0"),
    );
    let node = node_of(&region, dir.path(), "100.64.217.0", &registry, &[]);
    let (_gateway, gateway) = gateway(&region, dir.path()).await;

    // The echo runs in a container.
    let greeting = answers(&gateway, "echo.acme.example.com", "/", "echoing from echo").await;
    assert!(container_pid(&dir.path().join("fra-1"), "acme.shop.echo-0").is_some());

    // By name, from another service's instance: the bytes come back intact.
    let web = "web.acme.example.com";
    let name = format!("echo.shop.internal:{ECHO_PORT}");
    let path = format!("/tcp?addr={name}&bytes=100000");
    let answer = answers(&gateway, web, &path, "intact").await;
    assert!(
        answer.contains("sent 100000, received 100000, intact"),
        "{answer}"
    );

    // Another org's instance does not see the name, and reaches nothing at the virtual IP.
    let other = "client.other.example.com";
    answers(&gateway, other, "/healthz", "ok").await;
    let hidden = format!("/tcp?addr=echo.shop.acme.internal:{ECHO_PORT}");
    let (_, hidden) = through(&gateway, other, &hidden).await;
    assert!(hidden.contains("failed"), "{hidden}");
    let vip = address_in(&answer, " (", ')');
    let (_, by_vip) = through(&gateway, other, &format!("/tcp?addr={vip}")).await;
    assert!(
        by_vip.contains("failed") && !by_vip.contains("received"),
        "{by_vip}"
    );

    // With a genuine certificate of that org, straight at the echo's mesh port: refused
    // before a byte is relayed, and counted.
    let instance: std::net::Ipv4Addr = address_in(&greeting, ", ", ')').parse().unwrap();
    let node_side = std::net::Ipv4Addr::from(u32::from(instance) - 1);
    assert_other_org_refused(&region, &node, node_side, 1).await;
}

/// The digest of the only layer of the layout's image.
fn layer_of(layout: &Path) -> String {
    let read = |path: PathBuf| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    };
    let index = read(layout.join("index.json"));
    let manifest = index["manifests"][0]["digest"].as_str().unwrap();
    let manifest = read(
        layout
            .join("blobs/sha256")
            .join(&manifest["sha256:".len()..]),
    );
    manifest["layers"][0]["digest"].as_str().unwrap().to_owned()
}

/// The value of the agent's metric `name` (0 if it has none).
async fn agent_metric(node: &Agent, name: &str) -> u64 {
    support::metrics(&node.admin)
        .await
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layers_no_instance_uses_are_evicted_beyond_the_stores_bound() {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let registry = start_registry_at(dir.path(), "127.0.215.1");
    let v1 = build_image(dir.path(), "v1", "from-v1");
    let v2 = build_image(dir.path(), "v2", "from-v2");
    let (v1_layer, v2_layer) = (layer_of(&v1), layer_of(&v2));
    assert_ne!(v1_layer, v2_layer, "the versions need layers of their own");
    push(&v1, "v1", &registry.address, "v1");
    push(&v2, "v2", &registry.address, "v2");
    let reference = |tag: &str| format!("{}/hello:{tag}", registry.address);
    let insecure = ["--insecure-registry", registry.address.as_str()];
    let platform = Deployed::start_with(dir.path(), &service(&reference("v1")), &insecure);
    let region = RegionalPlane::start(&platform.global, &platform.token, "fra", None);
    // A bound of one byte: any layer no instance uses is over it.
    let bound = ["--image-store-max", "1"];
    let node = node_of(&region, dir.path(), "100.64.215.0", &registry, &bound);
    let state_dir = dir.path().join("fra-1");
    let store = state_dir.join("images");
    let held = |digest: &str| {
        let hex = &digest["sha256:".len()..];
        store.join("layers").join(hex).exists() && store.join("blobs/sha256").join(hex).exists()
    };
    runs(&state_dir, "acme.shop.web-0").await;

    // In use, v1's layer stays though the store is over its bound.
    assert!(held(&v1_layer));
    assert!(agent_metric(&node, "meridian_agent_image_store_bytes").await > 1);
    assert_eq!(
        agent_metric(&node, "meridian_agent_image_store_evictions_total").await,
        0
    );
    assert!(agent_metric(&node, "meridian_agent_image_pulled_bytes_total").await > 0);

    // v2 replaces it (its instance may start before or after v1's stops): once v1's instance
    // is stopped, its layer goes; v2's, in use, stays.
    platform.deploy(&service(&reference("v2")));
    let end = Instant::now() + DEADLINE;
    while held(&v1_layer) || !held(&v2_layer) {
        assert!(
            Instant::now() < end,
            "v1's layer was never evicted, or v2's never came: {}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(held(&v2_layer));
    assert_eq!(
        agent_metric(&node, "meridian_agent_image_store_evictions_total").await,
        1
    );
}

/// The private registry's user and password, and a wrong password.
const ROBOT: &str = "robot";
const ROBOT_PASSWORD: &str = "r3gistry-Pass-5b7e21c9";
const WRONG_PASSWORD: &str = "wr0ng-Pass-0c1d2e3f";

/// The image's credential: user `robot`, the password the secret `REGISTRY_PASSWORD`.
const CREDENTIALS: &str = ", credentials: {username: robot, password: {secret: REGISTRY_PASSWORD}}";

/// `docker-registry` on 127.0.213.1 that lets in only `robot` (htpasswd, bcrypt).
fn start_private_registry(dir: &Path) -> Registry {
    let htpasswd = Command::new("htpasswd")
        .args(["-Bbn", ROBOT, ROBOT_PASSWORD])
        .output()
        .unwrap();
    assert!(htpasswd.status.success(), "{htpasswd:?}");
    let file = dir.join("htpasswd");
    std::fs::write(&file, &htpasswd.stdout).unwrap();
    let auth = format!(
        "auth:\n  htpasswd:\n    realm: meridian-test\n    path: {}\n",
        file.display()
    );
    start_registry_with(dir, "127.0.213.1", &auth)
}

/// `meridian secret set REGISTRY_PASSWORD=value` for org `acme` (its apps share it).
fn set_password(cli: &Cli, value: &str) {
    let set = cli.ok(&[
        "secret",
        "set",
        &format!("REGISTRY_PASSWORD={value}"),
        "--org",
        "acme",
    ]);
    assert!(!set.contains(value), "{set}");
}

/// `meridian deploy` of `definition`, refused; the error.
fn refused(platform: &Deployed, definition: &str) -> String {
    std::fs::write(&platform.definition, definition).unwrap();
    platform
        .cli
        .fails(&["deploy", "-f", platform.definition.to_str().unwrap()])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_registry_is_asked_with_credentials_from_the_orgs_secrets() {
    if !prerequisites_and(&["htpasswd"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let registry = start_private_registry(dir.path());
    let image = build_image(dir.path(), "v1", "private");
    let creds = format!("{ROBOT}:{ROBOT_PASSWORD}");
    push_as(
        &image,
        "v1",
        &registry.address,
        "v1",
        &["--dest-creds", &creds],
    );
    let digest = registry_digest_as(&registry.address, "v1", &["--creds", &creds]);
    assert!(digest.starts_with("sha256:"), "{digest}");

    let insecure = ["--insecure-registry", registry.address.as_str()];
    let platform = Deployed::with_secrets(dir.path(), &insecure);
    let reference = format!("{}/hello:v1", registry.address);
    let private = service_with(&reference, CREDENTIALS);

    // Refused at deploy, naming the field: the secret does not exist; no credential; a wrong one.
    let error = refused(&platform, &private);
    assert!(
        error.contains("runtime.image.credentials.password")
            && error.contains("secret `REGISTRY_PASSWORD` does not exist"),
        "{error}"
    );
    let error = refused(&platform, &service(&reference));
    assert!(
        error.contains("runtime.image.ref") && error.contains("unauthorized"),
        "{error}"
    );
    set_password(&platform.cli, WRONG_PASSWORD);
    let error = refused(&platform, &private);
    assert!(
        error.contains("runtime.image.credentials") && error.contains("unauthorized"),
        "{error}"
    );
    assert_eq!(
        platform.cli.json(&["get", "services"]),
        serde_json::json!([])
    );

    // With the right one: pinned at deploy, pulled by the agent, served.
    set_password(&platform.cli, ROBOT_PASSWORD);
    platform.deploy(&private);
    assert_eq!(current_image(&platform), format!("{reference}@{digest}"));
    let region = RegionalPlane::start(
        &platform.global,
        &platform.token,
        "fra",
        Some("127.0.214.1:8080"),
    );
    let node = node_with_env(
        &region,
        dir.path(),
        "100.64.213.0",
        &registry,
        &[],
        &[("MERIDIAN_LOG", "debug")],
    );
    let (_gateway, _) = gateway(&region, dir.path()).await;
    let edge = edge_at(
        &platform,
        &region,
        dir.path(),
        &PARIS,
        "127.0.214.2:0",
        None,
    );
    greets(&edge.http, "private").await;

    // Pinned by digest without a credential: not asked at deploy, but the agent is refused,
    // although the node holds the image, and says so in `meridian status`; it retries, and
    // the running version keeps serving.
    let pinned = format!("{}/hello@{digest}", registry.address);
    platform.deploy(&service(&pinned));
    let status = ["status", "web", "--app", "shop"];
    let end = Instant::now() + DEADLINE;
    loop {
        let shown = platform.cli.ok(&status);
        if shown.contains("pulling image failed: unauthorized") {
            break;
        }
        assert!(
            Instant::now() < end,
            "status never showed the refused pull: {shown}\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    greets(&edge.http, "private").await;

    // The password is nowhere else: the API's reads, the CLI's, the agent's admin endpoints,
    // any log or file.
    let api = &platform.global.api;
    let service_url = format!("{api}/v1/orgs/acme/apps/shop/services/web");
    let token = Some(platform.token.as_str());
    let mut seen = Vec::new();
    for url in [
        service_url.clone(),
        format!("{service_url}/deployments"),
        format!("{service_url}/deployments/1"),
        format!("{service_url}/status"),
        format!("{api}/v1/orgs/acme/secrets"),
        format!("{api}/v1/regions/fra/deployments"),
        format!("{api}/v1/changes?after=0"),
        format!("{api}/metrics"),
    ] {
        seen.push((url.clone(), read(&url, token).await));
    }
    for path in ["/config", "/listeners", "/metrics"] {
        let url = format!("{}{path}", node.admin);
        seen.push((url.clone(), read(&url, None).await));
    }
    for args in [
        &["status", "web", "--app", "shop", "-o", "json"][..],
        &["get", "deployments", "web", "--app", "shop", "-o", "json"],
    ] {
        seen.push((format!("meridian {args:?}"), platform.cli.ok(args)));
    }
    assert!(
        seen.iter()
            .any(|(_, body)| body.contains("REGISTRY_PASSWORD")),
        "the reads name the secret"
    );
    for password in [ROBOT_PASSWORD, WRONG_PASSWORD] {
        for (what, body) in &seen {
            assert!(
                !body.contains(password),
                "{what} shows the password: {body}"
            );
        }
        assert_eq!(
            files_containing(dir.path(), password),
            Vec::<String>::new(),
            "files holding the password"
        );
        assert!(!node.log().contains(password) && !region.log().contains(password));
        assert_eq!(
            files_containing(region.dir.path(), password),
            Vec::<String>::new()
        );
    }
}
