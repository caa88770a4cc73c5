//! The region's request figures per service, in windows of [`TRAFFIC_STEP_SECONDS`]: agents
//! report each instance's cumulative figures (counted by the node proxy in front of it) and
//! gateways theirs per cluster; at the end of each window the increase since the window before
//! is added up per service ([`TrafficWindows::close`]) and kept in a bounded ring until the
//! global control plane has it. Who reported is also where to scrape `/metrics`
//! ([`TrafficWindows::targets`]).
//!
//! A counter first seen is counted from zero if it started after this control plane did (a new
//! instance or gateway), and from its first look otherwise (a restarted control plane must not
//! count a proxy's whole past into one window); a counter that went down started over.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use meridian_model::{
    MetricsTarget, RequestFigures, ServiceTraffic, StatusClasses, TrafficWindow,
    MAX_REPORTED_WINDOWS, TRAFFIC_STEP_SECONDS,
};
use meridian_xds::meridian::{GatewayReport, NodeReport, Traffic};

use super::ServiceId;

/// A reporter not heard from for this long is gone (its figures no longer count).
const GONE_AFTER: Duration = Duration::from_secs(10);

/// Most gateways (runs) a region keeps figures of.
const MAX_GATEWAYS: usize = 1_000;

/// Where one cumulative counter comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Source {
    /// An instance, as its node's agent reports it.
    Instance {
        node: String,
        service: ServiceId,
        instance: String,
    },
    /// A cluster, as a gateway run reports it.
    Cluster {
        gateway: (String, String),
        cluster: String,
    },
}

/// An agent's last figures: each instance's service, id and cumulative figures.
type InstanceFigures = Vec<(ServiceId, String, Traffic)>;
/// A gateway's last figures: each cluster's cumulative figures.
type ClusterFigures = Vec<(String, Traffic)>;
/// A gateway run: its node id and run id.
type GatewayRun = (String, String);

/// The last report of a node or gateway.
#[derive(Debug)]
struct Seen<T> {
    at: Instant,
    metrics_address: String,
    figures: T,
}

/// The region's figures: what reporters last said, and the windows made of it.
#[derive(Debug)]
pub struct TrafficWindows {
    /// When this control plane started, in Unix milliseconds.
    started_ms: u64,
    nodes: HashMap<String, Seen<InstanceFigures>>,
    gateways: HashMap<GatewayRun, Seen<ClusterFigures>>,
    /// Each counter's value at the end of the last window.
    previous: HashMap<Source, RequestFigures>,
    /// The windows not yet acknowledged by the global control plane, oldest first.
    windows: VecDeque<TrafficWindow>,
}

impl TrafficWindows {
    /// Figures of a control plane started at `started_ms` (Unix milliseconds).
    pub fn new(started_ms: u64) -> TrafficWindows {
        TrafficWindows {
            started_ms,
            nodes: HashMap::new(),
            gateways: HashMap::new(),
            previous: HashMap::new(),
            windows: VecDeque::new(),
        }
    }

    /// Takes an agent's report (checked by the caller) at `now`.
    pub fn node_report(&mut self, report: &NodeReport, now: Instant) {
        let figures = report
            .instances
            .iter()
            .filter_map(|i| {
                let service = (i.org.clone(), i.app.clone(), i.service.clone());
                Some((service, i.instance.clone(), i.traffic.clone()?))
            })
            .collect();
        let seen = Seen {
            at: now,
            metrics_address: report.metrics_address.clone(),
            figures,
        };
        self.nodes.insert(report.node.clone(), seen);
    }

    /// Takes a gateway's report (checked by the caller) at `now`; a new gateway beyond
    /// [`MAX_GATEWAYS`] is not counted.
    pub fn gateway_report(&mut self, report: GatewayReport, now: Instant) {
        let key = (report.node, report.run);
        if !self.gateways.contains_key(&key) && self.gateways.len() >= MAX_GATEWAYS {
            tracing::warn!(gateway = %key.0, "too many gateways report; not counting this one");
            return;
        }
        let figures = report
            .clusters
            .into_iter()
            .filter_map(|c| Some((c.cluster, c.traffic?)))
            .collect();
        let seen = Seen {
            at: now,
            metrics_address: report.metrics_address,
            figures,
        };
        self.gateways.insert(key, seen);
    }

