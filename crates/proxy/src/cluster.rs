//! Clusters at run time: endpoints with their load signals, priority levels, and the balancers
//! that pick one endpoint per request.
//!
//! Priority rule (as Envoy's): each level takes `min(100%, 1.4 × its healthy fraction)` of the
//! traffic still unassigned, best level first, so a level keeps all traffic while at least ~72% of
//! its endpoints are healthy and spills the rest to the next level as more fail. If the levels
//! together cover less than 100%, the shares are scaled up to 100%.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::uri::Authority;

use crate::config::{
    ClusterConfig, EndpointConfig, HashOn, LbPolicy, OutlierDetection, UpstreamProtocol,
};
use crate::fields::OutgoingFields;
use crate::pool::IdleConnections;
use crate::upstream::HttpClient;

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
    healthy: AtomicBool,
    /// Consecutive active health-check results that disagree with `healthy` (see `health`).
    check_streak: AtomicU32,
    in_flight: AtomicU32,
    /// Peak-EWMA latency in nanoseconds (f64 bits).
    ewma_ns: AtomicU64,
    /// When `ewma_ns` was last updated, in nanoseconds since the cluster was built.
    stamp_ns: AtomicU64,
    /// Outlier ejection ends at this time (nanoseconds since the cluster's epoch); 0: not ejected.
    ejected_until_ns: AtomicU64,
    /// Times ejected (the next ejection lasts this many base ejection times, plus one).
    ejections: AtomicU32,
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    /// Its idle HTTP/1.1 connections (see [`crate::pool`]); they close when it is dropped.
    pub idle: Arc<IdleConnections>,
}

impl Endpoint {
    pub(crate) fn new(addr: SocketAddr) -> Option<Endpoint> {
        Some(Endpoint {
            addr,
            authority: Authority::try_from(addr.to_string()).ok()?,
            healthy: AtomicBool::new(true),
            check_streak: AtomicU32::new(0),
            in_flight: AtomicU32::new(0),
            ewma_ns: AtomicU64::new(INITIAL_LATENCY_NS.to_bits()),
            stamp_ns: AtomicU64::new(0),
            ejected_until_ns: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            consecutive_5xx: AtomicU32::new(0),
            consecutive_gateway: AtomicU32::new(0),
            idle: Arc::default(),
        })
    }

    /// Whether the endpoint is healthy and not ejected at `now_ns`.
    fn usable(&self, now_ns: u64) -> bool {
        self.is_healthy() && self.ejected_until_ns.load(Ordering::Relaxed) <= now_ns
    }

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

    /// Records one active health-check result; after `threshold` results in a row that disagree
    /// with its health (`unhealthy` failures, or `healthy` successes), the endpoint changes
    /// state. Returns the new state when it changed. One checker per endpoint calls this.
    pub fn record_check(
        &self,
        ok: bool,
        healthy_threshold: u32,
        unhealthy_threshold: u32,
    ) -> Option<bool> {
        let healthy = self.is_healthy();
        if ok == healthy {
            self.check_streak.store(0, Ordering::Relaxed);
            return None;
        }
        let streak = self.check_streak.fetch_add(1, Ordering::Relaxed) + 1;
        let needed = if healthy {
            unhealthy_threshold
        } else {
            healthy_threshold
        };
        if streak < needed {
            return None;
        }
        self.check_streak.store(0, Ordering::Relaxed);
        self.set_healthy(ok);
        Some(ok)
    }

    /// Forgets active health checking: healthy, no streak (its cluster is no longer checked).
    pub fn reset_health(&self) {
        self.check_streak.store(0, Ordering::Relaxed);
        self.set_healthy(true);
    }
}

/// How a request to an endpoint ended, for load balancing and outlier detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered, not with a 5xx.
    Success,
    /// Answered 500 or another 5xx that is not a gateway error.
    ServerError,
    /// Answered 502, 503 or 504, or could not be connected to, or timed out.
    GatewayError,
    /// Failed in a way that may be the client's doing (its body broke off or was too slow):
    /// recorded neither as latency nor as an error.
    Inconclusive,
}

impl Outcome {
    /// The outcome of an answer with `status`.
    pub fn of_status(status: u16) -> Outcome {
        match status {
            502..=504 => Outcome::GatewayError,
            500..=599 => Outcome::ServerError,
            _ => Outcome::Success,
        }
    }
}

