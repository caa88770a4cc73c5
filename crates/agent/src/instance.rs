//! One instance's life: start its process, watch its health, restart it with backoff when it
//! exits or turns unhealthy, and give up (failed) past its restart limit. Its state is published
//! for reports.

use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use std::sync::Arc;

use meridian_model::{ServiceHealth, ServiceSpec, SleepMode};
use tokio::process::{Child, Command};
use tokio::sync::watch;

use crate::cgroups::{Cgroup, Cgroups, Limits};
use crate::health;
use crate::image::bundle::{Bundle, BundleInput};
use crate::image::{runc, ImageStore, Lease};
use crate::logs::{keep, log_dir, Stream, MAX_LOG_BYTES};
use crate::sleep::{Pause, Sleeper};
use crate::start_metrics::StartMetrics;

/// Where an instance is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Started, not yet healthy.
    Starting,
    /// Running and passing its checks (or running, without checks).
    Healthy,
    /// Exited or failing its checks; about to be restarted.
    Unhealthy,
    /// Past its restart limit: not restarted here any more.
    Failed,
    /// Stopped because it is no longer assigned.
    Stopped,
    /// Asleep while idle (`scale.sleep`): frozen (light) or stopped (deep); it takes
    /// requests, which wake it.
    Sleeping(SleepMode),
}

impl State {
    /// The name used in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Healthy => "healthy",
            State::Unhealthy => "unhealthy",
            State::Failed => "failed",
            State::Stopped => "stopped",
            State::Sleeping(mode) => mode.state(),
        }
    }
}

/// An instance's state, restarts and the reason for its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceState {
    /// Where it is.
    pub state: State,
    /// How often it was restarted.
    pub restarts: u32,
    /// Why, in a few words.
    pub detail: String,
    /// Whether its network (its namespace, in that mode) is ready for the node proxy.
    pub network_ready: bool,
}

/// What an instance is and where it runs.
#[derive(Debug, Clone)]
pub struct Launch {
    /// Its id.
    pub instance: String,
    /// Owning org, app and service.
    pub service: (String, String, String),
    /// Its spec.
    pub spec: ServiceSpec,
    /// The values of the secrets its spec's environment references.
    pub secrets: crate::secrets::SecretValues,
    /// The node side's address: where its node proxy listens for it.
    pub address: Ipv4Addr,
    /// Where the instance listens (the same in host mode; the namespace's side otherwise).
    pub listen: Ipv4Addr,
    /// Its network namespace, if it has one.
    pub netns: Option<crate::netns::Netns>,
    /// In host mode, the TCP relays its environment names.
    pub relays: Arc<[crate::host_relays::HostRelay]>,
    /// The region and node it runs in.
    pub region: String,
    /// The node.
    pub node: String,
    /// The agent's state directory (logs and working directories go below it).
    pub state_dir: PathBuf,
    /// The node's cgroups, if the agent may use them: each run gets its own, with the spec's
    /// `resources`.
    pub cgroups: Option<Cgroups>,
    /// The node's image store (for image instances).
    pub images: Arc<ImageStore>,
    /// Where its start times are counted.
    pub starts: StartMetrics,
    /// Its sleeping, when its service sleeps while idle (`scale.sleep`).
    pub sleeper: Option<Arc<Sleeper>>,
}

impl Launch {
    /// The instance's name on this node, unique across orgs and apps: `<org>.<app>.<instance>`
    /// (its working directory and its logs are named so).
    pub fn key(&self) -> String {
        key(&self.service, &self.instance)
    }
}

/// The name on this node of `instance` of `service`: `<org>.<app>.<instance>`.
pub fn key(service: &(String, String, String), instance: &str) -> String {
    format!("{}.{}.{}", service.0, service.1, instance)
}

