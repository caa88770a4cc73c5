//! `meridian-bench control-plane`: the global control plane's write path, change feed and read
//! path, each next to a reference measured in the same invocation, on each store backend
//! (`--backends`: SQLite in the data directory, PostgreSQL in a cluster this process starts on
//! `--postgres-host`, with `fsync` on) and, on PostgreSQL, with each number of replicas of the
//! plane on one database (`--replicas`), side by side.
//!
//! 1. Apply N services through the API (HTTP + auth + validation + store), request i through
//!    replica i mod R — reference: the same N applies straight into a `SqlStore` of the same
//!    backend in this process (the store alone).
//! 2. With those N services stored, write at a steady rate (through the replicas in turn) and
//!    measure, per change, the time from its commit to an HTTP long-poll watcher of the first
//!    replica seeing it — reference: an in-process `Watch` on a store written at the same rate.
//! 3. While those writes run, `GET` one service (auth + store read + JSON) from the first
//!    replica, interleaved with `GET /healthz` (the HTTP floor) on the same connection pool.
//!
//! Every replica is pinned to the same `--control-cpus`: R replicas share the CPU one has.
//! Regional control planes (`--followers`, one per region: fra, iad) follow the first replica
//! from the start of each round, as a region follows one replica of a real installation, so
//! that replica pays the federation push (rendering and sending each change's regional
//! deployments); they run on `--region-cpus`, beside this load generator but at the idle
//! scheduling class, so that they take only the CPU time it leaves, with their data in memory
//! (regions have their own machines in an installation). Each round checks that they received the changes.
//! Each round prints, per replica, the CPU time and the run-queue wait (time runnable but
//! waiting for the CPU) per change of phase 2; with `--trace`, where phase 2's changes spent
//! their time on the way to the watcher ([`feed_trace`]).

mod feed_trace;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use meridian_bench::{
    cpu_time, metric_sum, percentile, run_queue_wait, start_control_with, start_region, Api,
    RegionPlane,
};
use meridian_store::testing::TestPostgres;
use meridian_store::{MissingOrg, SqlStore, Store, Watch};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

/// Benchmarks the global control plane against same-run references.
#[derive(Parser)]
struct Args {
    /// The `meridian` binary to measure (build it with --release).
    #[arg(long, default_value = "target/release/meridian")]
    meridian: PathBuf,
    /// Services to apply in phase 1.
    #[arg(long, default_value_t = 10_000)]
    services: usize,
    /// Concurrent apply requests in phase 1.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Writes per second during phases 2 and 3.
    #[arg(long, default_value_t = 500)]
    write_rate: u32,
    /// Service GETs per second (and as many /healthz GETs) during phase 3.
    #[arg(long, default_value_t = 250)]
    read_rate: u32,
    /// Writes in phases 2 and 3.
    #[arg(long, default_value_t = 2_000)]
    writes: usize,
    /// Measured rounds (after one discarded warm-up round).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// CPU list the control plane is pinned to with taskset (empty: no pinning).
    #[arg(long, default_value = "1")]
    control_cpus: String,
    /// The store backends to measure, comma-separated; each round measures each.
    #[arg(long, value_delimiter = ',', default_value = "sqlite,postgres")]
    backends: Vec<BackendKind>,
    /// The numbers of replicas of the plane to measure on PostgreSQL, comma-separated (SQLite
    /// has one).
    #[arg(long, value_delimiter = ',', default_value = "1,3")]
    replicas: Vec<usize>,
    /// Loopback address the PostgreSQL cluster listens on.
    #[arg(long, default_value = "127.0.170.1")]
    postgres_host: IpAddr,
    /// Loopback address the control planes listen on (port 0).
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Regional control planes following the first replica (one per region, fra then iad; 0:
    /// none, the replicas then publish nothing).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(0..=2))]
    followers: u8,
    /// Run the planes with certificates of public domains on (a secrets key and the local CA,
    /// as `meridian dev` does), as an installation that serves public domains: each replica then
    /// also reads the domain claims of every service that changes.
    #[arg(long)]
    certificates: bool,
    /// CPU list the regional control planes are pinned to with taskset (empty: no pinning).
    #[arg(long, default_value = "0")]
    region_cpus: String,
    /// Trace each change of phase 2 through the planes' stages and print where its time went
    /// (the planes then log every stage: their figures are a little worse).
    #[arg(long)]
    trace: bool,
}

/// A store backend to measure.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BackendKind {
    /// SQLite in the control plane's data directory (the default store).
    Sqlite,
    /// PostgreSQL (`--store postgres://…`).
    Postgres,
}

