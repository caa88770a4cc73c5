//! `xds-convergence`: how fast an endpoint change reaches every xDS client that needs it.
//!
//! A global and a regional control plane run as their own processes (pinned to `--control-cpus`);
//! M services with one endpoint each are registered through the API. This process then plays N
//! delta (or state-of-the-world) ADS clients, each a node proxy on its own connection subscribed
//! to the ClusterLoadAssignments of `--share` random services plus one popular service that every
//! client uses. Each measured change moves one endpoint (alternately of the popular service,
//! reaching all N clients, and of a random one, reaching about N × share / M) through the public
//! API; the time from just before the API call to each affected client's ACK is recorded. It
//! reports p50/p99/max per change, control-plane CPU per change, and the regional control plane's
//! memory per connected client; delta next to SotW in the same invocation. Then, for each
//! coalescing window (`--coalesce-ms`, a regional control plane restarted with it), bursts of
//! changes to many services at once: the time until every client has every change, the pushes
//! and the CPU they cost — whether waiting to batch lowers the total time.
//!
//! First, the client side (`--client-clusters`, `--client-only` for it alone): the wall and CPU
//! time for a proxy to apply one endpoint change with 1,000 and 10,000 clusters, next to a full
//! apply of the same configuration.

mod client_apply;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use meridian_bench::{cpu_time, metric_sum, percentile, pinned, rss_kib, start_control, Api};
use meridian_xds::ENDPOINT;
use prost::Message;
use reqwest::Method;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::UnboundedReceiverStream;

/// Measures xDS convergence for N clients and M services.
#[derive(Parser)]
struct Args {
    /// The `meridian` binary to measure (build it with --release).
    #[arg(long, default_value = "target/release/meridian")]
    meridian: PathBuf,
    /// Client counts to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,10000")]
    clients: Vec<usize>,
    /// Services registered (M).
    #[arg(long, default_value_t = 1000)]
    services: usize,
    /// Random services each client subscribes to, besides the popular one.
    #[arg(long, default_value_t = 20)]
    share: usize,
    /// Measured changes per run (half to the popular service, half to random ones).
    #[arg(long, default_value_t = 20)]
    changes: usize,
    /// ADS flavours to measure, in this order: delta, sotw.
    #[arg(long, value_delimiter = ',', default_value = "delta,sotw")]
    apis: Vec<String>,
    /// Coalescing windows to compare on bursts, in ms, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0,2,10")]
    coalesce_ms: Vec<u64>,
    /// Changes per burst (to distinct services).
    #[arg(long, default_value_t = 100)]
    burst: usize,
    /// Delta clients connected during bursts.
    #[arg(long, default_value_t = 1000)]
    burst_clients: usize,
    /// Bursts per coalescing window (at most 250 over all windows: each burst uses its own
    /// ports).
    #[arg(long, default_value_t = 5)]
    bursts: u32,
    /// Cluster counts for the client-side figure (one endpoint change applied by a proxy).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    client_clusters: Vec<usize>,
    /// Measure the client side only (no control planes).
    #[arg(long)]
    client_only: bool,
    /// CPU list the control planes are pinned to (empty: no pinning).
    #[arg(long, default_value = "1")]
    control_cpus: String,
}

/// Which ADS flavour the simulated clients speak.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Flavour {
    Delta,
    Sotw,
}

impl Flavour {
    fn name(self) -> &'static str {
        match self {
            Flavour::Delta => "delta",
            Flavour::Sotw => "sotw",
        }
    }
}

fn service_name(i: usize) -> String {
    format!("svc{i:05}")
}

/// The name of a service's load assignment, as a node proxy sees it.
fn assignment_name(i: usize) -> String {
    format!("bench/shop/{}:http", service_name(i))
}

/// What a client reports: which client, when it ACKed, which assignments the response changed.
type Event = (usize, Instant, Vec<String>);

