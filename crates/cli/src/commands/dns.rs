//! `meridian dns`: the `.internal` DNS server on its own, answering from a table file — for
//! trying it out and for `bench/dns.py`. Agents run the same server for their instances.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use meridian_dns::{serve_udp, DnsMetrics, Entry, Table, Tables, Upstream};
use serde::Deserialize;

/// Options of `meridian dns`.
#[derive(Args)]
pub struct DnsArgs {
    /// Where to listen (UDP).
    #[arg(long, default_value = "127.0.0.1:5353")]
    listen: SocketAddr,
    /// The table: JSON `{"<caller ip>": {"<name>": {"address": "<ipv4>", "ports": {"<port
    /// name>": <number>}}}}`.
    #[arg(long)]
    table: PathBuf,
    /// Where other names are forwarded (none: they are answered SERVFAIL).
    #[arg(long)]
    upstream: Option<SocketAddr>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    address: Ipv4Addr,
    #[serde(default)]
    ports: BTreeMap<String, u16>,
}

/// Serves the table until Ctrl-C or SIGTERM.
pub async fn run(args: DnsArgs) -> Result<()> {
    let text = std::fs::read_to_string(&args.table)
        .with_context(|| format!("reading {}", args.table.display()))?;
    let file: HashMap<IpAddr, HashMap<String, FileEntry>> = serde_json::from_str(&text)
        .with_context(|| {
            format!(
                "{}: not a table of callers, names and entries",
                args.table.display()
            )
        })?;
    let tables: HashMap<IpAddr, Arc<Table>> = file
        .into_iter()
        .map(|(caller, names)| {
            let table = names
                .into_iter()
                .map(|(name, entry)| {
                    let name = name.trim_end_matches('.').to_ascii_lowercase();
                    let ports = entry.ports.into_iter().collect();
                    (
                        name,
                        Entry {
                            address: entry.address,
                            ports,
                        },
                    )
                })
                .collect();
            (caller, Arc::new(table))
        })
        .collect();
    let names: usize = tables.values().map(|t| t.len()).sum();
    let shared = Arc::new(Tables::default());
    shared.replace(tables);
    let socket = tokio::net::UdpSocket::bind(args.listen)
        .await
        .with_context(|| format!("listening on {} (is the port in use?)", args.listen))?;
    println!(
        "meridian dns serving {names} names on udp://{}",
        socket.local_addr()?
    );
    let server = serve_udp(
        socket,
        shared,
        Arc::new(Upstream::new(args.upstream)),
        Arc::new(DnsMetrics::default()),
    );
    tokio::select! {
        () = server => {}
        () = super::control::shutdown_signal() => {}
    }
    Ok(())
}
