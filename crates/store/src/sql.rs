//! The SQL backends, SQLite and PostgreSQL: one implementation of the [`Store`] on sqlx's `Any`
//! driver, so that both follow the same rules by construction. What differs is kept small:
//! opening ([`sqlite`], [`postgres`]: pools, migrations, background tasks) and a few statements
//! ([`Dialect`]: how a revision is taken, how a JSON list is read, how writers are serialized).
//!
//! Every write is one transaction on the writer pool, serialized (SQLite: one writer
//! connection; PostgreSQL: a lock taken first in every write transaction), so that checks and
//! writes are one step and revisions commit in order; applies that arrive together share one
//! ([`applies`]: group commit). Reads use a separate pool, and what every request or every
//! follower of the feed would read again (the latest changes, tokens, regions) is answered from
//! memory while the feed says it is current ([`memory`]).

use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use meridian_model::{
    App, Change, ChangeKind, ChangeOp, Definition, Deployment, DeploymentOrigin, Endpoint,
    EndpointInput, Org, Purge, Region, RolloutControl, RolloutRecord, RolloutStatus, SecretInfo,
    SecretOwner, ServiceSummary, TokenInfo,
};
use sqlx::any::AnyRow;
use sqlx::{Any, AnyConnection, AnyPool, Row, Transaction};
use tokio::sync::watch;
use tokio::task::AbortHandle;

mod applies;
mod backup;
mod certificates;
mod dialect;
mod domains;
mod endpoints;
mod known;
mod leases;
mod memory;
mod pending;
mod postgres;
mod purges;
mod rollouts;
mod secrets;
mod sqlite;
mod states;

use self::dialect::Dialect;
use self::memory::Memory;
use crate::{
    Applied, CertificateRecord, DomainClaim, Fence, LeaseInfo, MissingOrg, NewPurge, NewToken,
    Result, ServiceFilter, ServiceKey, ServiceState, Store, StoreError,
};

/// A [`Store`] in a SQL database: a SQLite file ([`SqlStore::open_sqlite`]) or a PostgreSQL
/// database ([`SqlStore::connect_postgres`]).
pub struct SqlStore {
    writer: AnyPool,
    reader: AnyPool,
    dialect: Dialect,
    latest: Arc<watch::Sender<u64>>,
    /// Where applies wait for their batch ([`applies`]).
    applies: applies::Queue,
    /// The latest changes, tokens and regions, kept to spare round trips ([`memory`]).
    memory: Arc<Memory>,
    /// Background tasks that end with the store (the batcher of applies, the follower of the
    /// feed that keeps the memory, PostgreSQL's notification listener).
    tasks: Vec<AbortHandle>,
}

impl SqlStore {
    /// Opens (creating if missing) the SQLite database at `path` and brings its schema up to
    /// date.
    pub async fn open_sqlite(path: &Path) -> Result<Self> {
        sqlite::open(path).await
    }

    /// Connects to the PostgreSQL database at `url` (`postgres://user:password@host:port/db`),
    /// brings its schema up to date and follows the writes of every store on it. Fails when the
    /// database cannot be reached ([`StoreError::Unavailable`]).
    pub async fn connect_postgres(url: &str) -> Result<Self> {
        postgres::connect(url).await
    }

    /// A store over `writer` and `reader`, whose latest revision is in `latest`, with its
    /// `memory`, the backend's `tasks`, its own batcher of applies and the follower that keeps
    /// its memory.
    fn new(
        writer: AnyPool,
        reader: AnyPool,
        dialect: Dialect,
        latest: Arc<watch::Sender<u64>>,
        memory: Arc<Memory>,
        mut tasks: Vec<AbortHandle>,
    ) -> Self {
        let (queue, requests) = applies::Queue::new();
        let batcher = applies::Writer {
            pool: writer.clone(),
            dialect,
            latest: latest.clone(),
            memory: memory.clone(),
        };
        tasks.push(tokio::spawn(applies::run(batcher, requests)).abort_handle());
        let follower = memory::follow(memory.clone(), latest.subscribe(), *latest.borrow(), {
            let (reader, memory, latest) = (reader.clone(), memory.clone(), latest.clone());
            move |after, limit| {
                let known = *latest.borrow();
                read_changes(reader.clone(), memory.clone(), (after, limit), known)
            }
        });
        tasks.push(tokio::spawn(follower).abort_handle());
        SqlStore {
            writer,
            reader,
            dialect,
            latest,
            applies: queue,
            memory,
            tasks,
        }
    }

