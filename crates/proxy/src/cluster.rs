//! Clusters at run time: endpoints with their load signals, priority levels, and the balancers
//! that pick one endpoint per request.
//!
//! Priority rule (as Envoy's): each level takes `min(100%, 1.4 × its healthy fraction)` of the
//! traffic still unassigned, best level first, so a level keeps all traffic while at least ~72% of
//! its endpoints are healthy and spills the rest to the next level as more fail. If the levels
//! together cover less than 100%, the shares are scaled up to 100%.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::uri::Authority;
use http::HeaderMap;

use crate::config::{ClusterConfig, HashOn, LbPolicy, UpstreamProtocol};
use crate::forward::HttpClient;

/// How much headroom a priority level is assumed to have (Envoy's overprovisioning factor).
const OVERPROVISION: f64 = 1.4;
/// Time constant of the latency EWMA.
const EWMA_DECAY: Duration = Duration::from_secs(10);
/// Latency assumed for an endpoint not measured yet.
const INITIAL_LATENCY_NS: f64 = 1_000_000.0;
/// Points on the hash ring per unit of weight.
const RING_POINTS_PER_WEIGHT: u32 = 64;

/// One upstream endpoint and its live load signals.
#[derive(Debug)]
pub struct Endpoint {
    /// Where it listens.
    pub addr: SocketAddr,
    /// `ip:port`, ready for request URIs.
    pub authority: Authority,
    weight: u32,
    healthy: AtomicBool,
    in_flight: AtomicU32,
    /// Peak-EWMA latency in nanoseconds (f64 bits).
    ewma_ns: AtomicU64,
    /// When `ewma_ns` was last updated, in nanoseconds since the cluster was built.
    stamp_ns: AtomicU64,
}

impl Endpoint {
    fn cost(&self) -> f64 {
        let ewma = f64::from_bits(self.ewma_ns.load(Ordering::Relaxed));
        ewma * f64::from(self.in_flight.load(Ordering::Relaxed) + 1)
    }

    /// Whether the endpoint may receive traffic.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Marks the endpoint healthy or not (health checks and outlier detection call this).
    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }
}

/// An endpoint chosen for one request. Counts as outstanding until dropped; report the outcome
/// with [`Lease::finish`] so that latency feeds the balancer.
pub struct Lease {
    endpoint: Arc<Endpoint>,
    started: Instant,
    epoch: Instant,
}

