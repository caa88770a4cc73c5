//! `meridian dev`: a whole platform on this machine, each component its own process on
//! loopback with its data under one directory: the global control plane, three regions (a
//! control plane, two nodes' agents and a gateway each), and the example app deployed and
//! served. A second start with the same `--data-dir` reuses everything. A component that exits
//! is started again ([`children`]); only Ctrl-C or SIGTERM stops the platform.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;

use crate::client::Client;
use crate::commands::resources;
use crate::connection::Connection;
use crate::output::Format;

pub mod children;
mod component;
mod ports;
mod progress;

use children::Children;
use progress::Progress;

/// The example regions, with coordinates.
const REGIONS: [(&str, f64, f64); 3] = [
    ("fra", 50.11, 8.68),
    ("iad", 38.95, -77.45),
    ("sin", 1.35, 103.82),
];

/// The example edge locations, with coordinates.
const EDGES: [(&str, f64, f64); 2] = [("par", 48.86, 2.35), ("nyc", 40.71, -74.01)];

/// Nodes (agents) per region.
const NODES_PER_REGION: usize = 2;

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

/// The regions `examples/hello.yaml` deploys the web service to.
const WEB_REGIONS: [&str; 2] = ["fra", "iad"];

/// The public host name of the example's web service.
const EXAMPLE_HOST: &str = "shop.example.com";

/// Options of `meridian dev`.
#[derive(Args)]
pub struct DevArgs {
    /// Directory for the platform's state (reused by the next start); a new one under the
    /// system's temporary directory by default.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Address of the public API.
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Port of the first region's gateway in plain HTTP; the others follow (fra, iad, sin).
    /// Their listeners for the edges (mutual TLS) are 100 ports up.
    #[arg(long, default_value_t = 18080)]
    gateway_port: u16,
    /// Port of the first edge's public listener in plain HTTP; the other follows (par, nyc).
    #[arg(long, default_value_t = 18090)]
    edge_port: u16,
    /// Port of the first edge's HTTPS listener (HTTP/1.1 and HTTP/2 over TCP, HTTP/3 over UDP
    /// on the same port number); the other follows.
    #[arg(long, default_value_t = 18443)]
    edge_https_port: u16,
    /// Order the example's certificates from this ACME directory (e.g. a local pebble) instead
    /// of the local CA dev makes.
    #[arg(long, value_name = "URL")]
    acme_directory: Option<String>,
    /// The PEM root of the ACME server's own HTTPS certificate (for a private ACME CA).
    #[arg(long, value_name = "FILE", requires = "acme_directory")]
    acme_ca_root: Option<PathBuf>,
    /// Stop everything once the example app is served, instead of running until Ctrl-C.
    #[arg(long)]
    exit_when_ready: bool,
    /// Trace every request: the edges, gateways and node proxies export their spans with OTLP
    /// over gRPC to this collector (`http://HOST:4317`; each records all traces, see
    /// docs/observability.md). Off by default.
    #[arg(long, value_name = "URL", value_parser = super::proxy::otlp_endpoint)]
    otlp_endpoint: Option<String>,
}

/// A region's parts once they run.
struct Region {
    name: &'static str,
    xds: String,
    /// Its admin port, where join tokens are made.
    admin: String,
    gateway: SocketAddr,
}

