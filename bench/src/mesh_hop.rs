//! `mesh-hop`: what mutual TLS costs on a proxy-to-proxy hop, next to the same hop in plaintext,
//! measured in one invocation.
//!
//! Two `meridian proxy` processes (pinned to `--proxy-cpus`) chain to an nginx upstream: the
//! outbound proxy's listener → its cluster → the inbound proxy's listener → nginx. In the
//! plaintext setup the hop is HTTP/1.1 with keep-alive; in the mTLS setup the inbound listener is
//! a mesh listener and the outbound cluster a mesh cluster (TLS 1.3, HTTP/2 over pooled
//! connections). wrk (pinned to CPU 0) measures req/s and latency through each, in interleaved
//! rounds; a 1 GiB download measures bulk throughput through each, through the same two proxies
//! as plaintext TCP relays (`tcp` listeners), and straight from nginx; and
//! this process measures TLS handshakes per second against the mesh listener, full and resumed.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use meridian_bench::{cpu_time, pinned};
use meridian_identity::{
    certified_key, client_config, mesh_server_name, request_for, trust_bundle, Authority,
    CertStore, SpiffeId,
};

/// Measures a mesh hop with and without mutual TLS.
#[derive(Parser)]
struct Args {
    /// The `meridian` binary to measure (build it with --release).
    #[arg(long, default_value = "target/release/meridian")]
    meridian: PathBuf,
    /// CPUs the two proxies are pinned to.
    #[arg(long, default_value = "1")]
    proxy_cpus: String,
    /// Measured rounds (after one discarded warm-up round).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds per wrk run.
    #[arg(long, default_value_t = 6)]
    seconds: u32,
    /// wrk connections.
    #[arg(long, default_value_t = 50)]
    connections: u32,
    /// Handshakes per handshake measurement.
    #[arg(long, default_value_t = 2000)]
    handshakes: u32,
}

const UPSTREAM: u16 = 19080;
const INBOUND: u16 = 19081;
const OUTBOUND: u16 = 19082;
const BULK_BYTES: u64 = 1 << 30;

fn id(service: &str) -> SpiffeId {
    SpiffeId::workload("meridian.bench", "bench", "hop", service)
}

/// Writes a certificate and key for `who` into `dir` (`<name>.pem`, `<name>.key`).
fn identity(ca: &Authority, who: &SpiffeId, dir: &Path, name: &str) -> Result<(PathBuf, PathBuf)> {
    let (csr, key) = request_for(who)?;
    let issued = ca.issue(&csr, who, Duration::from_secs(86_400))?;
    let (cert_path, key_path) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&cert_path, issued.chain_pem)?;
    std::fs::write(&key_path, key)?;
    Ok((cert_path, key_path))
}

struct Setup {
    dir: tempfile::TempDir,
    bundle: PathBuf,
    inbound: (PathBuf, PathBuf),
    outbound: (PathBuf, PathBuf),
    ca: Authority,
}

fn setup() -> Result<Setup> {
    let dir = tempfile::tempdir()?;
    let root = Authority::create_root("meridian.bench", Duration::from_secs(86_400))?;
    let ca = root.issue_intermediate("bench", Duration::from_secs(86_400))?;
    let bundle = dir.path().join("bundle.pem");
    std::fs::write(&bundle, root.certificate_pem())?;
    let inbound = identity(&ca, &id("inbound"), dir.path(), "inbound")?;
    let outbound = identity(&ca, &id("outbound"), dir.path(), "outbound")?;
    let body = dir.path().join("www");
    std::fs::create_dir_all(&body)?;
    let file = std::fs::File::create(body.join("bulk"))?;
    file.set_len(BULK_BYTES)?;
    let nginx = format!(
        "worker_processes 1; master_process off; daemon off; pid {0}/nginx.pid; error_log /dev/null crit;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000; sendfile on;
  server {{ listen 127.0.0.1:{UPSTREAM}; root {1};
    location = / {{ return 200 'ok'; }} }} }}
