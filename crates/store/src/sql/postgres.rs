//! The shared backend: a PostgreSQL database that several control planes may use at once.
//!
//! Writes are serialized by a row lock on the revision counter, taken first in every write
//! transaction (see [`Dialect::write_lock`] for why that makes revision order commit order and
//! the feed gapless). Every change inserted into the feed notifies channel [`CHANNEL`] (a
//! trigger, delivered at commit, in commit order), so a store learns of the writes of every
//! other store on the database. The notification carries the change, which the store keeps in
//! its window of recent changes before it tells its watchers, so that they read it from
//! memory; watchers still read the feed by revision, so a lost notification costs only time. As
//! notifications sent while the listening connection is down are lost, the store also re-reads
//! the latest revision at once when that connection is lost and every [`CATCH_UP_INTERVAL`],
//! so a lost notification delays a watcher by at most that, and never makes it miss a change.
//!
//! When the database cannot be reached, operations fail with [`crate::StoreError::Unavailable`] after
//! at most [`ACQUIRE_TIMEOUT`]; the pools reconnect by themselves once it is back.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::AnyPool;
use tokio::sync::watch;

use meridian_model::{Change, ChangeOp};
use serde::Deserialize;

use super::{parse_kind, publish, to_u64, Dialect, Memory, SqlStore};
use crate::Result;

/// The channel every change is notified on (payload: the change as JSON; from stores of
/// earlier versions, its revision); see the migrations.
pub(super) const CHANNEL: &str = "meridian_changes";
/// The `application_name` of the connection that listens on [`CHANNEL`].
const LISTENER_NAME: &str = "meridian-listener";
/// Most connections writing at once (writes are serialized by the database: more would only
/// wait there).
const WRITERS: u32 = 2;
/// Most connections reading at once.
const READERS: u32 = 8;
/// How long an operation waits for a connection (when the database is down: for it to come
/// back) before it fails with [`crate::StoreError::Unavailable`].
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);
/// How often the latest revision is re-read, in case a notification was lost.
const CATCH_UP_INTERVAL: Duration = Duration::from_secs(1);
/// How long the listener waits before it tries again to reach an unreachable database.
const LISTEN_RETRY: Duration = Duration::from_millis(500);

/// Connects to the database at `url`, brings its schema up to date and starts following the
/// writes of every store on it.
pub(super) async fn connect(url: &str) -> Result<SqlStore> {
    sqlx::any::install_default_drivers();
    let options = AnyConnectOptions::from_str(url)?;
    let writer = pool(&options, WRITERS).await?;
    sqlx::migrate!("./migrations/postgres").run(&writer).await?;
    let reader = pool(&options, READERS).await?;
    let listener_pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_lazy_with(PgConnectOptions::from_str(url)?.application_name(LISTENER_NAME));
    let mut listener = PgListener::connect_with(&listener_pool).await?;
    listener.listen(CHANNEL).await?;
    // Read after listening, so that no commit falls between them unseen.
    let revision = latest_revision(&reader).await?;
    tracing::info!(revision, "opened PostgreSQL store");
    let latest = Arc::new(watch::Sender::new(revision));
    let memory = Memory::new();
    let tasks = vec![
        tokio::spawn(listen(
            listener,
            reader.clone(),
            memory.clone(),
            latest.clone(),
        ))
        .abort_handle(),
        tokio::spawn(catch_up_periodically(reader.clone(), latest.clone())).abort_handle(),
    ];
    Ok(SqlStore::new(
        writer,
        reader,
        Dialect::Postgres,
        latest,
        memory,
        tasks,
    ))
}

/// A pool of up to `connections` connections to the database of `options`.
async fn pool(options: &AnyConnectOptions, connections: u32) -> Result<AnyPool> {
    Ok(AnyPoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(options.clone())
        .await?)
}

/// The revision of the last committed write.
async fn latest_revision(reader: &AnyPool) -> Result<u64> {
    let revision: i64 = sqlx::query_scalar("SELECT revision FROM revision_counter WHERE id = 1")
        .fetch_one(reader)
        .await?;
    Ok(to_u64(revision))
}