/// Starts the platform, deploys the example app, waits until it is served, prints where to
/// reach it, and runs until Ctrl-C (or until it is ready, with `--exit-when-ready`).
pub async fn run(args: DevArgs) -> Result<()> {
    let data_dir = match args.data_dir {
        Some(dir) => dir,
        None => std::env::temp_dir().join(format!("meridian-dev-{}", std::process::id())),
    };
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    // Listen for Ctrl-C and SIGTERM before the first child starts: a stop asked for at any
    // moment stops the children in order.
    let mut stop = Stop::listen()?;
    let ports = Ports {
        gateway: args.gateway_port,
        edge: args.edge_port,
        edge_https: args.edge_https_port,
    };
    ports::check_free(&ports::used(args.listen, &ports))?;
    let issuer = match args.acme_directory {
        Some(directory) => Issuer::Acme {
            directory,
            ca_root: args.acme_ca_root,
        },
        None => Issuer::LocalCa,
    };
    let exe = std::env::current_exe().context("finding the meridian binary")?;
    let mut children = Children::new(&exe, &data_dir.join("logs"))?;
    let started = tokio::select! {
        result = start_and_serve(&args.listen, &ports, &issuer, &data_dir, args.otlp_endpoint.as_deref(), &mut children) => Some(result),
        () = stop.requested() => None,
    };
    match started {
        Some(Ok(())) if !args.exit_when_ready => {
            println!("Ctrl-C stops everything; a component that exits is started again.");
            stop.requested().await;
        }
        Some(Ok(())) | None => {}
        Some(Err(e)) => {
            children.stop_all().await;
            return Err(e);
        }
    }
    children.stop_all().await;
    Ok(())
}

/// The fixed ports dev's gateways and edges listen on (the first region's or edge's; the others
/// follow).
pub struct Ports {
    /// The gateways' plain-HTTP ports.
    pub gateway: u16,
    /// The edges' plain-HTTP ports.
    pub edge: u16,
    /// The edges' HTTPS ports (TCP, and UDP for HTTP/3).
    pub edge_https: u16,
}

/// Where the example's certificates come from.
enum Issuer {
    /// A local CA the global control plane makes in its data directory.
    LocalCa,
    /// An ACME CA.
    Acme {
        directory: String,
        ca_root: Option<PathBuf>,
    },
}

