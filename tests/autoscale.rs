//! Autoscaling (`scale.targets`): a bounded concurrent load through the region's gateway
//! makes the regional control plane add instances up to `scale.max`; once the load falls and
//! the (test-short) `scale.down_window` passes, it removes them down to `scale.min`, draining
//! each first: not one request fails. `meridian status` shows the counts and why. Instances
//! that use more of their memory than `memory_percent`, or of their CPU than `cpu_percent`
//! (from their cgroups), get more instances too. An instance's node proxy lets at most `scale.concurrency.hard` requests reach
//! it at once; more go to another instance from every sender when there is one, else wait
//! briefly, and beyond its bounds get `503` with `Retry-After`; above `soft`, a sender's new
//! requests go to the instances below it.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use support::load::{greeted_by, serving_exactly, Lane, Load};
use support::{
    agent, agent_with, gateway, logging_agent, said, stops, strict, Deployed, RegionalPlane, HELLO,
    HELLO_HOST,
};

const DEADLINE: Duration = Duration::from_secs(60);

/// acme/shop/hello in fra, 1 to 3 instances at 2 requests in flight each, each request
/// answered after 100 ms, scaling down after 3 s of a lower load.
fn autoscaled_hello() -> String {
    hello_in_fra(
        "{min: 1, max: 3, targets: {concurrency: 2}, down_window: 3s}",
        ", HELLO_DELAY_MS: '100'",
        "1s",
    )
}

/// acme/shop/hello in fra: `scale` (a YAML mapping), more of hello's environment after its
/// greeting (`env`: `, NAME: value` pairs), and a health-check grace period of `grace`.
fn hello_in_fra(scale: &str, env: &str, grace: &str) -> String {
    format!(
        "\
org: acme
app: shop
name: hello
regions: [fra]
scale: {scale}
runtime: {{process: {{command: {HELLO}, env: {{GREETING: hello{env}}}}}}}
ports: [{{name: http, port: 8080}}]
routes: [{{path_prefix: /, port: http}}]
domains: [{HELLO_HOST}]
health_checks: [{{http: {{port: http, path: /healthz}}, interval: 200ms, timeout: 200ms, grace_period: {grace}}}]
"
    )
}

/// Region fra of `platform`, its control plane on `ip` and its gateway at `ip`:8080.
fn fra(platform: &Deployed, ip: &str) -> RegionalPlane {
    let gateway = format!("{ip}:8080");
    RegionalPlane::start_on(&platform.global, &platform.token, "fra", Some(&gateway), ip)
}

/// `count` loops of `GET /` on connections kept alive, each one request at a time.
fn loops(count: usize) -> Vec<Lane> {
    let lane = Lane {
        post: false,
        fresh_connections: false,
    };
    vec![lane; count]
}