/// An endpoint chosen for one request. Counts as outstanding until dropped; report the outcome
/// with [`Lease::finish`].
pub struct Lease<'c> {
    cluster: &'c Cluster,
    /// The endpoints the pick chose among (the cluster's may have changed since).
    members: Arc<Members>,
    index: usize,
    started: Instant,
}

impl Lease<'_> {
    /// The chosen endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.members.endpoints[self.index]
    }

    /// Records the outcome and ends the lease; see [`Lease::observe`].
    pub fn finish(self, outcome: Outcome) -> bool {
        self.observe(outcome)
    }

    /// Records an outcome without ending the lease (a relayed TCP connection stays outstanding
    /// after it connected): latency since the pick feeds the balancer (peak EWMA: a slower answer
    /// counts at once, a faster one decays in); errors feed outlier detection. Returns whether
    /// the endpoint was ejected for it.
    pub fn observe(&self, outcome: Outcome) -> bool {
        let now = Instant::now();
        let now_ns = now.duration_since(self.cluster.epoch).as_nanos() as u64;
        let e = self.endpoint();
        if outcome == Outcome::Inconclusive {
            return false;
        }
        if outcome != Outcome::GatewayError {
            let rtt = now.duration_since(self.started).as_nanos() as f64;
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
        match &self.cluster.outlier {
            Some(outlier) => {
                let members = &self.members.endpoints;
                self.cluster
                    .detect_outlier(members, e, outcome, outlier, now_ns)
            }
            None => false,
        }
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        self.endpoint().in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Interleaved weighted round robin over a level, without a schedule of `sum(weights)` entries:
/// a cycle is `max weight` rounds, and round `r` visits the members whose weight exceeds `r`.
/// The rounds come in a low-discrepancy order (by the fractional part of `r` × the golden
/// ratio), so that heavy members' turns are spread over the cycle rather than bunched at its
/// end. Memory is O(members + max weight), whatever the weights (at most 1000 each).
#[derive(Debug)]
struct Turns {
    /// Positions in the level's `members`, heaviest first (configuration order among equals):
    /// round `r` visits the first (members heavier than `r`) of these.
    by_weight: Vec<usize>,
    /// The rounds in the order they come, each with the visits up to its end (cumulative); the
    /// last end is the cycle's length.
    rounds: Vec<(u32, u64)>,
}

impl Turns {
    fn new(weights: &[u32]) -> Option<Turns> {
        let mut by_weight: Vec<usize> = (0..weights.len()).collect();
        by_weight.sort_by_key(|i| std::cmp::Reverse(weights[*i]));
        let heaviest = weights.iter().copied().max()?;
        // Members heavier than r, for each round r: counted from the heaviest down.
        let mut heavier = vec![0u64; heaviest as usize];
        for w in weights {
            if let Some(count) = heavier.get_mut((*w as usize).saturating_sub(1)) {
                *count += 1;
            }
        }
        let mut above = 0;
        for count in heavier.iter_mut().rev() {
            above += *count;
            *count = above;
        }
        let spread = |r: u32| (f64::from(r) * 0.618_033_988_749_895).fract();
        let mut order: Vec<u32> = (0..heaviest).collect();
        order.sort_by(|a, b| spread(*a).total_cmp(&spread(*b)));
        let mut end = 0;
        let rounds = order
            .into_iter()
            .map(|r| {
                end += heavier[r as usize];
                (r, end)
            })
            .collect();
        Some(Turns { by_weight, rounds })
    }

    /// The member position whose turn `ticket` is.
    fn turn(&self, ticket: u64) -> usize {
        let cycle = self.rounds.last().map_or(1, |(_, end)| *end).max(1);
        let t = ticket % cycle;
        let at = self.rounds.partition_point(|(_, end)| *end <= t);
        let start = at
            .checked_sub(1)
            .map_or(0, |previous| self.rounds[previous].1);
        self.by_weight[(t - start) as usize]
    }
}

/// The endpoints of one priority level.
#[derive(Debug)]
struct Level {
    /// Indices into `Members::endpoints`.
    members: Vec<usize>,
    /// Cumulative weights of `members`, for weighted sampling.
    cumulative: Vec<u32>,
    /// Round-robin turns (round-robin clusters only).
    turns: Option<Turns>,
    next: AtomicU64,
}

impl Level {
    fn new(members: Vec<usize>, weights: &[u32], round_robin: bool) -> Level {
        let weights: Vec<u32> = members.iter().map(|i| weights[*i]).collect();
        let cumulative = weights
            .iter()
            .scan(0u32, |sum, w| {
                *sum += w;
                Some(*sum)
            })
            .collect();
        Level {
            turns: round_robin.then(|| Turns::new(&weights)).flatten(),
            members,
            cumulative,
            next: AtomicU64::new(0),
        }
    }
}

#[derive(Debug)]
enum Balancer {
    P2cEwma,
    LeastRequest,
    RoundRobin,
    RingHash { on: HashOn },
}

/// A cluster's endpoints and what is derived from them (levels, ring); replaced as a whole when
/// the endpoints change, so that a request sees one consistent set.
#[derive(Debug)]
pub struct Members {
    endpoints: Vec<Arc<Endpoint>>,
    levels: Vec<Level>,
    /// Every endpoint as one level, for panic mode.
    everyone: Level,
    /// The hash ring (`ring_hash` clusters; empty otherwise).
    ring: Vec<(u64, usize)>,
}

impl Members {
    /// Builds the members from validated endpoints. An endpoint whose address is in `previous`
    /// is that same endpoint (its health, streaks, outlier state and load signals carry on,
    /// whatever its new weight or priority); the look-up is by hash, O(n) in all.
    fn build(
        configs: &[EndpointConfig],
        balancer: &Balancer,
        previous: Option<&Members>,
    ) -> Members {
        let known: HashMap<SocketAddr, &Arc<Endpoint>> = previous
            .map(|p| p.endpoints.iter().map(|e| (e.addr, e)).collect())
            .unwrap_or_default();
        let mut endpoints = Vec::with_capacity(configs.len());
        let mut weights = Vec::with_capacity(configs.len());
        let mut priority_of = Vec::with_capacity(configs.len());
        for config in configs {
            let Ok(addr) = config.address.parse::<SocketAddr>() else {
                continue;
            };
            let endpoint = match known.get(&addr) {
                Some(old) => Arc::clone(old),
                None => match Endpoint::new(addr) {
                    Some(new) => Arc::new(new),
                    None => continue,
                },
            };
            endpoints.push(endpoint);
            weights.push(config.weight);
            priority_of.push(config.priority);
        }
        let round_robin = matches!(balancer, Balancer::RoundRobin);
        let mut priorities = priority_of.clone();
        priorities.sort_unstable();
        priorities.dedup();
        let levels = priorities
            .iter()
            .map(|p| {
                let members = (0..endpoints.len())
                    .filter(|i| priority_of[*i] == *p)
                    .collect();
                Level::new(members, &weights, round_robin)
            })
            .collect();
        let everyone = Level::new((0..endpoints.len()).collect(), &weights, round_robin);
        let mut ring = Vec::new();
        if let Balancer::RingHash { .. } = balancer {
            for (i, (e, weight)) in endpoints.iter().zip(&weights).enumerate() {
                let addr = e.addr.to_string();
                for point in 0..weight * RING_POINTS_PER_WEIGHT {
                    ring.push((ring_hash(&[addr.as_bytes(), &point.to_le_bytes()]), i));
                }
            }
            ring.sort_unstable();
        }
        Members {
            endpoints,
            levels,
            everyone,
            ring,
        }
    }
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
    /// Time to establish a connection to an endpoint.
    pub connect_timeout: Duration,
    /// Mutual TLS to the endpoints (a mesh cluster), for `tcp` listeners' relays; HTTP
    /// requests go through `client`, which has its own.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The endpoints in force; swapped whole by [`Cluster::set_endpoints`].
    members: ArcSwap<Members>,
    balancer: Balancer,
    epoch: Instant,
    outlier: Option<OutlierDetection>,
    /// Fraction of usable endpoints below which health is ignored.
    panic_below: f64,
    max_requests: u32,
    max_pending: u32,
    /// Requests in flight and waiting; shared with the cluster's next builds so that a reload
    /// does not reset the circuit breaker.
    breaker: Arc<Breaker>,
    budget: RetryBudget,
}

/// The circuit breaker's counts, and the wake-up of requests waiting for a slot.
#[derive(Debug, Default)]
struct Breaker {
    /// Requests admitted and not finished.
    active: AtomicU32,
    /// Of those, the ones that have made a retry.
    retrying: AtomicU32,
    /// Requests waiting for a slot.
    pending: AtomicU32,
    /// Signalled when an admitted request finishes while others wait.
    freed: tokio::sync::Notify,
}

impl Breaker {
    fn try_take(&self, max: u32) -> bool {
        if self.active.fetch_add(1, Ordering::Relaxed) >= max {
            self.active.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }
}

/// Why the circuit breaker turned a request away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// `max_requests` are in flight and no request may wait (`max_pending_requests: 0`).
    Requests,
    /// `max_requests` are in flight and `max_pending_requests` wait already.
    Pending,
    /// The request waited for a slot until its route's timeout.
    Waited,
}

impl Overflow {
    /// The limit's name in metrics (`limit` label) and, prefixed with `overflow_`, in the
    /// `x-meridian-error` header.
    pub fn limit(self) -> &'static str {
        match self {
            Overflow::Requests => "max_requests",
            Overflow::Pending => "pending_requests",
            Overflow::Waited => "pending_timeout",
        }
    }
}

/// Counts a request as waiting until dropped.
struct Waiting<'b>(&'b Breaker);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Retries allowed on top of a cluster's requests: while at most `ratio` of the requests in
/// flight are retrying, another may; besides, `min_per_second` retries a second are always
/// allowed (so that a cluster with little traffic can still retry).
#[derive(Debug)]
struct RetryBudget {
    ratio: f64,
    min_per_second: u32,
    /// The second `floor_used` counts for.
    floor_second: AtomicU64,
    floor_used: AtomicU32,
}