/// Command-line flags of a component: switches, paths, and other values.
type Flags = (
    Vec<&'static str>,
    Vec<(&'static str, PathBuf)>,
    Vec<(&'static str, String)>,
);

impl Issuer {
    /// The global control plane's flags for it (besides its secrets key).
    fn flags(&self) -> Flags {
        match self {
            Issuer::LocalCa => (vec!["--local-ca"], Vec::new(), Vec::new()),
            Issuer::Acme { directory, ca_root } => (
                Vec::new(),
                ca_root
                    .iter()
                    .map(|r| ("--acme-ca-root", r.clone()))
                    .collect(),
                vec![("--acme-directory", directory.clone())],
            ),
        }
    }
}

/// Ctrl-C and SIGTERM, listened for from its creation on (one that comes before anyone waits is
/// kept for the next wait).
struct Stop {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Stop {
    fn listen() -> Result<Stop> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Stop {
            interrupt: signal(SignalKind::interrupt()).context("listening for Ctrl-C")?,
            terminate: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
        })
    }

    /// Resolves at the next Ctrl-C or SIGTERM.
    async fn requested(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

async fn start_and_serve(
    listen: &SocketAddr,
    ports: &Ports,
    issuer: &Issuer,
    data_dir: &Path,
    otlp: Option<&str>,
    children: &mut Children,
) -> Result<()> {
    println!(
        "starting the global control plane (data in {})",
        data_dir.display()
    );
    // Its last startup line is about the admin token (shown at the first start only).
    // It keeps the edges' certificate keys sealed with a key made at the first start.
    let control_global = "control-global";
    let global_dir = data_dir.join("global");
    let (issuer_args, issuer_paths, issuer_options) = issuer.flags();
    let args = ["control", "--global", "--create-secrets-key"];
    let paths = [
        ("--data-dir", global_dir.clone()),
        ("--secrets-key", global_dir.join("secrets.key")),
    ];
    let options = [
        ("--listen", listen.to_string()),
        ("--xds", "127.0.0.1:0".to_owned()),
    ];
    children
        .spawn(
            control_global,
            &[&args[..], &issuer_args].concat(),
            &[&paths[..], &issuer_paths].concat(),
            &[&options[..], &issuer_options].concat(),
            "admin token",
        )
        .await?;
    let output = children.last_output(control_global);
    let api = output
        .lines()
        .find_map(|l| l.strip_prefix("meridian control (global) serving "))
        .and_then(|rest| rest.split_whitespace().next())
        .context("the global control plane printed no address")?
        .to_owned();
    let xds = output
        .lines()
        .find_map(|l| l.trim().strip_prefix("regional control planes follow "))
        .and_then(|rest| rest.split_whitespace().next())
        .context("the global control plane printed no xDS address")?
        .to_owned();
    // Started again, it listens where the others reach it.
    children.keep(control_global, "--listen", socket_address(&api));
    children.keep(control_global, "--xds", socket_address(&xds));
    let first_start = output.contains("admin token (shown only");
    let token = admin_token(data_dir, &output)?;
    // Its own platform's API: no context of the config file applies.
    let client = Client::connect(Connection {
        api: api.clone(),
        token: Some(token.clone()),
        org: None,
        context: None,
        api_from_context: false,
        token_from_context: false,
        token_withheld: false,
    })?;
    if first_start {
        for (name, lat, lon) in REGIONS {
            let command = resources::RegionCommand::Add {
                name: name.to_owned(),
                lat,
                lon,
            };
            resources::region(&client, Format::Table, command).await?;
        }
        for (file, text) in EXAMPLES {
            let definition = crate::definition::parse(file, text)?;
            resources::deploy_definition(&client, Format::Table, &definition).await?;
        }
    }
    let mut regions = Vec::new();
    for (i, (name, _, _)) in REGIONS.iter().enumerate() {
        let gateway = SocketAddr::from(([127, 0, 0, 1], ports.gateway + i as u16));
        println!("starting region {name}: control plane, {NODES_PER_REGION} agents, gateway on {gateway}");
        let global = Global {
            api: &api,
            xds: &xds,
            token: &token,
            otlp,
        };
        regions.push(start_region(name, i, gateway, &global, data_dir, children).await?);
    }
    let mut edges = Vec::new();
    for (i, (name, lat, lon)) in EDGES.iter().enumerate() {
        let listen = SocketAddr::from(([127, 0, 0, 1], ports.edge + i as u16));
        let https = SocketAddr::from(([127, 0, 0, 1], ports.edge_https + i as u16));
        println!("starting edge {name} on http://{listen} and https://{https}");
        // Edges join at the first region's control plane and follow the global one.
        let home = &regions[0];
        let state = data_dir.join("edges").join(name);
        let join = join_token_unless_enrolled(&home.admin, &token, &format!("edge/{name}"), &state)
            .await?;
        children
            .spawn(
                &format!("edge-{name}"),
                &["edge", "--location", name, "--control", &home.xds],
                &[
                    ("--state-dir", state),
                    (
                        "--access-log",
                        access_log(data_dir, &format!("edge-{name}")),
                    ),
                ],
                &[
                    ("--lat", lat.to_string()),
                    ("--lon", lon.to_string()),
                    ("--listen", listen.to_string()),
                    ("--listen-https", https.to_string()),
                    ("--admin", "127.0.0.1:0".to_owned()),
                    ("--global-xds", xds.clone()),
                ]
                .into_iter()
                .chain(join.map(|t| ("--join-token", t)))
                .chain(tracing_to(otlp))
                .collect::<Vec<_>>(),
                "serving http://",
            )
            .await?;
        edges.push(Edge {
            name,
            http: listen,
            https,
        });
    }
    let trust = match issuer {
        Issuer::LocalCa => Some(global_dir.join("public-ca").join("ca.pem")),
        Issuer::Acme { .. } => None,
    };
    let answers = wait_until_served(&regions).await;
    wait_until_reported(&client).await;
    let edge_answers = wait_until_edges_serve(&edges, trust.as_deref()).await;
    print_status(&api, &token, &regions, &answers, data_dir);
    print_edges(&edges, &edge_answers, trust.as_deref());
    for service in EXAMPLE_SERVICES {
        println!();
        let scope = resources::AppScope::new("shop", "demo");
        resources::status(&client, Format::Table, service, &scope).await?;
    }
    Ok(())
}

/// The admin token: printed by the control plane at its first start (and kept in the data
/// directory for the next, readable by its owner only), or read from there.
fn admin_token(data_dir: &Path, output: &str) -> Result<String> {
    let file = data_dir.join("admin-token");
    if let Some(token) = output.lines().find_map(|l| {
        l.split_once("stored hashed): ")
            .map(|(_, t)| t.trim().to_owned())
    }) {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&file)
            .and_then(|mut f| f.write_all(token.as_bytes()))
            .with_context(|| format!("keeping the admin token in {}", file.display()))?;
        return Ok(token);
    }
    std::fs::read_to_string(&file)
        .map(|t| t.trim().to_owned())
        .with_context(|| {
            format!(
                "this data directory was used before but holds no {}; pass a new --data-dir",
                file.display()
            )
        })
}

/// How a region reaches the global control plane.
struct Global<'a> {
    /// Its API.
    api: &'a str,
    /// Its xDS, which regions follow.
    xds: &'a str,
    /// The installation's admin token.
    token: &'a str,
    /// Where the proxies' spans go, if they trace.
    otlp: Option<&'a str>,
}

/// `--otlp-endpoint`, for the proxies' options, when `meridian dev` traces.
fn tracing_to(otlp: Option<&str>) -> Option<(&'static str, String)> {
    otlp.map(|endpoint| ("--otlp-endpoint", endpoint.to_owned()))
}

/// How far above a gateway's plain-HTTP port its listener for edges (mutual TLS) is.
const EDGE_LISTENER_OFFSET: u16 = 100;

/// Starts a region's control plane, agents and gateway.
async fn start_region(
    name: &'static str,
    index: usize,
    gateway: SocketAddr,
    global: &Global<'_>,
    data_dir: &Path,
    children: &mut Children,
) -> Result<Region> {
    let token = global.token;
    let control = format!("control-{name}");
    // The region gets its CA with a one-time token at its first start; it keeps no admin token.
    let ca_dir = data_dir
        .join("regions")
        .join(format!("region-{name}"))
        .join("ca");
    let join = if ca_dir.join("trust-domain").exists() {
        None
    } else {
        let url = format!("{}/v1/regions/{name}/join-tokens", global.api);
        Some(join_token_from(&url, token, serde_json::json!({"ttl_seconds": 600})).await?)
    };
    let mut options = vec![
        ("--xds", "127.0.0.1:0".to_owned()),
        ("--admin", "127.0.0.1:0".to_owned()),
        ("--gateway-plaintext", gateway.to_string()),
        (
            "--gateway",
            SocketAddr::new(gateway.ip(), gateway.port() + EDGE_LISTENER_OFFSET).to_string(),
        ),
        ("--global-xds", global.xds.to_owned()),
    ];
    options.extend(join.map(|t| ("--join-token", t)));
    let line = children
        .spawn(
            &control,
            &["control", "--region", name, "--api", global.api],
            &[("--data-dir", data_dir.join("regions"))],
            &options,
            "serving xDS on ",
        )
        .await?;
    let field = |after: &str| {
        line.split(after)
            .nth(1)
            .and_then(|rest| rest.split(',').next())
            .map(str::to_owned)
            .with_context(|| format!("no `{after}` in `{line}`"))
    };
    let (xds, admin) = (field("serving xDS on ")?, field("admin ")?);
    // Started again, it listens where its agents and gateway reach it.
    children.keep(&control, "--xds", socket_address(&xds));
    children.keep(&control, "--admin", socket_address(&admin));
    for n in 1..=NODES_PER_REGION {
        let node = format!("{name}-{n}");
        let state = data_dir.join("agents").join(&node);
        let join =
            join_token_unless_enrolled(&admin, token, &format!("agent/{node}"), &state).await?;
        let first_address = format!("127.0.{}.1", 100 + index * NODES_PER_REGION + n);
        let network = format!("100.64.{}.0", index * NODES_PER_REGION + n);
        children
            .spawn(
                &format!("agent-{node}"),
                &[
                    "agent",
                    "--region",
                    name,
                    "--node",
                    &node,
                    "--control",
                    &xds,
                ],
                &[
                    ("--state-dir", state),
                    (
                        "--access-log",
                        access_log(data_dir, &format!("agent-{node}")),
                    ),
                ],
                &[
                    ("--instance-addresses", first_address),
                    ("--instance-network", network),
                    ("--capacity", "8".to_owned()),
                ]
                .into_iter()
                .chain(join.map(|t| ("--join-token", t)))
                .chain(tracing_to(global.otlp))
                .collect::<Vec<_>>(),
                "meridian agent of node",
            )
            .await?;
    }
    let state = data_dir.join("gateways").join(name);
    let join = join_token_unless_enrolled(&admin, token, "gateway", &state).await?;
    children
        .spawn(
            &format!("gateway-{name}"),
            &["gateway", "--region", name, "--control", &xds],
            &[
                ("--state-dir", state),
                (
                    "--access-log",
                    access_log(data_dir, &format!("gateway-{name}")),
                ),
            ],
            &[("--admin", "127.0.0.1:0".to_owned())]
                .into_iter()
                .chain(join.map(|t| ("--join-token", t)))
                .chain(tracing_to(global.otlp))
                .collect::<Vec<_>>(),
            "meridian proxy admin on ",
        )
        .await?;
    Ok(Region {
        name,
        xds,
        admin,
        gateway,
    })
}

/// The `host:port` of a printed URL (`https://127.0.0.1:17000` → `127.0.0.1:17000`).
fn socket_address(url: &str) -> &str {
    url.split_once("://").map_or(url, |(_, rest)| rest)
}

/// A join token for `identity` from the region's admin port, unless `state` holds an identity
/// from an earlier start.
async fn join_token_unless_enrolled(
    admin: &str,
    token: &str,
    identity: &str,
    state: &Path,
) -> Result<Option<String>> {
    if state.join("identity").join("key.pem").exists() {
        return Ok(None);
    }
    let url = format!("{admin}/v1/join-tokens");
    let body = serde_json::json!({"identity": identity, "ttl_seconds": 600});
    join_token_from(&url, token, body).await.map(Some)
}

/// A join token made at `url` (a region's admin port, or the global API for a region's control
/// plane) with the admin `token`.
async fn join_token_from(url: &str, token: &str, body: serde_json::Value) -> Result<String> {
    let answer: serde_json::Value = reqwest::Client::new()
        .post(url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .with_context(|| format!("asking {url} for a join token"))?
        .json()
        .await?;
    answer["token"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("{url} answered without a token"))
}

/// How long the example app may take to be served.
const READY_DEADLINE: Duration = Duration::from_secs(90);

/// What each region's gateway answers for the example host once the web service answers in
/// every region it runs in (or the deadline passes).
async fn wait_until_served(regions: &[Region]) -> Vec<String> {
    let client = probe_client();
    let end = Instant::now() + READY_DEADLINE;
    let mut progress = Progress::start("the example app to be served");
    loop {
        let mut answers = Vec::new();
        let mut served = 0;
        for region in regions {
            if !WEB_REGIONS.contains(&region.name) {
                answers.push("- (web does not run in this region)".to_owned());
                continue;
            }
            let answer = greeting(&client, region.gateway, "not served in this region yet").await;
            served += usize::from(answer.is_ok());
            answers.push(answer.unwrap_or_else(|why| why));
        }
        let state = format!("web served in {served} of {} regions", WEB_REGIONS.len());
        if served == WEB_REGIONS.len() || Instant::now() > end {
            progress.finish(&state);
            return answers;
        }
        progress.update(&state);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A client for looking at what the platform serves (never through a proxy of the environment).
fn probe_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap_or_default()
}

/// What `address` answers for the example host over plain HTTP: the greeting (whatever the
/// example's `GREETING` is), or why there is none (`missing` says what a non-2xx answer means
/// there).
async fn greeting(
    client: &reqwest::Client,
    address: SocketAddr,
    missing: &str,
) -> Result<String, String> {
    let request = client
        .get(format!("http://{address}/"))
        .header("host", EXAMPLE_HOST);
    answer_of(request, missing, false).await
}

/// The greeting a request gets (with the HTTP version it came in, if `versioned`), or why
/// there is none.
async fn answer_of(
    request: reqwest::RequestBuilder,
    missing: &str,
    versioned: bool,
) -> Result<String, String> {
    match request.send().await {
        Ok(a) if a.status().is_success() => {
            let version = a.version();
            let text = a.text().await.unwrap_or_default();
            match versioned {
                true => Ok(format!("{} ({version:?})", text.trim())),
                false => Ok(text.trim().to_owned()),
            }
        }
        Ok(a) => Err(format!("{} ({missing})", a.status())),
        Err(e) => Err(format!("no answer: {e}")),
    }
}

/// An edge of dev, and its listeners.
struct Edge {
    name: &'static str,
    /// Plain HTTP (ACME HTTP-01 answers, and redirects to HTTPS).
    http: SocketAddr,
    /// HTTPS over TCP, and HTTP/3 over UDP on the same port number.
    https: SocketAddr,
}

/// A client that reaches the example host at `edge` over HTTPS (HTTP/2 where the edge offers
/// it), trusting `ca` (dev's local CA).
fn https_client(edge: SocketAddr, ca: &Path) -> Result<reqwest::Client, String> {
    let pem = std::fs::read(ca).map_err(|e| format!("cannot read {}: {e}", ca.display()))?;
    let root = reqwest::Certificate::from_pem(&pem)
        .map_err(|e| format!("{} holds no certificate: {e}", ca.display()))?;
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .tls_built_in_root_certs(false)
        .add_root_certificate(root)
        .resolve(EXAMPLE_HOST, edge)
        .build()
        .map_err(|e| e.to_string())
}

/// What `edge` answers for the example host: over HTTPS with dev's local CA (`ca`), or, with an
/// ACME CA whose root dev does not know, over plain HTTP (where a redirect to HTTPS says the
/// certificate arrived).
async fn edge_answer(
    plain: &reqwest::Client,
    edge: &Edge,
    ca: Option<&Path>,
) -> Result<String, String> {
    const MISSING: &str = "no region serves it, or no certificate yet";
    match ca {
        Some(ca) => {
            let client = https_client(edge.https, ca)?;
            let url = format!("https://{EXAMPLE_HOST}:{}/", edge.https.port());
            answer_of(client.get(url), MISSING, true).await
        }
        None => {
            let request = plain
                .get(format!("http://{}/", edge.http))
                .header("host", EXAMPLE_HOST);
            match request.send().await {
                Ok(a) if a.status() == reqwest::StatusCode::PERMANENT_REDIRECT => {
                    Ok("certificate served (plain HTTP redirects to HTTPS)".to_owned())
                }
                Ok(a) => Err(format!("{} ({MISSING})", a.status())),
                Err(e) => Err(format!("no answer: {e}")),
            }
        }
    }
}

/// What each edge answers for the example host, once every edge answers (or after a while).
async fn wait_until_edges_serve(edges: &[Edge], ca: Option<&Path>) -> Vec<String> {
    let plain = probe_client();
    let end = Instant::now() + Duration::from_secs(20);
    let mut progress = Progress::start("the edges to serve it");
    loop {
        let mut answers = Vec::new();
        for edge in edges {
            answers.push(edge_answer(&plain, edge, ca).await);
        }
        let serving = answers.iter().filter(|a| a.is_ok()).count();
        let state = format!("{serving} of {} edges serve web", edges.len());
        if serving == edges.len() || Instant::now() > end {
            progress.finish(&state);
            return answers
                .into_iter()
                .map(|a| a.unwrap_or_else(|why| why))
                .collect();
        }
        progress.update(&state);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn print_edges(edges: &[Edge], answers: &[String], ca: Option<&Path>) {
    println!();
    println!(
        "{:<7} {:<48} WEB ({EXAMPLE_HOST}) THROUGH THE EDGE",
        "EDGE", "PUBLIC"
    );
    for (edge, answer) in edges.iter().zip(answers) {
        let public = format!("https://{} http://{}", edge.https, edge.http);
        println!("{:<7} {public:<48} {answer}", edge.name);
    }
    let Some(first) = edges.first() else {
        return;
    };
    let port = first.https.port();
    match ca {
        Some(ca) => println!(
            "  curl --cacert {} --resolve {EXAMPLE_HOST}:{port}:{} https://{EXAMPLE_HOST}:{port}/    \
             # HTTP/2; the nearest region answers; stop its gateway to see failover",
            ca.display(),
            first.https.ip()
        ),
        None => println!(
            "  curl --resolve {EXAMPLE_HOST}:{port}:{} https://{EXAMPLE_HOST}:{port}/    \
             # with your ACME CA's root (--cacert)",
            first.https.ip()
        ),
    }
    println!(
        "  HTTP/3 answers on the same port over UDP (advertised in Alt-Svc): curl --http3 with \
         a curl built for it. Plain HTTP (http://{}) redirects to HTTPS; certificates: \
         meridian domains --app shop",
        first.http
    );
}

/// The example's services, in the order their status is printed.
const EXAMPLE_SERVICES: [&str; 2] = ["web", "api"];

/// Waits (30 s at most) until the regions have reported every example service running, so that
/// the status tables printed next say so and the suggested calls to `api` find it healthy.
async fn wait_until_reported(client: &Client) {
    let end = Instant::now() + Duration::from_secs(30);
    let mut progress = Progress::start("every region to report the example running");
    let mut state = String::new();
    while Instant::now() < end {
        let mut running = 0;
        for service in EXAMPLE_SERVICES {
            let status: Result<serde_json::Value> = client
                .get(&format!(
                    "/v1/orgs/demo/apps/shop/services/{service}/status"
                ))
                .await;
            running += usize::from(status.is_ok_and(|s| {
                s["regions"]
                    .as_array()
                    .is_some_and(|r| r.iter().all(|r| r["state"] == "running"))
            }));
        }
        state = format!(
            "{running} of {} services running in all their regions",
            EXAMPLE_SERVICES.len()
        );
        if running == EXAMPLE_SERVICES.len() {
            break;
        }
        progress.update(&state);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    progress.finish(&state);
}

/// Where component `name` writes its access log: `<data>/logs/access-<name>.log` (a developer
/// sees every request; an installation's components log none unless asked).
fn access_log(data_dir: &Path, name: &str) -> PathBuf {
    data_dir.join("logs").join(format!("access-{name}.log"))
}

fn print_status(api: &str, token: &str, regions: &[Region], answers: &[String], data_dir: &Path) {
    println!();
    println!("Meridian dev is up: the global control plane serves {api}");
    println!();
    println!(
        "{:<7} {:<23} {:<26} WEB ({EXAMPLE_HOST}) ANSWERS",
        "REGION", "GATEWAY", "CONTROL PLANE (xDS)"
    );
    for (region, answer) in regions.iter().zip(answers) {
        println!(
            "{:<7} {:<23} {:<26} {answer}",
            region.name,
            format!("http://{}", region.gateway),
            region.xds
        );
    }
    let first = regions
        .first()
        .map(|r| r.gateway.to_string())
        .unwrap_or_default();
    println!();
    println!("Try:");
    println!("  curl -H 'host: {EXAMPLE_HOST}' http://{first}/");
    println!("  export MERIDIAN_API={api} MERIDIAN_TOKEN={token}");
    println!("  meridian get services; meridian status web --app shop");
    println!("  open {api}/ui/ (the dashboard; sign in with the token above)");
    println!(
        "Logs of every component: {} (their access logs: access-*.log there); of the example's \
         instances, from every region: meridian logs web --app shop [-f]",
        data_dir.join("logs").display(),
    );
    println!(
        "Every hop from the edges on is mutual TLS; instances call each other by name through \
         their node proxy (HTTP_PROXY), e.g. curl -H 'host: {EXAMPLE_HOST}' \
         'http://{first}/call?url=http://api.shop.internal:9090/whoami'"
    );
    if meridian_agent::netns_available() {
        println!(
            "Instances run in network namespaces: without the proxy variables, the node's DNS \
             answers api.shop.internal with the service's virtual IP (100.112.0.0/12), e.g. \
             curl -H 'host: {EXAMPLE_HOST}' \
             'http://{first}/call?direct=1&url=http://api.shop.internal:9090/whoami'"
        );
    }
    println!(
        "Edges reach the gateways over mutual TLS (the gateways' plain-HTTP ports above are for \
         you)."
    );
}
