//! What a store keeps in memory to spare the database round trips that every API request and
//! every follower of the feed would otherwise make: the latest changes of the feed, and the
//! tokens and regions (asked for by each request: its caller, the regions a definition may
//! name).
//!
//! - **The latest changes** ([`Memory::changes_after`]): a window of consecutive revisions,
//!   filled by this store's own applies as they commit, by the changes PostgreSQL notifies (in
//!   commit order: those of other stores on the database) and by what is read from the
//!   database.
//!   A read is answered from it when it holds the next change and everything up to the latest
//!   revision the store knows committed; any other goes to the database. The window only ever
//!   holds consecutive committed revisions, so the feed stays gapless and in order.
//! - **Tokens and regions**: kept once read, and forgotten when a change of their kind (a
//!   token, an org, whose deletion takes its tokens, or a region) is committed: at once for the
//!   writes of this store, and when the feed brings it for the writes of other stores on the
//!   same database ([`follow`]: as soon as this store learns of the revision, within
//!   PostgreSQL's catch-up period when a notification is lost). While the feed cannot be read,
//!   nothing is served from memory.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use meridian_model::{Change, ChangeKind, Region, TokenInfo};
use tokio::sync::watch;

use crate::Result;

/// Most changes the window holds.
const WINDOW: usize = 8192;
/// Most tokens kept (the map starts over when full).
const TOKENS: usize = 4096;
/// Most changes [`follow`] reads at once.
const FOLLOW_PAGE: u32 = 1024;
/// How long [`follow`] waits before it reads the feed again after a failure.
const FOLLOW_RETRY: Duration = Duration::from_millis(200);

/// The store's memory; see the module.
#[derive(Default)]
pub(super) struct Memory(Mutex<Inner>);

#[derive(Default)]
struct Inner {
    /// Consecutive committed changes, oldest first.
    window: VecDeque<Change>,
    /// Tokens by the hash of their secret.
    tokens: HashMap<String, TokenInfo>,
    /// Every region, by name, once read.
    regions: Option<Vec<Region>>,
    /// One more at each forgetting, so that a read begun before it does not keep what it read.
    generation: u64,
    /// Whether [`follow`] keeps up with the feed (else tokens and regions are not served).
    following: bool,
}

/// What a read of tokens or regions began with: keep what it read only if nothing was
/// forgotten meanwhile.
#[derive(Clone, Copy)]
pub(super) struct Generation(Option<u64>);

