//! Secret rows: the SQL behind app and org secrets (one table each, one code path). Values
//! arrive and leave sealed.

use meridian_model::env::secret_references;
use meridian_model::{ChangeOp, Definition, SecretInfo, SecretOwner};
use sqlx::{AnyConnection, AnyPool, Row};

use super::{
    deployment_from_row, ensure_app, exists, now_secs, record, to_i64, to_u64, DEPLOYMENT_COLUMNS,
};
use crate::{Result, StoreError};

/// Where an owner's secrets are: the table, its owner columns, the condition selecting the
/// owner's rows (binds: [`Rows::owner`]) and the owner's values.
struct Rows<'a> {
    table: &'static str,
    columns: &'static str,
    filter: &'static str,
    owner: Vec<&'a str>,
}

impl<'a> Rows<'a> {
    fn of(owner: &'a SecretOwner) -> Self {
        match owner {
            SecretOwner::App { org, app } => Rows {
                table: "secrets",
                columns: "org, app",
                filter: "org = $1 AND app = $2",
                owner: vec![org, app],
            },
            SecretOwner::Org { org } => Rows {
                table: "org_secrets",
                columns: "org",
                filter: "org = $1",
                owner: vec![org],
            },
        }
    }

    /// `SELECT {what}` of the owner's secret (binds: [`Rows::with_name`]).
    fn select_one(&self, what: &str) -> String {
        format!(
            "SELECT {what} FROM {} WHERE {} AND {}",
            self.table,
            self.filter,
            self.name_is()
        )
    }

    /// The condition on the secret's name, whose value is bound after the owner's.
    fn name_is(&self) -> String {
        format!("name = ${}", self.owner.len() + 1)
    }

    /// The owner's values, then `name`.
    fn with_name<'n>(&self, name: &'n str) -> Vec<&'n str>
    where
        'a: 'n,
    {
        let mut binds = self.owner.clone();
        binds.push(name);
        binds
    }
}

