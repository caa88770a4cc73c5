//! `meridian node`: a region's nodes, through its control plane's admin port (admin): list
//! them, drain one (its instances move to other nodes, each replaced before it drains, and it
//! takes no new ones), or end a drain.

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use meridian_model::{Cpu, Memory};

use crate::connection::ClientArgs;

/// `meridian node` subcommands.
#[derive(Subcommand)]
pub enum NodeCommand {
    /// List the region's nodes: live or not, drained or not, capacity and instances placed.
    List(Region),
    /// Drain a node: it takes no new instances, and each of its instances is replaced on
    /// another node (when one has room) and then drained (out of the proxies' endpoints,
    /// connections finished, stopped), as in a rolling deploy. It stays drained (across
    /// restarts of the region's control plane) until `meridian node undrain`.
    Drain(Named),
    /// End a node's drain: it takes new instances again (those already moved stay where they
    /// are).
    Undrain(Named),
}

/// Which region's control plane.
#[derive(Args)]
pub struct Region {
    /// The region's control plane admin address (its `--admin`).
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:9902")]
    control: String,
}

/// A node of a region.
#[derive(Args)]
pub struct Named {
    /// The node's name (as its agent's `--node`).
    node: String,
    #[command(flatten)]
    region: Region,
}

/// Runs a `meridian node` subcommand.
pub async fn run(command: NodeCommand, client: ClientArgs) -> Result<()> {
    let token = client.connection().await?.token.context(
        "nodes are for administrators: pass --token, set MERIDIAN_TOKEN or use a context with \
         an admin token",
    )?;
    let http = reqwest::Client::new();
    let (request, url, control) = match &command {
        NodeCommand::List(region) => {
            let url = format!("{}/v1/nodes", region.control.trim_end_matches('/'));
            (http.get(&url), url, &region.control)
        }
        NodeCommand::Drain(named) | NodeCommand::Undrain(named) => {
            let verb = if matches!(command, NodeCommand::Drain(_)) {
                "drain"
            } else {
                "undrain"
            };
            let url = format!(
                "{}/v1/nodes/{}/{verb}",
                named.region.control.trim_end_matches('/'),
                named.node
            );
            (http.post(&url), url, &named.region.control)
        }
    };
    let what = format!("the region's control plane at {control}");
    let body = crate::commands::region_admin::call(request.bearer_auth(token), &url, &what).await?;
    match command {
        NodeCommand::List(_) => {
            let nodes = body.as_array().cloned().unwrap_or_default();
            println!("NODE\tSTATE\tINSTANCES\tCAPACITY\tCPU\tMEMORY");
            for node in nodes {
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}",
                    node["name"].as_str().unwrap_or_default(),
                    state(&node),
                    node["instances"],
                    node["capacity"],
                    asked_of(&node, "cpu_millis", |n| Cpu::from_millis(
                        u32::try_from(n).unwrap_or(u32::MAX)
                    )
                    .to_string()),
                    asked_of(&node, "memory_bytes", |n| Memory::from_bytes(n).to_string()),
                );
            }
        }
        NodeCommand::Drain(named) => println!(
            "node {} drains: its instances move to other nodes as they have room ({} placed there now)",
            named.node, body["instances"]
        ),
        NodeCommand::Undrain(named) => {
            println!("node {} takes new instances again", named.node);
        }
    }
    Ok(())
}

/// What a node's instances ask of its `field` out of what it offers (`1.5/4`), each shown by
/// `show`; `-` when it does not say.
fn asked_of(node: &serde_json::Value, field: &str, show: fn(u64) -> String) -> String {
    let offered = node[field].as_u64().unwrap_or(0);
    let asked = node[format!("{field}_asked")].as_u64().unwrap_or(0);
    if offered == 0 {
        return "-".to_owned();
    }
    format!("{}/{}", show(asked), show(offered))
}

/// How a node is listed: `ready`, `drained`, or `gone` (its agent stopped reporting).
fn state(node: &serde_json::Value) -> &'static str {
    match (node["live"].as_bool(), node["drained"].as_bool()) {
        (Some(false), _) => "gone, drained",
        (_, Some(true)) => "drained",
        _ => "ready",
    }
}
