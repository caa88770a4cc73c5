//! What a control plane waits for before it is ready: named parts (say, "the regional
//! deployments published"), each done once. `/readyz` answers 503 naming the parts still
//! waited for; whoever must not act before the plane is ready (its xDS server) watches
//! [`Readiness::ready`]. A plane may add lines to `/readyz` that say what it does beyond
//! being ready ([`Readiness::describe_with`]: a global replica, whether it holds the lease).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

/// The parts a plane still waits for. Cheap to clone (shared). Once every part is done it
/// stays ready.
#[derive(Clone)]
pub struct Readiness(Arc<Inner>);

/// What a plane says of itself on `/readyz`, one or more lines.
type Describe = Arc<dyn Fn() -> String + Send + Sync>;

struct Inner {
    waiting: Mutex<BTreeSet<&'static str>>,
    ready: watch::Sender<bool>,
    describe: Mutex<Option<Describe>>,
}

impl Default for Readiness {
    /// Ready at once: waits for nothing.
    fn default() -> Self {
        Readiness::waiting_for([])
    }
}

impl Readiness {
    /// Waits for `parts`, each until [`Readiness::done`] names it; ready at once if none.
    pub fn waiting_for(parts: impl IntoIterator<Item = &'static str>) -> Readiness {
        let waiting: BTreeSet<&'static str> = parts.into_iter().collect();
        let ready = watch::Sender::new(waiting.is_empty());
        Readiness(Arc::new(Inner {
            waiting: Mutex::new(waiting),
            ready,
            describe: Mutex::new(None),
        }))
    }

    /// `part` is done (again: nothing changes). Returns whether this made the plane ready.
    pub fn done(&self, part: &'static str) -> bool {
        let mut waiting = self
            .0
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !waiting.remove(part) || !waiting.is_empty() {
            return false;
        }
        drop(waiting);
        tracing::info!(last = part, "ready");
        self.0.ready.send_replace(true);
        true
    }

    /// The parts still waited for, in order.
    pub fn waiting(&self) -> Vec<&'static str> {
        let waiting = self
            .0
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        waiting.iter().copied().collect()
    }

    /// Makes `/readyz` add what `describe` says (one or more lines, each ending with a newline)
    /// after its first line.
    pub fn describe_with(&self, describe: impl Fn() -> String + Send + Sync + 'static) {
        *self
            .0
            .describe
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(describe));
    }

    /// What the plane says of itself (see [`Readiness::describe_with`]); empty if nothing.
    pub fn description(&self) -> String {
        let describe = self
            .0
            .describe
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        describe.map(|describe| describe()).unwrap_or_default()
    }

    /// A receiver that becomes true once every part is done.
    pub fn ready(&self) -> watch::Receiver<bool> {
        self.0.ready.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_once_every_part_is_done_and_for_good() {
        let readiness = Readiness::waiting_for(["store", "reports"]);
        let ready = readiness.ready();
        assert!(!*ready.borrow());
        assert!(!readiness.done("store"));
        assert!(!readiness.done("store"), "a part done twice counts once");
        assert_eq!(readiness.waiting(), ["reports"]);
        assert!(!*ready.borrow());
        assert!(readiness.done("reports"));
        assert!(*ready.borrow());
        assert!(readiness.waiting().is_empty());
        assert!(!readiness.done("reports"));
        assert!(*Readiness::default().ready().borrow());
    }
}
