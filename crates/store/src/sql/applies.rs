//! Group commit of applies: [`Store::apply_service`](crate::Store::apply_service) calls that
//! arrive while a write is in progress go into the next transaction together, so that a burst
//! of applies pays for one transaction (and one lock and one flush to disk) per batch instead
//! of one each, and a reply means the apply is committed (acknowledged = durable).
//!
//! What the batch needs to know of its services, orgs and apps is read at its start in one
//! statement ([`Known`]). Each apply in a batch is still atomic and has its own revision: it
//! makes all its checks (does the org exist, are its domains free, do its secrets exist)
//! before it writes anything, so one that is refused leaves nothing behind and the others
//! commit. On PostgreSQL the checked new versions are written together, in one statement
//! ([`Pending`]). Should a statement fail
//! (the transaction is then lost), the batch is rolled back and each of its applies runs again
//! alone, so that only the apply at fault fails; unless the database is unreachable, which
//! every apply of the batch is told.

use std::sync::Arc;

use meridian_model::{Change, ChangeKind, ChangeOp, Definition, Deployment, DeploymentOrigin};
use sqlx::{Any, AnyConnection, AnyPool, Transaction};
use tokio::sync::{mpsc, oneshot, watch};

use super::known::Known;
use super::pending::Pending;
use super::{
    check_version, ensure_app, now_micros, now_secs, publish, same_domains, write_checked_version,
    Dialect, Memory,
};
use crate::{Applied, MissingOrg, Result, ServiceKey, StoreError};

/// Most applies in one transaction: a batch holds the write lock for its whole duration.
const MAX_BATCH: usize = 32;
/// Most applies waiting for a batch.
const QUEUE: usize = 1024;

/// An apply waiting for its batch.
pub(super) struct Request {
    definition: Definition,
    missing_org: MissingOrg,
    reply: oneshot::Sender<Result<Applied>>,
}

/// Where applies are queued for the batcher ([`run`]).
#[derive(Clone)]
pub(super) struct Queue(mpsc::Sender<Request>);

impl Queue {
    /// A queue and its receiving end, for [`run`].
    pub(super) fn new() -> (Queue, mpsc::Receiver<Request>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (Queue(tx), rx)
    }

