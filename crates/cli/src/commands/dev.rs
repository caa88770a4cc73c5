//! `meridian dev`: a platform on this machine, each component its own process on loopback, with
//! an example app deployed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;

use anyhow::{bail, Context, Result};
use clap::Args;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::client::Client;
use crate::commands::resources;
use crate::output::Format;
use crate::ClientArgs;

/// The example regions, with coordinates.
const REGIONS: [(&str, f64, f64); 3] = [
    ("fra", 50.11, 8.68),
    ("iad", 38.95, -77.45),
    ("sin", 1.35, 103.82),
];

/// The example app's services, deployed in this order.
const EXAMPLES: [(&str, &str); 2] = [
    (
        "examples/hello.yaml",
        include_str!("../../../../examples/hello.yaml"),
    ),
    (
        "examples/api.yaml",
        include_str!("../../../../examples/api.yaml"),
    ),
];

/// Options of `meridian dev`.
#[derive(Args)]
pub struct DevArgs {
    /// Directory for the platform's state; a new one under the system's temporary directory by
    /// default.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Address of the public API.
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Stop everything once the example app is deployed, instead of running until Ctrl-C.
    #[arg(long)]
    exit_after_deploy: bool,
}

/// Starts the components, deploys the example app, and runs until Ctrl-C.
pub async fn run(args: DevArgs) -> Result<()> {
    let data_dir = match args.data_dir {
        Some(dir) => dir,
        None => std::env::temp_dir().join(format!("meridian-dev-{}", std::process::id())),
    };
    let exe = std::env::current_exe().context("finding the meridian binary")?;
    println!(
        "starting the global control plane (data in {})",
        data_dir.display()
    );
    let mut control = Command::new(exe)
        .args(["control", "--global", "--listen", &args.listen.to_string()])
        .arg("--data-dir")
        .arg(&data_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting `meridian control --global`")?;
    let (api, token) = read_startup(&mut control).await?;
    let client = Client::new(&ClientArgs {
        api: api.clone(),
        token: Some(token.clone()),
        output: Format::Table,
    })?;
    for (name, lat, lon) in REGIONS {
        let command = resources::RegionCommand::Add {
            name: name.to_owned(),
            lat,
            lon,
        };
        resources::region(&client, Format::Table, command).await?;
    }
    for (file, text) in EXAMPLES {
        let definition: serde_json::Value =
            serde_yaml_ng::from_str(text).with_context(|| format!("parsing {file}"))?;
        resources::deploy_definition(&client, Format::Table, &definition).await?;
    }
    println!();
    println!("Meridian dev is up: the global control plane serves {api}");
    println!("  export MERIDIAN_API={api} MERIDIAN_TOKEN={token}");
    println!("  meridian get services; meridian status web --app shop");
    if args.exit_after_deploy {
        return stop(control).await;
    }
    println!("Ctrl-C stops everything.");
    tokio::select! {
        _ = crate::commands::control::shutdown_signal() => stop(control).await,
        exit = control.wait() => bail!("the control plane exited unexpectedly ({:?})", exit?),
    }
}

/// Reads the control plane's startup lines: its URL and (first start only) its admin token.
async fn read_startup(control: &mut Child) -> Result<(String, String)> {
    let stdout = control
        .stdout
        .take()
        .context("control plane has no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let mut api = None;
    let read = async {
        while let Some(line) = lines.next_line().await? {
            if let Some(rest) = line.strip_prefix("meridian control (global) serving ") {
                api = rest.split_whitespace().next().map(str::to_owned);
            } else if line.starts_with("admin token") {
                let token = line
                    .split_once("stored hashed): ")
                    .map(|(_, t)| t.trim().to_owned());
                return Ok::<_, std::io::Error>(token);
            }
        }
        Ok(None)
    };
    let token = tokio::time::timeout(std::time::Duration::from_secs(30), read)
        .await
        .context("the control plane did not start within 30 s")??;
    // Keep draining its stdout so that it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    match (api, token) {
        (Some(api), Some(token)) => Ok((api, token)),
        (None, _) => bail!("the control plane exited before serving; see its log above"),
        (Some(_), None) => bail!(
            "the data directory was used before, so no admin token was printed; \
             pass a new --data-dir"
        ),
    }
}

async fn stop(mut control: Child) -> Result<()> {
    println!("stopping");
    control.start_kill().ok();
    control.wait().await?;
    Ok(())
}
