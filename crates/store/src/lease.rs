//! Leases: which of several control planes sharing the store does the work that must happen
//! once. A lease has one holder at a time until it expires; each new holder gets a fencing
//! token one greater than the last, and a write made for the holder ([`Fence`]) is refused once
//! another holds the lease, in the write's own transaction.

use std::time::Duration;

/// A lease held: what a write made for its holder carries, so that the store refuses it once
/// the holder has lost the lease ([`crate::StoreError::Fenced`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The lease's name.
    pub lease: String,
    /// Who holds it.
    pub holder: String,
    /// The fencing token of this holder's term: greater than every earlier term's.
    pub token: u64,
}

/// A lease as stored, for status pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseInfo {
    /// Its holder (the last one, when it has expired).
    pub holder: String,
    /// The fencing token of the holder's term.
    pub token: u64,
    /// How long until it expires (zero when it has).
    pub expires_in: Duration,
}