    /// Applies `definition` in the next batch; returns once that batch is committed.
    pub(super) async fn apply(
        &self,
        definition: &Definition,
        missing_org: MissingOrg,
    ) -> Result<Applied> {
        let (reply, answer) = oneshot::channel();
        let request = Request {
            definition: definition.clone(),
            missing_org,
            reply,
        };
        self.0.send(request).await.map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

/// The writing side of a store, as the batcher needs it.
pub(super) struct Writer {
    /// The writer pool.
    pub(super) pool: AnyPool,
    /// The backend's dialect.
    pub(super) dialect: Dialect,
    /// Told the latest committed revision.
    pub(super) latest: Arc<watch::Sender<u64>>,
    /// Remembers the changes of each committed batch.
    pub(super) memory: Arc<Memory>,
}

/// Takes the applies queued in `queue` in batches, as many as wait (up to [`MAX_BATCH`]), each
/// batch in one transaction; ends when every [`Queue`] is gone.
pub(super) async fn run(writer: Writer, mut queue: mpsc::Receiver<Request>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let requests = std::mem::take(&mut batch);
        let (definitions, replies): (Vec<_>, Vec<_>) = requests
            .into_iter()
            .map(|r| ((r.definition, r.missing_org), r.reply))
            .unzip();
        let outcomes = apply_all(&writer, &definitions).await;
        for (reply, outcome) in replies.into_iter().zip(outcomes) {
            // A caller that went away no longer waits for its answer.
            let _ = reply.send(outcome);
        }
    }
}

/// Applies `batch` in one transaction, or, if that fails for another reason than an
/// unreachable database, each alone.
async fn apply_all(writer: &Writer, batch: &[(Definition, MissingOrg)]) -> Vec<Result<Applied>> {
    match transaction(writer, batch).await {
        Ok(outcomes) => outcomes,
        Err(e) if batch.len() == 1 => vec![Err(e)],
        Err(StoreError::Unavailable(e)) => {
            let message = e.to_string();
            batch
                .iter()
                .map(|_| Err(StoreError::Unavailable(message.clone().into())))
                .collect()
        }
        Err(e) => {
            tracing::debug!(error = %e, applies = batch.len(),
                "a batch of applies failed; applying each alone");
            let mut outcomes = Vec::with_capacity(batch.len());
            for one in batch {
                outcomes.push(match transaction(writer, std::slice::from_ref(one)).await {
                    Ok(mut alone) => alone.pop().unwrap_or(Err(StoreError::Closed)),
                    Err(e) => Err(e),
                });
            }
            outcomes
        }
    }
}

/// Applies `batch` in one transaction and commits it: the outcome of each apply (a refused one
/// wrote nothing), or the error that lost the whole transaction (nothing is written).
async fn transaction(
    writer: &Writer,
    batch: &[(Definition, MissingOrg)],
) -> Result<Vec<Result<Applied>>> {
    let mut tx: Transaction<'static, Any> = writer.pool.begin().await?;
    if let Some(lock) = writer.dialect.write_lock() {
        sqlx::query(lock).execute(&mut *tx).await?;
    }
    let mut known = Known::read(&mut tx, batch.iter().map(|(d, _)| d)).await?;
    let mut outcomes: Vec<Option<Result<Applied>>> = Vec::with_capacity(batch.len());
    let mut changes = Vec::new();
    // The changes of a batch are committed together: they carry one time, taken before its
    // first write (a change's notification carries the time it is inserted with, so it is
    // never changed afterwards).
    let at = now_micros();
    // Versions wait to be written together where the backend can ([`Pending`]); each is
    // written before the batch goes on with its service, or with an apply that changes domain
    // claims, so that revisions follow the order of the batch.
    let together = writer.dialect.write_versions().is_some();
    let mut pending = Pending::default();
    for (index, (definition, missing_org)) in batch.iter().enumerate() {
        let key = ServiceKey::of(definition);
        if pending.has(&key) {
            let written = pending.write(&mut tx, &mut known, &mut changes, at).await?;
            settle(&mut outcomes, written);
        }
        let outcome = match check_one(&mut tx, &mut known, definition, *missing_org).await {
            Ok(Checked::Unchanged(deployment)) => Ok(Applied {
                deployment,
                changed: false,
            }),
            Ok(Checked::New(current)) if together && same_domains(definition, current.as_ref()) => {
                pending.add(index, definition, current.as_ref());
                outcomes.push(None);
                continue;
            }
            Ok(Checked::New(current)) => {
                let written = pending.write(&mut tx, &mut known, &mut changes, at).await?;
                settle(&mut outcomes, written);
                let (deployment, domains_revision) = write_checked_version(
                    &mut tx,
                    definition,
                    current.as_ref(),
                    DeploymentOrigin::Apply,
                    None,
                    at,
                )
                .await?;
                if let Some(revision) = domains_revision {
                    changes.push(Change {
                        revision,
                        kind: ChangeKind::Domains,
                        key: key.to_string(),
                        op: ChangeOp::Put,
                        version: Some(deployment.version),
                        committed_at_us: at,
                    });
                }
                changes.push(Change {
                    revision: deployment.revision,
                    kind: ChangeKind::Service,
                    key: key.to_string(),
                    op: ChangeOp::Put,
                    version: Some(deployment.version),
                    committed_at_us: at,
                });
                known.wrote(key, deployment.clone());
                Ok(Applied {
                    deployment,
                    changed: true,
                })
            }
            // A statement failed: the transaction is lost.
            Err(
                e @ (StoreError::Backend(_) | StoreError::Unavailable(_) | StoreError::Corrupt(_)),
            ) => return Err(e),
            Err(refused) => Err(refused),
        };
        outcomes.push(Some(outcome));
    }
    let written = pending.write(&mut tx, &mut known, &mut changes, at).await?;
    settle(&mut outcomes, written);
    tx.commit().await?;
    if let (Some(first), Some(last)) = (changes.first(), changes.last()) {
        crate::trace::stage("committed", first.revision, last.revision);
        writer.memory.remember(&changes);
        publish(&writer.latest, last.revision);
    }
    Ok(outcomes
        .into_iter()
        .map(|outcome| outcome.unwrap_or(Err(StoreError::Closed)))
        .collect())
}

/// Puts the outcomes of the versions just `written` in their places.
fn settle(outcomes: &mut [Option<Result<Applied>>], written: Vec<(usize, Applied)>) {
    for (index, applied) in written {
        if let Some(slot) = outcomes.get_mut(index) {
            *slot = Some(Ok(applied));
        }
    }
}

/// What an apply's checks found.
enum Checked {
    /// The definition is the current version's: nothing to write.
    Unchanged(Deployment),
    /// A new version after the current one (if any) is to be written: every check passed,
    /// and its org and app exist.
    New(Option<Deployment>),
}

/// The checks of one apply inside the batch's transaction, which knows `known`: nothing to
/// do when `definition` equals the current version's; else every check, then the org (if
/// missing and `missing_org` allows) and the app are created.
async fn check_one(
    conn: &mut AnyConnection,
    known: &mut Known,
    definition: &Definition,
    missing_org: MissingOrg,
) -> Result<Checked> {
    let (org, app) = (definition.org.as_str(), definition.app.as_str());
    let key = ServiceKey::of(definition);
    let current = known.current(&key).cloned();
    if let Some(current) = &current {
        if current.definition == *definition {
            return Ok(Checked::Unchanged(current.clone()));
        }
        check_version(conn, definition, Some(current)).await?;
    } else {
        // A new service: its org and app may be new too.
        if !known.has_org(org) && missing_org == MissingOrg::Reject {
            return Err(StoreError::NotFound(format!("org `{org}`")));
        }
        check_version(conn, definition, None).await?;
        if !known.has_org(org) {
            sqlx::query("INSERT INTO orgs (name, created_at) VALUES ($1, $2)")
                .bind(org)
                .bind(now_secs())
                .execute(&mut *conn)
                .await?;
        }
        if !known.has_app(org, app) {
            ensure_app(conn, org, app).await?;
        }
        known.created(org, app);
    }
    Ok(Checked::New(current))
}