    /// Starts a write transaction, serialized with every other write (see [`Dialect::write_lock`]).
    async fn begin(&self) -> Result<Transaction<'static, Any>> {
        let mut tx = self.writer.begin().await?;
        if let Some(lock) = self.dialect.write_lock() {
            sqlx::query(lock).execute(&mut *tx).await?;
        }
        Ok(tx)
    }

    /// [`SqlStore::commit`] of a write begun with [`SqlStore::begin_fenced`]: the change is
    /// recorded as made for `fence`'s term, if any.
    async fn commit_fenced(
        &self,
        mut tx: Transaction<'_, Any>,
        revision: u64,
        fence: Option<&Fence>,
    ) -> Result<()> {
        if let Some(fence) = fence {
            leases::mark(&mut tx, revision, fence).await?;
        }
        self.commit(tx, revision).await
    }

    /// [`SqlStore::begin`], then, with a `fence`, fails with [`StoreError::Fenced`] unless its
    /// term of the lease is current (and keeps it so until the transaction ends).
    async fn begin_fenced(&self, fence: Option<&Fence>) -> Result<Transaction<'static, Any>> {
        let mut tx = self.begin().await?;
        if let Some(fence) = fence {
            leases::check(&mut tx, fence).await?;
        }
        Ok(tx)
    }

    /// The pool leases are taken on: SQLite's writer (its only connection that may write);
    /// PostgreSQL's readers, so that renewals never queue behind a burst of writes.
    fn lease_pool(&self) -> &AnyPool {
        match self.dialect {
            Dialect::Sqlite => &self.writer,
            Dialect::Postgres => &self.reader,
        }
    }

    /// Commits `tx` and tells watchers that `revision` is visible.
    async fn commit(&self, tx: Transaction<'_, Any>, revision: u64) -> Result<()> {
        tx.commit().await?;
        crate::trace::stage("committed", revision, revision);
        publish(&self.latest, revision);
        Ok(())
    }

    /// [`SqlStore::commit`] of a write that changed tokens or regions: the memory forgets
    /// them at once (before the caller hears of the commit), not only when the feed brings it.
    async fn commit_forgetting(
        &self,
        tx: Transaction<'_, Any>,
        revision: u64,
        forget: Forget,
    ) -> Result<()> {
        let outcome = tx.commit().await;
        // Forgotten even when the commit's outcome is unknown (the connection broke), and
        // before watchers hear of the revision: one woken by it must not read the old ones.
        self.memory
            .forget(forget == Forget::Tokens, forget == Forget::Regions);
        outcome?;
        crate::trace::stage("committed", revision, revision);
        publish(&self.latest, revision);
        Ok(())
    }
}

/// What a write makes the store's memory forget.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Forget {
    /// The tokens (a token or an org was deleted).
    Tokens,
    /// The regions.
    Regions,
}

impl Drop for SqlStore {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Makes `revision` the latest committed revision unless a later one is known already.
fn publish(latest: &watch::Sender<u64>, revision: u64) {
    latest.send_if_modified(|latest| {
        let newer = revision > *latest;
        if newer {
            *latest = revision;
        }
        newer
    });
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if unreachable(&e) {
            StoreError::Unavailable(Box::new(e))
        } else {
            StoreError::Backend(Box::new(e))
        }
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        match e {
            sqlx::migrate::MigrateError::Execute(e) => e.into(),
            other => StoreError::Backend(Box::new(other)),
        }
    }
}

/// Whether `e` says that the database cannot be reached (down, restarting, refusing
/// connections, or the connection broke), rather than that the statement failed.
fn unreachable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolTimedOut => true,
        // SQLSTATE class 08: connection exception; 57P01-57P03: the server is shutting down,
        // crashed or starting up; 53300: too many connections.
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08") || matches!(&*code, "57P01" | "57P02" | "57P03" | "53300")
        }),
        _ => false,
    }
}

pub(super) fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

pub(super) fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn to_i64(v: u64) -> Result<i64> {
    i64::try_from(v).map_err(|_| StoreError::NotFound(format!("version {v}")))
}

fn kind_name(kind: ChangeKind) -> &'static str {
    match kind {
        ChangeKind::Org => "org",
        ChangeKind::Token => "token",
        ChangeKind::Region => "region",
        ChangeKind::App => "app",
        ChangeKind::Service => "service",
        ChangeKind::Endpoint => "endpoint",
        ChangeKind::Domains => "domains",
        ChangeKind::Certificate => "certificate",
        ChangeKind::AcmeAccount => "acme_account",
        ChangeKind::TicketKeys => "ticket_keys",
        ChangeKind::Rollout => "rollout",
        ChangeKind::RolloutControl => "rollout_control",
        ChangeKind::Secret => "secret",
        ChangeKind::OrgSecret => "org_secret",
        ChangeKind::Purge => "purge",
    }
}

fn parse_kind(name: &str) -> Result<ChangeKind> {
    Ok(match name {
        "org" => ChangeKind::Org,
        "token" => ChangeKind::Token,
        "region" => ChangeKind::Region,
        "app" => ChangeKind::App,
        "service" => ChangeKind::Service,
        "endpoint" => ChangeKind::Endpoint,
        "domains" => ChangeKind::Domains,
        "certificate" => ChangeKind::Certificate,
        "acme_account" => ChangeKind::AcmeAccount,
        "ticket_keys" => ChangeKind::TicketKeys,
        "rollout" => ChangeKind::Rollout,
        "rollout_control" => ChangeKind::RolloutControl,
        "secret" => ChangeKind::Secret,
        "org_secret" => ChangeKind::OrgSecret,
        "purge" => ChangeKind::Purge,
        other => {
            return Err(StoreError::Corrupt(format!(
                "unknown change kind `{other}`"
            )))
        }
    })
}

/// Up to `limit` changes after `after` (`page`), in revision order: from `memory` if it holds
/// them up to `latest` (the latest revision known committed), else from the database through
/// `reader` (and then remembered).
async fn read_changes(
    reader: AnyPool,
    memory: Arc<Memory>,
    page: (u64, u32),
    latest: u64,
) -> Result<Vec<Change>> {
    let (after, limit) = page;
    if let Some(changes) = memory.changes_after(after, limit, latest) {
        // A reader of the feed then reads tokens or regions as they are after it (another
        // replica's write may reach this reader before the store's own follower).
        memory.forget_changed(&changes);
        return Ok(changes);
    }
    let rows = sqlx::query(
        "SELECT revision, kind, key, op, version, committed_at_us FROM changes \
         WHERE revision > $1 ORDER BY revision LIMIT $2",
    )
    .bind(i64::try_from(after).unwrap_or(i64::MAX))
    .bind(i64::from(limit))
    .fetch_all(&reader)
    .await?;
    let changes = rows
        .iter()
        .map(change_from_row)
        .collect::<Result<Vec<_>>>()?;
    memory.remember(&changes);
    memory.forget_changed(&changes);
    Ok(changes)
}