impl RetryBudget {
    /// Whether one more request may retry while `retrying` others do, of `active` in flight.
    fn allows(&self, now_second: u64, active: u32, retrying: u32) -> bool {
        if f64::from(retrying + 1) <= self.ratio * f64::from(active) {
            return true;
        }
        if self.floor_second.swap(now_second, Ordering::Relaxed) != now_second {
            self.floor_used.store(0, Ordering::Relaxed);
        }
        self.floor_used.fetch_add(1, Ordering::Relaxed) < self.min_per_second
    }
}

/// A request admitted by the circuit breaker; frees its slot when dropped.
pub struct Admission<'c> {
    cluster: &'c Cluster,
    /// Whether the request has made a retry (and counts in the breaker's `retrying`).
    retrying: bool,
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        let breaker = &self.cluster.breaker;
        breaker.active.fetch_sub(1, Ordering::Relaxed);
        if self.retrying {
            breaker.retrying.fetch_sub(1, Ordering::Relaxed);
        }
        if breaker.pending.load(Ordering::Relaxed) > 0 {
            breaker.freed.notify_one();
        }
    }
}

/// Which endpoints a pick may choose.
struct PickRules {
    now_ns: u64,
    /// Ignore health and ejections (too few endpoints are usable).
    panic: bool,
    /// An endpoint to avoid (the one a retry follows).
    avoid: Option<usize>,
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

impl Cluster {
    /// The cluster with mutual TLS to its endpoints by `tls` (for `tcp` listeners' relays).
    pub fn with_tls(mut self, tls: Option<Arc<rustls::ClientConfig>>) -> Cluster {
        self.tls = tls;
        self
    }

