//! Deploys roll out safely: under a steady load through the region's gateway and through an
//! edge (GET and POST, on connections kept alive and on new ones), re-applying the same
//! definition stops nothing, and a definition that changes what the instances run rolls them
//! over to the new version beside the old ones, without a failed request, the old ones stopped
//! only once new ones are ready; scaling up and down stops only the surplus, drained first. A
//! new version that fails its health checks, crashes, or is not ready by its deadline, is
//! rolled back by the region on its own, without a failed request, and `meridian status` says
//! why. A blue-green deploy switches to a full new set at once. A WebSocket held through the
//! edge across a rolling deploy, a blue-green switch or a canary to 100 % echoes until its
//! instance's drain closes it at the drain deadline.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use support::load::{greeted_by, serving_exactly, Lane, Load};
use support::websocket::{closed_at_drain_deadline, Held};
use support::{
    edge, gateway, hello_in_fra, logging_agent, stops, Agent, Deployed, RegionalPlane, HELLO,
};

const DEADLINE: Duration = Duration::from_secs(60);
const HOST: &str = support::HELLO_HOST;

/// How long the WebSockets of an instance leaving service stay open in [`hello`] and the
/// blue-green and canary definitions.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// `deploy.drain_timeout: DRAIN_TIMEOUT` and `more` (further `deploy` fields, each followed by a
/// comma), as a definition's `deploy` line.
fn deploy(more: &str) -> String {
    let timeout = humantime::format_duration(DRAIN_TIMEOUT);
    format!("deploy: {{{more} drain_timeout: {timeout}}}\n")
}

/// `scale` instances of `hello` in fra, greeting with `greeting`, health-checked every 200 ms,
/// their WebSockets closed [`DRAIN_TIMEOUT`] after they begin draining.
fn hello(scale: u32, greeting: &str) -> String {
    hello_in_fra(scale, HELLO, greeting, "/healthz", &deploy(""))
}

/// `hello` deployed in fra, with two agents, a gateway and an edge, on the loopback addresses
/// `first` to `first + 2` (`127.0.N.1`, a third octet no other test uses).
struct Rig {
    platform: Deployed,
    agents: [Agent; 2],
    /// The gateway's plain HTTP address.
    gateway: String,
    /// The edge's plain HTTP address.
    edge: String,
    _processes: Vec<support::Killed>,
    _region: RegionalPlane,
}

impl Rig {
    /// Deploys `definition` and waits until instances `hello-0` and `hello-1` answer, through
    /// the gateway and through the edge, greeting with `hello`.
    async fn start(dir: &Path, first: u8, definition: &str) -> Rig {
        let address = |n: u8| format!("127.0.{}.1", first + n);
        let platform = Deployed::start(dir, definition);
        // The gateway listens for edges where the region says (the edge reads it in its report).
        let region = RegionalPlane::start(
            &platform.global,
            &platform.token,
            "fra",
            Some(&format!("{}:8080", address(2))),
        );
        let agents = [
            logging_agent(&region, "one", &address(0), dir),
            logging_agent(&region, "two", &address(1), dir),
        ];
        let (gateway_process, gateway) = gateway(&region, dir).await;
        let (edge_process, edge) = edge(&platform, &region, dir);
        let first = BTreeSet::from(["hello-0".to_owned(), "hello-1".to_owned()]);
        serving_exactly(&gateway, "hello", &first).await;
        serving_exactly(&edge, "hello", &first).await;
        Rig {
            platform,
            agents,
            gateway,
            edge,
            _processes: vec![gateway_process, edge_process],
            _region: region,
        }
    }
}