/// One simulated client: subscribes, ACKs every response at once, reports what changed. It
/// holds a `connecting` permit until its connection is up.
async fn client(
    id: usize,
    url: String,
    names: Vec<String>,
    flavour: Flavour,
    events: mpsc::UnboundedSender<Event>,
    connecting: tokio::sync::OwnedSemaphorePermit,
) -> Result<()> {
    let channel = tonic::transport::Endpoint::from_shared(url)?
        .tcp_nodelay(true)
        .connect()
        .await?;
    drop(connecting);
    let mut ads =
        AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(64 << 20);
    let node = Node {
        id: format!("bench-{id}"),
        ..Default::default()
    };
    match flavour {
        Flavour::Delta => {
            let (tx, rx) = mpsc::unbounded_channel();
            tx.send(DeltaDiscoveryRequest {
                node: Some(node),
                type_url: ENDPOINT.to_owned(),
                resource_names_subscribe: names,
                ..Default::default()
            })?;
            let mut responses = ads
                .delta_aggregated_resources(UnboundedReceiverStream::new(rx))
                .await?
                .into_inner();
            while let Some(response) = responses.message().await? {
                tx.send(DeltaDiscoveryRequest {
                    type_url: ENDPOINT.to_owned(),
                    response_nonce: response.nonce,
                    ..Default::default()
                })?;
                let changed = response.resources.into_iter().map(|r| r.name).collect();
                let _ = events.send((id, Instant::now(), changed));
            }
        }
        Flavour::Sotw => {
            let (tx, rx) = mpsc::unbounded_channel();
            tx.send(DiscoveryRequest {
                node: Some(node),
                type_url: ENDPOINT.to_owned(),
                resource_names: names.clone(),
                ..Default::default()
            })?;
            let mut responses = ads
                .stream_aggregated_resources(UnboundedReceiverStream::new(rx))
                .await?
                .into_inner();
            // A state-of-the-world response carries every subscribed assignment: what changed is
            // what differs from the previous one.
            let mut previous: HashMap<String, Vec<u8>> = HashMap::new();
            while let Some(response) = responses.message().await? {
                tx.send(DiscoveryRequest {
                    type_url: ENDPOINT.to_owned(),
                    resource_names: names.clone(),
                    version_info: response.version_info.clone(),
                    response_nonce: response.nonce.clone(),
                    ..Default::default()
                })?;
                let mut changed = Vec::new();
                for any in response.resources {
                    let name = ClusterLoadAssignment::decode(any.value.as_slice())?.cluster_name;
                    if previous.get(&name) != Some(&any.value) {
                        changed.push(name.clone());
                        previous.insert(name, any.value);
                    }
                }
                let _ = events.send((id, Instant::now(), changed));
            }
        }
    }
    Ok(())
}

/// The global and regional control planes with M services registered.
struct Platform {
    _global: tokio::process::Child,
    regional: Regional,
    global_pid: u32,
    api: Arc<Api>,
    _dir: tempfile::TempDir,
}

/// A regional control plane process.
struct Regional {
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
    pid: u32,
    xds: String,
    admin: String,
}