    /// Builds a cluster from validated configuration, sending through `client`. Endpoints listed
    /// in `previous` at the same address are the same endpoints (see [`Members`]); its circuit
    /// breaker and clock carry on too.
    pub fn build(
        config: &ClusterConfig,
        client: HttpClient,
        previous: Option<&Cluster>,
    ) -> Cluster {
        let balancer = match config.lb {
            LbPolicy::P2cEwma => Balancer::P2cEwma,
            LbPolicy::LeastRequest => Balancer::LeastRequest,
            LbPolicy::RoundRobin => Balancer::RoundRobin,
            LbPolicy::RingHash => Balancer::RingHash {
                on: config.hash_on.clone().unwrap_or_default(),
            },
        };
        let old = previous.map(|p| p.members.load_full());
        let members = Members::build(&config.endpoints, &balancer, old.as_deref());
        Cluster {
            name: config.name.clone(),
            protocol: config.protocol,
            client,
            connect_timeout: config.connect_timeout.0,
            tls: None,
            members: ArcSwap::from_pointee(members),
            balancer,
            epoch: previous.map_or_else(Instant::now, |p| p.epoch),
            outlier: config.outlier_detection.clone(),
            panic_below: f64::from(config.panic_threshold) / 100.0,
            max_requests: config.circuit_breakers.max_requests,
            max_pending: config.circuit_breakers.max_pending_requests,
            breaker: previous.map_or_else(Default::default, |p| p.breaker.clone()),
            budget: RetryBudget {
                ratio: config.retry_budget.ratio,
                min_per_second: config.retry_budget.min_per_second,
                floor_second: AtomicU64::new(0),
                floor_used: AtomicU32::new(0),
            },
        }
    }

