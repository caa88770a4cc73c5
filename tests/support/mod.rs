//! Shared by the end-to-end tests: the `meridian` binary as a control plane process and as the
//! command-line client. Each test binary uses part of it.

#![allow(dead_code)]

pub mod browser;
pub mod edge_feed;
pub mod load;
pub mod netns;
pub mod pebble;
pub mod secrets;
pub mod tcp;
pub mod websocket;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const MERIDIAN: &str = env!("CARGO_BIN_EXE_meridian");
const STARTUP_DEADLINE: Duration = Duration::from_secs(60);

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A `meridian control --global` process; killed on drop.
pub struct ControlPlane {
    child: Option<Child>,
    /// Base URL of its API.
    pub api: String,
    /// URL of its xDS, which regional control planes follow (`https://ip:port`).
    pub xds: String,
    /// The admin token it printed (first start only).
    pub token: Option<String>,
    data_dir: PathBuf,
    /// More arguments it was started with.
    extra: Vec<String>,
    /// Where it logs (at `debug`), if not to the test's standard error (at `warn`).
    log: Option<PathBuf>,
}

/// Spawns `command` with its standard output piped, and returns the child with a channel of its
/// output lines (read by a thread of their own).
pub fn spawn_with_lines(command: &mut Command) -> (Child, mpsc::Receiver<String>) {
    let mut child = command
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        // Read to the end even when nobody listens any more: a closed pipe would make the
        // child's next print fail.
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    (child, lines)
}

/// The first line from `lines` that `wanted` accepts, within `deadline`; panics with `what`.
pub fn wait_for_line(
    lines: &mpsc::Receiver<String>,
    deadline: Duration,
    what: &str,
    mut wanted: impl FnMut(&str) -> bool,
) -> String {
    let end = Instant::now() + deadline;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if wanted(&line) => return line,
            Ok(_) => continue,
            Err(_) => panic!("waited in vain for {what}"),
        }
    }
}

