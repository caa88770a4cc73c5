//! Resources: an instance runs in a cgroup with its definition's limits — one that allocates
//! past its memory limit is killed, shown `oom_killed` with the limit by `meridian status`, and
//! restarted; its CPU quota is in its cgroup's files — and placement counts instances'
//! resources against what agents offer, saying in `meridian status` why one fits nowhere.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::{agent, agent_with, cgroup_dir, problems, strict, Deployed, RegionalPlane, HELLO};

const DEADLINE: Duration = Duration::from_secs(60);

/// acme/shop/hello in fra: `scale` instances of meridian-hello with `resources` and `env`
/// (YAML flow maps), health-checked on /healthz.
fn hello(scale: u32, resources: &str, env: &str) -> String {
    format!(
        "\
org: acme
app: shop
name: hello
regions: [fra]
scale: {{min: {scale}, max: {scale}}}
runtime: {{process: {{command: {HELLO}, env: {env}}}}}
resources: {resources}
ports: [{{name: http, port: 8080}}]
health_checks: [{{http: {{port: http, path: /healthz}}, interval: 200ms, timeout: 200ms, grace_period: 5s, restart_limit: 20}}]
"
    )
}

/// A platform running `definition` in fra, on node `one` (instances from `addresses`, in host
/// mode).
fn platform(
    definition: &str,
    addresses: &str,
) -> (tempfile::TempDir, Deployed, RegionalPlane, support::Agent) {
    let dir = tempfile::tempdir().unwrap();
    let platform = Deployed::start(dir.path(), definition);
    let region = RegionalPlane::start(&platform.global, &platform.token, "fra", None);
    let agent = agent(&region, "one", addresses, dir.path());
    (dir, platform, region, agent)
}

/// Whether this test may use cgroups (root, and a memory controller); a skip says so, and
/// fails under MERIDIAN_TEST_STRICT=1.
fn cgroups_or_skip() -> bool {
    if meridian_agent::cgroups::Cgroups::available() {
        return true;
    }
    assert!(
        !strict(),
        "cgroups need root and a memory controller (MERIDIAN_TEST_STRICT=1)"
    );
    eprintln!("skipped: cgroups need root and a memory controller");
    false
}

