//! Clusters at run time, one concern per module: endpoints and their live signals
//! ([`endpoint`]), priority levels ([`priority`]), the balancers that pick one endpoint per
//! request ([`balance`], one policy per module), the circuit breaker ([`breaker`]), the retry
//! budget ([`retry_budget`]) and outlier detection ([`outlier`]). [`Cluster`] puts them
//! together: a request is admitted by the breaker, then picks an endpoint (below the
//! endpoints' limits while one is, see [`EndpointLimits`]) and holds it as a [`Lease`] until it
//! reports how the exchange ended.

mod balance;
mod breaker;
mod endpoint;
mod lease;
mod members;
mod outlier;
mod priority;
mod retry_budget;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

pub use breaker::{Admission, Overflow};
pub use endpoint::{Endpoint, Outcome};
pub use lease::Lease;

use crate::config::UpstreamProtocol;
use crate::config::{
    ClusterConfig, EndpointConfig, EndpointLimits, HashOn, LbPolicy, OutlierDetection,
};
use crate::fields::OutgoingFields;
use crate::upstream::HttpClient;
use breaker::Breaker;
use members::{Members, PickRules};
use retry_budget::RetryBudget;

/// A cluster ready to serve: its endpoints, levels and balancer.
#[derive(Debug)]
pub struct Cluster {
    /// The cluster's name.
    pub name: String,
    /// Protocol to the endpoints.
    pub protocol: UpstreamProtocol,
    /// The client that carries requests to the endpoints.
    pub client: HttpClient,
    /// Time to establish a connection to an endpoint.
    pub connect_timeout: Duration,
    /// Mutual TLS to the endpoints (a mesh cluster), for `tcp` listeners' relays; HTTP
    /// requests go through `client`, which has its own.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The endpoints in force; swapped whole by [`Cluster::set_endpoints`].
    members: ArcSwap<Members>,
    lb: LbPolicy,
    hash_on: HashOn,
    epoch: Instant,
    outlier: Option<OutlierDetection>,
    /// Fraction of usable endpoints below which health is ignored.
    panic_below: f64,
    max_requests: u32,
    max_pending: u32,
    /// Each endpoint's limits of requests outstanding from this proxy.
    limits: Option<EndpointLimits>,
    /// Requests in flight and waiting; shared with the cluster's next builds so that a reload
    /// does not reset the circuit breaker.
    breaker: Arc<Breaker>,
    budget: RetryBudget,
}

impl Cluster {
    /// The cluster with mutual TLS to its endpoints by `tls` (for `tcp` listeners' relays).
    pub fn with_tls(mut self, tls: Option<Arc<rustls::ClientConfig>>) -> Cluster {
        self.tls = tls;
        self
    }

    /// Builds a cluster from validated configuration, sending through `client`. Endpoints listed
    /// in `previous` at the same address are the same endpoints (see [`Members::build`]); its circuit
    /// breaker and clock carry on too.
    pub fn build(
        config: &ClusterConfig,
        client: HttpClient,
        previous: Option<&Cluster>,
    ) -> Cluster {
        let hash_on = config.hash_on.clone().unwrap_or_default();
        let old = previous.map(|p| p.members.load_full());
        let members = Members::build(&config.endpoints, (config.lb, &hash_on), old.as_deref());
        Cluster {
            name: config.name.clone(),
            protocol: config.protocol,
            client,
            connect_timeout: config.connect_timeout.0,
            tls: None,
            members: ArcSwap::from_pointee(members),
            lb: config.lb,
            hash_on,
            epoch: previous.map_or_else(Instant::now, |p| p.epoch),
            outlier: config.outlier_detection.clone(),
            panic_below: f64::from(config.panic_threshold) / 100.0,
            max_requests: config.circuit_breakers.max_requests,
            max_pending: config.circuit_breakers.max_pending_requests,
            limits: config.endpoint_limits,
            breaker: previous.map_or_else(Default::default, |p| p.breaker.clone()),
            budget: RetryBudget::new(&config.retry_budget),
        }
    }

    /// Replaces the endpoints with validated `endpoints` (the rest of the cluster unchanged):
    /// O(endpoints), and endpoints that stay keep their state. Requests already under way finish
    /// with the endpoints they picked from; the idle connections to endpoints that leave close.
    pub fn set_endpoints(&self, endpoints: &[EndpointConfig]) {
        let old = self.members.load();
        let members = Members::build(endpoints, (self.lb, &self.hash_on), Some(&old));
        let staying: HashSet<SocketAddr> = members.endpoints.iter().map(|e| e.addr).collect();
        self.members.store(Arc::new(members));
        for gone in old.endpoints.iter().filter(|e| !staying.contains(&e.addr)) {
            self.client.close_idle(gone);
        }
    }