/// A backend ready to give each round fresh stores.
#[derive(Clone)]
enum Backend {
    Sqlite,
    Postgres(Arc<TestPostgres>),
}

/// What one column of the figures measures: a backend, and how many replicas of the plane
/// share it.
struct Setup {
    backend: Backend,
    replicas: usize,
}

impl Setup {
    fn name(&self) -> String {
        match (&self.backend, self.replicas) {
            (Backend::Sqlite, _) => "SQLite".to_owned(),
            (Backend::Postgres(_), 1) => "PostgreSQL".to_owned(),
            (Backend::Postgres(_), n) => format!("PostgreSQL ×{n}"),
        }
    }

    /// For round `round`: the control planes' extra arguments (their store) and the reference
    /// store, both new and empty; `dir` is the round's directory.
    async fn stores(&self, dir: &Path, round: usize) -> Result<(Vec<String>, Arc<dyn Store>)> {
        match &self.backend {
            Backend::Sqlite => {
                let direct = SqlStore::open_sqlite(&dir.join("direct.db")).await?;
                Ok((Vec::new(), Arc::new(direct)))
            }
            Backend::Postgres(cluster) => {
                let cluster = cluster.clone();
                let tag = format!("{round}x{}", self.replicas);
                let (api, direct) = tokio::task::spawn_blocking(move || {
                    (
                        cluster.create_database(&format!("api{tag}")),
                        cluster.create_database(&format!("direct{tag}")),
                    )
                })
                .await?;
                let store = SqlStore::connect_postgres(&direct).await?;
                Ok((vec!["--store".to_owned(), api], Arc::new(store)))
            }
        }
    }
}

