//! The agent's main loop: follows the node's assignments, starts what is new, stops what is no
//! longer assigned (and restarts what changed in a way the instance sees), and reports every
//! instance's state.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use meridian_model::ServiceSpec;
use meridian_xds::meridian::{InstanceReport, NodeReport, ReportAck, Traffic, Usage, REPORT_PATH};
use meridian_xds::{run_delta_client, ClientOptions, UnaryClient};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

use crate::addresses::AddressPool;
use crate::assignments::{AssignmentHandler, Desired, Services, Wanted};
use crate::certs::WorkloadCerts;
use crate::cgroups::Cgroups;
use crate::drain::Leaving;
use crate::host_relays::{self, HostRelay};
use crate::image::{ImageStore, StoreMetrics};
use crate::instance::{run_instance, InstanceState, Launch, State};
use crate::netns::{self, Netns};
use crate::netns_relays::{NamespaceRelays, TcpRelay};
use crate::node_proxy::{self, LocalInstance, ServiceKey};
use crate::sleep::{SleepMetrics, Sleeper};
use crate::start_metrics::StartMetrics;

/// Longest time between two reports to the control plane (a node that stops reporting is
/// presumed gone); a state change is reported at once.
const HEARTBEAT: Duration = Duration::from_secs(2);

/// How often the agent looks whether requests were answered for its instances since its last
/// report, and reports if so.
const TRAFFIC_EVERY: Duration = Duration::from_secs(1);

/// Most queries of its instances' output the agent answers at once (followers included); a
/// query beyond finds the node busy.
const LOG_QUERIES: usize = 8;

/// How the agent runs.
pub struct AgentOptions {
    /// The region's control plane, `https://host:port`.
    pub control: String,
    /// Mutual TLS with the agent's certificate.
    pub tls: Arc<rustls::ClientConfig>,
    /// The region.
    pub region: String,
    /// This node's name (as in the agent's certificate).
    pub node: String,
    /// How many instances the node may run.
    pub capacity: u32,
    /// The CPU and memory the node offers its instances (placement counts their `resources`
    /// against them); a field not set is not counted.
    pub offers: meridian_model::Resources,
    /// Addresses for instances (node sides, with network namespaces).
    pub addresses: AddressPool,
    /// How instances are kept apart.
    pub isolation: Isolation,
    /// Where logs, workload certificates and instances' working directories go.
    pub state_dir: PathBuf,
    /// Where the agent's own identity is kept (it asks for workload certificates with it).
    pub identity_dir: PathBuf,
    /// The installation's trust domain.
    pub trust_domain: String,
    /// Where the node proxy's admin port listens (/metrics, /config, /listeners, /healthz).
    pub admin: Option<std::net::SocketAddr>,
    /// How image instances' registries are reached.
    pub registries: meridian_model::RegistryOptions,
    /// The bound, in bytes, of the node's image store: layers no instance uses are evicted,
    /// least recently used first, while the store holds more.
    pub image_store_max: u64,
    /// Where the node proxy logs every request, if anywhere.
    pub access_log: Option<(
        meridian_proxy::AccessLogTarget,
        meridian_proxy::AccessLogSource,
    )>,
    /// Where the node proxy's spans go, if it traces requests.
    pub trace: Option<meridian_proxy::TraceOptions>,
}

/// The label of the instances gauge.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

/// The labels of an instance's usage figures.
#[derive(Debug, Clone, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct InstanceLabel {
    org: String,
    app: String,
    service: String,
    instance: String,
}

/// Each instance's CPU time and memory, read from its cgroup at each report, shown as
/// metrics and sent in the report (the region autoscales on them).
struct UsageMetrics {
    cpu: Family<InstanceLabel, Gauge<f64, AtomicU64>>,
    memory: Family<InstanceLabel, Gauge>,
    /// The instances last read, with what they used (the others' figures are removed).
    shown: BTreeMap<InstanceLabel, Usage>,
}