impl Regional {
    /// Starts the regional control plane of `fra` with xDS coalescing window `coalesce`, and
    /// waits until it has synced with the global one.
    async fn start(args: &Args, api: &Api, coalesce: Duration) -> Result<Regional> {
        let dir = tempfile::tempdir()?;
        let mut child = pinned(&args.meridian, &args.control_cpus)
            .args(["control", "--region", "fra", "--xds", "127.0.0.1:0"])
            // The simulated clients have no certificates: they use the unauthenticated port.
            .args(["--xds-plaintext", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(dir.path())
            .args(["--admin", "127.0.0.1:0", "--api", &api.base])
            .args(["--global-xds", &api.xds])
            .arg(format!("--xds-coalesce={}ms", coalesce.as_millis()))
            .env("MERIDIAN_TOKEN", &api.token)
            .env("MERIDIAN_LOG", "warn")
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let pid = child.id().context("regional control plane exited")?;
        let mut lines = BufReader::new(child.stdout.take().context("no stdout")?).lines();
        let mut line = String::new();
        let plaintext = loop {
            let next = lines
                .next_line()
                .await?
                .context("the regional control plane did not print its addresses")?;
            if next.contains("serving xDS on ") {
                line = next;
            } else if let Some(rest) = next.split(" proxyless gRPC clients on ").nth(1) {
                break rest.split(' ').next().unwrap_or_default().to_owned();
            }
        };
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let field = |after: &str| {
            line.split(after)
                .nth(1)
                .and_then(|r| r.split(',').next())
                .map(str::to_owned)
                .with_context(|| format!("no `{after}` in {line}"))
        };
        let regional = Regional {
            _child: child,
            _dir: dir,
            pid,
            xds: format!("http://{plaintext}"),
            admin: field("admin ")?,
        };
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = reqwest::get(format!("{}/readyz", regional.admin)).await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return Ok(regional);
            }
            if Instant::now() > end {
                bail!("the regional control plane did not become ready");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn start_platform(args: &Args) -> Result<Platform> {
    let dir = tempfile::tempdir()?;
    let (global, api) = start_control(&args.meridian, &args.control_cpus, dir.path()).await?;
    let global_pid = global.id().context("global control plane exited")?;
    let api = Arc::new(api);
    api.send(
        Method::PUT,
        "/v1/regions/fra",
        Some(&json!({"lat": 50.1, "lon": 8.7})),
    )
    .await?;
    let limit = Arc::new(Semaphore::new(32));
    let mut tasks = Vec::new();
    for i in 0..args.services {
        let (api, limit) = (api.clone(), limit.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = limit.acquire().await?;
            let name = service_name(i);
            let definition = json!({
                "org": "bench", "app": "shop", "name": name, "regions": ["fra"],
                "runtime": {"process": {"command": "/bin/true"}},
                "ports": [{"name": "http", "port": 8080}],
            });
            api.send(Method::POST, "/v1/services", Some(&definition))
                .await?;
            endpoint(&api, i, 20_000).await
        }));
    }
    for task in tasks {
        task.await??;
    }
    let regional = Regional::start(args, &api, Duration::ZERO).await?;
    Ok(Platform {
        _global: global,
        regional,
        global_pid,
        api,
        _dir: dir,
    })
}

/// Moves service `i`'s endpoint to `port`.
async fn endpoint(api: &Api, i: usize, port: u32) -> Result<()> {
    let path = format!(
        "/v1/orgs/bench/apps/shop/services/{}/endpoints/e1",
        service_name(i)
    );
    let body = json!({"region": "fra", "address": "127.0.0.1", "ports": {"http": port}});
    api.send(Method::PUT, &path, Some(&body)).await?;
    Ok(())
}

/// Figures of one run (N clients, one flavour).
struct Run {
    flavour: Flavour,
    clients: usize,
    connect_seconds: f64,
    /// ACK latencies of every affected client over all changes, µs.
    latencies: Vec<f64>,
    /// Per change: the slowest client's latency, µs.
    completions: Vec<f64>,
    popular_max_us: f64,
    random_max_us: f64,
    affected_random: f64,
    cpu_ms_per_change: f64,
    /// Control-plane CPU per affected client, µs: for changes to the popular service, and for
    /// changes to random ones.
    cpu_us_per_client: (f64, f64),
    rss_kib_per_client: f64,
}

/// N simulated clients, connected and subscribed.
struct Clients {
    events: mpsc::UnboundedReceiver<Event>,
    /// The services each client subscribed to, by client id.
    subscriptions: Vec<BTreeSet<usize>>,
    handles: Vec<tokio::task::JoinHandle<Result<()>>>,
    connect_seconds: f64,
}

impl Clients {
    /// Connects `n` clients to `xds`, each subscribed to `share` random services and service 0,
    /// and waits until each has its first response.
    async fn connect(args: &Args, xds: &str, n: usize, flavour: Flavour) -> Result<Clients> {
        let (events_tx, mut events) = mpsc::unbounded_channel::<Event>();
        let mut subscriptions: Vec<BTreeSet<usize>> = Vec::with_capacity(n);
        let started = Instant::now();
        let connecting = Arc::new(Semaphore::new(256));
        let mut handles = Vec::with_capacity(n);
        for id in 0..n {
            let mut services: BTreeSet<usize> = BTreeSet::from([0]);
            while services.len() < args.share + 1 {
                services.insert(fastrand::usize(1..args.services));
            }
            let names = services.iter().map(|i| assignment_name(*i)).collect();
            subscriptions.push(services);
            let (url, events) = (xds.to_owned(), events_tx.clone());
            let permit = connecting.clone().acquire_owned().await?;
            handles.push(tokio::spawn(client(
                id, url, names, flavour, events, permit,
            )));
        }
        let mut first = vec![false; n];
        let mut waiting = n;
        while waiting > 0 {
            let Ok(event) = tokio::time::timeout(Duration::from_secs(120), events.recv()).await
            else {
                let ended = handles.iter().filter(|h| h.is_finished()).count();
                let first_end = match handles.iter_mut().find(|h| h.is_finished()) {
                    Some(handle) => match handle.await? {
                        Err(error) => format!("{error:#}"),
                        Ok(()) => "the stream ended".to_owned(),
                    },
                    None => "none ended".to_owned(),
                };
                bail!("{waiting} clients did not get their first response ({ended} ended; the first: {first_end})");
            };
            let (id, _, _) = event.context("events ended")?;
            if !std::mem::replace(&mut first[id], true) {
                waiting -= 1;
            }
        }
        Ok(Clients {
            events,
            subscriptions,
            handles,
            connect_seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Closes every client and waits until the server has seen them go.
    async fn close(self, admin: &str) -> Result<()> {
        for handle in &self.handles {
            handle.abort();
        }
        drop(self.events);
        let end = Instant::now() + Duration::from_secs(60);
        while connected(admin).await? > 0 && Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }
}

async fn run(
    args: &Args,
    platform: &Platform,
    n: usize,
    flavour: Flavour,
    round: u32,
) -> Result<Run> {
    let rss_before = rss_kib(platform.regional.pid)?;
    let mut clients = Clients::connect(args, &platform.regional.xds, n, flavour).await?;
    let connect_seconds = clients.connect_seconds;
    let subscriptions = clients.subscriptions.clone();
    let events = &mut clients.events;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_after = rss_kib(platform.regional.pid)?;
    let cpu_before = cpu_time(platform.regional.pid)? + cpu_time(platform.global_pid)?;
    let mut latencies = Vec::new();
    let mut completions = Vec::new();
    let (mut popular_max, mut random_max, mut affected_random) = (0f64, 0f64, 0usize);
    let mut cpu_by_kind = [Duration::ZERO; 2];
    for change in 0..args.changes {
        let popular = change % 2 == 0;
        let service = if popular {
            0
        } else {
            fastrand::usize(1..args.services)
        };
        let name = assignment_name(service);
        let affected: BTreeSet<usize> = (0..n)
            .filter(|c| subscriptions[*c].contains(&service))
            .collect();
        while events.try_recv().is_ok() {}
        let port = 30_000 + round * 1000 + change as u32;
        let cpu_at_start = cpu_time(platform.regional.pid)? + cpu_time(platform.global_pid)?;
        let t0 = Instant::now();
        endpoint(&platform.api, service, port).await?;
        let mut pending = affected.clone();
        let mut slowest = 0f64;
        while !pending.is_empty() {
            let (id, at, changed) = tokio::time::timeout(Duration::from_secs(60), events.recv())
                .await
                .with_context(|| format!("{} clients never saw change {change}", pending.len()))?
                .context("events ended")?;
            if changed.contains(&name) && pending.remove(&id) {
                let us = at.duration_since(t0).as_secs_f64() * 1e6;
                latencies.push(us);
                slowest = slowest.max(us);
            }
        }
        completions.push(slowest);
        // Let the control planes finish with the ACKs before reading their CPU time.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let cpu_now = cpu_time(platform.regional.pid)? + cpu_time(platform.global_pid)?;
        cpu_by_kind[usize::from(!popular)] += cpu_now - cpu_at_start;
        if popular {
            popular_max = popular_max.max(slowest);
        } else {
            random_max = random_max.max(slowest);
            affected_random += affected.len();
        }
    }
    let cpu_after = cpu_time(platform.regional.pid)? + cpu_time(platform.global_pid)?;
    clients.close(&platform.regional.admin).await?;
    Ok(Run {
        flavour,
        clients: n,
        connect_seconds,
        latencies,
        completions,
        popular_max_us: popular_max,
        random_max_us: random_max,
        affected_random: affected_random as f64 / (args.changes / 2).max(1) as f64,
        cpu_ms_per_change: (cpu_after - cpu_before).as_secs_f64() * 1e3 / args.changes as f64,
        cpu_us_per_client: (
            cpu_by_kind[0].as_secs_f64() * 1e6 / (n * args.changes.div_ceil(2)).max(1) as f64,
            cpu_by_kind[1].as_secs_f64() * 1e6 / affected_random.max(1) as f64,
        ),
        rss_kib_per_client: rss_after.saturating_sub(rss_before) as f64 / n as f64,
    })
}

/// Open ADS streams on the regional control plane.
async fn connected(admin: &str) -> Result<u64> {
    Ok(metric_sum(admin, "meridian_xds_connected_clients").await? as u64)
}

fn report(args: &Args, runs: &[Run]) {
    println!();
    println!(
        "M = {} services, each client subscribed to {} + 1 popular; {} changes per run, \
         alternately to the popular service (all N clients) and to a random one",
        args.services, args.share, args.changes
    );
    println!(
        "{:<6} {:>6} {:>9} {:>10} {:>10} {:>10} {:>12} {:>12} {:>9} {:>12} {:>19} {:>11}",
        "api",
        "N",
        "connect s",
        "p50 µs",
        "p99 µs",
        "max µs",
        "all-N max",
        "random max",
        "affected",
        "CPU ms/chg",
        "CPU µs/cli all|rnd",
        "RSS KB/cli"
    );
    for run in runs {
        let mut latencies = run.latencies.clone();
        let max = run.completions.iter().cloned().fold(0f64, f64::max);
        println!(
            "{:<6} {:>6} {:>9.1} {:>10.0} {:>10.0} {:>10.0} {:>12.0} {:>12.0} {:>9.0} {:>12.2} {:>19} {:>11.1}",
            run.flavour.name(),
            run.clients,
            run.connect_seconds,
            percentile(&mut latencies, 50.0),
            percentile(&mut latencies, 99.0),
            max,
            run.popular_max_us,
            run.random_max_us,
            run.affected_random,
            run.cpu_ms_per_change,
            format!("{:.0} | {:.0}", run.cpu_us_per_client.0, run.cpu_us_per_client.1),
            run.rss_kib_per_client * 1.024,
        );
    }
    println!();
    for delta in runs.iter().filter(|r| r.flavour == Flavour::Delta) {
        if let Some(sotw) = runs
            .iter()
            .find(|r| r.flavour == Flavour::Sotw && r.clients == delta.clients)
        {
            let max = |r: &Run| r.completions.iter().cloned().fold(0f64, f64::max);
            println!(
                "N = {}: delta / SotW: max latency {:.2}x, CPU per change {:.2}x",
                delta.clients,
                max(delta) / max(sotw),
                delta.cpu_ms_per_change / sotw.cpu_ms_per_change
            );
        }
    }
    let target = |n: usize, limit_us: f64| {
        runs.iter()
            .filter(|r| r.flavour == Flavour::Delta && r.clients == n)
            .map(|r| {
                let max = r.completions.iter().cloned().fold(0f64, f64::max);
                format!(
                    "{} ({:.0} ms)",
                    if max < limit_us { "met" } else { "NOT met" },
                    max / 1e3
                )
            })
            .next()
            .unwrap_or_else(|| "not measured".to_owned())
    };
    // Memory per client is judged at the most clients, where fixed costs weigh least.
    let rss = runs
        .iter()
        .filter(|r| r.flavour == Flavour::Delta)
        .max_by_key(|r| r.clients)
        .map_or(f64::NAN, |r| r.rss_kib_per_client * 1.024);
    println!(
        "targets (delta): N = 10000 max < 1 s: {}; N = 1000 max < 100 ms: {}; RSS <= 20 KB per client at the largest N: {} ({rss:.1} KB)",
        target(10_000, 1e6),
        target(1_000, 1e5),
        if rss <= 20.0 { "met" } else { "NOT met" },
    );
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    client_apply::report(&args.client_clusters).await?;
    if args.client_only {
        return Ok(());
    }
    let mut platform = start_platform(&args).await?;
    println!(
        "control planes pinned to CPUs [{}]; {} services registered; clients in this process",
        args.control_cpus, args.services
    );
    let mut runs = Vec::new();
    for (round, n) in args.clients.iter().enumerate() {
        for api in &args.apis {
            let flavour = match api.as_str() {
                "delta" => Flavour::Delta,
                "sotw" => Flavour::Sotw,
                other => bail!("--apis: `{other}` is neither delta nor sotw"),
            };
            // A fresh regional control plane per run: its memory per client is then not
            // flattered by what an earlier run freed.
            platform.regional = Regional::start(&args, &platform.api, Duration::ZERO).await?;
            let run = run(
                &args,
                &platform,
                *n,
                flavour,
                (round * 2 + flavour as usize) as u32,
            )
            .await?;
            println!(
                "{} N={}: connected in {:.1}s, slowest change {:.0} µs",
                flavour.name(),
                n,
                run.connect_seconds,
                run.completions.iter().cloned().fold(0f64, f64::max)
            );
            runs.push(run);
        }
    }
    report(&args, &runs);
    let mut bursts = Vec::new();
    for (i, window) in args.coalesce_ms.iter().enumerate() {
        let window = Duration::from_millis(*window);
        platform.regional = Regional::start(&args, &platform.api, window).await?;
        let first_burst = i as u32 * args.bursts;
        bursts.push((window, burst(&args, &platform, first_burst).await?));
    }
    report_bursts(&args, &bursts);
    Ok(())
}

/// What one coalescing window did to bursts of changes.
struct Burst {
    /// From the first API call of a burst to the last ACK of its last change, ms; per burst.
    converged_ms: Vec<f64>,
    /// Responses the control plane pushed, per burst.
    pushes: Vec<f64>,
    /// Control-plane CPU per burst, ms.
    cpu_ms: Vec<f64>,
}

/// Bursts of `--burst` changes to distinct services (the popular one among them), all made at
/// once through the API, with `--burst-clients` delta clients connected.
/// `first_burst` numbers this window's bursts after the earlier windows' ones, so that every
/// burst moves its endpoints to ports they never had (a move to the current port is no change).
async fn burst(args: &Args, platform: &Platform, first_burst: u32) -> Result<Burst> {
    let mut clients = Clients::connect(
        args,
        &platform.regional.xds,
        args.burst_clients,
        Flavour::Delta,
    )
    .await?;
    let mut result = Burst {
        converged_ms: Vec::new(),
        pushes: Vec::new(),
        cpu_ms: Vec::new(),
    };
    for round in 0..args.bursts {
        let mut services = BTreeSet::from([0]);
        while services.len() < args.burst.min(args.services) {
            services.insert(fastrand::usize(1..args.services));
        }
        let mut pending: BTreeSet<(usize, usize)> = BTreeSet::new();
        for (client, subscribed) in clients.subscriptions.iter().enumerate() {
            pending.extend(subscribed.intersection(&services).map(|s| (client, *s)));
        }
        while clients.events.try_recv().is_ok() {}
        let pushes_before = pushes(&platform.regional.admin).await?;
        let cpu_before = cpu_time(platform.regional.pid)? + cpu_time(platform.global_pid)?;
        let t0 = Instant::now();
        let writes = Arc::new(Semaphore::new(16));
        let mut writing = Vec::new();
        for service in &services {
            let (api, writes, service) = (platform.api.clone(), writes.clone(), *service);
            let port = 40_000 + (first_burst + round) * 100 + (service % 100) as u32;
            writing.push(tokio::spawn(async move {
                let _permit = writes.acquire().await?;
                endpoint(&api, service, port).await
            }));
        }
        for write in writing {
            write.await??;
        }
        let mut last = t0;
        while !pending.is_empty() {
            let (id, at, changed) =
                tokio::time::timeout(Duration::from_secs(60), clients.events.recv())
                    .await
                    .with_context(|| {
                        let sample: Vec<_> = pending.iter().take(6).collect();
                        format!(
                    "{} changes never reached their clients, e.g. (client, service) {sample:?}",
                    pending.len()
                )
                    })?
                    .context("events ended")?;
            for name in changed {
                if let Some(service) = service_of(&name) {
                    if pending.remove(&(id, service)) {
                        last = last.max(at);
                    }
                }
            }
        }
        result
            .converged_ms
            .push(last.duration_since(t0).as_secs_f64() * 1e3);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let cpu = cpu_time(platform.regional.pid)? + cpu_time(platform.global_pid)? - cpu_before;
        result.cpu_ms.push(cpu.as_secs_f64() * 1e3);
        result
            .pushes
            .push((pushes(&platform.regional.admin).await? - pushes_before) as f64);
    }
    clients.close(&platform.regional.admin).await?;
    Ok(result)
}

/// The service index in an assignment name.
fn service_of(name: &str) -> Option<usize> {
    name.strip_prefix("bench/shop/svc")?
        .strip_suffix(":http")?
        .parse()
        .ok()
}

/// Responses pushed so far by the regional control plane.
async fn pushes(admin: &str) -> Result<u64> {
    Ok(metric_sum(admin, "meridian_xds_pushes_total").await? as u64)
}

fn report_bursts(args: &Args, bursts: &[(Duration, Burst)]) {
    println!();
    println!(
        "bursts: {} changes to distinct services made at once through the API, {} delta clients, {} bursts per window (medians)",
        args.burst, args.burst_clients, args.bursts
    );
    println!(
        "{:<12} {:>16} {:>12} {:>12}",
        "window", "converged ms", "pushes", "CPU ms"
    );
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        percentile(&mut v, 50.0)
    };
    for (window, burst) in bursts {
        println!(
            "{:<12} {:>16.1} {:>12.0} {:>12.0}",
            format!("{} ms", window.as_millis()),
            median(&burst.converged_ms),
            median(&burst.pushes),
            median(&burst.cpu_ms)
        );
    }
}
