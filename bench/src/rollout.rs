//! `rollout-bench`: rolling deploys on the dev topology (`meridian dev`: three regions of two
//! nodes), under load, against the time the definition itself asks for.
//!
//! - **Rolling deploy of 3 instances in each of 3 regions** (one wave; `max_surge: 100%`),
//!   while loops send GET and POST, on kept-alive and on new connections, through every
//!   region's gateway and the Paris edge: the time from the apply until every region reports
//!   the new version alone and ready, the failed requests, and the overhead beyond the
//!   reference measured in the same round — a fresh service with the same definition applied
//!   at the same time: its instances' start and health checks, which is all the definition asks
//!   to wait for (there is no analysis window yet).
//! - **Gate failure → previous version alone in service**: a version that crashes, rolled out
//!   with `max_surge: 0, max_unavailable: 1` so that an old instance leaves first and must start
//!   again; the time from the failed gate to the rolled-back rollout, as the rollout records of
//!   the regions that rolled it back themselves give it (the others go back with the version
//!   the global control plane then makes current).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use meridian_bench::dev_topology::{hello_beside, start_dev, stop_dev, DevPorts};
use meridian_bench::{percentile, Api};
use serde_json::{json, Value};

/// Measures rolling deploys and rollbacks on the dev topology.
#[derive(Parser)]
struct Args {
    /// The `meridian` binary (build it with --release); `meridian-hello` must be next to it.
    #[arg(long, default_value = "target/release/meridian")]
    meridian: std::path::PathBuf,
    /// Measured rollouts.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Keep the dev topology's data directory (its components' logs are in logs/) and print
    /// where it is.
    #[arg(long)]
    keep_data: bool,
}

const PORTS: DevPorts = DevPorts {
    api: "127.0.0.1:37070",
    gateway: 38080,
    edge: 38090,
    edge_https: 38443,
};
const REGIONS: [&str; 3] = ["fra", "iad", "sin"];
const HOST: &str = "rollout.example.com";
/// How long any one wait may take.
const DEADLINE: Duration = Duration::from_secs(120);
/// The targets of issue #20.
const OVERHEAD_TARGET: Duration = Duration::from_secs(1);
const ROLLBACK_TARGET: Duration = Duration::from_secs(2);

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let hello = hello_beside(&args.meridian)?;
    let dir = tempfile::tempdir()?;
    let (dev, api, token) = start_dev(&args.meridian, dir.path(), &PORTS).await?;
    let api = Api {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?,
        base: api,
        token,
        xds: String::new(),
    };
    let measured = measure(&args, &api, &hello.display().to_string()).await;
    stop_dev(dev).await?;
    if args.keep_data {
        println!("the dev topology's data and logs: {}", dir.keep().display());
    }
    measured
}

/// meridian-hello as bench/rollout/`name` in the three regions, 3 instances each, greeting
/// with `greeting`, at `host`, with `deploy`.
fn definition(name: &str, host: &str, command: &str, greeting: &str, deploy: Value) -> Value {
    json!({
        "org": "bench", "app": "rollout", "name": name, "regions": REGIONS,
        "scale": {"min": 3, "max": 4},
        "runtime": {"process": {"command": command, "env": {"GREETING": greeting}}},
        "ports": [{"name": "http", "port": 8080}],
        "routes": [{"path_prefix": "/", "port": "http"}],
        "domains": [host],
        // The load goes through the edge in plain HTTP (the bench's client speaks no TLS):
        // served, not redirected to HTTPS once the dev CA's certificate arrives.
        "https": {"redirect": false},
        "health_checks": [{"http": {"port": "http", "path": "/healthz"}, "interval": "200ms",
            "timeout": "200ms", "grace_period": "5s"}],
        "deploy": deploy,
    })
}

/// Whether every region of `status` runs `version` alone, ready, its rollout (if any) done.
fn everywhere(status: &Value, version: u64) -> bool {
    let regions = status["regions"].as_array().cloned().unwrap_or_default();
    regions.len() == REGIONS.len()
        && regions.iter().all(|r| {
            r["version"] == version
                && r["state"] == "running"
                && (r["rollout"].is_null()
                    || r["rollout"]["version"] != version
                    || r["rollout"]["phase"] == "succeeded")
        })
}

