//! Instance output through the API from every region: `meridian logs` shows the lines an
//! instance printed in each region, tagged with region, instance and stream, says which region
//! did not answer, filters by region, pattern and time, and follows new lines; the node proxies'
//! and gateways' access logs are JSON events with the documented fields; `--log-format json`
//! makes a component's own log JSON lines.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use support::{
    agent_with, agent_with_env, answers, gateway_with, spawn_with_lines, through, wait_for_line,
    Cli, Deployed, Killed, RegionalPlane, HELLO, HELLO_HOST, MERIDIAN,
};

/// How long lines may take to show (agents answer at once; a region that is not there is
/// waited for 3 s).
const DEADLINE: Duration = Duration::from_secs(60);

/// One instance of acme/shop/hello in each of `regions`.
fn hello(regions: &str) -> String {
    format!(
        "\
org: acme
app: shop
name: hello
regions: [{regions}]
scale: {{min: 1, max: 1}}
runtime: {{process: {{command: {HELLO}}}}}
ports: [{{name: http, port: 8080}}]
routes: [{{path_prefix: /, port: http}}]
domains: [{HELLO_HOST}]
health_checks: [{{http: {{port: http, path: /healthz}}, interval: 200ms, timeout: 200ms, grace_period: 5s}}]
"
    )
}