/// Stops the instances an earlier agent left running (it was killed before it could stop
/// them): each recorded in `<state>/instances/<key>/pid`, if that process is still that
/// instance: its environment names its org, app and id, and its `HOME` is that directory, in
/// this state directory (so this installation and node). A process id since reused by another
/// process — another org's `web-0`, another installation's instance — is left alone.
pub fn stop_leftovers(state_dir: &std::path::Path) {
    let instances = state_dir.join("instances");
    let Ok(entries) = std::fs::read_dir(&instances) else {
        return;
    };
    for entry in entries.flatten() {
        let pid_file = entry.path().join(PID_FILE);
        let Ok(text) = std::fs::read_to_string(&pid_file) else {
            continue;
        };
        let _ = std::fs::remove_file(&pid_file);
        let Ok(number) = text.trim().parse::<i32>() else {
            continue;
        };
        let key = entry.file_name().to_string_lossy().into_owned();
        let Some(markers) = markers(&instances, &key) else {
            continue;
        };
        let environ = std::fs::read(format!("/proc/{number}/environ")).unwrap_or_default();
        let is_it = markers
            .iter()
            .all(|marker| environ.split(|b| *b == 0).any(|v| v == marker.as_slice()));
        if !is_it {
            continue;
        }
        if let Some(pid) = rustix::process::Pid::from_raw(number) {
            tracing::warn!(instance = %key, pid = number, "stopping an instance left running by an earlier agent");
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }
}

/// The variables that the instance of `key` (`<org>.<app>.<id>`, see [`Launch::key`]) in
/// `instances` was started with and that name it: its org, app, id and home; `None` for a key
/// that is not one.
fn markers(instances: &std::path::Path, key: &str) -> Option<[Vec<u8>; 4]> {
    let mut parts = key.splitn(3, '.');
    let (org, app, instance) = (parts.next()?, parts.next()?, parts.next()?);
    let mut home = b"HOME=".to_vec();
    home.extend_from_slice(instances.join(key).as_os_str().as_encoded_bytes());
    Some([
        format!("MERIDIAN_ORG={org}").into_bytes(),
        format!("MERIDIAN_APP={app}").into_bytes(),
        format!("MERIDIAN_INSTANCE={instance}").into_bytes(),
        home,
    ])
}

/// The file that records an instance's process id in its working directory.
const PID_FILE: &str = "pid";

/// Longest wait between restarts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Restart limit when the definition declares no health check.
const DEFAULT_RESTART_LIMIT: u32 = 5;

/// How a run of the process ended.
enum Ended {
    /// The process exited (or could not start).
    Exited(String),
    /// It failed its checks too often.
    Unhealthy(String),
    /// It is no longer assigned.
    Stopped,
    /// It was stopped to sleep (deep) while idle.
    Slept,
}

/// Runs the instance until `stop` becomes true, publishing its state on `states`.
pub async fn run_instance(
    launch: Launch,
    states: watch::Sender<InstanceState>,
    mut stop: watch::Receiver<bool>,
) {
    let restart_limit = launch
        .spec
        .health_checks
        .first()
        .map_or(DEFAULT_RESTART_LIMIT, |c| c.restart_limit);
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap_or_default();
    let publish = |state: State, restarts: u32, detail: String| {
        states.send_modify(|s| {
            s.state = state;
            s.restarts = restarts;
            s.detail = detail;
        });
    };
    if let Some(netns) = &launch.netns {
        if let Err(e) = netns.create().await {
            tracing::error!(instance = %launch.instance, error = %e, "cannot make the instance's network namespace");
            publish(State::Failed, 0, format!("no network namespace: {e}"));
            let _ = stop.wait_for(|stop| *stop).await;
            publish(State::Stopped, 0, "no longer assigned".to_owned());
            return;
        }
    }
    states.send_modify(|s| s.network_ready = true);
    run_lives(&launch, &client, restart_limit, &states, &mut stop).await;
    if let Some(netns) = &launch.netns {
        netns.delete().await;
    }
}

/// Starts the instance again and again until it is stopped or fails past `restart_limit`.
async fn run_lives(
    launch: &Launch,
    client: &reqwest::Client,
    restart_limit: u32,
    states: &watch::Sender<InstanceState>,
    stop: &mut watch::Receiver<bool>,
) {
    let mut restarts = 0;
    let mut backoff = Duration::from_secs(1);
    // The layers of its image stay in the node's store while it is assigned, restarts and all.
    let mut image: Option<Arc<Lease>> = None;
    let publish = |state: State, restarts: u32, detail: String| {
        states.send_modify(|s| {
            s.state = state;
            s.restarts = restarts;
            s.detail = detail;
        });
    };
    loop {
        match launch.sleeper.as_ref().filter(|s| s.gate.is_closed()) {
            // Woken from a deep sleep: it still takes requests (held) while it starts.
            Some(_) => publish(
                State::Sleeping(SleepMode::Deep),
                restarts,
                "waking: started".to_owned(),
            ),
            None => publish(State::Starting, restarts, "started".to_owned()),
        }
        let ended = run_once(launch, client, states, stop, &mut image).await;
        let detail = match ended {
            Ended::Stopped => {
                publish(State::Stopped, restarts, "no longer assigned".to_owned());
                return;
            }
            Ended::Slept => {
                let Some(sleeper) = &launch.sleeper else {
                    return;
                };
                publish(
                    State::Sleeping(SleepMode::Deep),
                    restarts,
                    "stopped while idle; the first request starts it".to_owned(),
                );
                tokio::select! {
                    () = sleeper.woken(SleepMode::Deep) => {}
                    _ = stop.wait_for(|stop| *stop) => {
                        publish(State::Stopped, restarts, "no longer assigned".to_owned());
                        return;
                    }
                }
                backoff = Duration::from_secs(1);
                continue;
            }
            Ended::Exited(detail) | Ended::Unhealthy(detail) => detail,
        };
        if restarts >= restart_limit {
            tracing::warn!(instance = %launch.instance, %detail, restarts, "instance failed past its restart limit");
            publish(
                State::Failed,
                restarts,
                format!("{detail}; gave up after {restarts} restarts"),
            );
            let _ = stop.wait_for(|stop| *stop).await;
            publish(State::Stopped, restarts, "no longer assigned".to_owned());
            return;
        }
        tracing::info!(instance = %launch.instance, %detail, retry_in = ?backoff, "restarting instance");
        publish(
            State::Unhealthy,
            restarts,
            format!("{detail}; restarting in {}s", backoff.as_secs()),
        );
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = stop.wait_for(|stop| *stop) => {
                publish(State::Stopped, restarts, "no longer assigned".to_owned());
                return;
            }
        }
        restarts += 1;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One run of the instance in a cgroup of its own (when the node has cgroups), removed when
/// the run ends; a run the kernel killed for going over its memory limit ended `oom_killed`.
/// An image instance's lease on its layers is kept in `image`.
async fn run_once(
    launch: &Launch,
    client: &reqwest::Client,
    states: &watch::Sender<InstanceState>,
    stop: &mut watch::Receiver<bool>,
    image: &mut Option<Arc<Lease>>,
) -> Ended {
    let begun = Instant::now();
    let cgroup = match cgroup_of(launch).await {
        Ok(cgroup) => cgroup,
        Err(e) => return Ended::Exited(format!("cannot apply its resources: {e}")),
    };
    let run = Run {
        launch,
        client,
        begun,
        freezer: cgroup.as_ref().and_then(Cgroup::freezer),
    };
    let ended = match &launch.spec.runtime.image {
        Some(definition) => run_container(&run, definition, states, stop, image).await,
        None => match spawn_process(launch, cgroup.as_ref()) {
            Ok(child) => supervise_to_end(&run, child, states, stop).await,
            Err(e) => Ended::Exited(format!("cannot start: {e}")),
        },
    };
    // The cgroup is read before a container is deleted (which removes it).
    let oom_killed = match cgroup {
        Some(cgroup) => cgroup.end().await > 0,
        None => false,
    };
    if launch.spec.runtime.image.is_some() {
        remove_container(launch).await;
    }
    match (ended, launch.spec.resources.memory) {
        (Ended::Exited(detail) | Ended::Unhealthy(detail), Some(limit)) if oom_killed => {
            Ended::Exited(format!(
                "oom_killed: used more than its memory limit of {limit} ({detail})"
            ))
        }
        (ended, _) => ended,
    }
}

/// One run of an image instance: pulled if needed (its lease kept in `lease`), run by runc (in
/// the run's cgroup, which [`cgroups_path`] names) until it ends or is stopped. The caller
/// removes the container.
async fn run_container(
    run: &Run<'_>,
    image: &meridian_model::Image,
    states: &watch::Sender<InstanceState>,
    stop: &mut watch::Receiver<bool>,
    lease: &mut Option<Arc<Lease>>,
) -> Ended {
    let started = start_container(run.launch, image, states, stop, lease)
        .await
        .unwrap_or_else(|| Err("stopped before it started".to_owned()));
    match started {
        Ok(child) => supervise_to_end(run, child, states, stop).await,
        Err(_) if *stop.borrow() => Ended::Stopped,
        Err(e) => Ended::Exited(format!("cannot start: {e}")),
    }
}

/// One run of an instance: what it is, the client of its health checks, when it began, and
/// its cgroup's freezer if it has one.
struct Run<'a> {
    launch: &'a Launch,
    client: &'a reqwest::Client,
    begun: Instant,
    freezer: Option<crate::cgroups::Freezer>,
}

impl Run<'_> {
    /// Counts the run's start: it now passes its checks (or runs, without checks).
    fn started(&self) {
        let took = self.begun.elapsed();
        let image = self.launch.spec.runtime.image.is_some();
        self.launch.starts.observe(image, took);
        tracing::info!(instance = %self.launch.instance, image, took_ms = took.as_secs_f64() * 1000.0, "instance started");
    }
}

