//! An org's secret reaches the environment of the instances of its apps that reference it
//! (`{secret: NAME}`) where the app has no secret of that name, and appears nowhere else: not
//! in any component's log, the API's reads, any file the global control plane, the region or
//! the agent writes, nor the node proxy's dumps. A new value rolls the services that resolve
//! to it (a new version, `secret changed`); an app's secret of the same name wins, and then a
//! new value of the org's rolls nothing; deleting the app's rolls the services over to the
//! org's. An org's token manages its own org's secrets only.
//!
//! Loopback addresses 127.61.0.x only.

mod support;

use support::secrets::{hello, region_and_agent, until_shown, Witnesses};
use support::{Cli, Deployed};

/// The network of the agent's instance addresses (host isolation: an instance listens on one
/// of `NET.1` to `NET.4`, on port 8080).
const NET: &str = "127.61.0";
const ORG_FIRST: &str = "0rg-First-3c9a71e4";
const ORG_SECOND: &str = "0rg-Second-8b02d5f1";
const ORG_THIRD: &str = "0rg-Third-51e6a0c7";
const APP_VALUE: &str = "4pp-Value-d27f93b8";

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

/// Runs `meridian secret COMMAND…`, which makes `version` of `acme/shop/hello` (`secret
/// changed`), whose instance then shows `value`; panics with `context()` if it never does.
async fn rolls_to(
    acme: &Cli,
    command: &[&str],
    value: &str,
    version: u32,
    context: impl Fn() -> String,
) {
    acme.ok(&[&["secret"][..], command].concat());
    let current = current_version(acme);
    assert!(
        current.starts_with(&format!("{version}*")) && current.contains("secret changed"),
        "{current}"
    );
    until_shown(NET, value, context).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_org_secret_reaches_the_apps_that_do_not_shadow_it_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let platform = Deployed::with_secrets(dir.path(), &[]);
    let (global, token, admin) = (&platform.global, platform.token.as_str(), &platform.cli);
    admin.ok(&["org", "create", "rival"]);
    let acme = admin.for_new_org_token("acme");
    let rival = admin.for_new_org_token("rival");

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

    let (region, agent) = region_and_agent(global, token, dir.path(), NET);

    until_shown(NET, ORG_FIRST, || agent.log()).await;

    // A new value of the org's secret rolls the service: a new version, the new instance sees it.
    let set = format!("DB_PASSWORD={ORG_SECOND}");
    let command = ["set", &set, "--org", "acme"];
    rolls_to(&acme, &command, ORG_SECOND, 2, || agent.log()).await;

    // In use: not deleted, the service named.
    let in_use = acme.fails(&["secret", "delete", "DB_PASSWORD"]);
    assert!(
        in_use.contains("in use") && in_use.contains("shop/hello"),
        "{in_use}"
    );

    // The app's secret of the same name wins: setting it rolls the service over to it …
    let set = format!("DB_PASSWORD={APP_VALUE}");
    let command = ["set", &set, "--app", "shop"];
    rolls_to(&acme, &command, APP_VALUE, 3, || agent.log()).await;
    // … and a new value of the org's rolls nothing.
    acme.ok(&["secret", "set", &format!("DB_PASSWORD={ORG_THIRD}")]);
    assert!(current_version(&acme).starts_with("3*"));
    let listed = acme.json(&["secret", "list"]);
    assert_eq!(listed[0]["version"], 3);

    // Nowhere else: the API's reads, the CLI's, the admin endpoints and dumps, any file.
    let witnesses = Witnesses {
        api: &global.api,
        token,
        region: &region,
        agent: &agent,
        cli: &acme,
    };
    let secrets = ["/v1/orgs/acme/secrets", "/v1/orgs/acme/apps/shop/secrets"];
    let seen = witnesses.reads(&secrets, &[&["secret", "list"]]).await;
    assert!(
        seen.iter()
            .any(|(what, body)| what.ends_with("/v1/orgs/acme/secrets")
                && body.contains("DB_PASSWORD")),
        "the reads name the secret"
    );
    let values = [ORG_FIRST, ORG_SECOND, ORG_THIRD, APP_VALUE];
    witnesses.assert_nowhere(&seen, dir.path(), &values);

    // The app's secret may go, in use as it is: the org's takes its place, rolling the service.
    let command = ["delete", "DB_PASSWORD", "--app", "shop"];
    rolls_to(&acme, &command, ORG_THIRD, 4, || agent.log()).await;
    let in_use = acme.fails(&["secret", "delete", "DB_PASSWORD"]);
    assert!(in_use.contains("shop/hello"), "{in_use}");
}
