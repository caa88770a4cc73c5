//! The regional control plane's side: a delta-xDS stream to the global control plane (mutual
//! TLS, with the region's own `control/<region>` certificate), subscribed to every
//! [`REGIONAL_DEPLOYMENT`] of the region and to every region's [`REGION_SUMMARY`] and
//! [`REGION_SERVICE`] entries. The first answer of regional deployments replaces what the
//! region knew (its disk copy); later ones re-render only the services whose resources
//! changed. Summaries and entries give the other regions' healthy instances, which the
//! region's node proxies reach when the region has none; after the first answer of both, only
//! the entries a response changes are decoded and taken. Every accepted
//! update is written to the disk copy. A bad resource rejects the update (NACK, with the reason)
//! and changes nothing; when the global control plane is away, the region goes on with what it
//! has and the client reconnects with backoff, resuming with the versions it holds.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;

use meridian_model::{Endpoint, RegionalDeployment, RolloutControl};
use meridian_xds::meridian::{self, REGIONAL_DEPLOYMENT, REGION_SERVICE, REGION_SUMMARY};
use meridian_xds::{
    run_delta_client, Changes, ClientOptions, Handler, Held, Interest, Interests, Resources,
};
use prost::Message;
use tokio::sync::watch;

use crate::elsewhere::{RemoteChanges, RemoteRegion, RemoteService};
use crate::region::{Region, ServiceId};

/// First and longest wait between attempts to reach the global control plane.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(5));
/// Shortest time between two writes of the disk copy. The copy holds the whole region, so
/// writing it for every update would make each change cost the region's size; updates that
/// come closer together are written together.
const COPY_INTERVAL: Duration = Duration::from_millis(500);

/// Follows the global control plane's xDS at `url` (an `https://` URL; `tls` presents the
/// region's certificate) into `state` for as long as the task runs. `synced` becomes true after
/// the first answer (the control plane is ready then); `copy_due` is told after accepted
/// updates, for [`keep_disk_copy`]. Started again, it takes the first answer as a whole again
/// (re-rendering only what differs from what the region has).
pub async fn follow_global(
    url: String,
    tls: Arc<rustls::ClientConfig>,
    state: Arc<Region>,
    synced: watch::Sender<bool>,
    copy_due: Arc<tokio::sync::Notify>,
) {
    let region = state.name().to_owned();
    let client = ClientOptions {
        url,
        tls: Some(tls),
        node: Node {
            id: format!("control/{region}"),
            ..Node::default()
        },
        backoff: BACKOFF,
    };
    let follower = Follower {
        region,
        state,
        synced,
        copy_due,
        applied: BTreeMap::new(),
        first: true,
        others_taken: false,
    };
    run_delta_client(client, follower).await;
}

/// Writes the region's disk copy to `path` each time `due` is told (at once after a quiet
/// spell, then at most every 500 ms); a failure is logged (the region goes on from
/// memory).
pub async fn keep_disk_copy(state: Arc<Region>, path: PathBuf, due: Arc<tokio::sync::Notify>) {
    loop {
        due.notified().await;
        let copy = state.disk_copy();
        if let Err(e) = crate::disk_copy::save(&path, &copy).await {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the region's disk copy");
        }
        tokio::time::sleep(COPY_INTERVAL).await;
    }
}

/// What a regional deployment resource carries, decoded.
struct Decoded {
    id: ServiceId,
    deployment: RegionalDeployment,
    endpoints: Vec<Endpoint>,
    control: Option<RolloutControl>,
    secrets: Vec<meridian::SecretValue>,
}

struct Follower {
    region: String,
    state: Arc<Region>,
    synced: watch::Sender<bool>,
    /// Told when the disk copy should be written again.
    copy_due: Arc<tokio::sync::Notify>,
    /// The version of each resource applied, by name.
    applied: BTreeMap<String, String>,
    /// Whether nothing was accepted yet.
    first: bool,
    /// Whether the other regions were taken as a whole yet.
    others_taken: bool,
}

fn interests() -> Interests {
    Interests::from([
        (REGIONAL_DEPLOYMENT.to_owned(), Interest::Wildcard),
        (REGION_SUMMARY.to_owned(), Interest::Wildcard),
        (REGION_SERVICE.to_owned(), Interest::Wildcard),
    ])
}

/// The service a resource name `<org>/<app>/<service>` names.
fn service_of(name: &str) -> Option<ServiceId> {
    let mut parts = name.split('/');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(org), Some(app), Some(service), None) => {
            Some((org.to_owned(), app.to_owned(), service.to_owned()))
        }
        _ => None,
    }
}