",
        dir.path().display(),
        body.display()
    );
    std::fs::write(dir.path().join("nginx.conf"), nginx)?;
    Ok(Setup {
        bundle,
        inbound,
        outbound,
        ca,
        dir,
    })
}

/// How the two proxies are chained.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Hop {
    /// HTTP/1.1 with keep-alive between the proxies.
    Plaintext,
    /// A mesh cluster to a mesh listener: TLS 1.3, HTTP/2 over pooled connections.
    Mtls,
    /// `tcp` listeners: each connection relayed byte for byte, to the next proxy and to nginx.
    TcpRelay,
}

/// The two proxies' configs for one setup.
fn configs(setup: &Setup, hop: Hop) -> (String, String) {
    let mtls = hop == Hop::Mtls;
    let routes = match hop {
        Hop::TcpRelay => "protocol: tcp\n    cluster: next",
        Hop::Plaintext | Hop::Mtls => {
            "virtual_hosts: [{name: all, domains: ['*'], routes: [{cluster: next}]}]"
        }
    };
    let mesh_listener = format!(
        "\n    mesh: {{cert_file: {}, key_file: {}, bundle_file: {}, org: bench}}",
        setup.inbound.0.display(),
        setup.inbound.1.display(),
        setup.bundle.display()
    );
    let inbound = format!(
        "listeners:\n  - name: inbound\n    address: 127.0.0.1:{INBOUND}{}\n    {routes}\nclusters:\n  - name: next\n    endpoints: [{{address: '127.0.0.1:{UPSTREAM}'}}]\n",
        if mtls { mesh_listener.as_str() } else { "" }
    );
    let mesh_cluster = format!(
        "\n    mesh: {{cert_file: {}, key_file: {}, bundle_file: {}, peer: '{}'}}",
        setup.outbound.0.display(),
        setup.outbound.1.display(),
        setup.bundle.display(),
        id("inbound")
    );
    let outbound = format!(
        "listeners:\n  - name: outbound\n    address: 127.0.0.1:{OUTBOUND}\n    {routes}\nclusters:\n  - name: next{}\n    endpoints: [{{address: '127.0.0.1:{INBOUND}'}}]\n",
        if mtls { mesh_cluster.as_str() } else { "" }
    );
    (inbound, outbound)
}

