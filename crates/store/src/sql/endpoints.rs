//! Endpoint rows: the SQL behind the store's endpoint methods.

use std::collections::BTreeMap;

use meridian_model::{ChangeKind, ChangeOp, Endpoint, EndpointHealth, EndpointInput};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::{current_version, now_secs, record};
use crate::{Result, ServiceKey, StoreError};

/// The columns `endpoint_from_row` reads.
pub(super) const COLUMNS: &str =
    "org, app, service, id, region, address, ports, health, updated_at";

fn parse_health(name: &str) -> Result<EndpointHealth> {
    Ok(match name {
        "healthy" => EndpointHealth::Healthy,
        "unhealthy" => EndpointHealth::Unhealthy,
        "draining" => EndpointHealth::Draining,
        other => {
            return Err(StoreError::Corrupt(format!(
                "unknown endpoint health `{other}`"
            )))
        }
    })
}

/// Reads one endpoint row selected with [`COLUMNS`].
pub(super) fn endpoint_from_row(row: &AnyRow) -> Result<Endpoint> {
    let ports: String = row.try_get("ports")?;
    let ports: BTreeMap<String, u32> = serde_json::from_str(&ports)
        .map_err(|e| StoreError::Corrupt(format!("endpoint ports: {e}")))?;
    Ok(Endpoint {
        org: row.try_get("org")?,
        app: row.try_get("app")?,
        service: row.try_get("service")?,
        id: row.try_get("id")?,
        region: row.try_get("region")?,
        address: row.try_get("address")?,
        ports,
        health: parse_health(row.try_get("health")?)?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// Inserts or replaces endpoint `id` of service `key` inside the write transaction `conn`, and
/// returns the revision and the stored endpoint.
pub(super) async fn put(
    conn: &mut AnyConnection,
    key: &ServiceKey,
    id: &str,
    input: &EndpointInput,
) -> Result<(u64, Endpoint)> {
    if current_version(conn, key).await?.is_none() {
        return Err(StoreError::NotFound(format!("service `{key}`")));
    }
    let change_key = format!("{key}/{id}");
    let revision = record(conn, ChangeKind::Endpoint, &change_key, ChangeOp::Put, None).await?;
    let ports =
        serde_json::to_string(&input.ports).map_err(|e| StoreError::Backend(Box::new(e)))?;
    let updated_at = now_secs();
    sqlx::query(
        "INSERT INTO endpoints (org, app, service, id, region, address, ports, health, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         ON CONFLICT (org, app, service, id) DO UPDATE SET region = excluded.region, \
         address = excluded.address, ports = excluded.ports, health = excluded.health, \
         updated_at = excluded.updated_at",
    )
    .bind(&key.org)
    .bind(&key.app)
    .bind(&key.name)
    .bind(id)
    .bind(&input.region)
    .bind(&input.address)
    .bind(&ports)
    .bind(input.health.as_str())
    .bind(updated_at)
    .execute(&mut *conn)
    .await?;
    let endpoint = Endpoint {
        org: key.org.clone(),
        app: key.app.clone(),
        service: key.name.clone(),
        id: id.to_string(),
        region: input.region.clone(),
        address: input.address.clone(),
        ports: input.ports.clone(),
        health: input.health,
        updated_at,
    };
    Ok((revision, endpoint))
}

/// Deletes endpoint `id` of service `key` inside the write transaction `conn`; returns the
/// revision.
pub(super) async fn delete(conn: &mut AnyConnection, key: &ServiceKey, id: &str) -> Result<u64> {
    let found: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM endpoints WHERE org = $1 AND app = $2 AND service = $3 AND id = $4",
    )
    .bind(&key.org)
    .bind(&key.app)
    .bind(&key.name)
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    if found.is_none() {
        return Err(StoreError::NotFound(format!("endpoint `{key}/{id}`")));
    }
    let change_key = format!("{key}/{id}");
    let revision = record(
        conn,
        ChangeKind::Endpoint,
        &change_key,
        ChangeOp::Delete,
        None,
    )
    .await?;
    sqlx::query("DELETE FROM endpoints WHERE org = $1 AND app = $2 AND service = $3 AND id = $4")
        .bind(&key.org)
        .bind(&key.app)
        .bind(&key.name)
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(revision)
}
