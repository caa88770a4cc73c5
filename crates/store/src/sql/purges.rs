//! Purge rows: the SQL behind the bounded, gap-free history of purges of the edges' caches.

use meridian_model::{ChangeKind, ChangeOp, Purge, PURGE_HISTORY};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, AnyPool, Row};

use super::{exists, now_secs, record, to_i64, to_u64};
use crate::{NewPurge, Result, StoreError};

/// Records `purge` as the next in sequence and drops the oldest beyond [`PURGE_HISTORY`];
/// returns it as stored and the revision of the change.
pub(super) async fn add(conn: &mut AnyConnection, purge: &NewPurge) -> Result<(Purge, u64)> {
    let (org, app) = (purge.org.as_str(), purge.app.as_str());
    let sql = "SELECT 1 FROM apps WHERE org = $1 AND name = $2";
    if !exists(conn, sql, &[org, app]).await? {
        return Err(StoreError::NotFound(format!("app `{org}/{app}`")));
    }
    let last: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(sequence), 0) FROM purges")
        .fetch_one(&mut *conn)
        .await?;
    let sequence = to_u64(last) + 1;
    let revision = record(
        conn,
        ChangeKind::Purge,
        &format!("{org}/{app}"),
        ChangeOp::Put,
        Some(sequence),
    )
    .await?;
    let corrupt = |e: serde_json::Error| StoreError::Corrupt(format!("purge: {e}"));
    let stored = Purge {
        sequence,
        org: org.to_owned(),
        app: app.to_owned(),
        target: purge.target.clone(),
        created_at: now_secs(),
    };
    sqlx::query(
        "INSERT INTO purges (sequence, org, app, target, created_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(to_i64(sequence)?)
    .bind(org)
    .bind(app)
    .bind(serde_json::to_string(&stored.target).map_err(corrupt)?)
    .bind(stored.created_at)
    .execute(&mut *conn)
    .await?;
    sqlx::query("DELETE FROM purges WHERE sequence <= $1")
        .bind(to_i64(sequence.saturating_sub(PURGE_HISTORY))?)
        .execute(&mut *conn)
        .await?;
    Ok((stored, revision))
}

/// Up to `limit` kept purges with a sequence greater than `after`, oldest first.
pub(super) async fn after(pool: &AnyPool, after: u64, limit: u32) -> Result<Vec<Purge>> {
    let rows = sqlx::query(
        "SELECT sequence, org, app, target, created_at FROM purges \
         WHERE sequence > $1 ORDER BY sequence LIMIT $2",
    )
    .bind(i64::try_from(after).unwrap_or(i64::MAX))
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?;
    rows.iter().map(purge_from_row).collect()
}

fn purge_from_row(row: &AnyRow) -> Result<Purge> {
    let corrupt = |e: serde_json::Error| StoreError::Corrupt(format!("purge: {e}"));
    let target: String = row.try_get("target")?;
    Ok(Purge {
        sequence: to_u64(row.try_get("sequence")?),
        org: row.try_get("org")?,
        app: row.try_get("app")?,
        target: serde_json::from_str(&target).map_err(corrupt)?,
        created_at: row.try_get("created_at")?,
    })
}