impl UsageMetrics {
    fn new(registry: &mut Registry) -> UsageMetrics {
        let usage = UsageMetrics {
            cpu: Family::default(),
            memory: Family::default(),
            shown: BTreeMap::new(),
        };
        registry.register(
            "instance_cpu_usage_seconds",
            "CPU time used by the current run of each instance, from its cgroup",
            usage.cpu.clone(),
        );
        registry.register(
            "instance_memory_usage_bytes",
            "Memory in use by each instance, from its cgroup",
            usage.memory.clone(),
        );
        usage
    }

    /// Reads the usage of `instances` (labels and names on the node) from `cgroups`, off the
    /// async threads, and shows it; forgets the instances gone.
    async fn update(
        mut self,
        cgroups: Cgroups,
        instances: Vec<(InstanceLabel, String)>,
    ) -> UsageMetrics {
        let read = tokio::task::spawn_blocking(move || {
            instances
                .into_iter()
                .filter_map(|(label, key)| Some((label, cgroups.of(&key)?.usage())))
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        let now: BTreeMap<InstanceLabel, crate::cgroups::Usage> = read.into_iter().collect();
        for gone in self.shown.keys().filter(|label| !now.contains_key(*label)) {
            self.cpu.remove(gone);
            self.memory.remove(gone);
        }
        self.shown = now
            .into_iter()
            .map(|(label, usage)| {
                self.cpu.get_or_create(&label).set(usage.cpu_seconds);
                self.memory
                    .get_or_create(&label)
                    .set(i64::try_from(usage.memory_bytes).unwrap_or(i64::MAX));
                let sent = Usage {
                    // Float to integer casts saturate.
                    cpu_micros: (usage.cpu_seconds * 1e6) as u64,
                    memory_bytes: usage.memory_bytes,
                };
                (label, sent)
            })
            .collect();
        self
    }

    /// Puts what each instance of `report` used, as last read, in it.
    fn fill(&self, report: &mut NodeReport) {
        for instance in &mut report.instances {
            let label = InstanceLabel {
                org: std::mem::take(&mut instance.org),
                app: std::mem::take(&mut instance.app),
                service: std::mem::take(&mut instance.service),
                instance: std::mem::take(&mut instance.instance),
            };
            instance.usage = self.shown.get(&label).copied();
            (
                instance.org,
                instance.app,
                instance.service,
                instance.instance,
            ) = (label.org, label.app, label.service, label.instance);
        }
    }
}

/// How instances are kept apart on the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// Each instance on a loopback address of its own, in the host's network.
    Host,
    /// Each instance in a network namespace of its own (needs root).
    Netns,
}

/// A running instance.
struct Running {
    instance: String,
    service: (String, String, String),
    /// The deployment version of `spec`.
    version: u64,
    spec: ServiceSpec,
    /// The secret values it was started with.
    secrets: crate::secrets::SecretValues,
    address: Ipv4Addr,
    listen: Ipv4Addr,
    stop: watch::Sender<bool>,
    state: watch::Receiver<InstanceState>,
    /// Where it is in leaving service.
    leaving: Leaving,
    /// In host mode, the TCP relays its environment names (fixed at its start).
    relays: Arc<[HostRelay]>,
    /// Whether the node proxy listens for it (its inbound listeners are in the configuration
    /// the proxy applied). Until then it is reported `starting` even when its health checks
    /// pass: the region would otherwise send it traffic that the node refuses.
    proxied: bool,
    /// Its sleeping, if its service sleeps (the last wake's duration is reported).
    sleeper: Option<Arc<Sleeper>>,
}

impl Running {
    /// Its state as reported upward: `healthy` only once the node proxy listens for it.
    fn reported_state(&self, state: &InstanceState) -> (&'static str, String) {
        if state.state == State::Healthy && !self.proxied {
            return (
                State::Starting.as_str(),
                format!(
                    "{} (waiting for the node proxy to listen for it)",
                    state.detail
                ),
            );
        }
        (state.state.as_str(), state.detail.clone())
    }
}

/// Makes the process non-dumpable: `/proc/<pid>/environ`, `mem`, … are then readable only with
/// `CAP_SYS_PTRACE`, not by other processes of its user (an instance could otherwise read the
/// token the agent was started with). Children get their own flag back when they exec.
fn hide_from_instances() {
    use rustix::process::{set_dumpable_behavior, DumpableBehavior};
    if let Err(e) = set_dumpable_behavior(DumpableBehavior::NotDumpable) {
        tracing::error!(error = %e, "could not make the agent non-dumpable: instances of its user can read its environment");
    }
}

/// Instances by resource name (running, or stopping until their task ends).
type Instances = Arc<Mutex<BTreeMap<String, Running>>>;

/// Runs the agent until `shutdown` resolves; then stops every instance and returns. The process
/// is first made non-dumpable, so that instances, which run as its user, cannot read its
/// environment or memory through `/proc` (and it leaves no core dump).
pub async fn run_agent(options: AgentOptions, shutdown: impl Future<Output = ()>) {
    hide_from_instances();
    crate::instance::stop_leftovers(&options.state_dir);
    crate::image::runc::remove_leftovers(&crate::instance::runc_root(&options.state_dir)).await;
    let netns_tag = netns::tag(&options.state_dir);
    if options.isolation == Isolation::Netns {
        netns::delete_leftovers(&netns_tag).await;
    }
    let cgroups = Cgroups::detect(&netns_tag);
    match &cgroups {
        Some(cgroups) => {
            tracing::info!(version = cgroups.version(), "instances run in cgroups of their own");
            cgroups.remove_leftovers();
        }
        None => tracing::warn!(
            "no cgroups this agent may use (it needs root and a memory controller): instances' resources are not enforced"
        ),
    }
    let (desired_tx, mut desired) = watch::channel(Desired::new());
    let (services_tx, mut services) = watch::channel(Services::new());
    let client = ClientOptions {
        url: options.control.clone(),
        tls: Some(options.tls.clone()),
        node: Node {
            id: format!("agent/{}", options.node),
            ..Default::default()
        },
        backoff: (Duration::from_millis(100), Duration::from_secs(5)),
    };
    let log_queries = tokio::spawn(meridian_xds::logs::answer_queries(
        meridian_xds::logs::AnswerOptions {
            url: options.control.clone(),
            tls: Some(options.tls.clone()),
            concurrency: LOG_QUERIES,
            who: format!("agent of node {}", options.node),
        },
        crate::logs::AgentLogs::new(&options.state_dir),
    ));
    let follower = tokio::spawn(run_delta_client(
        client,
        AssignmentHandler {
            desired: desired_tx,
            services: services_tx,
        },
    ));
    let instances: Instances = Arc::default();
    let changed = Arc::new(Notify::new());
    let mut registry = Registry::with_prefix("meridian_agent");
    let images = Arc::new(
        ImageStore::open(
            &options.state_dir,
            options.registries.clone(),
            options.image_store_max,
            StoreMetrics::new(&mut registry),
        )
        .await,
    );
    let collector = tokio::spawn(images.clone().collect_garbage());
    let starts = StartMetrics::new(&mut registry);
    let sleeps = SleepMetrics::new(&mut registry);
    let by_state = Family::<StateLabel, Gauge>::default();
    registry.register(
        "instances",
        "Instances on this node, by state",
        by_state.clone(),
    );
    let dns_metrics = Arc::new(meridian_dns::DnsMetrics::new(&mut registry));
    let usage = UsageMetrics::new(&mut registry);
    let proxy = Arc::new(meridian_proxy::Proxy::default());
    if let Some((target, source)) = &options.access_log {
        if let Err(e) = proxy.log_access(target, source.clone()) {
            tracing::error!(%target, error = %e, "the node proxy's access log could not start");
        }
    }
    if let Some(trace) = &options.trace {
        if let Err(e) = proxy.trace_to(trace) {
            tracing::error!(error = %e, "the node proxy's tracing could not start");
        }
    }
    let metrics_address = Arc::new(std::sync::OnceLock::new());
    let reporter = tokio::spawn(report_loop(
        UnaryClient::new(&options.control, options.tls.clone()),
        Reported {
            node: options.node.clone(),
            capacity: options.capacity,
            offers: options.offers,
            instances: instances.clone(),
            proxy: proxy.clone(),
            cgroups: cgroups.clone(),
            metrics_address: metrics_address.clone(),
        },
        changed.clone(),
        by_state,
        usage,
    ));
    let mut addresses = options.addresses.clone();
    let mut tasks: JoinSet<(String, Ipv4Addr)> = JoinSet::new();
    let mut drains: JoinSet<String> = JoinSet::new();
    let mut node_proxy = NodeProxy {
        proxy,
        certs: WorkloadCerts::new(
            &options.control,
            options.identity_dir.clone(),
            options.state_dir.join("certs"),
        ),
        renewed: false,
        applied: String::new(),
        dns: Arc::default(),
        dns_servers: BTreeMap::new(),
        dns_metrics,
        dns_failing: BTreeSet::new(),
        upstream: Arc::new(meridian_dns::Upstream::new(host_resolver())),
        netns_tag: netns_tag.clone(),
        namespaces: BTreeMap::new(),
    };
    let registry = Arc::new(registry);
    node_proxy.proxy.add_metrics(Arc::new(move || {
        let mut text = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &registry) {
            tracing::error!(error = %e, "encoding the agent's metrics");
        }
        text
    }));
    if let Some(admin) = options.admin {
        match meridian_proxy::serve_admin(&node_proxy.proxy, admin).await {
            Ok(bound) => {
                let _ = metrics_address.set(bound);
            }
            Err(e) => tracing::error!(error = %e, "the node proxy's admin port could not start"),
        }
    }
    let node = NodeSetup {
        netns_tag,
        cgroups,
        images,
        starts,
        sleeps,
        gates: node_proxy.proxy.wake_gates(),
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut services_seen = false;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            changed_set = desired.changed() => {
                if changed_set.is_err() {
                    break;
                }
                let wanted = desired.borrow_and_update().clone();
                // Instances start once the region's services are known (a host-mode
                // instance's environment names the TCP services it may reach, fixed at its
                // start); the control plane sends them with the first assignments.
                if services_seen {
                    reconcile(&options, &node, (&wanted, &services.borrow()), &instances, &mut addresses, &mut tasks, &changed);
                }
            }
            changed_set = services.changed() => {
                if changed_set.is_err() {
                    break;
                }
                if !services_seen {
                    services_seen = true;
                    let wanted = desired.borrow().clone();
                    reconcile(&options, &node, (&wanted, &services.borrow()), &instances, &mut addresses, &mut tasks, &changed);
                }
            }
            _ = tick.tick() => {}
            kept = node_proxy.certs.issued() => node_proxy.renewed |= kept,
            Some(Ok(name)) = drains.join_next() => {
                let map = instances.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if let Some(running) = map.get(&name).filter(|r| r.leaving == Leaving::Draining) {
                    tracing::info!(instance = %name, "stopping instance");
                    running.stop.send_replace(true);
                }
            }
            Some(Ok((name, address))) = tasks.join_next() => {
                addresses.give_back(address);
                let mut map = instances.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if map.get(&name).is_some_and(|r| r.address == address && *r.stop.borrow()) {
                    map.remove(&name);
                }
                drop(map);
                changed.notify_one();
                // A replacement may be waiting for this one to stop.
                let wanted = desired.borrow().clone();
                reconcile(&options, &node, (&wanted, &services.borrow()), &instances, &mut addresses, &mut tasks, &changed);
            }
        }
        let current = services.borrow().clone();
        node_proxy
            .refresh(&options, &instances, &current, &changed)
            .await;
        start_drains(&node_proxy.proxy, &instances, &mut drains);
    }
    follower.abort();
    log_queries.abort();
    for running in instances
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .values()
    {
        running.stop.send_replace(true);
    }
    while tasks.join_next().await.is_some() {}
    if let Some(cgroups) = &node.cgroups {
        cgroups.remove();
    }
    // The spans of the node proxy's last requests.
    node_proxy.proxy.flush_traces().await;
    reporter.abort();
    collector.abort();
    tracing::info!("agent stopped; every instance is stopped");
}