fn definition(i: usize, command: &str) -> Value {
    json!({
        "org": "bench", "app": format!("app{}", i % 100), "name": format!("svc{i}"),
        "regions": ["fra", "iad"],
        "scale": {"min": 1, "max": 3},
        "runtime": {"process": {"command": command, "args": ["--port", "8080"],
                                "env": {"MODE": "bench"}}},
        "ports": [{"name": "http", "port": 8080}],
        "routes": [{"path_prefix": "/", "port": "http"}],
        "health_checks": [{"http": {"port": "http", "path": "/healthz"}}],
        "overrides": {"iad": {"scale": {"max": 5}}}
    })
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

struct ApplyFigures {
    per_second: f64,
    control_cpu_us: f64,
}

/// The CPU time the control planes `pids` have used so far.
fn cpu_of(pids: &[u32]) -> Result<Duration> {
    pids.iter().map(|pid| cpu_time(*pid)).sum()
}

/// Phase 1 through the API: request i through replica i mod R.
async fn apply_through_api(apis: &[Arc<Api>], args: &Args, pids: &[u32]) -> Result<ApplyFigures> {
    let cpu_before = cpu_of(pids)?;
    let started = Instant::now();
    let slots = Arc::new(Semaphore::new(args.concurrency));
    let mut tasks = Vec::with_capacity(args.services);
    for i in 0..args.services {
        let permit = slots.clone().acquire_owned().await?;
        let api = apis[i % apis.len()].clone();
        tasks.push(tokio::spawn(async move {
            let body = definition(i, "server");
            let result = api
                .send(reqwest::Method::POST, "/v1/services", Some(&body))
                .await;
            drop(permit);
            result
        }));
    }
    for task in tasks {
        task.await??;
    }
    let elapsed = started.elapsed();
    let cpu = cpu_of(pids)? - cpu_before;
    Ok(ApplyFigures {
        per_second: args.services as f64 / elapsed.as_secs_f64(),
        control_cpu_us: cpu.as_micros() as f64 / args.services as f64,
    })
}

/// Phase 1 reference: the same applies straight into a store in this process.
async fn apply_direct(store: &Arc<dyn Store>, args: &Args) -> Result<f64> {
    let started = Instant::now();
    let slots = Arc::new(Semaphore::new(args.concurrency));
    let mut tasks = Vec::with_capacity(args.services);
    for i in 0..args.services {
        let permit = slots.clone().acquire_owned().await?;
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let body = definition(i, "server");
            let def = meridian_model::parse_definition_json(body.to_string().as_bytes())
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            store.apply_service(&def, MissingOrg::Create).await?;
            drop(permit);
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(args.services as f64 / started.elapsed().as_secs_f64())
}

/// What phases 2 and 3 measured: the changes as the watcher received them, and the GET
/// latencies of a service and of the floor (µs).
type Watched = (Vec<feed_trace::Received>, Vec<f64>, Vec<f64>);

/// Phases 2 and 3: paced writes (through the replicas in turn), an HTTP watcher of the first
/// replica, and interleaved GETs of it.
async fn watch_and_read(apis: &[Arc<Api>], args: &Args) -> Result<Watched> {
    let api = &apis[0];
    let revision = api.send(reqwest::Method::GET, "/v1/revision", None).await?["revision"]
        .as_u64()
        .context("revision")?;
    let writes = args.writes;
    let watcher = {
        let api = api.clone();
        tokio::spawn(async move {
            let mut after = revision;
            let mut received = Vec::with_capacity(writes);
            while received.len() < writes {
                let page = api
                    .send(
                        reqwest::Method::GET,
                        &format!("/v1/changes?after={after}&limit=1000&wait_ms=5000"),
                        None,
                    )
                    .await?;
                let seen = now_us();
                for change in page["changes"].as_array().context("changes")? {
                    received.push(feed_trace::Received {
                        revision: change["revision"].as_u64().context("revision")?,
                        stamped: change["committed_at_us"]
                            .as_i64()
                            .context("committed_at_us")?,
                        seen,
                    });
                }
                after = page["next_after"].as_u64().context("next_after")?;
            }
            anyhow::Ok(received)
        })
    };
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Reads at a fixed rate (closed-loop reads would hide latency under load): a service GET and
    // a /healthz GET alternate, each at `read_rate` per second.
    let read_rate = args.read_rate;
    let reader = {
        let (api, done) = (api.clone(), done.clone());
        tokio::spawn(async move {
            let (mut gets, mut floors) = (Vec::new(), Vec::new());
            let service = "/v1/orgs/bench/apps/app7/services/svc7";
            let mut tick = tokio::time::interval(Duration::from_secs(1) / (2 * read_rate));
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                tick.tick().await;
                let t = Instant::now();
                api.send(reqwest::Method::GET, service, None).await?;
                gets.push(t.elapsed().as_micros() as f64);
                tick.tick().await;
                let t = Instant::now();
                let response = api.http.get(format!("{}/healthz", api.base)).send().await?;
                response.bytes().await?;
                floors.push(t.elapsed().as_micros() as f64);
            }
            anyhow::Ok((gets, floors))
        })
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1) / args.write_rate);
    for i in 0..writes {
        tick.tick().await;
        let body = definition(i % args.services.max(1), &format!("v{i}"));
        apis[i % apis.len()]
            .send(reqwest::Method::POST, "/v1/services", Some(&body))
            .await?;
    }
    let watch = tokio::time::timeout(Duration::from_secs(60), watcher).await???;
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let (gets, floors) = reader.await??;
    Ok((watch, gets, floors))
}

/// Phase 2 reference: an in-process watcher on a store written at the same rate.
async fn watch_direct(store: &Arc<dyn Store>, args: &Args) -> Result<Vec<f64>> {
    let mut watch = Watch::new(store.clone(), store.revision().await?);
    let writes = args.writes;
    let watcher = tokio::spawn(async move {
        let mut latencies = Vec::with_capacity(writes);
        while latencies.len() < writes {
            let change = watch.next().await?;
            latencies.push((now_us() - change.committed_at_us) as f64);
        }
        anyhow::Ok(latencies)
    });
    let mut tick = tokio::time::interval(Duration::from_secs(1) / args.write_rate);
    for i in 0..writes {
        tick.tick().await;
        let body = definition(i % args.services.max(1), &format!("v{i}"));
        let def = meridian_model::parse_definition_json(body.to_string().as_bytes())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        store.apply_service(&def, MissingOrg::Create).await?;
    }
    tokio::time::timeout(Duration::from_secs(60), watcher).await??
}

