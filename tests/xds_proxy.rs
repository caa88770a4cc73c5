//! Meridian's proxy on delta xDS (`meridian proxy --xds`): as a region's gateway behind a real
//! regional control plane (endpoints added, made unhealthy, routes changed), and against an
//! xDS server whose resources the test controls (an invalid resource is NACKed while the proxy
//! keeps serving; a control plane restart is resumed; a proxy started while its control plane is
//! down serves its disk copy).

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::google::protobuf::Any;
use meridian_control::{GatewayListeners, Region};
use meridian_model::{derive_regional, Definition, Endpoint, EndpointHealth};
use meridian_xds::{AdsServer, Cache, Limits, Update, XdsMetrics, CLUSTER};
use prometheus_client::registry::Registry;
use support::{spawn_with_lines, wait_for_line, Deployed, Killed, RegionalPlane, MERIDIAN};

const DEADLINE: Duration = Duration::from_secs(30);

const WEB: &str = "\
org: acme
app: shop
name: web
regions: [fra]
runtime: {process: {command: /bin/true}}
ports: [{name: http, port: 8080}]
routes: [{path_prefix: /, port: http}]
domains: [shop.example.com]
";

/// HTTP servers answering their name, on loopback ports.
async fn upstreams(names: &[&'static str]) -> BTreeMap<&'static str, u16> {
    let mut ports = BTreeMap::new();
    for &name in names {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        ports.insert(name, listener.local_addr().unwrap().port());
        let app = axum::Router::new().fallback(move || async move { name });
        tokio::spawn(async move { axum::serve(listener, app).await });
    }
    ports
}

/// `meridian proxy --xds` as a process.
struct ProxyProcess {
    _child: Killed,
    admin: String,
}

impl ProxyProcess {
    /// Starts a proxy following `xds`; with `join_token`, it joins the installation first.
    fn start(xds: &str, state_dir: &Path, join_token: Option<&str>) -> ProxyProcess {
        let (child, lines) = spawn_with_lines(
            Command::new(MERIDIAN)
                .args([
                    "proxy",
                    "--xds",
                    xds,
                    "--node-id",
                    "gw-test",
                    "--region",
                    "fra",
                ])
                .args(["--admin", "127.0.0.1:0", "--state-dir"])
                .arg(state_dir)
                .args(
                    join_token
                        .map(|t| ["--join-token", t])
                        .into_iter()
                        .flatten(),
                )
                .env("MERIDIAN_LOG", "warn"),
        );
        let line = wait_for_line(&lines, DEADLINE, "the proxy's admin address", |l| {
            l.starts_with("meridian proxy admin on ")
        });
        ProxyProcess {
            _child: Killed(child),
            admin: line
                .trim_start_matches("meridian proxy admin on ")
                .to_owned(),
        }
    }

    /// The bound address of the `gateway-plaintext` listener, once the proxy has one.
    async fn gateway(&self) -> SocketAddr {
        let end = Instant::now() + DEADLINE;
        loop {
            let listeners: HashMap<String, String> =
                reqwest::get(format!("{}/listeners", self.admin))
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
            if let Some(address) = listeners.get("gateway-plaintext") {
                return address.parse().unwrap();
            }
            assert!(Instant::now() < end, "the proxy got no gateway listener");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Waits until the last 8 answers for `host` at `gateway` came from exactly `names`.
async fn served_by(gateway: SocketAddr, host: &str, names: &[&str]) {
    let want: BTreeSet<String> = names.iter().map(|n| n.to_string()).collect();
    let client = reqwest::Client::new();
    let mut recent = std::collections::VecDeque::new();
    let end = Instant::now() + DEADLINE;
    let mut last = String::new();
    loop {
        let answer = client
            .get(format!("http://{gateway}/"))
            .header("host", host)
            .send()
            .await;
        match answer {
            Ok(r) if r.status().is_success() => {
                recent.push_back(r.text().await.unwrap());
                if recent.len() > 8 {
                    recent.pop_front();
                }
            }
            Ok(r) => {
                last = format!("status {}", r.status());
                recent.clear();
            }
            Err(e) => {
                last = e.to_string();
                recent.clear();
            }
        }
        if recent.len() == 8 && recent.iter().cloned().collect::<BTreeSet<_>>() == want {
            return;
        }
        assert!(
            Instant::now() < end,
            "{host} not served by {want:?}: saw {recent:?}, last {last}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_follows_its_regional_control_plane_which_outlives_the_global_one() {
    let dir = tempfile::tempdir().unwrap();
    let platform = Deployed::start(dir.path(), WEB);
    let ports = upstreams(&["one", "two"]).await;
    let set = |name: &str, health: &str| {
        platform.set_endpoint("web", name, &format!("http={}", ports[name]), health);
    };
    set("one", "healthy");
    let region = RegionalPlane::start(
        &platform.global,
        &platform.token,
        "fra",
        Some("127.0.0.1:0"),
    );
    // The region got its intermediate CA from the global control plane; its key stays here.
    let key = region.dir.path().join("region-fra/ca/ca.key");
    let end = Instant::now() + DEADLINE;
    while !key.exists() {
        assert!(Instant::now() < end, "the region got no intermediate CA");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // The gateway joins with a one-time token and talks to its control plane over mTLS.
    let token = region.join_token("gateway");
    let state = dir.path().join("state");
    let proxy = ProxyProcess::start(&region.xds, &state, Some(&token));
    let key_mode = std::fs::metadata(state.join("identity/key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600, "the proxy's key is its own");
    let gateway = proxy.gateway().await;
    served_by(gateway, "shop.example.com", &["one"]).await;

    set("two", "healthy");
    served_by(gateway, "shop.example.com", &["one", "two"]).await;
    set("one", "unhealthy");
    served_by(gateway, "shop.example.com", &["two"]).await;

    // A route change: the service moves to another domain.
    platform.deploy(&WEB.replace("shop.example.com", "www.example.com"));
    served_by(gateway, "www.example.com", &["two"]).await;
    let old = reqwest::Client::new()
        .get(format!("http://{gateway}/"))
        .header("host", "shop.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(old.status(), 404, "the old domain is gone");

    // Without the global control plane the region goes on: a gateway that starts now gets its
    drop(platform);
    // configuration from the regional control plane, which also makes and redeems its token.
    let token = region.join_token("gateway");
    let late = ProxyProcess::start(&region.xds, &dir.path().join("late"), Some(&token));
    served_by(late.gateway().await, "www.example.com", &["two"]).await;
}

/// An xDS server in this process over a region state the test drives.
struct TestControlPlane {
    cache: Arc<Cache>,
    state: Region,
    registry: Registry,
    metrics: XdsMetrics,
    address: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TestControlPlane {
    async fn start() -> TestControlPlane {
        let cache = Cache::new();
        let mut registry = Registry::default();
        let metrics = XdsMetrics::new(&mut registry);
        let gateway = GatewayListeners {
            mesh: None,
            plaintext: Some("127.0.0.1:0".parse().unwrap()),
        };
        let state = Region::new("fra", cache.clone(), gateway, None, &mut registry);
        let mut plane = TestControlPlane {
            cache,
            state,
            registry,
            metrics,
            address: "127.0.0.1:0".parse().unwrap(),
            stop: None,
        };
        plane.serve().await;
        plane
    }

    /// Serves (again) on the same address.
    async fn serve(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.address).await.unwrap();
        self.address = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = AdsServer::new(self.cache.clone(), self.metrics.clone(), Limits::default());
        tokio::spawn(server.serve(listener, async move {
            let _ = stopped.await;
        }));
        self.stop = Some(stop);
    }

    fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Runs service `web` on the upstreams at `ports`, all healthy.
    fn set_web(&self, ports: &[u16]) {
        let definition: Definition = serde_yaml_ng::from_str(WEB).unwrap();
        let deployment = derive_regional(&definition, 1).remove(0);
        let endpoints = ports
            .iter()
            .map(|port| Endpoint {
                org: "acme".into(),
                app: "shop".into(),
                service: "web".into(),
                id: format!("e{port}"),
                region: "fra".into(),
                address: "127.0.0.1".into(),
                ports: [("http".to_owned(), u32::from(*port))]
                    .into_iter()
                    .collect(),
                health: EndpointHealth::Healthy,
                updated_at: 0,
            })
            .collect();
        let id = ("acme".to_owned(), "shop".to_owned(), "web".to_owned());
        self.state.set_service(id, Some(deployment), endpoints);
    }

    /// The sum of a metric's series.
    fn metric(&self, name: &str) -> u64 {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).unwrap();
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    /// Waits until a metric's sum satisfies `wanted`.
    async fn wait_for_metric(&self, name: &str, wanted: impl Fn(u64) -> bool) {
        let end = Instant::now() + DEADLINE;
        while !wanted(self.metric(name)) {
            assert!(
                Instant::now() < end,
                "{name} stayed at {}",
                self.metric(name)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nacks_restarts_and_a_missing_control_plane_keep_the_proxy_serving() {
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    let ports = upstreams(&["one", "two", "three"]).await;
    let mut plane = TestControlPlane::start().await;
    plane.set_web(&[ports["one"]]);
    let proxy = ProxyProcess::start(&plane.url(), &state_dir, None);
    let gateway = proxy.gateway().await;
    served_by(gateway, "shop.example.com", &["one"]).await;

    // An invalid cluster is rejected; the proxy keeps serving, and takes later good updates.
    let garbage = Any {
        type_url: CLUSTER.to_owned(),
        value: vec![0xff, 0xff, 0xff],
    };
    plane.cache.apply(
        CLUSTER,
        Update {
            put: vec![("proxy/broken".to_owned(), garbage)],
            remove: Vec::new(),
        },
    );
    plane
        .wait_for_metric("meridian_xds_nacks_total", |n| n > 0)
        .await;
    served_by(gateway, "shop.example.com", &["one"]).await;
    plane.cache.apply(
        CLUSTER,
        Update {
            put: Vec::new(),
            remove: vec!["proxy/broken".to_owned()],
        },
    );
    plane.set_web(&[ports["two"]]);
    served_by(gateway, "shop.example.com", &["two"]).await;

    // The control plane goes away and comes back with news: the proxy serves on, then resumes.
    plane.stop();
    plane
        .wait_for_metric("meridian_xds_connected_clients", |n| n == 0)
        .await;
    plane.set_web(&[ports["three"]]);
    served_by(gateway, "shop.example.com", &["two"]).await;
    plane.serve().await;
    served_by(gateway, "shop.example.com", &["three"]).await;

    // A new proxy that cannot reach its control plane serves the last accepted configuration,
    // once the disk copy (written at most every 500 ms) has it.
    plane.stop();
    let copy = state_dir.join("last-config.json");
    let three = format!("127.0.0.1:{}", ports["three"]);
    let end = Instant::now() + DEADLINE;
    while !std::fs::read_to_string(&copy).is_ok_and(|text| text.contains(&three)) {
        assert!(
            Instant::now() < end,
            "the disk copy never got the last change"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(proxy);
    let restarted = ProxyProcess::start(&plane.url(), &state_dir, None);
    served_by(restarted.gateway().await, "shop.example.com", &["three"]).await;
}
