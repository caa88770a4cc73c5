//! Shared by Meridian's benchmarks: process control, CPU and memory readings, percentiles, and
//! an admin client of the public API.

pub mod dev_topology;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// A command running `program`, pinned to `cpus` with taskset unless `cpus` is empty.
pub fn pinned(program: &Path, cpus: &str) -> Command {
    if cpus.is_empty() {
        Command::new(program)
    } else {
        let mut c = Command::new("taskset");
        c.args(["-c", cpus]).arg(program);
        c
    }
}

/// Resident memory of a process, in KiB, from /proc.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("malformed VmRSS")?
        .parse()?)
}

/// p-th percentile (0–100) of `samples` in µs, sorting them.
pub fn percentile(samples: &mut [f64], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * (samples.len() - 1) as f64).round() as usize;
    samples[rank]
}

/// CPU time (user + system) of a process so far, from /proc.
pub fn cpu_time(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after_name = stat.rsplit_once(')').context("malformed stat")?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // Linux reports in USER_HZ, 100 per second on every mainstream configuration.
    Ok(Duration::from_millis(ticks * 10))
}

/// How long the threads of a process have waited for a CPU while runnable so far (the
/// scheduler's run-queue delay, summed over its threads, from /proc/PID/task/*/schedstat;
/// threads that ended are not counted).
pub fn run_queue_wait(pid: u32) -> Result<Duration> {
    let mut waited = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = task?.path().join("schedstat");
        // A thread may end between the listing and the read.
        let Ok(stat) = std::fs::read_to_string(&path) else {
            continue;
        };
        let field = stat
            .split_whitespace()
            .nth(1)
            .context("malformed schedstat")?;
        waited += field.parse::<u64>()?;
    }
    Ok(Duration::from_nanos(waited))
}

/// An admin client of the public API.
pub struct Api {
    /// The HTTP client.
    pub http: reqwest::Client,
    /// Base URL of the API.
    pub base: String,
    /// The admin token.
    pub token: String,
    /// The xDS URL regional control planes follow.
    pub xds: String,
}

impl Api {
    /// `method path` with an optional JSON body; the JSON answer (or null).
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await?;
        let status = response.status();
        let bytes = response.bytes().await?;
        if !status.is_success() {
            bail!("{path}: {status}: {}", String::from_utf8_lossy(&bytes));
        }
        Ok(serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }
}

/// Starts `meridian control --global` (pinned to `cpus` with taskset unless empty) with its data
/// in `dir`; returns the process and an admin client of its API.
pub async fn start_control(
    meridian: &Path,
    cpus: &str,
    dir: &Path,
) -> Result<(tokio::process::Child, Api)> {
    let localhost = std::net::IpAddr::from([127, 0, 0, 1]);
    start_control_with(meridian, cpus, localhost, dir, &[], None).await
}