/// The node proxy and what its configuration needs, and the node's DNS servers (one per
/// instance in a namespace, on its node side).
struct NodeProxy {
    proxy: Arc<meridian_proxy::Proxy>,
    certs: WorkloadCerts,
    /// Whether a certificate was issued since the configuration was last applied (its files
    /// changed even where the configuration's text did not).
    renewed: bool,
    /// The configuration last applied.
    applied: String,
    dns: Arc<meridian_dns::Tables>,
    dns_servers: BTreeMap<Ipv4Addr, tokio::task::JoinHandle<()>>,
    dns_metrics: Arc<meridian_dns::DnsMetrics>,
    /// Node sides whose DNS socket could not be bound (said once).
    dns_failing: BTreeSet<Ipv4Addr>,
    /// Where names outside the platform's are forwarded: the host's first resolver (shared by
    /// every instance's server, so that one that does not answer fails them all fast).
    upstream: Arc<meridian_dns::Upstream>,
    /// The tag of the agent's namespaces.
    netns_tag: String,
    /// The TCP relays of each instance in a namespace, by its node side: their numbers, kept
    /// across configurations, and what its namespace's map may hold.
    namespaces: BTreeMap<Ipv4Addr, NamespaceRelays>,
}

/// The first `nameserver` of the host's /etc/resolv.conf.
fn host_resolver() -> Option<std::net::SocketAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").ok()?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .find_map(|address| address.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| std::net::SocketAddr::new(ip, 53))
}

