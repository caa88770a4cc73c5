//! `meridian proxy`: the data plane, driven by a config file.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

/// Options of `meridian proxy`.
#[derive(Args)]
pub struct ProxyArgs {
    /// The config file (YAML or JSON; see docs/proxy-config.md). Edits, or SIGHUP, reload it.
    #[arg(long)]
    config: PathBuf,
    /// Address of the admin port (/metrics, /config, /listeners, /healthz); port 0 picks one.
    #[arg(long, default_value = "127.0.0.1:9901")]
    admin: SocketAddr,
}

/// Runs the proxy until Ctrl-C or SIGTERM.
pub async fn run(args: ProxyArgs) -> Result<()> {
    let options = meridian_proxy::RunOptions {
        config: args.config,
        admin: args.admin,
    };
    meridian_proxy::run(options, super::control::shutdown_signal()).await?;
    Ok(())
}