impl Memory {
    /// A memory that serves tokens and regions once [`follow`] runs.
    pub(super) fn new() -> Arc<Memory> {
        Arc::new(Memory::default())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while the lock was held leaves plain data behind: carry on with it.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Up to `limit` changes after `after` from the window, if it holds the next one and
    /// every change up to `latest` (the latest revision the store knows committed), so that it
    /// answers as the database would.
    pub(super) fn changes_after(&self, after: u64, limit: u32, latest: u64) -> Option<Vec<Change>> {
        let inner = self.lock();
        let first = inner.window.front()?.revision;
        let last = inner.window.back()?.revision;
        let next = after.checked_add(1)?;
        if next < first || after >= last || last < latest {
            return None;
        }
        let skip = usize::try_from(next - first).ok()?;
        Some(
            inner
                .window
                .iter()
                .skip(skip)
                .take(limit as usize)
                .cloned()
                .collect(),
        )
    }

    /// Adds `changes` (consecutive committed revisions, oldest first) to the window: what
    /// follows its end is appended; after a gap the window starts again with them.
    pub(super) fn remember(&self, changes: &[Change]) {
        let (Some(first), Some(last)) = (changes.first(), changes.last()) else {
            return;
        };
        let mut inner = self.lock();
        let end = inner.window.back().map(|c| c.revision);
        match end {
            Some(end) if last.revision <= end => return,
            Some(end) if first.revision <= end + 1 => {
                let skip = usize::try_from(end + 1 - first.revision).unwrap_or(usize::MAX);
                inner.window.extend(changes.iter().skip(skip).cloned());
            }
            _ => {
                inner.window.clear();
                inner.window.extend(changes.iter().cloned());
            }
        }
        let excess = inner.window.len().saturating_sub(WINDOW);
        inner.window.drain(..excess);
    }

    /// Forgets the tokens and regions that `changes` may have changed.
    pub(super) fn forget_changed(&self, changes: &[Change]) {
        let (tokens, regions) = changes.iter().fold((false, false), |(t, r), c| {
            (
                t || matches!(c.kind, ChangeKind::Token | ChangeKind::Org),
                r || c.kind == ChangeKind::Region,
            )
        });
        if tokens || regions {
            self.forget(tokens, regions);
        }
    }

    /// Forgets the tokens, the regions, or both.
    pub(super) fn forget(&self, tokens: bool, regions: bool) {
        let mut inner = self.lock();
        inner.generation += 1;
        if tokens {
            inner.tokens.clear();
        }
        if regions {
            inner.regions = None;
        }
    }

    /// Forgets everything (the database's contents were replaced).
    pub(super) fn clear(&self) {
        self.forget(true, true);
        self.lock().window.clear();
    }

    fn following(&self, following: bool) {
        let mut inner = self.lock();
        if inner.following && !following {
            inner.generation += 1;
            inner.tokens.clear();
            inner.regions = None;
        }
        inner.following = following;
    }

    /// The token whose secret hashes to `hash`, if kept; else what a read from the database
    /// begins with.
    pub(super) fn token(&self, hash: &str) -> Result<TokenInfo, Generation> {
        let inner = self.lock();
        match inner.tokens.get(hash) {
            Some(token) if inner.following => Ok(token.clone()),
            _ => Err(Generation(inner.following.then_some(inner.generation))),
        }
    }

    /// Keeps `token`, read since `generation`, unless something was forgotten meanwhile.
    pub(super) fn keep_token(&self, generation: Generation, hash: &str, token: &TokenInfo) {
        let mut inner = self.lock();
        if generation.0 == Some(inner.generation) {
            if inner.tokens.len() >= TOKENS {
                inner.tokens.clear();
            }
            inner.tokens.insert(hash.to_owned(), token.clone());
        }
    }

    /// Every region, if kept; else what a read from the database begins with.
    pub(super) fn regions(&self) -> Result<Vec<Region>, Generation> {
        let inner = self.lock();
        match &inner.regions {
            Some(regions) if inner.following => Ok(regions.clone()),
            _ => Err(Generation(inner.following.then_some(inner.generation))),
        }
    }

    /// Keeps `regions`, read since `generation`, unless something was forgotten meanwhile.
    pub(super) fn keep_regions(&self, generation: Generation, regions: &[Region]) {
        let mut inner = self.lock();
        if generation.0 == Some(inner.generation) {
            inner.regions = Some(regions.to_vec());
        }
    }
}

/// Reads the feed as the store learns of new revisions (from `from` on, with `read`: the
/// store's own reading of the feed) and forgets the tokens and regions the changes touch;
/// while a read fails, nothing is served from memory. Ends when the store closes.
pub(super) async fn follow<F, R>(
    memory: Arc<Memory>,
    mut latest: watch::Receiver<u64>,
    from: u64,
    read: F,
) where
    F: Fn(u64, u32) -> R,
    R: std::future::Future<Output = Result<Vec<Change>>>,
{
    let mut seen = from;
    memory.following(true);
    loop {
        if latest.wait_for(|revision| *revision > seen).await.is_err() {
            return;
        }
        match read(seen, FOLLOW_PAGE).await {
            Ok(changes) => {
                memory.forget_changed(&changes);
                seen = changes.last().map_or(seen, |c| c.revision);
                memory.following(true);
            }
            Err(e) => {
                tracing::debug!(error = %e, "reading the feed for the store's memory failed");
                memory.following(false);
                tokio::time::sleep(FOLLOW_RETRY).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_model::ChangeOp;

    fn change(revision: u64) -> Change {
        Change {
            revision,
            kind: ChangeKind::Service,
            key: format!("o/a/s{revision}"),
            op: ChangeOp::Put,
            version: Some(1),
            committed_at_us: 0,
        }
    }

    fn changes(revisions: std::ops::RangeInclusive<u64>) -> Vec<Change> {
        revisions.map(change).collect()
    }

    fn revisions(changes: Option<Vec<Change>>) -> Option<Vec<u64>> {
        changes.map(|c| c.iter().map(|c| c.revision).collect())
    }

    #[test]
    fn the_window_answers_only_reads_whose_next_change_it_holds() {
        let memory = Memory::new();
        assert!(memory.changes_after(0, 10, 0).is_none());
        memory.remember(&changes(3..=5));
        assert_eq!(
            revisions(memory.changes_after(2, 10, 5)),
            Some(vec![3, 4, 5])
        );
        assert_eq!(revisions(memory.changes_after(3, 1, 5)), Some(vec![4]));
        assert!(memory.changes_after(1, 10, 5).is_none(), "2 is not held");
        assert!(
            memory.changes_after(5, 10, 5).is_none(),
            "nothing after 5 is held"
        );
        assert!(
            memory.changes_after(2, 10, 6).is_none(),
            "6 is committed, not held"
        );
        // Overlapping and following runs extend it; a run after a gap starts it again.
        memory.remember(&changes(4..=7));
        assert_eq!(
            revisions(memory.changes_after(4, 10, 7)),
            Some(vec![5, 6, 7])
        );
        memory.remember(&changes(9..=9));
        assert!(memory.changes_after(5, 10, 9).is_none());
        assert_eq!(revisions(memory.changes_after(8, 10, 9)), Some(vec![9]));
    }

    #[test]
    fn a_read_begun_before_a_forgetting_keeps_nothing() {
        let memory = Memory::new();
        let token = TokenInfo {
            id: "t".into(),
            org: None,
            label: "l".into(),
            created_at: 0,
        };
        // Not following the feed: nothing is kept.
        let Err(generation) = memory.token("h") else {
            panic!("empty")
        };
        memory.keep_token(generation, "h", &token);
        assert!(memory.token("h").is_err());
        memory.following(true);
        let Err(generation) = memory.token("h") else {
            panic!("empty")
        };
        memory.forget(true, false);
        memory.keep_token(generation, "h", &token);
        assert!(memory.token("h").is_err(), "read before the forgetting");
        let Err(generation) = memory.token("h") else {
            panic!("empty")
        };
        memory.keep_token(generation, "h", &token);
        assert_eq!(memory.token("h").ok(), Some(token));
        let mut org = change(10);
        org.kind = ChangeKind::Org;
        memory.forget_changed(&[org]);
        assert!(memory.token("h").is_err(), "an org's change forgets tokens");
    }
}