impl NodeProxy {
    /// Asks for the certificates the running instances' services lack (without waiting for
    /// them: the loop applies them as they come), and applies the node proxy's configuration
    /// if it (or a certificate) changed; then marks the instances it
    /// listens for as proxied (waking the reporter when one became so).
    async fn refresh(
        &mut self,
        options: &AgentOptions,
        instances: &Instances,
        services: &Services,
        changed: &Notify,
    ) {
        let local: Vec<LocalInstance> = instances
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .filter(|running| !*running.stop.borrow() && running.state.borrow().network_ready)
            .map(|running| LocalInstance {
                instance: running.instance.clone(),
                service: running.service.clone(),
                version: running.version,
                spec: running.spec.clone(),
                address: running.address,
                listen: running.listen,
                serving: running.leaving == Leaving::No,
                relays: running.relays.clone(),
            })
            .collect();
        self.refresh_dns(&local, services).await;
        let needed: BTreeSet<ServiceKey> = local.iter().map(|l| l.service.clone()).collect();
        self.certs.request_due(&needed);
        let renewed = std::mem::take(&mut self.renewed);
        let files = self.certs.files();
        let made = node_proxy::config(
            &local,
            services,
            &files,
            &options.trust_domain,
            &mut self.namespaces,
        );
        if made.json["listeners"].as_array().is_none_or(Vec::is_empty) {
            return; // Nothing to serve yet (a proxy config needs a listener).
        }
        let config = made.json.to_string();
        if config != self.applied || renewed {
            match self.proxy.apply_text(&config).await {
                Ok(()) => self.applied = config,
                Err(e) => {
                    tracing::error!(error = %e, "the node proxy refused its configuration");
                    return;
                }
            }
        }
        // Only now that the proxy listens on the relays may the namespaces' maps point there.
        self.refresh_relays(made.relays).await;
        let listened: Vec<&str> = local
            .iter()
            .filter(|l| l.serving && files.contains_key(&l.service))
            .map(|l| l.instance.as_str())
            .collect();
        mark_proxied(instances, &listened, changed);
    }
}

