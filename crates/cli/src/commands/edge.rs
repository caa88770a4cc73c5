//! `meridian edge --location L`: a public listener that routes each host to the nearest region
//! with healthy instances, failing over to the next region by distance. It joins at a region's
//! control plane with a one-time token (as `edge/<location>`) and follows the regions'
//! summaries on the global control plane's xDS, where it also says where its `/metrics` is
//! (for Prometheus discovery).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use meridian_edge::{run_edge, EdgeOptions, Location};
use meridian_xds::meridian::{EdgeReport, EDGE_REPORT_PATH};

/// How often an edge tells the global control plane where its metrics are.
const REPORT_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

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
    /// The global control plane's xDS, which the edge follows.
    #[arg(long, value_name = "URL", default_value = "https://127.0.0.1:17000")]
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
    #[command(flatten)]
    access_log: super::proxy::AccessLogArgs,
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

/// Runs the edge until Ctrl-C or SIGTERM.
pub async fn run(args: EdgeArgs) -> Result<()> {
    meridian_model::check_dns_label(&args.location)
        .map_err(|reason| anyhow::anyhow!("--location: {reason}"))?;
    if !(-90.0..=90.0).contains(&args.lat) || !(-180.0..=180.0).contains(&args.lon) {
        anyhow::bail!("--lat and --lon: must be a latitude (-90..90) and a longitude (-180..180)");
    }
    for (flag, url) in [
        ("--control", &args.control),
        ("--global-xds", &args.global_xds),
    ] {
        if !url.starts_with("https://") {
            anyhow::bail!(
                "{flag}: `{url}` must be https://HOST:PORT (control planes need mutual TLS)"
            );
        }
    }
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
    let enrolled =
        super::identity::enroll(&args.control, &args.state_dir, args.join_token.as_deref()).await?;
    let proxy = Arc::new(meridian_proxy::Proxy::with_cache(cache));
    if let Some((target, source)) = args.access_log.of("edge", &args.location, None) {
        proxy
            .log_access(&target, source)
            .with_context(|| format!("--access-log: cannot open {target}"))?;
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
    let mut follower = tokio::spawn(run_edge(options, proxy.clone(), ready));
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
    let admin = meridian_proxy::serve_admin(&proxy, args.admin).await?;
    let global = meridian_xds::UnaryClient::new(&args.global_xds, enrolled_tls);
    let report = EdgeReport {
        location: args.location.clone(),
        metrics_address: admin.to_string(),
    };
    let reporter = tokio::spawn(global.report_every(
        EDGE_REPORT_PATH,
        REPORT_EVERY,
        "edge metrics address",
        move || report.clone(),
    ));
    println!("meridian edge {} serving http://{public}", args.location);
    if let Some(https) = bound("https") {
        println!("meridian edge {} serving https://{https}", args.location);
    }
    let result = meridian_proxy::serve_until(&proxy, super::control::shutdown_signal()).await;
    follower.abort();
    reporter.abort();
    Ok(result?)
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

    fn limits(flags: &[&str]) -> Result<meridian_proxy::CacheLimits> {
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
        cache_limits(&Edge::try_parse_from(all).unwrap().args)
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