/// Runs `meridian logs hello --app shop <args>` until its standard output holds every one of
/// `wanted`; its standard output and error then.
async fn logs_until(cli: &Cli, args: &[&str], wanted: &[&str]) -> (String, String) {
    let end = Instant::now() + DEADLINE;
    loop {
        let all = [&["logs", "hello", "--app", "shop"][..], args].concat();
        let out = cli.run(&all);
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert!(out.status.success(), "meridian {all:?}: {stderr}");
        if wanted.iter().all(|w| stdout.contains(w)) {
            return (stdout, stderr);
        }
        assert!(
            Instant::now() < end,
            "meridian {all:?} never showed {wanted:?}:\n{stdout}\n{stderr}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The first JSON line of `file` for which `wanted` holds, waited for.
async fn json_line(file: &Path, wanted: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let end = Instant::now() + DEADLINE;
    loop {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let found = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{l}: {e}"))
            })
            .find(|event| wanted(event));
        if let Some(event) = found {
            return event;
        }
        assert!(
            Instant::now() < end,
            "no such line in {}:\n{text}",
            file.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_come_from_every_region_through_the_api_filtered_and_followed() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let platform = Deployed::start(dir, &hello("fra"));
    let cli = &platform.cli;
    cli.ok(&["region", "add", "sin", "--lat", "1.35", "--lon", "103.82"]);
    cli.ok(&["region", "add", "lon", "--lat", "51.51", "--lon", "-0.13"]);
    // lon has no control plane: its lines are missing, and said so.
    platform.deploy(&hello("fra, sin, lon"));
    let (token, global) = (&platform.token, &platform.global);
    let fra = RegionalPlane::start(global, token, "fra", Some("127.0.0.1:0"));
    let sin = RegionalPlane::start(global, token, "sin", Some("127.0.0.1:0"));
    let node_access = dir.join("one-access.log");
    let _one = agent_with(
        &fra,
        "one",
        dir,
        &[
            "--instance-addresses",
            "127.0.110.10",
            "--isolation",
            "host",
            "--access-log",
            node_access.to_str().unwrap(),
        ],
    );
    let _two = agent_with_env(
        &sin,
        "two",
        dir,
        &[
            "--instance-addresses",
            "127.0.110.20",
            "--isolation",
            "host",
            "--log-format",
            "json",
        ],
        &[("MERIDIAN_LOG", "info")],
    );
    let gateway_access = dir.join("gateway-fra-access.log");
    let access = ["--access-log", gateway_access.to_str().unwrap()];
    let (_fra_gateway, fra_address) = gateway_with(&fra, dir, &access).await;
    let (_sin_gateway, sin_address) = gateway_with(&sin, dir, &[]).await;
    answers(&fra_address, HELLO_HOST, "/healthz", "ok").await;
    answers(&sin_address, HELLO_HOST, "/healthz", "ok").await;
    for (gateway, path) in [
        (&fra_address, "/print?line=marker-fra-1"),
        (&fra_address, "/print?line=oops-fra&stream=stderr"),
        (&sin_address, "/print?line=marker-sin-1"),
    ] {
        assert_eq!(
            through(gateway, HELLO_HOST, path).await,
            (200, "printed\n".to_owned())
        );
    }

    // Every region's lines, tagged, in order of time; lon is said to be missing.
    let (shown, said) = logs_until(
        cli,
        &["--timestamps"],
        &[
            "[fra hello-0 stdout] marker-fra-1",
            "[fra hello-0 stderr] oops-fra",
            "[sin hello-0 stdout] marker-sin-1",
        ],
    )
    .await;
    assert!(
        said.contains("missing: region lon did not answer"),
        "{said}"
    );
    assert!(
        !said.contains("region fra") && !said.contains("region sin"),
        "{said}"
    );
    let times: Vec<SystemTime> = shown
        .lines()
        .map(|l| humantime::parse_rfc3339(l.split(' ').next().unwrap()).unwrap())
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "in order of time:\n{shown}"
    );

    // One region: only its lines, and nothing missing.
    let (shown, said) = logs_until(cli, &["--region", "sin"], &["marker-sin-1"]).await;
    assert!(
        shown.lines().all(|l| l.starts_with("[sin hello-0 ")),
        "{shown}"
    );
    assert!(!said.contains("missing"), "{said}");

    // A pattern: only the lines that match it.
    let (shown, _) = logs_until(cli, &["--grep", "marker-(fra|sin)"], &["marker-sin-1"]).await;
    let mut lines: Vec<&str> = shown.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        [
            "[fra hello-0 stdout] marker-fra-1",
            "[sin hello-0 stdout] marker-sin-1"
        ]
    );

    // Since a time: what was printed after it, not before.
    let since = humantime::format_rfc3339_nanos(SystemTime::now()).to_string();
    through(&fra_address, HELLO_HOST, "/print?line=after-since").await;
    let (shown, _) = logs_until(
        cli,
        &["--region", "fra", "--since", &since],
        &["after-since"],
    )
    .await;
    assert!(!shown.contains("marker-fra-1"), "{shown}");

    // As JSON: one event per line, each line with its region, node, instance, stream, time.
    let json = cli.ok(&[
        "logs", "hello", "--app", "shop", "--region", "fra", "-o", "json",
    ]);
    let events: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let marker = events
        .iter()
        .find(|e| e["text"] == "marker-fra-1")
        .unwrap_or_else(|| panic!("{json}"));
    assert_eq!(
        (
            &marker["type"],
            &marker["region"],
            &marker["node"],
            &marker["instance"],
            &marker["stream"]
        ),
        (
            &"line".into(),
            &"fra".into(),
            &"one".into(),
            &"hello-0".into(),
            &"stdout".into()
        )
    );
    assert!(humantime::parse_rfc3339(marker["time"].as_str().unwrap()).is_ok());

    // Following: the history, then a line printed afterwards.
    let (follower, lines) = spawn_with_lines(
        Command::new(MERIDIAN)
            .args(["logs", "-f", "hello", "--app", "shop", "--region", "fra"])
            .env("MERIDIAN_API", &cli.api)
            .env("MERIDIAN_TOKEN", &cli.token),
    );
    let _follower = Killed(follower);
    wait_for_line(&lines, DEADLINE, "the history", |l| {
        l.contains("marker-fra-1")
    });
    through(&fra_address, HELLO_HOST, "/print?line=followed-1").await;
    wait_for_line(&lines, DEADLINE, "the new line", |l| {
        l == "[fra hello-0 stdout] followed-1"
    });

    // Bad queries are refused naming the parameter; another org sees no such service.
    let path = "/v1/orgs/acme/apps/shop/services/hello/logs";
    let client = reqwest::Client::new();
    for (query, field) in [
        ("grep=(", "grep"),
        ("region=xyz", "region"),
        ("tail=99999", "tail"),
    ] {
        let answer = client
            .get(format!("{}{path}?{query}", cli.api))
            .bearer_auth(&cli.token)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 400, "{query}");
        let body: serde_json::Value = answer.json().await.unwrap();
        assert_eq!(body["error"]["field"], field, "{body}");
    }
    cli.ok(&["org", "create", "other"]);
    let other = cli.for_new_org_token("other");
    let answer = client
        .get(format!("{}{path}", cli.api))
        .bearer_auth(&other.token)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 404);

    // The access logs: a JSON event per request with the documented fields, from the node
    // proxy in front of the instance and from the gateway.
    let event = json_line(&node_access, |e| e["path"] == "/print").await;
    for (field, value) in [
        ("component", "node-proxy"),
        ("node", "one"),
        ("region", "fra"),
        ("method", "GET"),
        ("host", HELLO_HOST),
    ] {
        assert_eq!(event[field], value, "{field}: {event}");
    }
    assert_eq!(event["status"], 200, "{event}");
    let event = json_line(&gateway_access, |e| e["path"] == "/print").await;
    for (field, value) in [
        ("component", "gateway"),
        ("node", "gateway-fra"),
        ("region", "fra"),
        ("method", "GET"),
        ("host", HELLO_HOST),
        ("protocol", "HTTP/1.1"),
    ] {
        assert_eq!(event[field], value, "{field}: {event}");
    }
    assert_eq!(event["status"], 200, "{event}");
    assert!(
        event["cluster"]
            .as_str()
            .unwrap()
            .starts_with("acme/shop/hello"),
        "{event}"
    );
    assert!(event["duration_us"].as_u64().is_some(), "{event}");
    assert!(event["client"]
        .as_str()
        .unwrap()
        .parse::<std::net::SocketAddr>()
        .is_ok());
    assert!(
        humantime::parse_rfc3339(event["time"].as_str().unwrap()).is_ok(),
        "{event}"
    );
    assert!(event["proxy_error"].is_null(), "{event}");

    // The agent started with --log-format json logged JSON lines.
    let log = dir.join("two-stderr.log");
    let first = json_line(&log, |e| e["message"].is_string()).await;
    assert!(
        first["timestamp"].is_string() && first["level"].is_string(),
        "{first}"
    );
}