    /// Nanoseconds from the cluster's epoch to `at`: the clock of its endpoints' signals.
    fn nanos_at(&self, at: Instant) -> u64 {
        at.duration_since(self.epoch).as_nanos() as u64
    }

    /// Admits a request under the circuit breaker's `max_requests`. When the cluster is full the
    /// request waits for a slot, as one of at most `max_pending_requests`, until `deadline`.
    pub async fn admit(&self, deadline: tokio::time::Instant) -> Result<Admission<'_>, Overflow> {
        (self.breaker)
            .admit(self.max_requests, self.max_pending, deadline)
            .await
    }

    /// Whether the retry budget allows `admitted` one more retry now (counting it as retrying
    /// from then on).
    pub fn allow_retry(&self, admitted: &mut Admission<'_>) -> bool {
        self.budget.allow(admitted, self.epoch.elapsed().as_secs())
    }

    /// Whether the cluster has any endpoint (healthy or not).
    pub fn has_endpoints(&self) -> bool {
        !self.members.load().endpoints.is_empty()
    }

    /// Every endpoint, in configuration order.
    pub fn endpoints(&self) -> Vec<Arc<Endpoint>> {
        self.members.load().endpoints.clone()
    }

    /// Picks an endpoint for a request with `fields`, avoiding the endpoint at `avoid` (a retry's
    /// previous one) where another is usable; `None` when no endpoint is usable.
    pub fn pick<'f>(
        &self,
        fields: impl Into<OutgoingFields<'f>>,
        avoid: Option<SocketAddr>,
    ) -> Option<Lease<'_>> {
        let fields = fields.into();
        let now_ns = self.nanos_at(Instant::now());
        let members = self.members.load_full();
        let panic = members.levels.availability(&members.endpoints, now_ns) < self.panic_below;
        let avoid = avoid.and_then(|addr| members.endpoints.iter().position(|e| e.addr == addr));
        let mut rules = PickRules {
            now_ns,
            panic,
            avoid,
            below: u32::MAX,
        };
        let index = self
            .pick_below_limits(&members, fields, &mut rules)
            .or_else(|| {
                rules.avoid = None;
                self.pick_below_limits(&members, fields, &mut rules)
            })?;
        Some(Lease::take(self, members, index))
    }

    /// The balancer's pick among the endpoints below the soft limit, else below the hard
    /// limit, else among all (the endpoint's node proxy then queues the request).
    fn pick_below_limits(
        &self,
        members: &Members,
        fields: OutgoingFields<'_>,
        rules: &mut PickRules,
    ) -> Option<usize> {
        let tiers = self.limits.map(|l| [l.soft, l.hard]).unwrap_or_default();
        for below in tiers.into_iter().flatten() {
            rules.below = below;
            if let Some(index) = members.pick_index(fields, rules) {
                return Some(index);
            }
        }
        rules.below = u32::MAX;
        members.pick_index(fields, rules)
    }

    /// Whether an attempt of a request may be turned away by an endpoint at its hard limit
    /// and retried on another: the cluster has a hard limit and more than one endpoint.
    pub fn may_go_elsewhere(&self) -> bool {
        self.limits.is_some_and(|l| l.hard.is_some()) && self.members.load().endpoints.len() > 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse_config, ProxyConfig};
    use http::HeaderMap;

    fn cluster(yaml: &str) -> Cluster {
        let text = format!("listeners: [{{name: l, address: \"127.0.0.1:1\"}}]\nclusters:\n{yaml}");
        let config: ProxyConfig = parse_config(&text).unwrap();
        let client = crate::upstream::test_client();
        Cluster::build(&config.clusters[0], client, None)
    }

    fn picks(c: &Cluster, n: usize, headers: &HeaderMap) -> Vec<u16> {
        (0..n)
            .map(|_| c.pick(headers, None).unwrap().endpoint().addr.port())
            .collect()
    }

    #[test]
    fn round_robin_follows_weights_evenly() {
        let c = cluster(
            "  - {name: c, lb: round_robin, endpoints: [{address: \"127.0.0.1:1\", weight: 2}, {address: \"127.0.0.1:2\"}]}",
        );
        assert_eq!(picks(&c, 6, &HeaderMap::new()), [1, 2, 1, 1, 2, 1]);
    }

    #[test]
    fn endpoints_that_stay_keep_their_identity_and_state() {
        let c = cluster(
            "  - {name: c, lb: round_robin, endpoints: [{address: \"127.0.0.1:1\"}, {address: \"127.0.0.1:2\"}]}",
        );
        let before = c.endpoints();
        before[0].set_healthy(false);
        let endpoint = |address: &str, weight: u32, priority: u32| EndpointConfig {
            address: address.to_owned(),
            weight,
            priority,
        };
        // A new weight and priority for the first, the second gone, a third new.
        c.set_endpoints(&[endpoint("127.0.0.1:1", 7, 1), endpoint("127.0.0.1:3", 1, 0)]);
        let after = c.endpoints();
        assert!(Arc::ptr_eq(&before[0], &after[0]));
        assert!(
            !after[0].is_healthy(),
            "the health of an endpoint that stayed was reset"
        );
        assert_eq!(after[1].addr.port(), 3);
        assert!(after[1].is_healthy(), "a new endpoint starts healthy");
        // 10,000 endpoints re-applied: the same ones, found by hash.
        let many: Vec<EndpointConfig> = (0..10_000)
            .map(|i| endpoint(&format!("10.{}.{}.1:80", i / 256, i % 256), 1, 0))
            .collect();
        c.set_endpoints(&many);
        let first = c.endpoints();
        c.set_endpoints(&many);
        let second = c.endpoints();
        assert!(first.iter().zip(&second).all(|(a, b)| Arc::ptr_eq(a, b)));
    }

    #[test]
    fn traffic_stays_on_the_best_priority_until_it_degrades() {
        let c = cluster(
            "  - name: c\n    panic_threshold: 0\n    endpoints:\n      - {address: \"127.0.0.1:1\"}\n      - {address: \"127.0.0.1:2\"}\n      - {address: \"127.0.0.1:3\"}\n      - {address: \"127.0.0.1:4\"}\n      - {address: \"127.0.0.1:9\", priority: 1}",
        );
        let none = HeaderMap::new();
        assert!(picks(&c, 200, &none).iter().all(|p| *p != 9));
        // One of four down: 75% healthy × 1.4 > 100%, so level 0 keeps everything.
        c.endpoints()[0].set_healthy(false);
        let ports = picks(&c, 200, &none);
        assert!(ports.iter().all(|p| *p != 9 && *p != 1));
        // Two of four down: level 0 takes 70%, level 1 the rest.
        c.endpoints()[1].set_healthy(false);
        let spilled = picks(&c, 2000, &none).iter().filter(|p| **p == 9).count();
        assert!((450..750).contains(&spilled), "{spilled} of 2000 spilled");
        // All of level 0 down: everything goes to level 1; all down: nothing.
        c.endpoints()[2].set_healthy(false);
        c.endpoints()[3].set_healthy(false);
        assert!(picks(&c, 50, &none).iter().all(|p| *p == 9));
        c.endpoints()[4].set_healthy(false);
        assert!(c.pick(&none, None).is_none());
    }

    #[test]
    fn a_retry_avoiding_its_levels_only_endpoint_goes_to_the_next_level() {
        for lb in ["least_request", "round_robin", "p2c_ewma"] {
            let c = cluster(&format!(
                "  - name: c\n    lb: {lb}\n    endpoints:\n      - {{address: \"127.0.0.1:1\"}}\n      - {{address: \"127.0.0.1:9\", priority: 1}}"
            ));
            let none = HeaderMap::new();
            assert!(picks(&c, 50, &none).iter().all(|p| *p == 1), "{lb}");
            let first: SocketAddr = "127.0.0.1:1".parse().unwrap();
            let retry = c.pick(&none, Some(first)).unwrap().endpoint().addr.port();
            assert_eq!(retry, 9, "{lb}");
        }
    }

    #[tokio::test]
    async fn requests_in_flight_count_against_the_rebuilt_cluster() {
        let yaml = "  - {name: c, circuit_breakers: {max_requests: 2, max_pending_requests: 0}, endpoints: [{address: \"127.0.0.1:1\"}]}";
        let now = tokio::time::Instant::now;
        let old = cluster(yaml);
        let held = [old.admit(now()).await, old.admit(now()).await];
        assert!(held.iter().all(Result::is_ok));
        assert!(matches!(old.admit(now()).await, Err(Overflow::Requests)));
        let text = format!("listeners: [{{name: l, address: \"127.0.0.1:1\"}}]\nclusters:\n{yaml}");
        let config = parse_config(&text).unwrap();
        let rebuilt = Cluster::build(&config.clusters[0], old.client.clone(), Some(&old));
        assert!(
            rebuilt.admit(now()).await.is_err(),
            "a reload reset the circuit breaker"
        );
        drop(held);
        assert!(rebuilt.admit(now()).await.is_ok());
    }

    #[test]
    fn picks_fill_endpoints_to_their_soft_limit_then_their_hard_one_then_any() {
        for lb in ["least_request", "round_robin", "p2c_ewma"] {
            // The first endpoint has nearly all the weight: without limits it gets nearly all.
            let c = cluster(&format!(
                "  - {{name: c, lb: {lb}, endpoint_limits: {{soft: 1, hard: 3}}, endpoints: [{{address: \"127.0.0.1:1\", weight: 1000}}, {{address: \"127.0.0.1:2\"}}]}}"
            ));
            assert!(c.may_go_elsewhere());
            let none = HeaderMap::new();
            let mut held: Vec<Lease> = Vec::new();
            let on = |held: &[Lease], port| {
                held.iter()
                    .filter(|l| l.endpoint().addr.port() == port)
                    .count()
            };
            held.extend((0..2).map(|_| c.pick(&none, None).unwrap()));
            assert_eq!((on(&held, 1), on(&held, 2)), (1, 1), "{lb}: soft");
            held.extend((0..4).map(|_| c.pick(&none, None).unwrap()));
            assert_eq!((on(&held, 1), on(&held, 2)), (3, 3), "{lb}: hard");
            held.extend((0..20).map(|_| c.pick(&none, None).unwrap()));
            assert_eq!(held.len(), 26, "{lb}: beyond both, picks go on");
            // A retry avoiding an endpoint at its limits still gets the other.
            drop(held);
            let first: SocketAddr = "127.0.0.1:1".parse().unwrap();
            let retry = c.pick(&none, Some(first)).unwrap();
            assert_eq!(retry.endpoint().addr.port(), 2, "{lb}");
        }
        let single = cluster(
            "  - {name: c, endpoint_limits: {hard: 3}, endpoints: [{address: \"127.0.0.1:1\"}]}",
        );
        assert!(
            !single.may_go_elsewhere(),
            "one endpoint: nowhere else to go"
        );
    }

    #[test]
    fn below_the_panic_threshold_health_is_ignored() {
        let c = cluster(
            "  - {name: c, endpoints: [{address: \"127.0.0.1:1\"}, {address: \"127.0.0.1:2\"}, {address: \"127.0.0.1:3\"}]}",
        );
        let none = HeaderMap::new();
        c.endpoints()[0].set_healthy(false);
        assert!(picks(&c, 100, &none).iter().all(|p| *p != 1));
        // One of three usable: 1/3 × 1.4 < 50%, so all three share the load again.
        c.endpoints()[1].set_healthy(false);
        let ports = picks(&c, 300, &none);
        assert!(ports.contains(&1) && ports.contains(&2) && ports.contains(&3));
    }

    #[test]
    fn ring_hash_keeps_keys_on_their_endpoint_when_endpoints_are_added() {
        let three = "  - name: c\n    lb: ring_hash\n    hash_on: {cookie: session}\n    endpoints: [{address: \"127.0.0.1:1\"}, {address: \"127.0.0.1:2\"}, {address: \"127.0.0.1:3\"}]";
        let before = cluster(three);
        let after = cluster(&three.replace("]", ", {address: \"127.0.0.1:4\"}]"));
        let mut moved = 0;
        for user in 0..500 {
            let mut headers = HeaderMap::new();
            let cookie = format!("theme=dark; session=user-{user}");
            headers.insert(http::header::COOKIE, cookie.parse().unwrap());
            let a = before.pick(&headers, None).unwrap().endpoint().addr.port();
            assert_eq!(
                a,
                before.pick(&headers, None).unwrap().endpoint().addr.port()
            );
            let b = after.pick(&headers, None).unwrap().endpoint().addr.port();
            if a != b {
                assert_eq!(b, 4, "a key moved between old endpoints");
                moved += 1;
            }
        }
        // About a quarter of the keys move to the new endpoint, none elsewhere.
        assert!((60..200).contains(&moved), "{moved} of 500 moved");
    }

    #[test]
    fn p2c_prefers_the_endpoint_with_fewer_outstanding_requests() {
        let c = cluster(
            "  - {name: c, lb: least_request, endpoints: [{address: \"127.0.0.1:1\"}, {address: \"127.0.0.1:2\"}]}",
        );
        let none = HeaderMap::new();
        let held: Vec<Lease> = (0..50)
            .filter_map(|_| c.pick(&none, None))
            .filter(|l| l.endpoint().addr.port() == 1)
            .collect();
        assert!(!held.is_empty());
        let ports = picks(&c, 200, &none);
        let busy = ports.iter().filter(|p| **p == 1).count();
        assert!(busy < 80, "the busy endpoint got {busy} of 200");
    }
}
