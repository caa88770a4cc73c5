//! The global control plane's side of purging the edges' caches. The purges the store keeps
//! (the newest `meridian_model::PURGE_HISTORY`, numbered without gaps) are held in the xDS
//! cache as `meridian.v1.CachePurge` resources, `edge/purge/<number>`, which every edge
//! follows. A new purge puts one resource and removes the one that left the history: each
//! connected edge is sent that one purge, and an edge that resumes is sent what it lacks.
//!
//! For each new purge, the acknowledgements of the edges connected then are awaited (at most
//! [`PURGE_ACK_WAIT`]) and recorded in [`PurgeAcks`], for the API's answer.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::google::protobuf::Any;
use meridian_api::{PurgeAcks, Readiness, PURGE_ACK_WAIT};
use meridian_model::{ChangeKind, EdgeAcks, Purge, PurgeTarget, PURGE_HISTORY};
use meridian_store::{wait_for_changes, Store, StoreError};
use meridian_xds::meridian::{purge_name, CachePurge, CACHE_PURGE, EDGE_NAMESPACE, PURGE_PREFIX};
use meridian_xds::{Cache, Delivery, Update};
use prost::Message;

/// The readiness part [`publish_purges`] does once the store's purges are in the cache.
pub const PURGES_PUBLISHED: &str = "the cache purges published";

/// Most changes, and most purges, read at once.
const FEED_PAGE: u32 = 1024;
/// Longest wait for a change before looking again.
const FEED_WAIT: Duration = Duration::from_secs(60);

/// Where the publisher puts what it reads, and tells what it did.
pub struct PurgeSinks {
    /// The xDS cache the edges follow.
    pub cache: Arc<Cache>,
    /// Where the edges' acknowledgements of each new purge are recorded.
    pub acks: PurgeAcks,
    /// Told [`PURGES_PUBLISHED`] once the store's purges are in the cache.
    pub readiness: Readiness,
}

/// Publishes the store's purges into the cache, then each new one, until the store closes or
/// fails (logged: the supervisor starts it again, which publishes everything again).
pub async fn publish_purges(store: Arc<dyn Store>, sinks: &PurgeSinks) {
    if let Err(e) = publish_then_follow(&*store, sinks).await {
        tracing::warn!(error = %e, "purges: reading the store failed; edges keep what they have");
    }
}

async fn publish_then_follow(store: &dyn Store, sinks: &PurgeSinks) -> Result<(), StoreError> {
    let mut revision = store.revision().await?;
    let mut newest = publish_all(store, &sinks.cache).await?;
    sinks.readiness.done(PURGES_PUBLISHED);
    sinks.acks.publishing();
    loop {
        let changes = match wait_for_changes(store, revision, FEED_PAGE, FEED_WAIT).await {
            Err(StoreError::Closed) => return Ok(()),
            changes => changes?,
        };
        let Some(last) = changes.last() else {
            continue;
        };
        revision = last.revision;
        if changes.iter().any(|c| c.kind == ChangeKind::Purge) {
            newest = publish_new(store, sinks, newest).await?;
        }
    }
}

/// Puts every purge the store keeps into the cache and removes those it holds beyond them;
/// the newest number (0 when there is none).
async fn publish_all(store: &dyn Store, cache: &Cache) -> Result<u64, StoreError> {
    let kept = u32::try_from(PURGE_HISTORY).unwrap_or(u32::MAX);
    let purges = store.purges_after(0, kept).await?;
    let names: BTreeSet<String> = purges.iter().map(|p| cache_name(p.sequence)).collect();
    let prefix = format!("{EDGE_NAMESPACE}{PURGE_PREFIX}");
    let gone = cache
        .names(CACHE_PURGE, &prefix)
        .into_iter()
        .filter(|name| !names.contains(name))
        .collect();
    let newest = purges.last().map_or(0, |p| p.sequence);
    let count = purges.len();
    let put = purges
        .iter()
        .map(|p| (cache_name(p.sequence), resource(p)))
        .collect();
    cache.apply(CACHE_PURGE, Update { put, remove: gone });
    tracing::info!(purges = count, newest, "purges published for the edges");
    Ok(newest)
}

