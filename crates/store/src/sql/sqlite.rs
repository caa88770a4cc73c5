//! The embedded backend: SQLite in one file, in WAL mode.
//!
//! Writes go through a pool of exactly one connection, so they are serialized and commit in
//! revision order; reads use a separate pool of read-only connections and never block writes.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{AnyPool, ConnectOptions, Executor, SqlitePool};
use tokio::sync::watch;

use super::{to_u64, Dialect, Memory, SqlStore};
use crate::Result;

/// Most read connections open at once.
const READERS: u32 = 4;
/// How often written WAL frames are copied back into the database file.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
/// What every connection sets: WAL mode, each commit flushed to disk before it is acknowledged
/// (`synchronous = FULL`: an acknowledged write survives a power loss, not only a crash of the
/// process; applies that arrive together share one commit, see [`super::applies`]), a
/// statement waits 10 s for a lock before failing, and checkpoints run on their own connection
/// (see [`checkpoint_in_background`]), not inside whichever commit happens to cross the
/// threshold: that would stall that commit.
const PRAGMAS: &str = "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
     PRAGMA busy_timeout = 10000; PRAGMA wal_autocheckpoint = 0;";

/// Opens (creating if missing) the database at `path` and brings its schema up to date.
pub(super) async fn open(path: &Path) -> Result<SqlStore> {
    sqlx::any::install_default_drivers();
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .foreign_keys(true);
    let writer = pool(&options, 1).await?;
    sqlx::migrate!("./migrations/sqlite").run(&writer).await?;
    let reader = pool(&options.clone().read_only(true), READERS).await?;
    let revision: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(revision), 0) FROM changes")
        .fetch_one(&reader)
        .await?;
    tracing::info!(path = %path.display(), revision, "opened SQLite store");
    let latest = Arc::new(watch::Sender::new(to_u64(revision)));
    // A checkpoint under heavy writes may take seconds; that is expected, not a slow query.
    let checkpointer = SqlitePoolOptions::new()
        .max_connections(1)
        .after_connect(|conn, _| set_pragmas(conn))
        .connect_with(options.log_slow_statements(log::LevelFilter::Debug, CHECKPOINT_INTERVAL))
        .await?;
    tokio::spawn(checkpoint_in_background(checkpointer, latest.subscribe()));
    Ok(SqlStore::new(
        writer,
        reader,
        Dialect::Sqlite,
        latest,
        Memory::new(),
        Vec::new(),
    ))
}

/// A pool of up to `connections` connections opened with `options` and [`PRAGMAS`].
async fn pool(options: &SqliteConnectOptions, connections: u32) -> Result<AnyPool> {
    let any = AnyConnectOptions::from_url(&options.to_url_lossy())?;
    Ok(AnyPoolOptions::new()
        .max_connections(connections)
        .after_connect(|conn, _| set_pragmas(conn))
        .connect_with(any)
        .await?)
}

/// Sets [`PRAGMAS`] on a new connection.
fn set_pragmas<'c, C>(
    conn: &'c mut C,
) -> Pin<Box<dyn Future<Output = sqlx::Result<()>> + Send + 'c>>
where
    C: Send,
    for<'e> &'e mut C: Executor<'e>,
{
    Box::pin(async move { conn.execute(PRAGMAS).await.map(drop) })
}

/// Copies committed WAL frames into the database file once a second while there are writes, without
/// blocking writers (a passive checkpoint). Ends when the store is dropped.
async fn checkpoint_in_background(pool: SqlitePool, mut latest: watch::Receiver<u64>) {
    loop {
        tokio::time::sleep(CHECKPOINT_INTERVAL).await;
        match latest.has_changed() {
            Err(_closed) => break,
            Ok(false) => continue,
            Ok(true) => latest.mark_unchanged(),
        }
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&pool)
            .await
        {
            tracing::warn!(error = %e, "WAL checkpoint failed; will retry");
        }
    }
    pool.close().await;
}
