//! Certificates of claimed domains: the rows that live as long as their domain's claim.

use meridian_model::{CertificateSource, CertificateState, ChangeKind, ChangeOp};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, AnyPool, Row};

use super::{now_secs, record};
use crate::{CertificateRecord, DomainClaim, Result, ServiceFilter, ServiceKey, StoreError};

/// The columns [`claim_from_row`] reads: the claim, then its certificate (all NULL without one).
const COLUMNS: &str = "d.domain, d.org, d.app, d.service, c.source, c.state, c.issuer, \
     c.not_before, c.not_after, c.chain_pem, c.sealed_key, c.last_error, c.next_attempt, \
     c.attempts, c.updated_at";

/// Claimed domains of the services `filter` matches, by domain, with their certificates.
pub(super) async fn list_domains(
    pool: &AnyPool,
    filter: &ServiceFilter,
) -> Result<Vec<DomainClaim>> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM domains d LEFT JOIN certificates c ON c.domain = d.domain \
         WHERE ($1 IS NULL OR d.org = $1) AND ($2 IS NULL OR d.app = $2) \
           AND ($3 IS NULL OR d.service = $3) \
         ORDER BY d.domain"
    ))
    .bind(filter.org.as_deref())
    .bind(filter.app.as_deref())
    .bind(filter.name.as_deref())
    .fetch_all(pool)
    .await?;
    rows.iter().map(claim_from_row).collect()
}

/// One claimed domain with its certificate.
pub(super) async fn get_domain(pool: &AnyPool, domain: &str) -> Result<Option<DomainClaim>> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM domains d LEFT JOIN certificates c ON c.domain = d.domain \
         WHERE d.domain = $1"
    ))
    .bind(domain)
    .fetch_optional(pool)
    .await?;
    row.as_ref().map(claim_from_row).transpose()
}

/// Writes `certificate` (its domain must be claimed) and records the change; returns its
/// revision.
pub(super) async fn put(conn: &mut AnyConnection, certificate: &CertificateRecord) -> Result<u64> {
    let claimed = sqlx::query("SELECT 1 FROM domains WHERE domain = $1")
        .bind(&certificate.domain)
        .fetch_optional(&mut *conn)
        .await?
        .is_some();
    if !claimed {
        return Err(StoreError::NotFound(format!(
            "claimed domain `{}`",
            certificate.domain
        )));
    }
    let revision = record(
        conn,
        ChangeKind::Certificate,
        &certificate.domain,
        ChangeOp::Put,
        None,
    )
    .await?;
    sqlx::query(
        "INSERT INTO certificates (domain, source, state, issuer, not_before, not_after, \
             chain_pem, sealed_key, last_error, next_attempt, attempts, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
         ON CONFLICT (domain) DO UPDATE SET source = excluded.source, state = excluded.state, \
             issuer = excluded.issuer, not_before = excluded.not_before, \
             not_after = excluded.not_after, chain_pem = excluded.chain_pem, \
             sealed_key = excluded.sealed_key, last_error = excluded.last_error, \
             next_attempt = excluded.next_attempt, attempts = excluded.attempts, \
             updated_at = excluded.updated_at",
    )
    .bind(&certificate.domain)
    .bind(certificate.source.as_str())
    .bind(certificate.state.as_str())
    .bind(&certificate.issuer)
    .bind(certificate.not_before)
    .bind(certificate.not_after)
    .bind(&certificate.chain_pem)
    .bind(&certificate.sealed_key)
    .bind(&certificate.last_error)
    .bind(certificate.next_attempt)
    .bind(i64::from(certificate.attempts))
    .bind(now_secs())
    .execute(&mut *conn)
    .await?;
    Ok(revision)
}

fn claim_from_row(row: &AnyRow) -> Result<DomainClaim> {
    let domain: String = row.try_get("domain")?;
    let source: Option<String> = row.try_get("source")?;
    let certificate = match source {
        None => None,
        Some(source) => {
            let state: String = row.try_get("state")?;
            Some(CertificateRecord {
                source: CertificateSource::parse(&source).ok_or_else(|| {
                    StoreError::Corrupt(format!("certificate source `{source}` of `{domain}`"))
                })?,
                state: CertificateState::parse(&state).ok_or_else(|| {
                    StoreError::Corrupt(format!("certificate state `{state}` of `{domain}`"))
                })?,
                issuer: row.try_get("issuer")?,
                not_before: row.try_get("not_before")?,
                not_after: row.try_get("not_after")?,
                chain_pem: row.try_get("chain_pem")?,
                sealed_key: row.try_get("sealed_key")?,
                last_error: row.try_get("last_error")?,
                next_attempt: row.try_get("next_attempt")?,
                attempts: u32::try_from(row.try_get::<i64, _>("attempts")?).unwrap_or(u32::MAX),
                updated_at: row.try_get("updated_at")?,
                domain: domain.clone(),
            })
        }
    };
    Ok(DomainClaim {
        service: ServiceKey {
            org: row.try_get("org")?,
            app: row.try_get("app")?,
            name: row.try_get("service")?,
        },
        domain,
        certificate,
    })
}
