//! The dev topology (`meridian dev`: a global control plane, three regions of two nodes with a
//! gateway each, two edges) as benchmarks start and stop it.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, BufReader};

/// How long `meridian dev` may take to be ready, and to stop.
const DEADLINE: Duration = Duration::from_secs(120);

/// Where `meridian dev` listens (away from its defaults, so that a benchmark and a person's
/// `meridian dev` can run side by side).
pub struct DevPorts {
    /// The API (`ip:port`).
    pub api: &'static str,
    /// The first region's gateway (the others follow).
    pub gateway: u16,
    /// The first edge's plain HTTP port.
    pub edge: u16,
    /// The first edge's HTTPS port (TCP and UDP).
    pub edge_https: u16,
}

/// The `meridian-hello` next to `meridian`, as an absolute path (agents start instances in
/// directories of their own).
pub fn hello_beside(meridian: &Path) -> Result<std::path::PathBuf> {
    let hello = meridian.with_file_name("meridian-hello");
    std::fs::canonicalize(&hello).with_context(|| {
        format!(
            "{} is missing: build it with cargo build --release",
            hello.display()
        )
    })
}

/// Starts `meridian dev` with its data in `dir`; returns it, the API and the admin token once
/// it is ready.
pub async fn start_dev(
    meridian: &Path,
    dir: &Path,
    ports: &DevPorts,
) -> Result<(tokio::process::Child, String, String)> {
    let mut child = tokio::process::Command::new(meridian)
        .arg("dev")
        .arg("--data-dir")
        .arg(dir)
        .args(["--listen", ports.api])
        .args(["--gateway-port", &ports.gateway.to_string()])
        .args(["--edge-port", &ports.edge.to_string()])
        .args(["--edge-https-port", &ports.edge_https.to_string()])
        .env(
            "MERIDIAN_LOG",
            std::env::var("MERIDIAN_LOG").unwrap_or_else(|_| "warn".to_owned()),
        )
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {} dev", meridian.display()))?;
    let mut lines = BufReader::new(child.stdout.take().context("no stdout")?).lines();
    let found = tokio::time::timeout(DEADLINE, async {
        while let Some(line) = lines.next_line().await? {
            if let Some(rest) = line.trim().strip_prefix("export MERIDIAN_API=") {
                if let Some((api, token)) = rest.split_once(" MERIDIAN_TOKEN=") {
                    return Ok((api.to_owned(), token.trim().to_owned()));
                }
            }
        }
        bail!("meridian dev ended before it was ready")
    })
    .await
    .context("meridian dev was not ready in time")??;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, found.0, found.1))
}

/// Stops `dev` with SIGTERM, so that it stops its children (and their network namespaces) in
/// order, and waits for it.
pub async fn stop_dev(mut dev: tokio::process::Child) -> Result<()> {
    if let Some(pid) = dev
        .id()
        .and_then(|pid| i32::try_from(pid).ok())
        .and_then(rustix::process::Pid::from_raw)
    {
        rustix::process::kill_process(pid, rustix::process::Signal::TERM)?;
    }
    tokio::time::timeout(DEADLINE, dev.wait())
        .await
        .context("meridian dev did not stop")??;
    Ok(())
}