/// Supervises `child` until it ends or is stopped, then makes sure it is gone.
async fn supervise_to_end(
    run: &Run<'_>,
    mut child: Child,
    states: &watch::Sender<InstanceState>,
    stop: &mut watch::Receiver<bool>,
) -> Ended {
    let ended = supervise(run, &mut child, states, stop).await;
    terminate(&mut child, run.launch.spec.deploy.stop_timeout.0).await;
    ended
}

/// The cgroup of the instance's next run, with its spec's limits (made off the async
/// threads); none when the node has no cgroups, or they fail and the spec asks for no
/// resources (then it runs as before).
async fn cgroup_of(launch: &Launch) -> std::io::Result<Option<Cgroup>> {
    let Some(cgroups) = launch.cgroups.clone() else {
        return Ok(None);
    };
    let (key, limits) = (launch.key(), Limits::of(&launch.spec.resources));
    let made = tokio::task::spawn_blocking(move || cgroups.create(&key, &limits))
        .await
        .map_err(std::io::Error::other)?;
    match made {
        Ok(cgroup) => Ok(Some(cgroup)),
        Err(e) if launch.spec.resources.is_empty() => {
            tracing::warn!(instance = %launch.instance, error = %e, "cannot make the instance's cgroup; it runs without");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// The `PATH` of every instance: the usual system directories, never the agent's own `PATH`.
const INSTANCE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where `command` is: as written if it names a path, else the first executable of that name in
/// the agent's `PATH` (the node's programs; the instance's own `PATH` is [`INSTANCE_PATH`]) made
/// absolute (the instance starts in another directory), else as written (starting it then fails
/// with "not found").
fn program(command: &str) -> PathBuf {
    if command.contains('/') {
        return PathBuf::from(command);
    }
    let executable = |path: &PathBuf| {
        std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(command))
                .find(executable)
        })
        .map_or_else(
            || PathBuf::from(command),
            |found| std::path::absolute(&found).unwrap_or(found),
        )
}

/// The variables the platform gives every instance: `MERIDIAN_*`, the proxy variables, `PORT`
/// and `MERIDIAN_PORT_<NAME>`; in host mode `MERIDIAN_TCP_*` (see [`crate::host_relays`]).
fn platform_env(launch: &Launch) -> Vec<(String, String)> {
    let (org, app, service) = &launch.service;
    // Calls by name go through the node proxy's outbound listener on the instance's address.
    let proxy = format!(
        "http://{}:{}",
        launch.address,
        crate::node_proxy::OUTBOUND_PORT
    );
    let no_proxy = "localhost,127.0.0.1,::1";
    let mut env: Vec<(String, String)> = [
        ("MERIDIAN_INSTANCE", launch.instance.as_str()),
        ("MERIDIAN_ORG", org),
        ("MERIDIAN_APP", app),
        ("MERIDIAN_SERVICE", service),
        ("MERIDIAN_REGION", &launch.region),
        ("MERIDIAN_NODE", &launch.node),
        ("MERIDIAN_ADDRESS", &launch.listen.to_string()),
        ("HTTP_PROXY", &proxy),
        ("http_proxy", &proxy),
        ("NO_PROXY", no_proxy),
        ("no_proxy", no_proxy),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    if let Some(first) = launch.spec.ports.first() {
        env.push(("PORT".to_owned(), first.port.to_string()));
    }
    for port in &launch.spec.ports {
        let name = port.name.to_ascii_uppercase().replace('-', "_");
        env.push((format!("MERIDIAN_PORT_{name}"), port.port.to_string()));
    }
    env.extend(crate::host_relays::env(launch.address, &launch.relays));
    env
}

/// The instance's own directory (its `HOME` for a process), made if missing.
fn home(launch: &Launch) -> std::io::Result<PathBuf> {
    let home = launch.state_dir.join("instances").join(launch.key());
    std::fs::create_dir_all(&home)?;
    Ok(home)
}

/// Starts the process: its own process group, output to logs, and a clean environment (nothing
/// of the agent's): `PATH`, `HOME` and [`platform_env`], then the definition's `env` (with its
/// secrets' values); in `cgroup` from before it executes its program.
fn spawn_process(launch: &Launch, cgroup: Option<&Cgroup>) -> std::io::Result<Child> {
    let Some(process) = &launch.spec.runtime.process else {
        return Err(std::io::Error::other("the spec runs no process"));
    };
    let env = launch
        .secrets
        .resolve(&process.env)
        .map_err(std::io::Error::other)?;
    let home = home(launch)?;
    let program = program(&process.command);
    let mut command = match &launch.netns {
        Some(netns) => netns.command(program.as_os_str()),
        None => Command::new(&program),
    };
    command
        .args(&process.args)
        .current_dir(
            process
                .working_dir
                .as_ref()
                .map_or(home.clone(), PathBuf::from),
        )
        .env_clear()
        .env("PATH", INSTANCE_PATH)
        .env("HOME", &home)
        .envs(platform_env(launch))
        .envs(env);
    if let Some(cgroup) = cgroup {
        crate::cgroups::join_before_exec(&mut command, cgroup);
    }
    spawn_supervised(launch, command, &home)
        .map_err(|e| std::io::Error::new(e.kind(), format!("`{}`: {e}", process.command)))
}

/// Spawns `command` in a process group of its own with its output kept in the instance's
/// logs, and records its pid in `home` (see [`stop_leftovers`]).
fn spawn_supervised(
    launch: &Launch,
    mut command: Command,
    home: &std::path::Path,
) -> std::io::Result<Child> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = command.spawn()?;
    if let Some(pid) = child.id() {
        std::fs::write(home.join(PID_FILE), pid.to_string())?;
    }
    let logs = log_dir(&launch.state_dir, &launch.key());
    if let Some(stdout) = child.stdout.take() {
        let path = logs.join(Stream::Stdout.file_name());
        tokio::spawn(keep(stdout, path, Stream::Stdout, MAX_LOG_BYTES));
    }
    if let Some(stderr) = child.stderr.take() {
        let path = logs.join(Stream::Stderr.file_name());
        tokio::spawn(keep(stderr, path, Stream::Stderr, MAX_LOG_BYTES));
    }
    Ok(child)
}

/// Where runc keeps the state of this agent's containers.
pub fn runc_root(state_dir: &std::path::Path) -> PathBuf {
    state_dir.join("runc")
}

/// The cgroup path of the instance's container, for runc: its run's cgroup where the node has
/// cgroups ([`crate::cgroups::Cgroups::runtime_path`], made with the spec's limits before runc
/// starts), else `meridian/<tag>.<key>` (the tag tells this node's agent apart from others on
/// the same host, see [`crate::netns::tag`]).
fn cgroups_path(launch: &Launch) -> String {
    match &launch.cgroups {
        Some(cgroups) => cgroups.runtime_path(&launch.key()),
        None => format!(
            "meridian/{}.{}",
            crate::netns::tag(&launch.state_dir),
            launch.key()
        ),
    }
}

/// Pulls the image (retrying with backoff while the pull fails, each failure's reason in the
/// instance's detail), prepares the bundle and starts `runc run` in the foreground. `None` when
/// the instance is stopped first. The image's lease replaces `lease`'s.
async fn start_container(
    launch: &Launch,
    image: &meridian_model::Image,
    states: &watch::Sender<InstanceState>,
    stop: &mut watch::Receiver<bool>,
    lease: &mut Option<Arc<Lease>>,
) -> Option<Result<Child, String>> {
    let credential = match image
        .credentials
        .as_ref()
        .map(|c| launch.secrets.credential(c))
    {
        Some(Ok(credential)) => Some(credential),
        Some(Err(e)) => return Some(Err(e)),
        None => None,
    };
    let pulled = pull(launch, &image.reference, credential.as_ref(), states, stop).await?;
    *lease = Some(pulled.lease.clone());
    let home = match home(launch) {
        Ok(home) => home,
        Err(e) => return Some(Err(e.to_string())),
    };
    let env = match launch.secrets.resolve(&image.env) {
        Ok(env) => env
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        Err(e) => return Some(Err(e)),
    };
    let bundle = Bundle::at(&launch.state_dir, &launch.key());
    let input = BundleInput {
        image: image.clone(),
        platform: platform_env(launch),
        env,
        hostname: launch.instance.clone(),
        address: launch.listen,
        netns: launch.netns.as_ref().map(crate::netns::Netns::path),
        resolv_conf: launch.netns.as_ref().map_or_else(
            || PathBuf::from("/etc/resolv.conf"),
            crate::netns::Netns::resolv_conf,
        ),
        cgroups_path: cgroups_path(launch),
        limits: Limits::of(&launch.spec.resources),
    };
    let prepared = {
        let bundle = bundle.clone();
        tokio::task::spawn_blocking(move || bundle.prepare(&pulled, &input)).await
    };
    match prepared {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Some(Err(e)),
        Err(e) => return Some(Err(e.to_string())),
    }
    let mut command = runc::run(&runc_root(&launch.state_dir), &bundle.dir, &launch.key());
    // runc's own environment names the instance, as a process's does (see stop_leftovers);
    // the container's comes from config.json.
    command
        .env_clear()
        .env("PATH", INSTANCE_PATH)
        .env("HOME", &home)
        .envs(platform_env(launch));
    Some(spawn_supervised(launch, command, &home).map_err(|e| format!("runc: {e}")))
}

/// The image in the node's store, pulled (with `credential`, when given) if needed; retried
/// with backoff while it fails, each failure in the instance's detail as a problem
/// ([`ServiceHealth::PULL_FAILED`]). `None` when the instance is stopped first.
async fn pull(
    launch: &Launch,
    reference: &str,
    credential: Option<&meridian_model::Credential>,
    states: &watch::Sender<InstanceState>,
    stop: &mut watch::Receiver<bool>,
) -> Option<crate::image::Pulled> {
    let detail = |detail: String| states.send_modify(|s| s.detail = detail);
    let mut backoff = Duration::from_secs(1);
    // The last failure stays in the detail while the next attempt is made.
    detail(format!("pulling {reference}"));
    loop {
        let begun = Instant::now();
        let failed = tokio::select! {
            pulled = launch.images.pull(reference, credential) => match pulled {
                Ok(pulled) => {
                    let took_ms = begun.elapsed().as_secs_f64() * 1000.0;
                    tracing::info!(instance = %launch.instance, %reference, digest = %pulled.digest, took_ms, "image ready");
                    return Some(pulled);
                }
                Err(e) => e,
            },
            _ = stop.wait_for(|stop| *stop) => return None,
        };
        tracing::warn!(instance = %launch.instance, %reference, error = %failed, retry_in = ?backoff, "pulling the image failed");
        detail(format!(
            "{}{failed}; retrying in {}s",
            ServiceHealth::PULL_FAILED,
            backoff.as_secs()
        ));
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = stop.wait_for(|stop| *stop) => return None,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Deletes the instance's container (killing what is left of it) and its bundle.
async fn remove_container(launch: &Launch) {
    runc::remove(&runc_root(&launch.state_dir), &launch.key()).await;
    let bundle = Bundle::at(&launch.state_dir, &launch.key());
    let _ = tokio::task::spawn_blocking(move || bundle.remove()).await;
}

/// Watches the running process until it exits, fails its checks, or is stopped; counts its
/// start when it first passes its checks.
async fn supervise(
    run: &Run<'_>,
    child: &mut Child,
    states: &watch::Sender<InstanceState>,
    stop: &mut watch::Receiver<bool>,
) -> Ended {
    let (launch, client) = (run.launch, run.client);
    let checks = &launch.spec.health_checks;
    let set = |state: State, detail: &str| {
        states.send_modify(|s| {
            s.state = state;
            s.detail = detail.to_owned();
        });
    };
    if checks.is_empty() {
        set(State::Healthy, "running (no health checks declared)");
        run.started();
    }
    // The checks run together: the shortest interval, the longest grace period, the first
    // check's thresholds.
    let interval = checks
        .iter()
        .map(|c| c.interval.0)
        .min()
        .unwrap_or(Duration::from_secs(3600));
    let grace = checks
        .iter()
        .map(|c| c.grace_period.0)
        .max()
        .unwrap_or_default();
    let (healthy_after, unhealthy_after) = checks
        .first()
        .map_or((1, 1), |c| (c.healthy_threshold, c.unhealthy_threshold));
    let started = Instant::now();
    let (mut passes, mut failures) = (0u32, 0u32);
    let mut counted = false;
    let address = IpAddr::V4(launch.listen);
    let sleeper = launch.sleeper.as_deref();
    // Woken from a deep sleep: the held requests go as soon as its port accepts (or its
    // checks pass, if sooner).
    let mut waking = sleeper.filter(|s| s.gate.is_closed());
    let mut probing = waking.is_some();
    let port = launch
        .spec
        .ports
        .first()
        .map(|p| u16::try_from(p.port).unwrap_or(0));
    let mut listening = std::pin::pin!(async move {
        if let Some(port) = port {
            crate::sleep::accepts(address, port).await;
        }
    });
    let mut dozing = false;
    loop {
        let may_sleep =
            sleeper.filter(|_| waking.is_none() && states.borrow().state == State::Healthy);
        tokio::select! {
            status = child.wait() => {
                return Ended::Exited(match status {
                    Ok(status) => format!("exited ({status})"),
                    Err(e) => format!("lost track of the process: {e}"),
                });
            }
            _ = stop.wait_for(|stop| *stop) => return Ended::Stopped,
            () = tokio::time::sleep(interval) => {}
            () = &mut listening, if probing => {
                probing = false;
                if let Some(sleeper) = waking.take() {
                    set(State::Healthy, "awake: its port accepts");
                    sleeper.awake(&launch.instance);
                }
                continue;
            }
            () = async { if let Some(s) = may_sleep { s.due().await } }, if may_sleep.is_some() => {
                dozing = true;
            }
        }
        if std::mem::take(&mut dozing) {
            if let Some(ended) = doze(run, child, states, stop).await {
                return ended;
            }
            continue;
        }
        let mut all_pass = true;
        for check in checks {
            all_pass &= health::check(client, &launch.spec, check, address).await;
        }
        if all_pass {
            passes += 1;
            failures = 0;
            if !counted {
                counted = true;
                run.started();
            }
            if passes >= healthy_after {
                set(State::Healthy, "passing its health checks");
                if let Some(sleeper) = waking.take() {
                    sleeper.awake(&launch.instance);
                }
            }
        } else {
            failures += 1;
            passes = 0;
            let in_grace = started.elapsed() < grace;
            if !in_grace && failures >= unhealthy_after {
                return Ended::Unhealthy(format!("failed {failures} health checks in a row"));
            }
        }
    }
}

/// Puts the idle instance of `run` to sleep as its service says (its gate closes first;
/// something using it meanwhile keeps it awake): deep ends the run ([`Ended::Slept`]); light
/// freezes it until a request is held for it (then thaws it and opens the gate: `None`, the
/// run goes on), until `deep_after` (thawed, it ends to sleep deep), or until it is stopped or
/// exits.
async fn doze(
    run: &Run<'_>,
    child: &mut Child,
    states: &watch::Sender<InstanceState>,
    stop: &mut watch::Receiver<bool>,
) -> Option<Ended> {
    let launch = run.launch;
    let sleeper = launch.sleeper.as_deref()?;
    if !sleeper.gate.close_if_idle() {
        return None;
    }
    let instance = launch.instance.as_str();
    if sleeper.policy.mode == SleepMode::Deep {
        sleeper.fell_asleep(instance, SleepMode::Deep);
        return Some(Ended::Slept);
    }
    let frozen = match Pause::of(run.freezer.clone(), child.id()) {
        Some(pause) => pause.set(true).await.map(|()| pause),
        None => Err(std::io::Error::other("no process to stop")),
    };
    let pause = match frozen {
        Ok(pause) => pause,
        Err(e) => {
            tracing::warn!(%instance, error = %e, "cannot freeze the idle instance; it stays awake");
            sleeper.gate.open_now();
            return None;
        }
    };
    sleeper.fell_asleep(instance, SleepMode::Light);
    states.send_modify(|s| {
        s.state = State::Sleeping(SleepMode::Light);
        s.detail = "frozen while idle; the first request thaws it".to_owned();
    });
    let deep_after = sleeper.policy.deep_after.map(|d| d.0);
    let ended = tokio::select! {
        () = sleeper.woken(SleepMode::Light) => None,
        () = async { match deep_after {
            Some(after) => tokio::time::sleep(after).await,
            None => std::future::pending().await,
        } } => Some(Ended::Slept),
        _ = stop.wait_for(|stop| *stop) => Some(Ended::Stopped),
        status = child.wait() => Some(Ended::Exited(match status {
            Ok(status) => format!("exited while asleep ({status})"),
            Err(e) => format!("lost track of the process: {e}"),
        })),
    };
    // Thawed whatever comes next: a frozen process would not act on the SIGTERM that stops it.
    if let Err(e) = pause.set(false).await {
        tracing::warn!(%instance, error = %e, "cannot thaw the instance");
    }
    match ended {
        None => {
            states.send_modify(|s| {
                s.state = State::Healthy;
                s.detail = "awake: thawed".to_owned();
            });
            sleeper.awake(instance);
        }
        Some(Ended::Slept) => sleeper.fell_asleep(instance, SleepMode::Deep),
        Some(_) => {}
    }
    ended
}

/// Stops the process group: SIGTERM, then SIGKILL after `grace` (the definition's
/// `deploy.stop_timeout`).
async fn terminate(child: &mut Child, grace: Duration) {
    let Some(pid) = child
        .id()
        .and_then(|id| rustix::process::Pid::from_raw(id as i32))
    else {
        return; // Already reaped.
    };
    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::TERM);
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        let _ = child.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// A process in a group of its own, with the environment an agent gives instance
    /// `org`/`app`/`id` under `state_dir`, recorded as the instance of `recorded` in
    /// `recorder`'s state directory.
    fn leftover(
        state_dir: &Path,
        (org, app, id): (&str, &str, &str),
        recorder: &Path,
        recorded: &str,
    ) -> std::process::Child {
        use std::os::unix::process::CommandExt;
        let key = format!("{org}.{app}.{id}");
        let child = std::process::Command::new("sleep")
            .arg("600")
            .env_clear()
            .env("MERIDIAN_ORG", org)
            .env("MERIDIAN_APP", app)
            .env("MERIDIAN_INSTANCE", id)
            .env("HOME", state_dir.join("instances").join(key))
            .process_group(0)
            .spawn()
            .unwrap();
        let dir = recorder.join("instances").join(recorded);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(PID_FILE), child.id().to_string()).unwrap();
        child
    }

    #[test]
    fn only_this_installations_own_leftover_instances_are_stopped() {
        let (state, other) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (state, other) = (state.path(), other.path());
        let mut ours = leftover(state, ("acme", "shop", "web-0"), state, "acme.shop.web-0");
        // Process ids since reused: by another org's web-0, by another installation's
        // instance of the same org, app and id.
        let mut other_org = leftover(
            other,
            ("globex", "shop", "web-0"),
            state,
            "initech.shop.web-0",
        );
        let mut other_installation =
            leftover(other, ("acme", "shop", "web-1"), state, "acme.shop.web-1");
        stop_leftovers(state);
        let end = Instant::now() + Duration::from_secs(20);
        while ours.try_wait().unwrap().is_none() {
            assert!(Instant::now() < end, "our leftover still runs");
            std::thread::sleep(Duration::from_millis(20));
        }
        for theirs in [&mut other_org, &mut other_installation] {
            assert!(
                theirs.try_wait().unwrap().is_none(),
                "another's instance was stopped"
            );
            theirs.kill().unwrap();
            theirs.wait().unwrap();
        }
    }

    #[test]
    fn commands_are_found_in_the_agents_path_and_paths_are_kept() {
        let shell = program("sh");
        assert!(shell.is_absolute() && shell.ends_with("sh"), "{shell:?}");
        assert_eq!(program("./run.sh"), PathBuf::from("./run.sh"));
        assert_eq!(
            program("no-such-program-here"),
            PathBuf::from("no-such-program-here")
        );
    }
}