    /// Ends the window that ends at `end` (Unix seconds, a multiple of
    /// [`TRAFFIC_STEP_SECONDS`]) at `now`: what each counter grew since the last window, added
    /// up per service. Forgets reporters not heard from for [`GONE_AFTER`].
    pub fn close(&mut self, end: u64, now: Instant) {
        self.nodes
            .retain(|_, seen| now.duration_since(seen.at) <= GONE_AFTER);
        self.gateways
            .retain(|_, seen| now.duration_since(seen.at) <= GONE_AFTER);
        let mut services: BTreeMap<ServiceId, ServiceTraffic> = BTreeMap::new();
        let mut current = HashMap::new();
        for (node, seen) in &self.nodes {
            for (service, instance, traffic) in &seen.figures {
                let source = Source::Instance {
                    node: node.clone(),
                    service: service.clone(),
                    instance: instance.clone(),
                };
                let now_figures = figures_of(traffic);
                let grew = self.increase(&source, &now_figures, traffic.started_ms);
                if let Some(sum) = sum_of(&mut services, service) {
                    sum.served.merge(&grew);
                    sum.open_connections += traffic.open_connections;
                }
                current.insert(source, now_figures);
            }
        }
        for (gateway, seen) in &self.gateways {
            for (cluster, traffic) in &seen.figures {
                let Some(service) = service_of_cluster(cluster) else {
                    continue;
                };
                let source = Source::Cluster {
                    gateway: gateway.clone(),
                    cluster: cluster.clone(),
                };
                let now_figures = figures_of(traffic);
                let grew = self.increase(&source, &now_figures, traffic.started_ms);
                if let Some(sum) = sum_of(&mut services, &service) {
                    sum.ingress.merge(&grew);
                }
                current.insert(source, now_figures);
            }
        }
        self.previous = current;
        let services: Vec<ServiceTraffic> = services
            .into_values()
            .filter(|s| !s.served.is_empty() || !s.ingress.is_empty() || s.open_connections > 0)
            .collect();
        self.windows.push_back(TrafficWindow {
            start: end.saturating_sub(TRAFFIC_STEP_SECONDS),
            services,
        });
        while self.windows.len() > MAX_REPORTED_WINDOWS {
            self.windows.pop_front();
        }
    }

    /// How much `source` grew to `now` since the last window.
    fn increase(&self, source: &Source, now: &RequestFigures, started_ms: u64) -> RequestFigures {
        let zero = RequestFigures::default();
        let before = match self.previous.get(source) {
            Some(before) => before,
            // Born after this control plane started: everything is new.
            None if started_ms >= self.started_ms => &zero,
            None => now,
        };
        let went_down = before
            .status
            .counts()
            .iter()
            .zip(now.status.counts())
            .any(|(b, n)| n < *b)
            || before
                .latency_buckets
                .iter()
                .zip(&now.latency_buckets)
                .any(|(b, n)| n < b);
        if went_down {
            return now.clone();
        }
        let counts = now.status.counts();
        let mut grew = counts;
        for (g, b) in grew.iter_mut().zip(before.status.counts()) {
            *g -= b;
        }
        RequestFigures {
            status: StatusClasses::from_counts(grew),
            latency_buckets: now
                .latency_buckets
                .iter()
                .enumerate()
                .map(|(i, n)| n - before.latency_buckets.get(i).copied().unwrap_or(0))
                .collect(),
        }
    }

    /// The windows the global control plane has not acknowledged, oldest first.
    pub fn pending(&self) -> Vec<TrafficWindow> {
        self.windows.iter().cloned().collect()
    }

    /// The global control plane has the windows up to the one starting at `through`.
    pub fn acknowledged(&mut self, through: u64) {
        while self.windows.front().is_some_and(|w| w.start <= through) {
            self.windows.pop_front();
        }
    }

    /// Where the agents and gateways that report serve `/metrics`.
    pub fn targets(&self) -> Vec<MetricsTarget> {
        let nodes = self.nodes.iter().map(|(node, seen)| (node, "agent", seen));
        let mut targets: Vec<MetricsTarget> = nodes
            .filter(|(_, _, seen)| !seen.metrics_address.is_empty())
            .map(|(node, role, seen)| MetricsTarget {
                address: seen.metrics_address.clone(),
                role: role.to_owned(),
                node: node.clone(),
            })
            .chain(
                self.gateways
                    .iter()
                    .filter(|(_, seen)| !seen.metrics_address.is_empty())
                    .map(|((node, _), seen)| MetricsTarget {
                        address: seen.metrics_address.clone(),
                        role: "gateway".to_owned(),
                        node: node.clone(),
                    }),
            )
            .collect();
        targets.sort();
        targets.dedup();
        targets
    }
}

/// The sum of service `id` in `services`, made empty on first use; none if its names are not
/// DNS labels (nothing a region reports may be refused for them).
fn sum_of<'a>(
    services: &'a mut BTreeMap<ServiceId, ServiceTraffic>,
    id: &ServiceId,
) -> Option<&'a mut ServiceTraffic> {
    let valid = [&id.0, &id.1, &id.2]
        .iter()
        .all(|name| meridian_model::check_dns_label(name).is_ok());
    valid.then(|| {
        services
            .entry(id.clone())
            .or_insert_with(|| ServiceTraffic {
                org: id.0.clone(),
                app: id.1.clone(),
                service: id.2.clone(),
                served: RequestFigures::default(),
                ingress: RequestFigures::default(),
                open_connections: 0,
            })
    })
}

/// The cumulative figures of `traffic` (one from an older proxy, without classes, counts its
/// failures as 5xx and the rest as 2xx).
fn figures_of(traffic: &Traffic) -> RequestFigures {
    let status = match <[u64; 5]>::try_from(traffic.by_class.as_slice()) {
        Ok(counts) => StatusClasses::from_counts(counts),
        Err(_) => StatusClasses {
            success: traffic.requests.saturating_sub(traffic.failures),
            server_error: traffic.failures,
            ..StatusClasses::default()
        },
    };
    RequestFigures {
        status,
        latency_buckets: traffic.latency_buckets.clone(),
    }
}

