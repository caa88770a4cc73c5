//! Leases in the `leases` table. Times are the database's clock, so that replicas whose clocks
//! differ agree on when a lease expires. Taking or renewing a lease writes no change: it is not
//! desired state. A fenced write checks its fence inside its own transaction (see [`check`]).

use std::time::Duration;

use sqlx::{AnyConnection, AnyPool, Row};

use super::{to_u64, Dialect};
use crate::{Fence, LeaseInfo, Result, StoreError};

/// Takes lease `name` for `holder` for `ttl` if it is free or expired (the token grows by one),
/// or renews it if `holder` holds it (the token stays); `None` when another holds it.
pub(super) async fn acquire(
    pool: &AnyPool,
    dialect: Dialect,
    name: &str,
    holder: &str,
    ttl: Duration,
) -> Result<Option<Fence>> {
    let now = dialect.now_ms();
    let sql = format!(
        "INSERT INTO leases (name, holder, token, expires_at_ms) VALUES ($1, $2, 1, {now} + $3) \
         ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
             token = CASE WHEN leases.holder = excluded.holder AND leases.expires_at_ms > {now} \
                          THEN leases.token ELSE leases.token + 1 END, \
             expires_at_ms = excluded.expires_at_ms \
         WHERE leases.holder = excluded.holder OR leases.expires_at_ms <= {now} \
         RETURNING token"
    );
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    let token: Option<i64> = sqlx::query_scalar(&sql)
        .bind(name)
        .bind(holder)
        .bind(ttl_ms)
        .fetch_optional(pool)
        .await?;
    Ok(token.map(|token| Fence {
        lease: name.to_owned(),
        holder: holder.to_owned(),
        token: to_u64(token),
    }))
}

/// Lets `fence`'s lease expire now, if its term is still the current one, so that another
/// replica takes it at its next attempt.
pub(super) async fn release(pool: &AnyPool, fence: &Fence) -> Result<()> {
    sqlx::query(
        "UPDATE leases SET expires_at_ms = 0 WHERE name = $1 AND holder = $2 AND token = $3",
    )
    .bind(&fence.lease)
    .bind(&fence.holder)
    .bind(token(fence)?)
    .execute(pool)
    .await?;
    Ok(())
}

/// Lease `name`, if it was ever taken.
pub(super) async fn get(pool: &AnyPool, dialect: Dialect, name: &str) -> Result<Option<LeaseInfo>> {
    let sql = format!(
        "SELECT holder, token, expires_at_ms - {} AS left_ms FROM leases WHERE name = $1",
        dialect.now_ms()
    );
    let row = sqlx::query(&sql).bind(name).fetch_optional(pool).await?;
    row.map(|row| {
        let left_ms: i64 = row.try_get("left_ms")?;
        Ok(LeaseInfo {
            holder: row.try_get("holder")?,
            token: to_u64(row.try_get("token")?),
            expires_in: Duration::from_millis(to_u64(left_ms)),
        })
    })
    .transpose()
}

/// Fails with [`StoreError::Fenced`] unless `fence`'s term is current and unexpired. Called in
/// a write transaction: on PostgreSQL the lease row stays share-locked until it ends, so the
/// lease cannot change hands between this check and the commit (a takeover waits for it).
pub(super) async fn check(conn: &mut AnyConnection, fence: &Fence) -> Result<()> {
    let dialect = Dialect::of(conn);
    let sql = format!(
        "SELECT 1 FROM leases WHERE name = $1 AND holder = $2 AND token = $3 \
           AND expires_at_ms > {}{}",
        dialect.now_ms(),
        dialect.share_lock()
    );
    let current = sqlx::query(&sql)
        .bind(&fence.lease)
        .bind(&fence.holder)
        .bind(token(fence)?)
        .fetch_optional(conn)
        .await?
        .is_some();
    if current {
        Ok(())
    } else {
        Err(StoreError::Fenced(fence.clone()))
    }
}

/// Records with the change at `revision` (the write in progress) that it was made for
/// `fence`'s term.
pub(super) async fn mark(conn: &mut AnyConnection, revision: u64, fence: &Fence) -> Result<()> {
    sqlx::query("UPDATE changes SET fence_token = $1 WHERE revision = $2")
        .bind(token(fence)?)
        .bind(i64::try_from(revision).unwrap_or(i64::MAX))
        .execute(conn)
        .await?;
    Ok(())
}

fn token(fence: &Fence) -> Result<i64> {
    i64::try_from(fence.token).map_err(|_| StoreError::Fenced(fence.clone()))
}