/// Marks the `listened` instances as proxied; wakes the reporter when one became so.
fn mark_proxied(instances: &Instances, listened: &[&str], changed: &Notify) {
    let mut map = instances
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut became = false;
    for running in map.values_mut() {
        if !running.proxied && listened.contains(&running.instance.as_str()) {
            running.proxied = true;
            became = true;
        }
    }
    drop(map);
    if became {
        changed.notify_one();
    }
}

impl NodeProxy {
    /// Sets, in each namespace whose instance's TCP relays changed, the relays the node proxy
    /// now listens on (`wanted`, by node side). A namespace that refuses is tried again at the
    /// next refresh; until then its map may hold both what it held and `wanted`.
    async fn refresh_relays(&mut self, wanted: BTreeMap<Ipv4Addr, Vec<TcpRelay>>) {
        for (address, relays) in wanted {
            let Some(namespace) = self.namespaces.get_mut(&address) else {
                continue;
            };
            if namespace.maps(&relays) {
                continue;
            }
            let netns = Netns::new(&self.netns_tag, address);
            match netns.set_relays(&relays).await {
                Ok(()) => namespace.mapped(&relays),
                Err(e) => {
                    namespace.may_map(&relays);
                    tracing::warn!(namespace = %netns.name, error = %e,
                        "cannot set the namespace's TCP relays; trying again");
                }
            }
        }
    }