/// Decodes and checks one resource of `region`, or says what is wrong with it.
fn decode(region: &str, name: &str, held: &Held) -> Result<Decoded, String> {
    let bad = |reason: String| format!("regional deployment `{name}`: {reason}");
    let id = service_of(name).ok_or_else(|| bad("the name is not <org>/<app>/<service>".into()))?;
    let resource = meridian::RegionalDeployment::decode(held.resource.value.as_slice())
        .map_err(|e| bad(e.to_string()))?;
    let deployment: RegionalDeployment = serde_json::from_slice(&resource.deployment_json)
        .map_err(|e| bad(format!("deployment_json: {e}")))?;
    if deployment.region != region {
        return Err(bad(format!(
            "deployment_json.region: `{}`, but this is region {region}",
            deployment.region
        )));
    }
    if (&deployment.org, &deployment.app, &deployment.service) != (&id.0, &id.1, &id.2) {
        return Err(bad("deployment_json: names another service".into()));
    }
    let endpoints: Vec<Endpoint> = serde_json::from_slice(&resource.endpoints_json)
        .map_err(|e| bad(format!("endpoints_json: {e}")))?;
    if let Some(stray) = endpoints
        .iter()
        .find(|e| e.region != region || (&e.org, &e.app, &e.service) != (&id.0, &id.1, &id.2))
    {
        return Err(bad(format!(
            "endpoints_json: endpoint `{}` belongs to another service or region",
            stray.id
        )));
    }
    let control = if resource.control_json.is_empty() {
        None
    } else {
        let control = serde_json::from_slice(&resource.control_json)
            .map_err(|e| bad(format!("control_json: {e}")))?;
        Some(control)
    };
    let secrets = resource.secrets;
    if let Some(stray) = secrets
        .iter()
        .find(|s| deployment.spec.secrets.get(&s.name) != Some(&s.version))
    {
        return Err(bad(format!(
            "secrets: `{}` version {} is not one the spec references",
            stray.name, stray.version
        )));
    }
    Ok(Decoded {
        id,
        deployment,
        endpoints,
        control,
        secrets,
    })
}

/// Every region's coordinates, as the summaries held say, or which summary is bad and why.
fn coordinates(resources: &Resources) -> Result<BTreeMap<String, (f64, f64)>, String> {
    let mut coordinates = BTreeMap::new();
    for (name, held) in resources.get(REGION_SUMMARY).into_iter().flatten() {
        let bad = |reason: String| format!("region summary `{name}`: {reason}");
        meridian_model::check_dns_label(name).map_err(|e| bad(format!("name: {e}")))?;
        let summary = meridian::RegionSummary::decode(held.resource.value.as_slice())
            .map_err(|e| bad(e.to_string()))?;
        coordinates.insert(name.clone(), (summary.lat, summary.lon));
    }
    Ok(coordinates)
}

/// Every region the summaries held describe, with the services their entries list, or which
/// resource is bad and why. An entry whose region's summary has not come yet waits for it.
fn all_regions(resources: &Resources) -> Result<BTreeMap<String, RemoteRegion>, String> {
    let mut regions: BTreeMap<String, RemoteRegion> = coordinates(resources)?
        .into_iter()
        .map(|(name, (lat, lon))| {
            let services = Vec::new();
            (name, RemoteRegion { lat, lon, services })
        })
        .collect();
    for (name, held) in resources.get(REGION_SERVICE).into_iter().flatten() {
        let (region, service) = decode_entry(name, held)?;
        if let Some(region) = regions.get_mut(&region) {
            region.services.push(service);
        }
    }
    Ok(regions)
}

/// The region and service an entry's name (`<region>/<org>/<app>/<service>`) names.
fn entry_of(name: &str) -> Option<(String, ServiceId)> {
    let (region, service) = name.split_once('/')?;
    Some((region.to_owned(), service_of(service)?))
}

/// Decodes and checks the service entry `name` (`<region>/<org>/<app>/<service>`), or says
/// why it is bad.
fn decode_entry(name: &str, held: &Held) -> Result<(String, RemoteService), String> {
    let bad = |reason: String| format!("region service `{name}`: {reason}");
    let (region, named) =
        entry_of(name).ok_or_else(|| bad("name: not <region>/<org>/<app>/<service>".to_owned()))?;
    meridian_model::check_dns_label(&region).map_err(|e| bad(format!("name: {e}")))?;
    let service = meridian::RegionService::decode(held.resource.value.as_slice())
        .map_err(|e| bad(e.to_string()))?;
    let id = (service.org, service.app, service.service);
    if named != id {
        return Err(bad(format!(
            "org, app and service: `{}/{}/{}` is not the service the name says",
            id.0, id.1, id.2
        )));
    }
    let spec =
        serde_json::from_slice(&service.spec_json).map_err(|e| bad(format!("spec_json: {e}")))?;
    if let Some(address) = service
        .addresses
        .iter()
        .find(|a| a.parse::<std::net::IpAddr>().is_err())
    {
        return Err(bad(format!("addresses: `{address}` is not an IP address")));
    }
    let service = RemoteService {
        id,
        version: service.version,
        spec,
        addresses: service.addresses,
    };
    Ok((region, service))
}