/// The stdout of instance `hello-0` of node `node` (state under `dir`).
fn instance_log(dir: &Path, node: &str) -> String {
    let log = dir.join(node).join("logs/acme.shop.hello-0/stdout.log");
    std::fs::read_to_string(log).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_over_its_memory_limit_is_killed_reported_and_restarted() {
    if !cgroups_or_skip() {
        return;
    }
    // Allocating 96 MiB under a 48 MiB limit.
    let definition = hello(1, "{memory: 48Mi}", "{HELLO_ALLOCATE_MIB: \"96\"}");
    let (dir, platform, _region, _agent) = platform(&definition, "127.0.230.1");

    let fra = platform
        .status_until("hello", "oom_killed", |fra| {
            problems(fra).iter().any(|p| p.contains("oom_killed"))
        })
        .await;
    let problem = problems(&fra)
        .into_iter()
        .find(|p| p.contains("oom_killed"))
        .unwrap();
    assert!(
        problem
            .starts_with("hello-0 unhealthy: oom_killed: used more than its memory limit of 48Mi"),
        "{problem}"
    );
    assert!(problem.contains("restarting in"), "{problem}");
    // It was started again: its log shows a second run allocating.
    let end = Instant::now() + DEADLINE;
    while instance_log(dir.path(), "one")
        .matches("allocating 96 MiB")
        .count()
        < 2
    {
        assert!(Instant::now() < end, "not restarted: {fra}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Without the allocation, the same limit lets it run: healthy, and no problem reported.
    platform.deploy(&hello(1, "{memory: 48Mi}", "{}"));
    platform.until_running_without_problems("hello").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_s_limits_are_in_its_cgroup_which_goes_with_it() {
    if !cgroups_or_skip() {
        return;
    }
    let definition = hello(1, "{cpu: 0.25, memory: 64Mi}", "{}");
    let (dir, platform, _region, agent) = platform(&definition, "127.0.231.1");
    platform
        .status_until("hello", "running", |fra| fra["state"] == "running")
        .await;

    let pid_file = dir.path().join("one/instances/acme.shop.hello-0/pid");
    let pid = std::fs::read_to_string(pid_file).unwrap();
    let pid = pid.trim();
    let read = |controller: &str, file: &str| {
        let path = cgroup_dir(pid, controller).join(file);
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .trim()
            .to_owned()
    };
    let cpu = cgroup_dir(pid, "cpu");
    if cpu.join("cpu.cfs_quota_us").exists() {
        assert_eq!(read("cpu", "cpu.cfs_quota_us"), "25000");
        assert_eq!(read("cpu", "cpu.cfs_period_us"), "100000");
        assert_eq!(read("memory", "memory.limit_in_bytes"), "67108864");
    } else {
        assert_eq!(read("cpu", "cpu.max"), "25000 100000");
        assert_eq!(read("memory", "memory.max"), "67108864");
    }
    assert_eq!(read("pids", "pids.max"), "4096");
    let memory = cgroup_dir(pid, "memory");
    assert!(
        memory.to_string_lossy().ends_with("/acme.shop.hello-0"),
        "{}",
        memory.display()
    );

    // Its usage, read from its cgroup, is on the agent's metrics.
    let labels = r#"{org="acme",app="shop",service="hello",instance="hello-0"}"#;
    let end = Instant::now() + DEADLINE;
    loop {
        let metrics = support::metrics(&agent.admin).await;
        let memory = metrics.lines().find_map(|l| {
            l.strip_prefix(&format!(
                "meridian_agent_instance_memory_usage_bytes{labels} "
            ))
        });
        let cpu = metrics.lines().find_map(|l| {
            l.strip_prefix(&format!(
                "meridian_agent_instance_cpu_usage_seconds{labels} "
            ))
        });
        let memory: u64 = memory.map_or(0, |m| m.parse().unwrap());
        let cpu: f64 = cpu.map_or(0.0, |c| c.parse().unwrap());
        if memory > 0 && cpu > 0.0 {
            assert!(memory <= 64 << 20, "{memory}");
            break;
        }
        assert!(Instant::now() < end, "no usage: {metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The service goes: its instance stops and its cgroup is removed.
    platform
        .cli
        .ok(&["delete", "service", "hello", "--app", "shop"]);
    let end = Instant::now() + DEADLINE;
    while cpu.exists() || memory.exists() {
        assert!(Instant::now() < end, "the cgroup is still there: {cpu:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_places_no_more_than_a_node_offers_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    // Three instances of half a core on a node that offers one core.
    let definition = hello(3, "{cpu: 0.5}", "{}");
    let platform = Deployed::start(dir.path(), &definition);
    let region = RegionalPlane::start(&platform.global, &platform.token, "fra", None);
    let isolation = [
        "--instance-addresses",
        "127.0.232.1",
        "--isolation",
        "host",
        "--capacity",
        "cpu=1,memory=4Gi,instances=8",
    ];
    let _agent = agent_with(&region, "one", dir.path(), &isolation);
    let fra = platform
        .status_until("hello", "two placed and one refused", |fra| {
            fra["placed"] == 2 && fra["healthy"] == 2 && !problems(fra).is_empty()
        })
        .await;
    assert_eq!(
        problems(&fra),
        ["1 instance not placed: no node has 0.5 cpu free (the most: 0 on node one)"]
    );
    // The table says it too, and the node list shows what the node's instances ask of it.
    let table = platform.cli.ok(&["status", "hello", "--app", "shop"]);
    assert!(
        table.contains("fra: 1 instance not placed: no node has 0.5 cpu free"),
        "{table}"
    );
    let list = platform
        .cli
        .ok(&["node", "list", "--control", &region.admin]);
    assert!(list.contains("one\tready\t2\t8\t1/1\t0/4Gi"), "{list}");
}