    /// Replaces the endpoints with validated `endpoints` (the rest of the cluster unchanged):
    /// O(endpoints), and endpoints that stay keep their state. Requests already under way finish
    /// with the endpoints they picked from; the idle connections to endpoints that leave close.
    pub fn set_endpoints(&self, endpoints: &[EndpointConfig]) {
        let old = self.members.load();
        let members = Members::build(endpoints, &self.balancer, Some(&old));
        let staying: HashSet<SocketAddr> = members.endpoints.iter().map(|e| e.addr).collect();
        self.members.store(Arc::new(members));
        for gone in old.endpoints.iter().filter(|e| !staying.contains(&e.addr)) {
            self.client.close_idle(gone);
        }
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Admits a request under the circuit breaker's `max_requests`. When the cluster is full the
    /// request waits for a slot, as one of at most `max_pending_requests`, until `deadline`.
    pub async fn admit(&self, deadline: tokio::time::Instant) -> Result<Admission<'_>, Overflow> {
        let breaker = &*self.breaker;
        if !breaker.try_take(self.max_requests) {
            if self.max_pending == 0 {
                return Err(Overflow::Requests);
            }
            if breaker.pending.fetch_add(1, Ordering::Relaxed) >= self.max_pending {
                breaker.pending.fetch_sub(1, Ordering::Relaxed);
                return Err(Overflow::Pending);
            }
            let _waiting = Waiting(breaker);
            loop {
                // Registered before the check, so that a slot freed in between still wakes us.
                let freed = breaker.freed.notified();
                tokio::pin!(freed);
                freed.as_mut().enable();
                if breaker.try_take(self.max_requests) {
                    break;
                }
                if tokio::time::timeout_at(deadline, freed).await.is_err() {
                    // Pass on a wake-up this request may have taken.
                    breaker.freed.notify_one();
                    return Err(Overflow::Waited);
                }
            }
        }
        Ok(Admission {
            cluster: self,
            retrying: false,
        })
    }

    /// Whether the retry budget allows `admitted` one more retry now (counting it as retrying
    /// from then on).
    pub fn allow_retry(&self, admitted: &mut Admission<'_>) -> bool {
        let breaker = &*self.breaker;
        let others = breaker
            .retrying
            .load(Ordering::Relaxed)
            .saturating_sub(u32::from(admitted.retrying));
        let active = breaker.active.load(Ordering::Relaxed);
        if !self
            .budget
            .allows(self.epoch.elapsed().as_secs(), active, others)
        {
            return false;
        }
        if !admitted.retrying {
            admitted.retrying = true;
            breaker.retrying.fetch_add(1, Ordering::Relaxed);
        }
        true
    }

