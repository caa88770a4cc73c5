//! Certificates owned by the platform, end to end: the global control plane issues every
//! claimed domain a certificate (its local CA, or ACME against pebble), and the edges get it
//! over xDS as `certificate/<domain>`; a deleted service's certificates go away.

mod support;

use std::time::{Duration, Instant};

use support::edge_feed::{answer_http01, answer_tls_alpn01, assert_serves, follow_as_edge};
use support::pebble::Pebble;
use support::{Cli, ControlPlane, MERIDIAN};

const DEADLINE: Duration = Duration::from_secs(30);

fn shop(domains: &str) -> String {
    support::shop_web("/bin/true", domains, "")
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

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_is_served_as_is_and_a_later_issuer_takes_the_domains_that_waited() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let key = dir.path().join("secrets.key");
    let secrets = [
        "--secrets-key",
        key.to_str().unwrap(),
        "--create-secrets-key",
    ];
    let (mut global, cli) = platform(&data, &secrets);
    deploy(
        &cli,
        dir.path(),
        &shop("shop.example.test, www.example.test"),
    );
    let listed = cli.json(&["domains"]);
    for domain in listed.as_array().unwrap() {
        assert_eq!(domain["state"], "pending", "{listed}");
    }
    let edge = follow_as_edge(&data, &global.xds);
    let waiting = edge
        .wait_for(DEADLINE, "a reason to wait", |_| {
            let listed = cli.json(&["domains"]);
            let error = listed[1]["last_error"].as_str()?.to_owned();
            Some(error)
        })
        .await;
    assert!(
        waiting.contains("no issuer") && waiting.contains("meridian cert add"),
        "{waiting}"
    );

    // An upload is checked, stored and served as it is.
    let cert_key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["shop.example.test".to_owned()])
        .unwrap()
        .self_signed(&cert_key)
        .unwrap();
    let (cert_file, key_file) = (dir.path().join("shop.pem"), dir.path().join("shop.key"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, cert_key.serialize_pem()).unwrap();
    let said = cli.ok(&[
        "cert",
        "add",
        "shop.example.test",
        "--cert",
        cert_file.to_str().unwrap(),
        "--key",
        key_file.to_str().unwrap(),
    ]);
    assert!(said.contains("expires"), "{said}");
    let (chain, served_key) = edge.certificate("shop.example.test", DEADLINE).await;
    assert_eq!(
        (chain.as_str(), served_key.as_str()),
        (cert.pem().as_str(), cert_key.serialize_pem().as_str())
    );
    let refused = cli.fails(&[
        "cert",
        "add",
        "www.example.test",
        "--cert",
        cert_file.to_str().unwrap(),
        "--key",
        key_file.to_str().unwrap(),
    ]);
    assert!(
        refused.contains("do not cover `www.example.test`"),
        "{refused}"
    );
    drop(edge);

    // Started again with the local CA, the plane issues the domain that waited and leaves the
    // upload alone.
    global.stop();
    let global = ControlPlane::start_with(&data, &[&secrets[..2], &["--local-ca"]].concat());
    let cli = Cli {
        api: global.api.clone(),
        token: cli.token.clone(),
    };
    let edge = follow_as_edge(&data, &global.xds);
    let (www, www_key) = edge.certificate("www.example.test", DEADLINE).await;
    let roots = std::fs::read_to_string(data.join("public-ca/ca.pem")).unwrap();
    assert_serves(&www, &www_key, "www.example.test", &roots);
    let (chain, _) = edge.certificate("shop.example.test", DEADLINE).await;
    assert_eq!(chain, cert.pem());
    let listed = cli.json(&["domains"]);
    assert_eq!(listed[0]["source"], "upload", "{listed}");
    assert_eq!(listed[1]["source"], "local", "{listed}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_sealed_with_another_secrets_key_is_not_served_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (first, second) = (dir.path().join("first.key"), dir.path().join("second.key"));
    let with = |key: &std::path::Path| {
        let key = key.to_str().unwrap().to_owned();
        vec![
            "--secrets-key".to_owned(),
            key,
            "--create-secrets-key".to_owned(),
            "--local-ca".to_owned(),
        ]
    };
    let args = with(&first);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (mut global, cli) = platform(&data, &args);
    deploy(&cli, dir.path(), &shop("shop.example.test"));
    let edge = follow_as_edge(&data, &global.xds);
    edge.certificate("shop.example.test", DEADLINE).await;
    drop(edge);
    global.stop();

    let args = with(&second);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let global = ControlPlane::start_with(&data, &args);
    let cli = Cli {
        api: global.api.clone(),
        token: cli.token.clone(),
    };
    let edge = follow_as_edge(&data, &global.xds);
    // The plane runs on: new session ticket keys, no certificate for the domain, and why.
    edge.wait_for(DEADLINE, "new session ticket keys", |held| {
        held.secrets.get("session-ticket-keys").map(|_| ())
    })
    .await;
    let error = edge
        .wait_for(DEADLINE, "the reason", |_| {
            let listed = cli.json(&["domains"]);
            Some(listed[0]["last_error"].as_str()?.to_owned())
        })
        .await;
    assert!(
        error.contains("certificate/shop.example.test") && error.contains("--secrets-key"),
        "{error}"
    );
    assert!(!edge
        .held
        .lock()
        .unwrap()
        .secrets
        .contains_key("certificate/shop.example.test"));
    assert!(reqwest::get(format!("{}/healthz", global.api))
        .await
        .unwrap()
        .status()
        .is_success());
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

#[tokio::test(flavor = "multi_thread")]
async fn acme_against_pebble_goes_from_pending_to_valid_with_the_edges_answering_http_01() {
    order_from_pebble("http-01").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn acme_against_pebble_goes_from_pending_to_valid_with_the_edges_answering_tls_alpn_01() {
    order_from_pebble("tls-alpn-01").await;
}

/// A control plane ordering from pebble with `challenge`, the test answering both challenges
/// as an edge: the domain goes pending, then valid, and its certificate reaches the edge.
async fn order_from_pebble(challenge: &str) {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut pebble) = Pebble::start(dir.path()).await else {
        return;
    };
    let data = dir.path().join("data");
    let args = pebble.control_args(&dir.path().join("secrets.key"), challenge);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (global, cli) = platform(&data, &args);
    let edge = follow_as_edge(&data, &global.xds);
    edge.wait_for(DEADLINE, "the session ticket keys", |held| {
        held.secrets.get("session-ticket-keys").map(|_| ())
    })
    .await;
    let _http01 = answer_http01(pebble.http01.take().unwrap(), edge.held.clone());
    let _tls_alpn01 = answer_tls_alpn01(pebble.tls_alpn01.take().unwrap(), edge.held.clone());

    let started = Instant::now();
    deploy(
        &cli,
        dir.path(),
        &shop("shop.example.test, '*.wild.example.test'"),
    );
    // The API shows the domain pending, then valid.
    let pebble_log = || std::fs::read_to_string(dir.path().join("pebble.log")).unwrap_or_default();
    let (seen, shop) = cli.wait_valid("shop.example.test", pebble_log).await;
    assert_eq!(shop["source"], "acme", "{shop}");
    assert_eq!(seen, ["pending", "valid"]);
    let (chain, key_pem) = edge.certificate("shop.example.test", DEADLINE).await;
    let took = started.elapsed();
    eprintln!("domain added -> certificate at the edge (ACME {challenge}, pebble): {took:?}");
    assert_serves(
        &chain,
        &key_pem,
        "shop.example.test",
        &pebble.issuing_root().await,
    );

    // The challenges are gone; the wildcard waits for an upload, saying so.
    edge.wait_for(DEADLINE, "the challenges withdrawn", |held| {
        held.challenges.is_empty().then_some(())
    })
    .await;
    let listed = cli.json(&["domains"]);
    let wild = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["domain"] == "*.wild.example.test")
        .unwrap();
    assert_eq!(wild["state"], "pending", "{wild}");
    assert!(
        wild["last_error"]
            .as_str()
            .unwrap()
            .contains("meridian cert add"),
        "{wild}"
    );
    let metrics = support::metrics(&global.api).await;
    assert!(
        metrics.contains("meridian_control_acme_orders_total{result=\"issued\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("meridian_control_certificates{state=\"valid\"} 1"),
        "{metrics}"
    );
}

#[test]
fn the_dns_answer_points_a_queries_at_the_given_address() {
    // id 0x1234, RD, one question: a.test A IN.
    let query = [
        0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'a', 4, b't', b'e', b's', b't', 0, 0, 1, 0, 1,
    ];
    let edge = || std::net::Ipv4Addr::new(127, 0, 92, 3);
    let answer = support::pebble::dns_answer(&query, edge).unwrap();
    assert_eq!(&answer[..4], &[0x12, 0x34, 0x81, 0x80]);
    assert_eq!(answer[7], 1, "one answer");
    assert_eq!(&answer[answer.len() - 4..], &[127, 0, 92, 3]);
    let mut aaaa = query;
    aaaa[21] = 28;
    assert_eq!(
        support::pebble::dns_answer(&aaaa, || unreachable!("an AAAA query")).unwrap()[7],
        0,
        "no AAAA record"
    );
    assert!(support::pebble::dns_answer(&query[..15], edge).is_none());
}
