//! The cache's disk tier on the proxy's side: lookups run on tokio's blocking threads, and
//! writes, file deletions and purge numbers on a thread of the tier's own, in the order they
//! were asked for (a purge's files are deleted before its number is recorded). Writes wait
//! in a bounded queue; past it they are dropped (the response stays in memory).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use http::HeaderMap;
use meridian_cache::{CacheKey, DiskTier, Object};

/// Most writes waiting for the tier's thread.
const MAX_QUEUED_WRITES: usize = 256;

/// Work for the tier's thread.
enum Job {
    /// Writes a response unless a purge came since the epoch.
    Write(CacheKey, Arc<Object>, u64),
    /// Deletes the files of records purged.
    Delete(Vec<String>),
    /// Records the last purge applied.
    Applied(u64),
}

/// The disk tier of a proxy's cache (see the module's documentation).
#[derive(Debug)]
pub struct DiskCache {
    tier: Arc<DiskTier>,
    jobs: mpsc::Sender<Job>,
    queued: Arc<AtomicUsize>,
}

impl DiskCache {
    /// Works `tier` from a thread of its own, which ends when this is dropped.
    pub fn new(tier: DiskTier) -> std::io::Result<DiskCache> {
        let tier = Arc::new(tier);
        let (jobs, work) = mpsc::channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let (worker, count) = (Arc::clone(&tier), Arc::clone(&queued));
        std::thread::Builder::new()
            .name("cache-disk".into())
            .spawn(move || run(&worker, &work, &count))?;
        Ok(DiskCache { tier, jobs, queued })
    }

    /// The tier.
    pub fn tier(&self) -> &DiskTier {
        &self.tier
    }

    /// The record stored for `key` that a request with `request` fields selects, with the
    /// epoch it was read in (see [`DiskTier::lookup`]).
    pub async fn lookup(&self, key: &CacheKey, request: &HeaderMap) -> Option<(Object, u64)> {
        let (tier, key, request) = (Arc::clone(&self.tier), key.clone(), request.clone());
        tokio::task::spawn_blocking(move || tier.lookup(&key, &request))
            .await
            .ok()
            .flatten()
    }

    /// Writes `object` for `key` later, unless the queue is full or a purge comes first.
    pub fn write(&self, key: &CacheKey, object: &Arc<Object>) {
        if self.queued.fetch_add(1, Ordering::SeqCst) >= MAX_QUEUED_WRITES {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        let job = Job::Write(key.clone(), Arc::clone(object), self.tier.epoch());
        if self.jobs.send(job).is_err() {
            self.queued.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Deletes the files of purged records (`names`, from a purge of the tier) later.
    pub fn delete(&self, names: Vec<String>) {
        if !names.is_empty() {
            // The thread lives as long as this.
            let _ = self.jobs.send(Job::Delete(names));
        }
    }

    /// Records `number` as the last purge applied, after the deletions asked for before.
    pub fn applied(&self, number: u64) {
        let _ = self.jobs.send(Job::Applied(number));
    }
}

/// The tier's thread: does `work` in order until its sender is dropped.
fn run(tier: &DiskTier, work: &mpsc::Receiver<Job>, queued: &AtomicUsize) {
    for job in work {
        match job {
            Job::Write(key, object, epoch) => {
                queued.fetch_sub(1, Ordering::SeqCst);
                if let Err(error) = tier.write(&key, &object, epoch) {
                    tracing::warn!(%error, %key, "a response could not be written to the cache's disk tier");
                }
            }
            Job::Delete(names) => tier.delete(&names),
            Job::Applied(number) => {
                if let Err(error) = tier.record_applied(number) {
                    tracing::warn!(%error, number, "the last purge applied could not be recorded on disk");
                }
            }
        }
    }
}
