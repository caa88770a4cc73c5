//! Regions in waves (`deploy.waves`): a later wave takes a new version only once every region
//! of the earlier ones runs it to the full; when one fails it instead, the later regions never
//! see it, and the version before it becomes current again everywhere.

mod support;

use std::time::{Duration, Instant};

use support::load::{dozen_answers, serving};
use support::{agent, gateway, Deployed, RegionalPlane, HELLO};

const DEADLINE: Duration = Duration::from_secs(60);

/// meridian-hello as acme/shop/hello in `regions`, greeting with `greeting`, its health checked
/// on `health` (a path it does not serve fails every check); fra first when both are listed.
fn hello(regions: &str, greeting: &str, health: &str) -> String {
    let waves = if regions.contains("iad") {
        "deploy: {waves: [[fra], [iad]]}\n"
    } else {
        ""
    };
    format!(
        "\
org: acme
app: shop
name: hello
regions: [{regions}]
scale: {{min: 1, max: 2}}
runtime: {{process: {{command: {HELLO}, env: {{GREETING: {greeting}}}}}}}
ports: [{{name: http, port: 8080}}]
routes: [{{path_prefix: /, port: http}}]
domains: [hello.example.com]
health_checks: [{{http: {{port: http, path: {health}}}, interval: 200ms, timeout: 200ms, grace_period: 5s}}]
{waves}"
    )
}

/// `meridian deploy --wait` of `definition` on a thread of its own: its output once the
/// rollout ended.
fn follow(platform: &Deployed, definition: &str) -> std::thread::JoinHandle<std::process::Output> {
    std::fs::write(&platform.definition, definition).unwrap();
    let file = platform.definition.to_str().unwrap().to_owned();
    let cli = support::Cli {
        api: platform.cli.api.clone(),
        token: platform.cli.token.clone(),
    };
    std::thread::spawn(move || cli.run(&["deploy", "-f", &file, "--wait"]))
}