    /// Outlier detection: counts consecutive errors of `endpoint` and ejects it when a threshold
    /// is reached, unless too many endpoints are ejected already. Returns whether it ejected.
    fn detect_outlier(
        &self,
        members: &[Arc<Endpoint>],
        endpoint: &Endpoint,
        outcome: Outcome,
        o: &OutlierDetection,
        now_ns: u64,
    ) -> bool {
        let (five, gateway) = match outcome {
            Outcome::Inconclusive => return false,
            Outcome::Success => {
                endpoint.consecutive_5xx.store(0, Ordering::Relaxed);
                endpoint.consecutive_gateway.store(0, Ordering::Relaxed);
                let until = endpoint.ejected_until_ns.load(Ordering::Relaxed);
                if until > 0 && now_ns > until + o.max_ejection_time.0.as_nanos() as u64 {
                    endpoint.ejections.store(0, Ordering::Relaxed);
                }
                return false;
            }
            Outcome::ServerError => {
                endpoint.consecutive_gateway.store(0, Ordering::Relaxed);
                (
                    endpoint.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1,
                    0,
                )
            }
            Outcome::GatewayError => (
                endpoint.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1,
                endpoint.consecutive_gateway.fetch_add(1, Ordering::Relaxed) + 1,
            ),
        };
        if five < o.consecutive_5xx && gateway < o.consecutive_gateway_errors {
            return false;
        }
        if endpoint.ejected_until_ns.load(Ordering::Relaxed) > now_ns {
            return false;
        }
        let ejected = members
            .iter()
            .filter(|e| e.ejected_until_ns.load(Ordering::Relaxed) > now_ns)
            .count();
        let allowed = (members.len() * o.max_ejection_percent as usize) / 100;
        if ejected > 0 && ejected + 1 > allowed {
            return false;
        }
        let times = endpoint.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let length = o
            .base_ejection_time
            .0
            .saturating_mul(times)
            .min(o.max_ejection_time.0);
        endpoint
            .ejected_until_ns
            .store(now_ns + length.as_nanos() as u64, Ordering::Relaxed);
        endpoint.consecutive_5xx.store(0, Ordering::Relaxed);
        endpoint.consecutive_gateway.store(0, Ordering::Relaxed);
        tracing::info!(cluster = %self.name, endpoint = %endpoint.addr,
            seconds = length.as_secs_f64(), "endpoint ejected");
        true
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
        let now_ns = self.now_ns();
        let members = self.members.load_full();
        let panic = members.availability(now_ns) < self.panic_below;
        let avoid = avoid.and_then(|addr| members.endpoints.iter().position(|e| e.addr == addr));
        let mut rules = PickRules {
            now_ns,
            panic,
            avoid,
        };
        let index = members
            .pick_index(&self.balancer, fields, &rules)
            .or_else(|| {
                rules.avoid = None;
                members.pick_index(&self.balancer, fields, &rules)
            })?;
        members.endpoints[index]
            .in_flight
            .fetch_add(1, Ordering::Relaxed);
        Some(Lease {
            cluster: self,
            members,
            index,
            started: Instant::now(),
        })
    }
}

impl Members {
    fn pick_index(
        &self,
        balancer: &Balancer,
        fields: OutgoingFields<'_>,
        rules: &PickRules,
    ) -> Option<usize> {
        match balancer {
            Balancer::RingHash { on } => match hash_key(on, fields) {
                Some(key) => self.ring_pick(ring_hash(&[key]), rules),
                None => self.level_pick(false, rules),
            },
            Balancer::RoundRobin => self.round_robin(rules),
            Balancer::P2cEwma => self.level_pick(true, rules),
            Balancer::LeastRequest => self.level_pick(false, rules),
        }
    }

    /// The fraction of a level's endpoints that are usable.
    fn usable_fraction(&self, level: &Level, now_ns: u64) -> f64 {
        let usable = level
            .members
            .iter()
            .filter(|i| self.endpoints[**i].usable(now_ns))
            .count();
        usable as f64 / level.members.len().max(1) as f64
    }

    /// How much of the traffic the levels can take together (1.0: all of it), by the priority
    /// rule; below the panic threshold the cluster ignores health.
    fn availability(&self, now_ns: u64) -> f64 {
        self.levels
            .iter()
            .map(|level| self.usable_fraction(level, now_ns) * OVERPROVISION)
            .sum::<f64>()
            .min(1.0)
    }

    fn eligible(&self, index: usize, rules: &PickRules) -> bool {
        Some(index) != rules.avoid && (rules.panic || self.endpoints[index].usable(rules.now_ns))
    }

