//! The global control plane goes away and comes back (same data directory, same addresses)
//! while a region runs an instance behind an edge: nothing a user sees changes. The instance is
//! neither stopped nor started again, every request through the edge is answered by it, and
//! what the restarted plane tells the regions and the edges first is what they already hold:
//! every service still deployed, the region still reporting its instance healthy, every
//! certificate still there.
//!
//! Many sleeping services (no instance) with a domain each make the restarted plane's first
//! reading of the store long enough that followers which reconnect at once ask before it is
//! done: what they are told then must still be whole.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Node;
use meridian_identity::Subject;
use meridian_xds::meridian::{
    RegionService, RegionSummary, REGIONAL_DEPLOYMENT, REGION_SERVICE, REGION_SUMMARY, SECRET,
};
use meridian_xds::{run_delta_client, ClientOptions, Handler, Interest, Interests, Resources};
use prost::Message;
use support::edge_feed::client_tls;
use support::{agent_with_env, edge, gateway, shop_web, Deployed, RegionalPlane, HELLO};

const DEADLINE: Duration = Duration::from_secs(60);
const DOMAIN: &str = "shop.example.com";
/// Sleeping services deployed beside the shop, each with a domain.
const SLEEPING: usize = 200;
/// How long requests go on through the edge once everything has reconnected to the restarted
/// plane and its first answers were sent: the time the edge takes to apply an answer is a few
/// milliseconds, so anything wrong in them would show within this window.
const TAIL: Duration = Duration::from_millis(500);

/// What a follower of the global control plane holds after one accepted response.
struct Seen {
    /// When the response was accepted.
    at: Instant,
    /// Of which type it was.
    type_url: String,
    /// How many services are deployed in fra (followers as the region).
    deployed: usize,
    /// Whether fra's summary says it reported `web` healthy.
    reported_healthy: bool,
    /// How many certificates are held (followers as an edge).
    certified: usize,
}

impl Seen {
    /// Whether this is everything: every service (as the region) or every certificate (as an
    /// edge), and the shop's instance reported healthy.
    fn whole(&self, edge: bool) -> bool {
        let count = if edge { self.certified } else { self.deployed };
        self.reported_healthy && count == SLEEPING + 1
    }
}

