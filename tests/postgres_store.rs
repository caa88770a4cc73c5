//! The global control plane with its store in PostgreSQL (`--store postgres://…`), in a cluster
//! the test starts (skipped without PostgreSQL, unless MERIDIAN_TEST_STRICT=1): it serves the
//! API from it, answers 503 while the database is down and serves again once it is back, and a
//! plane started again on the database finds everything (and its admin token) there.
//!
//! Loopback addresses: 127.0.120.2 (PostgreSQL), 127.0.0.1 port 0 (the plane).

mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use meridian_store::testing::TestPostgres;
use serde_json::{json, Value};
use support::ControlPlane;

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
