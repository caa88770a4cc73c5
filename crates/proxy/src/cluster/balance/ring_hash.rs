//! Consistent hashing on a ring: a request's key (a header's or a cookie's value) maps to the
//! first eligible endpoint at or after its hash, so that adding an endpoint moves only the keys
//! that now land on it. Requests without the key are balanced by outstanding requests.

use std::sync::Arc;

use super::p2c::PowerOfTwo;
use super::Balance;
use crate::cluster::endpoint::Endpoint;
use crate::cluster::members::{Members, PickRules};
use crate::config::HashOn;
use crate::fields::OutgoingFields;

/// Points on the hash ring per unit of weight.
const RING_POINTS_PER_WEIGHT: u32 = 64;

/// The ring, and where a request's key comes from.
#[derive(Debug)]
pub(in crate::cluster) struct RingHash {
    on: HashOn,
    /// Points and the endpoint index each belongs to, by point.
    ring: Vec<(u64, usize)>,
}

impl RingHash {
    /// The ring of `endpoints` with `weights`, hashing requests `on` a header or cookie.
    pub(in crate::cluster) fn new(
        on: &HashOn,
        endpoints: &[Arc<Endpoint>],
        weights: &[u32],
    ) -> RingHash {
        let mut ring = Vec::new();
        for (i, (e, weight)) in endpoints.iter().zip(weights).enumerate() {
            let addr = e.addr.to_string();
            for point in 0..weight * RING_POINTS_PER_WEIGHT {
                ring.push((ring_hash(&[addr.as_bytes(), &point.to_le_bytes()]), i));
            }
        }
        ring.sort_unstable();
        RingHash {
            on: on.clone(),
            ring,
        }
    }
}

impl Balance for RingHash {
    fn pick(
        &self,
        members: &Members,
        fields: OutgoingFields<'_>,
        rules: &PickRules,
    ) -> Option<usize> {
        let Some(key) = hash_key(&self.on, fields) else {
            return PowerOfTwo::BY_OUTSTANDING.pick(members, fields, rules);
        };
        let hash = ring_hash(&[key]);
        let ring = &self.ring;
        let start = ring.partition_point(|(point, _)| *point < hash);
        (0..ring.len())
            .map(|step| ring[(start + step) % ring.len()].1)
            .find(|i| members.eligible(*i, rules))
    }
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