/// Polls `service`'s status until `version` runs everywhere; the time since `from`.
async fn until_everywhere(
    api: &Api,
    service: &str,
    version: u64,
    from: Instant,
) -> Result<Duration> {
    let path = format!("/v1/orgs/bench/apps/rollout/services/{service}/status");
    loop {
        let status = api.send(reqwest::Method::GET, &path, None).await?;
        if everywhere(&status, version) {
            return Ok(from.elapsed());
        }
        let current = status["version"].as_u64().unwrap_or_default();
        if from.elapsed() > DEADLINE || current > version {
            let rollouts = format!("/v1/orgs/bench/apps/rollout/services/{service}/rollouts");
            let history = api.send(reqwest::Method::GET, &rollouts, None).await?;
            bail!("version {version} of {service} never ran everywhere: {status}\nrollouts: {history}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Applies `definition`; its version.
async fn apply(api: &Api, definition: &Value) -> Result<u64> {
    let deployment = api
        .send(reqwest::Method::POST, "/v1/services", Some(definition))
        .await?;
    deployment["version"]
        .as_u64()
        .context("no version in the answer")
}

/// Requests sent and failed by the load.
#[derive(Default)]
struct Counts {
    sent: AtomicU64,
    failed: AtomicU64,
    /// The first failures, to print: when (since the load started), where, and what.
    failures: std::sync::Mutex<Vec<String>>,
}

/// How many failures [`Counts`] keeps to print.
const FAILURES_KEPT: usize = 20;

impl Counts {
    /// Counts a failed request; keeps its description among the first ones.
    fn fail(&self, description: impl FnOnce() -> String) {
        if self.failed.fetch_add(1, Ordering::Relaxed) < FAILURES_KEPT as u64 {
            if let Ok(mut failures) = self.failures.lock() {
                failures.push(description());
            }
        }
    }

    /// The failures kept since the last call.
    fn take_failures(&self) -> Vec<String> {
        self.failures
            .lock()
            .map(|mut failures| std::mem::take(&mut *failures))
            .unwrap_or_default()
    }
}

/// Loops sending requests to `targets` (GET and POST, kept-alive and new connections) until
/// `stop`; counts into `counts`.
fn start_load(
    targets: &[String],
    stop: &Arc<AtomicBool>,
    counts: &Arc<Counts>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut loops = Vec::new();
    let started = Instant::now();
    for target in targets {
        for (post, fresh) in [(false, false), (false, true), (true, false), (true, true)] {
            let (target, stop, counts) = (target.clone(), stop.clone(), counts.clone());
            loops.push(tokio::spawn(async move {
                let mut builder = reqwest::Client::builder()
                    .timeout(Duration::from_secs(5))
                    .redirect(reqwest::redirect::Policy::none());
                if fresh {
                    builder = builder.pool_max_idle_per_host(0);
                }
                let Ok(client) = builder.build() else { return };
                while !stop.load(Ordering::Relaxed) {
                    let request = if post {
                        client.post(&target).body("ping")
                    } else {
                        client.get(&target)
                    };
                    let answer = request.header("host", HOST).send().await;
                    counts.sent.fetch_add(1, Ordering::Relaxed);
                    let failure = match answer {
                        Ok(answer) if answer.status() == 200 => continue,
                        Ok(answer) => {
                            let status = answer.status();
                            let location = answer
                                .headers()
                                .get("location")
                                .map(|l| format!(" (location {l:?})"))
                                .unwrap_or_default();
                            let body = answer.text().await.unwrap_or_default();
                            format!("{status}{location} {body}")
                        }
                        Err(e) => format!("{e:?}"),
                    };
                    counts.fail(|| {
                        let method = if post { "POST" } else { "GET" };
                        let connection = if fresh { "new" } else { "kept-alive" };
                        format!(
                            "{:>7.3} s  {method} {target} ({connection} connection): {}",
                            started.elapsed().as_secs_f64(),
                            failure.trim()
                        )
                    });
                }
            }));
        }
    }
    loops
}

async fn measure(args: &Args, api: &Api, hello: &str) -> Result<()> {
    let rolling = json!({"max_surge": "100%"});
    let mut version = apply(api, &definition("web", HOST, hello, "v0", rolling.clone())).await?;
    until_everywhere(api, "web", version, Instant::now()).await?;

    let mut targets: Vec<String> = (0..REGIONS.len() as u16)
        .map(|i| format!("http://127.0.0.1:{}/", PORTS.gateway + i))
        .collect();
    targets.push(format!("http://127.0.0.1:{}/", PORTS.edge));
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    let loops = start_load(&targets, &stop, &counts);

    println!("rolling deploy of 3 instances in each of 3 regions (one wave), under load through 3 gateways and an edge");
    println!("round  rollout   fresh service (reference)  overhead   requests  failed");
    let mut overheads = Vec::new();
    for round in 0..args.rounds {
        let (sent, failed) = (
            counts.sent.load(Ordering::Relaxed),
            counts.failed.load(Ordering::Relaxed),
        );
        let fresh_name = format!("fresh{round}");
        let fresh = definition(
            &fresh_name,
            &format!("{fresh_name}.example.com"),
            hello,
            "fresh",
            rolling.clone(),
        );
        let next = definition(
            "web",
            HOST,
            hello,
            &format!("v{}", round + 1),
            rolling.clone(),
        );
        let started = Instant::now();
        let (new_version, fresh_version) = tokio::try_join!(apply(api, &next), apply(api, &fresh))?;
        version = new_version;
        let (rollout, reference) = tokio::try_join!(
            until_everywhere(api, "web", version, started),
            until_everywhere(api, &fresh_name, fresh_version, started),
        )?;
        api.send(
            reqwest::Method::DELETE,
            &format!("/v1/orgs/bench/apps/rollout/services/{fresh_name}"),
            None,
        )
        .await?;
        let overhead = rollout.saturating_sub(reference);
        overheads.push(overhead.as_secs_f64() * 1000.0);
        println!(
            "{round:>5}  {:>6.2} s  {:>24.2} s  {:>6.2} s  {:>8}  {:>6}",
            rollout.as_secs_f64(),
            reference.as_secs_f64(),
            overhead.as_secs_f64(),
            counts.sent.load(Ordering::Relaxed) - sent,
            counts.failed.load(Ordering::Relaxed) - failed,
        );
        for failure in counts.take_failures() {
            println!("         failed at {failure}");
        }
    }
    let median = percentile(&mut overheads, 50.0);
    println!(
        "median overhead {:.2} s per wave; target < {} s: {:.2}x of target; failed requests {} of {} (target 0)\n",
        median / 1000.0,
        OVERHEAD_TARGET.as_secs(),
        median / OVERHEAD_TARGET.as_secs_f64() / 1000.0,
        counts.failed.load(Ordering::Relaxed),
        counts.sent.load(Ordering::Relaxed),
    );

    // A version that crashes, an old instance leaving first: rolled back by each region.
    let crashing = definition(
        "web",
        HOST,
        "/bin/false",
        "crash",
        json!({"max_surge": 0, "max_unavailable": 1}),
    );
    let failed_version = apply(api, &crashing).await?;
    let path = "/v1/orgs/bench/apps/rollout/services/web/rollouts";
    let started = Instant::now();
    // Once a region rolled the version back, the global plane makes the one before current
    // again, and the regions still rolling it out go back by that: the records of the regions
    // that rolled back themselves carry the figure.
    let status_path = "/v1/orgs/bench/apps/rollout/services/web/status";
    let records = loop {
        let history = api.send(reqwest::Method::GET, path, None).await?;
        let current = api.send(reqwest::Method::GET, status_path, None).await?["version"]
            .as_u64()
            .unwrap_or_default();
        let records: Vec<Value> = history
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| {
                r["rollout"]["version"] == failed_version && r["rollout"]["phase"] == "rolled_back"
            })
            .cloned()
            .collect();
        if current > failed_version && !records.is_empty() {
            break records;
        }
        if started.elapsed() > DEADLINE {
            bail!("version {failed_version} was not rolled back: {history}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    stop.store(true, Ordering::Relaxed);
    for task in loops {
        task.await?;
    }
    for failure in counts.take_failures() {
        println!("  failed at {failure}");
    }
    println!("gate failure -> previous version alone in service (a crashing version, an old instance to start again)");
    let mut times = Vec::new();
    for record in &records {
        let rollout = &record["rollout"];
        let at = rollout["failure"]["at"].as_u64().unwrap_or_default();
        let back = rollout["updated_at"].as_u64().unwrap_or_default();
        let took = back.saturating_sub(at) as f64;
        println!(
            "  {:<4} {:>7.0} ms  ({})",
            record["region"].as_str().unwrap_or("?"),
            took,
            rollout["failure"]["gate"]
        );
        times.push(took);
    }
    let slowest = times.iter().copied().fold(0.0, f64::max);
    println!(
        "slowest region {slowest:.0} ms; target < {} s: {:.2}x of target; failed requests over the whole run {} of {}",
        ROLLBACK_TARGET.as_secs(),
        slowest / ROLLBACK_TARGET.as_secs_f64() / 1000.0,
        counts.failed.load(Ordering::Relaxed),
        counts.sent.load(Ordering::Relaxed),
    );
    Ok(())
}