/// Appends the change of the write in progress and returns its revision.
pub(super) async fn record(
    conn: &mut AnyConnection,
    kind: ChangeKind,
    key: &str,
    op: ChangeOp,
    version: Option<u64>,
) -> Result<u64> {
    record_at(conn, kind, key, op, version, now_micros()).await
}

/// [`record`] with the time the change is stamped with (`committed_at_us`).
async fn record_at(
    conn: &mut AnyConnection,
    kind: ChangeKind,
    key: &str,
    op: ChangeOp,
    version: Option<u64>,
    committed_at_us: i64,
) -> Result<u64> {
    let op = match op {
        ChangeOp::Put => "put",
        ChangeOp::Delete => "delete",
    };
    let revision: i64 = sqlx::query_scalar(Dialect::of(conn).record_change())
        .bind(kind_name(kind))
        .bind(key)
        .bind(op)
        .bind(version.map(|v| v as i64))
        .bind(committed_at_us)
        .fetch_one(conn)
        .await?;
    Ok(to_u64(revision))
}

fn change_from_row(row: &AnyRow) -> Result<Change> {
    let op: String = row.try_get("op")?;
    Ok(Change {
        revision: to_u64(row.try_get("revision")?),
        kind: parse_kind(row.try_get("kind")?)?,
        key: row.try_get("key")?,
        op: if op == "delete" {
            ChangeOp::Delete
        } else {
            ChangeOp::Put
        },
        version: row.try_get::<Option<i64>, _>("version")?.map(to_u64),
        committed_at_us: row.try_get("committed_at_us")?,
    })
}

fn org_from_row(row: &AnyRow) -> Result<Org> {
    Ok(Org {
        name: row.try_get("name")?,
        created_at: row.try_get("created_at")?,
    })
}

fn region_from_row(row: &AnyRow) -> Result<Region> {
    Ok(Region {
        name: row.try_get("name")?,
        lat: row.try_get("lat")?,
        lon: row.try_get("lon")?,
    })
}

fn app_from_row(row: &AnyRow) -> Result<App> {
    Ok(App {
        org: row.try_get("org")?,
        name: row.try_get("name")?,
        created_at: row.try_get("created_at")?,
    })
}

fn token_from_row(row: &AnyRow) -> Result<TokenInfo> {
    Ok(TokenInfo {
        id: row.try_get("id")?,
        org: row.try_get("org")?,
        label: row.try_get("label")?,
        created_at: row.try_get("created_at")?,
    })
}

const DEPLOYMENT_COLUMNS: &str =
    "d.version, d.revision, d.created_at, d.origin, d.rolled_back_from, d.definition";

fn deployment_from_row(row: &AnyRow) -> Result<Deployment> {
    let text: String = row.try_get("definition")?;
    let definition: Definition = serde_json::from_str(&text)
        .map_err(|e| StoreError::Corrupt(format!("deployment definition: {e}")))?;
    let origin: String = row.try_get("origin")?;
    Ok(Deployment {
        version: to_u64(row.try_get("version")?),
        revision: to_u64(row.try_get("revision")?),
        created_at: row.try_get("created_at")?,
        origin: match origin.as_str() {
            "rollback" => DeploymentOrigin::Rollback,
            "secret" => DeploymentOrigin::Secret,
            _ => DeploymentOrigin::Apply,
        },
        rolled_back_from: row
            .try_get::<Option<i64>, _>("rolled_back_from")?
            .map(to_u64),
        definition,
    })
}

/// Creates app `org/app` (its org exists) unless it exists, inside the caller's transaction.
async fn ensure_app(conn: &mut AnyConnection, org: &str, app: &str) -> Result<()> {
    sqlx::query(
        "INSERT INTO apps (org, name, created_at) VALUES ($1, $2, $3) \
         ON CONFLICT (org, name) DO NOTHING",
    )
    .bind(org)
    .bind(app)
    .bind(now_secs())
    .execute(conn)
    .await?;
    Ok(())
}

async fn exists(conn: &mut AnyConnection, sql: &str, binds: &[&str]) -> Result<bool> {
    let mut query = sqlx::query(sql);
    for value in binds {
        query = query.bind(*value);
    }
    Ok(query.fetch_optional(conn).await?.is_some())
}

/// The current deployment of `key`, read through `conn` (a pool or a transaction).
async fn current_deployment<'c>(
    conn: impl sqlx::Executor<'c, Database = Any>,
    key: &ServiceKey,
) -> Result<Option<Deployment>> {
    let row = sqlx::query(&format!(
        "SELECT {DEPLOYMENT_COLUMNS} FROM services s JOIN deployments d \
         ON d.org = s.org AND d.app = s.app AND d.service = s.name \
         AND d.version = s.current_version \
         WHERE s.org = $1 AND s.app = $2 AND s.name = $3"
    ))
    .bind(&key.org)
    .bind(&key.app)
    .bind(&key.name)
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(deployment_from_row).transpose()
}

async fn current_version(conn: &mut AnyConnection, key: &ServiceKey) -> Result<Option<u64>> {
    let version: Option<i64> = sqlx::query_scalar(
        "SELECT current_version FROM services WHERE org = $1 AND app = $2 AND name = $3",
    )
    .bind(&key.org)
    .bind(&key.app)
    .bind(&key.name)
    .fetch_optional(conn)
    .await?;
    Ok(version.map(to_u64))
}

