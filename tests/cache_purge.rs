//! Purges of the edges' caches end to end: client → edge (cache) → gateway → node proxy →
//! instance (meridian-hello, whose `/tagged/<tags>` answers carry `Cache-Tag`), with two edges
//! following the global control plane. A purge by URL, by tag or of everything through
//! `meridian cache purge` is applied by both edges before the command returns. An edge cut off
//! from the global control plane during a purge keeps serving what it holds (it cannot know of
//! the purge), and applies the purge it missed once it is back. An edge with a disk tier
//! (`--cache-disk`) serves what it stored from disk after a restart, once it applied the
//! purges made while it was down.

mod support;

use std::time::{Duration, Instant};

use support::{
    agent, edge_at, edge_via, edge_with, gateway, Deployed, Edge, RegionalPlane, AMSTERDAM, HELLO,
    PARIS,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const DEADLINE: Duration = Duration::from_secs(60);

fn shop() -> String {
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
cache: {{default_ttl: 1h}}
"
    )
}

/// `GET http://shop.example.com{path}` through `edge`: the status and `Cache-Status`.
async fn get(edge: &str, path: &str) -> (u16, String) {
    let response = reqwest::Client::new()
        .get(format!("http://{edge}{path}"))
        .header("host", "shop.example.com")
        .send()
        .await
        .unwrap();
    let cache_status = response
        .headers()
        .get("cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (response.status().as_u16(), cache_status)
}

/// Whether `edge` answers `path` from its cache.
async fn hit(edge: &str, path: &str) -> bool {
    let (status, cache_status) = get(edge, path).await;
    assert_eq!(status, 200, "{path}: {cache_status}");
    cache_status.starts_with("Meridian; hit")
}

/// Asks `edge` for `path` until it answers from its cache (stored by an earlier answer).
async fn until_cached(edge: &str, path: &str) {
    let end = Instant::now() + DEADLINE;
    while !hit(edge, path).await {
        assert!(
            Instant::now() < end,
            "{edge} never answered {path} from its cache"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A TCP relay to `to` that a test can cut (its connections closed, new ones refused) and
/// restore.
struct Relay {
    address: String,
    open: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(ip: &str, to: String) -> Relay {
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let open = watch::Sender::new(true);
        let mut state = open.subscribe();
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !*state.borrow_and_update() {
                    continue;
                }
                let (mut state, to) = (state.clone(), to.clone());
                tokio::spawn(async move {
                    let Ok(mut upstream) = TcpStream::connect(&to).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                        _ = state.wait_for(|open| !open) => {}
                    }
                });
            }
        });
        Relay {
            address,
            open,
            task,
        }
    }

    fn set(&self, open: bool) {
        self.open.send_replace(open);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Web in fra (its instance and gateway on 127.0.100.`base` and `base + 1`), and two edges:
/// Paris following the global control plane directly, Amsterdam through a [`Relay`].
struct TwoEdges {
    platform: Deployed,
    _region: RegionalPlane,
    _node: support::Agent,
    _gateway: support::Killed,
    par: Edge,
    ams: Edge,
    relay: Relay,
    _dir: tempfile::TempDir,
}

async fn two_edges(base: u8) -> TwoEdges {
    let dir = tempfile::tempdir().unwrap();
    let platform = Deployed::start(dir.path(), &shop());
    let (global, token) = (&platform.global, &platform.token);
    let gateway_address = format!("127.0.100.{}:8080", base + 1);
    let region = RegionalPlane::start(global, token, "fra", Some(gateway_address.as_str()));
    let node = agent(&region, "fra-1", &format!("127.0.100.{base}"), dir.path());
    let (gateway_process, _) = gateway(&region, dir.path()).await;
    let par = edge_at(&platform, &region, dir.path(), &PARIS, "127.0.0.1:0", None);
    let to = global.xds.trim_start_matches("https://").to_owned();
    let relay = Relay::start(&format!("127.0.100.{}", base + 2), to).await;
    let via = format!("https://{}", relay.address);
    let ams = edge_via(&region, dir.path(), &AMSTERDAM, &via);
    for edge in [&par.http, &ams.http] {
        support::until_the_shop_answers(edge, "a greeting", |body| body.contains(" in fra ")).await;
    }
    TwoEdges {
        platform,
        _region: region,
        _node: node,
        _gateway: gateway_process,
        par,
        ams,
        relay,
        _dir: dir,
    }
}

impl TwoEdges {
    fn edges(&self) -> [&str; 2] {
        [&self.par.http, &self.ams.http]
    }

    /// `meridian cache purge --app shop` with `what`; its output.
    fn purge(&self, what: &[&str]) -> String {
        let args = [&["cache", "purge", "--app", "shop", "--org", "acme"], what].concat();
        self.platform.cli.ok(&args)
    }

    /// Waits until the global control plane has `count` edges' streams open.
    async fn until_edges_connected(&self, count: u32) {
        let wanted =
            format!("meridian_xds_connected_clients{{api=\"delta\",role=\"edge\"}} {count}\n");
        let end = Instant::now() + DEADLINE;
        loop {
            let metrics = support::metrics(&self.platform.global.api).await;
            if metrics.contains(&wanted) {
                return;
            }
            assert!(
                Instant::now() < end,
                "never {count} edges connected:\n{metrics}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purges_by_url_tag_and_all_reach_both_edges_before_the_command_returns() {
    let setup = two_edges(1).await;
    let paths = ["/whoami", "/tagged/catalog,p1", "/tagged/p2"];
    for edge in setup.edges() {
        for path in paths {
            until_cached(edge, path).await;
        }
    }
    setup.until_edges_connected(2).await;
    let out = setup.purge(&["--url", "http://shop.example.com/whoami"]);
    assert!(
        out.contains("accepted: URL http://shop.example.com/whoami of app acme/shop")
            && out.contains("applied by every connected edge (2)"),
        "{out}"
    );
    for edge in setup.edges() {
        assert!(
            !hit(edge, "/whoami").await,
            "{edge} still serves the purged URL"
        );
        assert!(
            hit(edge, "/tagged/catalog,p1").await,
            "{edge} purged another URL"
        );
    }
    let out = setup.purge(&["--tag", "catalog"]);
    assert!(out.contains("applied by every connected edge (2)"), "{out}");
    for edge in setup.edges() {
        assert!(
            !hit(edge, "/tagged/catalog,p1").await,
            "{edge} serves a purged tag"
        );
        assert!(hit(edge, "/tagged/p2").await, "{edge} purged another tag");
    }
    let out = setup.purge(&["--all", "-o", "json"]);
    let accepted: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(accepted["purge"]["sequence"], 3, "{accepted}");
    assert_eq!(accepted["edges"]["applied"], 2, "{accepted}");
    for edge in setup.edges() {
        assert!(
            !hit(edge, "/tagged/p2").await,
            "{edge} kept something of the app"
        );
    }
    // Bad input is refused, naming what is wrong, and purges nothing.
    let cli = &setup.platform.cli;
    let error = cli.fails(&[
        "cache",
        "purge",
        "--app",
        "shop",
        "--org",
        "acme",
        "--url",
        "https://else.example.com/",
    ]);
    assert!(
        error.contains("url: host `else.example.com` is not a domain of the app"),
        "{error}"
    );
    let error = cli.fails(&["cache", "purge", "--app", "shop", "--tag", "t", "--all"]);
    assert!(error.contains("cannot be used with"), "{error}");
    let help = cli.ok(&["cache", "purge", "--help"]);
    assert!(
        help.contains("--url <URL>") && help.contains("--tag <TAG>"),
        "{help}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_away_during_a_purge_applies_it_once_back() {
    let setup = two_edges(11).await;
    let tagged = "/tagged/catalog";
    for edge in setup.edges() {
        until_cached(edge, tagged).await;
    }
    setup.until_edges_connected(2).await;
    // Amsterdam loses the global control plane, and goes on serving what it holds.
    setup.relay.set(false);
    setup.until_edges_connected(1).await;
    let out = setup.purge(&["--tag", "catalog"]);
    assert!(out.contains("applied by every connected edge (1)"), "{out}");
    assert!(
        !hit(&setup.par.http, tagged).await,
        "Paris applied the purge"
    );
    assert!(
        hit(&setup.ams.http, tagged).await,
        "Amsterdam could not know of it"
    );
    // Back, it applies the purge it missed.
    setup.relay.set(true);
    let end = Instant::now() + DEADLINE;
    while hit(&setup.ams.http, tagged).await {
        assert!(
            Instant::now() < end,
            "Amsterdam still serves what was purged"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    setup.until_edges_connected(2).await;
}

/// Whether the disk tier at `dir` holds a record whose key ends with `path` (files being
/// written aside).
fn on_disk(dir: &std::path::Path, path: &str) -> bool {
    let Ok(entries) = std::fs::read_dir(dir.join("objects")) else {
        return false;
    };
    let key = format!("shop.example.com{path}");
    entries
        .filter_map(Result::ok)
        .filter(|e| !e.file_name().to_string_lossy().ends_with(".tmp"))
        .filter_map(|e| std::fs::read(e.path()).ok())
        .any(|record| record.windows(key.len()).any(|w| w == key.as_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_restarted_serves_from_its_disk_tier_once_it_applied_the_purges_it_missed() {
    let dir = tempfile::tempdir().unwrap();
    let platform = Deployed::start(dir.path(), &shop());
    let (global, token) = (&platform.global, &platform.token);
    let region = RegionalPlane::start(global, token, "fra", Some("127.0.181.22:8080"));
    let _node = agent(&region, "fra-1", "127.0.181.21", dir.path());
    let (gateway_process, _) = gateway(&region, dir.path()).await;
    let disk = dir.path().join("edge-cache");
    let extra = ["--cache-disk", disk.to_str().unwrap()];
    let (edge_process, edge) = edge_with(&platform, &region, dir.path(), &extra);
    support::until_the_shop_answers(&edge, "a greeting", |body| body.contains(" in fra ")).await;
    let (kept, purged) = ("/tagged/kept", "/tagged/gone");
    for path in [kept, purged] {
        until_cached(&edge, path).await;
    }
    // The tier writes on its own thread: both records are on disk before the edge goes.
    let end = Instant::now() + DEADLINE;
    while !(on_disk(&disk, kept) && on_disk(&disk, purged)) {
        assert!(Instant::now() < end, "the records never reached the disk");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(edge_process);
    let out = platform.cli.ok(&[
        "cache", "purge", "--app", "shop", "--org", "acme", "--tag", "gone",
    ]);
    assert!(out.contains("accepted: tag `gone`"), "{out}");
    // No origin from now on: whatever the edge answers with 200 comes from its disk.
    drop(gateway_process);
    let (_edge_process, edge) = edge_with(&platform, &region, dir.path(), &extra);
    let end = Instant::now() + DEADLINE;
    loop {
        let (status, cache_status) = get(&edge, purged).await;
        assert!(
            status != 200 && !cache_status.contains("hit"),
            "the purged object was served after the restart: {status} {cache_status}"
        );
        let (status, cache_status) = get(&edge, kept).await;
        if status == 200 {
            assert!(
                cache_status.starts_with("Meridian; hit"),
                "{status} {cache_status}"
            );
            break;
        }
        assert!(
            Instant::now() < end,
            "never served from disk: {status} {cache_status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