/// Puts each purge newer than `newest` into the cache with the removal of the one that left
/// the history, and awaits the edges' acknowledgements of it; the newest number now.
async fn publish_new(
    store: &dyn Store,
    sinks: &PurgeSinks,
    mut newest: u64,
) -> Result<u64, StoreError> {
    loop {
        let purges = store.purges_after(newest, FEED_PAGE).await?;
        let Some(last) = purges.last() else {
            return Ok(newest);
        };
        newest = last.sequence;
        for purge in &purges {
            let dropped = purge.sequence.checked_sub(PURGE_HISTORY).filter(|n| *n > 0);
            let update = Update {
                put: vec![(cache_name(purge.sequence), resource(purge))],
                remove: dropped.map(cache_name).into_iter().collect(),
            };
            let delivery = sinks.cache.apply_tracked(CACHE_PURGE, update);
            tracing::debug!(
                sequence = purge.sequence,
                edges = delivery.pending(),
                "purge sent"
            );
            tokio::spawn(record_acks(delivery, purge.sequence, sinks.acks.clone()));
        }
    }
}

/// Records how the edges took purge `sequence` once all that owed it acknowledged it or
/// [`PURGE_ACK_WAIT`] passed.
async fn record_acks(delivery: Delivery, sequence: u64, acks: PurgeAcks) {
    let all = tokio::time::timeout(PURGE_ACK_WAIT, delivery.acknowledged()).await;
    let tally = delivery.tally();
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    let edges = EdgeAcks {
        connected: count(tally.owed),
        applied: count(tally.acknowledged),
    };
    if all.is_err() {
        tracing::warn!(
            sequence,
            connected = edges.connected,
            applied = edges.applied,
            "not every connected edge applied a purge in time"
        );
    }
    acks.record(sequence, edges);
}

/// The cache name of purge `sequence` (edges only).
fn cache_name(sequence: u64) -> String {
    format!("{EDGE_NAMESPACE}{}", purge_name(sequence))
}

/// `purge` as the edges read it.
fn resource(purge: &Purge) -> Any {
    let mut message = CachePurge {
        sequence: purge.sequence,
        org: purge.org.clone(),
        app: purge.app.clone(),
        ..CachePurge::default()
    };
    match &purge.target {
        PurgeTarget::Url(url) => message.url = url.clone(),
        PurgeTarget::Tag(tag) => message.tag = tag.clone(),
        PurgeTarget::All => message.all = true,
    }
    Any {
        type_url: CACHE_PURGE.to_owned(),
        value: message.encode_to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use meridian_store::{NewPurge, SqlStore};

    use super::*;

    fn all() -> NewPurge {
        NewPurge {
            org: "acme".into(),
            app: "shop".into(),
            target: PurgeTarget::All,
        }
    }

    #[tokio::test]
    async fn the_cache_holds_the_stores_history_and_each_new_purge_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let sqlite = SqlStore::open_sqlite(&dir.path().join("meridian.db")).await;
        let store: Arc<dyn Store> = Arc::new(sqlite.unwrap());
        store.create_org("acme").await.unwrap();
        store.create_app("acme", "shop").await.unwrap();
        store.add_purge(&all()).await.unwrap();
        let sinks = Arc::new(PurgeSinks {
            cache: Cache::new(),
            acks: PurgeAcks::default(),
            readiness: Readiness::waiting_for([PURGES_PUBLISHED]),
        });
        let publisher = tokio::spawn({
            let (store, sinks) = (store.clone(), sinks.clone());
            async move { publish_purges(store, &sinks).await }
        });
        let mut ready = sinks.readiness.ready();
        ready.wait_for(|ready| *ready).await.unwrap();
        let prefix = format!("{EDGE_NAMESPACE}{PURGE_PREFIX}");
        assert_eq!(sinks.cache.names(CACHE_PURGE, &prefix), [cache_name(1)]);
        // More than the history holds: the oldest leaves the cache as the newest comes.
        for _ in 0..PURGE_HISTORY {
            store.add_purge(&all()).await.unwrap();
        }
        let newest = PURGE_HISTORY + 1;
        let wait = Duration::from_secs(60);
        let nobody = EdgeAcks {
            connected: 0,
            applied: 0,
        };
        assert_eq!(sinks.acks.wait(newest, wait).await, Some(nobody));
        let names = sinks.cache.names(CACHE_PURGE, &prefix);
        assert_eq!(names.len() as u64, PURGE_HISTORY);
        assert_eq!(names.first(), Some(&cache_name(2)));
        let last = sinks.cache.get(CACHE_PURGE, &cache_name(newest)).unwrap();
        let message = CachePurge::decode(last.resource.value.as_slice()).unwrap();
        assert_eq!((message.sequence, message.all), (newest, true));
        publisher.abort();
    }
}
