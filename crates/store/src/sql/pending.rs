//! The new versions of a batch of applies written in one statement (PostgreSQL), where one
//! statement per version costs the batch a round trip each while it holds the write lock.
//!
//! A version waits here only once its apply has passed every check and its org and app exist,
//! and only if writing it changes no domain claim (so that no later check of the batch could
//! read what it writes). [`Pending::write`] writes them all, in the order they came: their
//! revisions are consecutive, in that order, as if each had been written on its own.

use meridian_model::{Change, ChangeKind, ChangeOp, Definition, Deployment, DeploymentOrigin};
use serde::Serialize;
use sqlx::AnyConnection;

use super::known::Known;
use super::{now_secs, to_u64, Dialect};
use crate::{Applied, Result, ServiceKey, StoreError};

/// Versions checked and waiting to be written, each with the index of its apply in the batch.
#[derive(Default)]
pub(super) struct Pending(Vec<(usize, Version)>);

/// A checked new version.
struct Version {
    key: ServiceKey,
    definition: Definition,
    /// The number it gets.
    number: u64,
    /// Whether its regions differ from the current version's (the region index changes).
    regions_changed: bool,
}

/// One version as the statement reads it (see [`Dialect::write_versions`]).
#[derive(Serialize)]
struct Row<'a> {
    ord: usize,
    key: String,
    org: &'a str,
    app: &'a str,
    name: &'a str,
    version: u64,
    definition: String,
    regions: Option<&'a [String]>,
}

impl Pending {
    /// Whether a version of `key` waits.
    pub(super) fn has(&self, key: &ServiceKey) -> bool {
        self.0.iter().any(|(_, v)| v.key == *key)
    }

    /// Adds `definition`, checked, as the next version after `current`, for apply `index`.
    pub(super) fn add(
        &mut self,
        index: usize,
        definition: &Definition,
        current: Option<&Deployment>,
    ) {
        self.0.push((
            index,
            Version {
                key: ServiceKey::of(definition),
                definition: definition.clone(),
                number: current.map_or(1, |c| c.version + 1),
                regions_changed: current.map(|c| &c.definition.regions)
                    != Some(&definition.regions),
            },
        ));
    }

    /// Writes every waiting version in one statement through `conn` (the batch's transaction),
    /// their changes stamped `at`; `known` learns of them and `changes` gets their changes.
    /// Returns each one's apply index and outcome.
    pub(super) async fn write(
        &mut self,
        conn: &mut AnyConnection,
        known: &mut Known,
        changes: &mut Vec<Change>,
        at: i64,
    ) -> Result<Vec<(usize, Applied)>> {
        let versions = std::mem::take(&mut self.0);
        if versions.is_empty() {
            return Ok(Vec::new());
        }
        let Some(sql) = Dialect::of(conn).write_versions() else {
            return Err(StoreError::Corrupt(
                "versions of a batch wait only on a backend that writes them together".into(),
            ));
        };
        let rows = versions
            .iter()
            .enumerate()
            .map(|(ord, (_, v))| {
                Ok(Row {
                    ord: ord + 1,
                    key: v.key.to_string(),
                    org: &v.key.org,
                    app: &v.key.app,
                    name: &v.key.name,
                    version: v.number,
                    definition: serde_json::to_string(&v.definition).map_err(|e| {
                        StoreError::Corrupt(format!("definition does not serialize: {e}"))
                    })?,
                    regions: v.regions_changed.then_some(v.definition.regions.as_slice()),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let rows = serde_json::to_string(&rows)
            .map_err(|e| StoreError::Corrupt(format!("versions of a batch: {e}")))?;
        let now = now_secs();
        let mut revisions: Vec<i64> = sqlx::query_scalar(&sql)
            .bind(rows)
            .bind(at)
            .bind(now)
            .fetch_all(&mut *conn)
            .await?;
        if revisions.len() != versions.len() {
            return Err(StoreError::Corrupt(format!(
                "{} versions written, {} revisions returned",
                versions.len(),
                revisions.len()
            )));
        }
        // Revision `first + ord - 1` went to the version at `ord`.
        revisions.sort_unstable();
        let mut applied = Vec::with_capacity(versions.len());
        for ((index, version), revision) in versions.into_iter().zip(revisions) {
            let deployment = Deployment {
                version: version.number,
                revision: to_u64(revision),
                created_at: now,
                origin: DeploymentOrigin::Apply,
                rolled_back_from: None,
                definition: version.definition,
            };
            changes.push(Change {
                revision: deployment.revision,
                kind: ChangeKind::Service,
                key: version.key.to_string(),
                op: ChangeOp::Put,
                version: Some(deployment.version),
                committed_at_us: at,
            });
            known.wrote(version.key, deployment.clone());
            applied.push((
                index,
                Applied {
                    deployment,
                    changed: true,
                },
            ));
        }
        Ok(applied)
    }
}
