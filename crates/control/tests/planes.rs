//! A global control plane and one region run in this process through `run_global` and
//! `run_regional`: the region gets its CA, follows a deployment and its new version, reports
//! them upward, and both planes stop when told. A port in use fails the start at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian_control::{
    run_global, run_regional, GatewayListeners, GlobalOptions, RegionalOptions, RunError, Say,
};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

const DEADLINE: Duration = Duration::from_secs(30);
const ANY: &str = "127.0.0.1:0";

/// A plane running in a task, with what it says.
struct Running {
    lines: mpsc::UnboundedReceiver<String>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), RunError>>,
}

/// A `Say` into a channel, and the channel.
fn listener() -> (Say, mpsc::UnboundedReceiver<String>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let say: Say = Arc::new(move |line: &str| {
        let _ = tx.send(line.to_owned());
    });
    (say, rx)
}

/// What a plane is told to stop by.
type Shutdown = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

impl Running {
    /// Runs the plane `run` starts with a `Say` and a shutdown future.
    fn start<F>(run: impl FnOnce(Say, Shutdown) -> F) -> Running
    where
        F: std::future::Future<Output = Result<(), RunError>> + Send + 'static,
    {
        let (say, lines) = listener();
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown: Shutdown = Box::pin(async {
            let _ = stopped.await;
        });
        Running {
            lines,
            stop: Some(stop),
            task: tokio::spawn(run(say, shutdown)),
        }
    }

    /// The word that follows `prefix` in the first line said that holds it.
    async fn field(&mut self, prefix: &str) -> String {
        let line = tokio::time::timeout(DEADLINE, async {
            loop {
                let line = self.lines.recv().await.expect("the plane stopped talking");
                if let Some((_, rest)) = line.split_once(prefix) {
                    return rest.to_owned();
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no line with `{prefix}`"));
        line.split([' ', ',']).next().unwrap().to_owned()
    }

    /// Tells the plane to stop; it must stop cleanly.
    async fn stop(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        let result = tokio::time::timeout(DEADLINE, self.task).await;
        result.expect("stopped in time").unwrap().unwrap();
    }
}

/// Polls `check` until it gives a value, or panics at the deadline saying `what`.
async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn definition(greeting: &str) -> Value {
    json!({
        "org": "acme", "app": "shop", "name": "web", "regions": ["fra"],
        "runtime": {"process": {"command": "/bin/true", "env": {"GREETING": greeting}}},
        "ports": [{"name": "http", "port": 8080}],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_run_in_process_follows_the_deployments_of_a_global_plane() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("global");
    let mut global = Running::start(|say, shutdown| {
        let options = GlobalOptions {
            certificates: Default::default(),
            data_dir,
            store: None,
            trust_domain: "meridian.test".to_owned(),
            listen: ANY.parse().unwrap(),
            xds: ANY.parse().unwrap(),
            say,
            registries: Default::default(),
        };
        run_global(options, shutdown)
    });
    let api = global.field("meridian control (global) serving ").await;
    let federation = global.field("regional control planes follow ").await;
    let token = global
        .field("admin token (shown only at first start, stored hashed): ")
        .await;
    let http = reqwest::Client::new();
    let call = |method: reqwest::Method, path: &str, body: Value| {
        http.request(method, format!("{api}{path}"))
            .bearer_auth(&token)
            .json(&body)
            .send()
    };
    let region = call(
        reqwest::Method::PUT,
        "/v1/regions/fra",
        json!({"lat": 50.1, "lon": 8.7}),
    );
    assert!(region.await.unwrap().status().is_success());
    let applied = call(reqwest::Method::POST, "/v1/services", definition("hello"));
    assert!(applied.await.unwrap().status().is_success());

    let data_dir = dir.path().join("regions");
    let (global_api, admin_token) = (api.clone(), token.clone());
    let mut fra = Running::start(|say, shutdown| {
        let options = RegionalOptions {
            region: "fra".to_owned(),
            data_dir,
            xds: ANY.parse().unwrap(),
            xds_plaintext: None,
            admin: ANY.parse().unwrap(),
            global_xds: federation,
            global_api,
            admin_token: Some(admin_token),
            join_token: None,
            cert_lifetime: Duration::from_secs(3_600),
            xds_coalesce: Duration::ZERO,
            gateway: GatewayListeners::default(),
            say,
        };
        run_regional(options, shutdown)
    });
    let admin = fra.field(", admin ").await;
    let ready = || async {
        let answer = http.get(format!("{admin}/readyz")).send().await.ok()?;
        answer.status().is_success().then_some(())
    };
    eventually("the region to sync with the global plane", ready).await;

    // The region reports the version it runs; a new version follows.
    let runs = |version: u64| {
        let report = call(reqwest::Method::GET, "/v1/regions/fra/report", Value::Null);
        async move {
            let report: Value = report.await.ok()?.json().await.ok()?;
            let services = report["report"]["services"].as_array()?;
            let web = services.iter().find(|s| s["service"] == "web")?;
            (web["version"] == version).then_some(())
        }
    };
    eventually("region fra to report web version 1", || runs(1)).await;
    let applied = call(reqwest::Method::POST, "/v1/services", definition("hi"));
    assert!(applied.await.unwrap().status().is_success());
    eventually("region fra to report web version 2", || runs(2)).await;

    // The global plane stops while the region follows it, then the region.
    global.stop().await;
    fra.stop().await;
}

#[tokio::test]
async fn a_port_in_use_fails_the_start_at_once() {
    let taken = std::net::TcpListener::bind(ANY).unwrap();
    let address: SocketAddr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (say, _lines) = listener();
    let options = GlobalOptions {
        certificates: Default::default(),
        data_dir: dir.path().to_owned(),
        store: None,
        trust_domain: "meridian.test".to_owned(),
        listen: address,
        xds: ANY.parse().unwrap(),
        say,
        registries: Default::default(),
    };
    let started = tokio::time::timeout(DEADLINE, run_global(options, std::future::pending()));
    match started.await.expect("an answer at once") {
        Err(RunError::Listen { address: a, .. }) => assert_eq!(a, address),
        other => panic!("expected a listen error, got {other:?}"),
    }
}
