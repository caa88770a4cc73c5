//! `meridian edge --location L`: a public listener that routes each host to the nearest region
//! with healthy instances, failing over to the next region by distance. It joins at a region's
//! control plane with a one-time token (as `edge/<location>`) and follows the regions'
//! summaries on the global control plane's xDS, where it also says where its `/metrics` is
//! (for Prometheus discovery). With `--anycast`, it has its local BIRD announce the anycast
//! addresses while it is healthy (docs/anycast.md). On SIGTERM or `meridian edge drain` it
//! stops gracefully: withdraw, let routes converge, drain connections.

mod anycast;
mod stopping;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use meridian_edge::anycast::{address, Anycast, ControlFeed};
use meridian_edge::stop::{Stop, StopTiming};
use meridian_edge::{run_edge, EdgeOptions, Location};

/// How often an edge tells the global control plane where its metrics are and whether it
/// announces (and at once when that changes).
const REPORT_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// `meridian edge`: run an edge, or act on a running one.
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct EdgeCommand {
    #[command(subcommand)]
    command: Option<EdgeSubcommand>,
    #[command(flatten)]
    args: Option<EdgeArgs>,
    // These two beside `args`, not in it: clap tells whether an optional flattened group is
    // present by its own arguments, which it does not collect through a nested flatten (with
    // one inside, `args` is never present).
    #[command(flatten)]
    anycast: anycast::AnycastArgs,
    #[command(flatten)]
    access_log: super::proxy::AccessLogArgs,
    #[command(flatten)]
    trace: super::proxy::TraceArgs,
}

/// What to do with a running edge.
#[derive(Subcommand)]
enum EdgeSubcommand {
    /// Stop a running edge gracefully: withdraw its anycast prefixes, let the routes converge,
    /// drain its connections (HTTP/1.1 `Connection: close`, HTTP/2 GOAWAY), and exit.
    Drain(stopping::DrainArgs),
    /// The process an edge starts to withdraw its prefixes if it dies or freezes.
    #[command(hide = true)]
    Guard(stopping::GuardArgs),
}

/// Options of `meridian edge`.
#[derive(Args)]
pub struct EdgeArgs {
    /// The edge location's name (a DNS label).
    #[arg(long)]
    location: String,
    /// The location's latitude in degrees (regions are ordered by distance from it).
    #[arg(long, allow_hyphen_values = true)]
    lat: f64,
    /// The location's longitude in degrees.
    #[arg(long, allow_hyphen_values = true)]
    lon: f64,
    /// The public plain-HTTP listener (port 0 picks a free one, printed).
    #[arg(long, default_value = "127.0.0.1:8000")]
    listen: SocketAddr,
    /// The public HTTPS listener (TLS 1.2 and 1.3, HTTP/2 and HTTP/1.1), with the certificates
    /// the global control plane sends; none when absent.
    #[arg(long, value_name = "ADDR")]
    listen_https: Option<SocketAddr>,
    /// The admin port (/metrics, /config, /listeners, /healthz); port 0 picks one.
    #[arg(long, default_value = "127.0.0.1:9903")]
    admin: SocketAddr,
    /// A region's control plane (`https://HOST:PORT`, its --xds address), where the edge joins
    /// and renews its certificate.
    #[arg(long, value_name = "URL")]
    control: String,
    /// The global control plane's xDS, which the edge follows; with several replicas, their
    /// URLs separated by commas (it follows one, moves to the next when it fails, and reports
    /// to each).
    #[arg(
        long,
        value_name = "URL[,URL…]",
        default_value = "https://127.0.0.1:17000"
    )]
    global_xds: String,
    /// The one-time join token for `edge/<location>` (first start only; ask an administrator:
    /// meridian join-token edge/<location>).
    #[arg(long, env = "MERIDIAN_JOIN_TOKEN", hide_env_values = true)]
    join_token: Option<String>,
    /// Where the edge keeps its identity.
    #[arg(long, default_value = "./edge-state")]
    state_dir: PathBuf,
    /// Memory the shared HTTP cache may hold (`512Mi`, `2Gi`), objects with their fields and
    /// overhead counted.
    #[arg(long, default_value = "256Mi", value_parser = memory)]
    cache_memory: u64,
    /// Largest response the cache stores (`8Mi`); larger ones pass through.
    #[arg(long, default_value = "8Mi", value_parser = memory)]
    cache_max_object: u64,
    /// A directory for the cache's disk tier: responses kept across restarts, beside the
    /// number of the last purge applied to them (after a restart the edge applies the purges
    /// it missed, or drops the tier, before serving from it). No disk tier when absent.
    #[arg(long, value_name = "DIR")]
    cache_disk: Option<PathBuf>,
    /// Bytes the disk tier may hold (`10Gi`; default 1Gi), each response's file counted
    /// whole; the least recently used go first.
    #[arg(long, value_name = "BYTES", value_parser = memory)]
    cache_disk_size: Option<u64>,
    /// On a graceful stop, how long to go on serving after the anycast prefixes are withdrawn,
    /// while the routes converge elsewhere.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    converge_wait: Duration,
    /// On a graceful stop, how long the connections get to finish (long requests, WebSockets)
    /// before they are cut.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
}

