//! The API against a real server on port 0 with a real SQLite file.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

/// A registry address nothing listens on (the test servers speak plain HTTP to it).
const CLOSED_REGISTRY: &str = "127.0.210.99:9";

struct Server {
    base: String,
    admin: Option<String>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(dir: &Path) -> Server {
        Self::start_with(dir, meridian_api::Readiness::default()).await
    }

    /// [`Server::start`], ready only as `readiness` says.
    async fn start_with(dir: &Path, readiness: meridian_api::Readiness) -> Server {
        let store = meridian_store::SqlStore::open_sqlite(&dir.join("meridian.db"))
            .await
            .unwrap();
        let store: Arc<dyn meridian_store::Store> = Arc::new(store);
        let admin = meridian_api::bootstrap_admin_token(&*store).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        // Uploaded keys are sealed with a fixed test key.
        let secrets = Arc::new(meridian_identity::SealingKey::from_bytes(&[9; 32]));
        let router = meridian_api::router_with(
            store,
            None,
            Default::default(),
            Default::default(),
            Some(secrets),
            readiness,
            meridian_model::RegistryOptions {
                insecure: vec![CLOSED_REGISTRY.to_owned()],
                ..Default::default()
            },
            None,
        );
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        Server {
            base: format!("http://{addr}"),
            admin,
            task,
        }
    }

    fn as_admin(&self) -> Api {
        Api {
            base: self.base.clone(),
            token: self
                .admin
                .clone()
                .expect("first start prints an admin token"),
        }
    }
}

#[derive(Clone)]
struct Api {
    base: String,
    token: String,
}

impl Api {
    fn with_token(&self, token: &str) -> Api {
        Api {
            base: self.base.clone(),
            token: token.to_owned(),
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = reqwest::Client::new()
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: non-JSON {text:?}: {e}"))
        };
        (status, value)
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    async fn put(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::PUT, path, Some(body)).await
    }

    async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::DELETE, path, None).await
    }

    async fn revision(&self) -> u64 {
        let (status, body) = self.get("/v1/revision").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["revision"].as_u64().unwrap()
    }
}

fn definition(org: &str, name: &str, command: &str) -> Value {
    json!({
        "org": org, "app": "shop", "name": name, "regions": ["fra", "iad"],
        "scale": {"min": 1, "max": 3},
        "runtime": {"process": {"command": command, "env": {"MODE": "base"}}},
        "ports": [{"name": "http", "port": 8080}],
        "routes": [{"path_prefix": "/", "port": "http"}],
        "overrides": {"iad": {"scale": {"max": 9}, "env": {"MODE": "us"}}}
    })
}