/// Starts the two proxies of one setup; they are killed when the returned children are dropped.
async fn start_proxies(args: &Args, setup: &Setup, hop: Hop) -> Result<Vec<tokio::process::Child>> {
    let (inbound, outbound) = configs(setup, hop);
    // The previous setup's proxies are gone first (they are killed when dropped).
    for port in [INBOUND, OUTBOUND] {
        let end = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            if Instant::now() > end {
                bail!("port {port} is still taken");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let mut children = Vec::new();
    for (name, text, admin) in [("inbound", inbound, 19091), ("outbound", outbound, 19092)] {
        let path = setup.dir.path().join(format!("{name}.yaml"));
        std::fs::write(&path, text)?;
        children.push(
            pinned(&args.meridian, &args.proxy_cpus)
                .args(["proxy", "--config"])
                .arg(&path)
                .args(["--admin", &format!("127.0.0.1:{admin}")])
                .env("MERIDIAN_LOG", "error")
                .stdout(Stdio::null())
                .kill_on_drop(true)
                .spawn()?,
        );
    }
    wait_port(OUTBOUND).await?;
    wait_port(INBOUND).await?;
    Ok(children)
}

async fn wait_port(port: u16) -> Result<()> {
    let end = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if Instant::now() > end {
            bail!("nothing listens on port {port}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// wrk's req/s and p99 (µs) against `port`.
async fn wrk(args: &Args, port: u16) -> Result<(f64, f64)> {
    let out = tokio::process::Command::new("taskset")
        .args(["-c", "0", "wrk", "-t1", &format!("-c{}", args.connections)])
        .args([
            &format!("-d{}s", args.seconds),
            "--latency",
            &format!("http://127.0.0.1:{port}/"),
        ])
        .output()
        .await
        .context("running wrk (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let req_s = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("wrk printed no rate: {text}"))?;
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map(|v| latency_us(v.trim()))
        .unwrap_or(f64::NAN);
    Ok((req_s, p99))
}

/// wrk's latency (`812.00us`, `1.20ms`, `2.01s`) in µs.
fn latency_us(text: &str) -> f64 {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(text.len());
    let value: f64 = text[..split].parse().unwrap_or(f64::NAN);
    match &text[split..] {
        "us" => value,
        "ms" => value * 1e3,
        "s" => value * 1e6,
        _ => f64::NAN,
    }
}

/// How many downloads each bulk figure is the median of.
const BULK_RUNS: usize = 3;

/// Gb/s of [`BULK_RUNS`] 1 GiB downloads from `port`, one after the other: the median, the
/// lowest and the highest.
async fn bulk(port: u16) -> Result<[f64; 3]> {
    let mut rates = Vec::with_capacity(BULK_RUNS);
    for _ in 0..BULK_RUNS {
        rates.push(download(port).await?);
    }
    rates.sort_by(f64::total_cmp);
    Ok([rates[BULK_RUNS / 2], rates[0], rates[BULK_RUNS - 1]])
}

/// Gb/s of one 1 GiB download from `port`.
async fn download(port: u16) -> Result<f64> {
    let started = Instant::now();
    let out = tokio::process::Command::new("taskset")
        .args([
            "-c",
            "0",
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{size_download}",
        ])
        .arg(format!("http://127.0.0.1:{port}/bulk"))
        .output()
        .await
        .context("running curl")?;
    let bytes: f64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0.0);
    if bytes < BULK_BYTES as f64 {
        bail!("the download through port {port} got {bytes} bytes");
    }
    Ok(bytes * 8.0 / started.elapsed().as_secs_f64() / 1e9)
}

/// Handshakes per second against the mesh listener, with or without session resumption (an
/// error if a handshake after the first did not resume when it should have).
async fn handshakes(args: &Args, setup: &Setup, resumed: bool) -> Result<f64> {
    let who = id("outbound");
    let (csr, key) = request_for(&who)?;
    let issued = setup.ca.issue(&csr, &who, Duration::from_secs(86_400))?;
    let local = CertStore::new(certified_key(&issued.chain_pem, &key)?);
    let bundle = trust_bundle(&std::fs::read_to_string(&setup.bundle)?)?;
    let mut config = client_config(local, bundle, id("inbound"))?;
    if !resumed {
        config.resumption = rustls::client::Resumption::disabled();
    }
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let started = Instant::now();
    let mut full = 0;
    for _ in 0..args.handshakes {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", INBOUND)).await?;
        let mut tls = connector.connect(mesh_server_name(), tcp).await?;
        if tls.get_ref().1.handshake_kind() != Some(rustls::HandshakeKind::Resumed) {
            full += 1;
        }
        // A resumable session ticket arrives after the handshake; read until it has.
        use tokio::io::AsyncWriteExt;
        tls.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await?;
        let mut sink = Vec::new();
        use tokio::io::AsyncReadExt;
        let _ = tls.read_to_end(&mut sink).await;
    }
    if resumed && full > 1 {
        bail!(
            "{full} of {} handshakes meant to resume were full ones",
            args.handshakes
        );
    }
    Ok(f64::from(args.handshakes) / started.elapsed().as_secs_f64())
}

fn median(mut values: Vec<f64>) -> f64 {
    meridian_bench::percentile(&mut values, 50.0)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    let setup = setup()?;
    let mut nginx = tokio::process::Command::new("taskset")
        .args(["-c", "0", "nginx", "-c"])
        .arg(setup.dir.path().join("nginx.conf"))
        .kill_on_drop(true)
        .spawn()
        .context("starting nginx (apt-get install nginx)")?;
    wait_port(UPSTREAM).await?;
    println!(
        "proxies pinned to CPUs [{}], wrk/curl/nginx to CPU 0; {} connections, {}s per run, {} rounds + warm-up",
        args.proxy_cpus, args.connections, args.seconds, args.rounds
    );
    let mut rates = [Vec::new(), Vec::new()];
    let mut p99s = [Vec::new(), Vec::new()];
    for round in 0..=args.rounds {
        for mtls in if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        } {
            let hop = if mtls { Hop::Mtls } else { Hop::Plaintext };
            let _proxies = start_proxies(&args, &setup, hop).await?;
            let (rate, p99) = wrk(&args, OUTBOUND).await?;
            if round > 0 {
                rates[usize::from(mtls)].push(rate);
                p99s[usize::from(mtls)].push(p99);
            }
        }
        println!(
            "round {round}{}",
            if round == 0 {
                " (warm-up, discarded)"
            } else {
                ""
            }
        );
    }
    let direct = bulk(UPSTREAM).await?;
    let mut bulk_rates = [[0.0; 3]; 3];
    // CPU seconds both proxies spent per GiB moved: steadier than Gb/s on a shared machine.
    let mut bulk_cpu = [0.0; 3];
    let mut handshake_rates = [0.0; 2];
    for (i, hop) in [Hop::Plaintext, Hop::Mtls, Hop::TcpRelay]
        .into_iter()
        .enumerate()
    {
        let proxies = start_proxies(&args, &setup, hop).await?;
        let pids: Vec<u32> = proxies.iter().filter_map(|p| p.id()).collect();
        let cpu = || {
            pids.iter()
                .map(|pid| cpu_time(*pid))
                .sum::<Result<Duration>>()
        };
        let before = cpu()?;
        bulk_rates[i] = bulk(OUTBOUND).await?;
        bulk_cpu[i] = (cpu()? - before).as_secs_f64() / BULK_RUNS as f64;
        if hop == Hop::Mtls {
            handshake_rates = [
                handshakes(&args, &setup, false).await?,
                handshakes(&args, &setup, true).await?,
            ];
        }
    }
    let _ = nginx.kill().await;
    let (plain, mtls) = (median(rates[0].clone()), median(rates[1].clone()));
    println!();
    println!("{:<34} {:>14} {:>14}", "", "plaintext hop", "mTLS hop");
    println!("{:<34} {:>14.0} {:>14.0}", "req/s (median)", plain, mtls);
    println!(
        "{:<34} {:>14.0} {:>14.0}",
        "p99 µs (median)",
        median(p99s[0].clone()),
        median(p99s[1].clone())
    );
    let range = |[median, low, high]: [f64; 3]| format!("{median:.2} ({low:.1}-{high:.1})");
    println!(
        "{:<34} {:>14} {:>14}",
        format!("bulk Gb/s (1 GiB, median of {BULK_RUNS})"),
        range(bulk_rates[0]),
        range(bulk_rates[1])
    );
    println!(
        "{:<34} {:>14.2} {:>14.2}",
        "bulk: proxies' CPU s per GiB", bulk_cpu[0], bulk_cpu[1]
    );
    println!(
        "bulk through a plaintext TCP relay (both proxies, `tcp` listeners): {} Gb/s, proxies' CPU {:.2} s per GiB",
        range(bulk_rates[2]),
        bulk_cpu[2]
    );
    println!(
        "bulk straight from nginx: {} Gb/s; the TCP relay moves {:.2}x of it, the mTLS hop {:.2}x",
        range(direct),
        bulk_rates[2][0] / direct[0],
        bulk_rates[1][0] / direct[0]
    );
    println!(
        "handshakes/s against the mesh listener: full {:.0}, resumed {:.0}",
        handshake_rates[0], handshake_rates[1]
    );
    println!();
    println!(
        "targets: mTLS req/s >= 0.8x plaintext: {} ({:.2}x); plaintext TCP relay bulk >= 10 Gb/s: {} ({:.1}); mTLS bulk >= 5 Gb/s: {} ({:.1})",
        if mtls >= 0.8 * plain { "met" } else { "NOT met" },
        mtls / plain,
        if bulk_rates[2][0] >= 10.0 { "met" } else { "NOT met" },
        bulk_rates[2][0],
        if bulk_rates[1][0] >= 5.0 { "met" } else { "NOT met" },
        bulk_rates[1][0],
    );
    Ok(())
}
