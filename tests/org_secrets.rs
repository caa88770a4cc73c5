//! An org's secret reaches the environment of the instances of its apps that reference it
//! (`{secret: NAME}`) where the app has no secret of that name, and appears nowhere else: not
//! in any component's log, the API's reads, any file the global control plane, the region or
//! the agent writes, nor the node proxy's dumps. A new value rolls the services that resolve
//! to it (a new version, `secret changed`); an app's secret of the same name wins, and then a
//! new value of the org's rolls nothing. An org's token manages its own org's secrets only.
//!
//! Loopback addresses 127.61.0.x only.

mod support;

use std::time::{Duration, Instant};

use support::{agent_with_env, files_containing, read, Cli, Deployed, RegionalPlane, HELLO};

const DEADLINE: Duration = Duration::from_secs(60);
/// The agent's first instance address (host isolation: an instance listens on one of the
/// node's four, from this one on, on port 8080).
const INSTANCE: &str = "127.61.0.1";
const ORG_FIRST: &str = "0rg-First-3c9a71e4";
const ORG_SECOND: &str = "0rg-Second-8b02d5f1";
const ORG_THIRD: &str = "0rg-Third-51e6a0c7";
const APP_VALUE: &str = "4pp-Value-d27f93b8";

/// `ORG/shop/hello` in fra, its `DB_PASSWORD` the secret `DB_PASSWORD`, shown at
/// `/env/DB_PASSWORD` (`HELLO_SHOW_ENV`).
fn hello(org: &str) -> String {
    format!(
        "\
org: {org}
app: shop
name: hello
regions: [fra]
runtime:
  process:
    command: {HELLO}
    env: {{HELLO_SHOW_ENV: DB_PASSWORD, DB_PASSWORD: {{secret: DB_PASSWORD}}}}
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
        let url = format!("http://127.61.0.{last}:8080/env/DB_PASSWORD");
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

/// A CLI with a new token of `org`, made by the admin `cli`.
fn org_cli(cli: &Cli, org: &str) -> Cli {
    let created = cli.ok(&["token", "create", "--org", org]);
    let token = created
        .lines()
        .find_map(|l| l.strip_prefix("secret (shown only now): "))
        .unwrap_or_else(|| panic!("no secret in {created}"))
        .trim()
        .to_owned();
    Cli {
        api: cli.api.clone(),
        token,
    }
}

/// The current version of `acme/shop/hello` and its origin, as `meridian get deployments`
/// shows them (`2*`, `secret changed`).
fn current_version(cli: &Cli) -> String {
    let versions = cli.ok(&[
        "get",
        "deployments",
        "hello",
        "--app",
        "shop",
        "--org",
        "acme",
    ]);
    versions
        .lines()
        .find(|l| {
            l.split_whitespace()
                .next()
                .is_some_and(|v| v.ends_with('*'))
        })
        .unwrap_or_else(|| panic!("no current version in {versions}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_org_secret_reaches_the_apps_that_do_not_shadow_it_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let platform = Deployed::with_secrets(dir.path(), &[]);
    let (global, token, admin) = (&platform.global, platform.token.as_str(), &platform.cli);
    admin.ok(&["org", "create", "rival"]);
    let acme = org_cli(admin, "acme");
    let rival = org_cli(admin, "rival");

    // Another org's token can neither set nor list nor delete acme's secrets: to it, acme is
    // not there.
    let value = format!("DB_PASSWORD={ORG_FIRST}");
    for args in [
        &["secret", "set", &value, "--org", "acme"][..],
        &["secret", "list", "--org", "acme"][..],
        &["secret", "delete", "DB_PASSWORD", "--org", "acme"],
    ] {
        let refused = rival.fails(args);
        assert!(
            refused.contains("404") && refused.contains("org `acme` not found"),
            "{refused}"
        );
    }

    // acme's token sets its org's secret (the org is the token's); a deploy resolves to it.
    let set = acme.ok(&["secret", "set", &format!("DB_PASSWORD={ORG_FIRST}")]);
    assert!(
        set.contains("DB_PASSWORD") && !set.contains(ORG_FIRST),
        "{set}"
    );
    let listed = acme.json(&["secret", "list"]);
    assert_eq!(
        (listed[0]["name"].as_str(), listed[0]["version"].as_u64()),
        (Some("DB_PASSWORD"), Some(1))
    );
    assert_eq!(rival.json(&["secret", "list"]), serde_json::json!([]));
    assert_eq!(
        acme.json(&["secret", "list", "--app", "shop"]),
        serde_json::json!([])
    );
    let definition = dir.path().join("hello.yaml");
    std::fs::write(&definition, hello("acme")).unwrap();
    let deploy = ["deploy", "-f", definition.to_str().unwrap()];
    acme.ok(&deploy);
    // rival's services do not see acme's secrets: refused, naming the field.
    let rivals = dir.path().join("rival.yaml");
    std::fs::write(&rivals, hello("rival")).unwrap();
    let refused = rival.fails(&["deploy", "-f", rivals.to_str().unwrap()]);
    assert!(
        refused.contains("runtime.process.env.DB_PASSWORD")
            && refused.contains("secret `DB_PASSWORD` does not exist"),
        "{refused}"
    );

    let region = RegionalPlane::start(global, token, "fra", None);
    let isolation = ["--instance-addresses", INSTANCE, "--isolation", "host"];
    let agent = agent_with_env(
        &region,
        "one",
        dir.path(),
        &isolation,
        &[("MERIDIAN_LOG", "debug")],
    );
    until_shown(ORG_FIRST, || agent.log()).await;

    // A new value of the org's secret rolls the service: a new version, the new instance sees it.
    acme.ok(&[
        "secret",
        "set",
        &format!("DB_PASSWORD={ORG_SECOND}"),
        "--org",
        "acme",
    ]);
    let current = current_version(&acme);
    assert!(
        current.starts_with("2*") && current.contains("secret changed"),
        "{current}"
    );
    until_shown(ORG_SECOND, || agent.log()).await;

    // In use: not deleted, the service named.
    let in_use = acme.fails(&["secret", "delete", "DB_PASSWORD"]);
    assert!(
        in_use.contains("in use") && in_use.contains("shop/hello"),
        "{in_use}"
    );

    // The app's secret of the same name wins: setting it rolls the service over to it …
    acme.ok(&[
        "secret",
        "set",
        &format!("DB_PASSWORD={APP_VALUE}"),
        "--app",
        "shop",
    ]);
    let current = current_version(&acme);
    assert!(
        current.starts_with("3*") && current.contains("secret changed"),
        "{current}"
    );
    until_shown(APP_VALUE, || agent.log()).await;
    // … and a new value of the org's rolls nothing; it may go, as nothing resolves to it.
    acme.ok(&["secret", "set", &format!("DB_PASSWORD={ORG_THIRD}")]);
    assert!(current_version(&acme).starts_with("3*"));
    let listed = acme.json(&["secret", "list"]);
    assert_eq!(listed[0]["version"], 3);

    // Nowhere else: the API's reads, the CLI's, the admin endpoints and dumps, …
    let service = format!("{}/v1/orgs/acme/apps/shop/services/hello", global.api);
    let mut seen = Vec::new();
    for url in [
        service.clone(),
        format!("{service}/deployments"),
        format!("{service}/deployments/1"),
        format!("{service}/status"),
        format!("{}/v1/orgs/acme/secrets", global.api),
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
        &["secret", "list", "-o", "json"],
    ] {
        seen.push((format!("meridian {args:?}"), acme.ok(args)));
    }
    assert!(
        seen.iter()
            .any(|(what, body)| what.ends_with("/v1/orgs/acme/secrets")
                && body.contains("DB_PASSWORD")),
        "the reads name the secret"
    );
    for value in [ORG_FIRST, ORG_SECOND, ORG_THIRD, APP_VALUE] {
        for (what, body) in &seen {
            assert!(!body.contains(value), "{what} shows the secret: {body}");
        }
        // … and every file: the store, the region's disk copy, the agent's state, every log.
        assert_eq!(
            files_containing(dir.path(), value),
            Vec::<String>::new(),
            "files holding the secret"
        );
        assert_eq!(
            files_containing(region.dir.path(), value),
            Vec::<String>::new()
        );
        assert!(!region.log().contains(value) && !agent.log().contains(value));
    }
    assert!(
        region.dir.path().join("region-fra/state.json").exists(),
        "the region keeps a disk copy"
    );

    // Now that the app's secret shadows it, the org's may go.
    acme.ok(&["secret", "delete", "DB_PASSWORD"]);
    assert_eq!(acme.json(&["secret", "list"]), serde_json::json!([]));
}