/// Refuses `definition` as the next version of its service, whose current deployment is
/// `current`, if it claims a domain another service holds or references a secret that does not
/// exist. Only reads: a refused version leaves nothing written.
async fn check_version(
    conn: &mut AnyConnection,
    definition: &Definition,
    current: Option<&Deployment>,
) -> Result<()> {
    if !same_domains(definition, current) {
        domains::check(conn, &ServiceKey::of(definition), &definition.domains).await?;
    }
    secrets::check_references(conn, definition).await
}

/// Whether `definition` claims the domains `current` (the service's current deployment, if
/// any) holds: then the claims stay as they are.
pub(super) fn same_domains(definition: &Definition, current: Option<&Deployment>) -> bool {
    let held = current.map_or(&[][..], |c| c.definition.domains.as_slice());
    definition.domains == held
}

/// Checks ([`check_version`]) and writes a new current version of a service whose current
/// deployment is `current`, inside the caller's transaction. Returns the stored deployment.
async fn write_version(
    conn: &mut AnyConnection,
    definition: &Definition,
    current: Option<&Deployment>,
    origin: DeploymentOrigin,
    rolled_back_from: Option<u64>,
) -> Result<Deployment> {
    check_version(conn, definition, current).await?;
    let at = now_micros();
    let written = write_checked_version(conn, definition, current, origin, rolled_back_from, at);
    Ok(written.await?.0)
}

/// Writes a new current version of a service whose current deployment is `current` (the row
/// in `services`, the deployment, the region index and the domain claims; only what differs
/// from `current`), inside the caller's transaction, once [`check_version`] has accepted it;
/// its change (and a [`ChangeKind::Domains`] change before it when the claims differ) is
/// stamped `committed_at_us`. Returns the stored deployment, and the revision of the
/// [`ChangeKind::Domains`] change if there is one.
async fn write_checked_version(
    conn: &mut AnyConnection,
    definition: &Definition,
    current: Option<&Deployment>,
    origin: DeploymentOrigin,
    rolled_back_from: Option<u64>,
    committed_at_us: i64,
) -> Result<(Deployment, Option<u64>)> {
    let key = ServiceKey::of(definition);
    let version = current.map_or(1, |c| c.version + 1);
    let now = now_secs();
    let text = serde_json::to_string(definition)
        .map_err(|e| StoreError::Corrupt(format!("definition does not serialize: {e}")))?;
    let origin_name = match origin {
        DeploymentOrigin::Apply => "apply",
        DeploymentOrigin::Rollback => "rollback",
        DeploymentOrigin::Secret => "secret",
    };
    let regions_changed = current.map(|c| &c.definition.regions) != Some(&definition.regions);
    let domains_changed = !same_domains(definition, current);
    // Before the version's own change, which stays the transaction's last (its revision is
    // the one committed).
    let domains_revision = if domains_changed {
        let key = key.to_string();
        let kind = ChangeKind::Domains;
        Some(
            record_at(
                conn,
                kind,
                &key,
                ChangeOp::Put,
                Some(version),
                committed_at_us,
            )
            .await?,
        )
    } else {
        None
    };
    let revision = if let Some(sql) = Dialect::of(conn).write_version() {
        let regions = regions_changed
            .then(|| serde_json::to_string(&definition.regions))
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("region list: {e}")))?;
        let revision: i64 = sqlx::query_scalar(&sql)
            .bind(key.to_string())
            .bind(version as i64)
            .bind(committed_at_us)
            .bind(&key.org)
            .bind(&key.app)
            .bind(&key.name)
            .bind(now)
            .bind(origin_name)
            .bind(rolled_back_from.map(|v| v as i64))
            .bind(text)
            .bind(regions)
            .fetch_one(&mut *conn)
            .await?;
        to_u64(revision)
    } else {
        let revision = record_at(
            conn,
            ChangeKind::Service,
            &key.to_string(),
            ChangeOp::Put,
            Some(version),
            committed_at_us,
        )
        .await?;
        sqlx::query(
            "INSERT INTO services (org, app, name, current_version, updated_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (org, app, name) DO UPDATE SET \
             current_version = excluded.current_version, updated_at = excluded.updated_at",
        )
        .bind(&key.org)
        .bind(&key.app)
        .bind(&key.name)
        .bind(version as i64)
        .bind(now)
        .execute(&mut *conn)
        .await?;
        sqlx::query(
            "INSERT INTO deployments \
             (org, app, service, version, revision, created_at, origin, rolled_back_from, definition) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&key.org)
        .bind(&key.app)
        .bind(&key.name)
        .bind(version as i64)
        .bind(revision as i64)
        .bind(now)
        .bind(origin_name)
        .bind(rolled_back_from.map(|v| v as i64))
        .bind(text)
        .execute(&mut *conn)
        .await?;
        if regions_changed {
            index_regions(conn, &key, &definition.regions, current.is_some()).await?;
        }
        revision
    };
    if domains_changed {
        domains::claim(conn, &key, &definition.domains, revision).await?;
    }
    let deployment = Deployment {
        version,
        revision,
        created_at: now,
        origin,
        rolled_back_from,
        definition: definition.clone(),
    };
    Ok((deployment, domains_revision))
}