/// Reads the latest revision and tells watchers, if it is newer than what they know.
async fn catch_up(reader: &AnyPool, latest: &watch::Sender<u64>) {
    match latest_revision(reader).await {
        Ok(revision) => publish(latest, revision),
        Err(e) => tracing::debug!(error = %e, "reading the latest revision failed; will retry"),
    }
}

/// Keeps each change notified on [`CHANNEL`] in `memory` and tells watchers of its revision;
/// catches up when the listening connection was lost (it reconnects by itself).
async fn listen(
    mut listener: PgListener,
    reader: AnyPool,
    memory: Arc<Memory>,
    latest: Arc<watch::Sender<u64>>,
) {
    let mut failing = false;
    loop {
        match listener.try_recv().await {
            Ok(Some(notification)) => match notified(notification.payload()) {
                Some(Notified::Change(change)) => {
                    // Kept before watchers hear of it, so that they read it from memory.
                    let revision = change.revision;
                    crate::trace::stage("notified", revision, revision);
                    memory.remember(std::slice::from_ref(&change));
                    publish(&latest, revision);
                }
                Some(Notified::Revision(revision)) => {
                    crate::trace::stage("notified", revision, revision);
                    publish(&latest, revision);
                }
                None => tracing::warn!(
                    payload = notification.payload(),
                    "a change notification that is neither a change nor a revision; ignored"
                ),
            },
            Ok(None) => {
                tracing::info!("the connection listening for changes was lost; catching up");
                catch_up(&reader, &latest).await;
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "listening for changes failed; retrying");
                }
                failing = true;
                tokio::time::sleep(LISTEN_RETRY).await;
                continue;
            }
        }
        if failing {
            tracing::info!("listening for changes again");
            failing = false;
            catch_up(&reader, &latest).await;
        }
    }
}

/// What a notification on [`CHANNEL`] says.
#[derive(Debug, PartialEq)]
enum Notified {
    /// A committed change.
    Change(Change),
    /// Only that a revision was committed (from a store of an earlier version).
    Revision(u64),
}

/// A change as its notification carries it (see the migrations).
#[derive(Deserialize)]
struct Payload {
    revision: i64,
    kind: String,
    key: String,
    op: String,
    version: Option<i64>,
    committed_at_us: i64,
}

/// What `payload` says, or `None` when it is neither a change nor a revision.
fn notified(payload: &str) -> Option<Notified> {
    if let Ok(revision) = payload.parse::<u64>() {
        return Some(Notified::Revision(revision));
    }
    let payload: Payload = serde_json::from_str(payload).ok()?;
    Some(Notified::Change(Change {
        revision: u64::try_from(payload.revision).ok()?,
        kind: parse_kind(&payload.kind).ok()?,
        key: payload.key,
        op: match payload.op.as_str() {
            "put" => ChangeOp::Put,
            "delete" => ChangeOp::Delete,
            _ => return None,
        },
        version: payload.version.map(to_u64),
        committed_at_us: payload.committed_at_us,
    }))
}

/// Re-reads the latest revision every [`CATCH_UP_INTERVAL`], so that a lost notification
/// delays watchers by at most that.
async fn catch_up_periodically(reader: AnyPool, latest: Arc<watch::Sender<u64>>) {
    let mut ticks = tokio::time::interval(CATCH_UP_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        catch_up(&reader, &latest).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_model::ChangeKind;

    #[test]
    fn a_notification_carries_a_change_or_a_bare_revision() {
        let change = r#"{"revision":7,"kind":"service","key":"o/a/s","op":"put","version":3,"committed_at_us":12}"#;
        assert_eq!(
            notified(change),
            Some(Notified::Change(Change {
                revision: 7,
                kind: ChangeKind::Service,
                key: "o/a/s".into(),
                op: ChangeOp::Put,
                version: Some(3),
                committed_at_us: 12,
            }))
        );
        let delete = r#"{"revision":8,"kind":"org","key":"o","op":"delete","version":null,"committed_at_us":13}"#;
        assert!(matches!(notified(delete), Some(Notified::Change(c)) if c.op == ChangeOp::Delete));
        assert_eq!(notified("9"), Some(Notified::Revision(9)));
        assert_eq!(
            notified(
                r#"{"revision":7,"kind":"nonsense","key":"k","op":"put","version":null,"committed_at_us":1}"#
            ),
            None
        );
        assert_eq!(notified("junk"), None);
    }
}