/// The region's autoscaling figures of `row` (from `meridian status -o json`): in service,
/// wanted.
fn counts(row: &serde_json::Value) -> (u64, u64) {
    let autoscale = &row["autoscale"];
    (
        autoscale["current"].as_u64().unwrap_or(0),
        autoscale["desired"].as_u64().unwrap_or(0),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_load_scales_up_to_max_and_back_to_min_without_a_failed_request() {
    let dir = tempfile::tempdir().unwrap();
    let platform = Deployed::start(dir.path(), &autoscaled_hello());
    let region = RegionalPlane::start(
        &platform.global,
        &platform.token,
        "fra",
        Some("127.0.130.1:8080"),
    );
    let agents = [logging_agent(&region, "one", "127.0.130.10", dir.path())];
    let (_gateway, address) = gateway(&region, dir.path()).await;
    serving_exactly(&address, "hello", &BTreeSet::from(["hello-0".to_owned()])).await;
    platform
        .status_until("hello", "autoscaled at 1", |row| counts(row) == (1, 1))
        .await;

    // One loop stays all along; five more make 6 requests in flight: 3 instances at 2 each.
    let steady = Load::start_lanes(&address, HOST, &loops(1));
    let surge = Load::start_lanes(&address, HOST, &loops(5));
    let rose = Instant::now();
    let row = platform
        .status_until("hello", "scaled up to 3", |row| {
            row["desired"] == 3 && row["healthy"] == 3
        })
        .await;
    let scaled_up = rose.elapsed();
    let reason = row["autoscale"]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(reason.contains("concurrency"), "{row}");
    let table = platform.cli.ok(&["status", "hello", "--app", "shop"]);
    assert!(
        table.contains("fra: autoscaling: 3 in service, 3 wanted"),
        "{table}"
    );
    // All three answer.
    let end = Instant::now() + DEADLINE;
    let mut seen = BTreeSet::new();
    while seen.len() < 3 {
        assert!(Instant::now() < end, "only {seen:?} answered");
        seen.extend(greeted_by(&surge.answers_of_next(30).await, "hello"));
    }

    // The surge stops: one request in flight wants 1 instance, after the 3 s window.
    let surge_failures = surge.failures();
    let surged = surge.stop().await;
    let fell = Instant::now();
    platform
        .status_until("hello", "scaled back to 1", |row| {
            row["desired"] == 1 && counts(row) == (1, 1) && row["placed"] == 1
        })
        .await;
    let scaled_down = fell.elapsed();
    while stops(&agents) < 2 {
        assert!(
            Instant::now() < end + DEADLINE,
            "the surplus was never stopped"
        );
        steady.goes_on_for(5).await;
    }
    assert_eq!(said(&agents[0], "draining instance"), 2, "drained first");
    // Each decision is logged with its inputs. The rise and the fall may each be decided in one
    // step or two (1 → 3 or 1 → 2 → 3; 3 → 1 or 3 → 2 → 1), as the looks fall.
    let log = region.log();
    let decisions: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("autoscale decision"))
        .collect();
    assert!(
        decisions
            .iter()
            .any(|l| l.contains("from=1") && l.contains("load=")),
        "{decisions:?}"
    );
    assert!(
        decisions
            .iter()
            .any(|l| l.contains("to=3") && l.contains("load=")),
        "{decisions:?}"
    );
    assert!(
        decisions
            .iter()
            .any(|l| l.contains("to=1") && l.contains("load=")),
        "{decisions:?}"
    );
    steady.goes_on_for(20).await;
    let steady_failures = steady.failures();
    let answered = steady.stop().await;
    eprintln!(
        "autoscale: 1 → 3 instances {scaled_up:?} after the load rose (until 3 healthy), \
         3 → 1 {scaled_down:?} after it fell (down_window 3s); {} requests, failed: {}",
        surged + answered,
        surge_failures.len() + steady_failures.len()
    );
    assert_eq!(surge_failures, Vec::<String>::new(), "of {surged} requests");
    assert_eq!(
        steady_failures,
        Vec::<String>::new(),
        "of {answered} requests"
    );
}

const HOST: &str = HELLO_HOST;

/// acme/shop/hello in fra, 1 to 3 instances meant to use 30% of their 64 MiB each, each
/// using 40 MiB once it listens.
const MEMORY_HUNGRY: &str = "\
org: acme
app: shop
name: hello
regions: [fra]
scale: {min: 1, max: 3, targets: {memory_percent: 30}}
resources: {memory: 64Mi}
ports: [{name: http, port: 8080}]
health_checks: [{http: {port: http, path: /healthz}, interval: 200ms, timeout: 200ms, grace_period: 5s}]
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_over_their_memory_target_get_more_instances_up_to_max() {
    if !meridian_agent::cgroups::Cgroups::available() {
        assert!(
            !strict(),
            "cgroups need root and a memory controller (MERIDIAN_TEST_STRICT=1)"
        );
        eprintln!("skipped: cgroups need root and a memory controller");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let definition = format!(
        "{MEMORY_HUNGRY}runtime: {{process: {{command: {HELLO}, env: {{GREETING: hello, HELLO_ALLOCATE_MIB: '40'}}}}}}\n"
    );
    let platform = Deployed::start_on(dir.path(), &definition, "127.0.182.1");
    let region = RegionalPlane::start_on(
        &platform.global,
        &platform.token,
        "fra",
        None,
        "127.0.182.2",
    );
    let _agent = agent(&region, "one", "127.0.182.10", dir.path());
    // Each instance at 40 MiB of 64 is over 60%, twice the target: the first one alone asks
    // for 3 at once, and 3 stay (max).
    let row = platform
        .status_until("hello", "scaled up to 3 on memory", |row| {
            row["desired"] == 3 && row["healthy"] == 3
        })
        .await;
    let reason = row["autoscale"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("(max): memory_percent"), "{row}");
    assert!(reason.ends_with("target 30 each"), "{row}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_its_hard_limit_an_instance_s_requests_wait_then_get_503_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let definition = hello_in_fra(
        "{min: 1, max: 1, concurrency: {hard: 2}}",
        ", HELLO_DELAY_MS: '400'",
        "1s",
    );
    let platform = Deployed::start_on(dir.path(), &definition, "127.0.182.3");
    let region = fra(&platform, "127.0.182.4");
    let access_log = dir.path().join("node-access.log");
    let isolation = [
        "--instance-addresses",
        "127.0.182.20",
        "--isolation",
        "host",
        "--access-log",
        access_log.to_str().unwrap(),
    ];
    let agent = agent_with(&region, "one", dir.path(), &isolation);
    let (_gateway, address) = gateway(&region, dir.path()).await;
    serving_exactly(&address, "hello", &BTreeSet::from(["hello-0".to_owned()])).await;

    // 8 at once: 2 go in, 2 wait for them (400 ms each, within the 1 s wait), and the others,
    // with the queue full, are answered at once.
    let (mut answered, mut refused) = (0, 0);
    for answer in eight_at_once(&address).await {
        match answer {
            (200, _, _) => answered += 1,
            (503, Some(retry_after), body) if body.starts_with("503 concurrency_") => {
                assert_eq!(retry_after, "1");
                refused += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(
        answered >= 2 && refused >= 1,
        "{answered} answered, {refused} refused"
    );
    // The node proxy counts them by route and logs them, with why.
    let end = Instant::now() + DEADLINE;
    loop {
        let counted = support::inbound_5xx(&agent.admin).await;
        let logged = std::fs::read_to_string(&access_log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("\"status\":503") && l.contains("concurrency_"))
            .count();
        if counted == f64::from(refused) && logged == refused as usize {
            break;
        }
        assert!(
            Instant::now() < end,
            "{refused} refused: {counted} counted, {logged} logged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Once they are done, the next one goes in at once.
    assert_eq!(support::root_with_retry_after(&address, HOST).await.0, 200);

    // A higher limit applies to the instance running (no restart): 8 at once all go in.
    platform.deploy(&definition.replace("hard: 2", "hard: 10"));
    let end = Instant::now() + DEADLINE;
    while eight_at_once(&address).await.iter().any(|a| a.0 != 200) {
        assert!(Instant::now() < end, "the new limit never applied");
    }
    serving_exactly(&address, "hello", &BTreeSet::from(["hello-0".to_owned()])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_over_their_cpu_target_get_more_instances_up_to_max() {
    if !meridian_agent::cgroups::Cgroups::available() {
        assert!(
            !strict(),
            "cgroups need root and a cpu controller (MERIDIAN_TEST_STRICT=1)"
        );
        eprintln!("skipped: cgroups need root and a cpu controller");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let definition = hello_in_fra(
        "{min: 1, max: 2, targets: {cpu_percent: 40}, down_window: 1h}",
        "",
        "5s",
    ) + "resources: {cpu: 0.2}\n";
    let platform = Deployed::start_on(dir.path(), &definition, "127.0.184.5");
    let region = fra(&platform, "127.0.184.6");
    let _agent = agent(&region, "one", "127.0.184.30", dir.path());
    let (_gateway, address) = gateway(&region, dir.path()).await;
    serving_exactly(&address, "hello", &BTreeSet::from(["hello-0".to_owned()])).await;
    // One request at a time keeps a CPU busy: the instance uses all of its 0.2 CPU, over
    // twice its 40% target, until a second instance (max) is asked for.
    let burning = tokio::spawn(async move {
        loop {
            let (status, body) = support::through(&address, HELLO_HOST, "/burn?ms=500").await;
            assert_eq!(status, 200, "{body}");
        }
    });
    let row = platform
        .status_until("hello", "scaled up to 2 on CPU", |row| row["desired"] == 2)
        .await;
    burning.abort();
    let reason = row["autoscale"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("(max): cpu_percent"), "{row}");
    assert!(reason.ends_with("target 40 each"), "{row}");
}

/// 8 `GET /` of hello through the gateway at `address` at once: their answers.
async fn eight_at_once(address: &str) -> Vec<(u16, Option<String>, String)> {
    let requests: Vec<_> = (0..8)
        .map(|_| {
            let address = address.to_owned();
            tokio::spawn(async move { support::root_with_retry_after(&address, HOST).await })
        })
        .collect();
    let mut answers = Vec::new();
    for request in requests {
        answers.push(request.await.unwrap());
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn above_its_soft_limit_an_instance_s_sender_prefers_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let definition = hello_in_fra(
        "{min: 3, max: 3, concurrency: {soft: 1, hard: 10}}",
        "",
        "1s",
    );
    let platform = Deployed::start_on(dir.path(), &definition, "127.0.184.7");
    let region = fra(&platform, "127.0.184.8");
    let isolation = [
        "--instance-addresses",
        "127.0.184.70",
        "--isolation",
        "host",
    ];
    let _agent = agent_with(&region, "one", dir.path(), &isolation);
    let (_gateway, address) = gateway(&region, dir.path()).await;
    let three = BTreeSet::from(["hello-0", "hello-1", "hello-2"].map(str::to_owned));
    serving_exactly(&address, "hello", &three).await;
    // Three requests in flight at once through the gateway, each one started after the one
    // before: each goes to an instance without one (least-request alone would put two on one
    // instance a third of the time, by drawing two busy ones).
    for round in 0..5 {
        let mut held = Vec::new();
        for _ in 0..3 {
            let address = address.clone();
            held.push(tokio::spawn(async move {
                support::through(&address, HELLO_HOST, "/slow?ms=1500").await
            }));
            // Paces the starts (not a wait for anything): each pick sees the ones before.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut by = BTreeSet::new();
        for answer in held {
            let (status, body) = answer.await.unwrap();
            assert_eq!(status, 200, "{body}");
            by.insert(greeter(&body).unwrap_or_default().to_owned());
        }
        assert_eq!(by, three, "round {round}");
    }
}

/// Which instance of hello greeted in `answer` (`… hello from hello <instance> in …`).
fn greeter(answer: &str) -> Option<&str> {
    let (_, rest) = answer.split_once("hello from hello ")?;
    rest.split(' ').next()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_its_hard_limit_an_instance_s_next_requests_go_to_another_instance_from_every_sender() {
    let dir = tempfile::tempdir().unwrap();
    let hello = hello_in_fra("{min: 2, max: 2, concurrency: {hard: 1}}", "", "1s");
    let platform = Deployed::start_on(dir.path(), &hello, "127.0.184.3");
    // web calls hello by name: its node proxy is a second sender, which does not see the
    // gateway's requests.
    platform.deploy(&support::shop_web(HELLO, "web.example.com", ""));
    let region = fra(&platform, "127.0.184.4");
    let isolation = [
        "--instance-addresses",
        "127.0.184.20",
        "--isolation",
        "host",
    ];
    let _agent = agent_with(&region, "one", dir.path(), &isolation);
    let (_gateway, address) = gateway(&region, dir.path()).await;
    let both = BTreeSet::from(["hello-0".to_owned(), "hello-1".to_owned()]);
    serving_exactly(&address, "hello", &both).await;
    let call = "/call?url=http://hello.shop.internal:8080/";
    support::answers(&address, "web.example.com", call, "answered 200").await;

    // One request holds an instance at its limit for 4 s; meanwhile the next requests, from
    // the gateway and from web's node proxy, go to the other one at once: none waits for the
    // held one (a second there) or is refused.
    let held = tokio::spawn({
        let address = address.clone();
        async move { support::through(&address, HELLO_HOST, "/slow?ms=4000").await }
    });
    let mut answered_by = Vec::new();
    while !held.is_finished() {
        for (host, path) in [(HELLO_HOST, "/"), ("web.example.com", call)] {
            let (status, body) = support::through(&address, host, path).await;
            assert_eq!(status, 200, "{body}");
            assert!(body.contains("hello from hello "), "{body}");
            answered_by.push((host, greeter(&body).unwrap_or_default().to_owned()));
        }
    }
    let (status, body) = held.await.unwrap();
    assert_eq!(status, 200, "{body}");
    let busy = greeter(&body).unwrap().to_owned();
    // The first few may have gone in before the held one: all the others went elsewhere.
    for host in [HELLO_HOST, "web.example.com"] {
        let elsewhere = answered_by
            .iter()
            .filter(|(h, by)| *h == host && *by != busy)
            .count();
        assert!(
            elsewhere >= 5,
            "{host}: {elsewhere} answered elsewhere than {busy}: {answered_by:?}"
        );
    }
}
