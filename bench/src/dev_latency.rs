//! `dev-latency`: how fast the dev topology (`meridian dev`: a global control plane, three
//! regions of two nodes with a gateway each, two edges) reacts, end to end.
//!
//! - **Deploy → first 200 through the edge.** A new service (meridian-hello in fra, with a
//!   public domain) is applied through the API; the Paris edge is polled every millisecond until
//!   it answers 200 for the domain. Reference, in the same rounds: the app's own start time
//!   (meridian-hello started directly, polled the same way until it answers), which is
//!   subtracted.
//! - **Instance health change → every proxy updated.** An instance of web in fra exits (`POST
//!   /exit` through fra's gateway); every proxy whose configuration routes to web's instances
//!   (fra's gateway and the node proxies; other regions' node proxies reach fra's instances as
//!   their next priority) is polled on its admin port until its configuration lists one web
//!   endpoint fewer.
//!
//! Figures are printed per round, with the median and the ratio to the target.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Parser;
use meridian_bench::dev_topology::{hello_beside, start_dev, stop_dev, DevPorts};
use meridian_bench::percentile;
use serde_json::{json, Value};

/// Measures the dev topology's reaction times.
#[derive(Parser)]
struct Args {
    /// The `meridian` binary (build it with --release); `meridian-hello` must be next to it.
    #[arg(long, default_value = "target/release/meridian")]
    meridian: PathBuf,
    /// Measured rounds of each figure.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
}

/// Ports of the dev topology (away from `meridian dev`'s defaults, so both can run).
const API: &str = "127.0.0.1:27070";
const GATEWAY_PORT: u16 = 28080;
const EDGE_PORT: u16 = 28090;
const EDGE_HTTPS_PORT: u16 = 28443;
/// How long any one wait may take.
const DEADLINE: Duration = Duration::from_secs(60);
/// The targets of issue #6.
const DEPLOY_TARGET: Duration = Duration::from_secs(1);
const HEALTH_TARGET: Duration = Duration::from_millis(200);

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    // Absolute: agents start instances in directories of their own.
    let hello = hello_beside(&args.meridian)?;
    let dir = tempfile::tempdir()?;
    let ports = DevPorts {
        api: API,
        gateway: GATEWAY_PORT,
        edge: EDGE_PORT,
        edge_https: EDGE_HTTPS_PORT,
    };
    let (dev, api, token) = start_dev(&args.meridian, dir.path(), &ports).await?;
    let measured = measure(&args, &hello, dir.path(), &api, &token).await;
    stop_dev(dev).await?;
    measured
}