impl Lease {
    /// The chosen endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Records how long the endpoint took to answer (peak EWMA: a slower answer counts at once, a
    /// faster one decays in).
    pub fn finish(self) {
        let now = Instant::now();
        let rtt = now.duration_since(self.started).as_nanos() as f64;
        let now_ns = now.duration_since(self.epoch).as_nanos() as u64;
        let e = &self.endpoint;
        let last = e.stamp_ns.swap(now_ns, Ordering::Relaxed);
        let old = f64::from_bits(e.ewma_ns.load(Ordering::Relaxed));
        let next = if rtt > old {
            rtt
        } else {
            let elapsed = now_ns.saturating_sub(last) as f64;
            let w = (-elapsed / EWMA_DECAY.as_nanos() as f64).exp();
            old * w + rtt * (1.0 - w)
        };
        e.ewma_ns.store(next.to_bits(), Ordering::Relaxed);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The endpoints of one priority level.
#[derive(Debug)]
struct Level {
    /// Indices into `Cluster::endpoints`.
    members: Vec<usize>,
    /// Cumulative weights of `members`, for weighted sampling.
    cumulative: Vec<u32>,
    /// Smooth weighted round-robin order of `members` indices.
    schedule: Vec<usize>,
    next: AtomicUsize,
}

#[derive(Debug)]
enum Balancer {
    P2cEwma,
    LeastRequest,
    RoundRobin,
    RingHash { on: HashOn, ring: Vec<(u64, usize)> },
}

/// A cluster ready to serve: its endpoints, levels and balancer.
#[derive(Debug)]
pub struct Cluster {
    /// The cluster's name.
    pub name: String,
    /// Protocol to the endpoints.
    pub protocol: UpstreamProtocol,
    /// The client that carries requests to the endpoints.
    pub client: HttpClient,
    endpoints: Vec<Arc<Endpoint>>,
    levels: Vec<Level>,
    balancer: Balancer,
    epoch: Instant,
}

/// FNV-1a (64 bit) followed by MurmurHash3's finalizer: small, fully specified (so every proxy
/// build places keys alike) and well spread over the ring even for near-identical inputs.
fn ring_hash(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in *part {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^ (hash >> 33)
}

/// Smooth weighted round robin (as nginx): an order in which each member appears `weight` times,
/// spread out.
fn smooth_schedule(weights: &[u32]) -> Vec<usize> {
    let total: i64 = weights.iter().map(|w| i64::from(*w)).sum();
    let mut current = vec![0i64; weights.len()];
    let mut order = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, w) in weights.iter().enumerate() {
            current[i] += i64::from(*w);
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        order.push(best);
    }
    order
}

impl Cluster {
    /// Builds a cluster from validated configuration, sending through `client`. Endpoints listed
    /// in `previous` with the same address and weight keep their health and load signals.
    pub fn build(
        config: &ClusterConfig,
        client: HttpClient,
        previous: Option<&Cluster>,
    ) -> Cluster {
        let endpoints: Vec<Arc<Endpoint>> = config
            .endpoints
            .iter()
            .filter_map(|e| {
                let addr: SocketAddr = e.address.parse().ok()?;
                let reused = previous.and_then(|p| {
                    p.endpoints
                        .iter()
                        .find(|old| old.addr == addr && old.weight == e.weight)
                });
                Some(match reused {
                    Some(old) => old.clone(),
                    None => Arc::new(Endpoint {
                        addr,
                        authority: Authority::try_from(addr.to_string()).ok()?,
                        weight: e.weight,
                        healthy: AtomicBool::new(true),
                        in_flight: AtomicU32::new(0),
                        ewma_ns: AtomicU64::new(INITIAL_LATENCY_NS.to_bits()),
                        stamp_ns: AtomicU64::new(0),
                    }),
                })
            })
            .collect();
        let mut priorities: Vec<u32> = config.endpoints.iter().map(|e| e.priority).collect();
        priorities.sort_unstable();
        priorities.dedup();
        let levels = priorities
            .iter()
            .map(|p| {
                let members: Vec<usize> = config
                    .endpoints
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| e.priority == *p)
                    .map(|(i, _)| i)
                    .filter(|i| *i < endpoints.len())
                    .collect();
                let weights: Vec<u32> = members.iter().map(|i| endpoints[*i].weight).collect();
                let cumulative = weights
                    .iter()
                    .scan(0u32, |sum, w| {
                        *sum += w;
                        Some(*sum)
                    })
                    .collect();
                Level {
                    schedule: smooth_schedule(&weights),
                    members,
                    cumulative,
                    next: AtomicUsize::new(0),
                }
            })
            .collect();
        let balancer = match config.lb {
            LbPolicy::P2cEwma => Balancer::P2cEwma,
            LbPolicy::LeastRequest => Balancer::LeastRequest,
            LbPolicy::RoundRobin => Balancer::RoundRobin,
            LbPolicy::RingHash => {
                let mut ring = Vec::new();
                for (i, e) in endpoints.iter().enumerate() {
                    let addr = e.addr.to_string();
                    for point in 0..e.weight * RING_POINTS_PER_WEIGHT {
                        ring.push((ring_hash(&[addr.as_bytes(), &point.to_le_bytes()]), i));
                    }
                }
                ring.sort_unstable();
                Balancer::RingHash {
                    on: config.hash_on.clone().unwrap_or_default(),
                    ring,
                }
            }
        };
        Cluster {
            name: config.name.clone(),
            protocol: config.protocol,
            client,
            endpoints,
            levels,
            balancer,
            epoch: previous.map_or_else(Instant::now, |p| p.epoch),
        }
    }

    /// Every endpoint, in configuration order.
    pub fn endpoints(&self) -> &[Arc<Endpoint>] {
        &self.endpoints
    }

    /// Picks an endpoint for a request with `headers`; `None` when no endpoint is healthy.
    pub fn pick(&self, headers: &HeaderMap) -> Option<Lease> {
        let index = match &self.balancer {
            Balancer::RingHash { on, ring } => match hash_key(on, headers) {
                Some(key) => self.ring_pick(ring, ring_hash(&[key])),
                None => self.level_pick(false),
            },
            Balancer::RoundRobin => self.round_robin(),
            Balancer::P2cEwma => self.level_pick(true),
            Balancer::LeastRequest => self.level_pick(false),
        }?;
        let endpoint = self.endpoints[index].clone();
        endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(Lease {
            endpoint,
            started: Instant::now(),
            epoch: self.epoch,
        })
    }

    /// The level to use for this request, by the priority rule in the module doc.
    fn choose_level(&self) -> Option<&Level> {
        let healthy_fraction = |level: &Level| {
            let healthy = level
                .members
                .iter()
                .filter(|i| self.endpoints[**i].is_healthy())
                .count();
            healthy as f64 / level.members.len().max(1) as f64
        };
        let first = self.levels.first()?;
        let first_share = (healthy_fraction(first) * OVERPROVISION).min(1.0);
        if first_share >= 1.0 {
            return Some(first);
        }
        let mut shares = Vec::with_capacity(self.levels.len());
        let mut left = 1.0;
        for level in &self.levels {
            let share = (healthy_fraction(level) * OVERPROVISION).min(1.0).min(left);
            shares.push(share);
            left -= share;
        }
        let total: f64 = shares.iter().sum();
        if total <= 0.0 {
            return None;
        }
        let mut roll = fastrand::f64() * total;
        for (level, share) in self.levels.iter().zip(&shares) {
            if roll < *share {
                return Some(level);
            }
            roll -= share;
        }
        self.levels
            .iter()
            .zip(&shares)
            .rev()
            .find(|(_, s)| **s > 0.0)
            .map(|(l, _)| l)
    }

    /// A healthy member of `level` sampled by weight.
    fn sample(&self, level: &Level) -> Option<usize> {
        let total = *level.cumulative.last()?;
        for _ in 0..4 {
            let roll = fastrand::u32(0..total);
            let slot = level.cumulative.partition_point(|c| *c <= roll);
            let index = level.members[slot];
            if self.endpoints[index].is_healthy() {
                return Some(index);
            }
        }
        level
            .members
            .iter()
            .copied()
            .find(|i| self.endpoints[*i].is_healthy())
    }

    /// Power of two choices in the chosen level: by peak-EWMA cost, or by outstanding requests.
    fn level_pick(&self, by_latency: bool) -> Option<usize> {
        let level = self.choose_level()?;
        let a = self.sample(level)?;
        let b = self.sample(level)?;
        let (ea, eb) = (&self.endpoints[a], &self.endpoints[b]);
        let a_better = if by_latency {
            ea.cost() <= eb.cost()
        } else {
            ea.in_flight.load(Ordering::Relaxed) <= eb.in_flight.load(Ordering::Relaxed)
        };
        Some(if a_better { a } else { b })
    }

    fn round_robin(&self) -> Option<usize> {
        let level = self.choose_level()?;
        for _ in 0..level.schedule.len() {
            let turn = level.next.fetch_add(1, Ordering::Relaxed) % level.schedule.len();
            let index = level.members[level.schedule[turn]];
            if self.endpoints[index].is_healthy() {
                return Some(index);
            }
        }
        None
    }

    fn ring_pick(&self, ring: &[(u64, usize)], hash: u64) -> Option<usize> {
        let start = ring.partition_point(|(point, _)| *point < hash);
        (0..ring.len())
            .map(|step| ring[(start + step) % ring.len()].1)
            .find(|i| self.endpoints[*i].is_healthy())
    }
}

/// The bytes a ring-hash cluster hashes for this request, if the request has them.
fn hash_key<'h>(on: &HashOn, headers: &'h HeaderMap) -> Option<&'h [u8]> {
    if let Some(name) = &on.header {
        return headers.get(name.as_str()).map(|v| v.as_bytes());
    }
    let cookie_name = on.cookie.as_deref()?;
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == cookie_name)
        .map(|(_, value)| value.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse_config, ProxyConfig};

    fn cluster(yaml: &str) -> Cluster {
        let text = format!("listeners: [{{name: l, address: \"127.0.0.1:1\"}}]\nclusters:\n{yaml}");
        let config: ProxyConfig = parse_config(&text).unwrap();
        let client =
            crate::server::upstream_client(UpstreamProtocol::Http1, Duration::from_secs(1));
        Cluster::build(&config.clusters[0], client, None)
    }

    fn picks(c: &Cluster, n: usize, headers: &HeaderMap) -> Vec<u16> {
        (0..n)
            .map(|_| c.pick(headers).unwrap().endpoint().addr.port())
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
    fn traffic_stays_on_the_best_priority_until_it_degrades() {
        let c = cluster(
            "  - name: c\n    endpoints:\n      - {address: \"127.0.0.1:1\"}\n      - {address: \"127.0.0.1:2\"}\n      - {address: \"127.0.0.1:3\"}\n      - {address: \"127.0.0.1:4\"}\n      - {address: \"127.0.0.1:9\", priority: 1}",
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
        assert!(c.pick(&none).is_none());
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
            let a = before.pick(&headers).unwrap().endpoint().addr.port();
            assert_eq!(a, before.pick(&headers).unwrap().endpoint().addr.port());
            let b = after.pick(&headers).unwrap().endpoint().addr.port();
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
            .filter_map(|_| c.pick(&none))
            .filter(|l| l.endpoint().addr.port() == 1)
            .collect();
        assert!(!held.is_empty());
        let ports = picks(&c, 200, &none);
        let busy = ports.iter().filter(|p| **p == 1).count();
        assert!(busy < 80, "the busy endpoint got {busy} of 200");
    }
}