/// fra's row of `meridian status hello --app shop`.
fn fra_status(platform: &Deployed) -> serde_json::Value {
    let status = platform.cli.json(&["status", "hello", "--app", "shop"]);
    status["regions"][0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_rolls_instances_over_without_a_failed_request_and_a_same_one_stops_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let rig = Rig::start(dir.path(), 130, &hello(2, "hello")).await;
    let (platform, agents) = (&rig.platform, &rig.agents);
    let (address, edge_address, lanes) = (&rig.gateway, &rig.edge, Lane::every());
    let first: BTreeSet<String> = BTreeSet::from(["hello-0".to_owned(), "hello-1".to_owned()]);
    let load = Load::start_lanes(address, HOST, &lanes);
    let through_edge = Load::start_lanes(edge_address, HOST, &lanes);
    let socket = Held::open(edge_address, HOST).await;
    load.goes_on_for(100).await;
    assert_eq!(greeted_by(&load.take_answers(), "hello"), first);

    // The same definition again changes nothing; one that changes only how deploys go is a
    // new version, which the region takes without stopping or starting anything.
    platform.deploy(&hello(2, "hello"));
    assert_eq!(platform.cli.json(&["get", "services"])[0]["version"], 1);
    let slower_drain = deploy("drain_delay: 2s,");
    platform.deploy(&hello_in_fra(2, HELLO, "hello", "/healthz", &slower_drain));
    let end = Instant::now() + DEADLINE;
    while fra_status(platform)["version"] != 2 {
        assert!(Instant::now() < end, "version 2 never reached fra");
        load.goes_on_for(10).await;
    }
    load.goes_on_for(200).await;
    through_edge.goes_on_for(200).await;
    assert_eq!(stops(agents), 0, "{}", agents[0].log());
    assert!(
        socket.echoes(),
        "the WebSocket closed on a change of how deploys go"
    );
    assert_eq!(through_edge.failures(), Vec::<String>::new());
    assert_eq!(load.failures(), Vec::<String>::new());
    assert_eq!(greeted_by(&load.take_answers(), "hello"), first);

    // A new greeting: new instances start beside the old ones, which leave once new ones are
    // ready; the status shows both versions meanwhile, never fewer than two healthy.
    let deployed = Instant::now();
    platform.deploy(&hello(2, "howdy"));
    let mut states = BTreeSet::new();
    let mut fewest_healthy = u64::MAX;
    let end = Instant::now() + DEADLINE;
    loop {
        let status = fra_status(platform);
        if status["version"] == 3 {
            states.insert(status["state"].as_str().unwrap_or_default().to_owned());
            if let Some(healthy) = status["healthy"].as_u64() {
                fewest_healthy = fewest_healthy.min(healthy);
            }
        }
        if stops(agents) == 2 && status["state"] == "running" {
            break;
        }
        assert!(
            Instant::now() < end,
            "the rollout did not end: {status}\n{}",
            agents[0].log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rolled = deployed.elapsed();
    closed_by_drain(&rig, socket, "rolling deploy").await;
    let answers = load.answers_of_next(100).await;
    let what = format!(
        "rolling deploy of 2 instances: {rolled:?} from the deploy to the old instances stopped"
    );
    no_failed_request(&what, load, through_edge).await;
    let new: BTreeSet<String> = BTreeSet::from(["hello-2".to_owned(), "hello-3".to_owned()]);
    assert_eq!(greeted_by(&answers, "howdy"), new);
    assert!(greeted_by(&answers, "hello").is_empty());
    assert!(states.contains("rolling out"), "{states:?}");
    assert!(
        fewest_healthy >= 2,
        "{fewest_healthy} healthy at some point"
    );
    assert_eq!(stops(agents), 2);

    // Under load again: one more instance starts beside the two, which run on; then down to
    // one, the other two drain first.
    let load = Load::start_lanes(address, HOST, &lanes);
    platform.deploy(&hello(3, "howdy"));
    let three = BTreeSet::from(["hello-0", "hello-2", "hello-3"].map(str::to_owned));
    serving_exactly(address, "howdy", &three).await;
    assert_eq!(stops(agents), 2);
    platform.deploy(&hello(1, "howdy"));
    let end = Instant::now() + DEADLINE;
    while stops(agents) < 4 {
        assert!(Instant::now() < end, "the surplus never stopped");
        load.goes_on_for(10).await;
    }
    assert_eq!(
        greeted_by(&load.answers_of_next(100).await, "howdy").len(),
        1
    );
    let failures = load.failures();
    let answered = load.stop().await;
    assert_eq!(failures, Vec::<String>::new(), "of {answered} requests");
    assert_eq!(stops(agents), 4);
}

/// Stops both loads and checks that neither had a failed request, printing the counts after
/// `what`.
async fn no_failed_request(what: &str, load: Load, through_edge: Load) {
    let failures = load.failures();
    let answered = load.stop().await;
    let edge_failures = through_edge.failures();
    let edge_answered = through_edge.stop().await;
    eprintln!(
        "{what}: failed requests: {} of {answered} through the gateway, {} of \
         {edge_answered} through an edge",
        failures.len(),
        edge_failures.len()
    );
    assert_eq!(failures, Vec::<String>::new(), "of {answered} requests");
    assert_eq!(
        edge_failures,
        Vec::<String>::new(),
        "of {edge_answered} requests"
    );
}

/// Waits until `socket`, held through the edge since the first set (`hello-0` and `hello-1`)
/// served, is closed, and checks that its instance's drain closed it at its deadline, every
/// echo answered before; prints the figures after `what`.
async fn closed_by_drain(rig: &Rig, socket: Held, what: &str) {
    let ended = socket.ended().await;
    let first = ["hello-0", "hello-1"];
    let (instance, open_for) =
        closed_at_drain_deadline(&ended, &rig.agents, &first, DRAIN_TIMEOUT).await;
    eprintln!(
        "{what}: the WebSocket through the edge echoed {} times and closed {open_for:?} after \
         {instance} began draining (drain_timeout {DRAIN_TIMEOUT:?})",
        ended.words
    );
}

/// Waits, under `loads`, until fra's rollout of `version` is rolled back and the global control
/// plane made the version before it current again (as `version + 1`); returns fra's record of
/// the rollout (`{"region", "rollout"}`) from the rollout history.
async fn rolled_back(rig: &Rig, version: u64, loads: &[&Load]) -> serde_json::Value {
    let end = Instant::now() + DEADLINE;
    loop {
        let history = rig
            .platform
            .cli
            .json(&["rollout", "history", "hello", "--app", "shop"]);
        let record = history.as_array().and_then(|records| {
            records
                .iter()
                .find(|r| r["region"] == "fra" && r["rollout"]["version"] == version)
                .cloned()
        });
        let current = rig.platform.cli.json(&["get", "services"])[0]["version"].clone();
        if let Some(record) = record.filter(|r| r["rollout"]["phase"] == "rolled_back") {
            if current == version + 1 {
                let rollback =
                    rig.platform
                        .cli
                        .json(&["get", "deployments", "hello", "--app", "shop"]);
                let last = &rollback[version as usize];
                assert_eq!(last["origin"], "rollback", "{rollback}");
                assert_eq!(
                    last["rolled_back_from"], record["rollout"]["previous"],
                    "{rollback}"
                );
                // Its events end with the rollback, and say why.
                let events = record["events"].as_array().cloned().unwrap_or_default();
                let back = events.last().cloned().unwrap_or_default();
                assert_eq!(back["phase"], "rolled_back", "{record}");
                assert!(
                    back["reason"].as_str().is_some_and(|r| !r.is_empty()),
                    "{record}"
                );
                let table = rig
                    .platform
                    .cli
                    .ok(&["rollout", "history", "hello", "--app", "shop", "--events"]);
                assert!(table.contains("rolled_back"), "{table}");
                return record;
            }
        }
        assert!(
            Instant::now() < end,
            "no rollback of {version} (current version {current}): {history}\n{}\n{}",
            rig.agents[0].log(),
            rig.agents[1].log()
        );
        for load in loads {
            load.goes_on_for(5).await;
        }
    }
}

/// How long fra took from the gate's failure to the previous version alone in service, by
/// the times its rollout gives.
fn rollback_time(status: &serde_json::Value) -> Duration {
    let rollout = &status["rollout"];
    let failed = rollout["failure"]["at"].as_u64().unwrap();
    let back = rollout["updated_at"].as_u64().unwrap();
    Duration::from_millis(back - failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_that_fails_its_health_checks_crashes_or_is_late_is_rolled_back_without_a_failed_request(
) {
    let dir = tempfile::tempdir().unwrap();
    let rig = Rig::start(dir.path(), 140, &hello(2, "hello")).await;
    let first = BTreeSet::from(["hello-0".to_owned(), "hello-1".to_owned()]);
    let load = Load::start_lanes(&rig.gateway, HOST, &Lane::every());
    let through_edge = Load::start_lanes(&rig.edge, HOST, &Lane::every());
    load.goes_on_for(50).await;

    // A version whose health checks fail: its instance starts beside the old ones, fails its
    // checks once they count, and the region rolls it back on its own.
    rig.platform
        .deploy(&hello_in_fra(2, HELLO, "howdy", "/missing", ""));
    let status = rolled_back(&rig, 2, &[&load, &through_edge]).await;
    let failure = &status["rollout"]["failure"];
    assert_eq!(failure["gate"], "health_checks", "{status}");
    assert_eq!(failure["instance"], "hello-2", "{status}");
    assert!(
        failure["reason"]
            .as_str()
            .unwrap()
            .contains("health checks in a row"),
        "{status}"
    );
    eprintln!(
        "failed health checks: rolled back {:?} after the gate failed",
        rollback_time(&status)
    );
    assert_eq!(greeted_by(&load.answers_of_next(100).await, "hello"), first);

    // A version that crashes, rolled out without surge: an old instance leaves first, the new
    // one crashes, and the region starts an instance of the previous version again; the other
    // old one serves meanwhile.
    let no_surge = "deploy: {max_surge: 0, max_unavailable: 1}\n";
    rig.platform.deploy(&hello_in_fra(
        2,
        "/bin/false",
        "hello",
        "/healthz",
        no_surge,
    ));
    // Version 3 is the rollback of 2 (version 1 again): this one is version 4.
    let status = rolled_back(&rig, 4, &[&load, &through_edge]).await;
    let failure = &status["rollout"]["failure"];
    assert_eq!(failure["gate"], "crash_loop", "{status}");
    assert!(
        failure["reason"].as_str().unwrap().contains("exited"),
        "{status}"
    );
    // It started from version 3 (version 1 again), which the region ran again.
    assert_eq!(status["rollout"]["previous"], 3, "{status}");
    eprintln!(
        "crash loop: rolled back {:?} after the gate failed",
        rollback_time(&status)
    );
    let back = greeted_by(&load.answers_of_next(100).await, "hello");
    assert_eq!(back.len(), 2, "{back:?}");
    // Stopped in the end: the two new instances and the old one that left first.
    let end = Instant::now() + DEADLINE;
    while stops(&rig.agents) < 3 {
        assert!(Instant::now() < end, "{}", rig.agents[0].log());
        load.goes_on_for(5).await;
    }

    // A version that never gets ready (its checks fail, but within a long grace period): the
    // deadline fails it.
    let slow = "deploy: {progress_deadline: 2s}\n";
    let never_ready = hello_in_fra(2, HELLO, "hello", "/missing", slow)
        .replace("grace_period: 1s", "grace_period: 1h");
    rig.platform.deploy(&never_ready);
    let status = rolled_back(&rig, 6, &[&load, &through_edge]).await;
    let failure = &status["rollout"]["failure"];
    assert_eq!(failure["gate"], "progress_deadline", "{status}");
    assert!(failure["observed"].as_u64().unwrap() >= 2000, "{status}");
    assert!(
        failure["reason"]
            .as_str()
            .unwrap()
            .starts_with("0 of 2 instances ready"),
        "{status}"
    );
    no_failed_request("three rollbacks", load, through_edge).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blue_green_deploy_switches_to_a_full_new_set_without_a_failed_request() {
    let dir = tempfile::tempdir().unwrap();
    let blue_green = deploy("strategy: blue_green, keep_previous: 3s,");
    let definition = |greeting| hello_in_fra(2, HELLO, greeting, "/healthz", &blue_green);
    let rig = Rig::start(dir.path(), 150, &definition("hello")).await;
    let load = Load::start_lanes(&rig.gateway, HOST, &Lane::every());
    let through_edge = Load::start_lanes(&rig.edge, HOST, &Lane::every());
    let socket = Held::open(&rig.edge, HOST).await;
    load.goes_on_for(50).await;

    // The whole new set starts beside the old one, which serves until all of it is ready.
    rig.platform.deploy(&definition("howdy"));
    let mut full_set_beside = false;
    let end = Instant::now() + DEADLINE;
    let status = loop {
        let status = fra_status(&rig.platform);
        let placed = |version: u64| {
            let versions = status["versions"].as_array().cloned().unwrap_or_default();
            let of = versions.iter().find(|v| v["version"] == version);
            of.map_or(0, |v| v["placed"].as_u64().unwrap())
        };
        full_set_beside |= placed(1) == 2 && placed(2) == 2;
        if status["rollout"]["phase"] == "succeeded" {
            break status;
        }
        assert!(Instant::now() < end, "the switch never came: {status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status["rollout"]["strategy"], "blue_green", "{status}");
    assert!(
        full_set_beside,
        "the new set never stood beside the old one"
    );
    // Switched: the old set is out of service but kept running for keep_previous (and its
    // WebSocket open).
    assert_eq!(stops(&rig.agents), 0);
    assert!(socket.echoes(), "the WebSocket closed at the switch");
    let switched = Instant::now();
    let new = BTreeSet::from(["hello-2".to_owned(), "hello-3".to_owned()]);
    serving_exactly(&rig.gateway, "howdy", &new).await;
    while stops(&rig.agents) < 2 {
        assert!(
            switched.elapsed() < DEADLINE,
            "the old set was never stopped"
        );
        load.goes_on_for(5).await;
    }
    let kept = switched.elapsed();
    eprintln!("blue-green: the old set stopped {kept:?} after the switch was seen");
    assert!(kept >= Duration::from_secs(2), "kept only {kept:?}");
    closed_by_drain(&rig, socket, "blue-green switch").await;
    assert_eq!(greeted_by(&load.answers_of_next(100).await, "howdy"), new);

    no_failed_request("blue-green switch", load, through_edge).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_splits_requests_by_weight_then_goes_to_100_without_a_failed_request() {
    let dir = tempfile::tempdir().unwrap();
    let canary = deploy("strategy: canary, steps: [{weight: 50, pause: 3s}], keep_previous: 1s,");
    let definition = |greeting| hello_in_fra(2, HELLO, greeting, "/healthz", &canary);
    let rig = Rig::start(dir.path(), 160, &definition("hello")).await;
    let load = Load::start_lanes(&rig.gateway, HOST, &Lane::every());
    let through_edge = Load::start_lanes(&rig.edge, HOST, &Lane::every());
    let socket = Held::open(&rig.edge, HOST).await;
    load.goes_on_for(50).await;

    // The new set starts beside the old one; once it is ready, the proxies send it half of
    // the requests for the step's pause.
    rig.platform.deploy(&definition("howdy"));
    let end = Instant::now() + DEADLINE;
    loop {
        let status = fra_status(&rig.platform);
        let weights = &status["rollout"]["weights"];
        if weights
            == &serde_json::json!([{"version": 1, "weight": 50}, {"version": 2, "weight": 50}])
        {
            assert_eq!(status["rollout"]["step"], 0, "{status}");
            break;
        }
        assert!(Instant::now() < end, "the canary never split: {status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let answers = load.answers_of_next(40).await;
    let (old, new) = (greeted_by(&answers, "hello"), greeted_by(&answers, "howdy"));
    eprintln!(
        "canary at 50 %: {} of {} answers from the new version",
        answers.iter().filter(|a| a.starts_with("howdy")).count(),
        answers.len()
    );
    assert!(!old.is_empty() && !new.is_empty(), "{answers:?}");
    assert!(socket.echoes(), "the WebSocket closed at the split");

    // Then 100 %: the old set leaves, and the rollout succeeded.
    let end = Instant::now() + DEADLINE;
    loop {
        let status = fra_status(&rig.platform);
        if status["rollout"]["phase"] == "succeeded" {
            assert_eq!(status["rollout"]["strategy"], "canary", "{status}");
            break;
        }
        assert!(Instant::now() < end, "the canary never ended: {status}");
        load.goes_on_for(5).await;
    }
    let new = BTreeSet::from(["hello-2".to_owned(), "hello-3".to_owned()]);
    serving_exactly(&rig.gateway, "howdy", &new).await;
    assert_eq!(greeted_by(&load.answers_of_next(100).await, "howdy"), new);
    closed_by_drain(&rig, socket, "canary to 100 %").await;
    no_failed_request("canary to 100 %", load, through_edge).await;
}

/// `meridian rollout <action> hello --app shop`, which must succeed.
fn rollout_cli(rig: &Rig, action: &str) -> String {
    rig.platform
        .cli
        .ok(&["rollout", action, "hello", "--app", "shop"])
}

/// `meridian rollout <action> hello --app shop`, which must be refused; its words.
fn rollout_refused(rig: &Rig, action: &str) -> String {
    rig.platform
        .cli
        .fails(&["rollout", action, "hello", "--app", "shop"])
}

/// Waits, under `load`, until fra's status satisfies `done`; returns it.
async fn fra_until(
    rig: &Rig,
    load: &Load,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let end = Instant::now() + DEADLINE;
    loop {
        let status = fra_status(&rig.platform);
        if done(&status) {
            return status;
        }
        assert!(Instant::now() < end, "waited in vain for {what}: {status}");
        load.goes_on_for(5).await;
    }
}

/// Calls `hello.shop.internal` by name from the service's instances (through the gateway, to
/// `/call`) until the answers come from both the version greeting `old` and the one greeting
/// `new`.
async fn mesh_calls_reach_both(gateway: &str, old: &str, new: &str) {
    let path = "/call?url=http://hello.shop.internal:8080/";
    let mut seen = BTreeSet::new();
    let end = Instant::now() + DEADLINE;
    while seen.len() < 2 {
        let (status, body) = support::through(gateway, HOST, path).await;
        assert_eq!(status, 200, "{body}");
        let callee = body.split("answered 200: ").nth(1).unwrap_or_default();
        for greeting in [old, new] {
            if callee.starts_with(greeting) {
                seen.insert(greeting);
            }
        }
        assert!(
            Instant::now() < end,
            "mesh calls reached only {seen:?}; the last answer: {body}"
        );
    }
}

/// Whether `status`'s rollout gives `version` `weight` percent.
fn weighs(status: &serde_json::Value, version: u64, weight: u64) -> bool {
    let weights = status["rollout"]["weights"].as_array().cloned();
    weights
        .unwrap_or_default()
        .iter()
        .any(|w| w["version"] == version && w["weight"] == weight)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_canary_holds_its_weight_until_resumed_and_a_promoted_one_ends_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let canary = |steps: &str| {
        format!("deploy: {{strategy: canary, steps: [{steps}], keep_previous: 1s}}\n")
    };
    let definition =
        |greeting: &str, steps: &str| hello_in_fra(2, HELLO, greeting, "/healthz", &canary(steps));
    let half = "{weight: 50, pause: 2s}";
    let rig = Rig::start(dir.path(), 200, &definition("hello", half)).await;
    let load = Load::start_lanes(&rig.gateway, HOST, &Lane::every());
    let through_edge = Load::start_lanes(&rig.edge, HOST, &Lane::every());
    load.goes_on_for(50).await;
    let refused = rollout_refused(&rig, "pause");
    assert!(refused.contains("nothing to pause"), "{refused}");

    // Paused at its first step: it stays at 50 % well past the step's 2 s pause.
    rig.platform.deploy(&definition("howdy", half));
    fra_until(&rig, &load, "the 50 % step", |s| weighs(s, 2, 50)).await;
    rollout_cli(&rig, "pause");
    let status = fra_until(&rig, &load, "the pause", |s| s["state"] == "paused").await;
    assert_eq!(status["rollout"]["phase"], "paused", "{status}");
    let refused = rollout_refused(&rig, "pause");
    assert!(refused.contains("paused already"), "{refused}");
    let paused = Instant::now();
    while paused.elapsed() < Duration::from_secs(5) {
        let status = fra_status(&rig.platform);
        assert_eq!(status["rollout"]["phase"], "paused", "{status}");
        assert!(weighs(&status, 2, 50), "{status}");
        load.goes_on_for(10).await;
    }
    let answers = load.answers_of_next(40).await;
    let (old, new) = (greeted_by(&answers, "hello"), greeted_by(&answers, "howdy"));
    assert!(!old.is_empty() && !new.is_empty(), "{answers:?}");
    // Callers inside the mesh, calling the service by name through their node proxies, are
    // split the same way.
    mesh_calls_reach_both(&rig.gateway, "hello", "howdy").await;
    eprintln!(
        "paused canary at 50 % for {:?} past its 2 s pause",
        paused.elapsed()
    );

    // Resumed: it goes on to 100 % and succeeds.
    rollout_cli(&rig, "resume");
    let refused = rollout_refused(&rig, "resume");
    assert!(refused.contains("not paused"), "{refused}");
    let status = fra_until(&rig, &load, "the end of the canary", |s| {
        s["rollout"]["phase"] == "succeeded"
    })
    .await;
    assert_eq!(status["rollout"]["version"], 2, "{status}");
    let howdy = BTreeSet::from(["hello-2".to_owned(), "hello-3".to_owned()]);
    serving_exactly(&rig.gateway, "howdy", &howdy).await;

    // A canary with hour-long pauses, promoted at its first step: it ends at once.
    let long = "{weight: 10, pause: 1h}, {weight: 50, pause: 1h}";
    rig.platform.deploy(&definition("hi", long));
    fra_until(&rig, &load, "the 10 % step", |s| weighs(s, 3, 10)).await;
    let promoted = Instant::now();
    rollout_cli(&rig, "promote");
    let status = fra_until(&rig, &load, "the promoted canary's end", |s| {
        s["rollout"]["phase"] == "succeeded" && s["rollout"]["version"] == 3
    })
    .await;
    assert_eq!(status["rollout"]["promoted"], true, "{status}");
    eprintln!(
        "promoted canary: succeeded {:?} after the promotion",
        promoted.elapsed()
    );
    let refused = rollout_refused(&rig, "promote");
    assert!(refused.contains("nothing to promote"), "{refused}");
    let answers = load.answers_of_next(100).await;
    assert_eq!(greeted_by(&answers, "hi").len(), 2, "{answers:?}");
    assert!(greeted_by(&answers, "howdy").is_empty(), "{answers:?}");
    no_failed_request("paused, resumed and promoted canaries", load, through_edge).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blue_green_aborted_while_the_previous_set_is_kept_switches_back_to_it_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let blue_green = "deploy: {strategy: blue_green, keep_previous: 1h}\n";
    let definition = |greeting| hello_in_fra(2, HELLO, greeting, "/healthz", blue_green);
    let rig = Rig::start(dir.path(), 203, &definition("hello")).await;
    let load = Load::start_lanes(&rig.gateway, HOST, &Lane::every());
    let through_edge = Load::start_lanes(&rig.edge, HOST, &Lane::every());
    load.goes_on_for(50).await;

    rig.platform.deploy(&definition("howdy"));
    fra_until(&rig, &load, "the switch", |s| {
        s["rollout"]["phase"] == "succeeded"
    })
    .await;
    let new = BTreeSet::from(["hello-2".to_owned(), "hello-3".to_owned()]);
    serving_exactly(&rig.gateway, "howdy", &new).await;
    let starts = || -> usize {
        rig.agents
            .iter()
            .map(|a| support::said(a, "starting instance"))
            .sum()
    };
    let started = starts();
    assert_eq!(started, 4, "two of each version");

    // Aborted while version 1's set is kept: version 3 (= 1) takes it back, nothing starts.
    let aborted = Instant::now();
    rollout_cli(&rig, "abort");
    let answered = aborted.elapsed();
    let old = BTreeSet::from(["hello-0".to_owned(), "hello-1".to_owned()]);
    let client = reqwest::Client::new();
    loop {
        let answers = support::load::dozen_answers(&client, &rig.gateway).await;
        let all_old = answers.len() == 12 && greeted_by(&answers, "hello") == old;
        if all_old && greeted_by(&answers, "howdy").is_empty() {
            break;
        }
        assert!(aborted.elapsed() < DEADLINE, "never back: {answers:?}");
        load.goes_on_for(1).await;
    }
    eprintln!(
        "blue-green abort: every answer from the kept set {:?} after the abort (the command \
         returned after {answered:?})",
        aborted.elapsed()
    );
    let status = fra_until(&rig, &load, "the return's end", |s| {
        s["version"] == 3 && s["rollout"]["phase"] == "succeeded"
    })
    .await;
    assert_eq!(status["rollout"]["previous"], 2, "{status}");
    serving_exactly(&rig.edge, "hello", &old).await;
    assert_eq!(greeted_by(&load.answers_of_next(100).await, "hello"), old);
    assert_eq!(starts(), started, "no instance started");
    no_failed_request("blue-green abort to the kept set", load, through_edge).await;
}

/// A canary with metric gates over 2 s windows: the new version's share of errors and its
/// p99 must stay within bounds.
const ANALYSED: &str =
    "deploy: {strategy: canary, steps: [{weight: 20, pause: 5s}], keep_previous: 1s, \
    analysis: {window: 2s, min_requests: 10, success_rate: {min: 99%}, p99: {max: 280ms}}}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_answering_errors_or_slowly_is_rolled_back_by_its_metric_gates() {
    let dir = tempfile::tempdir().unwrap();
    let definition = |greeting: &str| hello_in_fra(2, HELLO, greeting, "/healthz", ANALYSED);
    let rig = Rig::start(dir.path(), 190, &definition("hello")).await;
    let first = BTreeSet::from(["hello-0".to_owned(), "hello-1".to_owned()]);
    let load = Load::start_lanes(&rig.gateway, HOST, &Lane::every());
    let through_edge = Load::start_lanes(&rig.edge, HOST, &Lane::every());
    load.goes_on_for(50).await;

    // A version answering 5 % of its requests 500: the canary's share of requests reaches it,
    // and its success rate over the window fails the gate.
    rig.platform
        .deploy(&definition(r#"howdy, HELLO_ERROR_PERCENT: "5""#));
    let status = rolled_back(&rig, 2, &[&load, &through_edge]).await;
    let failure = &status["rollout"]["failure"];
    assert_eq!(failure["gate"], "success_rate", "{status}");
    assert_eq!(failure["limit"], 9_900, "{status}");
    assert!(failure["observed"].as_u64().unwrap() < 9_900, "{status}");
    let reason = failure["reason"].as_str().unwrap();
    assert!(reason.starts_with("version 2: "), "{reason}");
    assert!(reason.contains("success_rate.min 99.00%"), "{reason}");
    // Every failed request was one the canary's share sent to the new version, and none
    // failed once the previous version was back.
    let failed = [load.failures(), through_edge.failures()].concat();
    eprintln!(
        "5 % errors: rolled back {:?} after the gate failed, {} failed requests ({reason})",
        rollback_time(&status),
        failed.len()
    );
    assert!(!failed.is_empty(), "no request reached the canary");
    for failure in &failed {
        assert!(
            failure.starts_with("500") && failure.contains("error: howdy from hello hello-"),
            "{failure}"
        );
    }
    load.take_answers();
    load.goes_on_for(200).await;
    through_edge.goes_on_for(100).await;
    assert_eq!(greeted_by(&load.take_answers(), "hello"), first);
    let after = [load.failures(), through_edge.failures()].concat();
    assert_eq!(after.len(), failed.len(), "{after:?}");

    // A version adding 300 ms to each answer: its p99 fails the gate, and no request fails.
    rig.platform
        .deploy(&definition(r#"howdy, HELLO_DELAY_MS: "300""#));
    let status = rolled_back(&rig, 4, &[&load, &through_edge]).await;
    let failure = &status["rollout"]["failure"];
    assert_eq!(failure["gate"], "latency", "{status}");
    assert_eq!(failure["limit"], 280, "{status}");
    assert!(failure["observed"].as_u64().unwrap() >= 300, "{status}");
    let reason = failure["reason"].as_str().unwrap();
    assert!(reason.contains("p99.max 280ms"), "{reason}");
    eprintln!(
        "+300 ms: rolled back {:?} after the gate failed ({reason})",
        rollback_time(&status)
    );
    let slow_failures = [load.failures(), through_edge.failures()].concat();
    assert_eq!(slow_failures.len(), failed.len(), "{slow_failures:?}");

    // A good version passes each step once a full window of it was within bounds, and its
    // figures show both versions. (Its p99 bound is loose: on a loaded test machine the p99 of
    // a few dozen requests, their slowest, may reach 300 ms.)
    let loose = ANALYSED.replace("p99: {max: 280ms}", "p99: {max: 5s}");
    assert_ne!(loose, ANALYSED);
    rig.platform
        .deploy(&hello_in_fra(2, HELLO, "hola", "/healthz", &loose));
    let end = Instant::now() + DEADLINE;
    let mut both_measured = false;
    loop {
        let status = fra_status(&rig.platform);
        let rollout = &status["rollout"];
        if rollout["version"] == 6 {
            let versions = rollout["analysis"]["versions"].as_array().cloned();
            both_measured |= versions.is_some_and(|v| {
                v.len() == 2
                    && v[0]["version"] == 6
                    && v[0]["requests"].as_u64() > Some(0)
                    && v[1]["version"] == 5
                    && v[1]["requests"].as_u64() > Some(0)
            });
            if rollout["phase"] == "succeeded" {
                break;
            }
        }
        assert!(
            Instant::now() < end,
            "the good canary never ended: {status}"
        );
        load.goes_on_for(5).await;
    }
    assert!(both_measured, "the figures never showed both versions");
    let table = rig
        .platform
        .cli
        .ok(&["rollout", "status", "hello", "--app", "shop"]);
    assert!(table.contains("GATES"), "{table}");
    assert!(
        table.contains("v6 ") && table.contains(" req ") && table.contains("p99"),
        "{table}"
    );
    let failures = [load.failures(), through_edge.failures()].concat();
    assert_eq!(failures.len(), failed.len(), "{failures:?}");
    load.stop().await;
    through_edge.stop().await;
}
