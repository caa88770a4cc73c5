//! Domain claims: the SQL that keeps each public domain (and every wildcard covering it) with one
//! service across all orgs.

use sqlx::AnyConnection;

use super::Dialect;
use crate::{Result, ServiceKey, StoreError};

/// Refuses `domains` (of service `key`) if another service holds one of them or a claim that
/// overlaps it. Runs inside the writing transaction, serialized with every other write, which
/// makes the check and the claim one step. A wildcard claim looks at every claim below it (a scan of the claims
/// that end with its suffix); a host name only at itself and its covering wildcards (lookups
/// by key).
pub(super) async fn check(
    conn: &mut AnyConnection,
    key: &ServiceKey,
    domains: &[String],
) -> Result<()> {
    for (index, domain) in domains.iter().enumerate() {
        let covering = serde_json::to_string(&meridian_model::covering_wildcards(domain))
            .map_err(|e| StoreError::Corrupt(format!("domain list: {e}")))?;
        // `*.example.com` also overlaps every claim that ends with `.example.com`.
        let below = domain.strip_prefix('*').map(|suffix| format!("%{suffix}"));
        let sql = format!(
            "SELECT domain, org, app, service FROM domains \
             WHERE NOT (org = $1 AND app = $2 AND service = $3) \
               AND (domain = $4 OR domain IN (SELECT value FROM {covering}) \
                    OR ($6 IS NOT NULL AND domain LIKE $6)) \
             ORDER BY claimed_at LIMIT 1",
            covering = Dialect::of(conn).json_strings("$5"),
        );
        let holder: Option<(String, String, String, String)> = sqlx::query_as(&sql)
            .bind(&key.org)
            .bind(&key.app)
            .bind(&key.name)
            .bind(domain)
            .bind(covering)
            .bind(below)
            .fetch_optional(&mut *conn)
            .await?;
        if let Some((held, org, app, name)) = holder {
            return Err(StoreError::DomainTaken {
                index,
                domain: domain.clone(),
                held,
                holder: Box::new(ServiceKey { org, app, name }),
            });
        }
    }
    Ok(())
}

/// Makes `domains` the claims of `key` (whose row exists): drops the others it held, adds the
/// new ones, keeps the claim time of those it held already. Call [`check`] first.
pub(super) async fn claim(
    conn: &mut AnyConnection,
    key: &ServiceKey,
    domains: &[String],
    revision: u64,
) -> Result<()> {
    let list = serde_json::to_string(domains)
        .map_err(|e| StoreError::Corrupt(format!("domain list: {e}")))?;
    let dialect = Dialect::of(conn);
    let sql = format!(
        "DELETE FROM domains WHERE org = $1 AND app = $2 AND service = $3 \
         AND domain NOT IN (SELECT value FROM {})",
        dialect.json_strings("$4")
    );
    sqlx::query(&sql)
        .bind(&key.org)
        .bind(&key.app)
        .bind(&key.name)
        .bind(&list)
        .execute(&mut *conn)
        .await?;
    let sql = format!(
        "INSERT INTO domains (domain, org, app, service, claimed_at) \
         SELECT value, $1, $2, $3, $4 FROM {} WHERE true \
         ON CONFLICT (domain) DO NOTHING",
        dialect.json_strings("$5")
    );
    sqlx::query(&sql)
        .bind(&key.org)
        .bind(&key.app)
        .bind(&key.name)
        .bind(revision as i64)
        .bind(&list)
        .execute(&mut *conn)
        .await?;
    Ok(())
}