/// The Prometheus text a component serves at `base` (`http://ip:port`) `/metrics`.
pub async fn metrics(base: &str) -> String {
    reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The `5xx` answers a node proxy (admin at `base`) counted on its instances' inbound
/// listeners, by route (which counts those it answered itself: a wake or a limit refused them).
pub async fn inbound_5xx(base: &str) -> f64 {
    metrics(base)
        .await
        .lines()
        .filter(|l| l.starts_with("meridian_proxy_requests_total{"))
        .filter(|l| l.contains("listener=\"in/") && l.contains("status=\"5xx\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Whether tests must fail rather than skip when a prerequisite is missing (as in CI).
pub fn strict() -> bool {
    std::env::var("MERIDIAN_TEST_STRICT").as_deref() == Ok("1")
}

impl ControlPlane {
    pub fn start(data_dir: &Path) -> ControlPlane {
        Self::start_at(data_dir, "127.0.0.1:0", "127.0.0.1:0", &[], None)
    }

    /// [`ControlPlane::start`] with its API and xDS on `ip` (port 0 each).
    pub fn start_on(data_dir: &Path, ip: &str) -> ControlPlane {
        let any_port = format!("{ip}:0");
        Self::start_at(data_dir, &any_port, &any_port, &[], None)
    }

    /// [`ControlPlane::start_on`] with more arguments (e.g. `--store postgres://…`).
    pub fn start_on_with(data_dir: &Path, ip: &str, extra: &[&str]) -> ControlPlane {
        let any_port = format!("{ip}:0");
        Self::start_at(data_dir, &any_port, &any_port, extra, None)
    }

    /// [`ControlPlane::start`] with more arguments (e.g. `--local-ca`).
    pub fn start_with(data_dir: &Path, extra: &[&str]) -> ControlPlane {
        Self::start_at(data_dir, "127.0.0.1:0", "127.0.0.1:0", extra, None)
    }

    /// [`ControlPlane::start_with`], logging at `debug` to the file `log` (appended to).
    pub fn start_logging(data_dir: &Path, extra: &[&str], log: &Path) -> ControlPlane {
        let mut plane = Self::start_at(data_dir, "127.0.0.1:0", "127.0.0.1:0", extra, Some(log));
        plane.log = Some(log.to_owned());
        plane
    }

    /// Stops the process (SIGKILL).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends the process `signal` (e.g. `STOP` to freeze it without closing its connections,
    /// `CONT` to let it go on).
    pub fn signal(&self, signal: rustix::process::Signal) {
        let child = self.child.as_ref().expect("a running process");
        let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("a process id");
        rustix::process::kill_process(pid, signal).unwrap();
    }

    /// Starts it again with the same data directory, API and xDS addresses.
    pub fn start_again(&mut self) {
        self.stop();
        let api = self.api.trim_start_matches("http://").to_owned();
        let xds = self.xds.trim_start_matches("https://").to_owned();
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        let again = Self::start_at(&self.data_dir, &api, &xds, &extra, self.log.as_deref());
        self.child = Some(again.take_child());
    }

    fn take_child(mut self) -> Child {
        self.child.take().expect("a running process")
    }

    fn start_at(
        data_dir: &Path,
        api: &str,
        xds: &str,
        extra: &[&str],
        log: Option<&Path>,
    ) -> ControlPlane {
        let mut command = Command::new(MERIDIAN);
        command
            .args(["control", "--global", "--listen", api, "--xds", xds])
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .env("MERIDIAN_LOG", "warn");
        if let Some(log) = log {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .unwrap();
            command.env("MERIDIAN_LOG", "debug").stderr(file);
        }
        let (child, lines) = spawn_with_lines(&mut command);
        let deadline = Instant::now() + STARTUP_DEADLINE;
        let mut api = None;
        let mut xds = None;
        // The serving line comes first, then the admin token line (its secret on a first start).
        let token = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = lines
                .recv_timeout(left)
                .expect("control plane printed its address and admin token line in time");
            if let Some(rest) = line.strip_prefix("meridian control (global) serving ") {
                api = rest.split_whitespace().next().map(str::to_owned);
            } else if let Some(rest) = line.trim().strip_prefix("regional control planes follow ") {
                xds = rest.split_whitespace().next().map(str::to_owned);
            } else if line.starts_with("admin token") {
                break line
                    .split_once("stored hashed): ")
                    .map(|(_, t)| t.trim().to_owned());
            }
        };
        ControlPlane {
            child: Some(child),
            api: api.expect("control plane printed its address"),
            xds: xds.expect("control plane printed its xDS address"),
            token,
            data_dir: data_dir.to_owned(),
            extra: extra.iter().map(|a| a.to_string()).collect(),
            log: None,
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

pub struct Cli {
    /// Base URL of the API.
    pub api: String,
    /// Token to use.
    pub token: String,
}

impl Cli {
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(MERIDIAN)
            .args(args)
            .current_dir(repo_root())
            .env("MERIDIAN_API", &self.api)
            .env("MERIDIAN_TOKEN", &self.token)
            .env_remove("MERIDIAN_ORG")
            .output()
            .expect("run meridian")
    }

    /// Runs a command that must succeed; returns its standard output.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "meridian {args:?} failed\nstdout: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// Runs a command that must fail; returns its standard error.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "meridian {args:?} should have failed"
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// A CLI with a new token of `org`, made with this one (an admin's).
    pub fn for_new_org_token(&self, org: &str) -> Cli {
        let created = self.ok(&["token", "create", "--org", org]);
        let token = created
            .lines()
            .find_map(|l| l.strip_prefix("secret (shown only now): "))
            .unwrap_or_else(|| panic!("no secret in {created}"))
            .trim()
            .to_owned();
        Cli {
            api: self.api.clone(),
            token,
        }
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&all)).expect("-o json prints JSON")
    }

    /// Polls `meridian domains` until `domain` is `valid`, for at most a minute (else panics
    /// with what `context` says, e.g. the CA's log); the states it showed, in order, and its
    /// last row.
    pub async fn wait_valid(
        &self,
        domain: &str,
        context: impl Fn() -> String,
    ) -> (Vec<String>, serde_json::Value) {
        let mut seen: Vec<String> = Vec::new();
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            let listed = self.json(&["domains"]);
            let row = listed
                .as_array()
                .unwrap()
                .iter()
                .find(|d| d["domain"] == domain)
                .cloned()
                .unwrap_or_else(|| panic!("{domain} is not listed: {listed}"));
            let state = row["state"].as_str().unwrap().to_owned();
            if seen.last() != Some(&state) {
                seen.push(state.clone());
            }
            if state == "valid" {
                return (seen, row);
            }
            assert!(Instant::now() < end, "never valid: {row}\n{}", context());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A child process killed on drop.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A child process asked to stop (SIGTERM) on drop, as an operator would, and killed if it
/// has not stopped within thirty seconds: an agent stops its instances then, each within its
/// `stop_timeout` (ten seconds by default), and removes their network namespaces.
pub struct Stopped(pub Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        if let Some(pid) = i32::try_from(self.0.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let end = Instant::now() + Duration::from_secs(30);
        while Instant::now() < end {
            if !matches!(self.0.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Where a [`RegionalPlane`] logs, in its data directory.
const LOG_FILE: &str = "stderr.log";

/// `meridian control --region R` following a global control plane.
pub struct RegionalPlane {
    _child: Killed,
    /// Its data directory (its CA).
    pub dir: tempfile::TempDir,
    /// Its xDS and certificate address over mutual TLS (`https://ip:port`).
    pub xds: String,
    /// Its xDS address without authentication, for proxyless gRPC clients (`ip:port`).
    pub xds_plaintext: String,
    /// Its admin address (`http://ip:port`), where join tokens are made.
    pub admin: String,
    /// The admin token of the installation.
    token: String,
    /// The region.
    pub region: String,
    /// The global control plane's API and xDS, and where its gateway listens.
    api: String,
    global_xds: String,
    gateway: Option<String>,
    /// More arguments it was started with.
    extra: Vec<String>,
}

impl RegionalPlane {
    /// Starts the control plane of `region`, following `global`; with `gateway`, the region's
    /// gateway listens there.
    pub fn start(
        global: &ControlPlane,
        token: &str,
        region: &str,
        gateway: Option<&str>,
    ) -> RegionalPlane {
        Self::start_with(global, token, region, gateway, &[])
    }

    /// [`RegionalPlane::start`] with more arguments (e.g. `--cert-lifetime`).
    pub fn start_with(
        global: &ControlPlane,
        token: &str,
        region: &str,
        gateway: Option<&str>,
        extra: &[&str],
    ) -> RegionalPlane {
        let dir = tempfile::tempdir().unwrap();
        let global = (global.api.as_str(), global.xds.as_str());
        let extra = extra.iter().map(|a| a.to_string()).collect();
        Self::start_in(dir, "127.0.0.1:0", global, token, region, gateway, extra)
    }

    /// Starts the control plane of `region`, joining through the global API at `api` and
    /// following `global_xds` (the xDS URLs of several replicas, separated by commas).
    pub fn start_following(
        api: &str,
        global_xds: &str,
        token: &str,
        region: &str,
    ) -> RegionalPlane {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(
            dir,
            "127.0.0.1:0",
            (api, global_xds),
            token,
            region,
            None,
            Vec::new(),
        )
    }

    /// [`RegionalPlane::start`] with its xDS on `ip` (port 0), where proxies and edges in
    /// other network namespaces reach it.
    pub fn start_on(
        global: &ControlPlane,
        token: &str,
        region: &str,
        gateway: Option<&str>,
        ip: &str,
    ) -> RegionalPlane {
        let dir = tempfile::tempdir().unwrap();
        let global = (global.api.as_str(), global.xds.as_str());
        let xds = format!("{ip}:0");
        Self::start_in(dir, &xds, global, token, region, gateway, Vec::new())
    }

    /// Stops the control plane and starts it again with the same data directory and xDS
    /// address (its proxies and agents reconnect).
    pub fn restart(self) -> RegionalPlane {
        let RegionalPlane {
            _child,
            dir,
            xds,
            token,
            region,
            api,
            global_xds,
            gateway,
            extra,
            ..
        } = self;
        drop(_child);
        let xds = xds.trim_start_matches("https://").to_owned();
        let global = (api.as_str(), global_xds.as_str());
        Self::start_in(
            dir,
            &xds,
            global,
            &token,
            &region,
            gateway.as_deref(),
            extra,
        )
    }

    fn start_in(
        dir: tempfile::TempDir,
        xds: &str,
        (api, global_xds): (&str, &str),
        token: &str,
        region: &str,
        gateway: Option<&str>,
        extra: Vec<String>,
    ) -> RegionalPlane {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join(LOG_FILE))
            .unwrap();
        // At its first start the region gets its CA with a one-time token; it is given no
        // admin token.
        let ca = dir.path().join(format!("region-{region}/ca/trust-domain"));
        let join = (!ca.exists()).then(|| region_join_token(api, token, region));
        let (child, lines) = spawn_with_lines(
            Command::new(MERIDIAN)
                .args(["control", "--region", region, "--xds", xds])
                .args(join.iter().flat_map(|t| ["--join-token", t.as_str()]))
                .args(["--xds-plaintext", "127.0.0.1:0"])
                .arg("--data-dir")
                .arg(dir.path())
                .args(["--admin", "127.0.0.1:0", "--api", api])
                .args(["--global-xds", global_xds])
                // The gateway listens for edges (mutual TLS) at `gateway`, and in plain HTTP
                // for the tests on a port of its own.
                .args(
                    gateway
                        .map(|g| ["--gateway", g, "--gateway-plaintext", "127.0.0.1:0"])
                        .into_iter()
                        .flatten(),
                )
                .args(&extra)
                .env_remove("MERIDIAN_TOKEN")
                .env("MERIDIAN_LOG", "info")
                .stderr(log),
        );
        let line = wait_for_line(
            &lines,
            STARTUP_DEADLINE,
            "the regional control plane's address",
            |l| l.contains("serving xDS on "),
        );
        let field = |after: &str| {
            line.split(after)
                .nth(1)
                .and_then(|rest| rest.split(',').next())
                .unwrap_or_else(|| panic!("no `{after}` in {line}"))
                .to_owned()
        };
        let (xds, admin) = (field("serving xDS on "), field("admin "));
        let plaintext = wait_for_line(
            &lines,
            STARTUP_DEADLINE,
            "the unauthenticated xDS address",
            |l| l.contains(" proxyless gRPC clients on "),
        );
        let xds_plaintext = plaintext
            .split(" proxyless gRPC clients on ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .expect("an address")
            .to_owned();
        RegionalPlane {
            _child: Killed(child),
            dir,
            xds,
            xds_plaintext,
            admin,
            token: token.to_owned(),
            region: region.to_owned(),
            api: api.to_owned(),
            global_xds: global_xds.to_owned(),
            gateway: gateway.map(str::to_owned),
            extra,
        }
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join(LOG_FILE)).unwrap()
    }

    /// A one-time join token for `identity` (e.g. `gateway`), made by `meridian join-token`.
    pub fn join_token(&self, identity: &str) -> String {
        join_token(&[identity, "--control", &self.admin], &self.token)
    }
}

/// What `meridian join-token <args>` prints with the admin `token`.
fn join_token(args: &[&str], token: &str) -> String {
    let output = Command::new(MERIDIAN)
        .arg("join-token")
        .args(args)
        .env("MERIDIAN_TOKEN", token)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "meridian join-token {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// A one-time token with which the control plane of `region` gets its CA, made by
/// `meridian join-token control/<region>` against the global API at `api` with the admin
/// `token`.
pub fn region_join_token(api: &str, token: &str, region: &str) -> String {
    join_token(&[&format!("control/{region}"), "--api", api], token)
}

/// A global control plane with region `fra` and one service deployed from a YAML definition.
pub struct Deployed {
    /// The control plane.
    pub global: ControlPlane,
    /// Its admin token.
    pub token: String,
    /// The CLI, as admin.
    pub cli: Cli,
    /// The definition's file: rewrite it and [`Deployed::deploy`] to change the service.
    pub definition: PathBuf,
}

impl Deployed {
    /// Starts a control plane with its data in `dir` and deploys `definition` (YAML).
    pub fn start(dir: &Path, definition: &str) -> Deployed {
        Self::start_with(dir, definition, &[])
    }

    /// [`Deployed::start`], the control plane's API and xDS on `ip` (port 0 each), where edges
    /// in other network namespaces reach it.
    pub fn start_on(dir: &Path, definition: &str, ip: &str) -> Deployed {
        let deployed = Self::around(ControlPlane::start_on(&dir.join("data"), ip), dir);
        deployed.deploy(definition);
        deployed
    }

    /// [`Deployed::start`], the control plane started with more arguments (e.g. `--local-ca`).
    pub fn start_with(dir: &Path, definition: &str, extra: &[&str]) -> Deployed {
        let deployed = Self::around(ControlPlane::start_with(&dir.join("data"), extra), dir);
        deployed.deploy(definition);
        deployed
    }

    /// A control plane with its data in `dir`, sealing secrets with a key it makes there and
    /// logging at debug to `dir/global.log`, started with `extra` more arguments; with region
    /// `fra` and org `acme`, nothing deployed yet.
    pub fn with_secrets(dir: &Path, extra: &[&str]) -> Deployed {
        let key = dir.join("secrets.key");
        let key = [
            "--secrets-key",
            key.to_str().unwrap(),
            "--create-secrets-key",
        ];
        let global = ControlPlane::start_logging(
            &dir.join("data"),
            &[extra, &key[..]].concat(),
            &dir.join("global.log"),
        );
        let deployed = Self::around(global, dir);
        deployed.cli.ok(&["org", "create", "acme"]);
        deployed
    }

    /// `global` (first started) with region `fra`, its definition file in `dir`.
    fn around(global: ControlPlane, dir: &Path) -> Deployed {
        let token = global
            .token
            .clone()
            .expect("a first start prints the admin token");
        let cli = Cli {
            api: global.api.clone(),
            token: token.clone(),
        };
        cli.ok(&["region", "add", "fra", "--lat", "50.11", "--lon", "8.68"]);
        Deployed {
            global,
            token,
            cli,
            definition: dir.join("service.yaml"),
        }
    }

    /// Deploys `definition` (YAML) as the service's new version.
    pub fn deploy(&self, definition: &str) {
        std::fs::write(&self.definition, definition).unwrap();
        self.cli
            .ok(&["deploy", "-f", self.definition.to_str().unwrap()]);
    }

    /// The first region's row of `meridian status SERVICE --app shop -o json`.
    pub fn first_region_status(&self, service: &str) -> serde_json::Value {
        let status = self.cli.json(&["status", service, "--app", "shop"]);
        status["regions"][0].clone()
    }

    /// Polls [`Deployed::first_region_status`] of `service` until `done` holds of it; panics
    /// after 90 s saying `what` was awaited, with the last row.
    pub async fn status_until(
        &self,
        service: &str,
        what: &str,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let end = Instant::now() + Duration::from_secs(90);
        loop {
            let row = self.first_region_status(service);
            if done(&row) {
                return row;
            }
            assert!(Instant::now() < end, "never {what}: {row}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Polls until `service` runs in its first region with no problem reported.
    pub async fn until_running_without_problems(&self, service: &str) {
        self.status_until(service, "running without problems", |row| {
            row["state"] == "running" && problems(row).is_empty()
        })
        .await;
    }

    /// Registers endpoint `id` of `service` (app `shop`) in `fra` on 127.0.0.1 with `port`
    /// (as `NAME=NUMBER`) and `health`.
    pub fn set_endpoint(&self, service: &str, id: &str, port: &str, health: &str) {
        self.cli.ok(&[
            "endpoint",
            "set",
            service,
            id,
            "--app",
            "shop",
            "--region",
            "fra",
            "--address",
            "127.0.0.1",
            "--port",
            port,
            "--health",
            health,
        ]);
    }
}

/// The problems of a region's row of `meridian status` (`problems`, empty when none).
pub fn problems(row: &serde_json::Value) -> Vec<String> {
    row["problems"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p.as_str().map(str::to_owned))
        .collect()
}

/// The example service, built with this binary.
pub const HELLO: &str = env!("CARGO_BIN_EXE_meridian-hello");

/// Service `acme/shop/web` in fra, running `command`, serving port `http` (8080) at `/` and
/// claiming `domains` (YAML flow items), with `more` YAML lines after.
pub fn shop_web(command: &str, domains: &str, more: &str) -> String {
    format!(
        "\
org: acme
app: shop
name: web
regions: [fra]
runtime: {{process: {{command: {command}}}}}
ports: [{{name: http, port: 8080}}]
routes: [{{path_prefix: /, port: http}}]
domains: [{domains}]
{more}"
    )
}

/// `meridian agent` for `node` of fra, handing out addresses from `first_address`; stopped
/// (with its instances) on drop.
pub fn agent(region: &RegionalPlane, node: &str, first_address: &str, dir: &Path) -> Agent {
    agent_with(
        region,
        node,
        dir,
        &["--instance-addresses", first_address, "--isolation", "host"],
    )
}

/// The public domain of [`hello_in_fra`].
pub const HELLO_HOST: &str = "hello.example.com";

/// `scale` instances of acme/shop/hello in fra running `command` (meridian-hello: [`HELLO`]),
/// greeting with `greeting`, at [`HELLO_HOST`], health-checked on `health_path` every 200 ms
/// (failures count after 1 s), with `more` YAML lines after.
pub fn hello_in_fra(
    scale: u32,
    command: &str,
    greeting: &str,
    health_path: &str,
    more: &str,
) -> String {
    format!(
        "\
org: acme
app: shop
name: hello
regions: [fra]
scale: {{min: {scale}, max: 3}}
runtime: {{process: {{command: {command}, env: {{GREETING: {greeting}}}}}}}
ports: [{{name: http, port: 8080}}]
routes: [{{path_prefix: /, port: http}}]
domains: [{HELLO_HOST}]
health_checks: [{{http: {{port: http, path: {health_path}}}, interval: 200ms, timeout: 200ms, grace_period: 1s}}]
{more}"
    )
}

/// [`agent`] logging at `info`: its log says `starting instance`, `draining instance` and
/// `stopping instance`.
pub fn logging_agent(region: &RegionalPlane, node: &str, addresses: &str, dir: &Path) -> Agent {
    let isolation = ["--instance-addresses", addresses, "--isolation", "host"];
    agent_with_env(region, node, dir, &isolation, &[("MERIDIAN_LOG", "info")])
}

/// How many instances `agents` stopped so far (from their logs).
pub fn stops(agents: &[Agent]) -> usize {
    agents.iter().map(|a| said(a, "stopping instance")).sum()
}

/// The agent's log lines that say `what` (`starting instance`, `stopping instance`).
pub fn said(agent: &Agent, what: &str) -> usize {
    agent.log().matches(what).count()
}

/// Whether this run may make network namespaces (root with iproute2 and nftables); in CI
/// (strict) it must.
pub fn namespaces_allowed() -> bool {
    let allowed = meridian_agent::netns_available();
    if !allowed {
        assert!(
            !strict(),
            "network namespaces need root, iproute2 and nftables (MERIDIAN_TEST_STRICT=1)"
        );
        eprintln!("skipped: network namespaces need root, iproute2 and nftables");
    }
    allowed
}

/// `meridian agent` for `node` of the region, its instances in network namespaces on the /24
/// of `network` (a third octet of 100.64 that no other test uses); stopped on drop.
pub fn netns_agent(region: &RegionalPlane, node: &str, dir: &Path, network: &str) -> Agent {
    agent_with(
        region,
        node,
        dir,
        &["--isolation", "netns", "--instance-network", network],
    )
}

/// `meridian agent` for `node` of the region with `isolation` arguments (addresses and mode);
/// stopped (with its instances) on drop.
pub fn agent_with(region: &RegionalPlane, node: &str, dir: &Path, isolation: &[&str]) -> Agent {
    agent_with_env(region, node, dir, isolation, &[])
}

/// [`agent_with`], started with `env` added to the test's environment.
pub fn agent_with_env(
    region: &RegionalPlane,
    node: &str,
    dir: &Path,
    isolation: &[&str],
    env: &[(&str, &str)],
) -> Agent {
    agent_with_command(
        region,
        node,
        dir,
        isolation,
        Path::new(MERIDIAN),
        |command| {
            command.envs(env.iter().copied());
        },
    )
}

/// [`agent_with`], its command changed by `adjust` (environment, user) before it starts.
pub fn agent_with_command(
    region: &RegionalPlane,
    node: &str,
    dir: &Path,
    isolation: &[&str],
    program: &Path,
    adjust: impl FnOnce(&mut Command),
) -> Agent {
    if let Some(at) = isolation.iter().position(|a| *a == "--instance-network") {
        remove_leftover_namespaces(isolation[at + 1], &dir.join(node));
    }
    let token = region.join_token(&format!("agent/{node}"));
    let log = dir.join(format!("{node}-{LOG_FILE}"));
    let log_file = std::fs::File::create(&log).unwrap();
    let mut command = Command::new(program);
    command
        .stderr(log_file)
        .args(["agent", "--region", &region.region, "--node", node])
        .args(["--control", &region.xds, "--join-token", &token])
        .args(isolation)
        .arg("--state-dir")
        .arg(dir.join(node))
        .env("MERIDIAN_LOG", "warn");
    if !isolation.contains(&"--capacity") {
        command.args(["--capacity", "4"]);
    }
    adjust(&mut command);
    let (child, lines) = spawn_with_lines(&mut command);
    wait_for_line(&lines, STARTUP_DEADLINE, "the agent's start", |l| {
        l.starts_with("meridian agent of node")
    });
    let admin = wait_for_line(&lines, STARTUP_DEADLINE, "the agent's admin port", |l| {
        l.starts_with("meridian proxy admin on ")
    })
    .trim_start_matches("meridian proxy admin on ")
    .to_owned();
    Agent {
        _process: Stopped(child),
        admin,
        log,
    }
}

/// Deletes the network namespaces (and their veth pairs) that hold addresses of the /24 of
/// `network`, left by an agent of an earlier run that was killed before it could remove them.
/// Each test owns the instance network it gives its agents, so whatever holds one is a
/// leftover; the agent itself rightly refuses to take addresses another agent holds. Those of
/// the agent with `state` (an agent started again) are left to it.
fn remove_leftover_namespaces(network: &str, state: &Path) {
    let own = meridian_agent::netns_prefix(state);
    let Some(base) = network.rsplit_once('.').map(|(base, _)| base) else {
        return;
    };
    let Ok(listed) = Command::new("ip")
        .args(["-o", "-4", "addr", "show", "to", &format!("{base}.0/24")])
        .output()
    else {
        return;
    };
    for line in String::from_utf8_lossy(&listed.stdout).lines() {
        let Some(link) = line.split_whitespace().nth(1) else {
            continue;
        };
        let link = link.split('@').next().unwrap_or(link);
        // The host side `mh<tag><id>` of the pair in namespace `mrd-<tag>-<id>`.
        if let Some(tag_and_id) = link.strip_prefix("mh").filter(|t| t.len() == 12) {
            let (tag, id) = tag_and_id.split_at(8);
            let namespace = format!("mrd-{tag}-{id}");
            if namespace.starts_with(&own) {
                continue;
            }
            eprintln!("removing namespace {namespace}, left on {network} by an earlier run");
            let _ = Command::new("ip")
                .args(["netns", "delete", &namespace])
                .status();
            let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(&namespace));
        }
        let _ = Command::new("ip").args(["link", "delete", link]).status();
    }
}

/// A running `meridian agent`, stopped (with its instances) on drop.
pub struct Agent {
    _process: Stopped,
    /// Its admin port (`http://ip:port`).
    pub admin: String,
    log: PathBuf,
}

impl Agent {
    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Serves `app` on a loopback port, on a thread (and runtime) of its own, so that it answers
/// whatever the test's runtime is doing; its address. `app` is made on that thread.
pub fn serve_on_thread<F>(app: F) -> std::net::SocketAddr
where
    F: FnOnce() -> axum::Router + Send + 'static,
{
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            listener.set_nonblocking(true).unwrap();
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app()).await.unwrap();
        });
    });
    addr
}

/// An HTTP/2 client (prior knowledge) on `stream`, its connection driven by a task.
pub async fn h2_client<S, B>(stream: S) -> hyper::client::conn::http2::SendRequest<B>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    B: hyper::body::Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (client, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    client
}

/// The command of `meridian edge` at Paris with its public listener at `listen`.
pub fn paris_edge(listen: &str) -> Command {
    edge_command(&PARIS, listen)
}

/// Where an edge is: its location's name, latitude and longitude.
pub struct EdgeLocation {
    pub name: &'static str,
    pub lat: &'static str,
    pub lon: &'static str,
}

pub const PARIS: EdgeLocation = EdgeLocation {
    name: "par",
    lat: "48.86",
    lon: "2.35",
};

pub const AMSTERDAM: EdgeLocation = EdgeLocation {
    name: "ams",
    lat: "52.37",
    lon: "4.90",
};

pub const LONDON: EdgeLocation = EdgeLocation {
    name: "lon",
    lat: "51.51",
    lon: "-0.13",
};

/// The command of `meridian edge` at `location` with its public listener at `listen`.
fn edge_command(location: &EdgeLocation, listen: &str) -> Command {
    let mut command = Command::new(MERIDIAN);
    command
        .args(["edge", "--location", location.name])
        .args(["--lat", location.lat, "--lon", location.lon])
        .args(["--listen", listen, "--admin", "127.0.0.1:0"]);
    command
}

/// `meridian edge` at Paris, joined at `region`; its public address.
pub fn edge(platform: &Deployed, region: &RegionalPlane, dir: &Path) -> (Killed, String) {
    edge_with(platform, region, dir, &[])
}

/// [`edge`], started with `extra` arguments (e.g. `--otlp-endpoint URL`).
pub fn edge_with(
    platform: &Deployed,
    region: &RegionalPlane,
    dir: &Path,
    extra: &[&str],
) -> (Killed, String) {
    let global_xds = platform.global.xds.as_str();
    let listen = ("127.0.0.1:0", None);
    let edge = spawn_edge(region, dir, &PARIS, listen, (global_xds, extra));
    (edge.process, edge.http)
}

/// A running `meridian edge`; killed on drop.
pub struct Edge {
    pub process: Killed,
    /// Its plain-HTTP listener's address (`ip:port`).
    pub http: String,
    /// Its HTTPS listener's address (`ip:port`), if it has one.
    pub https: Option<String>,
}

/// `meridian edge` at `location`, joined at `region`, its plain listener at `listen` and its
/// HTTPS one at `listen_https`; once it serves (its first configuration applied).
pub fn edge_at(
    platform: &Deployed,
    region: &RegionalPlane,
    dir: &Path,
    location: &EdgeLocation,
    listen: &str,
    listen_https: Option<&str>,
) -> Edge {
    let global_xds = platform.global.xds.as_str();
    spawn_edge(
        region,
        dir,
        location,
        (listen, listen_https),
        (global_xds, &[]),
    )
}

/// `meridian edge` at `location` with a plain listener only, joined at `region`, following the
/// global control plane's xDS at `global_xds` (e.g. through a relay that a test cuts); once it
/// serves.
pub fn edge_via(
    region: &RegionalPlane,
    dir: &Path,
    location: &EdgeLocation,
    global_xds: &str,
) -> Edge {
    spawn_edge(
        region,
        dir,
        location,
        ("127.0.0.1:0", None),
        (global_xds, &[]),
    )
}

fn spawn_edge(
    region: &RegionalPlane,
    dir: &Path,
    location: &EdgeLocation,
    (listen, listen_https): (&str, Option<&str>),
    (global_xds, extra): (&str, &[&str]),
) -> Edge {
    let token = region.join_token(&format!("edge/{}", location.name));
    let (child, lines) = spawn_with_lines(
        edge_command(location, listen)
            .args(listen_https.iter().flat_map(|a| ["--listen-https", a]))
            .args(["--control", &region.xds, "--join-token", &token])
            .args(["--global-xds", global_xds])
            .arg("--state-dir")
            .arg(dir.join(format!("edge-{}", location.name)))
            .args(extra)
            .env("MERIDIAN_LOG", "warn"),
    );
    let line = wait_for_line(&lines, STARTUP_DEADLINE, "the edge's address", |l| {
        l.contains(" serving http://")
    });
    let http = line.rsplit("http://").next().unwrap().to_owned();
    let https = listen_https.map(|_| {
        let line = wait_for_line(&lines, STARTUP_DEADLINE, "the edge's HTTPS address", |l| {
            l.contains(" serving https://")
        });
        line.rsplit("https://").next().unwrap().to_owned()
    });
    Edge {
        process: Killed(child),
        http,
        https,
    }
}

/// The region's gateway, joined with a token; the address of its plain-HTTP listener.
pub async fn gateway(region: &RegionalPlane, dir: &Path) -> (Killed, String) {
    gateway_with(region, dir, &[]).await
}

/// [`gateway`], started with `extra` arguments (e.g. `--access-log FILE`).
pub async fn gateway_with(region: &RegionalPlane, dir: &Path, extra: &[&str]) -> (Killed, String) {
    let token = region.join_token("gateway");
    let (child, lines) = spawn_with_lines(
        Command::new(MERIDIAN)
            .args(["gateway", "--control", &region.xds, "--join-token", &token])
            .args([
                "--region",
                &region.region,
                "--admin",
                "127.0.0.1:0",
                "--state-dir",
            ])
            .arg(dir.join(format!("gateway-{}", region.region)))
            .args(extra)
            .env("MERIDIAN_LOG", "warn"),
    );
    let admin = wait_for_line(
        &lines,
        STARTUP_DEADLINE,
        "the gateway's admin address",
        |l| l.starts_with("meridian proxy admin on "),
    )
    .trim_start_matches("meridian proxy admin on ")
    .to_owned();
    let end = Instant::now() + STARTUP_DEADLINE;
    loop {
        let listeners: serde_json::Value = match reqwest::get(format!("{admin}/listeners")).await {
            Ok(answer) => answer.json().await.unwrap_or_default(),
            Err(_) => serde_json::Value::Null,
        };
        if let Some(address) = listeners["gateway-plaintext"].as_str() {
            return (Killed(child), address.to_owned());
        }
        assert!(Instant::now() < end, "the gateway got no listener");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What `host` answers through the gateway at `gateway` for `path`.
pub async fn through(gateway: &str, host: &str, path: &str) -> (u16, String) {
    let answer = reqwest::Client::new()
        .get(format!("http://{gateway}{path}"))
        .header("host", host)
        .send()
        .await
        .unwrap();
    (answer.status().as_u16(), answer.text().await.unwrap())
}

/// `GET /` of `host` through the proxy at `address`: the status, `Retry-After` and body.
pub async fn root_with_retry_after(address: &str, host: &str) -> (u16, Option<String>, String) {
    let answer = reqwest::Client::new()
        .get(format!("http://{address}/"))
        .header("host", host)
        .send()
        .await
        .unwrap();
    let retry_after = answer
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (
        answer.status().as_u16(),
        retry_after,
        answer.text().await.unwrap(),
    )
}

/// Waits until `host` answers `path` through the gateway with a body containing `wanted`.
pub async fn answers(gateway: &str, host: &str, path: &str, wanted: &str) -> String {
    let end = Instant::now() + STARTUP_DEADLINE;
    loop {
        let (_, body) = through(gateway, host, path).await;
        if body.contains(wanted) {
            return body;
        }
        assert!(
            Instant::now() < end,
            "{host}{path} never answered `{wanted}`: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A mutual-TLS client configuration with a genuine workload certificate of `caller`, from the
/// region (as a rogue agent would get one), expecting the server to be `server`.
pub async fn rogue_client(
    region: &RegionalPlane,
    caller: &meridian_identity::SpiffeId,
    server: meridian_identity::SpiffeId,
) -> rustls::ClientConfig {
    use meridian_identity::enroll::{join, request_certificate, JoinToken};
    let token = JoinToken::parse(&region.join_token("agent/rogue")).unwrap();
    let rogue = join(&region.xds, &token).await.unwrap();
    let issued = request_certificate(&region.xds, &rogue, Some(caller))
        .await
        .unwrap();
    meridian_identity::client_config(
        meridian_identity::CertStore::new(issued.certified_key().unwrap()),
        issued.bundle().unwrap(),
        server,
    )
    .unwrap()
}

/// A TLS client configuration trusting the roots in `roots_pem`, offering `alpn`.
pub fn tls_client(roots_pem: &str, alpn: &[&[u8]]) -> rustls::ClientConfig {
    tls_client_of(rustls::DEFAULT_VERSIONS, roots_pem, alpn)
}

/// [`tls_client`] speaking only `versions` of TLS.
pub fn tls_client_of(
    versions: &[&'static rustls::SupportedProtocolVersion],
    roots_pem: &str,
    alpn: &[&[u8]],
) -> rustls::ClientConfig {
    let roots = meridian_identity::trust_bundle(roots_pem).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(meridian_identity::provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// A TLS connection to `address` (`ip:port`) for `name`, trusting the roots in `roots_pem`
/// and offering `alpn`; the error if the handshake fails.
pub async fn tls_connect(
    address: &str,
    name: &str,
    roots_pem: &str,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let config = std::sync::Arc::new(tls_client(roots_pem, alpn));
    tls_connect_with(config, address, name).await
}

/// A TLS connection to `address` (`ip:port`) for `name` with `config` (whose session cache
/// resumes sessions it made before); the error if the handshake fails.
pub async fn tls_connect_with(
    config: std::sync::Arc<rustls::ClientConfig>,
    address: &str,
    name: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let stream = tokio::net::TcpStream::connect(address).await?;
    let name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
    tokio_rustls::TlsConnector::from(config)
        .connect(name, stream)
        .await
}

/// An HTTP/1.1 WebSocket handshake request for `url`, with `host` as its Host.
pub fn websocket_request(url: &str, host: &str) -> http::Request<()> {
    http::Request::get(url)
        .header("host", host)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header(
            "sec-websocket-key",
            tokio_tungstenite::tungstenite::handshake::client::generate_key(),
        )
        .body(())
        .unwrap()
}

/// The cgroup directory of `pid` for v1 controller `controller`, or its v2 directory.
pub fn cgroup_dir(pid: &str, controller: &str) -> PathBuf {
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let v1 = own.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers.split(',').any(|c| c == controller).then(|| {
            Path::new("/sys/fs/cgroup")
                .join(controller)
                .join(&path[1..])
        })
    });
    v1.unwrap_or_else(|| {
        let path = own.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
        Path::new("/sys/fs/cgroup").join(&path[1..])
    })
}

/// Asks `edge` for `http://shop.example.com/` until an answer's body satisfies `done`; panics
/// after 90 s, saying `what` was awaited and the last answer.
pub async fn until_the_shop_answers(edge: &str, what: &str, done: impl Fn(&str) -> bool) {
    let client = reqwest::Client::new();
    let end = std::time::Instant::now() + std::time::Duration::from_secs(90);
    let mut last = String::new();
    while std::time::Instant::now() < end {
        if let Ok(answer) = client
            .get(format!("http://{edge}/"))
            .header("host", "shop.example.com")
            .send()
            .await
        {
            last = answer.text().await.unwrap_or_default();
            if done(&last) {
                return;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the edge never answered {what}; last answer: {last}");
}

/// Every file under `dir` whose bytes contain `needle`.
pub fn files_containing(dir: &Path, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if std::fs::read(&path)
                .is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle.as_bytes()))
            {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

/// The body of `GET url` (with `token` when given).
pub async fn read(url: &str, token: Option<&str>) -> String {
    let mut request = reqwest::Client::new().get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let answer = request.send().await.unwrap();
    assert!(answer.status().is_success(), "{url}: {}", answer.status());
    answer.text().await.unwrap()
}