/// A quantity of memory (`256Mi`).
fn memory(text: &str) -> Result<u64, String> {
    meridian_model::Memory::parse(text).map(meridian_model::Memory::bytes)
}

/// The cache's bounds from the flags: both more than zero, an object at most the whole and
/// at most what the store can weigh.
fn cache_limits(args: &EdgeArgs) -> Result<meridian_proxy::CacheLimits> {
    let most = meridian_proxy::CacheLimits::MAX_OBJECT_BYTES as u64;
    if args.cache_memory == 0 {
        anyhow::bail!("--cache-memory: must be more than zero");
    }
    if args.cache_max_object == 0
        || args.cache_max_object > args.cache_memory
        || args.cache_max_object > most
    {
        anyhow::bail!(
            "--cache-max-object: must be more than zero, at most --cache-memory and at most {}",
            meridian_model::Memory::from_bytes(most)
        );
    }
    Ok(meridian_proxy::CacheLimits {
        max_bytes: args.cache_memory,
        // At most `most`, checked above.
        max_object_bytes: args.cache_max_object as usize,
    })
}

/// The disk tier's directory and bound from the flags, if it has one: a bound needs a
/// directory, and is more than zero.
fn cache_disk(args: &EdgeArgs) -> Result<Option<(PathBuf, u64)>> {
    match (&args.cache_disk, args.cache_disk_size) {
        (None, None) => Ok(None),
        (None, Some(_)) => anyhow::bail!("--cache-disk-size: needs --cache-disk"),
        (Some(_), Some(0)) => anyhow::bail!("--cache-disk-size: must be more than zero"),
        (Some(dir), size) => Ok(Some((dir.clone(), size.unwrap_or(1 << 30)))),
    }
}

/// Runs `meridian edge`.
pub async fn run(command: EdgeCommand) -> Result<()> {
    match (command.command, command.args) {
        (Some(EdgeSubcommand::Drain(args)), _) => stopping::drain(args).await,
        (Some(EdgeSubcommand::Guard(args)), _) => stopping::guard(args).await,
        (None, Some(args)) => {
            let observed = (command.access_log, command.trace);
            serve(args, command.anycast, observed).await
        }
        (None, None) => {
            anyhow::bail!("--location, --lat, --lon and --control are needed to run an edge")
        }
    }
}

