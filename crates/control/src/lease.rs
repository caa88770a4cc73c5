//! The global control plane's lease: of several replicas on one database, the holder does the
//! work that must happen once (certificate orders and renewals, expiry marks, session ticket key
//! rotation, recording the regions' rollouts and rolling back failed ones); the others serve
//! the API and the federation xDS port alike and stand by.
//!
//! [`keep_lease`] tries to take or renew the lease every [`RENEW_EVERY`] for [`LEASE_TTL`]
//! (the database's clock), and says what it holds through a [`LeaseState`]: the [`Fence`] of
//! its current term, which the singleton work's writes carry so that the store refuses them
//! once the term is over. A holder that cannot renew (the database is away) stops believing it
//! holds the lease [`MARGIN`] before it expires; a holder killed without releasing it is
//! replaced within `LEASE_TTL + RENEW_EVERY`. With SQLite there is one replica, whose holder
//! name is fixed, so that it holds the lease at once, also after a restart.

use std::sync::Arc;
use std::time::Duration;

use meridian_store::{Fence, Store};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio::time::Instant;

/// The lease of the global control plane's singleton work.
pub const GLOBAL_LEASE: &str = "global";
/// How long a taken or renewed lease lasts.
pub const LEASE_TTL: Duration = Duration::from_secs(3);
/// How often the lease is renewed by its holder, and tried by the others.
pub const RENEW_EVERY: Duration = Duration::from_secs(1);
/// How long before its expiry a holder that could not renew stops acting as the holder.
pub const MARGIN: Duration = Duration::from_millis(500);
/// The holder name of the only replica a SQLite store has.
pub const SQLITE_HOLDER: &str = "the only replica (SQLite)";

/// Whether this replica holds the lease: the fence of its current term, or `None`. Cheap to
/// clone.
#[derive(Clone)]
pub struct LeaseState {
    current: watch::Receiver<Option<Fence>>,
    holder: Arc<str>,
}

impl LeaseState {
    /// The fence of the current term, if this replica holds the lease.
    pub fn fence(&self) -> Option<Fence> {
        self.current.borrow().clone()
    }

    /// This replica's name as a holder.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Waits until the lease is taken or lost here; `Err` once its keeper is gone.
    pub async fn changed(&mut self) -> Result<(), watch::error::RecvError> {
        self.current.changed().await
    }
}

/// The lease's metrics: whether it is held here, the token of the term, terms begun here.
#[derive(Clone)]
pub struct LeaseMetrics {
    held: Gauge,
    token: Gauge,
    taken: Counter,
}

impl LeaseMetrics {
    /// Registers the metrics in `registry`.
    pub fn new(registry: &mut Registry) -> LeaseMetrics {
        let metrics = LeaseMetrics {
            held: Gauge::default(),
            token: Gauge::default(),
            taken: Counter::default(),
        };
        registry.register(
            "meridian_control_lease_held",
            "Whether this replica holds the lease of the singleton work (1) or not (0)",
            metrics.held.clone(),
        );
        registry.register(
            "meridian_control_lease_token",
            "The fencing token of this replica's current term of the lease (0 when not held)",
            metrics.token.clone(),
        );
        registry.register(
            "meridian_control_lease_taken",
            "Terms of the lease this replica began",
            metrics.taken.clone(),
        );
        metrics
    }
}

/// The sending side of a [`LeaseState`], owned by [`keep_lease`].
pub struct LeaseKeeper {
    store: Arc<dyn Store>,
    current: watch::Sender<Option<Fence>>,
    holder: Arc<str>,
    metrics: LeaseMetrics,
}

impl LeaseKeeper {
    /// A keeper of [`GLOBAL_LEASE`] for `holder` on `store`, holding nothing yet, and the
    /// state it keeps.
    pub fn new(
        store: Arc<dyn Store>,
        holder: &str,
        metrics: LeaseMetrics,
    ) -> (Arc<LeaseKeeper>, LeaseState) {
        let (current, receiver) = watch::channel(None);
        let holder: Arc<str> = holder.into();
        let state = LeaseState {
            current: receiver,
            holder: holder.clone(),
        };
        let keeper = LeaseKeeper {
            store,
            current,
            holder,
            metrics,
        };
        (Arc::new(keeper), state)
    }

    /// Ends this replica's term now, if it holds the lease, so that another takes it at its
    /// next attempt instead of after the expiry (at shutdown).
    pub async fn release(&self) {
        let Some(fence) = self.current.send_replace(None) else {
            return;
        };
        self.show(None);
        match self.store.release_lease(&fence).await {
            Ok(()) => tracing::info!(token = fence.token, "released the lease"),
            Err(e) => tracing::warn!(error = %e, "could not release the lease; it expires"),
        }
    }

    /// Sets what this replica holds, logging a change of term.
    fn set(&self, fence: Option<Fence>) {
        let before = self.current.borrow().as_ref().map(|f| f.token);
        let after = fence.as_ref().map(|f| f.token);
        if before == after {
            return;
        }
        match after {
            Some(token) => {
                self.metrics.taken.inc();
                tracing::info!(token, holder = %self.holder,
                    "took the lease: this replica does the singleton work");
            }
            None => tracing::info!(holder = %self.holder,
                "lost the lease: another replica does the singleton work"),
        }
        self.show(after);
        self.current.send_replace(fence);
    }

    fn show(&self, token: Option<u64>) {
        self.metrics.held.set(i64::from(token.is_some()));
        self.metrics
            .token
            .set(token.map_or(0, |t| i64::try_from(t).unwrap_or(i64::MAX)));
    }
}

/// Takes and renews the lease until the plane stops (see the module's documentation).
pub async fn keep_lease(keeper: Arc<LeaseKeeper>) {
    let mut held_until: Option<Instant> = None;
    let mut failing = false;
    loop {
        let asked = Instant::now();
        let attempt = tokio::time::timeout(
            RENEW_EVERY,
            keeper
                .store
                .acquire_lease(GLOBAL_LEASE, &keeper.holder, LEASE_TTL),
        )
        .await;
        match attempt {
            Ok(Ok(fence)) => {
                if failing {
                    tracing::info!("the lease can be renewed again");
                    failing = false;
                }
                held_until = fence.is_some().then(|| asked + LEASE_TTL - MARGIN);
                keeper.set(fence);
            }
            Ok(Err(e)) => {
                if !failing {
                    tracing::warn!(error = %e, "the lease could not be renewed; retrying");
                    failing = true;
                }
            }
            Err(_elapsed) => {
                if !failing {
                    tracing::warn!(timeout = ?RENEW_EVERY, "renewing the lease took too long; retrying");
                    failing = true;
                }
            }
        }
        let mut next = asked + RENEW_EVERY;
        if let Some(until) = held_until {
            if Instant::now() >= until {
                held_until = None;
                keeper.set(None);
            } else {
                next = next.min(until);
            }
        }
        tokio::time::sleep_until(next).await;
        if held_until.is_some_and(|until| Instant::now() >= until) {
            held_until = None;
            keeper.set(None);
        }
    }
}
