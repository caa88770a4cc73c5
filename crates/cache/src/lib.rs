//! Meridian's shared HTTP cache (RFC 9111), as the edges run it.
//!
//! The rules — what may be stored, under which key, for how long, when a stored response may
//! answer a request, how it is validated and freshened, what an unsafe request invalidates,
//! and how the answer is made (HEAD, ranges, `Age`, `Cache-Status`) — are pure functions of
//! message fields and times given to them, one concern per module, each tested against the
//! section of the RFC it implements. Beside them: the in-memory store (bounded in bytes,
//! TinyLFU admission, variants, a tag index for purges), the optional disk tier (blocking
//! file I/O, for its caller to run off its async workers) and request collapsing. The crate
//! must not do I/O in the rules, read a clock in them, or know about the proxy that calls it.

pub mod age;
pub mod collapse;
pub mod date;
pub mod directives;
pub mod disk;
pub mod encoding;
pub mod freshness;
pub mod invalidation;
pub mod key;
pub mod partial;
pub mod range;
pub mod reuse;
pub mod serve;
pub mod status;
pub mod storable;
pub mod store;
mod structured;
pub mod tags;
pub mod targeted;
pub mod validation;
pub mod vary;

pub use age::Timing;
pub use collapse::{Alone, CollapseLimits, Collapser, Join, Leader};
pub use directives::{CacheControl, FieldNames};
pub use disk::DiskTier;
pub use freshness::{lifetime, Basis, Lifetime};
pub use key::{CacheKey, QueryKey};
pub use reuse::{Freshness, Reuse};
pub use status::{CacheStatus, Forward, CACHE_STATUS};
pub use storable::{storable, Refusal, Storable};
pub use store::{Lookup, Object, Store, StoreLimits};
pub use targeted::{ResponsePolicy, Source, CDN_CACHE_CONTROL, MERIDIAN_CACHE_CONTROL};
pub use vary::Variant;

/// What the unit tests share.
#[cfg(test)]
mod testing {
    use http::{HeaderMap, HeaderName};

    /// A header map of `list`'s fields, in order.
    pub fn fields(list: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in list {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        headers
    }
}
