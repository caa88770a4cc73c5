//! What a batch of applies needs to know before it writes (each service's current deployment,
//! whether its org and app exist), read for the whole batch in one statement at its start, in
//! its transaction (under the write lock, so that nobody else changes it meanwhile), and kept
//! up to date by the batch's own writes: one round trip per batch instead of two per apply.

use std::collections::{HashMap, HashSet};

use meridian_model::{Definition, Deployment};
use sqlx::{AnyConnection, Row};

use super::{deployment_from_row, Dialect, DEPLOYMENT_COLUMNS};
use crate::{Result, ServiceKey, StoreError};

/// What the batch knows of the services it applies, their orgs and apps.
pub(super) struct Known {
    current: HashMap<ServiceKey, Deployment>,
    orgs: HashSet<String>,
    apps: HashSet<(String, String)>,
}

impl Known {
    /// Reads, through the batch's transaction `conn`, what it needs to know to apply
    /// `definitions`.
    pub(super) async fn read<'a>(
        conn: &mut AnyConnection,
        definitions: impl Iterator<Item = &'a Definition>,
    ) -> Result<Known> {
        let keys: Vec<[&str; 3]> = definitions
            .map(|d| [d.org.as_str(), d.app.as_str(), d.name.as_str()])
            .collect();
        let list = serde_json::to_string(&keys)
            .map_err(|e| StoreError::Corrupt(format!("service keys: {e}")))?;
        let keys_table = Dialect::of(conn).json_keys("$1", "k");
        let rows = sqlx::query(&format!(
            "SELECT k.org AS key_org, k.app AS key_app, k.name AS key_name, \
                    (SELECT COUNT(*) FROM orgs o WHERE o.name = k.org) AS has_org, \
                    (SELECT COUNT(*) FROM apps a WHERE a.org = k.org AND a.name = k.app) \
                     AS has_app, \
                    {DEPLOYMENT_COLUMNS} FROM {keys_table} \
             LEFT JOIN services s ON s.org = k.org AND s.app = k.app AND s.name = k.name \
             LEFT JOIN deployments d ON d.org = s.org AND d.app = s.app \
              AND d.service = s.name AND d.version = s.current_version"
        ))
        .bind(list)
        .fetch_all(&mut *conn)
        .await?;
        let mut known = Known {
            current: HashMap::with_capacity(rows.len()),
            orgs: HashSet::new(),
            apps: HashSet::new(),
        };
        for row in &rows {
            let (org, app): (String, String) = (row.try_get("key_org")?, row.try_get("key_app")?);
            if row.try_get::<i64, _>("has_org")? > 0 {
                known.orgs.insert(org.clone());
            }
            if row.try_get::<i64, _>("has_app")? > 0 {
                known.apps.insert((org.clone(), app.clone()));
            }
            if row.try_get::<Option<i64>, _>("version")?.is_some() {
                let key = ServiceKey {
                    org,
                    app,
                    name: row.try_get("key_name")?,
                };
                known.current.insert(key, deployment_from_row(row)?);
            }
        }
        Ok(known)
    }

    /// The current deployment of `key`.
    pub(super) fn current(&self, key: &ServiceKey) -> Option<&Deployment> {
        self.current.get(key)
    }

    /// Whether org `org` exists.
    pub(super) fn has_org(&self, org: &str) -> bool {
        self.orgs.contains(org)
    }

    /// Whether app `org/app` exists.
    pub(super) fn has_app(&self, org: &str, app: &str) -> bool {
        self.apps.contains(&(org.to_owned(), app.to_owned()))
    }

    /// Notes that org `org` and app `org/app` exist (the batch made them if they were missing).
    pub(super) fn created(&mut self, org: &str, app: &str) {
        self.orgs.insert(org.to_owned());
        self.apps.insert((org.to_owned(), app.to_owned()));
    }

    /// Notes that the batch wrote `deployment`, the new current version of `key`, creating
    /// its org and app if they were missing.
    pub(super) fn wrote(&mut self, key: ServiceKey, deployment: Deployment) {
        self.created(&key.org, &key.app);
        self.current.insert(key, deployment);
    }
}
