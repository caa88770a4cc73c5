//! Regions in waves (`deploy.waves`): a later wave takes a new version only once every region
//! of the earlier ones runs it to the full; while one never gets there, the later regions keep
//! serving the version they had.

mod support;

use std::time::{Duration, Instant};

use support::load::serving;
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
    let client = reqwest::Client::new();
    let mut greetings = Vec::new();
    for _ in 0..12 {
        let answer = client
            .get(format!("http://{gateway}/"))
            .header("host", "hello.example.com")
            .send()
            .await;
        if let Ok(answer) = answer {
            let text = answer.text().await.unwrap_or_default();
            if text.contains(&format!(" in {region} ")) {
                greetings.extend(text.split(' ').next().map(str::to_owned));
            }
        }
    }
    greetings
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
    let _fra_node = agent(&fra, "fra-1", "127.0.150.1", dir.path());
    let _iad_node = agent(&iad, "iad-1", "127.0.151.1", dir.path());
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

    // Version 3 never gets healthy in fra: iad waits, and keeps serving version 2.
    platform.deploy(&hello("fra, iad", "two", "/no-such-path"));
    status_until(&platform, "fra", "version 3's instance placed", |s| {
        s["versions"]
            .as_array()
            .is_some_and(|versions| versions.iter().any(|v| v["version"] == 3))
    })
    .await;
    // Several reports of fra's failing version later, iad still waits.
    let mut reports_seen = 0;
    let mut last_age = None;
    while reports_seen < 3 {
        let age = status_until(&platform, "fra", "a report", |s| {
            s["report_age_seconds"].is_u64()
        })
        .await["report_age_seconds"]
            .as_u64();
        if last_age.is_some_and(|last| age < Some(last)) {
            reports_seen += 1;
        }
        last_age = age;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let waiting = status_of(&platform, "iad");
    assert_eq!(waiting["state"], "waiting for wave 2", "{waiting}");
    let greetings = greetings_in(&iad_gateway, "iad").await;
    assert!(!greetings.is_empty(), "iad answered nothing");
    assert!(greetings.iter().all(|g| g == "one"), "{greetings:?}");

    // Version 4 is healthy: fra runs it to the full, then iad takes it.
    platform.deploy(&hello("fra, iad", "three", "/healthz"));
    status_until(&platform, "iad", "version 4 running", |s| {
        s["version"] == 4 && s["state"] == "running"
    })
    .await;
    serving(
        &iad_gateway,
        "three",
        |seen| seen.iter().any(|s| s.contains(" in iad ")),
        "version 4 in iad",
    )
    .await;
    let fra_status = status_of(&platform, "fra");
    assert_eq!(fra_status["state"], "running", "{fra_status}");
}