/// Waits (up to 10 s) until `api` lists every region of `names`.
async fn regions_known(api: &Api, names: &[&str]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let listed = api.send(reqwest::Method::GET, "/v1/regions", None).await?;
        let known = |name: &&str| {
            listed
                .as_array()
                .is_some_and(|regions| regions.iter().any(|r| r["name"] == **name))
        };
        if names.iter().all(known) {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} does not list the regions {names:?}: {listed}",
            api.base
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The regions the benchmark's definitions name, with their coordinates.
const REGIONS: [(&str, f64, f64); 2] = [("fra", 50.11, 8.68), ("iad", 38.95, -77.45)];

/// The regional control planes following the first replica, and their data.
struct Followers {
    /// Killed when dropped, before their data goes.
    planes: Vec<RegionPlane>,
    /// In memory (`/dev/shm`) where there is one: their disk copies (the whole region, written
    /// every 500 ms) would otherwise compete with the store's commits for the disk, which
    /// regions on their own machines do not.
    _data: tempfile::TempDir,
}

/// Starts `args.followers` regional control planes following the first replica.
async fn start_followers(args: &Args, apis: &[Arc<Api>]) -> Result<Followers> {
    let data = tempfile::tempdir_in("/dev/shm").or_else(|_| tempfile::tempdir())?;
    let mut planes = Vec::new();
    for (name, _, _) in &REGIONS[..usize::from(args.followers)] {
        let dir = data.path().join(name);
        let region = start_region(
            &args.meridian,
            &args.region_cpus,
            args.host,
            &dir,
            &apis[0],
            name,
        )
        .await?;
        planes.push(region);
    }
    Ok(Followers {
        planes,
        _data: data,
    })
}

/// Prints the services each follower rendered per change made through the API, and fails when
/// one received no change at all (then it did not follow).
async fn check_followers(followers: &[RegionPlane], changes: usize) -> Result<()> {
    let mut figures = Vec::with_capacity(followers.len());
    for (region, (name, _, _)) in followers.iter().zip(&REGIONS) {
        let renders = metric_sum(&region.admin, "meridian_control_service_renders_total").await?;
        anyhow::ensure!(
            renders > 0.0,
            "region {name} rendered no service: it did not follow the first replica"
        );
        figures.push(format!("{name} {:.2}", renders / changes as f64));
    }
    if !figures.is_empty() {
        println!(
            "  regions following replica 1, services rendered per change: {}",
            figures.join(", ")
        );
    }
    Ok(())
}

/// [`watch_and_read`], and each plane's CPU time and run-queue wait meanwhile, printed.
async fn watch_through_api(apis: &[Arc<Api>], args: &Args, pids: &[u32]) -> Result<Watched> {
    let before = usage(pids)?;
    let watched = watch_and_read(apis, args).await?;
    print_usage(&before, &usage(pids)?, args.writes);
    Ok(watched)
}

/// Each plane's CPU time and run-queue wait so far.
fn usage(pids: &[u32]) -> Result<Vec<(Duration, Duration)>> {
    pids.iter()
        .map(|pid| Ok((cpu_time(*pid)?, run_queue_wait(*pid)?)))
        .collect()
}

/// Prints each plane's CPU time and run-queue wait per change between `before` and `after`.
fn print_usage(before: &[(Duration, Duration)], after: &[(Duration, Duration)], changes: usize) {
    let per_change =
        |a: Duration, b: Duration| a.saturating_sub(b).as_micros() as f64 / changes as f64;
    let figures: Vec<String> = before
        .iter()
        .zip(after)
        .map(|((cpu0, wait0), (cpu1, wait1))| {
            format!(
                "{:.0} / {:.0}",
                per_change(*cpu1, *cpu0),
                per_change(*wait1, *wait0)
            )
        })
        .collect();
    println!(
        "  phase 2, per change, each replica's CPU / run-queue wait µs: {}",
        figures.join(", ")
    );
}

/// The figures of one round.
#[derive(Default)]
struct Round {
    api_rate: f64,
    store_rate: f64,
    control_cpu_us: f64,
    watch: [f64; 2],
    watch_ref: [f64; 2],
    get: [f64; 2],
    get_ref: [f64; 2],
}

fn p50_p99(mut samples: Vec<f64>) -> [f64; 2] {
    [
        percentile(&mut samples, 50.0),
        percentile(&mut samples, 99.0),
    ]
}

/// One round on fresh control planes (`setup.replicas` of them, on one store) and a fresh
/// reference store; `api_first` alternates which of the pair runs first, so that warm-up and
/// drift do not favour one side.
async fn round(args: &Args, setup: &Setup, number: usize, api_first: bool) -> Result<Round> {
    let dir = tempfile::tempdir()?;
    let (mut store_args, direct) = setup.stores(dir.path(), number).await?;
    if args.certificates {
        // One key for every replica: the first makes it, the others (started after) read it.
        let key = dir.path().join("secrets.key").display().to_string();
        store_args.extend(["--secrets-key".to_owned(), key]);
        store_args.extend(["--create-secrets-key", "--local-ca"].map(str::to_owned));
    }
    let mut controls = Vec::with_capacity(setup.replicas);
    let mut apis: Vec<Arc<Api>> = Vec::with_capacity(setup.replicas);
    let traces: Vec<PathBuf> = (0..setup.replicas)
        .map(|replica| dir.path().join(format!("trace{replica}.log")))
        .collect();
    for (replica, trace) in traces.iter().enumerate() {
        let data = dir.path().join(format!("api{replica}"));
        let (control, mut api) = start_control_with(
            &args.meridian,
            &args.control_cpus,
            args.host,
            &data,
            &store_args,
            args.trace.then_some(trace.as_path()),
        )
        .await?;
        if let Some(first) = apis.first() {
            api.token = first.token.clone();
        }
        controls.push(control);
        apis.push(Arc::new(api));
    }
    let pids = controls
        .iter()
        .map(|c| c.id().context("control plane pid"))
        .collect::<Result<Vec<u32>>>()?;
    for (name, lat, lon) in REGIONS {
        let body = json!({"lat": lat, "lon": lon});
        apis[0]
            .send(
                reqwest::Method::PUT,
                &format!("/v1/regions/{name}"),
                Some(&body),
            )
            .await?;
        let region = meridian_model::Region {
            name: name.into(),
            lat,
            lon,
        };
        direct.put_region(&region).await?;
    }
    // Another replica learns of the regions from the change feed, a few milliseconds later
    // (until then it refuses definitions that name them): wait until every one lists them.
    for api in &apis {
        regions_known(api, &["fra", "iad"]).await?;
    }
    let followers = start_followers(args, &apis).await?;
    let mut r = Round::default();
    if api_first {
        let applied = apply_through_api(&apis, args, &pids).await?;
        (r.api_rate, r.control_cpu_us) = (applied.per_second, applied.control_cpu_us);
        r.store_rate = apply_direct(&direct, args).await?;
    } else {
        r.store_rate = apply_direct(&direct, args).await?;
        let applied = apply_through_api(&apis, args, &pids).await?;
        (r.api_rate, r.control_cpu_us) = (applied.per_second, applied.control_cpu_us);
    }
    let (watched, watch_ref) = if api_first {
        let watched = watch_through_api(&apis, args, &pids).await?;
        (watched, watch_direct(&direct, args).await?)
    } else {
        let watch_ref = watch_direct(&direct, args).await?;
        (watch_through_api(&apis, args, &pids).await?, watch_ref)
    };
    let (received, gets, floors) = watched;
    check_followers(&followers.planes, args.services + args.writes).await?;
    if args.trace {
        let logs: Vec<&Path> = traces.iter().map(PathBuf::as_path).collect();
        feed_trace::report(&logs, &received)?;
    }
    let watch = received
        .iter()
        .map(|c| (c.seen - c.stamped) as f64)
        .collect();
    r.watch = p50_p99(watch);
    r.watch_ref = p50_p99(watch_ref);
    r.get = p50_p99(gets);
    r.get_ref = p50_p99(floors);
    drop(followers);
    drop(controls);
    Ok(r)
}

/// "median [min–max]" of one figure over the rounds.
fn spread(rounds: &[Round], figure: impl Fn(&Round) -> f64) -> (f64, String) {
    let mut values: Vec<f64> = rounds.iter().map(figure).collect();
    let median = percentile(&mut values, 50.0);
    let text = format!(
        "{median:.0} [{:.0}–{:.0}]",
        values[0],
        values[values.len() - 1]
    );
    (median, text)
}

fn report(setups: &[Setup], rounds: &[Vec<Round>]) {
    println!();
    println!(
        "median [min–max] over {} rounds",
        rounds.first().map_or(0, Vec::len)
    );
    print!("{:<40}", "figure");
    for setup in setups {
        let name = setup.name();
        print!(
            " {:>24} {:>24} {:>7}",
            name,
            format!("{name} reference"),
            "ratio"
        );
    }
    println!();
    let line = |name: &str, ours: &dyn Fn(&Round) -> f64, reference: &dyn Fn(&Round) -> f64| {
        print!("{name:<40}");
        for rounds in rounds {
            let (a, a_text) = spread(rounds, ours);
            let (b, b_text) = spread(rounds, reference);
            print!(" {a_text:>24} {b_text:>24} {:>6.2}x", a / b);
        }
        println!();
    };
    line(
        "apply, services/s (ref: store alone)",
        &|r| r.api_rate,
        &|r| r.store_rate,
    );
    line(
        "watch p50 µs (ref: in-process Watch)",
        &|r| r.watch[0],
        &|r| r.watch_ref[0],
    );
    line(
        "watch p99 µs (ref: in-process Watch)",
        &|r| r.watch[1],
        &|r| r.watch_ref[1],
    );
    line(
        "GET service p50 µs (ref: GET /healthz)",
        &|r| r.get[0],
        &|r| r.get_ref[0],
    );
    line(
        "GET service p99 µs (ref: GET /healthz)",
        &|r| r.get[1],
        &|r| r.get_ref[1],
    );
    print!("{:<40}", "control-plane CPU µs per apply");
    for rounds in rounds {
        let (_, cpu_text) = spread(rounds, |r| r.control_cpu_us);
        print!(" {cpu_text:>24} {:>24} {:>7}", "", "");
    }
    println!();
    println!();
    for (setup, rounds) in setups.iter().zip(rounds) {
        let (apply, _) = spread(rounds, |r| r.api_rate);
        let (watch_p99, _) = spread(rounds, |r| r.watch[1]);
        println!(
            "{}: apply ≥ 1,000 services/s: {} ({apply:.0}); watch p99 < 5 ms: {} ({watch_p99:.0} µs)",
            setup.name(),
            if apply >= 1000.0 { "met" } else { "NOT met" },
            if watch_p99 < 5000.0 { "met" } else { "NOT met" },
        );
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // Stopped by Ctrl-C or SIGTERM, the run is dropped: its control planes and regions are
    // killed, its PostgreSQL cluster stopped and its directories removed (a signal's default
    // would leave them running).
    tokio::select! {
        result = run(args) => result,
        signal = tokio::signal::ctrl_c() => {
            signal?;
            anyhow::bail!("interrupted; the processes this run started are stopped")
        }
        _ = terminate.recv() => {
            anyhow::bail!("terminated; the processes this run started are stopped")
        }
    }
}

/// The whole benchmark, as `args` asks.
async fn run(args: Args) -> Result<()> {
    anyhow::ensure!(args.rounds > 0, "--rounds must be at least 1");
    println!(
        "control plane pinned to CPUs [{}] (certificates {}), {} regions following its first replica \
         on CPUs [{}]; {} services applied {} at a time, then {} writes at {}/s with a watcher and \
         {} reads/s",
        args.control_cpus,
        if args.certificates { "on" } else { "off" },
        args.followers,
        args.region_cpus,
        args.services,
        args.concurrency,
        args.writes,
        args.write_rate,
        args.read_rate
    );
    anyhow::ensure!(
        args.replicas.iter().all(|n| *n > 0),
        "--replicas: each number must be at least 1"
    );
    let mut setups = Vec::new();
    for kind in &args.backends {
        match kind {
            BackendKind::Sqlite => setups.push(Setup {
                backend: Backend::Sqlite,
                replicas: 1,
            }),
            BackendKind::Postgres => {
                let host = args.postgres_host;
                let cluster =
                    tokio::task::spawn_blocking(move || TestPostgres::start_durable(host))
                        .await?
                        .context("PostgreSQL is not installed (apt-get install postgresql)")?;
                println!("PostgreSQL (fsync on) at {}", cluster.url());
                let backend = Backend::Postgres(Arc::new(cluster));
                for replicas in &args.replicas {
                    setups.push(Setup {
                        backend: backend.clone(),
                        replicas: *replicas,
                    });
                }
            }
        }
    }
    let mut rounds: Vec<Vec<Round>> = setups.iter().map(|_| Vec::new()).collect();
    for i in 0..args.rounds + 1 {
        for (setup, measured) in setups.iter().zip(&mut rounds) {
            let figures = round(&args, setup, i, i % 2 == 0).await?;
            if i == 0 {
                println!("{}: warm-up round done (discarded)", setup.name());
                continue;
            }
            println!(
                "{} round {i}: apply {:.0}/s (store {:.0}/s), watch p50 {:.0} µs (ref {:.0}), \
                 p99 {:.0} µs (ref {:.0}), GET p99 {:.0} µs (ref {:.0})",
                setup.name(),
                figures.api_rate,
                figures.store_rate,
                figures.watch[0],
                figures.watch_ref[0],
                figures.watch[1],
                figures.watch_ref[1],
                figures.get[1],
                figures.get_ref[1]
            );
            measured.push(figures);
        }
    }
    report(&setups, &rounds);
    Ok(())
}