    /// Gives each instance in a namespace its DNS table and a server on its node side's port
    /// 53; stops the servers of instances that are gone.
    async fn refresh_dns(&mut self, local: &[LocalInstance], services: &Services) {
        self.dns.replace(node_proxy::dns_tables(local, services));
        let wanted: BTreeSet<Ipv4Addr> = local
            .iter()
            .filter(|l| l.address != l.listen)
            .map(|l| l.address)
            .collect();
        self.dns_servers.retain(|address, server| {
            let keep = wanted.contains(address);
            if !keep {
                server.abort();
            }
            keep
        });
        for address in wanted {
            if self.dns_servers.contains_key(&address) {
                continue;
            }
            match tokio::net::UdpSocket::bind((address, 53)).await {
                Ok(socket) => {
                    let server = meridian_dns::serve_udp(
                        socket,
                        self.dns.clone(),
                        self.upstream.clone(),
                        self.dns_metrics.clone(),
                    );
                    self.dns_servers.insert(address, tokio::spawn(server));
                    self.dns_failing.remove(&address);
                }
                // Said once per address, then retried quietly every second.
                Err(e) if self.dns_failing.insert(address) => {
                    tracing::warn!(%address, error = %e, "cannot serve DNS for an instance yet; retrying")
                }
                Err(e) => tracing::debug!(%address, error = %e, "still cannot serve DNS"),
            }
        }
    }
}

/// Starts what is wanted and not running, stops what runs and is not wanted (or runs with a spec
/// that differs in what the instance sees, see [`ServiceSpec::runs_like`]); a changed instance
/// starts again once its old process has stopped.
#[allow(clippy::too_many_arguments)]
fn reconcile(
    options: &AgentOptions,
    node: &NodeSetup,
    (wanted, services): (&Desired, &Services),
    instances: &Instances,
    addresses: &mut AddressPool,
    tasks: &mut JoinSet<(String, Ipv4Addr)>,
    changed: &Arc<Notify>,
) {
    let mut map = instances
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for (name, running) in map.iter_mut() {
        match wanted.get(name) {
            Some(want) if want.spec == running.spec && want.secrets == running.secrets => {}
            // Changes the instance never sees: it runs on, with the new spec (a changed
            // `scale.sleep` starts it again: how it sleeps is fixed at its start).
            Some(want)
                if running.spec.runs_like(&want.spec)
                    && want.secrets == running.secrets
                    && want.spec.scale.sleep == running.spec.scale.sleep =>
            {
                running.spec = want.spec.clone();
                running.version = want.version;
            }
            _ if !*running.stop.borrow() && running.leaving == Leaving::No => {
                tracing::info!(instance = %name, "draining instance");
                running.leaving = Leaving::Due;
            }
            _ => {}
        }
    }
    for (name, want) in wanted {
        if map.contains_key(name) {
            continue; // Running, or stopping before it starts again.
        }
        let Some(address) = addresses.take() else {
            tracing::warn!(instance = %want.instance, "no address left for the instance; raise --instance-count");
            continue;
        };
        let running = start(
            options,
            node,
            (want, services),
            address,
            tasks,
            name,
            changed,
        );
        map.insert(name.clone(), running);
    }
}

/// Starts draining the instances whose inbound listeners the node proxy no longer has (the
/// configuration just applied); each is stopped when its drain ends.
fn start_drains(
    proxy: &Arc<meridian_proxy::Proxy>,
    instances: &Instances,
    drains: &mut JoinSet<String>,
) {
    let mut map = instances
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for (name, running) in map.iter_mut() {
        if running.leaving != Leaving::Due {
            continue;
        }
        running.leaving = Leaving::Draining;
        let proxy = proxy.clone();
        let listeners = node_proxy::instance_name(&running.service, &running.instance);
        let timeout = running.spec.deploy.drain_timeout.0;
        let name = name.clone();
        drains.spawn(async move {
            crate::drain::drain(proxy, &listeners, timeout).await;
            name
        });
    }
}

