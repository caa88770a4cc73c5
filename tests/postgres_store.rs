//! The global control plane with its store in PostgreSQL (`--store postgres://…`), in a cluster
//! the test starts (skipped without PostgreSQL, unless MERIDIAN_TEST_STRICT=1): it serves the
//! API from it, answers 503 while the database is down and serves again once it is back, and a
//! plane started again on the database finds everything (and its admin token) there. A store
//! backed up from SQLite (`meridian backup`) and restored into PostgreSQL (`meridian restore`)
//! gives the same API answers.
//!
//! Loopback addresses: 127.0.120.2 (PostgreSQL), 127.0.0.1 port 0 (the plane).

mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use meridian_store::testing::TestPostgres;
use serde_json::{json, Value};
use support::{Cli, ControlPlane, MERIDIAN};

const POSTGRES_HOST: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 120, 2));
const DEADLINE: Duration = Duration::from_secs(30);

/// `PUT /v1/regions/{name}` as `token`; the status and the body.
async fn put_region(api: &str, token: &str, name: &str) -> (reqwest::StatusCode, Value) {
    let answer = reqwest::Client::new()
        .put(format!("{api}/v1/regions/{name}"))
        .bearer_auth(token)
        .json(&json!({"lat": 50.1, "lon": 8.7}))
        .send()
        .await
        .unwrap();
    (answer.status(), answer.json().await.unwrap())
}

/// The names of the regions, as `token` lists them.
async fn regions(api: &str, token: &str) -> Vec<String> {
    let listed: Value = reqwest::Client::new()
        .get(format!("{api}/v1/regions"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names = listed.as_array().unwrap().iter();
    names
        .map(|r| r["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_global_plane_on_postgres_answers_503_while_the_database_is_down_and_keeps_its_state() {
    let Some(cluster) = TestPostgres::start(POSTGRES_HOST) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = cluster.url();
    let mut global = ControlPlane::start_with(dir.path(), &["--store", &url]);
    let token = global
        .token
        .clone()
        .expect("a first start shows the admin token");
    let (status, _) = put_region(&global.api, &token, "fra").await;
    assert!(status.is_success(), "{status}");
    assert!(
        !dir.path().join("meridian.db").exists(),
        "no SQLite database beside PostgreSQL"
    );

    cluster.stop();
    let (status, body) = put_region(&global.api, &token, "iad").await;
    assert_eq!(status, reqwest::StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("database is unreachable"), "{message}");

    cluster.start_again();
    let end = Instant::now() + DEADLINE;
    loop {
        let (status, body) = put_region(&global.api, &token, "iad").await;
        if status.is_success() {
            break;
        }
        assert_eq!(status, reqwest::StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(Instant::now() < end, "still {status} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(regions(&global.api, &token).await, ["fra", "iad"]);

    // Another plane on the database (this one, started again) finds everything there.
    global.start_again();
    assert_eq!(regions(&global.api, &token).await, ["fra", "iad"]);
}

/// What the API answers `token` at each of a list of paths: status and body.
async fn answers(api: &str, token: &str) -> Vec<(String, u16, Value)> {
    let service = "/v1/orgs/demo/apps/shop/services/web";
    let paths = [
        "/v1/whoami".to_owned(),
        "/v1/revision".to_owned(),
        "/v1/changes?after=0&limit=1000".to_owned(),
        "/v1/orgs".to_owned(),
        "/v1/orgs/demo/tokens".to_owned(),
        "/v1/orgs/demo/apps".to_owned(),
        "/v1/regions".to_owned(),
        "/v1/services".to_owned(),
        "/v1/domains".to_owned(),
        "/v1/regions/fra/deployments".to_owned(),
        service.to_owned(),
        format!("{service}/deployments"),
        format!("{service}/deployments/2"),
        format!("{service}/rollouts"),
    ];
    let client = reqwest::Client::new();
    let mut answers = Vec::new();
    for path in paths {
        let answer = client
            .get(format!("{api}{path}"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = answer.status().as_u16();
        answers.push((path, status, answer.json().await.unwrap()));
    }
    answers
}

/// Runs `meridian ARGS` (not a client command), which must succeed; its standard output.
fn meridian(args: &[&str]) -> String {
    let out = std::process::Command::new(MERIDIAN)
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "meridian {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn a_store_backed_up_from_sqlite_and_restored_into_postgres_gives_the_same_answers() {
    let Some(cluster) = TestPostgres::start(POSTGRES_HOST) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sqlite_dir = dir.path().join("sqlite");
    let mut first = ControlPlane::start(&sqlite_dir);
    let token = first
        .token
        .clone()
        .expect("a first start shows the admin token");
    let cli = Cli {
        api: first.api.clone(),
        token: token.clone(),
    };
    cli.ok(&["region", "add", "fra", "--lat", "50.11", "--lon", "8.68"]);
    cli.ok(&["region", "add", "iad", "--lat", "38.95", "--lon", "-77.45"]);
    let hello = std::fs::read_to_string(support::repo_root().join("examples/hello.yaml")).unwrap();
    let second_version = dir.path().join("hello.yaml");
    std::fs::write(
        &second_version,
        hello.replace("GREETING: hello", "GREETING: hi"),
    )
    .unwrap();
    cli.ok(&["deploy", "--detach", "-f", "examples/hello.yaml"]);
    cli.ok(&["deploy", "--detach", "-f", second_version.to_str().unwrap()]);
    cli.ok(&[
        "rollback", "web", "--app", "shop", "--org", "demo", "--to", "1",
    ]);
    cli.ok(&["token", "create", "--org", "demo"]);
    let before = answers(&first.api, &token).await;
    assert!(
        before.iter().all(|(_, status, _)| *status == 200),
        "{before:?}"
    );
    first.stop();

    let file = dir.path().join("store.backup");
    let file = file.to_str().unwrap();
    let data_dir = sqlite_dir.to_str().unwrap();
    meridian(&["backup", "--data-dir", data_dir, "--output", file]);
    let url = cluster.url();
    meridian(&["restore", "--store", &url, file]);
    let second = ControlPlane::start_with(&dir.path().join("postgres"), &["--store", &url]);
    assert_eq!(
        second.token, None,
        "the restored admin token stays the admin's"
    );
    assert_eq!(answers(&second.api, &token).await, before);

    // Only into an empty store.
    let again = std::process::Command::new(MERIDIAN)
        .args(["restore", "--store", &url, file])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        !again.status.success() && stderr.contains("restores only into an empty store"),
        "{stderr}"
    );
}
