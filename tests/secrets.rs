//! An app's secret reaches the environment of the instances that reference it
//! (`{secret: NAME}`) and appears nowhere else: not in any component's log, not in the API's
//! reads, not in any file the global control plane, the region or the agent writes (the store,
//! the region's disk copy, the agent's state), not in the node proxy's configuration dump or
//! any metrics. A new value rolls the instances over (a new version of the service), and the new ones see it; a secret in use is not
//! deleted; a deploy naming a missing secret is refused, naming the field.
//!
//! Loopback addresses 127.0.215.x only.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{
    agent_with_env, files_containing, read, Cli, Deployed, RegionalPlane, HELLO, MERIDIAN,
};

const DEADLINE: Duration = Duration::from_secs(60);
/// The agent's first instance address (host isolation: an instance listens on one of the
/// node's four, from this one on, on port 8080).
const INSTANCE: &str = "127.0.215.1";
const FIRST: &str = "s3cr3t-Value-7d1f0c2a";
const SECOND: &str = "an0ther-Value-9e44b1d6";

/// `acme/shop/hello` in fra, its `DB_PASSWORD` the app's secret `DB_PASSWORD`, shown at
/// `/env/DB_PASSWORD` (`HELLO_SHOW_ENV`).
fn hello(secret: &str) -> String {
    format!(
        "\
org: acme
app: shop
name: hello
regions: [fra]
runtime:
  process:
    command: {HELLO}
    env: {{HELLO_SHOW_ENV: DB_PASSWORD, DB_PASSWORD: {{secret: {secret}}}}}
ports: [{{name: http, port: 8080}}]
routes: [{{path_prefix: /, port: http}}]
health_checks: [{{http: {{port: http, path: /healthz}}, interval: 200ms, timeout: 200ms, grace_period: 1s}}]
"
    )
}

/// What the instances answer for their `DB_PASSWORD`, one entry per instance that answers.
async fn shown() -> Vec<String> {
    let mut values = Vec::new();
    for last in 1..=4 {
        let url = format!("http://127.0.215.{last}:8080/env/DB_PASSWORD");
        let answer = reqwest::Client::new()
            .get(url)
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        if let Ok(answer) = answer.and_then(reqwest::Response::error_for_status) {
            values.extend(answer.text().await.ok());
        }
    }
    values
}