    /// The level to use for this request, by the priority rule in the module doc.
    fn choose_level(&self, rules: &PickRules) -> Option<&Level> {
        if rules.panic {
            return Some(&self.everyone);
        }
        let usable_fraction = |level: &Level| self.usable_fraction(level, rules.now_ns);
        let first = self.levels.first()?;
        if usable_fraction(first) * OVERPROVISION >= 1.0 {
            return Some(first);
        }
        let mut shares = Vec::with_capacity(self.levels.len());
        let mut left = 1.0;
        for level in &self.levels {
            let share = (usable_fraction(level) * OVERPROVISION).min(left);
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

    /// An eligible member of `level` sampled by weight.
    fn sample(&self, level: &Level, rules: &PickRules) -> Option<usize> {
        let total = *level.cumulative.last()?;
        for _ in 0..4 {
            let roll = fastrand::u32(0..total);
            let slot = level.cumulative.partition_point(|c| *c <= roll);
            let index = level.members[slot];
            if self.eligible(index, rules) {
                return Some(index);
            }
        }
        level
            .members
            .iter()
            .copied()
            .find(|i| self.eligible(*i, rules))
    }

    /// An eligible member of `level` other than `first`, weighted at random (`first` when it is
    /// the only one). Two draws of the same endpoint would hand it the request whatever its load:
    /// with two endpoints, a quarter of all requests would go to the worse one.
    fn sample_other(&self, level: &Level, rules: &PickRules, first: usize) -> usize {
        if level.members.len() < 2 {
            // No other to draw (a cluster of one endpoint, as many are).
            return first;
        }
        for _ in 0..4 {
            match self.sample(level, rules) {
                Some(other) if other != first => return other,
                _ => {}
            }
        }
        level
            .members
            .iter()
            .copied()
            .find(|i| *i != first && self.eligible(*i, rules))
            .unwrap_or(first)
    }

    /// Power of two choices in the chosen level: by peak-EWMA cost, or by outstanding requests.
    fn level_pick(&self, by_latency: bool, rules: &PickRules) -> Option<usize> {
        let chosen = self.choose_level(rules)?;
        let (level, a) = match self.sample(chosen, rules) {
            Some(a) => (chosen, a),
            // A retry whose level has no usable endpoint but the one it avoids goes to the next
            // level that has one.
            None => self
                .levels
                .iter()
                .find_map(|level| self.sample(level, rules).map(|a| (level, a)))?,
        };
        let b = self.sample_other(level, rules, a);
        let (ea, eb) = (&self.endpoints[a], &self.endpoints[b]);
        let a_better = if by_latency {
            ea.cost() <= eb.cost()
        } else {
            ea.in_flight.load(Ordering::Relaxed) <= eb.in_flight.load(Ordering::Relaxed)
        };
        Some(if a_better { a } else { b })
    }

    fn round_robin(&self, rules: &PickRules) -> Option<usize> {
        let chosen = self.choose_level(rules)?;
        // A retry whose level has no usable endpoint but the one it avoids goes to the next
        // level that has one.
        self.next_in_turn(chosen, rules)
            .or_else(|| self.levels.iter().find_map(|l| self.next_in_turn(l, rules)))
    }

    /// The next eligible member of `level` in its weighted round-robin turns; after a few
    /// ineligible turns, the next eligible member in order (so that unhealthy heavy members
    /// cost a bounded number of steps).
    fn next_in_turn(&self, level: &Level, rules: &PickRules) -> Option<usize> {
        let turns = level.turns.as_ref()?;
        let mut position = 0;
        for _ in 0..level.members.len().min(8) {
            position = turns.turn(level.next.fetch_add(1, Ordering::Relaxed));
            let index = level.members[position];
            if self.eligible(index, rules) {
                return Some(index);
            }
        }
        let count = level.members.len();
        (1..count)
            .map(|step| level.members[(position + step) % count])
            .find(|i| self.eligible(*i, rules))
    }

    fn ring_pick(&self, hash: u64, rules: &PickRules) -> Option<usize> {
        let ring = &self.ring;
        let start = ring.partition_point(|(point, _)| *point < hash);
        (0..ring.len())
            .map(|step| ring[(start + step) % ring.len()].1)
            .find(|i| self.eligible(*i, rules))
    }
}

/// The bytes a ring-hash cluster hashes for this request, if the request has them.
fn hash_key<'h>(on: &HashOn, fields: OutgoingFields<'h>) -> Option<&'h [u8]> {
    if let Some(name) = &on.header {
        return fields.get(name.as_str()).map(|v| v.as_bytes());
    }
    let cookie_name = on.cookie.as_deref()?;
    fields
        .headers
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
    fn round_robin_turns_stay_small_and_follow_weights_exactly() {
        // 1,000 endpoints of weights 1..=1000: a schedule would hold 500,500 entries.
        let weights: Vec<u32> = (1..=1000).collect();
        let turns = Turns::new(&weights).unwrap();
        assert_eq!(turns.by_weight.len(), 1000);
        assert_eq!(turns.rounds.len(), 1000);
        let cycle = turns.rounds.last().unwrap().1;
        assert_eq!(cycle, 500_500);
        let mut visits = vec![0u32; weights.len()];
        for ticket in 0..cycle {
            visits[turns.turn(ticket)] += 1;
        }
        assert_eq!(
            visits, weights,
            "one cycle visits each member `weight` times"
        );
        // Spread out: over each tenth of the cycle, the heaviest member gets about a tenth of
        // its turns.
        let tenth = cycle / 10;
        for part in 0..10 {
            let window = part * tenth..(part + 1) * tenth;
            let heaviest = window.filter(|t| turns.turn(*t) == 999).count();
            assert!(
                (80..=120).contains(&heaviest),
                "{heaviest} of 100 in tenth {part}"
            );
        }
    }