/// Records what it holds after each response, as a region's or an edge's follower would see it.
struct Recorder {
    interests: Interests,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Handler for Recorder {
    fn initial_interests(&self) -> Interests {
        self.interests.clone()
    }

    async fn accept(&mut self, resources: &Resources, type_url: &str) -> Result<Interests, String> {
        let held = |type_url: &str| resources.get(type_url).into_iter().flatten();
        let reported = held(REGION_SUMMARY)
            .find(|(name, _)| *name == "fra")
            .and_then(|(_, h)| RegionSummary::decode(h.resource.value.as_slice()).ok())
            .is_some_and(|s| s.reported);
        let web_healthy = held(REGION_SERVICE)
            .find(|(name, _)| *name == "fra/acme/shop/web")
            .and_then(|(_, h)| RegionService::decode(h.resource.value.as_slice()).ok())
            .is_some_and(|s| s.healthy > 0);
        let reported_healthy = reported && web_healthy;
        self.seen.lock().unwrap().push(Seen {
            at: Instant::now(),
            type_url: type_url.to_owned(),
            deployed: held(REGIONAL_DEPLOYMENT).count(),
            reported_healthy,
            certified: held(SECRET)
                .filter(|(name, _)| name.starts_with("certificate/"))
                .count(),
        });
        Ok(self.interests.clone())
    }
}

/// A follower of the global control plane at `xds` as `subject`, subscribed to every resource
/// of `types`; it reconnects at once (10 ms) when the plane is away, so that it asks a
/// restarted plane as early as it can.
fn follower(
    data_dir: &std::path::Path,
    xds: &str,
    subject: Subject,
    types: &[&str],
) -> (Arc<Mutex<Vec<Seen>>>, tokio::task::JoinHandle<()>) {
    let options = ClientOptions {
        url: xds.to_owned(),
        tls: Some(client_tls(data_dir, subject)),
        node: Node {
            id: "restart-test".into(),
            ..Node::default()
        },
        backoff: (Duration::from_millis(10), Duration::from_millis(20)),
    };
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorder = Recorder {
        interests: types
            .iter()
            .map(|t| (t.to_string(), Interest::Wildcard))
            .collect(),
        seen: seen.clone(),
    };
    (seen, tokio::spawn(run_delta_client(options, recorder)))
}

/// Polls `check` every 20 ms until it holds; panics naming `what` after [`DEADLINE`].
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let end = Instant::now() + DEADLINE;
    while !check().await {
        assert!(Instant::now() < end, "waited in vain for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of `series` (`name{labels}`) in the Prometheus text at `base`/metrics (0 if
/// absent).
async fn metric(base: &str, series: &str) -> f64 {
    support::metrics(base)
        .await
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Deploys [`SLEEPING`] services of app `shop` in fra without instances (`scale.min` 0), each
/// claiming a domain, through the API (16 at a time).
async fn deploy_sleeping(platform: &Deployed) {
    let client = reqwest::Client::new();
    let mut deploys = tokio::task::JoinSet::new();
    for i in 0..SLEEPING {
        let definition = serde_json::json!({
            "org": "acme", "app": "shop", "name": format!("sleeper-{i}"), "regions": ["fra"],
            "runtime": {"process": {"command": HELLO}},
            "ports": [{"name": "http", "port": 8080}],
            "routes": [{"path_prefix": "/", "port": "http"}],
            "domains": [format!("sleeper-{i}.example.com")],
            "scale": {"min": 0},
        });
        let request = client
            .post(format!("{}/v1/services", platform.global.api))
            .bearer_auth(&platform.token)
            .json(&definition);
        deploys.spawn(async move {
            let answer = request.send().await.unwrap();
            assert!(
                answer.status().is_success(),
                "{}",
                answer.text().await.unwrap()
            );
        });
        if deploys.len() == 16 {
            deploys.join_next().await.unwrap().unwrap();
        }
    }
    while let Some(done) = deploys.join_next().await {
        done.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_global_plane_changes_nothing_the_regions_and_edges_serve() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let secrets = dir.path().join("secrets.key");
    let health = "health_checks: [{http: {port: http, path: /healthz}, interval: 200ms, \
                  timeout: 200ms, grace_period: 5s}]\n";
    let local_ca = [
        "--secrets-key",
        secrets.to_str().unwrap(),
        "--create-secrets-key",
        "--local-ca",
    ];
    let mut platform =
        Deployed::start_with(dir.path(), &shop_web(HELLO, DOMAIN, health), &local_ca);
    deploy_sleeping(&platform).await;
    let region = RegionalPlane::start(
        &platform.global,
        &platform.token,
        "fra",
        Some("127.0.111.1:8080"),
    );
    let isolation = ["--instance-addresses", "127.0.110.1", "--isolation", "host"];
    let node = agent_with_env(
        &region,
        "fra-1",
        dir.path(),
        &isolation,
        &[("MERIDIAN_LOG", "info")],
    );
    let _gateway = gateway(&region, dir.path()).await;
    let (_edge, edge) = edge(&platform, &region, dir.path());
    let client = reqwest::Client::new();
    let get = || {
        client
            .get(format!("http://{edge}/"))
            .header("host", DOMAIN)
            .send()
    };
    eventually(
        "the edge serving the shop",
        async || matches!(get().await, Ok(answer) if answer.status() == 200),
    )
    .await;

    // Followers as the region and as an edge, holding what the real ones hold.
    let xds = platform.global.xds.clone();
    let fra = Subject::Control {
        region: Some("fra".into()),
    };
    let as_edge = Subject::Edge {
        location: "test".into(),
    };
    let (region_seen, _region_follower) = follower(
        &data,
        &xds,
        fra,
        &[REGIONAL_DEPLOYMENT, REGION_SUMMARY, REGION_SERVICE],
    );
    let (edge_seen, _edge_follower) = follower(
        &data,
        &xds,
        as_edge,
        &[REGION_SUMMARY, REGION_SERVICE, SECRET],
    );
    let holds_everything = |seen: &Mutex<Vec<Seen>>, edge: bool| {
        seen.lock().unwrap().last().is_some_and(|s| s.whole(edge))
    };
    eventually("the followers holding the service", async || {
        holds_everything(&region_seen, false) && holds_everything(&edge_seen, true)
    })
    .await;
    let started = |log: &str| log.matches("starting instance").count();
    let stopped = |log: &str| log.matches("stopping instance").count();
    let (starts, stops) = (started(&node.log()), stopped(&node.log()));
    assert_eq!((starts, stops), (1, 0), "{}", node.log());

    // Requests go on through the edge, one after another, across the restart.
    let failures = Arc::new(Mutex::new(Vec::new()));
    let (done, mut stop) = tokio::sync::watch::channel(false);
    let requests = tokio::spawn({
        let (client, failures) = (client.clone(), failures.clone());
        let url = format!("http://{edge}/");
        async move {
            let mut answered = 0;
            while !*stop.borrow_and_update() {
                let answer = client.get(&url).header("host", DOMAIN).send().await;
                let failure = match answer {
                    Ok(answer) if answer.status() == 200 => None,
                    Ok(answer) => Some(format!(
                        "{} {}",
                        answer.status(),
                        answer.text().await.unwrap_or_default()
                    )),
                    Err(e) => Some(e.to_string()),
                };
                failures.lock().unwrap().extend(failure);
                answered += 1;
                tokio::select! {
                    _ = stop.changed() => {}
                    () = tokio::time::sleep(Duration::from_millis(10)) => {}
                }
            }
            answered
        }
    });

    let restarted = Instant::now();
    platform.global.start_again();
    let api = platform.global.api.clone();
    let up = Instant::now();
    eventually("the restarted plane ready", async || {
        client
            .get(format!("{api}/readyz"))
            .send()
            .await
            .is_ok_and(|answer| answer.status() == 200)
    })
    .await;
    eprintln!(
        "the restarted global control plane was ready (xDS answering) {} ms after it started",
        up.elapsed().as_millis()
    );
    // The region reports to the restarted plane; the region, the edge and both followers are
    // answered by it (only edges follow secrets, only regions their deployments).
    eventually("the region's report to the restarted plane", async || {
        client
            .get(format!("{api}/v1/regions/fra/report"))
            .bearer_auth(&platform.token)
            .send()
            .await
            .is_ok_and(|answer| answer.status() == 200)
    })
    .await;
    let pushes =
        |kind: &str| format!("meridian_xds_pushes_total{{api=\"delta\",type_url=\"{kind}\"}}");
    eventually(
        "answers to both regions' and both edges' streams",
        async || {
            metric(&api, &pushes("regional_deployment")).await >= 2.0
                && metric(&api, &pushes("secret")).await >= 2.0
                && metric(&api, &pushes("region_summary")).await >= 4.0
        },
    )
    .await;
    eventually("the followers holding the service again", async || {
        holds_everything(&region_seen, false) && holds_everything(&edge_seen, true)
    })
    .await;
    // Not a synchronization: the window in which a wrong answer would show at the edge.
    tokio::time::sleep(TAIL).await;
    done.send_replace(true);
    let requests = requests.await.unwrap();

    // What the followers held after each answer of the restarted plane, the first included.
    let mut problems = Vec::new();
    for (who, seen, edge) in [("region", &region_seen, false), ("edge", &edge_seen, true)] {
        let seen = seen.lock().unwrap();
        let answers: Vec<&Seen> = seen.iter().filter(|s| s.at > restarted).collect();
        if answers.is_empty() {
            problems.push(format!(
                "the {who} follower got no answer from the restarted plane"
            ));
        }
        let partial: Vec<String> = answers
            .iter()
            .filter(|s| !s.whole(edge))
            .map(|s| {
                format!(
                    "+{} ms, after an answer of {}: {} services deployed, {} certificates, \
                     the shop reported healthy: {}",
                    (s.at - restarted).as_millis(),
                    s.type_url.rsplit('.').next().unwrap_or_default(),
                    s.deployed,
                    s.certified,
                    s.reported_healthy
                )
            })
            .collect();
        if !partial.is_empty() {
            problems.push(format!(
                "the {who} follower held less than everything after {} of {} answers of the \
                 restarted plane; the first: {:#?}",
                partial.len(),
                answers.len(),
                &partial[..partial.len().min(3)]
            ));
        }
    }
    let failures = failures.lock().unwrap().clone();
    if let Some(first) = failures.first() {
        problems.push(format!(
            "{} of {requests} requests through the edge failed across the restart, the first \
             with: {first}",
            failures.len()
        ));
    }
    let log = node.log();
    if (started(&log), stopped(&log)) != (starts, stops) {
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(" instance")).collect();
        problems.push(format!(
            "the instance was stopped or started again: {lines:#?}"
        ));
    }
    assert!(problems.is_empty(), "{problems:#?}");
}
