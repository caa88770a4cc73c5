//! The global control plane's side: every service's regional deployments, with the endpoints
//! registered for them in that region, as [`REGIONAL_DEPLOYMENT`] resources named
//! `region/<region>/<org>/<app>/<service>` in an xDS cache, kept in step with the store's change
//! feed. A change re-reads only the service it names, and the cache wakes only the streams of
//! the regions whose resources changed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::google::protobuf::Any;
use meridian_model::{derive_regional, ChangeKind, Endpoint};
use meridian_store::{wait_for_changes, ServiceFilter, ServiceKey, Store, StoreError};
use meridian_xds::meridian::{RegionalDeployment, REGIONAL_DEPLOYMENT};
use meridian_xds::{region_namespace, Cache, Update};
use prost::Message;

/// Most changes read at once.
const FEED_PAGE: u32 = 1024;
/// Longest wait for a change before looking again (a quiet store costs one read per period).
const FEED_WAIT: Duration = Duration::from_secs(60);
/// Backoff after a store failure: doubles from the first value up to the second.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(10));

/// Regions whose resources name each service, as published.
type Published = BTreeMap<String, BTreeSet<String>>;

/// Publishes the regional deployments of every service in `store` into `cache`, then follows
/// the change feed, until the process ends. A store failure is logged and retried with backoff,
/// then everything is published again (unchanged resources keep their versions).
pub async fn publish_regional_deployments(store: Arc<dyn Store>, cache: Arc<Cache>) {
    let mut published = Published::new();
    let mut backoff = BACKOFF.0;
    loop {
        match publish_then_follow(&*store, &cache, &mut published).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff,
                    "reading the store for the regions failed; regions keep what they have");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF.1);
            }
        }
    }
}

/// Publishes every service, then each service a change names; returns when the store closes.
async fn publish_then_follow(
    store: &dyn Store,
    cache: &Cache,
    published: &mut Published,
) -> Result<(), StoreError> {
    let mut revision = store.revision().await?;
    let services = store.list_services(&ServiceFilter::default()).await?;
    let mut stale: BTreeSet<String> = published.keys().cloned().collect();
    for summary in &services {
        let key = ServiceKey {
            org: summary.org.clone(),
            app: summary.app.clone(),
            name: summary.name.clone(),
        };
        stale.remove(&key.to_string());
        publish_service(store, cache, published, &key).await?;
    }
    for gone in stale {
        if let Some(regions) = published.remove(&gone) {
            cache.apply(REGIONAL_DEPLOYMENT, removal(&gone, regions));
        }
    }
    tracing::info!(
        revision,
        services = services.len(),
        "regional deployments published for the regions"
    );
    loop {
        let changes = match wait_for_changes(store, revision, FEED_PAGE, FEED_WAIT).await {
            Err(StoreError::Closed) => return Ok(()),
            changes => changes?,
        };
        let mut touched = BTreeSet::new();
        for change in &changes {
            if matches!(change.kind, ChangeKind::Service | ChangeKind::Endpoint) {
                let mut parts = change.key.splitn(4, '/');
                if let (Some(org), Some(app), Some(name)) =
                    (parts.next(), parts.next(), parts.next())
                {
                    touched.insert((org.to_owned(), app.to_owned(), name.to_owned()));
                }
            }
            revision = change.revision;
        }
        for (org, app, name) in touched {
            publish_service(store, cache, published, &ServiceKey { org, app, name }).await?;
        }
    }
}

/// The cache name of `service`'s resource for `region`.
fn resource_name(region: &str, service: &str) -> String {
    format!("{}{service}", region_namespace(region))
}

/// Removes `service`'s resources for `regions`.
fn removal(service: &str, regions: BTreeSet<String>) -> Update {
    Update {
        put: Vec::new(),
        remove: regions
            .iter()
            .map(|region| resource_name(region, service))
            .collect(),
    }
}

/// Re-reads one service and its endpoints and publishes its regional deployments; regions it
/// no longer runs in lose theirs.
async fn publish_service(
    store: &dyn Store,
    cache: &Cache,
    published: &mut Published,
    key: &ServiceKey,
) -> Result<(), StoreError> {
    let name = key.to_string();
    let regional = match store.get_service(key).await? {
        Some(current) => derive_regional(&current.definition, current.version),
        None => Vec::new(),
    };
    let endpoints = if regional.is_empty() {
        Vec::new()
    } else {
        store.list_endpoints(key).await?
    };
    let mut update = Update::default();
    let mut regions = BTreeSet::new();
    for deployment in regional {
        let here: Vec<&Endpoint> = endpoints
            .iter()
            .filter(|e| e.region == deployment.region)
            .collect();
        let resource = RegionalDeployment {
            deployment_json: to_json(&deployment),
            endpoints_json: to_json(&here),
        };
        update.put.push((
            resource_name(&deployment.region, &name),
            Any {
                type_url: REGIONAL_DEPLOYMENT.to_owned(),
                value: resource.encode_to_vec(),
            },
        ));
        regions.insert(deployment.region);
    }
    let before = published.remove(&name).unwrap_or_default();
    update.remove = removal(&name, before.difference(&regions).cloned().collect()).remove;
    if !regions.is_empty() {
        published.insert(name, regions);
    }
    cache.apply(REGIONAL_DEPLOYMENT, update);
    Ok(())
}

/// `value` as JSON (model types always serialize).
fn to_json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}
