//! Load-balancing policies, one per module behind [`Balance`]: each picks one endpoint of a
//! cluster's members for a request, with the state it derives from one set of members (built
//! with them, replaced with them).

mod p2c;
mod ring_hash;
mod round_robin;

use std::sync::Arc;

use super::endpoint::Endpoint;
use super::members::{Members, PickRules};
use super::priority::Levels;
use crate::config::{HashOn, LbPolicy};
use crate::fields::OutgoingFields;

/// A load-balancing policy over one set of members.
pub(super) trait Balance: std::fmt::Debug + Send + Sync {
    /// The index (into `members.endpoints`) of the endpoint for a request with `fields`, among
    /// those `rules` allow; `None` when none is eligible.
    fn pick(
        &self,
        members: &Members,
        fields: OutgoingFields<'_>,
        rules: &PickRules,
    ) -> Option<usize>;
}

/// The balancer of policy `lb` (hashing on `hash_on` for a ring) over `endpoints` with
/// `weights`, grouped in `levels`.
pub(super) fn new(
    lb: LbPolicy,
    hash_on: &HashOn,
    endpoints: &[Arc<Endpoint>],
    weights: &[u32],
    levels: &Levels,
) -> Box<dyn Balance> {
    match lb {
        LbPolicy::P2cEwma => Box::new(p2c::PowerOfTwo::BY_LATENCY),
        LbPolicy::LeastRequest => Box::new(p2c::PowerOfTwo::BY_OUTSTANDING),
        LbPolicy::RoundRobin => Box::new(round_robin::RoundRobin::new(weights, levels)),
        LbPolicy::RingHash => Box::new(ring_hash::RingHash::new(hash_on, endpoints, weights)),
    }
}
