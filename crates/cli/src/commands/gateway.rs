//! `meridian gateway --region R`: the region's ingress, a proxy in the gateway role following
//! its region's control plane over mutual TLS (the same as `meridian proxy --xds … --role
//! gateway`).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::proxy::{run_from_xds, AccessLogArgs, TraceArgs, XdsArgs};

/// Options of `meridian gateway`.
#[derive(Args)]
pub struct GatewayArgs {
    /// The region.
    #[arg(long)]
    region: String,
    /// The region's control plane (`https://HOST:PORT`, its --xds address).
    #[arg(long, value_name = "URL")]
    control: String,
    /// The one-time join token for `gateway` (first start only; ask an administrator:
    /// meridian join-token gateway).
    #[arg(long, env = "MERIDIAN_JOIN_TOKEN", hide_env_values = true)]
    join_token: Option<String>,
    /// Where the gateway keeps its identity and the last configuration it accepted.
    #[arg(long, default_value = "./gateway-state")]
    state_dir: PathBuf,
    /// Address of the admin port (/metrics, /config, /listeners, /healthz); port 0 picks one.
    #[arg(long, default_value = "127.0.0.1:9904")]
    admin: SocketAddr,
    #[command(flatten)]
    access_log: AccessLogArgs,
    #[command(flatten)]
    trace: TraceArgs,
}

/// Runs the gateway until Ctrl-C or SIGTERM.
pub async fn run(args: GatewayArgs) -> Result<()> {
    meridian_model::check_dns_label(&args.region)
        .map_err(|reason| anyhow::anyhow!("--region: {reason}"))?;
    if !args.control.starts_with("https://") {
        anyhow::bail!(
            "--control: `{}` must be https://HOST:PORT (the control plane needs mutual TLS)",
            args.control
        );
    }
    let node_id = format!("gateway-{}", args.region);
    run_from_xds(XdsArgs {
        access_log: args.access_log.of("gateway", &node_id, Some(&args.region)),
        trace: args.trace.of("gateway", &node_id, Some(&args.region)),
        server: args.control,
        join_token: args.join_token,
        node_id,
        role: "gateway".to_owned(),
        region: Some(args.region),
        state_dir: args.state_dir,
        admin: args.admin,
    })
    .await
}