/// Makes `regions` the regions of `key` in the region index (`existed`: it may have others
/// there already), inside the caller's transaction.
async fn index_regions(
    conn: &mut AnyConnection,
    key: &ServiceKey,
    regions: &[String],
    existed: bool,
) -> Result<()> {
    if existed {
        sqlx::query("DELETE FROM service_regions WHERE org = $1 AND app = $2 AND service = $3")
            .bind(&key.org)
            .bind(&key.app)
            .bind(&key.name)
            .execute(&mut *conn)
            .await?;
    }
    if regions.is_empty() {
        return Ok(());
    }
    let list = serde_json::to_string(regions)
        .map_err(|e| StoreError::Corrupt(format!("region list: {e}")))?;
    let sql = format!(
        "INSERT INTO service_regions (org, app, service, region) \
         SELECT $1, $2, $3, value FROM {}",
        Dialect::of(conn).json_strings("$4")
    );
    sqlx::query(&sql)
        .bind(&key.org)
        .bind(&key.app)
        .bind(&key.name)
        .bind(list)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Gives each of `definitions` a new version equal to it (origin secret: a secret it uses
/// changed), in the caller's transaction, so that no one sees the secret's change without
/// them; returns the revision of the last write (`revision` when there is none).
async fn renew(
    conn: &mut AnyConnection,
    definitions: Vec<Definition>,
    mut revision: u64,
) -> Result<u64> {
    for definition in definitions {
        let current = current_deployment(&mut *conn, &ServiceKey::of(&definition)).await?;
        let renewed = write_version(
            conn,
            &definition,
            current.as_ref(),
            DeploymentOrigin::Secret,
            None,
        );
        revision = renewed.await?.revision;
    }
    Ok(revision)
}

#[async_trait]
impl Store for SqlStore {
    async fn revision(&self) -> Result<u64> {
        Ok(*self.latest.borrow())
    }

    async fn check_reachable(&self) -> Result<()> {
        sqlx::query("SELECT 1").fetch_one(&self.reader).await?;
        Ok(())
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.latest.subscribe()
    }

    async fn changes_after(&self, after: u64, limit: u32) -> Result<Vec<Change>> {
        let latest = *self.latest.borrow();
        read_changes(
            self.reader.clone(),
            self.memory.clone(),
            (after, limit),
            latest,
        )
        .await
    }

    async fn create_token(&self, token: NewToken) -> Result<TokenInfo> {
        let mut tx = self.begin().await?;
        if let Some(org) = &token.org {
            if !exists(&mut tx, "SELECT 1 FROM orgs WHERE name = $1", &[org]).await? {
                return Err(StoreError::NotFound(format!("org `{org}`")));
            }
        }
        let revision = record(&mut tx, ChangeKind::Token, &token.id, ChangeOp::Put, None).await?;
        let created_at = now_secs();
        sqlx::query(
            "INSERT INTO tokens (id, org, label, hash, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&token.id)
        .bind(&token.org)
        .bind(&token.label)
        .bind(&token.hash)
        .bind(created_at)
        .execute(&mut *tx)
        .await?;
        self.commit(tx, revision).await?;
        Ok(TokenInfo {
            id: token.id,
            org: token.org,
            label: token.label,
            created_at,
        })
    }

    async fn find_token(&self, hash: &str) -> Result<Option<TokenInfo>> {
        let generation = match self.memory.token(hash) {
            Ok(token) => return Ok(Some(token)),
            Err(generation) => generation,
        };
        let row = sqlx::query("SELECT id, org, label, created_at FROM tokens WHERE hash = $1")
            .bind(hash)
            .fetch_optional(&self.reader)
            .await?;
        let token = row.as_ref().map(token_from_row).transpose()?;
        if let Some(token) = &token {
            self.memory.keep_token(generation, hash, token);
        }
        Ok(token)
    }

    async fn list_tokens(&self, org: Option<&str>) -> Result<Vec<TokenInfo>> {
        let rows = sqlx::query(
            "SELECT id, org, label, created_at FROM tokens WHERE org IS NOT DISTINCT FROM $1 \
             ORDER BY created_at, id",
        )
        .bind(org)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(token_from_row).collect()
    }

    async fn delete_token(&self, id: &str) -> Result<()> {
        let mut tx = self.begin().await?;
        if !exists(&mut tx, "SELECT 1 FROM tokens WHERE id = $1", &[id]).await? {
            return Err(StoreError::NotFound(format!("token `{id}`")));
        }
        let revision = record(&mut tx, ChangeKind::Token, id, ChangeOp::Delete, None).await?;
        sqlx::query("DELETE FROM tokens WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        self.commit_forgetting(tx, revision, Forget::Tokens).await
    }

    async fn create_org(&self, name: &str) -> Result<Org> {
        let mut tx = self.begin().await?;
        if exists(&mut tx, "SELECT 1 FROM orgs WHERE name = $1", &[name]).await? {
            return Err(StoreError::AlreadyExists(format!("org `{name}`")));
        }
        let revision = record(&mut tx, ChangeKind::Org, name, ChangeOp::Put, None).await?;
        let created_at = now_secs();
        sqlx::query("INSERT INTO orgs (name, created_at) VALUES ($1, $2)")
            .bind(name)
            .bind(created_at)
            .execute(&mut *tx)
            .await?;
        self.commit(tx, revision).await?;
        Ok(Org {
            name: name.to_owned(),
            created_at,
        })
    }

    async fn list_orgs(&self) -> Result<Vec<Org>> {
        let rows = sqlx::query("SELECT name, created_at FROM orgs ORDER BY name")
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(org_from_row).collect()
    }

    async fn get_org(&self, name: &str) -> Result<Option<Org>> {
        let row = sqlx::query("SELECT name, created_at FROM orgs WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(org_from_row).transpose()
    }

    async fn delete_org(&self, name: &str) -> Result<()> {
        let mut tx = self.begin().await?;
        if !exists(&mut tx, "SELECT 1 FROM orgs WHERE name = $1", &[name]).await? {
            return Err(StoreError::NotFound(format!("org `{name}`")));
        }
        if exists(&mut tx, "SELECT 1 FROM apps WHERE org = $1", &[name]).await? {
            return Err(StoreError::Conflict(format!(
                "org `{name}` still has apps; delete them first"
            )));
        }
        let revision = record(&mut tx, ChangeKind::Org, name, ChangeOp::Delete, None).await?;
        sqlx::query("DELETE FROM tokens WHERE org = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM orgs WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        self.commit_forgetting(tx, revision, Forget::Tokens).await
    }

    async fn put_region(&self, region: &Region) -> Result<()> {
        let mut tx = self.begin().await?;
        let revision = record(
            &mut tx,
            ChangeKind::Region,
            &region.name,
            ChangeOp::Put,
            None,
        )
        .await?;
        sqlx::query(
            "INSERT INTO regions (name, lat, lon) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET lat = excluded.lat, lon = excluded.lon",
        )
        .bind(&region.name)
        .bind(region.lat)
        .bind(region.lon)
        .execute(&mut *tx)
        .await?;
        self.commit_forgetting(tx, revision, Forget::Regions).await
    }

    async fn list_regions(&self) -> Result<Vec<Region>> {
        let generation = match self.memory.regions() {
            Ok(regions) => return Ok(regions),
            Err(generation) => generation,
        };
        let rows = sqlx::query("SELECT name, lat, lon FROM regions ORDER BY name")
            .fetch_all(&self.reader)
            .await?;
        let regions = rows
            .iter()
            .map(region_from_row)
            .collect::<Result<Vec<_>>>()?;
        self.memory.keep_regions(generation, &regions);
        Ok(regions)
    }

    async fn delete_region(&self, name: &str) -> Result<()> {
        let mut tx = self.begin().await?;
        if !exists(&mut tx, "SELECT 1 FROM regions WHERE name = $1", &[name]).await? {
            return Err(StoreError::NotFound(format!("region `{name}`")));
        }
        let user: Option<(String, String, String)> = sqlx::query_as(
            "SELECT org, app, service FROM service_regions WHERE region = $1 LIMIT 1",
        )
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((org, app, service)) = user {
            return Err(StoreError::Conflict(format!(
                "region `{name}` is still used by services (e.g. {org}/{app}/{service}); \
                 remove it from their regions first"
            )));
        }
        let revision = record(&mut tx, ChangeKind::Region, name, ChangeOp::Delete, None).await?;
        sqlx::query("DELETE FROM regions WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        self.commit_forgetting(tx, revision, Forget::Regions).await
    }

    async fn create_app(&self, org: &str, name: &str) -> Result<App> {
        let mut tx = self.begin().await?;
        if !exists(&mut tx, "SELECT 1 FROM orgs WHERE name = $1", &[org]).await? {
            return Err(StoreError::NotFound(format!("org `{org}`")));
        }
        let sql = "SELECT 1 FROM apps WHERE org = $1 AND name = $2";
        if exists(&mut tx, sql, &[org, name]).await? {
            return Err(StoreError::AlreadyExists(format!("app `{org}/{name}`")));
        }
        let key = format!("{org}/{name}");
        let revision = record(&mut tx, ChangeKind::App, &key, ChangeOp::Put, None).await?;
        let created_at = now_secs();
        sqlx::query("INSERT INTO apps (org, name, created_at) VALUES ($1, $2, $3)")
            .bind(org)
            .bind(name)
            .bind(created_at)
            .execute(&mut *tx)
            .await?;
        self.commit(tx, revision).await?;
        Ok(App {
            org: org.to_owned(),
            name: name.to_owned(),
            created_at,
        })
    }

    async fn list_apps(&self, org: Option<&str>) -> Result<Vec<App>> {
        let rows = sqlx::query(
            "SELECT org, name, created_at FROM apps WHERE $1 IS NULL OR org = $1 ORDER BY org, name",
        )
        .bind(org)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(app_from_row).collect()
    }

    async fn get_app(&self, org: &str, name: &str) -> Result<Option<App>> {
        Ok(self
            .list_apps(Some(org))
            .await?
            .into_iter()
            .find(|a| a.name == name))
    }

    async fn delete_app(&self, org: &str, name: &str) -> Result<()> {
        let mut tx = self.begin().await?;
        let sql = "SELECT 1 FROM apps WHERE org = $1 AND name = $2";
        if !exists(&mut tx, sql, &[org, name]).await? {
            return Err(StoreError::NotFound(format!("app `{org}/{name}`")));
        }
        let sql = "SELECT 1 FROM services WHERE org = $1 AND app = $2";
        if exists(&mut tx, sql, &[org, name]).await? {
            return Err(StoreError::Conflict(format!(
                "app `{org}/{name}` still has services; delete them first"
            )));
        }
        let key = format!("{org}/{name}");
        let revision = record(&mut tx, ChangeKind::App, &key, ChangeOp::Delete, None).await?;
        sqlx::query("DELETE FROM apps WHERE org = $1 AND name = $2")
            .bind(org)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        self.commit(tx, revision).await
    }

    async fn apply_service(
        &self,
        definition: &Definition,
        missing_org: MissingOrg,
    ) -> Result<Applied> {
        self.applies.apply(definition, missing_org).await
    }

    async fn list_services(&self, filter: &ServiceFilter) -> Result<Vec<ServiceSummary>> {
        let rows = sqlx::query(
            "SELECT s.org, s.app, s.name, s.current_version, s.updated_at, \
                    (SELECT string_agg(region, ',' ORDER BY region) FROM service_regions r \
                     WHERE r.org = s.org AND r.app = s.app AND r.service = s.name) AS regions \
             FROM services s \
             WHERE ($1 IS NULL OR s.org = $1) AND ($2 IS NULL OR s.app = $2) \
               AND ($3 IS NULL OR s.name = $3) \
             ORDER BY s.org, s.app, s.name",
        )
        .bind(filter.org.as_deref())
        .bind(filter.app.as_deref())
        .bind(filter.name.as_deref())
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| {
                let regions: Option<String> = r.try_get("regions")?;
                Ok(ServiceSummary {
                    org: r.try_get("org")?,
                    app: r.try_get("app")?,
                    name: r.try_get("name")?,
                    version: to_u64(r.try_get("current_version")?),
                    regions: regions
                        .unwrap_or_default()
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect(),
                    updated_at: r.try_get("updated_at")?,
                })
            })
            .collect()
    }

    async fn get_service(&self, key: &ServiceKey) -> Result<Option<Deployment>> {
        current_deployment(&self.reader, key).await
    }

    async fn delete_service(&self, key: &ServiceKey) -> Result<()> {
        let mut tx = self.begin().await?;
        if current_version(&mut tx, key).await?.is_none() {
            return Err(StoreError::NotFound(format!("service `{key}`")));
        }
        let revision = record(
            &mut tx,
            ChangeKind::Service,
            &key.to_string(),
            ChangeOp::Delete,
            None,
        )
        .await?;
        sqlx::query("DELETE FROM services WHERE org = $1 AND app = $2 AND name = $3")
            .bind(&key.org)
            .bind(&key.app)
            .bind(&key.name)
            .execute(&mut *tx)
            .await?;
        self.commit(tx, revision).await
    }

    async fn list_deployments(&self, key: &ServiceKey) -> Result<Vec<Deployment>> {
        let rows = sqlx::query(&format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments d \
             WHERE d.org = $1 AND d.app = $2 AND d.service = $3 ORDER BY d.version"
        ))
        .bind(&key.org)
        .bind(&key.app)
        .bind(&key.name)
        .fetch_all(&self.reader)
        .await?;
        if rows.is_empty() {
            return Err(StoreError::NotFound(format!("service `{key}`")));
        }
        rows.iter().map(deployment_from_row).collect()
    }

    async fn get_deployment(&self, key: &ServiceKey, version: u64) -> Result<Option<Deployment>> {
        let Ok(version) = i64::try_from(version) else {
            return Ok(None);
        };
        let row = sqlx::query(&format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments d \
             WHERE d.org = $1 AND d.app = $2 AND d.service = $3 AND d.version = $4"
        ))
        .bind(&key.org)
        .bind(&key.app)
        .bind(&key.name)
        .bind(version)
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(deployment_from_row).transpose()
    }

    async fn rollback(
        &self,
        key: &ServiceKey,
        to: u64,
        fence: Option<&Fence>,
    ) -> Result<Deployment> {
        let mut tx = self.begin_fenced(fence).await?;
        let Some(current) = current_deployment(&mut *tx, key).await? else {
            return Err(StoreError::NotFound(format!("service `{key}`")));
        };
        let row = sqlx::query(&format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments d \
             WHERE d.org = $1 AND d.app = $2 AND d.service = $3 AND d.version = $4"
        ))
        .bind(&key.org)
        .bind(&key.app)
        .bind(&key.name)
        .bind(to_i64(to)?)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("version {to} of service `{key}`")))?;
        let old = deployment_from_row(&row)?;
        let deployment = write_version(
            &mut tx,
            &old.definition,
            Some(&current),
            DeploymentOrigin::Rollback,
            Some(to),
        )
        .await?;
        self.commit_fenced(tx, deployment.revision, fence).await?;
        Ok(deployment)
    }

    async fn record_rollout(
        &self,
        key: &ServiceKey,
        region: &str,
        rollout: &RolloutStatus,
        fence: Option<&Fence>,
    ) -> Result<bool> {
        let mut tx = self.begin_fenced(fence).await?;
        match rollouts::put(&mut tx, key, region, rollout).await? {
            Some(revision) => {
                self.commit_fenced(tx, revision, fence).await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn list_rollouts(&self, key: &ServiceKey) -> Result<Vec<RolloutRecord>> {
        rollouts::list(&self.reader, key).await
    }

    async fn set_rollout_control(
        &self,
        key: &ServiceKey,
        control: Option<RolloutControl>,
    ) -> Result<bool> {
        let mut tx = self.begin().await?;
        match rollouts::put_control(&mut tx, key, control).await? {
            Some(revision) => {
                self.commit(tx, revision).await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn get_rollout_control(&self, key: &ServiceKey) -> Result<Option<RolloutControl>> {
        rollouts::get_control(&mut *self.reader.acquire().await?, key).await
    }

    async fn service_states(&self, keys: &[ServiceKey]) -> Result<Vec<ServiceState>> {
        states::read(&self.reader, self.dialect, keys).await
    }

    async fn deployments_in_region(&self, region: &str) -> Result<Vec<Deployment>> {
        let rows = sqlx::query(&format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM service_regions r \
             JOIN services s ON s.org = r.org AND s.app = r.app AND s.name = r.service \
             JOIN deployments d ON d.org = s.org AND d.app = s.app AND d.service = s.name \
              AND d.version = s.current_version \
             WHERE r.region = $1 ORDER BY s.org, s.app, s.name"
        ))
        .bind(region)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(deployment_from_row).collect()
    }

    async fn put_endpoint(
        &self,
        key: &ServiceKey,
        id: &str,
        input: &EndpointInput,
    ) -> Result<Endpoint> {
        let mut tx = self.begin().await?;
        let (revision, endpoint) = endpoints::put(&mut tx, key, id, input).await?;
        self.commit(tx, revision).await?;
        Ok(endpoint)
    }

    async fn list_endpoints(&self, key: &ServiceKey) -> Result<Vec<Endpoint>> {
        let rows = sqlx::query(&format!(
            "SELECT {} FROM endpoints WHERE org = $1 AND app = $2 AND service = $3 ORDER BY id",
            endpoints::COLUMNS
        ))
        .bind(&key.org)
        .bind(&key.app)
        .bind(&key.name)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(endpoints::endpoint_from_row).collect()
    }

    async fn endpoints_in_region(&self, region: &str) -> Result<Vec<Endpoint>> {
        let rows = sqlx::query(&format!(
            "SELECT {} FROM endpoints WHERE region = $1 ORDER BY org, app, service, id",
            endpoints::COLUMNS
        ))
        .bind(region)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(endpoints::endpoint_from_row).collect()
    }

    async fn delete_endpoint(&self, key: &ServiceKey, id: &str) -> Result<()> {
        let mut tx = self.begin().await?;
        let revision = endpoints::delete(&mut tx, key, id).await?;
        self.commit(tx, revision).await
    }

    async fn list_domains(&self, filter: &ServiceFilter) -> Result<Vec<DomainClaim>> {
        certificates::list_domains(&self.reader, filter).await
    }

    async fn get_domain(&self, domain: &str) -> Result<Option<DomainClaim>> {
        certificates::get_domain(&self.reader, domain).await
    }

    async fn put_certificate(
        &self,
        certificate: &CertificateRecord,
        fence: Option<&Fence>,
    ) -> Result<()> {
        let mut tx = self.begin_fenced(fence).await?;
        let revision = certificates::put(&mut tx, certificate).await?;
        self.commit_fenced(tx, revision, fence).await
    }

    async fn get_acme_account(&self, directory: &str) -> Result<Option<Vec<u8>>> {
        Ok(
            sqlx::query_scalar("SELECT sealed_credentials FROM acme_accounts WHERE directory = $1")
                .bind(directory)
                .fetch_optional(&self.reader)
                .await?,
        )
    }

    async fn put_acme_account(&self, directory: &str, sealed: &[u8]) -> Result<()> {
        let mut tx = self.begin().await?;
        let revision = record(
            &mut tx,
            ChangeKind::AcmeAccount,
            directory,
            ChangeOp::Put,
            None,
        )
        .await?;
        sqlx::query(
            "INSERT INTO acme_accounts (directory, sealed_credentials, created_at) \
             VALUES ($1, $2, $3) ON CONFLICT (directory) DO UPDATE SET \
             sealed_credentials = excluded.sealed_credentials, created_at = excluded.created_at",
        )
        .bind(directory)
        .bind(sealed)
        .bind(now_secs())
        .execute(&mut *tx)
        .await?;
        self.commit(tx, revision).await
    }

    async fn get_ticket_keys(&self) -> Result<Option<(Vec<u8>, i64)>> {
        Ok(
            sqlx::query_as("SELECT sealed_keys, rotated_at FROM ticket_keys WHERE id = 1")
                .fetch_optional(&self.reader)
                .await?,
        )
    }

    async fn put_ticket_keys(
        &self,
        sealed: &[u8],
        rotated_at: i64,
        fence: Option<&Fence>,
    ) -> Result<()> {
        let mut tx = self.begin_fenced(fence).await?;
        let revision = record(
            &mut tx,
            ChangeKind::TicketKeys,
            "session-ticket-keys",
            ChangeOp::Put,
            None,
        )
        .await?;
        sqlx::query(
            "INSERT INTO ticket_keys (id, sealed_keys, rotated_at) VALUES (1, $1, $2) \
             ON CONFLICT (id) DO UPDATE SET \
             sealed_keys = excluded.sealed_keys, rotated_at = excluded.rotated_at",
        )
        .bind(sealed)
        .bind(rotated_at)
        .execute(&mut *tx)
        .await?;
        self.commit_fenced(tx, revision, fence).await
    }

    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<Option<Fence>> {
        leases::acquire(self.lease_pool(), self.dialect, name, holder, ttl).await
    }

    async fn release_lease(&self, fence: &Fence) -> Result<()> {
        leases::release(self.lease_pool(), fence).await
    }

    async fn get_lease(&self, name: &str) -> Result<Option<LeaseInfo>> {
        leases::get(&self.reader, self.dialect, name).await
    }

    async fn put_secret(
        &self,
        owner: &SecretOwner,
        name: &str,
        sealed: &[u8],
    ) -> Result<SecretInfo> {
        let mut tx = self.begin().await?;
        let (info, revision) = secrets::put(&mut tx, owner, name, sealed).await?;
        let users = secrets::users(&mut tx, owner, name).await?;
        let revision = renew(&mut tx, users, revision).await?;
        self.commit(tx, revision).await?;
        Ok(info)
    }

    async fn list_secrets(&self, owner: &SecretOwner) -> Result<Vec<SecretInfo>> {
        secrets::list(&self.reader, owner).await
    }

    async fn get_secret(
        &self,
        owner: &SecretOwner,
        name: &str,
    ) -> Result<Option<(SecretInfo, Vec<u8>)>> {
        secrets::get(&self.reader, owner, name).await
    }

    async fn delete_secret(&self, owner: &SecretOwner, name: &str) -> Result<()> {
        let mut tx = self.begin().await?;
        let (mut revision, users) = secrets::delete(&mut tx, owner, name).await?;
        revision = renew(&mut tx, users, revision).await?;
        self.commit(tx, revision).await
    }

    async fn add_purge(&self, purge: &NewPurge) -> Result<Purge> {
        let mut tx = self.writer.begin().await?;
        let (stored, revision) = purges::add(&mut tx, purge).await?;
        self.commit(tx, revision).await?;
        Ok(stored)
    }

    async fn purges_after(&self, after: u64, limit: u32) -> Result<Vec<Purge>> {
        purges::after(&self.reader, after, limit).await
    }
}
