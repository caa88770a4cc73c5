//! Following the change feed: in order, from any revision, without gaps.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use meridian_model::Change;

use crate::{Result, Store, StoreError};

/// How many changes one read of the feed fetches.
const BATCH: u32 = 1024;

/// A cursor over the change feed that yields every change after a starting revision, in order,
/// waiting for new writes when it has caught up.
pub struct Watch {
    store: Arc<dyn Store>,
    after: u64,
    buffer: VecDeque<Change>,
    latest: tokio::sync::watch::Receiver<u64>,
}

impl Watch {
    /// Starts a watch that yields changes with revision greater than `after`.
    pub fn new(store: Arc<dyn Store>, after: u64) -> Self {
        // Subscribe before the first read so that no commit falls between them unseen.
        let latest = store.subscribe();
        Watch {
            store,
            after,
            buffer: VecDeque::new(),
            latest,
        }
    }

    /// The next change, waiting for one if the watch has caught up (with the store's latest
    /// revision: the feed is read only once there is something new to read).
    pub async fn next(&mut self) -> Result<Change> {
        loop {
            if let Some(change) = self.buffer.pop_front() {
                self.after = change.revision;
                return Ok(change);
            }
            let after = self.after;
            self.latest
                .wait_for(|rev| *rev > after)
                .await
                .map_err(|_| StoreError::Closed)?;
            let batch = self.store.changes_after(self.after, BATCH).await?;
            self.buffer.extend(batch);
        }
    }
}

/// Up to `limit` changes after `after`; if there are none yet, waits up to `timeout` for the next
/// commit. Returns an empty list when the time runs out. The feed is read only when the store's
/// latest revision is past `after` (or `timeout` is zero).
pub async fn wait_for_changes(
    store: &dyn Store,
    after: u64,
    limit: u32,
    timeout: Duration,
) -> Result<Vec<Change>> {
    let mut latest = store.subscribe();
    if !timeout.is_zero() && *latest.borrow_and_update() <= after {
        let waited = tokio::time::timeout(timeout, latest.wait_for(|rev| *rev > after)).await;
        match waited {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return Err(StoreError::Closed),
            Err(_elapsed) => return Ok(Vec::new()),
        }
    }
    store.changes_after(after, limit).await
}
