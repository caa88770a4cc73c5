//! The edge's shared HTTP cache end to end: client → edge (cache) → gateway → node proxy →
//! instance. The instance (meridian-hello) sends no freshness information, so the service's
//! `cache.default_ttl` is what makes its answers cacheable; a service without `cache:` is not
//! cached, and a new definition changes that at the edge without a rollout.

mod support;

use std::time::{Duration, Instant};

use support::{agent, edge, gateway, Deployed, RegionalPlane, HELLO};

const DEADLINE: Duration = Duration::from_secs(60);

fn shop(cache: &str) -> String {
    format!(
        "\
org: acme
app: shop
name: web
regions: [fra]
runtime: {{process: {{command: {HELLO}}}}}
ports: [{{name: http, port: 8080}}]
routes: [{{path_prefix: /, port: http}}]
domains: [shop.example.com]
health_checks: [{{http: {{port: http, path: /healthz}}, interval: 200ms, timeout: 200ms, grace_period: 5s}}]
{cache}
"
    )
}

/// `GET http://shop.example.com{path}` through `edge`: status, `Cache-Status`, `Age`, body.
async fn get(edge: &str, path: &str) -> (u16, String, Option<String>, String) {
    let response = reqwest::Client::new()
        .get(format!("http://{edge}{path}"))
        .header("host", "shop.example.com")
        .send()
        .await
        .unwrap();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (cache_status, age) = (header("cache-status").unwrap_or_default(), header("age"));
    let status = response.status().as_u16();
    (status, cache_status, age, response.text().await.unwrap())
}

/// Asks `edge` for `path` until `done` holds of the answer; panics after the deadline.
async fn until(edge: &str, path: &str, what: &str, done: impl Fn(u16, &str) -> bool) {
    let end = Instant::now() + DEADLINE;
    loop {
        let (status, cache_status, _, body) = get(edge, path).await;
        if done(status, &cache_status) {
            return;
        }
        assert!(
            Instant::now() < end,
            "never {what}: {status} {cache_status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_answers_from_its_cache_what_the_services_policy_allows() {
    let dir = tempfile::tempdir().unwrap();
    let cached = "cache: {default_ttl: 1m, bypass: [/forwarded]}";
    let platform = Deployed::start(dir.path(), &shop(cached));
    let (global, token) = (&platform.global, &platform.token);
    let region = RegionalPlane::start(global, token, "fra", Some("127.0.60.250:8080"));
    let _node = agent(&region, "fra-1", "127.0.60.201", dir.path());
    let (_gateway, _) = gateway(&region, dir.path()).await;
    let (_edge, edge) = edge(&platform, &region, dir.path());
    support::until_the_shop_answers(&edge, "a greeting", |body| body.contains(" in fra ")).await;
    // A path asked for the first time is stored; the next answer comes from the edge.
    until(&edge, "/whoami", "stored", |status, cache_status| {
        status == 200 && cache_status.contains("fwd=uri-miss") && cache_status.contains("stored")
    })
    .await;
    let (status, cache_status, age, _) = get(&edge, "/whoami").await;
    assert_eq!(status, 200);
    assert!(
        cache_status.starts_with("Meridian; hit; ttl="),
        "{cache_status}"
    );
    assert!(age.is_some(), "a response from the cache carries Age");
    // A bypassed path goes to the instance every time.
    let (_, cache_status, _, _) = get(&edge, "/forwarded").await;
    assert_eq!(cache_status, "Meridian; fwd=bypass; fwd-status=200");
    // Without `cache:` the edge caches nothing for the service (no rollout: the instance runs
    // on).
    platform.deploy(&shop(""));
    until(&edge, "/", "uncached", |status, cache_status| {
        status == 200 && cache_status.is_empty()
    })
    .await;
}
