//! Rollout rows: the SQL behind the store's rollout history.

use meridian_model::{ChangeKind, ChangeOp, RolloutRecord, RolloutStatus};
use sqlx::{Row, SqliteConnection, SqlitePool};

use super::{current_version, now_secs, record, to_i64};
use crate::{Result, ServiceKey, StoreError};

/// Upserts `region`'s rollout of `rollout.version`; returns the revision of the change, or
/// `None` when the row already says the same.
pub(super) async fn put(
    conn: &mut SqliteConnection,
    key: &ServiceKey,
    region: &str,
    rollout: &RolloutStatus,
) -> Result<Option<u64>> {
    if current_version(conn, key).await?.is_none() {
        return Err(StoreError::NotFound(format!("service `{key}`")));
    }
    let text = serde_json::to_string(rollout)
        .map_err(|e| StoreError::Corrupt(format!("rollout does not serialize: {e}")))?;
    let version = to_i64(rollout.version)?;
    let recorded: Option<String> = sqlx::query_scalar(
        "SELECT status FROM rollouts \
         WHERE org = ? AND app = ? AND service = ? AND version = ? AND region = ?",
    )
    .bind(&key.org)
    .bind(&key.app)
    .bind(&key.name)
    .bind(version)
    .bind(region)
    .fetch_optional(&mut *conn)
    .await?;
    if recorded.as_deref() == Some(text.as_str()) {
        return Ok(None);
    }
    let revision = record(
        conn,
        ChangeKind::Rollout,
        &format!("{key}/{region}"),
        ChangeOp::Put,
        Some(rollout.version),
    )
    .await?;
    sqlx::query(
        "INSERT INTO rollouts (org, app, service, version, region, status, recorded_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?) \
         ON CONFLICT (org, app, service, version, region) DO UPDATE SET \
         status = excluded.status, recorded_at = excluded.recorded_at",
    )
    .bind(&key.org)
    .bind(&key.app)
    .bind(&key.name)
    .bind(version)
    .bind(region)
    .bind(text)
    .bind(now_secs())
    .execute(&mut *conn)
    .await?;
    Ok(Some(revision))
}

/// The rollouts of `key`, newest version first, then by region.
pub(super) async fn list(pool: &SqlitePool, key: &ServiceKey) -> Result<Vec<RolloutRecord>> {
    let rows = sqlx::query(
        "SELECT region, status FROM rollouts WHERE org = ? AND app = ? AND service = ? \
         ORDER BY version DESC, region",
    )
    .bind(&key.org)
    .bind(&key.app)
    .bind(&key.name)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            let status: String = row.try_get("status")?;
            Ok(RolloutRecord {
                region: row.try_get("region")?,
                rollout: serde_json::from_str(&status)
                    .map_err(|e| StoreError::Corrupt(format!("rollout status: {e}")))?,
            })
        })
        .collect()
}
