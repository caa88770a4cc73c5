//! `meridian edge --location L`: a public listener that routes each host to the nearest region
//! with healthy instances, failing over to the next region by distance.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use meridian_edge::{run_edge, EdgeOptions, Location};

use crate::ClientArgs;

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
    /// The public listener (plain HTTP for now; port 0 picks a free one, printed).
    #[arg(long, default_value = "127.0.0.1:8000")]
    listen: SocketAddr,
    /// The admin port (/metrics, /config, /listeners, /healthz); port 0 picks one.
    #[arg(long, default_value = "127.0.0.1:9903")]
    admin: SocketAddr,
}

/// Runs the edge until Ctrl-C or SIGTERM.
pub async fn run(args: EdgeArgs, client: ClientArgs) -> Result<()> {
    meridian_model::check_dns_label(&args.location)
        .map_err(|reason| anyhow::anyhow!("--location: {reason}"))?;
    if !(-90.0..=90.0).contains(&args.lat) || !(-180.0..=180.0).contains(&args.lon) {
        anyhow::bail!("--lat and --lon: must be a latitude (-90..90) and a longitude (-180..180)");
    }
    let token = client.token.context(
        "the edge reads regions and their reports: pass an admin --token or set MERIDIAN_TOKEN",
    )?;
    let proxy = Arc::new(meridian_proxy::Proxy::default());
    let options = EdgeOptions {
        location: Location {
            name: args.location.clone(),
            lat: args.lat,
            lon: args.lon,
        },
        listen: args.listen.to_string(),
        api: client.api.clone(),
        token,
    };
    let (ready, first) = tokio::sync::oneshot::channel();
    let follower = tokio::spawn(run_edge(options, proxy.clone(), ready));
    println!(
        "meridian edge {} following {}; waiting for its first configuration",
        args.location, client.api
    );
    tokio::select! {
        _ = first => {}
        () = super::control::shutdown_signal() => {
            follower.abort();
            return Ok(());
        }
    }
    let public = proxy
        .listeners()
        .await
        .into_iter()
        .find(|(name, _)| name == "public")
        .map(|(_, address)| address)
        .context("the edge has no public listener")?;
    meridian_proxy::serve_admin(&proxy, args.admin).await?;
    println!("meridian edge {} serving http://{public}", args.location);
    let result = meridian_proxy::serve_until(&proxy, super::control::shutdown_signal()).await;
    follower.abort();
    Ok(result?)
}