    #[test]
    fn only_round_robin_clusters_have_turns() {
        let rr = cluster(
            "  - {name: c, lb: round_robin, endpoints: [{address: \"127.0.0.1:1\", weight: 1000}]}",
        );
        let p2c = cluster("  - {name: c, endpoints: [{address: \"127.0.0.1:1\", weight: 1000}]}");
        assert!(rr.members.load().everyone.turns.is_some());
        assert!(p2c.members.load().levels[0].turns.is_none());
        assert!(p2c.members.load().everyone.turns.is_none());
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

    #[test]
    fn the_retry_budget_follows_live_requests_with_a_floor_per_second() {
        let budget = RetryBudget {
            ratio: 0.2,
            min_per_second: 2,
            floor_second: AtomicU64::new(0),
            floor_used: AtomicU32::new(0),
        };
        // Of 10 requests in flight, 2 may be retrying at once.
        assert!(budget.allows(1, 10, 0));
        assert!(budget.allows(1, 10, 1));
        // More draw on the floor: 2 a second.
        assert!(budget.allows(1, 10, 2));
        assert!(budget.allows(1, 10, 2));
        assert!(!budget.allows(1, 10, 2));
        // More live requests make room again; a new second brings a new floor.
        assert!(budget.allows(1, 20, 3));
        assert!(!budget.allows(1, 10, 5));
        assert!(budget.allows(2, 10, 5));
    }

    #[test]
    fn ejections_grow_up_to_the_maximum_and_respect_the_percentage() {
        let c = cluster(
            "  - name: c\n    outlier_detection: {consecutive_gateway_errors: 1, base_ejection_time: 10s, max_ejection_time: 35s, max_ejection_percent: 50}\n    endpoints: [{address: \"127.0.0.1:1\"}, {address: \"127.0.0.1:2\"}, {address: \"127.0.0.1:3\"}, {address: \"127.0.0.1:4\"}]",
        );
        let o = c.outlier.clone().unwrap();
        let second = 1_000_000_000u64;
        let endpoints = c.endpoints();
        let eject = |index: usize, at: u64| {
            let e = &endpoints[index];
            c.detect_outlier(&endpoints, e, Outcome::GatewayError, &o, at * second)
        };
        let until =
            |index: usize| endpoints[index].ejected_until_ns.load(Ordering::Relaxed) / second;
        // Two of four may be out at once (50%); a third stays in.
        assert!(eject(0, 0) && eject(1, 0));
        assert!(!eject(2, 0));
        assert_eq!((until(0), until(1), until(2)), (10, 10, 0));
        // Each ejection of the same endpoint lasts one base time longer, up to the maximum.
        assert!(eject(0, 11));
        assert_eq!(until(0), 11 + 20);
        assert!(eject(0, 32));
        assert_eq!(until(0), 32 + 30);
        assert!(eject(0, 63));
        assert_eq!(until(0), 63 + 35);
    }
}