/// What the agent found on its node at start: the tag of its network namespaces, its cgroups
/// if it may use them, and its image store.
struct NodeSetup {
    netns_tag: String,
    cgroups: Option<Cgroups>,
    /// The node's images (pulled once, shared by its container instances).
    images: Arc<ImageStore>,
    /// Instances' start times.
    starts: StartMetrics,
    /// Instances' sleeps and wakes.
    sleeps: SleepMetrics,
    /// The node proxy's wake gates of the instances that sleep.
    gates: meridian_proxy::WakeGates,
}

/// Starts instance `name` on `address` (in its namespace in that mode, in cgroups if the node
/// has them).
fn start(
    options: &AgentOptions,
    node: &NodeSetup,
    (want, services): (&Wanted, &Services),
    address: Ipv4Addr,
    tasks: &mut JoinSet<(String, Ipv4Addr)>,
    name: &str,
    changed: &Arc<Notify>,
) -> Running {
    tracing::info!(instance = %want.instance, %address, version = want.version, "starting instance");
    let (stop, stop_rx) = watch::channel(false);
    let (state_tx, state) = watch::channel(InstanceState {
        state: State::Starting,
        restarts: 0,
        detail: "assigned".to_owned(),
        network_ready: false,
    });
    let (listen, netns, relays): (_, _, Arc<[HostRelay]>) = match options.isolation {
        Isolation::Host => {
            let relays = host_relays::assign(&want.service, &want.spec.ports, services);
            (address, None, Arc::from(relays))
        }
        Isolation::Netns => {
            let netns = Netns::new(&node.netns_tag, address);
            (netns.inner, Some(netns), Arc::default())
        }
    };
    // An instance that sleeps has a gate in the node proxy, made before its listeners are.
    let gate_name = node_proxy::instance_name(&want.service, &want.instance);
    let sleeper = want.spec.scale.sleep.map(|policy| {
        let gate = node.gates.make(&gate_name);
        Arc::new(Sleeper::new(policy, gate, node.sleeps.clone()))
    });
    let launch = Launch {
        instance: want.instance.clone(),
        service: want.service.clone(),
        spec: want.spec.clone(),
        secrets: want.secrets.clone(),
        address,
        listen,
        netns,
        relays: relays.clone(),
        region: options.region.clone(),
        node: options.node.clone(),
        state_dir: options.state_dir.clone(),
        cgroups: node.cgroups.clone(),
        images: node.images.clone(),
        starts: node.starts.clone(),
        sleeper: sleeper.clone(),
    };
    // Each state change wakes the reporter.
    let mut watched = state.clone();
    let notify = changed.clone();
    tokio::spawn(async move {
        while watched.changed().await.is_ok() {
            notify.notify_one();
        }
    });
    let name = name.to_owned();
    let gates = node.gates.clone();
    tasks.spawn(async move {
        let sleeps = launch.sleeper.is_some();
        run_instance(launch, state_tx, stop_rx).await;
        if sleeps {
            gates.remove(&gate_name);
        }
        (name, address)
    });
    Running {
        instance: want.instance.clone(),
        service: want.service.clone(),
        version: want.version,
        spec: want.spec.clone(),
        secrets: want.secrets.clone(),
        address,
        listen,
        stop,
        state,
        leaving: Leaving::No,
        relays,
        proxied: false,
        sleeper,
    }
}

/// What the agent reports: its node, and its instances with the figures of the requests its
/// node proxy answered for them.
struct Reported {
    node: String,
    capacity: u32,
    offers: meridian_model::Resources,
    instances: Instances,
    proxy: Arc<meridian_proxy::Proxy>,
    cgroups: Option<Cgroups>,
    /// Where the admin port serves `/metrics`, once it does.
    metrics_address: Arc<std::sync::OnceLock<std::net::SocketAddr>>,
}

