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

use support::secrets::{hello, region_and_agent, until_shown, Witnesses};
use support::{Cli, Deployed, MERIDIAN};
const FIRST: &str = "s3cr3t-Value-7d1f0c2a";
const SECOND: &str = "an0ther-Value-9e44b1d6";

/// The network of the agent's instance addresses (host isolation: an instance listens on one
/// of `NET.1` to `NET.4`, on port 8080).
const NET: &str = "127.0.215";

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
    std::fs::write(&definition, hello("acme")).unwrap();
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

    let (region, agent) = region_and_agent(global, token, dir.path(), NET);

    until_shown(NET, FIRST, || agent.log()).await;

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
    until_shown(NET, SECOND, || agent.log()).await;
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

    // Nowhere else: the API's reads, the CLI's, the admin endpoints and dumps, any file.
    let witnesses = Witnesses {
        api: &global.api,
        token,
        region: &region,
        agent: &agent,
        cli,
    };
    let secrets = ["/v1/orgs/acme/apps/shop/secrets"];
    let list = ["secret", "list", "--app", "shop", "--org", "acme"];
    let seen = witnesses.reads(&secrets, &[&list]).await;
    assert!(
        seen.iter().any(|(_, body)| body.contains("DB_PASSWORD")),
        "the reads name the secret"
    );
    witnesses.assert_nowhere(&seen, dir.path(), &[FIRST, SECOND]);
    assert!(agent.log().contains("starting instance"));
}