async fn with_regions(admin: &Api) {
    for (name, lat, lon) in [("fra", 50.11, 8.68), ("iad", 38.95, -77.45)] {
        let (status, body) = admin
            .put(
                &format!("/v1/regions/{name}"),
                json!({"lat": lat, "lon": lon}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
}

async fn org_token(admin: &Api, org: &str) -> Api {
    let (status, body) = admin.post("/v1/orgs", json!({"name": org})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = admin
        .post(&format!("/v1/orgs/{org}/tokens"), json!({"label": "test"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    admin.with_token(body["secret"].as_str().unwrap())
}

/// A server with regions and orgs `acme` and `other`: the server, its admin and each org's
/// token.
async fn with_two_orgs(dir: &Path) -> (Server, Api, Api, Api) {
    let server = Server::start(dir).await;
    let admin = server.as_admin();
    with_regions(&admin).await;
    let acme = org_token(&admin, "acme").await;
    let other = org_token(&admin, "other").await;
    (server, admin, acme, other)
}

#[tokio::test]
async fn readyz_names_what_the_plane_still_waits_for() {
    let dir = tempfile::tempdir().unwrap();
    let readiness = meridian_api::Readiness::waiting_for(["the store loaded", "the reports"]);
    let server = Server::start_with(dir.path(), readiness.clone()).await;
    let readyz = || async {
        let answer = reqwest::get(format!("{}/readyz", server.base))
            .await
            .unwrap();
        (answer.status(), answer.text().await.unwrap())
    };
    readiness.done("the store loaded");
    assert_eq!(
        readyz().await,
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: waiting for the reports\n".to_owned()
        )
    );
    readiness.done("the reports");
    assert_eq!(readyz().await, (StatusCode::OK, "ready\n".to_owned()));
}

#[tokio::test]
async fn requests_need_a_valid_token_but_health_and_openapi_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let admin = server.as_admin();
    let (status, body) = admin.with_token("mrd_nope").get("/v1/services").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "unauthorized");
    let bare = reqwest::get(format!("{}/v1/services", server.base))
        .await
        .unwrap();
    assert_eq!(bare.status(), StatusCode::UNAUTHORIZED);
    for path in ["/healthz", "/readyz", "/openapi.json", "/metrics"] {
        let response = reqwest::get(format!("{}{path}", server.base))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
    let doc: Value = reqwest::get(format!("{}/openapi.json", server.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert!(doc["paths"]["/v1/services"]["post"].is_object());
    let (status, me) = admin.get("/v1/whoami").await;
    assert_eq!(
        (status, me["admin"].as_bool()),
        (StatusCode::OK, Some(true))
    );
}

/// A server with regions and two orgs, `first` having applied service `service`.
struct Tenants {
    _server: Server,
    admin: Api,
    first: Api,
    second: Api,
}

async fn two_orgs(dir: &Path, first: &str, second: &str, service: &str) -> Tenants {
    let server = Server::start(dir).await;
    let admin = server.as_admin();
    with_regions(&admin).await;
    let first_api = org_token(&admin, first).await;
    let second_api = org_token(&admin, second).await;
    let (status, body) = first_api
        .post("/v1/services", definition(first, service, "v1"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    Tenants {
        _server: server,
        admin,
        first: first_api,
        second: second_api,
    }
}

#[tokio::test]
async fn an_org_token_sees_only_its_org() {
    let dir = tempfile::tempdir().unwrap();
    let Tenants {
        _server,
        admin,
        first: alpha,
        second: beta,
    } = two_orgs(dir.path(), "alpha", "beta", "web").await;
    let web = "/v1/orgs/alpha/apps/shop/services/web";
    assert_eq!(alpha.get(web).await.0, StatusCode::OK);

    // Another org's resources answer 404, whatever the operation.
    for path in [
        web.to_owned(),
        format!("{web}/deployments"),
        format!("{web}/deployments/1"),
        format!("{web}/status"),
        "/v1/orgs/alpha".to_owned(),
        "/v1/orgs/alpha/apps".to_owned(),
        "/v1/orgs/alpha/tokens".to_owned(),
    ] {
        let (status, body) = beta.get(&path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
    }
    let (status, _) = beta
        .post(&format!("{web}/rollback"), json!({"to": 1}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = beta
        .post("/v1/services", definition("alpha", "web", "evil"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(beta.delete(web).await.0, StatusCode::NOT_FOUND);
    let (_, listed) = beta.get("/v1/services").await;
    assert_eq!(listed, json!([]));
    let (_, listed) = beta.get("/v1/services?org=alpha").await;
    assert_eq!(listed, json!([]));
    let (_, orgs) = beta.get("/v1/orgs").await;
    assert_eq!(orgs.as_array().unwrap().len(), 1);
    assert_eq!(orgs[0]["name"], "beta");

    // Org tokens cannot do admin work.
    let (status, _) = alpha
        .put("/v1/regions/sin", json!({"lat": 1.0, "lon": 2.0}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(alpha.get("/v1/revision").await.0, StatusCode::FORBIDDEN);
    // An org token cannot create its org implicitly elsewhere, and alpha's service is intact.
    let (_, current) = alpha.get(web).await;
    assert_eq!(current["definition"]["runtime"]["process"]["command"], "v1");
    // The admin sees everything.
    let (_, all) = admin.get("/v1/services").await;
    assert_eq!(all.as_array().unwrap().len(), 1);

    // A revoked token stops working.
    let (_, tokens) = admin.get("/v1/orgs/beta/tokens").await;
    let id = tokens[0]["id"].as_str().unwrap();
    assert_eq!(
        admin.delete(&format!("/v1/orgs/beta/tokens/{id}")).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(beta.get("/v1/services").await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn each_apply_is_a_version_and_rollback_makes_a_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let admin = server.as_admin();
    with_regions(&admin).await;
    for (i, command) in ["v1", "v2", "v3"].iter().enumerate() {
        let (status, body) = admin
            .post("/v1/services", definition("acme", "web", command))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["version"], i as u64 + 1);
    }
    let web = "/v1/orgs/acme/apps/shop/services/web";
    let (status, body) = admin
        .post(&format!("{web}/rollback"), json!({"to": 1}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["version"], 4);
    assert_eq!(body["origin"], "rollback");
    assert_eq!(body["rolled_back_from"], 1);
    let (_, history) = admin.get(&format!("{web}/deployments")).await;
    let commands: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            d["definition"]["runtime"]["process"]["command"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(commands, ["v1", "v2", "v3", "v1"]);
    let (_, v2) = admin.get(&format!("{web}/deployments/2")).await;
    assert_eq!(v2["definition"]["runtime"]["process"]["command"], "v2");

    let (_, status) = admin.get(&format!("{web}/status")).await;
    assert_eq!(status["version"], 4);
    let regions: Vec<(String, u64, u64)> = status["regions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["region"].as_str().unwrap().to_owned(),
                r["desired"].as_u64().unwrap(),
                r["max"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(regions, [("fra".into(), 1, 3), ("iad".into(), 1, 9)]);

    // What iad's control plane will fetch: the definition with iad's overrides applied.
    let (_, iad) = admin.get("/v1/regions/iad/deployments").await;
    assert_eq!(iad[0]["spec"]["runtime"]["process"]["env"]["MODE"], "us");
    assert_eq!(iad[0]["spec"]["scale"]["max"], 9);
    let (_, fra) = admin.get("/v1/regions/fra/deployments").await;
    assert_eq!(fra[0]["spec"]["runtime"]["process"]["env"]["MODE"], "base");

    let (status, body) = admin
        .post(&format!("{web}/rollback"), json!({"to": 99}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(admin.delete(web).await.0, StatusCode::NO_CONTENT);
    assert_eq!(admin.get(web).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn rejected_requests_change_nothing_and_say_why() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let admin = server.as_admin();
    with_regions(&admin).await;
    let (status, _) = admin
        .post("/v1/services", definition("acme", "web", "v1"))
        .await;
    assert_eq!(status, StatusCode::OK);
    let before = admin.revision().await;

    let mut invalid = definition("acme", "web", "v2");
    invalid["scale"] = json!({"min": 5, "max": 2});
    invalid["regions"] = json!(["fra", "mars"]);
    invalid["colour"] = json!("blue");
    let (status, body) = admin.post("/v1/services", invalid).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "invalid");
    assert_eq!(body["error"]["field"], "colour");
    let mut invalid = definition("acme", "web", "v2");
    invalid["scale"] = json!({"min": 5, "max": 2});
    invalid["regions"] = json!(["fra", "mars"]);
    let (status, body) = admin.post("/v1/services", invalid).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let fields = detail_fields(&body);
    assert_eq!(fields, ["regions[1]", "scale.min", "overrides.iad"]);

    let raw = |body: &'static str| {
        reqwest::Client::new()
            .post(format!("{}/v1/services", server.base))
            .bearer_auth(&admin.token)
            .header("content-type", "application/json")
            .body(body)
    };
    let response = raw("{not json").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["field"], "body");

    let huge = "x".repeat(meridian_api::MAX_BODY_BYTES + 1);
    let response = reqwest::Client::new()
        .post(format!("{}/v1/services", server.base))
        .bearer_auth(&admin.token)
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "payload_too_large");

    let (status, body) = admin
        .get("/v1/orgs/acme/apps/shop/services/web/deployments/notanumber")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = admin.get("/v1/changes?limit=5000").await;
    assert_eq!(
        (status, &body["error"]["field"]),
        (StatusCode::BAD_REQUEST, &json!("limit"))
    );
    let (status, body) = admin
        .put("/v1/regions/Bad_Name", json!({"lat": 91, "lon": 0}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["details"].as_array().unwrap().len(), 2);
    let (status, _) = admin.post("/v1/orgs", json!({"name": "acme"})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, body) = admin.delete("/v1/regions/fra").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, body) = admin.get("/v1/nothing/here").await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (StatusCode::NOT_FOUND, &json!("not_found"))
    );

    assert_eq!(
        admin.revision().await,
        before,
        "a rejected request wrote something"
    );
    let (_, current) = admin.get("/v1/orgs/acme/apps/shop/services/web").await;
    assert_eq!(current["version"], 1);
}

#[tokio::test]
async fn the_change_feed_long_polls_until_a_commit() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let admin = server.as_admin();
    with_regions(&admin).await;
    let after = admin.revision().await;
    let (_, page) = admin.get(&format!("/v1/changes?after={after}")).await;
    assert_eq!(page["changes"], json!([]));
    assert_eq!(page["next_after"], after);
    let waiter = {
        let admin = admin.clone();
        tokio::spawn(async move {
            admin
                .get(&format!("/v1/changes?after={after}&wait_ms=30000"))
                .await
        })
    };
    let (status, _) = admin
        .post("/v1/services", definition("acme", "web", "v1"))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, page) = tokio::time::timeout(Duration::from_secs(30), waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["changes"][0]["key"], "acme/shop/web");
    assert_eq!(page["changes"][0]["revision"], after + 1);
    assert_eq!(page["changes"][0]["version"], 1);
}

#[tokio::test]
async fn the_change_feed_is_ordered_and_gap_free_under_concurrent_writes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let admin = server.as_admin();
    with_regions(&admin).await;
    let start = admin.revision().await;
    const WRITERS: usize = 6;
    const EACH: usize = 15;
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let admin = admin.clone();
            tokio::spawn(async move {
                for i in 0..EACH {
                    let (status, body) = admin
                        .post(
                            "/v1/services",
                            definition("acme", &format!("s{w}-{i}"), "x"),
                        )
                        .await;
                    assert_eq!(status, StatusCode::OK, "{body}");
                }
            })
        })
        .collect();
    // Follow the feed while the writes happen, in small pages.
    let mut after = start;
    let mut seen = Vec::new();
    while seen.len() < WRITERS * EACH {
        let (status, page) = tokio::time::timeout(
            Duration::from_secs(30),
            admin.get(&format!("/v1/changes?after={after}&limit=7&wait_ms=10000")),
        )
        .await
        .expect("the feed stalled");
        assert_eq!(status, StatusCode::OK, "{page}");
        for change in page["changes"].as_array().unwrap() {
            seen.push((
                change["revision"].as_u64().unwrap(),
                change["key"].as_str().unwrap().to_owned(),
            ));
        }
        after = page["next_after"].as_u64().unwrap();
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let revisions: Vec<u64> = seen.iter().map(|(r, _)| *r).collect();
    let expected: Vec<u64> = (start + 1..=start + (WRITERS * EACH) as u64).collect();
    assert_eq!(revisions, expected, "gap or reordering in the feed");
    let mut keys: Vec<&str> = seen.iter().map(|(_, k)| k.as_str()).collect();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(
        keys.len(),
        WRITERS * EACH,
        "every write appears exactly once"
    );
}

#[tokio::test]
async fn a_restarted_server_keeps_state_and_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let first = Server::start(dir.path()).await;
    let admin = first.as_admin();
    with_regions(&admin).await;
    admin
        .post("/v1/services", definition("acme", "web", "v1"))
        .await;
    let revision = admin.revision().await;
    first.task.abort();

    let second = Server::start(dir.path()).await;
    assert!(second.admin.is_none(), "a second admin token was minted");
    let admin = admin.with_token(&admin.token);
    let admin = Api {
        base: second.base.clone(),
        ..admin
    };
    assert_eq!(admin.revision().await, revision);
    let (status, web) = admin.get("/v1/orgs/acme/apps/shop/services/web").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(web["version"], 1);
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_status() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let admin = server.as_admin();
    admin.get("/v1/regions").await;
    admin.with_token("bad").get("/v1/regions").await;
    let text = reqwest::get(format!("{}/metrics", server.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        r#"meridian_api_requests_total{method="GET",route="/v1/regions",status="200"} 1"#,
        r#"meridian_api_requests_total{method="GET",route="/v1/regions",status="401"} 1"#,
        "meridian_api_request_duration_seconds_bucket",
        "meridian_api_store_revision 1",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
}

#[tokio::test]
async fn endpoints_are_registered_listed_by_region_and_validated() {
    let dir = tempfile::tempdir().unwrap();
    let Tenants {
        _server,
        admin,
        first: acme,
        second: globex,
    } = two_orgs(dir.path(), "acme", "globex", "api").await;
    let base = "/v1/orgs/acme/apps/shop/services/api/endpoints";

    let (status, body) = acme
        .put(
            &format!("{base}/i-1"),
            json!({"region": "fra", "address": "127.0.0.2", "ports": {"http": 18080}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["health"], "healthy");
    let (status, _) = acme
        .put(
            &format!("{base}/i-2"),
            json!({"region": "iad", "address": "::1", "health": "draining"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let before = admin.revision().await;
    let (status, body) = acme
        .put(
            &format!("{base}/i-3"),
            json!({"region": "sin", "address": "not-an-ip", "ports": {"grpc": 0}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let fields = detail_fields(&body);
    assert_eq!(fields, ["region", "address", "ports.grpc", "ports.grpc"]);
    let (status, _) = acme
        .put(
            "/v1/orgs/acme/apps/shop/services/nope/endpoints/i-1",
            json!({"region": "fra", "address": "127.0.0.2"}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = globex
        .put(
            &format!("{base}/i-9"),
            json!({"region": "fra", "address": "127.0.0.9"}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        admin.revision().await,
        before,
        "rejected writes changed the store"
    );

    let (status, body) = acme.get(base).await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<&str> = body
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["i-1", "i-2"]);
    let (status, body) = admin.get("/v1/regions/fra/endpoints").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.as_array().unwrap().len(), 1);
    assert_eq!(body[0]["ports"]["http"], 18080);
    let (status, _) = acme.get("/v1/regions/fra/endpoints").await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let (status, _) = acme.delete(&format!("{base}/i-1")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = acme.delete(&format!("{base}/i-1")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, body) = admin.get("/v1/regions/fra/endpoints").await;
    assert_eq!(body.as_array().unwrap().len(), 0);
    let (_, body) = admin.get("/v1/changes?after=0&limit=100").await;
    let kinds: Vec<&str> = body["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["kind"] == "endpoint")
        .map(|c| c["key"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "acme/shop/api/i-1",
            "acme/shop/api/i-2",
            "acme/shop/api/i-1"
        ]
    );
}

#[tokio::test]
async fn region_reports_are_for_admins_validated_and_shown_in_status() {
    let dir = tempfile::tempdir().unwrap();
    let Tenants {
        _server,
        admin,
        first: acme,
        ..
    } = two_orgs(dir.path(), "acme", "globex", "api").await;
    let status_path = "/v1/orgs/acme/apps/shop/services/api/status";
    let states = |body: &Value| -> Vec<(String, String)> {
        body["regions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["region"].as_str().unwrap().to_owned(),
                    r["state"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let (_, body) = acme.get(status_path).await;
    assert_eq!(
        states(&body),
        [
            ("fra".into(), "pending".into()),
            ("iad".into(), "pending".into())
        ]
    );

    let report = |healthy: u32| {
        json!({"nodes": 2, "capacity": 16, "services": [
            {"org": "acme", "app": "shop", "service": "api", "version": 1, "placed": 1, "healthy": healthy}
        ]})
    };
    // Only admins (region control planes) report.
    let (status, _) = acme.put("/v1/regions/fra/report", report(1)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Bad reports name the field, and change nothing.
    let (status, body) = admin
        .put(
            "/v1/regions/fra/report",
            json!({"nodes": 1, "capacity": 1, "services": [
                {"org": "Acme!", "app": "shop", "service": "api", "version": 1, "placed": 1, "healthy": 2}
            ]}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let fields = detail_fields(&body);
    assert_eq!(fields, ["services[0].org", "services[0].healthy"]);
    let (status, _) = admin.put("/v1/regions/mars/report", report(1)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, _) = admin.put("/v1/regions/fra/report", report(1)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, body) = admin.get("/v1/regions/fra/report").await;
    assert_eq!(body["report"]["capacity"], 16);
    let (_, body) = acme.get(status_path).await;
    assert_eq!(
        states(&body),
        [
            ("fra".into(), "running".into()),
            ("iad".into(), "pending".into())
        ]
    );
    assert_eq!(body["regions"][0]["healthy"], 1);
    assert_eq!(body["regions"][0]["report_age_seconds"], 0);
    assert_eq!(body["regions"][1]["report_age_seconds"], Value::Null);
    admin.put("/v1/regions/fra/report", report(0)).await;
    let (_, body) = acme.get(status_path).await;
    assert_eq!(states(&body)[0].1, "starting");
}

/// `definition` with public `domains`.
fn serving(org: &str, name: &str, domains: &[&str]) -> Value {
    let mut body = definition(org, name, "v1");
    body["domains"] = json!(domains);
    body
}

/// Applies `body` and expects it accepted.
async fn accepted(api: &Api, body: Value) {
    let (status, answer) = api.post("/v1/services", body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
}

/// Applies `body` and expects 409 `domain_taken` on `field`, with a message naming `domain`
/// and never `hidden`; returns the message.
async fn refused(api: &Api, body: Value, field: &str, domain: &str, hidden: &str) -> String {
    let (status, error) = api.post("/v1/services", body).await;
    assert_eq!(status, StatusCode::CONFLICT, "{error}");
    assert_eq!(error["error"]["code"], "domain_taken", "{error}");
    assert_eq!(error["error"]["field"], field, "{error}");
    let message = error["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.contains(&format!("`{domain}`")), "{message}");
    assert!(!message.contains(hidden), "{message} names {hidden}");
    message
}

#[tokio::test]
async fn a_public_domain_belongs_to_one_service_across_orgs() {
    let dir = tempfile::tempdir().unwrap();
    let Tenants {
        _server,
        admin,
        first: acme,
        second: evil,
    } = two_orgs(dir.path(), "acme", "evil", "other").await;
    let owner = serving("acme", "web", &["shop.example.com", "*.cdn.example.com"]);
    accepted(&acme, owner.clone()).await;
    let before = admin.revision().await;

    // Another org: the same name, a wildcard over it, a name under the owner's wildcard, and a
    // wider wildcard over that one. Each is refused on its field, naming neither org nor app.
    let attempts = [
        (
            vec!["mine.example.org", "shop.example.com"],
            "domains[1]",
            "shop.example.com",
        ),
        (vec!["*.example.com"], "domains[0]", "*.example.com"),
        (
            vec!["img.cdn.example.com"],
            "domains[0]",
            "img.cdn.example.com",
        ),
        (
            vec!["*.a.cdn.example.com"],
            "domains[0]",
            "*.a.cdn.example.com",
        ),
    ];
    for (domains, field, domain) in attempts {
        let message = refused(
            &evil,
            serving("evil", "web", &domains),
            field,
            domain,
            "acme",
        )
        .await;
        assert!(message.contains("another org"), "{message}");
        assert!(!message.contains("shop/web"), "{message}");
    }
    // The admin applying into another org is refused too, and told which service of which
    // org holds the domain; another service of the owner's own org is told which one holds it.
    let message = refused(
        &admin,
        serving("evil", "web", &["shop.example.com"]),
        "domains[0]",
        "shop.example.com",
        "evil/",
    )
    .await;
    assert!(message.contains("`acme/shop/web`"), "{message}");
    let message = refused(
        &acme,
        serving("acme", "api", &["x.cdn.example.com"]),
        "domains[0]",
        "x.cdn.example.com",
        "evil",
    )
    .await;
    assert!(
        message.contains("`shop/web`") && message.contains("`*.cdn.example.com`"),
        "{message}"
    );

    // Nothing changed: no revision, no service, the owner's version and domains as they were.
    assert_eq!(
        admin.revision().await,
        before,
        "a refused claim wrote something"
    );
    let (status, _) = evil.get("/v1/orgs/evil/apps/shop/services/web").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, current) = acme.get("/v1/orgs/acme/apps/shop/services/web").await;
    assert_eq!(current["version"], 1);
    assert_eq!(current["definition"]["domains"], owner["domains"]);

    // The owner re-applies with its own domains; a neighbour name is free for others.
    accepted(&acme, owner.clone()).await;
    accepted(
        &evil,
        serving("evil", "web", &["cdn.example.com", "shop.example.org"]),
    )
    .await;

    // A domain the owner drops is free; a rollback to the version that had it is refused
    // once another service took it.
    accepted(&acme, serving("acme", "web", &["*.cdn.example.com"])).await;
    accepted(
        &evil,
        serving("evil", "web", &["cdn.example.com", "shop.example.com"]),
    )
    .await;
    let (status, body) = acme
        .post(
            "/v1/orgs/acme/apps/shop/services/web/rollback",
            json!({"to": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["field"], "domains[0]");

    // Deleting a service releases its domains.
    let (status, _) = acme.delete("/v1/orgs/acme/apps/shop/services/web").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    accepted(&evil, serving("evil", "web", &["*.example.com"])).await;

    // The OpenAPI document says so.
    let doc: Value = reqwest::get(format!("{}/openapi.json", _server.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let conflict = &doc["paths"]["/v1/services"]["post"]["responses"]["409"]["description"];
    assert!(
        conflict.as_str().unwrap().contains("domain_taken"),
        "{conflict}"
    );
}

#[tokio::test]
async fn of_concurrent_claims_of_one_domain_exactly_one_wins() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let admin = server.as_admin();
    with_regions(&admin).await;
    let claims = (0..8).map(|n| {
        let admin = admin.clone();
        // Half claim the name, half a wildcard over it.
        let domain = if n % 2 == 0 {
            "shop.example.com"
        } else {
            "*.example.com"
        };
        tokio::spawn(async move {
            let org = format!("org{n}");
            admin
                .post("/v1/services", serving(&org, "web", &[domain]))
                .await
                .0
        })
    });
    let mut statuses = Vec::new();
    for claim in claims.collect::<Vec<_>>() {
        statuses.push(claim.await.unwrap());
    }
    let won = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let lost = statuses
        .iter()
        .filter(|s| **s == StatusCode::CONFLICT)
        .count();
    assert_eq!((won, lost), (1, 7), "{statuses:?}");
    let (_, services) = admin.get("/v1/services").await;
    assert_eq!(services.as_array().unwrap().len(), 1, "{services}");
}

/// A self-signed certificate for `names`, valid from `from` to `to` (seconds from now), and its
/// key, PEM.
fn certificate(names: &[&str], from: i64, to: i64) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = rcgen::CertificateParams::new(names).unwrap();
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now + time::Duration::seconds(from);
    params.not_after = now + time::Duration::seconds(to);
    (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
}

fn upload(chain: &str, key: &str) -> Value {
    json!({"certificate": chain, "private_key": key})
}

#[tokio::test]
async fn domains_show_their_certificates_and_an_upload_is_checked_before_it_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let Tenants {
        _server,
        admin,
        first: acme,
        second: evil,
    } = two_orgs(dir.path(), "acme", "evil", "other").await;
    accepted(
        &acme,
        serving("acme", "web", &["shop.example.com", "*.cdn.example.com"]),
    )
    .await;

    let (status, listed) = acme.get("/v1/domains").await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["domain"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["*.cdn.example.com", "shop.example.com"]);
    assert_eq!(listed[1]["state"], "pending");
    assert_eq!(listed[1]["service"], "web");
    let (_, theirs) = evil.get("/v1/domains").await;
    assert_eq!(theirs, json!([]));
    let (_, all) = admin.get("/v1/domains?app=shop").await;
    assert_eq!(all.as_array().unwrap().len(), 2);

    let (chain, key) = certificate(&["shop.example.com"], -60, 86_400);
    let (_, other_key) = certificate(&["shop.example.com"], -60, 86_400);
    let (old_chain, old_key) = certificate(&["shop.example.com"], -86_400, -60);
    let (www_chain, www_key) = certificate(&["www.example.com"], -60, 86_400);
    let before = admin.revision().await;
    let path = "/v1/domains/shop.example.com/certificate";
    let refusals = [
        (
            &evil,
            path,
            upload(&chain, &key),
            StatusCode::NOT_FOUND,
            None,
        ),
        (
            &acme,
            "/v1/domains/other.example.com/certificate",
            upload(&chain, &key),
            StatusCode::NOT_FOUND,
            None,
        ),
        (
            &acme,
            "/v1/domains/bad..example/certificate",
            upload(&chain, &key),
            StatusCode::BAD_REQUEST,
            Some("domain"),
        ),
        (
            &acme,
            path,
            upload(&chain, &other_key),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("private_key"),
        ),
        (
            &acme,
            path,
            upload(&old_chain, &old_key),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("certificate"),
        ),
        (
            &acme,
            path,
            upload(&www_chain, &www_key),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("certificate"),
        ),
        (
            &acme,
            path,
            upload("not pem", &key),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("certificate"),
        ),
    ];
    for (api, path, body, status, field) in refusals {
        let (got, error) = api.put(path, body).await;
        assert_eq!(got, status, "{path}: {error}");
        if let Some(field) = field {
            assert_eq!(error["error"]["field"], field, "{error}");
        }
    }
    let (_, error) = acme.put(path, upload(&old_chain, &old_key)).await;
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{error}"
    );
    assert_eq!(
        admin.revision().await,
        before,
        "a refused upload wrote something"
    );

    let (status, stored) = acme.put(path, upload(&chain, &key)).await;
    assert_eq!(status, StatusCode::OK, "{stored}");
    assert_eq!(stored["state"], "valid");
    assert_eq!(stored["source"], "upload");
    assert!(stored["not_after"].as_i64().unwrap() > 0);
    assert!(stored.get("private_key").is_none());
    let (wild_chain, wild_key) = certificate(&["*.cdn.example.com"], -60, 86_400);
    let (status, stored) = acme
        .put(
            "/v1/domains/*.cdn.example.com/certificate",
            upload(&wild_chain, &wild_key),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{stored}");
    let (_, listed) = acme.get("/v1/domains").await;
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["state"] == "valid"),
        "{listed}"
    );
}

#[tokio::test]
async fn secrets_are_set_listed_without_values_referenced_and_kept_while_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, admin, acme, other) = with_two_orgs(dir.path()).await;
    let secret = "/v1/orgs/acme/apps/shop/secrets/DB_PASSWORD";
    let value = "hunter2-do-not-show";

    // A deploy naming a secret that does not exist is refused, naming the field; nothing stored.
    let using = using_db_password("acme");
    let before = admin.revision().await;
    let (status, body) = acme.post("/v1/services", using.clone()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["field"], "runtime.process.env.DB_PASSWORD");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("secret `DB_PASSWORD` does not exist"),
        "{body}"
    );
    assert_eq!(admin.revision().await, before);

    // Bad names and values are refused naming the field.
    let (status, body) = acme
        .put(
            "/v1/orgs/acme/apps/shop/secrets/1BAD",
            json!({"value": "x"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["field"], "name");
    let huge = "x".repeat(64 * 1024 + 1);
    let (status, body) = acme.put(secret, json!({"value": huge})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["field"], "value");
    let (status, body) = acme.put(secret, json!({"valeu": "x"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(admin.revision().await, before);

    // Set, set again with the same value (no new version), change.
    set_twice(&acme, secret, value).await;
    let (_, body) = acme.put(secret, json!({"value": "changed"})).await;
    assert_eq!(body["version"], 2, "{body}");
    let (status, list) = acme.get("/v1/orgs/acme/apps/shop/secrets").await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["version"], 2);
    assert!(!list.to_string().contains("changed"), "{list}");

    // Another org sees nothing of them.
    let (status, _) = other.get("/v1/orgs/acme/apps/shop/secrets").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = other.put(secret, json!({"value": "x"})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Now the deploy goes through; the secret is then in use.
    kept_while_in_use(&acme, secret, using, "web").await;
}

/// Sets the new secret `DB_PASSWORD` at `secret` (an API path) to `value`: version 1, and still
/// 1 when set to the same value again.
async fn set_twice(acme: &Api, secret: &str, value: &str) {
    let (status, body) = acme.put(secret, json!({"value": value})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (body["name"].clone(), body["version"].clone()),
        (json!("DB_PASSWORD"), json!(1))
    );
    let (_, body) = acme.put(secret, json!({"value": value})).await;
    assert_eq!(
        body["version"], 1,
        "the same value is no new version: {body}"
    );
}

/// `definition` of `org/shop/web`, its env `DB_PASSWORD: {secret: DB_PASSWORD}`.
fn using_db_password(org: &str) -> Value {
    let mut using = definition(org, "web", "hello");
    using["runtime"]["process"]["env"]["DB_PASSWORD"] = json!({"secret": "DB_PASSWORD"});
    using
}

/// Deploys `using`, which references the secret at `secret` (an API path): deleting the
/// secret is then refused naming `users`; once the service is gone it goes.
async fn kept_while_in_use(acme: &Api, secret: &str, using: Value, users: &str) {
    let (status, body) = acme.post("/v1/services", using).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = acme.delete(secret).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains(users), "{body}");
    let (status, _) = acme.delete("/v1/orgs/acme/apps/shop/services/web").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = acme.delete(secret).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, _) = acme.delete(secret).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn org_secrets_are_managed_by_their_org_only_resolved_by_its_apps_and_kept_while_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _, acme, other) = with_two_orgs(dir.path()).await;
    let secret = "/v1/orgs/acme/secrets/DB_PASSWORD";
    let value = "org-hunter2-do-not-show";

    let (status, body) = acme
        .put("/v1/orgs/acme/secrets/1BAD", json!({"value": "x"}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["field"], "name");
    set_twice(&acme, secret, value).await;
    let (status, list) = acme.get("/v1/orgs/acme/secrets").await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list[0]["name"], "DB_PASSWORD");
    assert!(!list.to_string().contains(value), "{list}");
    let (_, apps) = acme.get("/v1/orgs/acme/apps/shop/secrets").await;
    assert_eq!(apps, json!([]), "an org's secret is not an app's");

    // Another org sees nothing of them, nor may its services use them.
    for (status, _) in [
        other.get("/v1/orgs/acme/secrets").await,
        other.put(secret, json!({"value": "x"})).await,
        other.delete(secret).await,
    ] {
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    let (status, body) = other.post("/v1/services", using_db_password("other")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["field"], "runtime.process.env.DB_PASSWORD");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("nor in org `other`"), "{message}");

    // acme's services resolve to it; it is then in use.
    kept_while_in_use(&acme, secret, using_db_password("acme"), "shop/web").await;

    // The OpenAPI document describes the routes.
    let doc: Value = reqwest::get(format!("{}/openapi.json", server.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paths = &doc["paths"];
    assert!(
        paths["/v1/orgs/{org}/secrets"]["get"].is_object(),
        "{paths}"
    );
    let one = &paths["/v1/orgs/{org}/secrets/{name}"];
    assert!(one["put"].is_object() && one["delete"].is_object(), "{one}");
}

#[tokio::test]
async fn an_image_whose_registry_cannot_be_reached_is_refused_naming_its_field() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let admin = server.as_admin();
    with_regions(&admin).await;
    let before = admin.revision().await;
    let mut image = definition("acme", "web", "v1");
    image["runtime"] = json!({"image": {"ref": format!("{CLOSED_REGISTRY}/shop/web:v1")}});
    image["overrides"] =
        json!({"iad": {"runtime": {"image": {"ref": format!("{CLOSED_REGISTRY}/shop/web:v2")}}}});
    let (status, body) = admin.post("/v1/services", image).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let fields = detail_fields(&body);
    assert_eq!(
        fields,
        ["runtime.image.ref", "overrides.iad.runtime.image.ref"],
        "{body}"
    );
    let message = body["error"]["details"][0]["message"].as_str().unwrap();
    assert!(message.contains("registry unreachable"), "{message}");
    assert_eq!(admin.revision().await, before, "nothing was stored");
}

/// The fields an error's details name, in order.
fn detail_fields(body: &Value) -> Vec<&str> {
    body["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn a_purge_of_an_apps_cached_responses_is_checked_numbered_and_stored() {
    let dir = tempfile::tempdir().unwrap();
    let (server, admin, acme, other) = with_two_orgs(dir.path()).await;
    let purges = "/v1/orgs/acme/apps/shop/purges";
    // An app that serves no public domain has nothing cached at the edges.
    accepted(&acme, definition("acme", "worker", "v1")).await;
    let (status, error) = acme.post(purges, json!({"all": true})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{error}");
    assert_eq!(error["error"]["field"], "app", "{error}");
    accepted(
        &acme,
        serving("acme", "web", &["shop.example.com", "*.img.example.com"]),
    )
    .await;
    let before = admin.revision().await;
    for (body, field) in [
        (json!({}), "url"),
        (
            json!({"url": "https://shop.example.com/a", "tag": "t"}),
            "tag",
        ),
        (json!({"tag": "t", "all": true}), "all"),
        (json!({"all": false}), "all"),
        (json!({"tag": ""}), "tag"),
        (json!({"tag": "a,b"}), "tag"),
        (json!({"url": "https://other.example.com/a"}), "url"),
        (json!({"url": "/a"}), "url"),
        (json!({"url": "https://shop.example.com/#top"}), "url"),
        (json!({"uri": "https://shop.example.com/"}), "uri"),
    ] {
        let (status, error) = acme.post(purges, body.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {error}");
        assert_eq!(error["error"]["field"], field, "{body}: {error}");
    }
    assert_eq!(
        acme.post("/v1/orgs/acme/apps/none/purges", json!({"all": true}))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        other.post(purges, json!({"all": true})).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(admin.revision().await, before, "bad purges change nothing");
    // Without a plane that sends purges to edges, the answer says nothing of them.
    let (status, accepted) = acme
        .post(purges, json!({"url": "https://a.img.example.com/x.png"}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    let purge = &accepted["purge"];
    assert_eq!(purge["sequence"], 1, "{accepted}");
    assert_eq!(
        purge["target"],
        json!({"url": "https://a.img.example.com/x.png"})
    );
    assert_eq!(
        accepted["domains"],
        json!(["*.img.example.com", "shop.example.com"])
    );
    assert!(accepted.get("edges").is_none(), "{accepted}");
    let (_, accepted) = admin.post(purges, json!({"tag": "product-7"})).await;
    assert_eq!(accepted["purge"]["sequence"], 2, "{accepted}");
    assert_eq!(accepted["purge"]["target"], json!({"tag": "product-7"}));
    // Counted; with no edge's record, neither applied nor missed.
    let metrics = reqwest::get(format!("{}/metrics", server.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "meridian_api_cache_purges_total 2",
        "meridian_api_cache_purge_newest 2",
        "meridian_api_cache_purge_apply_seconds_count 0",
        "meridian_api_cache_purge_unapplied_edges_total 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
}