impl Follower {
    /// Applies what `resources` holds: everything at the first update, then only what changed.
    async fn apply(&mut self, resources: &Resources) -> Result<(), String> {
        let held = resources.get(REGIONAL_DEPLOYMENT);
        let held = held.into_iter().flatten();
        let mut changed = Vec::new();
        for (name, resource) in held.clone() {
            if self.first || self.applied.get(name) != Some(&resource.version) {
                changed.push(decode(&self.region, name, resource)?);
            }
        }
        let now: BTreeMap<String, String> = held
            .map(|(name, resource)| (name.clone(), resource.version.clone()))
            .collect();
        let removed: Vec<ServiceId> = self
            .applied
            .keys()
            .filter(|name| !now.contains_key(*name))
            .filter_map(|name| service_of(name))
            .collect();
        let state = &self.state;
        if self.first {
            let controls: Vec<_> = changed.iter().map(|d| (d.id.clone(), d.control)).collect();
            let secrets = changed
                .iter_mut()
                .map(|d| (d.id.clone(), std::mem::take(&mut d.secrets)))
                .collect();
            // Values first: a spec that names a new version finds its value.
            state.replace_secrets(secrets);
            let (deployments, endpoints): (Vec<_>, Vec<_>) = changed
                .into_iter()
                .map(|d| (d.deployment, d.endpoints))
                .unzip();
            state.replace_all(deployments, endpoints.into_iter().flatten().collect());
            for (id, control) in controls {
                state.set_rollout_control(&id, control);
            }
            tracing::info!(region = %self.region, services = state.services(),
                "synced with the global control plane");
        } else {
            for decoded in changed {
                tracing::debug!(region = %self.region, service = ?decoded.id, "service changed");
                state.set_secrets(&decoded.id, decoded.secrets);
                state.set_service(
                    decoded.id.clone(),
                    Some(decoded.deployment),
                    decoded.endpoints,
                );
                state.set_rollout_control(&decoded.id, decoded.control);
            }
            for id in removed {
                tracing::debug!(region = %self.region, service = ?id, "service left the region");
                state.set_secrets(&id, Vec::new());
                state.set_service(id, None, Vec::new());
            }
        }
        self.applied = now;
        self.first = false;
        self.synced.send_replace(true);
        self.keep_copy();
        Ok(())
    }

    /// Takes what the summaries and entries held say of the other regions: as a whole the
    /// first time both kinds are held (what the disk copy said goes), then only the entries
    /// `changes` names, decoded, so that a change costs what it touched. A bad resource
    /// rejects the update and changes nothing.
    fn take_other_regions(
        &mut self,
        resources: &Resources,
        changes: &Changes<'_>,
    ) -> Result<(), String> {
        if !self.others_taken {
            if !(resources.contains_key(REGION_SUMMARY) && resources.contains_key(REGION_SERVICE)) {
                return Ok(());
            }
            let regions = all_regions(resources)?;
            self.state.set_region_summaries(&regions);
            self.others_taken = true;
        } else {
            let mut update = RemoteChanges {
                coordinates: coordinates(resources)?,
                ..RemoteChanges::default()
            };
            if changes.type_url == REGION_SERVICE {
                let held = resources.get(REGION_SERVICE);
                for name in changes.names {
                    match held.and_then(|held| held.get(name)) {
                        Some(entry) => update.put.push(decode_entry(name, entry)?),
                        None => update.removed.extend(entry_of(name)),
                    }
                }
            }
            self.state.update_other_regions(update);
        }
        self.keep_copy();
        Ok(())
    }

    /// Has the region's disk copy written again.
    fn keep_copy(&self) {
        self.copy_due.notify_one();
    }
}

impl Handler for Follower {
    fn initial_interests(&self) -> Interests {
        interests()
    }

    async fn accept(&mut self, resources: &Resources, type_url: &str) -> Result<Interests, String> {
        if type_url == REGIONAL_DEPLOYMENT {
            self.apply(resources).await?;
        }
        Ok(interests())
    }

    async fn accept_changes(
        &mut self,
        resources: &Resources,
        changes: &Changes<'_>,
    ) -> Result<Option<Interests>, String> {
        if [REGION_SUMMARY, REGION_SERVICE].contains(&changes.type_url) {
            self.take_other_regions(resources, changes)?;
            return Ok(Some(interests()));
        }
        self.accept(resources, changes.type_url).await.map(Some)
    }
}
