//! The current state of many services at once ([`crate::Store::service_states`]): two
//! statements for any number of services (their deployments with their rollout controls, then
//! their endpoints), where one service at a time takes three round trips each.

use std::collections::HashMap;

use meridian_model::RolloutControl;
use sqlx::{AnyPool, Row};

use super::endpoints::{endpoint_from_row, COLUMNS as ENDPOINT_COLUMNS};
use super::{deployment_from_row, Dialect, DEPLOYMENT_COLUMNS};
use crate::{Result, ServiceKey, ServiceState, StoreError};

/// Most services one statement asks for (the rest go in the next).
const PAGE: usize = 512;

/// The state of each of `keys`, in order, read through `reader`.
pub(super) async fn read(
    reader: &AnyPool,
    dialect: Dialect,
    keys: &[ServiceKey],
) -> Result<Vec<ServiceState>> {
    let mut states = Vec::with_capacity(keys.len());
    for page in keys.chunks(PAGE) {
        states.extend(read_page(reader, dialect, page).await?);
    }
    Ok(states)
}

type Triple = (String, String, String);

fn triple(org: &str, app: &str, name: &str) -> Triple {
    (org.to_owned(), app.to_owned(), name.to_owned())
}

async fn read_page(
    reader: &AnyPool,
    dialect: Dialect,
    keys: &[ServiceKey],
) -> Result<Vec<ServiceState>> {
    let list: Vec<[&str; 3]> = keys
        .iter()
        .map(|k| [k.org.as_str(), k.app.as_str(), k.name.as_str()])
        .collect();
    let list = serde_json::to_string(&list)
        .map_err(|e| StoreError::Corrupt(format!("service keys: {e}")))?;
    let keys_table = dialect.json_keys("$1", "k");
    let rows = sqlx::query(&format!(
        "SELECT s.org AS key_org, s.app AS key_app, s.name AS key_name, {DEPLOYMENT_COLUMNS}, \
                c.control FROM {keys_table} \
         JOIN services s ON s.org = k.org AND s.app = k.app AND s.name = k.name \
         JOIN deployments d ON d.org = s.org AND d.app = s.app AND d.service = s.name \
          AND d.version = s.current_version \
         LEFT JOIN rollout_controls c ON c.org = s.org AND c.app = s.app AND c.service = s.name"
    ))
    .bind(&list)
    .fetch_all(reader)
    .await?;
    let mut found: HashMap<Triple, ServiceState> = HashMap::with_capacity(rows.len());
    for row in &rows {
        let control: Option<String> = row.try_get("control")?;
        let control: Option<RolloutControl> = control
            .map(|text| {
                serde_json::from_str(&text)
                    .map_err(|e| StoreError::Corrupt(format!("rollout control: {e}")))
            })
            .transpose()?;
        let key = triple(
            row.try_get("key_org")?,
            row.try_get("key_app")?,
            row.try_get("key_name")?,
        );
        let state = ServiceState {
            deployment: Some(deployment_from_row(row)?),
            control,
            endpoints: Vec::new(),
        };
        found.insert(key, state);
    }
    let columns: Vec<String> = ENDPOINT_COLUMNS
        .split(", ")
        .map(|column| format!("e.{column}"))
        .collect();
    let rows = sqlx::query(&format!(
        "SELECT {} FROM {keys_table} \
         JOIN endpoints e ON e.org = k.org AND e.app = k.app AND e.service = k.name \
         ORDER BY e.org, e.app, e.service, e.id",
        columns.join(", ")
    ))
    .bind(&list)
    .fetch_all(reader)
    .await?;
    for row in &rows {
        let endpoint = endpoint_from_row(row)?;
        let key = triple(&endpoint.org, &endpoint.app, &endpoint.service);
        if let Some(state) = found.get_mut(&key) {
            state.endpoints.push(endpoint);
        }
    }
    Ok(keys
        .iter()
        .map(|k| {
            found
                .get(&triple(&k.org, &k.app, &k.name))
                .cloned()
                .unwrap_or_default()
        })
        .collect())
}
