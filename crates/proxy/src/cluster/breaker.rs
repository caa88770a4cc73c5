//! The circuit breaker: at most `max_requests` of a cluster's requests in flight, and at most
//! `max_pending_requests` more waiting (until their deadline) for one of them to finish.

use std::sync::atomic::{AtomicU32, Ordering};

/// The circuit breaker's counts, and the wake-up of requests waiting for a slot. Shared by a
/// cluster's successive builds, so that a reload does not reset it.
#[derive(Debug, Default)]
pub(super) struct Breaker {
    /// Requests admitted and not finished.
    active: AtomicU32,
    /// Of those, the ones that have made a retry.
    retrying: AtomicU32,
    /// Requests waiting for a slot.
    pending: AtomicU32,
    /// Signalled when an admitted request finishes while others wait.
    freed: tokio::sync::Notify,
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

impl Breaker {
    fn try_take(&self, max: u32) -> bool {
        if self.active.fetch_add(1, Ordering::Relaxed) >= max {
            self.active.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Admits a request as one of at most `max_requests`. When all are taken the request waits
    /// for a slot, as one of at most `max_pending` waiting, until `deadline`.
    pub(super) async fn admit(
        &self,
        max_requests: u32,
        max_pending: u32,
        deadline: tokio::time::Instant,
    ) -> Result<Admission<'_>, Overflow> {
        if !self.try_take(max_requests) {
            if max_pending == 0 {
                return Err(Overflow::Requests);
            }
            if self.pending.fetch_add(1, Ordering::Relaxed) >= max_pending {
                self.pending.fetch_sub(1, Ordering::Relaxed);
                return Err(Overflow::Pending);
            }
            let _waiting = Waiting(self);
            loop {
                // Registered before the check, so that a slot freed in between still wakes us.
                let freed = self.freed.notified();
                tokio::pin!(freed);
                freed.as_mut().enable();
                if self.try_take(max_requests) {
                    break;
                }
                if tokio::time::timeout_at(deadline, freed).await.is_err() {
                    // Pass on a wake-up this request may have taken.
                    self.freed.notify_one();
                    return Err(Overflow::Waited);
                }
            }
        }
        Ok(Admission {
            breaker: self,
            retrying: false,
        })
    }
}

/// Counts a request as waiting until dropped.
struct Waiting<'b>(&'b Breaker);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request admitted by the circuit breaker; frees its slot when dropped.
pub struct Admission<'b> {
    breaker: &'b Breaker,
    /// Whether the request has made a retry (and counts in the breaker's `retrying`).
    retrying: bool,
}

impl Admission<'_> {
    /// Requests admitted, and of those the ones retrying other than this one.
    pub(super) fn others(&self) -> (u32, u32) {
        let retrying = self
            .breaker
            .retrying
            .load(Ordering::Relaxed)
            .saturating_sub(u32::from(self.retrying));
        (self.breaker.active.load(Ordering::Relaxed), retrying)
    }

    /// Counts this request as retrying from now on.
    pub(super) fn mark_retrying(&mut self) {
        if !self.retrying {
            self.retrying = true;
            self.breaker.retrying.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        let breaker = self.breaker;
        breaker.active.fetch_sub(1, Ordering::Relaxed);
        if self.retrying {
            breaker.retrying.fetch_sub(1, Ordering::Relaxed);
        }
        if breaker.pending.load(Ordering::Relaxed) > 0 {
            breaker.freed.notify_one();
        }
    }
}