/// The service of a gateway's cluster: `<org>/<app>/<service>:<port>`, with `/canary` after
/// it for a canary's new set.
fn service_of_cluster(cluster: &str) -> Option<ServiceId> {
    let (service, _port) = cluster.split_once(':')?;
    let mut parts = service.split('/');
    let (org, app, name) = (parts.next()?, parts.next()?, parts.next()?);
    Some((org.to_owned(), app.to_owned(), name.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_xds::meridian::{ClusterTraffic, InstanceReport};

    /// Cumulative figures: `ok` 2xx and `failed` 5xx, all in the first bucket.
    fn traffic(ok: u64, failed: u64, started_ms: u64) -> Traffic {
        let mut latency_buckets = vec![0; meridian_model::LATENCY_BUCKETS];
        latency_buckets[0] = ok + failed;
        Traffic {
            requests: ok + failed,
            failures: failed,
            latency_buckets,
            by_class: vec![0, ok, 0, 0, failed],
            open_connections: 1,
            started_ms,
            in_flight: 0,
            busy_micros: 0,
        }
    }

    fn node(name: &str, instance: &str, traffic: Traffic) -> NodeReport {
        NodeReport {
            node: name.to_owned(),
            metrics_address: "127.0.70.1:9000".to_owned(),
            instances: vec![InstanceReport {
                instance: instance.to_owned(),
                org: "acme".to_owned(),
                app: "shop".to_owned(),
                service: "web".to_owned(),
                state: "healthy".to_owned(),
                traffic: Some(traffic),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn gateway(ok: u64, started_ms: u64) -> GatewayReport {
        GatewayReport {
            node: "gateway-fra".to_owned(),
            run: "1".to_owned(),
            metrics_address: "127.0.70.2:9000".to_owned(),
            clusters: vec![ClusterTraffic {
                cluster: "acme/shop/web:http/canary".to_owned(),
                traffic: Some(traffic(ok, 0, started_ms)),
            }],
        }
    }

    #[test]
    fn each_window_counts_what_grew_added_up_over_instances_and_gateways() {
        let at = Instant::now();
        let mut windows = TrafficWindows::new(1_000);
        windows.node_report(&node("n1", "web-0", traffic(5, 1, 2_000)), at);
        windows.node_report(&node("n2", "web-1", traffic(3, 0, 2_000)), at);
        windows.gateway_report(gateway(7, 2_000), at);
        windows.close(100, at);
        windows.node_report(&node("n1", "web-0", traffic(9, 1, 2_000)), at);
        windows.close(110, at);
        let pending = windows.pending();
        assert_eq!(pending.len(), 2);
        let first = &pending[0].services[0];
        assert_eq!(pending[0].start, 90);
        assert_eq!(first.served.status.counts(), [0, 8, 0, 0, 1]);
        assert_eq!(first.served.latency_buckets[0], 9);
        assert_eq!(
            first.ingress.status.success, 7,
            "the canary's cluster counts too"
        );
        assert_eq!(first.open_connections, 2);
        let second = &pending[1].services[0];
        assert_eq!(second.served.status.counts(), [0, 4, 0, 0, 0]);
        assert!(second.ingress.is_empty());
        windows.acknowledged(90);
        assert_eq!(windows.pending().len(), 1);
        let targets = windows.targets();
        let roles: Vec<&str> = targets.iter().map(|t| t.role.as_str()).collect();
        assert_eq!(roles, ["agent", "agent", "gateway"]);
    }

    #[test]
    fn counters_older_than_the_control_plane_count_from_the_first_look_and_resets_from_zero() {
        let at = Instant::now();
        let mut windows = TrafficWindows::new(10_000);
        // Counting since before this control plane started: the past is not this window's.
        windows.node_report(&node("n1", "web-0", traffic(500, 0, 1_000)), at);
        windows.close(100, at);
        assert_eq!(windows.pending()[0].services[0].served.status.total(), 0);
        // The node proxy restarted: its counters went down, all of them are new.
        windows.node_report(&node("n1", "web-0", traffic(4, 0, 20_000)), at);
        windows.close(110, at);
        assert_eq!(windows.pending()[1].services[0].served.status.total(), 4);
        // A node not heard from for long is gone.
        windows.close(120, at + GONE_AFTER + Duration::from_secs(1));
        assert!(windows.pending()[2].services.is_empty());
        assert!(windows.targets().is_empty());
    }

    #[test]
    fn the_ring_keeps_the_last_windows_only() {
        let mut windows = TrafficWindows::new(0);
        let at = Instant::now();
        for i in 0..(MAX_REPORTED_WINDOWS as u64 + 5) {
            windows.close(10 * (i + 1), at);
        }
        let pending = windows.pending();
        assert_eq!(pending.len(), MAX_REPORTED_WINDOWS);
        assert_eq!(pending[0].start, 50);
    }
}
