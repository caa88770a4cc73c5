//! Secret rows: the SQL behind an app's secrets. Values arrive and leave sealed.

use meridian_model::env::secret_references;
use meridian_model::{ChangeKind, ChangeOp, Definition, SecretInfo};
use sqlx::{Row, SqliteConnection, SqlitePool};

use super::{
    deployment_from_row, ensure_app, exists, now_secs, record, to_i64, to_u64, DEPLOYMENT_COLUMNS,
};
use crate::{Result, StoreError};

/// Creates or replaces secret `name` of `org/app` (the app is made when missing; the org must
/// exist) with the next version; returns its row and the revision of the change.
pub(super) async fn put(
    conn: &mut SqliteConnection,
    org: &str,
    app: &str,
    name: &str,
    sealed: &[u8],
) -> Result<(SecretInfo, u64)> {
    if !exists(conn, "SELECT 1 FROM orgs WHERE name = ?", &[org]).await? {
        return Err(StoreError::NotFound(format!("org `{org}`")));
    }
    ensure_app(conn, org, app).await?;
    let now = now_secs();
    let before: Option<i64> =
        sqlx::query_scalar("SELECT version FROM secrets WHERE org = ? AND app = ? AND name = ?")
            .bind(org)
            .bind(app)
            .bind(name)
            .fetch_optional(&mut *conn)
            .await?;
    let version = before.map_or(1, |v| to_u64(v) + 1);
    let key = format!("{org}/{app}/{name}");
    let revision = record(conn, ChangeKind::Secret, &key, ChangeOp::Put, Some(version)).await?;
    sqlx::query(
        "INSERT INTO secrets (org, app, name, version, sealed_value, updated_at) \
         VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (org, app, name) DO UPDATE SET \
         version = excluded.version, sealed_value = excluded.sealed_value, \
         updated_at = excluded.updated_at",
    )
    .bind(org)
    .bind(app)
    .bind(name)
    .bind(to_i64(version)?)
    .bind(sealed)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    let info = SecretInfo {
        name: name.to_owned(),
        version,
        updated_at: now,
    };
    Ok((info, revision))
}

/// The secrets of `org/app`, by name, without their values.
pub(super) async fn list(pool: &SqlitePool, org: &str, app: &str) -> Result<Vec<SecretInfo>> {
    let rows = sqlx::query(
        "SELECT name, version, updated_at FROM secrets WHERE org = ? AND app = ? ORDER BY name",
    )
    .bind(org)
    .bind(app)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(SecretInfo {
                name: row.try_get("name")?,
                version: to_u64(row.try_get("version")?),
                updated_at: row.try_get("updated_at")?,
            })
        })
        .collect()
}

/// Secret `name` of `org/app` with its sealed value, if it exists.
pub(super) async fn get(
    pool: &SqlitePool,
    org: &str,
    app: &str,
    name: &str,
) -> Result<Option<(SecretInfo, Vec<u8>)>> {
    let row = sqlx::query(
        "SELECT version, sealed_value, updated_at FROM secrets \
         WHERE org = ? AND app = ? AND name = ?",
    )
    .bind(org)
    .bind(app)
    .bind(name)
    .fetch_optional(pool)
    .await?;
    row.map(|row| {
        let info = SecretInfo {
            name: name.to_owned(),
            version: to_u64(row.try_get("version")?),
            updated_at: row.try_get("updated_at")?,
        };
        Ok((info, row.try_get("sealed_value")?))
    })
    .transpose()
}

/// Deletes secret `name` of `org/app`, unless the current version of one of the app's services
/// references it ([`StoreError::Conflict`] naming them); returns the revision of the change.
pub(super) async fn delete(
    conn: &mut SqliteConnection,
    org: &str,
    app: &str,
    name: &str,
) -> Result<u64> {
    let sql = "SELECT 1 FROM secrets WHERE org = ? AND app = ? AND name = ?";
    if !exists(conn, sql, &[org, app, name]).await? {
        return Err(StoreError::NotFound(format!(
            "secret `{name}` of app `{org}/{app}`"
        )));
    }
    let users: Vec<String> = users(conn, org, app, name)
        .await?
        .into_iter()
        .map(|d| d.name)
        .collect();
    if !users.is_empty() {
        return Err(StoreError::Conflict(format!(
            "secret `{name}` is in use by service(s) {} of app `{org}/{app}`; \
             deploy them without it first",
            users.join(", ")
        )));
    }
    let key = format!("{org}/{app}/{name}");
    let revision = record(conn, ChangeKind::Secret, &key, ChangeOp::Delete, None).await?;
    sqlx::query("DELETE FROM secrets WHERE org = ? AND app = ? AND name = ?")
        .bind(org)
        .bind(app)
        .bind(name)
        .execute(&mut *conn)
        .await?;
    Ok(revision)
}

/// Fails with [`StoreError::SecretMissing`] naming the first field of `definition` that
/// references a secret its app does not have.
pub(super) async fn check_references(
    conn: &mut SqliteConnection,
    definition: &Definition,
) -> Result<()> {
    let sql = "SELECT 1 FROM secrets WHERE org = ? AND app = ? AND name = ?";
    for (field, name) in secret_references(definition) {
        if !exists(conn, sql, &[&definition.org, &definition.app, name]).await? {
            return Err(StoreError::SecretMissing {
                field,
                secret: name.to_owned(),
                app: format!("{}/{}", definition.org, definition.app),
            });
        }
    }
    Ok(())
}

/// The current definitions of the services of `org/app` that reference secret `name`.
pub(super) async fn users(
    conn: &mut SqliteConnection,
    org: &str,
    app: &str,
    name: &str,
) -> Result<Vec<Definition>> {
    let mut definitions = current_definitions(conn, org, app).await?;
    definitions.retain(|d| secret_references(d).iter().any(|(_, n)| *n == name));
    Ok(definitions)
}

/// The current definitions of the services of `org/app`.
async fn current_definitions(
    conn: &mut SqliteConnection,
    org: &str,
    app: &str,
) -> Result<Vec<Definition>> {
    let rows = sqlx::query(&format!(
        "SELECT {DEPLOYMENT_COLUMNS} FROM services s JOIN deployments d \
         ON d.org = s.org AND d.app = s.app AND d.service = s.name \
         AND d.version = s.current_version \
         WHERE s.org = ? AND s.app = ?"
    ))
    .bind(org)
    .bind(app)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|row| Ok(deployment_from_row(row)?.definition))
        .collect()
}