/// Runs the edge until Ctrl-C, SIGTERM or `meridian edge drain`, then stops gracefully.
async fn serve(
    args: EdgeArgs,
    anycast_args: anycast::AnycastArgs,
    (access_log, trace): (super::proxy::AccessLogArgs, super::proxy::TraceArgs),
) -> Result<()> {
    meridian_model::check_dns_label(&args.location)
        .map_err(|reason| anyhow::anyhow!("--location: {reason}"))?;
    if !(-90.0..=90.0).contains(&args.lat) || !(-180.0..=180.0).contains(&args.lon) {
        anyhow::bail!("--lat and --lon: must be a latitude (-90..90) and a longitude (-180..180)");
    }
    let global_xds = meridian_xds::servers(&args.global_xds);
    if global_xds.is_empty() {
        anyhow::bail!("--global-xds: give the global control plane's https://HOST:PORT");
    }
    let urls = std::iter::once(("--control", &args.control))
        .chain(global_xds.iter().map(|url| ("--global-xds", url)));
    for (flag, url) in urls {
        if !url.starts_with("https://") {
            anyhow::bail!(
                "{flag}: `{url}` must be https://HOST:PORT (control planes need mutual TLS)"
            );
        }
    }
    let anycast_options = anycast_args.options()?;
    if let Some(options) = &anycast_options {
        anycast::check_listener("--listen", args.listen, options)?;
    }
    // The anycast addresses first: the listeners may bind them.
    let addresses = match &anycast_options {
        Some(options) => Some(
            address::bind(&options.prefixes, &options.interface)
                .await
                .map_err(anyhow::Error::msg)?,
        ),
        None => None,
    };
    // The proxy binds the public port when the first configuration arrives, where a port that
    // someone else holds would only show as a refused configuration: say so now, and exit.
    for (flag, address) in [
        ("--listen", Some(args.listen)),
        ("--listen-https", args.listen_https),
    ] {
        let Some(address) = address else { continue };
        drop(
            tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("{flag}: cannot listen on {address}"))?,
        );
    }
    let cache = cache_limits(&args)?;
    let disk = cache_disk(&args)?;
    let enrolled =
        super::identity::enroll(&args.control, &args.state_dir, args.join_token.as_deref()).await?;
    let proxy = match disk {
        Some((dir, size)) => {
            let shown = dir.display().to_string();
            let tier = tokio::task::spawn_blocking(move || {
                meridian_proxy::CacheDiskTier::open(&dir, size)
            })
            .await?
            .with_context(|| format!("--cache-disk: cannot open {shown}"))?;
            meridian_proxy::Proxy::with_cache_on_disk(cache, tier)
                .context("--cache-disk: cannot start its thread")?
        }
        None => meridian_proxy::Proxy::with_cache(cache),
    };
    let proxy = Arc::new(proxy);
    if let Some((target, source)) = access_log.of("edge", &args.location, None) {
        proxy
            .log_access(&target, source)
            .with_context(|| format!("--access-log: cannot open {target}"))?;
    }
    if let Some(options) = trace.of("edge", &args.location, None) {
        proxy
            .trace_to(&options)
            .context("--otlp-endpoint: cannot start tracing")?;
    }
    let enrolled_tls = enrolled.tls.clone();
    let options = EdgeOptions {
        location: Location {
            name: args.location.clone(),
            lat: args.lat,
            lon: args.lon,
        },
        listen: args.listen.to_string(),
        listen_https: args.listen_https.map(|a| a.to_string()),
        global_xds: args.global_xds.clone(),
        tls: enrolled.tls.clone(),
        identity: enrolled.files(),
        trust_domain: enrolled.id.trust_domain.clone(),
        renewed: enrolled.renewed,
    };
    let (ready, first) = tokio::sync::oneshot::channel();
    let feed = ControlFeed::new();
    let mut follower = tokio::spawn(run_edge(options, proxy.clone(), ready, feed.clone()));
    println!(
        "meridian edge {} following {}; waiting for its first configuration",
        args.location, args.global_xds
    );
    tokio::select! {
        _ = first => {}
        ended = &mut follower => {
            return match ended {
                Ok(Err(e)) => Err(anyhow::anyhow!("the edge's TLS could not be set up: {e}")),
                _ => Err(anyhow::anyhow!("the edge stopped following the global control plane")),
            };
        }
        () = super::control::shutdown_signal() => {
            follower.abort();
            return Ok(());
        }
    }
    let listeners = proxy.listeners().await;
    let bound = |wanted: &str| {
        listeners
            .iter()
            .find(|(name, _)| name == wanted)
            .map(|(_, address)| *address)
    };
    let public = bound("public").context("the edge has no public listener")?;
    let anycast = match &anycast_options {
        Some(options) => {
            let guard = std::env::current_exe()
                .map(|program| (program, vec!["edge".to_owned(), "guard".to_owned()]))
                .map_err(
                    |e| tracing::warn!(error = %e, "no anycast guard: cannot find this program"),
                )
                .ok();
            let started =
                match Anycast::start(options, &args.location, public.port(), &feed, guard).await {
                    Ok(started) => Arc::new(started),
                    Err(e) => {
                        // The addresses it bound go with it.
                        if let Some(addresses) = addresses {
                            addresses.unbind().await;
                        }
                        anyhow::bail!("{e}");
                    }
                };
            let metrics = started.clone();
            proxy.add_metrics(Arc::new(move || metrics.metrics_text()));
            Some(started)
        }
        None => None,
    };
    let stop = Stop::new(StopTiming {
        converge: args.converge_wait,
        drain: args.drain_timeout,
    });
    let mut routes = stop.routes();
    if let Some(anycast) = &anycast {
        routes = routes.merge(anycast.routes());
    }
    let admin = meridian_proxy::serve_admin_with(&proxy, args.admin, routes).await?;
    let global = meridian_xds::UnaryClient::new(&args.global_xds, enrolled_tls);
    let reporter = tokio::spawn(meridian_edge::report::report(
        global,
        args.location.clone(),
        admin.to_string(),
        anycast.clone(),
        REPORT_EVERY,
    ));
    println!("meridian edge {} serving http://{public}", args.location);
    if let Some(https) = bound("https") {
        println!("meridian edge {} serving https://{https}", args.location);
    }
    if let Some(anycast) = &anycast {
        let prefixes: Vec<String> = anycast.prefixes().iter().map(|p| p.network()).collect();
        println!(
            "meridian edge {} announces {} once healthy (see http://{admin}/anycast)",
            args.location,
            prefixes.join(", ")
        );
    }
    stop.run(
        super::control::shutdown_signal(),
        &proxy,
        anycast.as_deref(),
    )
    .await;
    follower.abort();
    reporter.abort();
    // The guard withdraws once more as the edge goes, and exits.
    drop(anycast);
    if let Some(addresses) = addresses {
        addresses.unbind().await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Edge {
        #[command(flatten)]
        args: EdgeArgs,
    }

    #[derive(Parser)]
    struct Meridian {
        #[command(subcommand)]
        command: Top,
    }

    #[derive(clap::Subcommand)]
    enum Top {
        Edge(EdgeCommand),
    }

    #[test]
    fn edge_runs_an_edge_or_drains_a_running_one() {
        let parse = |flags: &[&str]| {
            let all = [&["meridian", "edge"][..], flags].concat();
            match Meridian::try_parse_from(all).map(|m| m.command) {
                Ok(Top::Edge(command)) => Ok(command),
                Err(e) => Err(e),
            }
        };
        let run = parse(&[
            "--location",
            "par",
            "--lat",
            "1",
            "--lon",
            "2",
            "--control",
            "https://c:1",
        ])
        .unwrap();
        assert!(run.command.is_none(), "a subcommand");
        assert!(run.args.is_some(), "no args");
        let drain = parse(&["drain", "--admin", "127.0.0.1:9"]).unwrap();
        assert!(matches!(drain.command, Some(EdgeSubcommand::Drain(_))));
        assert!(parse(&["--location", "par"]).is_err());
    }

    fn args(flags: &[&str]) -> EdgeArgs {
        let required = [
            "edge",
            "--location",
            "par",
            "--lat",
            "48.86",
            "--lon",
            "2.35",
        ];
        let all = [&required[..], &["--control", "https://127.0.0.1:1"], flags].concat();
        Edge::try_parse_from(all).unwrap().args
    }

    fn limits(flags: &[&str]) -> Result<meridian_proxy::CacheLimits> {
        cache_limits(&args(flags))
    }

    #[test]
    fn the_disk_tier_is_configured_by_its_flags_and_bad_ones_name_the_flag() {
        assert_eq!(cache_disk(&args(&[])).unwrap(), None);
        assert_eq!(
            cache_disk(&args(&["--cache-disk", "/var/cache/m"])).unwrap(),
            Some((PathBuf::from("/var/cache/m"), 1 << 30))
        );
        let sized = args(&["--cache-disk", "d", "--cache-disk-size", "10Gi"]);
        assert_eq!(
            cache_disk(&sized).unwrap(),
            Some((PathBuf::from("d"), 10 << 30))
        );
        let alone = cache_disk(&args(&["--cache-disk-size", "1Gi"])).unwrap_err();
        assert!(
            alone.to_string().starts_with("--cache-disk-size:"),
            "{alone}"
        );
        let zero = cache_disk(&args(&["--cache-disk", "d", "--cache-disk-size", "0"]));
        assert!(zero
            .unwrap_err()
            .to_string()
            .starts_with("--cache-disk-size:"));
    }

    #[test]
    fn the_cache_is_sized_by_its_flags_and_bad_sizes_name_the_flag() {
        let defaults = limits(&[]).unwrap();
        assert_eq!(defaults, meridian_proxy::DEFAULT_CACHE_LIMITS);
        let sized = limits(&["--cache-memory", "1Gi", "--cache-max-object", "64Mi"]).unwrap();
        assert_eq!(
            (sized.max_bytes, sized.max_object_bytes),
            (1 << 30, 64 << 20)
        );
        let error = limits(&["--cache-memory", "0"]).unwrap_err().to_string();
        assert!(error.starts_with("--cache-memory:"), "{error}");
        let error = limits(&["--cache-memory", "1Mi", "--cache-max-object", "2Mi"]).unwrap_err();
        assert!(
            error.to_string().starts_with("--cache-max-object:"),
            "{error}"
        );
        let unit = Edge::try_parse_from(["edge", "--cache-memory", "1Zi"]);
        assert!(unit.is_err());
    }
}
