//! A service's request figures as the platform measures them: requests through a region's
//! gateway to an agent-run instance are counted by the gateway and by the node proxy in front of
//! the instance, cut into windows by the regional control plane, reported upward, and answered
//! by the global API per region and status class (`GET …/metrics`), shown by `meridian top`;
//! and Prometheus' HTTP service discovery lists every running component's metrics address.

mod support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::{agent, answers, edge, gateway, through, Deployed, RegionalPlane, HELLO};

/// How long the figures may take to show (a 10 s window, reports every 1-2 s).
const DEADLINE: Duration = Duration::from_secs(60);

/// One instance of acme/shop/hello in fra, whose `/` always answers 500.
fn hello() -> String {
    format!(
        "\
org: acme
app: shop
name: hello
regions: [fra]
scale: {{min: 1, max: 1}}
runtime: {{process: {{command: {HELLO}, env: {{HELLO_ERROR_PERCENT: \"100\"}}}}}}
ports: [{{name: http, port: 8080}}]
routes: [{{path_prefix: /, port: http}}]
domains: [hello.example.com]
health_checks: [{{http: {{port: http, path: /healthz}}, interval: 200ms, timeout: 200ms, grace_period: 5s}}]
"
    )
}

/// `GET path` of the API with `token`: the status and the JSON body.
async fn api(base: &str, token: &str, path: &str) -> (u16, serde_json::Value) {
    let answer = reqwest::Client::new()
        .get(format!("{base}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = answer.status().as_u16();
    (status, answer.json().await.unwrap_or_default())
}

/// The counts by class (`[2xx, 4xx, 5xx]`) of `view` (`served` or `ingress`) of fra's total.
fn classes(metrics: &serde_json::Value, view: &str) -> [u64; 3] {
    let fra = metrics["regions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["region"] == "fra");
    let status = fra.map(|r| &r["total"][view]["status"]);
    ["2xx", "4xx", "5xx"].map(|class| status.and_then(|s| s[class].as_u64()).unwrap_or(0))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_services_requests_show_per_region_and_class_and_every_component_is_discovered() {
    let dir = tempfile::tempdir().unwrap();
    let platform = Deployed::start(dir.path(), &hello());
    let region = RegionalPlane::start(
        &platform.global,
        &platform.token,
        "fra",
        Some("127.0.0.1:0"),
    );
    let _node = agent(&region, "one", "127.0.70.100", dir.path());
    let (_gateway, address) = gateway(&region, dir.path()).await;
    let (_edge, _) = edge(&platform, &region, dir.path());
    let host = "hello.example.com";
    answers(&address, host, "/healthz", "ok").await;
    let metrics_path = "/v1/orgs/acme/apps/shop/services/hello/metrics?window=5m&step=10s";
    let (base, token) = (&platform.global.api, &platform.token);

    // What the warm-up sent is in a window the region reported once the figures end a window
    // (10 s) and a report (2 s) after it: that is the baseline.
    let warmed = unix_now();
    let end = Instant::now() + DEADLINE;
    let baseline = loop {
        let (status, metrics) = api(base, token, metrics_path).await;
        assert_eq!(status, 200, "{metrics}");
        if metrics["end"].as_u64().unwrap_or(0) >= warmed + 20 {
            break metrics;
        }
        assert!(
            Instant::now() < end,
            "the figures never moved on: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // Known answers: 6 × 200, 3 × 404 and 2 × 400 from the instance, 4 × 500.
    let mut sent = [0u64; 3];
    for (path, times, class) in [
        ("/healthz", 6, 0),
        ("/nope", 3, 1),
        ("/call", 2, 1),
        ("/", 4, 2),
    ] {
        for _ in 0..times {
            let (status, body) = through(&address, host, path).await;
            let got = match status {
                200..=299 => 0,
                400..=499 => 1,
                _ => 2,
            };
            assert_eq!(got, class, "{path} answered {status}: {body}");
            sent[class] += 1;
        }
    }
    let wanted = |view: &str| {
        let before = classes(&baseline, view);
        [0, 1, 2].map(|i| before[i] + sent[i])
    };

    // The node proxy (served) and the gateway (ingress) both counted each class.
    let end = Instant::now() + DEADLINE;
    let metrics = loop {
        let (_, metrics) = api(base, token, metrics_path).await;
        let seen = (classes(&metrics, "served"), classes(&metrics, "ingress"));
        if seen == (wanted("served"), wanted("ingress")) {
            break metrics;
        }
        assert!(
            Instant::now() < end,
            "the figures never matched {:?} / {:?}: {seen:?}\n{metrics}",
            wanted("served"),
            wanted("ingress")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(metrics["step_seconds"], 10);
    let fra = &metrics["regions"][0];
    assert_eq!(fra["region"], "fra");
    assert_eq!(
        fra["points"].as_array().unwrap().len(),
        30,
        "5m in steps of 10s"
    );
    let served = &fra["total"]["served"];
    let total = served["requests"].as_u64().unwrap();
    let ratio = served["error_ratio_5xx"].as_f64().unwrap();
    let expected = wanted("served")[2] as f64 / total as f64;
    assert!((ratio - expected).abs() < 1e-9, "{ratio} vs {expected}");
    let latency = &served["latency_ms"];
    let (p50, p99) = (
        latency["p50"].as_f64().unwrap(),
        latency["p99"].as_f64().unwrap(),
    );
    assert!(p50 > 0.0 && p50 <= p99, "{latency}");
    let per_point: u64 = fra["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["served"]["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(per_point, total, "the points add up to the total");
    assert_eq!(fra["instances"]["healthy"], 1, "{fra}");

    // Another org's token sees no such service; a bad step is a 400 naming it.
    platform.cli.ok(&["org", "create", "other"]);
    let other = platform.cli.for_new_org_token("other");
    let (status, _) = api(base, &other.token, metrics_path).await;
    assert_eq!(status, 404);
    let bad = "/v1/orgs/acme/apps/shop/services/hello/metrics?window=5m&step=7s";
    let (status, body) = api(base, token, bad).await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("step")),
        "{body}"
    );

    // `meridian top --once` shows the service's row in fra; as JSON, the API's figures.
    let table = platform.cli.ok(&[
        "top", "hello", "--app", "shop", "--org", "acme", "--once", "--window", "5m",
    ]);
    let row = table
        .lines()
        .find(|l| l.starts_with("hello ") && l.contains(" fra "))
        .unwrap_or_else(|| panic!("no row of hello in fra:\n{table}"));
    assert!(row.contains("1/1 healthy"), "{table}");
    assert!(table.lines().next().unwrap().contains("P99"), "{table}");
    let json = platform.cli.json(&[
        "top", "hello", "--app", "shop", "--org", "acme", "--once", "--window", "5m",
    ]);
    let shown = &json[0]["metrics"];
    assert_eq!(classes(shown, "served"), wanted("served"), "{json}");

    // Prometheus discovery lists the global and regional control planes, the agent, the
    // gateway and the edge, each with its labels, and each serves metrics there.
    let end = Instant::now() + DEADLINE;
    let groups = loop {
        let (status, groups) = api(base, token, "/v1/prometheus/targets").await;
        assert_eq!(status, 200, "{groups}");
        let roles: Vec<String> = groups
            .as_array()
            .unwrap()
            .iter()
            .map(|g| {
                let labels = &g["labels"];
                format!(
                    "{}/{}/{}",
                    labels["role"].as_str().unwrap_or("-"),
                    labels["region"].as_str().unwrap_or("-"),
                    labels["node"].as_str().unwrap_or("-")
                )
            })
            .collect();
        let wanted = [
            "control/-/global",
            "control/fra/fra",
            "agent/fra/one",
            "gateway/fra/gateway-fra",
            "edge/-/par",
        ];
        if wanted.iter().all(|w| roles.contains(&w.to_string())) {
            break groups;
        }
        assert!(Instant::now() < end, "targets never complete: {roles:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for group in groups.as_array().unwrap() {
        let target = group["targets"][0].as_str().unwrap();
        let text = support::metrics(&format!("http://{target}")).await;
        assert!(text.contains("meridian_"), "{group}: {text}");
    }
    let (status, _) = api(base, &other.token, "/v1/prometheus/targets").await;
    assert_eq!(status, 403, "admin only");
}
