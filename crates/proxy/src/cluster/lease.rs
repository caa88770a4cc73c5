//! A pick's hold on its endpoint: outstanding until dropped, and the outcome it reports.

use std::sync::Arc;
use std::time::Instant;

use super::endpoint::{Endpoint, Outcome};
use super::members::Members;
use super::{outlier, Cluster};

/// An endpoint chosen for one request. Counts as outstanding until dropped; report the outcome
/// with [`Lease::finish`].
pub struct Lease<'c> {
    cluster: &'c Cluster,
    /// The endpoints the pick chose among (the cluster's may have changed since).
    members: Arc<Members>,
    index: usize,
    started: Instant,
}

impl<'c> Lease<'c> {
    /// Takes the endpoint at `index` of `members` of `cluster`, as outstanding from now.
    pub(super) fn take(cluster: &'c Cluster, members: Arc<Members>, index: usize) -> Lease<'c> {
        members.endpoints[index].lease_taken();
        Lease {
            cluster,
            members,
            index,
            started: Instant::now(),
        }
    }

    /// The chosen endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.members.endpoints[self.index]
    }

    /// Records the outcome and ends the lease; see [`Lease::observe`].
    pub fn finish(self, outcome: Outcome) -> bool {
        self.observe(outcome)
    }

    /// Records an outcome without ending the lease (a relayed TCP connection stays outstanding
    /// after it connected): latency since the pick feeds the balancer (peak EWMA); errors feed
    /// outlier detection. Returns whether the endpoint was ejected for it.
    pub fn observe(&self, outcome: Outcome) -> bool {
        if outcome == Outcome::Inconclusive {
            return false;
        }
        let now = Instant::now();
        let now_ns = self.cluster.nanos_at(now);
        let e = self.endpoint();
        if outcome != Outcome::GatewayError {
            let rtt = now.duration_since(self.started).as_nanos() as f64;
            e.record_latency(rtt, now_ns);
        }
        match &self.cluster.outlier {
            Some(o) => {
                let members = &self.members.endpoints;
                outlier::record(&self.cluster.name, members, e, outcome, o, now_ns)
            }
            None => false,
        }
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        self.endpoint().lease_ended();
    }
}
