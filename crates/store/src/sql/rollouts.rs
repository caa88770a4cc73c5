//! Rollout rows: the SQL behind the store's rollout history.

use meridian_model::{
    ChangeKind, ChangeOp, RolloutControl, RolloutEvent, RolloutRecord, RolloutStatus,
};
use sqlx::{AnyConnection, AnyPool, Row};

use super::{current_version, now_secs, record, to_i64};
use crate::{Result, ServiceKey, StoreError};

/// Upserts `region`'s rollout of `rollout.version`; returns the revision of the change, or
/// `None` when the row already says the same.
pub(super) async fn put(
    conn: &mut AnyConnection,
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
    let recorded: Option<(String, String)> = sqlx::query_as(
        "SELECT status, events FROM rollouts \
         WHERE org = $1 AND app = $2 AND service = $3 AND version = $4 AND region = $5",
    )
    .bind(&key.org)
    .bind(&key.app)
    .bind(&key.name)
    .bind(version)
    .bind(region)
    .fetch_optional(&mut *conn)
    .await?;
    let (before, mut events) = match &recorded {
        Some((status, _)) if *status == text => return Ok(None),
        Some((status, events)) => (Some(parse_status(status)?), parse_events(events)?),
        None => (None, Vec::new()),
    };
    if let Some(event) = RolloutEvent::between(before.as_ref(), rollout) {
        RolloutEvent::append(&mut events, event);
    }
    let events = serde_json::to_string(&events)
        .map_err(|e| StoreError::Corrupt(format!("rollout events do not serialize: {e}")))?;
    let revision = record(
        conn,
        ChangeKind::Rollout,
        &format!("{key}/{region}"),
        ChangeOp::Put,
        Some(rollout.version),
    )
    .await?;
    sqlx::query(
        "INSERT INTO rollouts (org, app, service, version, region, status, events, recorded_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (org, app, service, version, region) DO UPDATE SET \
         status = excluded.status, events = excluded.events, recorded_at = excluded.recorded_at",
    )
    .bind(&key.org)
    .bind(&key.app)
    .bind(&key.name)
    .bind(version)
    .bind(region)
    .bind(text)
    .bind(events)
    .bind(now_secs())
    .execute(&mut *conn)
    .await?;
    Ok(Some(revision))
}

/// The rollouts of `key`, newest version first, then by region.
pub(super) async fn list(pool: &AnyPool, key: &ServiceKey) -> Result<Vec<RolloutRecord>> {
    let rows = sqlx::query(
        "SELECT region, status, events FROM rollouts WHERE org = $1 AND app = $2 AND service = $3 \
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
            let events: String = row.try_get("events")?;
            Ok(RolloutRecord {
                region: row.try_get("region")?,
                rollout: parse_status(&status)?,
                events: parse_events(&events)?,
            })
        })
        .collect()
}

fn parse_status(text: &str) -> Result<RolloutStatus> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("rollout status: {e}")))
}

fn parse_events(text: &str) -> Result<Vec<RolloutEvent>> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("rollout events: {e}")))
}

/// Sets or removes the control of `key`'s rollout; returns the revision of the change, or
/// `None` when nothing changes.
pub(super) async fn put_control(
    conn: &mut AnyConnection,
    key: &ServiceKey,
    control: Option<RolloutControl>,
) -> Result<Option<u64>> {
    if current_version(conn, key).await?.is_none() {
        return Err(StoreError::NotFound(format!("service `{key}`")));
    }
    if get_control(conn, key).await? == control {
        return Ok(None);
    }
    let op = if control.is_some() {
        ChangeOp::Put
    } else {
        ChangeOp::Delete
    };
    let version = control.map(|c| c.version);
    let revision = record(
        conn,
        ChangeKind::RolloutControl,
        &key.to_string(),
        op,
        version,
    )
    .await?;
    match control {
        Some(control) => {
            let text = serde_json::to_string(&control)
                .map_err(|e| StoreError::Corrupt(format!("rollout control: {e}")))?;
            sqlx::query(
                "INSERT INTO rollout_controls (org, app, service, control) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (org, app, service) DO UPDATE SET control = excluded.control",
            )
            .bind(&key.org)
            .bind(&key.app)
            .bind(&key.name)
            .bind(text)
            .execute(&mut *conn)
            .await?;
        }
        None => {
            sqlx::query(
                "DELETE FROM rollout_controls WHERE org = $1 AND app = $2 AND service = $3",
            )
            .bind(&key.org)
            .bind(&key.app)
            .bind(&key.name)
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(Some(revision))
}

/// The control of `key`'s rollout, if any.
pub(super) async fn get_control(
    conn: &mut AnyConnection,
    key: &ServiceKey,
) -> Result<Option<RolloutControl>> {
    let text: Option<String> = sqlx::query_scalar(
        "SELECT control FROM rollout_controls WHERE org = $1 AND app = $2 AND service = $3",
    )
    .bind(&key.org)
    .bind(&key.app)
    .bind(&key.name)
    .fetch_optional(conn)
    .await?;
    text.map(|t| {
        serde_json::from_str(&t).map_err(|e| StoreError::Corrupt(format!("rollout control: {e}")))
    })
    .transpose()
}
