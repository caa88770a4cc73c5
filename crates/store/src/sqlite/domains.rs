//! Domain claims: the SQL that keeps each public domain (and every wildcard covering it) with one
//! service across all orgs.

use sqlx::SqliteConnection;

use crate::{Result, ServiceKey, StoreError};

/// Refuses `domains` (of service `key`) if another service holds one of them or a claim that
/// overlaps it. Runs inside the writing transaction, whose single writer makes the check and
/// the claim one step. A wildcard claim looks at every claim below it (a scan of the claims
/// that end with its suffix); a host name only at itself and its covering wildcards (lookups
/// by key).
pub(super) async fn check(
    conn: &mut SqliteConnection,
    key: &ServiceKey,
    domains: &[String],
) -> Result<()> {
    for (index, domain) in domains.iter().enumerate() {
        let covering = serde_json::to_string(&meridian_model::covering_wildcards(domain))
            .map_err(|e| StoreError::Corrupt(format!("domain list: {e}")))?;
        // `*.example.com` also overlaps every claim that ends with `.example.com`.
        let below = domain.strip_prefix('*').map(|suffix| format!("%{suffix}"));
        let holder: Option<(String, String, String, String)> = sqlx::query_as(
            "SELECT domain, org, app, service FROM domains \
             WHERE NOT (org = ?1 AND app = ?2 AND service = ?3) \
               AND (domain = ?4 OR domain IN (SELECT value FROM json_each(?5)) \
                    OR (?6 IS NOT NULL AND domain LIKE ?6)) \
             ORDER BY claimed_at LIMIT 1",
        )
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
    conn: &mut SqliteConnection,
    key: &ServiceKey,
    domains: &[String],
    revision: u64,
) -> Result<()> {
    let list = serde_json::to_string(domains)
        .map_err(|e| StoreError::Corrupt(format!("domain list: {e}")))?;
    sqlx::query(
        "DELETE FROM domains WHERE org = ? AND app = ? AND service = ? \
         AND domain NOT IN (SELECT value FROM json_each(?))",
    )
    .bind(&key.org)
    .bind(&key.app)
    .bind(&key.name)
    .bind(&list)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO domains (domain, org, app, service, claimed_at) \
         SELECT value, ?, ?, ?, ? FROM json_each(?) WHERE true \
         ON CONFLICT (domain) DO NOTHING",
    )
    .bind(&key.org)
    .bind(&key.app)
    .bind(&key.name)
    .bind(revision as i64)
    .bind(&list)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
