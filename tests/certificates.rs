//! Certificates owned by the platform, end to end: the global control plane issues every
//! claimed domain a certificate (its local CA, or ACME against pebble), and the edges get it
//! over xDS as `certificate/<domain>`; a deleted service's certificates go away.

mod support;

use std::time::{Duration, Instant};

use support::edge_feed::{assert_serves, follow_as_edge};
use support::{Cli, ControlPlane, MERIDIAN};

const DEADLINE: Duration = Duration::from_secs(30);

fn shop(domains: &str) -> String {
    format!(
        "\
org: acme
app: shop
name: web
regions: [fra]
runtime: {{process: {{command: /bin/true}}}}
ports: [{{name: http, port: 8080}}]
routes: [{{path_prefix: /, port: http}}]
domains: [{domains}]
"
    )
}

/// A control plane started with `extra`, region `fra`, and the admin CLI.
fn platform(data: &std::path::Path, extra: &[&str]) -> (ControlPlane, Cli) {
    let global = ControlPlane::start_with(data, extra);
    let cli = Cli {
        api: global.api.clone(),
        token: global
            .token
            .clone()
            .expect("a first start prints the admin token"),
    };
    cli.ok(&["region", "add", "fra", "--lat", "50.11", "--lon", "8.68"]);
    (global, cli)
}

fn deploy(cli: &Cli, dir: &std::path::Path, definition: &str) {
    let file = dir.join("service.yaml");
    std::fs::write(&file, definition).unwrap();
    cli.ok(&["deploy", "-f", file.to_str().unwrap()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_local_ca_issues_every_domain_and_edges_get_it_until_the_service_goes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let key = dir.path().join("secrets.key");
    let key_arg = key.to_str().unwrap();
    let (global, cli) = platform(
        &data,
        &[
            "--secrets-key",
            key_arg,
            "--create-secrets-key",
            "--local-ca",
        ],
    );
    let edge = follow_as_edge(&data, &global.xds);
    // The session ticket keys come first, with no domain at all.
    let tickets = edge
        .wait_for(DEADLINE, "the session ticket keys", |held| {
            held.secrets.get("session-ticket-keys").cloned()
        })
        .await;
    let Some(envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::secret::Type::SessionTicketKeys(keys)) = tickets.r#type else {
        panic!("session-ticket-keys is not a session ticket keys secret: {tickets:?}");
    };
    assert_eq!(keys.keys.len(), 1);

    let started = Instant::now();
    deploy(
        &cli,
        dir.path(),
        &shop("shop.example.test, '*.cdn.example.test'"),
    );
    let (chain, key_pem) = edge.certificate("shop.example.test", DEADLINE).await;
    let took = started.elapsed();
    eprintln!("domain added -> certificate at the edge (local CA): {took:?}");
    let ca_file = data.join("public-ca/ca.pem");
    let roots = std::fs::read_to_string(&ca_file).unwrap();
    assert_serves(&chain, &key_pem, "shop.example.test", &roots);
    let (wild, wild_key) = edge.certificate("*.cdn.example.test", DEADLINE).await;
    assert_serves(&wild, &wild_key, "img.cdn.example.test", &roots);
    assert!(!chain.contains("PRIVATE KEY") && key_pem.contains("PRIVATE KEY"));

    // The operator sees them valid, from the local CA; the key is sealed in the store.
    let table = cli.ok(&["domains"]);
    let line = table
        .lines()
        .find(|l| l.starts_with("shop.example.test"))
        .unwrap();
    assert!(
        line.contains("shop/web") && line.contains(" valid "),
        "{table}"
    );
    assert!(line.contains("Meridian local CA"), "{table}");
    let listed = cli.json(&["domains", "--app", "shop"]);
    assert_eq!(listed[0]["source"], "local", "{listed}");
    let db = std::fs::read(data.join("meridian.db")).unwrap();
    let key_body: String = key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    assert!(
        !String::from_utf8_lossy(&db).contains(&key_body[..40]),
        "a private key is in the store in clear"
    );

    // Dropping a domain withdraws its certificate; deleting the service, the rest.
    deploy(&cli, dir.path(), &shop("'*.cdn.example.test'"));
    edge.wait_for(
        DEADLINE,
        "shop.example.test's certificate withdrawn",
        |held| (!held.secrets.contains_key("certificate/shop.example.test")).then_some(()),
    )
    .await;
    cli.ok(&["delete", "service", "web", "--app", "shop", "--org", "acme"]);
    edge.wait_for(DEADLINE, "every certificate withdrawn", |held| {
        let left = held
            .secrets
            .keys()
            .filter(|n| n.starts_with("certificate/"))
            .count();
        (left == 0).then_some(())
    })
    .await;
    assert!(cli.json(&["domains"]).as_array().unwrap().is_empty());
}

#[test]
fn a_missing_or_short_secrets_key_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("secrets.key");
    let run = |extra: &[&str]| {
        let output = std::process::Command::new(MERIDIAN)
            .args([
                "control",
                "--global",
                "--listen",
                "127.0.0.1:0",
                "--xds",
                "127.0.0.1:0",
            ])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--secrets-key")
            .arg(&key)
            .args(extra)
            .output()
            .unwrap();
        assert!(!output.status.success());
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let missing = run(&["--local-ca"]);
    assert!(
        missing.contains("--secrets-key") && missing.contains("does not exist"),
        "{missing}"
    );
    std::fs::write(&key, [7u8; 16]).unwrap();
    let short = run(&[]);
    assert!(
        short.contains("16 bytes") && short.contains("exactly 32"),
        "{short}"
    );
}