/// A region's row of `meridian status hello --app shop`.
fn status_of(platform: &Deployed, region: &str) -> serde_json::Value {
    let status = platform.cli.json(&["status", "hello", "--app", "shop"]);
    status["regions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["region"] == region)
        .cloned()
        .unwrap_or_default()
}

/// Polls `region`'s status until `wanted` holds.
async fn status_until(
    platform: &Deployed,
    region: &str,
    what: &str,
    wanted: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let end = Instant::now() + DEADLINE;
    loop {
        let status = status_of(platform, region);
        if wanted(&status) {
            return status;
        }
        assert!(Instant::now() < end, "{region} never got {what}: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The greetings the instances of `region` answer with through its gateway.
async fn greetings_in(gateway: &str, region: &str) -> Vec<String> {
    let answers = dozen_answers(&reqwest::Client::new(), gateway).await;
    answers
        .iter()
        .filter(|text| text.contains(&format!(" in {region} ")))
        .filter_map(|text| text.split(' ').next())
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_wave_starts_only_once_the_earlier_one_runs_the_version_to_the_full() {
    let dir = tempfile::tempdir().unwrap();
    let platform = Deployed::start(dir.path(), &hello("fra", "zero", "/healthz"));
    platform
        .cli
        .ok(&["region", "add", "iad", "--lat", "38.95", "--lon", "-77.45"]);
    let start = |region| {
        RegionalPlane::start(
            &platform.global,
            &platform.token,
            region,
            Some("127.0.0.1:0"),
        )
    };
    let (fra, iad) = (start("fra"), start("iad"));
    let _fra_node = agent(&fra, "fra-1", "127.0.176.1", dir.path());
    let _iad_node = agent(&iad, "iad-1", "127.0.177.1", dir.path());
    let (_fra_gateway, fra_gateway) = gateway(&fra, dir.path()).await;
    let (_iad_gateway, iad_gateway) = gateway(&iad, dir.path()).await;
    serving(
        &fra_gateway,
        "zero",
        |seen| !seen.is_empty(),
        "fra's first version",
    )
    .await;

    // Version 2 adds iad, in the second wave: fra takes it first, then iad.
    platform.deploy(&hello("fra, iad", "one", "/healthz"));
    status_until(&platform, "iad", "version 2 running", |s| {
        s["version"] == 2 && s["state"] == "running"
    })
    .await;
    serving(
        &iad_gateway,
        "one",
        |seen| seen.iter().any(|s| s.contains(" in iad ")),
        "version 2 in iad",
    )
    .await;

    // Version 3 never gets healthy in fra: iad waits and keeps serving version 2, until fra
    // rolls 3 back and the global control plane makes version 2 current again (as 4).
    // `deploy --wait` follows it, and fails with the reason.
    let following = follow(&platform, &hello("fra, iad", "two", "/no-such-path"));
    let end = Instant::now() + DEADLINE;
    loop {
        let greetings = greetings_in(&iad_gateway, "iad").await;
        assert!(greetings.iter().all(|g| g == "one"), "{greetings:?}");
        // The current version is read before the history: the global plane records a region's
        // rolled-back rollout before it makes the previous version current again.
        let current = platform.cli.json(&["get", "services"])[0]["version"].clone();
        let history = platform
            .cli
            .json(&["rollout", "history", "hello", "--app", "shop"]);
        let rollouts_of_3: Vec<&serde_json::Value> = history
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["rollout"]["version"] == 3)
            .collect();
        assert!(
            rollouts_of_3.iter().all(|r| r["region"] == "fra"),
            "{history}"
        );
        if current == 4 {
            assert_eq!(rollouts_of_3.len(), 1, "{history}");
            assert_eq!(
                rollouts_of_3[0]["rollout"]["phase"], "rolled_back",
                "{history}"
            );
            break;
        }
        let iad = status_of(&platform, "iad");
        if iad["version"] == 3 {
            assert_eq!(iad["state"], "waiting for wave 2", "{iad}");
        }
        assert!(
            Instant::now() < end,
            "version 3 was never rolled back: {history}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let followed = following.join().unwrap();
    let said = String::from_utf8_lossy(&followed.stdout);
    let error = String::from_utf8_lossy(&followed.stderr);
    assert!(!followed.status.success(), "{said}{error}");
    assert!(
        said.contains("following the rollout of version 3"),
        "{said}"
    );
    assert!(said.contains("waiting for wave 2"), "{said}");
    assert!(
        error.contains("the rollout of version 3 failed in fra: hello-")
            || error.contains("version 3 is no longer current"),
        "{error}"
    );
    let deployments = platform
        .cli
        .json(&["get", "deployments", "hello", "--app", "shop"]);
    assert_eq!(deployments[3]["origin"], "rollback", "{deployments}");
    assert_eq!(deployments[3]["rolled_back_from"], 2, "{deployments}");

    // Version 5 is healthy: fra runs it to the full, then iad takes it.
    let followed = follow(&platform, &hello("fra, iad", "three", "/healthz"))
        .join()
        .unwrap();
    let said = String::from_utf8_lossy(&followed.stdout);
    assert!(
        followed.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&followed.stderr)
    );
    assert!(said.contains("version 5 runs in every region"), "{said}");
    status_until(&platform, "iad", "version 5 running", |s| {
        s["version"] == 5 && s["state"] == "running"
    })
    .await;
    serving(
        &iad_gateway,
        "three",
        |seen| seen.iter().any(|s| s.contains(" in iad ")),
        "version 5 in iad",
    )
    .await;
    let fra_status = status_of(&platform, "fra");
    assert_eq!(fra_status["state"], "running", "{fra_status}");

    // Version 6 takes its time to get ready: aborted while fra rolls it out, version 5 is
    // current again (as 7), and iad never saw 6.
    let slow =
        hello("fra, iad", "four", "/no-such-path").replace("grace_period: 5s", "grace_period: 1h");
    platform.deploy(&slow);
    status_until(&platform, "fra", "version 6 rolling out", |s| {
        s["rollout"]["version"] == 6 && s["rollout"]["phase"] == "progressing"
    })
    .await;
    let status = platform
        .cli
        .ok(&["rollout", "status", "hello", "--app", "shop"]);
    assert!(status.contains("progressing"), "{status}");
    let aborted = platform
        .cli
        .ok(&["rollout", "abort", "hello", "--app", "shop"]);
    assert!(
        aborted.contains("aborted: hello goes back to version 5 as version 7"),
        "{aborted}"
    );
    status_until(&platform, "fra", "version 7 running", |s| {
        s["version"] == 7 && s["state"] == "running"
    })
    .await;
    let greetings = greetings_in(&fra_gateway, "fra").await;
    assert!(greetings.iter().all(|g| g == "three"), "{greetings:?}");
    let nothing = platform
        .cli
        .fails(&["rollout", "abort", "hello", "--app", "shop"]);
    assert!(nothing.contains("nothing to abort"), "{nothing}");
    let history = platform
        .cli
        .json(&["rollout", "history", "hello", "--app", "shop"]);
    assert!(
        !history
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["rollout"]["version"] == 6 && r["region"] == "iad"),
        "{history}"
    );
}