impl Reported {
    fn report(&self) -> NodeReport {
        let instances = lock_instances(&self.instances);
        NodeReport {
            node: self.node.clone(),
            capacity: self.capacity,
            cpu_millis: self.offers.cpu.map_or(0, |cpu| u64::from(cpu.millis())),
            memory_bytes: self.offers.memory.map_or(0, meridian_model::Memory::bytes),
            metrics_address: self
                .metrics_address
                .get()
                .map(ToString::to_string)
                .unwrap_or_default(),
            instances: instances
                .values()
                .map(|running| {
                    let state = running.state.borrow();
                    let (reported, detail) = running.reported_state(&state);
                    InstanceReport {
                        instance: running.instance.clone(),
                        org: running.service.0.clone(),
                        app: running.service.1.clone(),
                        service: running.service.2.clone(),
                        state: reported.to_owned(),
                        address: running.address.to_string(),
                        restarts: state.restarts,
                        detail,
                        version: running.version,
                        traffic: self.traffic(running),
                        usage: None,
                        wake_micros: running.sleeper.as_ref().map_or(0, |s| s.last_wake_micros()),
                    }
                })
                .collect(),
        }
    }

    /// Each running instance's labels and its name on the node (its cgroup's).
    fn keys(&self) -> Vec<(InstanceLabel, String)> {
        lock_instances(&self.instances)
            .values()
            .filter(|running| !*running.stop.borrow())
            .map(|running| {
                let label = InstanceLabel {
                    org: running.service.0.clone(),
                    app: running.service.1.clone(),
                    service: running.service.2.clone(),
                    instance: running.instance.clone(),
                };
                (
                    label,
                    crate::instance::key(&running.service, &running.instance),
                )
            })
            .collect()
    }

    fn traffic(&self, running: &Running) -> Option<Traffic> {
        let name = node_proxy::instance_name(&running.service, &running.instance);
        self.proxy.instance_traffic(&name)
    }

    /// The requests answered for all the instances so far, and those in flight now: a report
    /// is due when either moved.
    fn requests(&self) -> (u64, u64) {
        lock_instances(&self.instances)
            .values()
            .filter_map(|running| self.traffic(running))
            .fold((0, 0), |(answered, in_flight), t| {
                (answered + t.requests, in_flight + t.in_flight)
            })
    }
}

fn lock_instances(instances: &Instances) -> std::sync::MutexGuard<'_, BTreeMap<String, Running>> {
    instances
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Reports the node and its instances on every change, at least every [`HEARTBEAT`], and
/// every [`TRAFFIC_EVERY`] while requests are answered for them or in flight (the region's
/// metric gates judge the figures over windows of seconds, and its autoscaling reacts to
/// them within seconds).
async fn report_loop(
    mut reporter: UnaryClient,
    reported: Reported,
    changed: Arc<Notify>,
    by_state: Family<StateLabel, Gauge>,
    mut usage: UsageMetrics,
) {
    loop {
        if let Some(cgroups) = &reported.cgroups {
            usage = usage.update(cgroups.clone(), reported.keys()).await;
        }
        let mut report = reported.report();
        usage.fill(&mut report);
        let requests = report
            .instances
            .iter()
            .filter_map(|i| i.traffic.as_ref())
            .fold((0, 0), |(answered, in_flight), t| {
                (answered + t.requests, in_flight + t.in_flight)
            });
        for state in [
            "starting",
            "healthy",
            meridian_model::SLEEPING_LIGHT,
            meridian_model::SLEEPING_DEEP,
            "unhealthy",
            "failed",
            "stopped",
        ] {
            let count = report.instances.iter().filter(|i| i.state == state).count();
            by_state
                .get_or_create(&StateLabel { state })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        let sent: Result<ReportAck, String> = reporter.call(REPORT_PATH, report).await;
        if let Err(e) = sent {
            tracing::warn!(error = %e, "reporting to the control plane failed; retrying");
        }
        let heartbeat = tokio::time::sleep(HEARTBEAT);
        tokio::pin!(heartbeat);
        let mut traffic = tokio::time::interval(TRAFFIC_EVERY);
        traffic.tick().await;
        loop {
            tokio::select! {
                () = changed.notified() => break,
                () = &mut heartbeat => break,
                _ = traffic.tick() => if reported.requests() != requests { break },
            }
        }
    }
}