/// Waits until the only instance answering shows `value` as its `DB_PASSWORD`; panics with
/// `context()` after [`DEADLINE`].
async fn until_shown(value: &str, context: impl Fn() -> String) {
    let end = Instant::now() + DEADLINE;
    while shown().await != [value] {
        assert!(
            Instant::now() < end,
            "the instance never showed {value}: {}",
            context()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `meridian secret set DB_PASSWORD --app shop --org acme` with the value on standard input.
fn set_from_stdin(cli: &Cli, value: &str) -> String {
    let mut child = Command::new(MERIDIAN)
        .args([
            "secret",
            "set",
            "DB_PASSWORD",
            "--app",
            "shop",
            "--org",
            "acme",
        ])
        .env("MERIDIAN_API", &cli.api)
        .env("MERIDIAN_TOKEN", &cli.token)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{value}").unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_reaches_only_the_instance_s_environment_and_a_new_value_replaces_it() {
    let dir = tempfile::tempdir().unwrap();
    let platform = Deployed::with_secrets(dir.path(), &[]);
    let (global, token, cli) = (&platform.global, platform.token.as_str(), &platform.cli);
    let definition = dir.path().join("hello.yaml");

    // Naming a secret that does not exist: refused, naming the field; nothing stored.
    std::fs::write(&definition, hello("DB_PASSWORD")).unwrap();
    let deploy = ["deploy", "-f", definition.to_str().unwrap()];
    let refused = cli.fails(&deploy);
    assert!(
        refused.contains("runtime.process.env.DB_PASSWORD")
            && refused.contains("secret `DB_PASSWORD` does not exist"),
        "{refused}"
    );
    assert_eq!(cli.json(&["get", "services"]), serde_json::json!([]));

    let set = cli.ok(&[
        "secret",
        "set",
        &format!("DB_PASSWORD={FIRST}"),
        "--app",
        "shop",
        "--org",
        "acme",
    ]);
    assert!(set.contains("DB_PASSWORD") && !set.contains(FIRST), "{set}");
    cli.ok(&deploy);

    let region = RegionalPlane::start(global, token, "fra", None);
    let isolation = ["--instance-addresses", INSTANCE, "--isolation", "host"];
    let agent = agent_with_env(
        &region,
        "one",
        dir.path(),
        &isolation,
        &[("MERIDIAN_LOG", "debug")],
    );
    until_shown(FIRST, || agent.log()).await;

    // In use: not deleted, the service named.
    let in_use = cli.fails(&[
        "secret",
        "delete",
        "DB_PASSWORD",
        "--app",
        "shop",
        "--org",
        "acme",
    ]);
    assert!(
        in_use.contains("in use") && in_use.contains("hello"),
        "{in_use}"
    );

    // A new value, from standard input: a new version of the service, equal to the current
    // one, rolls the instance over; the new instance sees it, and the old one is gone.
    let started = agent.log().matches("starting instance").count();
    let set = set_from_stdin(cli, SECOND);
    assert!(!set.contains(SECOND), "{set}");
    until_shown(SECOND, || agent.log()).await;
    assert!(
        agent.log().matches("starting instance").count() > started,
        "{}",
        agent.log()
    );
    let versions = cli.ok(&["get", "deployments", "hello", "--app", "shop"]);
    let current = versions.lines().find(|l| l.starts_with("2*"));
    assert!(
        current.is_some_and(|l| l.contains("secret changed")),
        "{versions}"
    );
    let listed = cli.json(&["secret", "list", "--app", "shop", "--org", "acme"]);
    assert_eq!(listed[0]["name"], "DB_PASSWORD");
    assert_eq!(listed[0]["version"], 2);

    // Nowhere else: the API's reads, the CLI's, the admin endpoints and dumps, …
    let service = format!("{}/v1/orgs/acme/apps/shop/services/hello", global.api);
    let mut seen = Vec::new();
    for url in [
        service.clone(),
        format!("{service}/deployments"),
        format!("{service}/deployments/1"),
        format!("{service}/status"),
        format!("{}/v1/orgs/acme/apps/shop/secrets", global.api),
        format!("{}/v1/regions/fra/deployments", global.api),
        format!("{}/v1/changes?after=0", global.api),
        format!("{}/metrics", global.api),
    ] {
        seen.push((url.clone(), read(&url, Some(token)).await));
    }
    for path in ["/config", "/listeners", "/metrics"] {
        let url = format!("{}{path}", agent.admin);
        seen.push((url.clone(), read(&url, None).await));
    }
    let url = format!("{}/metrics", region.admin);
    seen.push((url.clone(), read(&url, None).await));
    for args in [
        &["status", "hello", "--app", "shop", "-o", "json"][..],
        &["get", "deployments", "hello", "--app", "shop", "-o", "json"],
        &["secret", "list", "--app", "shop", "--org", "acme"],
    ] {
        seen.push((format!("meridian {args:?}"), cli.ok(args)));
    }
    assert!(
        seen.iter().any(|(_, body)| body.contains("DB_PASSWORD")),
        "the reads name the secret"
    );
    for value in [FIRST, SECOND] {
        for (what, body) in &seen {
            assert!(!body.contains(value), "{what} shows the secret: {body}");
        }
        // … and every file: the store, the region's disk copy, the agent's state, every log.
        assert_eq!(
            files_containing(dir.path(), value),
            Vec::<String>::new(),
            "files holding the secret"
        );
    }
    assert!(
        region.dir.path().join("region-fra/state.json").exists(),
        "the region keeps a disk copy"
    );
    assert_eq!(
        files_containing(region.dir.path(), FIRST),
        Vec::<String>::new()
    );
    assert_eq!(
        files_containing(region.dir.path(), SECOND),
        Vec::<String>::new()
    );
    assert!(agent.log().contains("starting instance"));
    assert!(!region.log().contains(SECOND) && !agent.log().contains(SECOND));
}