/// Creates or replaces secret `name` of `owner` (an app is made when missing; the org must
/// exist) with the next version; returns its row and the revision of the change.
pub(super) async fn put(
    conn: &mut AnyConnection,
    owner: &SecretOwner,
    name: &str,
    sealed: &[u8],
) -> Result<(SecretInfo, u64)> {
    let org = owner.org_name();
    if !exists(conn, "SELECT 1 FROM orgs WHERE name = $1", &[org]).await? {
        return Err(StoreError::NotFound(format!("org `{org}`")));
    }
    if let SecretOwner::App { org, app } = owner {
        ensure_app(conn, org, app).await?;
    }
    let rows = Rows::of(owner);
    let now = now_secs();
    let sql = rows.select_one("version");
    let mut query = sqlx::query_scalar(&sql);
    for value in rows.with_name(name) {
        query = query.bind(value);
    }
    let before: Option<i64> = query.fetch_optional(&mut *conn).await?;
    let version = before.map_or(1, |v| to_u64(v) + 1);
    let (kind, key) = owner.change_key(name);
    let revision = record(conn, kind, &key, ChangeOp::Put, Some(version)).await?;
    // Binds: the owner's values, the name, version, sealed value and time.
    let values: Vec<String> = (1..=rows.owner.len() + 4)
        .map(|i| format!("${i}"))
        .collect();
    let sql = format!(
        "INSERT INTO {table} ({columns}, name, version, sealed_value, updated_at) \
         VALUES ({values}) ON CONFLICT ({columns}, name) DO UPDATE SET \
         version = excluded.version, sealed_value = excluded.sealed_value, \
         updated_at = excluded.updated_at",
        table = rows.table,
        columns = rows.columns,
        values = values.join(", "),
    );
    let mut query = sqlx::query(&sql);
    for value in rows.with_name(name) {
        query = query.bind(value);
    }
    query
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

/// The secrets of `owner`, by name, without their values.
pub(super) async fn list(pool: &AnyPool, owner: &SecretOwner) -> Result<Vec<SecretInfo>> {
    let rows = Rows::of(owner);
    let sql = format!(
        "SELECT name, version, updated_at FROM {} WHERE {} ORDER BY name",
        rows.table, rows.filter
    );
    let mut query = sqlx::query(&sql);
    for value in &rows.owner {
        query = query.bind(*value);
    }
    query
        .fetch_all(pool)
        .await?
        .iter()
        .map(|row| {
            Ok(SecretInfo {
                name: row.try_get("name")?,
                version: to_u64(row.try_get("version")?),
                updated_at: row.try_get("updated_at")?,
            })
        })
        .collect()
}

/// Secret `name` of `owner` with its sealed value, if it exists.
pub(super) async fn get(
    pool: &AnyPool,
    owner: &SecretOwner,
    name: &str,
) -> Result<Option<(SecretInfo, Vec<u8>)>> {
    let rows = Rows::of(owner);
    let sql = rows.select_one("version, sealed_value, updated_at");
    let mut query = sqlx::query(&sql);
    for value in rows.with_name(name) {
        query = query.bind(value);
    }
    let row = query.fetch_optional(pool).await?;
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

/// Deletes secret `name` of `owner`; returns the revision of the change and the current
/// definitions of the services that used it and now resolve their references to the org's
/// secret of that name (an app's secret that shadowed it), which the caller gives a new
/// version in the same transaction. Refused ([`StoreError::Conflict`] naming them) while
/// services use it and nothing else would resolve their references.
pub(super) async fn delete(
    conn: &mut AnyConnection,
    owner: &SecretOwner,
    name: &str,
) -> Result<(u64, Vec<Definition>)> {
    let rows = Rows::of(owner);
    if !exists(conn, &rows.select_one("1"), &rows.with_name(name)).await? {
        return Err(StoreError::NotFound(format!("secret `{name}` of {owner}")));
    }
    let users = users(conn, owner, name).await?;
    let org = owner.org_name();
    let fallback = match owner {
        SecretOwner::App { .. } => {
            let sql = "SELECT 1 FROM org_secrets WHERE org = $1 AND name = $2";
            exists(conn, sql, &[org, name]).await?
        }
        SecretOwner::Org { .. } => false,
    };
    if !users.is_empty() && !fallback {
        let names: Vec<String> = users
            .iter()
            .map(|d| format!("{}/{}", d.app, d.name))
            .collect();
        return Err(StoreError::Conflict(format!(
            "secret `{name}` of {owner} is in use by service(s) {}; \
             deploy them without it first",
            names.join(", ")
        )));
    }
    let (kind, key) = owner.change_key(name);
    let revision = record(conn, kind, &key, ChangeOp::Delete, None).await?;
    let sql = format!(
        "DELETE FROM {} WHERE {} AND {}",
        rows.table,
        rows.filter,
        rows.name_is()
    );
    let mut query = sqlx::query(&sql);
    for value in rows.with_name(name) {
        query = query.bind(value);
    }
    query.execute(&mut *conn).await?;
    Ok((revision, users))
}

/// Selects a reference `name` of a service of app `org/app` resolves: the app's secret, else
/// the org's (binds: org, app, name, org, name).
const RESOLVES: &str = "SELECT 1 FROM secrets WHERE org = $1 AND app = $2 AND name = $3 \
     UNION ALL SELECT 1 FROM org_secrets WHERE org = $4 AND name = $5";

/// Fails with [`StoreError::SecretMissing`] naming the first field of `definition` that
/// references a secret neither its app nor its org has.
pub(super) async fn check_references(
    conn: &mut AnyConnection,
    definition: &Definition,
) -> Result<()> {
    let (org, app) = (definition.org.as_str(), definition.app.as_str());
    for (field, name) in secret_references(definition) {
        if !exists(conn, RESOLVES, &[org, app, name, org, name]).await? {
            return Err(StoreError::SecretMissing {
                field,
                secret: name.to_owned(),
                app: format!("{org}/{app}"),
            });
        }
    }
    Ok(())
}

/// The current definitions of the services whose references to `name` resolve to `owner`'s
/// secret and that reference it: for an app's, the app's services; for an org's, the services
/// of its apps that have no secret of that name.
pub(super) async fn users(
    conn: &mut AnyConnection,
    owner: &SecretOwner,
    name: &str,
) -> Result<Vec<Definition>> {
    let (org, app, unshadowed) = match owner {
        SecretOwner::App { org, app } => (org, Some(app.as_str()), ""),
        SecretOwner::Org { org } => (
            org,
            None,
            "AND NOT EXISTS (SELECT 1 FROM secrets x \
             WHERE x.org = s.org AND x.app = s.app AND x.name = $3)",
        ),
    };
    let sql = format!(
        "SELECT {DEPLOYMENT_COLUMNS} FROM services s JOIN deployments d \
         ON d.org = s.org AND d.app = s.app AND d.service = s.name \
         AND d.version = s.current_version \
         WHERE s.org = $1 AND ($2 IS NULL OR s.app = $2) {unshadowed} \
         ORDER BY s.app, s.name"
    );
    let mut query = sqlx::query(&sql).bind(org).bind(app);
    if app.is_none() {
        query = query.bind(name);
    }
    let rows = query.fetch_all(conn).await?;
    let mut definitions = rows
        .iter()
        .map(|row| Ok(deployment_from_row(row)?.definition))
        .collect::<Result<Vec<_>>>()?;
    definitions.retain(|d| secret_references(d).iter().any(|(_, n)| *n == name));
    Ok(definitions)
}