/// Both figures, in `args.rounds` rounds each, against the dev topology with its data in `dir`.
async fn measure(args: &Args, hello: &Path, dir: &Path, api: &str, token: &str) -> Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;

    println!("deploy applied -> first 200 through the par edge (app start time subtracted)");
    println!("round  deploy->200  app start  difference");
    let mut differences = Vec::new();
    for round in 0..args.rounds {
        let app = app_start(hello, &http).await?;
        let deploy = deploy_to_first_200(&http, api, token, hello, round).await?;
        let difference = deploy.saturating_sub(app);
        println!(
            "{round:>5}  {:>9.1} ms  {:>6.1} ms  {:>7.1} ms",
            ms(deploy),
            ms(app),
            ms(difference)
        );
        differences.push(ms(difference));
    }
    let median = percentile(&mut differences, 50.0);
    println!(
        "median {median:.1} ms; target < {} ms: {:.2}x of target\n",
        DEPLOY_TARGET.as_millis(),
        median / ms(DEPLOY_TARGET)
    );

    let admins = proxy_admins(&dir.join("logs"))?;
    println!(
        "instance health change -> every proxy updated ({} proxies in the topology)",
        admins.len()
    );
    println!("round  proxies updated  slowest  fastest");
    let mut slowest = Vec::new();
    for round in 0..args.rounds {
        let (updated, times) = health_change(&http, &admins).await?;
        let max = times.iter().copied().fold(0.0, f64::max);
        let min = times.iter().copied().fold(f64::INFINITY, f64::min);
        println!("{round:>5}  {updated:>15}  {max:>4.1} ms  {min:>4.1} ms");
        slowest.push(max);
    }
    let median = percentile(&mut slowest, 50.0);
    println!(
        "median of the slowest proxy {median:.1} ms; target < {} ms: {:.2}x of target",
        HEALTH_TARGET.as_millis(),
        median / ms(HEALTH_TARGET)
    );
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A free port on loopback.
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Polls `url` (with `host`) every millisecond until it answers 200; how long that took.
async fn first_200(
    http: &reqwest::Client,
    url: &str,
    host: &str,
    from: Instant,
) -> Result<Duration> {
    loop {
        let answer = http.get(url).header("host", host).send().await;
        if answer.is_ok_and(|a| a.status() == 200) {
            return Ok(from.elapsed());
        }
        if from.elapsed() > DEADLINE {
            bail!("{url} (host {host}) did not answer 200 in time");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// meridian-hello started directly: the time until it answers.
async fn app_start(hello: &Path, http: &reqwest::Client) -> Result<Duration> {
    let port = free_port()?;
    let started = Instant::now();
    let _app = tokio::process::Command::new(hello)
        .env("PORT", port.to_string())
        .env("MERIDIAN_ADDRESS", "127.0.0.1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    first_200(http, &format!("http://127.0.0.1:{port}/"), "app", started).await
}

/// Deploys a new service with a public domain in fra and times its first 200 through the edge.
async fn deploy_to_first_200(
    http: &reqwest::Client,
    api: &str,
    token: &str,
    hello: &Path,
    round: usize,
) -> Result<Duration> {
    let name = format!("bench{round}");
    let host = format!("{name}.example.com");
    let definition = json!({
        "org": "bench", "app": "latency", "name": name, "regions": ["fra"],
        "runtime": {"process": {"command": hello}},
        "ports": [{"name": "http", "port": 8080}],
        "routes": [{"path_prefix": "/", "port": "http"}],
        "domains": [host],
        "health_checks": [{"http": {"port": "http", "path": "/healthz"}, "interval": "100ms",
            "timeout": "100ms", "grace_period": "5s"}],
    });
    let started = Instant::now();
    let answer = http
        .post(format!("{api}/v1/services"))
        .bearer_auth(token)
        .json(&definition)
        .send()
        .await?;
    if !answer.status().is_success() {
        bail!(
            "deploying {name}: {}: {}",
            answer.status(),
            answer.text().await?
        );
    }
    first_200(
        http,
        &format!("http://127.0.0.1:{EDGE_PORT}/"),
        &host,
        started,
    )
    .await
}

/// The admin ports of every proxy in the topology, from the components' logs.
fn proxy_admins(logs: &Path) -> Result<BTreeMap<String, String>> {
    let mut admins = BTreeMap::new();
    for entry in std::fs::read_dir(logs)? {
        let path = entry?.path();
        let name = path
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let text = std::fs::read_to_string(&path)?;
        if let Some(address) = text
            .lines()
            .rev()
            .find_map(|l| l.trim().strip_prefix("meridian proxy admin on "))
        {
            admins.insert(name, address.trim().to_owned());
        }
    }
    Ok(admins)
}

/// How many endpoints of web the proxy at `admin` routes to (clusters named after web).
async fn web_endpoints(http: &reqwest::Client, admin: &str) -> Result<usize> {
    let config: Value = http
        .get(format!("{admin}/config"))
        .send()
        .await?
        .json()
        .await?;
    Ok(config["clusters"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| {
            let name = c["name"].as_str().unwrap_or_default();
            name.contains("shop/web:") && !name.starts_with("edge/")
        })
        .map(|c| c["endpoints"].as_array().map_or(0, Vec::len))
        .sum())
}

/// Makes one web instance in fra exit; returns how many proxies updated and the time each took.
async fn health_change(
    http: &reqwest::Client,
    admins: &BTreeMap<String, String>,
) -> Result<(usize, Vec<f64>)> {
    // Wait until every proxy is back to the same counts twice in a row (the last round's
    // instance restarted and was seen everywhere).
    let mut before = BTreeMap::new();
    let settled_by = Instant::now() + DEADLINE;
    loop {
        let mut now = BTreeMap::new();
        for (name, admin) in admins {
            // Gateways of other regions never see fra's instances.
            if name.starts_with("gateway-") && name != "gateway-fra" {
                continue;
            }
            let count = web_endpoints(http, admin).await?;
            if count > 0 {
                now.insert(name.clone(), count);
            }
        }
        if now == before && now.get("gateway-fra") == Some(&2) {
            break;
        }
        if Instant::now() > settled_by {
            bail!("the proxies did not settle: {now:?}");
        }
        before = now;
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    let started = Instant::now();
    let exit = http
        .post(format!("http://127.0.0.1:{GATEWAY_PORT}/exit"))
        .header("host", "shop.example.com")
        .send()
        .await;
    drop(exit);
    let mut pending = before.clone();
    let mut times = Vec::new();
    while !pending.is_empty() {
        let mut done = Vec::new();
        for (name, count) in &pending {
            if web_endpoints(http, &admins[name]).await? < *count {
                times.push(ms(started.elapsed()));
                done.push(name.clone());
            }
        }
        for name in done {
            pending.remove(&name);
        }
        if started.elapsed() > DEADLINE {
            bail!("these proxies never saw the change: {pending:?}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok((before.len(), times))
}