/// [`start_control`] with its API and xDS ports on `host` (port 0) and `extra` arguments (e.g.
/// `--store postgres://…`). With a `trace` file, its log goes there as JSON lines, with the
/// change feed's stage trace ([`meridian_store::trace`]). A replica started on a store that
/// has its admin token already has an empty [`Api::token`]: set the first's.
pub async fn start_control_with(
    meridian: &Path,
    cpus: &str,
    host: std::net::IpAddr,
    dir: &Path,
    extra: &[String],
    trace: Option<&Path>,
) -> Result<(tokio::process::Child, Api)> {
    let mut command = pinned(meridian, cpus);
    let address = std::net::SocketAddr::new(host, 0).to_string();
    command
        .args([
            "control", "--global", "--listen", &address, "--xds", &address,
        ])
        .arg("--data-dir")
        .arg(dir)
        .args(extra)
        .env("MERIDIAN_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    if let Some(trace) = trace {
        let log = std::fs::File::create(trace)
            .with_context(|| format!("creating {}", trace.display()))?;
        command
            .env(
                "MERIDIAN_LOG",
                format!("warn,{}=debug", meridian_store::trace::TARGET),
            )
            .env("MERIDIAN_LOG_FORMAT", "json")
            .stderr(log);
    }
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {}", meridian.display()))?;
    let mut lines = BufReader::new(child.stdout.take().context("no stdout")?).lines();
    let (mut base, mut token, mut xds) = (None, None, None);
    while let Some(line) = lines.next_line().await? {
        if let Some(rest) = line.strip_prefix("meridian control (global) serving ") {
            base = rest.split_whitespace().next().map(str::to_owned);
        } else if let Some(rest) = line.trim().strip_prefix("regional control planes follow ") {
            xds = rest.split_whitespace().next().map(str::to_owned);
        } else if let Some((_, t)) = line.split_once("stored hashed): ") {
            token = Some(t.trim().to_owned());
            break;
        } else if line.starts_with("admin token: created at first start") {
            // Another replica on the same store made it: the caller knows it.
            token = Some(String::new());
            break;
        }
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()?;
    let api = Api {
        http,
        base: base.context("control plane did not print its address")?,
        token: token.context("control plane did not print an admin token")?,
        xds: xds.context("control plane did not print its xDS address")?,
    };
    Ok((child, api))
}

/// A regional control plane started by [`start_region`], and the admin address it serves
/// `/readyz` and `/metrics` on.
pub struct RegionPlane {
    /// The process (killed when dropped).
    pub process: tokio::process::Child,
    /// `http://HOST:PORT` of its admin port.
    pub admin: String,
}

/// Starts `meridian control --region <region>` (pinned to `cpus` with taskset unless empty,
/// at the idle scheduling class),
/// its ports on `host` (port 0) and its data in `dir`, joining through `api` (a region of the
/// global store) and following only `api.xds`; returns once the region has the global control
/// plane's first answer (its `/readyz` says so), within 30 s.
pub async fn start_region(
    meridian: &Path,
    cpus: &str,
    host: std::net::IpAddr,
    dir: &Path,
    api: &Api,
    region: &str,
) -> Result<RegionPlane> {
    let body = serde_json::json!({"ttl_seconds": 600});
    let join = api
        .send(
            reqwest::Method::POST,
            &format!("/v1/regions/{region}/join-tokens"),
            Some(&body),
        )
        .await?;
    let join = join["token"].as_str().context("join token answer")?;
    let address = std::net::SocketAddr::new(host, 0).to_string();
    // At the idle scheduling class: on CPUs shared with the load generator, the region runs only
    // when the generator does not, so that it never delays the generator's own timings (a
    // region runs on its own machines in an installation).
    let mut command = Command::new("chrt");
    command.args(["--idle", "0"]);
    if !cpus.is_empty() {
        command.args(["taskset", "-c", cpus]);
    }
    command
        .arg(meridian)
        .args(["control", "--region", region, "--xds", &address])
        .args(["--admin", &address, "--api", &api.base])
        .args(["--global-xds", &api.xds, "--join-token", join])
        .arg("--data-dir")
        .arg(dir)
        .env("MERIDIAN_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    let mut process = command
        .spawn()
        .with_context(|| format!("starting region {region}"))?;
    let mut lines = BufReader::new(process.stdout.take().context("no stdout")?).lines();
    let mut admin = None;
    while let Some(line) = lines.next_line().await? {
        if let Some((_, rest)) = line.split_once(", admin ") {
            admin = rest.split([',', ' ']).next().map(str::to_owned);
            break;
        }
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let admin =
        admin.with_context(|| format!("region {region} did not print its admin address"))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ready = api.http.get(format!("{admin}/readyz")).send().await;
        if ready.is_ok_and(|r| r.status().is_success()) {
            return Ok(RegionPlane { process, admin });
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "region {region} did not get the global control plane's first answer within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The sum of the series of the metric `name` (a counter or gauge, over its label sets) on the
/// admin port `admin` (`http://HOST:PORT`, its `/metrics`).
pub async fn metric_sum(admin: &str, name: &str) -> Result<f64> {
    let text = reqwest::get(format!("{admin}/metrics"))
        .await?
        .error_for_status()?
        .text()
        .await?;
    Ok(text
        .lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with([' ', '{']))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}
