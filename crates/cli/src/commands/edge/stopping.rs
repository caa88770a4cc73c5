//! `meridian edge drain`: stops a running edge gracefully through its admin port (withdraw the
//! anycast prefixes, let the routes converge, drain the connections, exit) and follows it to
//! the end; and `meridian edge guard`, the process an edge starts to withdraw for it if it
//! dies or freezes (not for people).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use meridian_edge::anycast::{run_guard, GuardOptions};

/// Options of `meridian edge drain`.
#[derive(Args)]
pub struct DrainArgs {
    /// The edge's admin port.
    #[arg(long, default_value = "127.0.0.1:9903")]
    admin: SocketAddr,
    /// Return once the prefixes are withdrawn, without waiting for the edge to exit.
    #[arg(long)]
    no_wait: bool,
}

/// Options of `meridian edge guard`.
#[derive(Args)]
pub struct GuardArgs {
    /// BIRD's control socket.
    #[arg(long)]
    bgp_socket: PathBuf,
    /// The state file of the edge's static protocols.
    #[arg(long)]
    state_file: PathBuf,
    /// A static protocol holding the anycast routes (repeated).
    #[arg(long = "protocol", required = true)]
    protocols: Vec<String>,
    /// How long without a sign of life before withdrawing.
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Duration,
}

/// Asks the edge to stop, prints what it said, and waits until its admin port is gone.
pub async fn drain(args: DrainArgs) -> Result<()> {
    let client = reqwest::Client::new();
    let url = format!("http://{}", args.admin);
    let answer: serde_json::Value = client
        .post(format!("{url}/drain"))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .with_context(|| {
            format!(
                "--admin: the edge's admin port at {} did not answer",
                args.admin
            )
        })?
        .json()
        .await
        .context("the edge's answer is not JSON")?;
    let seconds = |field: &str| answer[field].as_f64().unwrap_or(0.0);
    let (converge, drain) = (
        seconds("converge_seconds"),
        seconds("drain_timeout_seconds"),
    );
    println!(
        "edge at {} is stopping ({}): routes converge for {converge} s, then connections drain for up to {drain} s",
        args.admin,
        answer["stage"].as_str().unwrap_or("?"),
    );
    if args.no_wait {
        return Ok(());
    }
    let end = Instant::now() + Duration::from_secs_f64(converge + drain) + Duration::from_secs(10);
    while Instant::now() < end {
        if client.get(format!("{url}/stop")).send().await.is_err() {
            println!("edge at {} stopped", args.admin);
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!(
        "the edge at {} is still running after its drain timeout",
        args.admin
    )
}

/// Runs the guard until the edge is gone.
pub async fn guard(args: GuardArgs) -> Result<()> {
    run_guard(GuardOptions {
        socket: args.bgp_socket,
        state_file: args.state_file,
        protocols: args.protocols,
        timeout: args.timeout,
    })
    .await;
    Ok(())
}
