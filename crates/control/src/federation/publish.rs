//! The global control plane's side. Three kinds of resources go into an xDS cache:
//!
//! - every service's regional deployments, with the endpoints registered for them in that
//!   region, as [`REGIONAL_DEPLOYMENT`] resources named `region/<region>/<org>/<app>/<service>`,
//!   kept in step with the store's change feed (a change re-reads only the service it names);
//! - every region's [`REGION_SUMMARY`] (`regions/<region>`): its coordinates, whether it
//!   reports and its gateway;
//! - for each service deployed in a region, its [`REGION_SERVICE`] entry
//!   (`regions/<region>/<org>/<app>/<service>`): its spec and the addresses of the healthy
//!   instances the region last reported (a report older than [`REPORT_STALE`] counts as
//!   none), so that every region and edge can reach the others' instances.
//!
//! The cache wakes only the streams whose resources changed, and every rendering is in
//! proportion to what changed: a change in the store renders the entries of the service it
//! touches; a region's report (looked at when one comes and every [`SUMMARY_REFRESH`], so
//! that stale reports drop out) renders only the entries of the services it shows differently
//! from the report before.
//!
//! Work is in proportion to followers: while no region or edge follows this plane (the cache
//! has no stream, as on a replica the others' followers chose), a change in the store, a
//! report or the refresh period renders nothing; what they touched is noted ([`Behind`]), the
//! cache is told it is behind ([`Cache::fall_behind`]), and the first stream to open waits
//! until it is all published ([`Cache::caught_up`]), so it is never sent an outdated resource.
//!
//! It tells the plane's [`Readiness`] when the first load is in the cache ([`PUBLISHED`]), and
//! when every region's summary carries a report this process received ([`REPORTED`]), or the
//! time given to regions to report has passed: a restarted plane does not know the reports
//! its predecessor had, and until the regions report again it would publish them as not
//! reporting.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::google::protobuf::Any;
use meridian_api::Readiness;
use meridian_identity::SealingKey;
use meridian_model::waves::{self, Standing};
use meridian_model::{
    derive_regional, ChangeKind, Deployment, Endpoint, RegionReport, RegionalDeployment,
    RolloutMode,
};
use meridian_store::{
    wait_for_changes, ServiceFilter, ServiceKey, ServiceState, Store, StoreError,
};
use meridian_xds::meridian::{
    REGIONAL_DEPLOYMENT, REGIONS_NAMESPACE, REGION_SERVICE, REGION_SUMMARY,
};
use meridian_xds::{region_namespace, Cache, Update};
use prost::Message;
use tokio::sync::watch;

use super::secrets;
use super::summary::{self, ServiceEntry, Shown};

/// Most changes read at once.
const FEED_PAGE: u32 = 1024;
/// Longest wait for a change before looking again (a quiet store costs one read per period).
const FEED_WAIT: Duration = Duration::from_secs(60);
/// Backoff after a store failure: doubles from the first value up to the second.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(10));
/// A region's report older than this no longer vouches for its instances.
pub const REPORT_STALE: Duration = Duration::from_secs(10);
/// How often the regions' reports are looked at without news (so that stale reports drop
/// out).
const SUMMARY_REFRESH: Duration = Duration::from_secs(2);

/// The readiness part [`publish_regional_deployments`] does once every service's regional
/// deployments and every region's summary are in the cache.
pub const PUBLISHED: &str = "the regional deployments published";
/// The readiness part [`publish_regional_deployments`] does once every region has reported
/// (or the time given to them has passed) and the summaries say so.
pub const REPORTED: &str = "a report from every region";

/// The last report of a region, and its age.
pub type LatestReport = dyn Fn(&str) -> Option<(RegionReport, Duration)> + Send + Sync;

/// Where region summaries get the regions' reports: the last report of a region and its age,
/// and a receiver that changes when a region reports something new.
pub struct ReportSource {
    /// The last report of a region, and its age.
    pub latest: Box<LatestReport>,
    /// Changes when a region reports something new.
    pub changed: watch::Receiver<u64>,
}

/// What the publisher tells the plane's readiness: [`PUBLISHED`], then [`REPORTED`] once
/// every region has reported or at `reports_by`, whichever comes first.
#[derive(Clone)]
pub struct FirstLoad {
    /// The plane's readiness.
    pub readiness: Readiness,
    /// When regions that have not reported yet are published as not reporting.
    pub reports_by: tokio::time::Instant,
}

/// A published regional deployment, with its entry in its region (made once, for every
/// rendering) and what that entry shows of the region's report.
struct PublishedDeployment {
    deployment: RegionalDeployment,
    entry: ServiceEntry,
    shown: Shown,
}

/// What changed while no stream followed the cache and is not published yet.
#[derive(Default)]
struct Behind {
    /// Services to read and publish again.
    services: BTreeSet<(String, String, String)>,
    /// Apps whose services are all to be read and published again (a secret changed).
    apps: BTreeSet<(String, String)>,
    /// Whether the regions' reports (and the regions) are to be looked at again.
    summaries: bool,
}

impl Behind {
    fn is_empty(&self) -> bool {
        self.services.is_empty() && self.apps.is_empty() && !self.summaries
    }

    /// Notes what a change touched (`summaries`: whether the regions' reports are to be
    /// looked at again); returns whether the publisher just fell behind: nothing was noted
    /// before and something is now. A change that touches no region's resource (a
    /// certificate's, say) notes nothing, so that the cache is not said to be behind with
    /// nothing to catch up on (the first stream would wait for ever).
    fn note(
        &mut self,
        services: BTreeSet<(String, String, String)>,
        apps: BTreeSet<(String, String)>,
        summaries: bool,
    ) -> bool {
        let was_behind = !self.is_empty();
        self.services.extend(services);
        self.apps.extend(apps);
        self.summaries |= summaries;
        !was_behind && !self.is_empty()
    }
}

/// A region's last fresh report, as the published entries show it.
#[derive(Default)]
struct RegionHealth {
    /// The report (none: the region has no fresh one).
    report: Option<RegionReport>,
    /// What it says of each service it lists (`org/app/service`).
    by_service: HashMap<String, Shown>,
}

impl RegionHealth {
    /// What the report says of `service` (`org/app/service`).
    fn shown(&self, service: &str) -> Shown {
        self.by_service.get(service).cloned().unwrap_or_default()
    }
}

/// What has been published.
#[derive(Default)]
struct Published {
    /// Each region's regional deployments, by service (`org/app/service`).
    deployed: BTreeMap<String, BTreeMap<String, PublishedDeployment>>,
    /// Each region's coordinates.
    regions: BTreeMap<String, (f64, f64)>,
    /// Each region's last fresh report, as last looked at.
    health: BTreeMap<String, RegionHealth>,
    /// Services whose current version some regions do not take yet (their wave has not
    /// started), by name: published again whenever a region reports.
    held: BTreeMap<String, ServiceKey>,
}

/// Publishes the regional deployments of every service in `store`, every region's summary
/// and the entries of the services deployed there into `cache`, then follows the change feed
/// and `reports`, until the process ends; tells `first` as it goes. A store failure is logged
/// and retried with backoff, then everything is published again (unchanged resources keep
/// their versions).
pub async fn publish_regional_deployments(
    store: Arc<dyn Store>,
    cache: Arc<Cache>,
    mut reports: ReportSource,
    first: FirstLoad,
    secrets: Option<Arc<SealingKey>>,
) {
    let mut published = Published::default();
    let mut backoff = BACKOFF.0;
    let sources = Sources {
        store: &*store,
        secrets: secrets.as_deref(),
    };
    loop {
        match publish_then_follow(sources, &cache, &mut reports, &mut published, &first).await {
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

/// Where published resources come from: the store, and the key that opens its secrets.
#[derive(Clone, Copy)]
struct Sources<'a> {
    store: &'a dyn Store,
    secrets: Option<&'a SealingKey>,
}

/// Publishes everything, then what each change touches; returns when the store closes.
async fn publish_then_follow(
    sources: Sources<'_>,
    cache: &Cache,
    reports: &mut ReportSource,
    published: &mut Published,
    first: &FirstLoad,
) -> Result<(), StoreError> {
    let store = sources.store;
    let mut revision = store.revision().await?;
    read_regions(store, published).await?;
    look_at_reports(cache, published, &reports.latest);
    let services = store.list_services(&ServiceFilter::default()).await?;
    let mut stale: BTreeSet<String> = published
        .deployed
        .values()
        .flat_map(|services| services.keys().cloned())
        .collect();
    let keys: Vec<ServiceKey> = services
        .iter()
        .map(|summary| ServiceKey {
            org: summary.org.clone(),
            app: summary.app.clone(),
            name: summary.name.clone(),
        })
        .collect();
    for key in &keys {
        stale.remove(&key.to_string());
    }
    publish_services(sources, cache, published, keys, &reports.latest).await?;
    for gone in stale {
        let left = withdraw(published, &gone);
        apply_removals(cache, &gone, &left);
    }
    withdraw_leftovers(cache, published);
    // Everything is current (an earlier run may have left some behind).
    cache.caught_up();
    tracing::info!(
        revision,
        services = services.len(),
        "regional deployments published for the regions"
    );
    first.readiness.done(PUBLISHED);
    let mut waiting_for_reports = first.readiness.waiting().contains(&REPORTED)
        && !tell_reported(first, published, &reports.latest);
    let mut followers = cache.followers();
    let mut behind = Behind::default();
    loop {
        // A report or the refresh period looks at the regions' reports (rendering what they
        // changed); a change in the store renders only the services it touches.
        let (changes, look) = tokio::select! {
            changes = wait_for_changes(store, revision, FEED_PAGE, FEED_WAIT) => (changes, false),
            _ = reports.changed.changed() => (Ok(Vec::new()), true),
            () = tokio::time::sleep(SUMMARY_REFRESH) => (Ok(Vec::new()), true),
            () = tokio::time::sleep_until(first.reports_by), if waiting_for_reports => {
                (Ok(Vec::new()), true)
            }
            Ok(()) = followers.changed(), if !behind.is_empty() => (Ok(Vec::new()), false),
        };
        let changes = match changes {
            Err(StoreError::Closed) => return Ok(()),
            changes => changes?,
        };
        let mut touched = BTreeSet::new();
        let mut apps = BTreeSet::new();
        let mut regions_changed = false;
        for change in &changes {
            match change.kind {
                ChangeKind::Service | ChangeKind::Endpoint | ChangeKind::RolloutControl => {
                    if let Some(key) = ServiceKey::from_change_key(&change.key) {
                        touched.insert((key.org, key.app, key.name));
                    }
                }
                ChangeKind::Region => regions_changed = true,
                // A secret's new version rolls the services of its app that use it.
                ChangeKind::Secret => {
                    let mut parts = change.key.splitn(3, '/');
                    if let (Some(org), Some(app)) = (parts.next(), parts.next()) {
                        apps.insert((org.to_owned(), app.to_owned()));
                    }
                }
                _ => {}
            }
            revision = change.revision;
        }
        if regions_changed {
            read_regions(store, published).await?;
        }
        if *followers.borrow_and_update() == 0 {
            // Nobody to publish to: note what to publish once somebody comes.
            if behind.note(touched, apps, look || regions_changed) {
                cache.fall_behind();
            }
            if waiting_for_reports && look {
                waiting_for_reports = !tell_reported(first, published, &reports.latest);
            }
            continue;
        }
        let caught_up = !behind.is_empty();
        let left = std::mem::take(&mut behind);
        let look = look || regions_changed || left.summaries;
        touched.extend(left.services);
        apps.extend(left.apps);
        for (org, app) in apps {
            let filter = ServiceFilter {
                org: Some(org),
                app: Some(app),
                name: None,
            };
            for s in store.list_services(&filter).await? {
                touched.insert((s.org, s.app, s.name));
            }
        }
        let mut keys: Vec<ServiceKey> = touched
            .into_iter()
            .map(|(org, app, name)| ServiceKey { org, app, name })
            .collect();
        if look {
            look_at_reports(cache, published, &reports.latest);
            // What regions report may start the next wave of a service.
            keys.extend(published.held.values().cloned());
        }
        publish_services(sources, cache, published, keys, &reports.latest).await?;
        if look && waiting_for_reports {
            waiting_for_reports = !tell_reported(first, published, &reports.latest);
        }
        if caught_up {
            cache.caught_up();
        }
    }
}

/// Does [`REPORTED`] if every region has a report (the summaries just published carry them)
/// or the time for them has passed; returns whether it did.
fn tell_reported(first: &FirstLoad, published: &Published, latest: &LatestReport) -> bool {
    let silent: Vec<&str> = published
        .regions
        .keys()
        .map(String::as_str)
        .filter(|region| latest(region).is_none())
        .collect();
    if !silent.is_empty() && tokio::time::Instant::now() < first.reports_by {
        return false;
    }
    if !silent.is_empty() {
        tracing::warn!(regions = ?silent, "regions that have not reported since this plane \
            started are published as not reporting");
    }
    first.readiness.done(REPORTED);
    true
}

/// Reads every region's coordinates.
async fn read_regions(store: &dyn Store, published: &mut Published) -> Result<(), StoreError> {
    published.regions = store
        .list_regions()
        .await?
        .into_iter()
        .map(|r| (r.name, (r.lat, r.lon)))
        .collect();
    Ok(())
}

/// The cache name of `service`'s resource for `region`.
fn resource_name(region: &str, service: &str) -> String {
    format!("{}{service}", region_namespace(region))
}

/// Removes from `cache` every regional deployment and every service entry that `published`
/// does not hold: when this task was started again (its record empty), those an earlier run
/// published for services deleted since.
fn withdraw_leftovers(cache: &Cache, published: &Published) {
    let deployed = || {
        published
            .deployed
            .iter()
            .flat_map(|(region, services)| services.keys().map(move |s| (region, s)))
    };
    let deployments: BTreeSet<String> = deployed().map(|(r, s)| resource_name(r, s)).collect();
    let entries: BTreeSet<String> = deployed()
        .map(|(r, s)| summary::service_name(r, s))
        .collect();
    for (type_url, prefix, current) in [
        (REGIONAL_DEPLOYMENT, "", deployments),
        (REGION_SERVICE, REGIONS_NAMESPACE, entries),
    ] {
        let remove: Vec<String> = cache
            .names(type_url, prefix)
            .into_iter()
            .filter(|name| !current.contains(name))
            .collect();
        if !remove.is_empty() {
            cache.apply(
                type_url,
                Update {
                    put: Vec::new(),
                    remove,
                },
            );
        }
    }
}

/// Forgets `service` in every region; returns the regions it was published to.
fn withdraw(published: &mut Published, service: &str) -> Vec<String> {
    let mut regions = Vec::new();
    for (region, services) in &mut published.deployed {
        if services.remove(service).is_some() {
            regions.push(region.clone());
        }
    }
    regions
}

/// Removes `service`'s regional deployment and entry in each of `regions` from `cache`.
fn apply_removals(cache: &Cache, service: &str, regions: &[String]) {
    if regions.is_empty() {
        return;
    }
    let removal = |name: fn(&str, &str) -> String| Update {
        put: Vec::new(),
        remove: regions.iter().map(|r| name(r, service)).collect(),
    };
    cache.apply(REGIONAL_DEPLOYMENT, removal(resource_name));
    cache.apply(REGION_SERVICE, removal(summary::service_name));
}

/// Re-reads services (`keys`, all at once) and publishes their regional deployments and
/// entries; regions a service no longer runs in lose theirs.
async fn publish_services(
    sources: Sources<'_>,
    cache: &Cache,
    published: &mut Published,
    keys: Vec<ServiceKey>,
    latest: &LatestReport,
) -> Result<(), StoreError> {
    if keys.is_empty() {
        return Ok(());
    }
    let states = sources.store.service_states(&keys).await?;
    for (key, state) in keys.iter().zip(states) {
        publish_service(sources, cache, published, key, state, latest).await?;
    }
    Ok(())
}

/// Publishes the regional deployments of service `key`, whose current `state` was just read,
/// and its entry in each of its regions; regions it no longer runs in lose both.
async fn publish_service(
    sources: Sources<'_>,
    cache: &Cache,
    published: &mut Published,
    key: &ServiceKey,
    state: ServiceState,
    latest: &LatestReport,
) -> Result<(), StoreError> {
    let store = sources.store;
    let name = key.to_string();
    let ServiceState {
        deployment,
        control,
        endpoints,
    } = state;
    let (mut regional, control) = match deployment {
        Some(current) => {
            let paused =
                control.filter(|c| c.version == current.version && c.mode == RolloutMode::Paused);
            let regional =
                in_waves(store, published, key, &current, latest, paused.is_some()).await?;
            (regional, control)
        }
        None => {
            published.held.remove(&name);
            (Vec::new(), None)
        }
    };
    let control_json = control.map(|c| to_json(&c)).unwrap_or_default();
    let secrets = secrets::resolve(store, sources.secrets, key, &mut regional).await?;
    let mut left = withdraw(published, &name);
    let mut deployments = Update::default();
    let mut entries = Update::default();
    for (deployment, secrets) in regional.into_iter().zip(secrets) {
        let here: Vec<&Endpoint> = endpoints
            .iter()
            .filter(|e| e.region == deployment.region)
            .collect();
        let resource = meridian_xds::meridian::RegionalDeployment {
            deployment_json: to_json(&deployment),
            endpoints_json: to_json(&here),
            control_json: control_json.clone(),
            secrets,
        };
        left.retain(|region| *region != deployment.region);
        deployments.put.push((
            resource_name(&deployment.region, &name),
            Any {
                type_url: REGIONAL_DEPLOYMENT.to_owned(),
                value: resource.encode_to_vec(),
            },
        ));
        let entry = ServiceEntry::new(&deployment);
        let shown = published
            .health
            .get(&deployment.region)
            .map(|h| h.shown(&name))
            .unwrap_or_default();
        entries.put.push(summary::render_service(
            &deployment.region,
            &name,
            &entry,
            &shown,
        ));
        published
            .deployed
            .entry(deployment.region.clone())
            .or_default()
            .insert(
                name.clone(),
                PublishedDeployment {
                    deployment,
                    entry,
                    shown,
                },
            );
    }
    deployments.remove = left.iter().map(|r| resource_name(r, &name)).collect();
    entries.remove = left
        .iter()
        .map(|r| summary::service_name(r, &name))
        .collect();
    cache.apply(REGIONAL_DEPLOYMENT, deployments);
    cache.apply(REGION_SERVICE, entries);
    Ok(())
}

/// The regional deployments of `current` to publish, in its waves: the regions whose wave has
/// started take the current version; the others keep the version they had (what was
/// published to them, or else what they report running, or else the version before the
/// current one), or get nothing when they had none. Notes in `published` whether some region
/// is held back. A `paused` rollout releases no further wave.
async fn in_waves(
    store: &dyn Store,
    published: &mut Published,
    key: &ServiceKey,
    current: &Deployment,
    latest: &LatestReport,
    paused: bool,
) -> Result<Vec<RegionalDeployment>, StoreError> {
    let name = key.to_string();
    let regional = derive_regional(&current.definition, current.version);
    if current.definition.deploy.waves.is_empty() {
        published.held.remove(&name);
        return Ok(regional);
    }
    let reports: Vec<Option<RegionReport>> = regional
        .iter()
        .map(|rd| {
            latest(&rd.region)
                .filter(|(_, age)| *age <= REPORT_STALE)
                .map(|(report, _)| report)
        })
        .collect();
    let had = |region: &str| {
        published
            .deployed
            .get(region)
            .and_then(|services| services.get(&name))
            .map(|p| &p.deployment)
    };
    let standings: Vec<Standing> = regional
        .iter()
        .zip(&reports)
        .map(|(rd, report)| {
            let health = report.as_ref().and_then(|r| waves::service_in(r, rd));
            let taken = had(&rd.region).is_some_and(|d| d.version == current.version);
            waves::standing(rd, health, taken)
        })
        .collect();
    let mut released = waves::released(&standings);
    if paused {
        // Only the regions that took the version before the pause keep it.
        for (released, standing) in released.iter_mut().zip(&standings) {
            *released &= standing.started;
        }
    }
    let mut out = Vec::with_capacity(regional.len());
    let mut held = false;
    for ((rd, report), released) in regional.into_iter().zip(&reports).zip(released) {
        if released {
            out.push(rd);
            continue;
        }
        held = true;
        if let Some(before) = had(&rd.region) {
            out.push(before.clone());
            continue;
        }
        let running = report
            .as_ref()
            .and_then(|r| waves::service_in(r, &rd))
            .map(|h| h.version);
        let version = running.unwrap_or(current.version.saturating_sub(1));
        if let Some(earlier) = store.get_deployment(key, version).await? {
            out.extend(
                derive_regional(&earlier.definition, earlier.version)
                    .into_iter()
                    .filter(|e| e.region == rd.region),
            );
        }
    }
    if held {
        tracing::debug!(service = %name, "regions in later waves wait for the earlier ones");
        published.held.insert(name, key.clone());
    } else {
        published.held.remove(&name);
    }
    Ok(out)
}

/// Looks at each region's last report and renders every region's summary (regions that are
/// gone lose theirs; an unchanged summary changes nothing in the cache). In a region whose
/// fresh report differs from the one looked at before (or that has none any more), the
/// entries of the services it shows differently are rendered again: work in proportion to
/// the services of the regions whose reports changed.
fn look_at_reports(cache: &Cache, published: &mut Published, latest: &LatestReport) {
    let mut summaries = Update::default();
    let mut entries = Update::default();
    for (region, &coordinates) in &published.regions {
        let report = latest(region)
            .filter(|(_, age)| *age <= REPORT_STALE)
            .map(|(report, _)| report);
        summaries.put.push(summary::render_summary(
            region,
            coordinates,
            report.as_ref(),
        ));
        let health = published.health.entry(region.clone()).or_default();
        if health.report == report {
            continue;
        }
        health.by_service = report
            .iter()
            .flat_map(|r| &r.services)
            .map(|s| {
                let name = format!("{}/{}/{}", s.org, s.app, s.service);
                (name, Shown::of(Some(s)))
            })
            .collect();
        health.report = report;
        for (service, p) in published.deployed.get_mut(region).into_iter().flatten() {
            let shown = health.shown(service);
            if p.shown != shown {
                entries
                    .put
                    .push(summary::render_service(region, service, &p.entry, &shown));
                p.shown = shown;
            }
        }
    }
    published
        .health
        .retain(|region, _| published.regions.contains_key(region));
    let current: BTreeSet<&str> = summaries
        .put
        .iter()
        .map(|(name, _)| name.as_str())
        .collect();
    summaries.remove = cache
        .names(REGION_SUMMARY, REGIONS_NAMESPACE)
        .into_iter()
        .filter(|name| !current.contains(name.as_str()))
        .collect();
    cache.apply(REGION_SERVICE, entries);
    cache.apply(REGION_SUMMARY, summaries);
}

/// `value` as JSON (model types always serialize).
fn to_json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use meridian_model::Region;
    use meridian_store::SqlStore;
    use meridian_xds::meridian::RegionSummary;
    use tokio::time::Instant;

    use super::*;

    const DEADLINE: Duration = Duration::from_secs(10);

    /// A store with regions `regions`, in `dir`.
    async fn store_with(dir: &std::path::Path, regions: &[&str]) -> Arc<dyn Store> {
        let store = SqlStore::open_sqlite(&dir.join("meridian.db"))
            .await
            .unwrap();
        for name in regions {
            let region = Region {
                name: (*name).to_owned(),
                lat: 50.0,
                lon: 8.0,
            };
            store.put_region(&region).await.unwrap();
        }
        Arc::new(store)
    }

    /// Publishes `store` with `reports` (regions' last reports) into a new cache, telling a
    /// new readiness, with `reports_by` from now.
    fn publish(
        store: Arc<dyn Store>,
        reports: &meridian_api::Reports,
        reports_by: Duration,
    ) -> (Arc<Cache>, Readiness, tokio::task::JoinHandle<()>) {
        publish_into(Cache::new(), store, reports, reports_by)
    }

    /// [`publish`] into `cache`, which may hold what an earlier run published, followed by a
    /// stream all along.
    fn publish_into(
        cache: Arc<Cache>,
        store: Arc<dyn Store>,
        reports: &meridian_api::Reports,
        reports_by: Duration,
    ) -> (Arc<Cache>, Readiness, tokio::task::JoinHandle<()>) {
        publish_followed(cache, store, reports, reports_by, true)
    }

    /// [`publish_into`], with a stream that follows the cache all along if `followed`.
    fn publish_followed(
        cache: Arc<Cache>,
        store: Arc<dyn Store>,
        reports: &meridian_api::Reports,
        reports_by: Duration,
        followed: bool,
    ) -> (Arc<Cache>, Readiness, tokio::task::JoinHandle<()>) {
        let readiness = Readiness::waiting_for([PUBLISHED, REPORTED]);
        let latest = reports.clone();
        let source = ReportSource {
            latest: Box::new(move |region| latest.get(region)),
            changed: reports.subscribe(),
        };
        let first = FirstLoad {
            readiness: readiness.clone(),
            reports_by: Instant::now() + reports_by,
        };
        let follower = followed.then(|| cache.subscriber());
        let publishing = publish_regional_deployments(store, cache.clone(), source, first, None);
        let task = tokio::spawn(async move {
            let _follower = follower;
            publishing.await;
        });
        (cache, readiness, task)
    }

    /// Waits until `readiness` no longer waits for `part`.
    async fn done(readiness: &Readiness, part: &str) {
        let end = Instant::now() + DEADLINE;
        while readiness.waiting().contains(&part) {
            assert!(Instant::now() < end, "{part} never done");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Whether the cache's summary of `region` says it reported.
    fn reported(cache: &Cache, region: &str) -> bool {
        let held = cache
            .get(REGION_SUMMARY, &format!("{REGIONS_NAMESPACE}{region}"))
            .expect("a summary");
        RegionSummary::decode(held.resource.value.as_slice())
            .unwrap()
            .reported
    }

    fn report() -> RegionReport {
        RegionReport {
            nodes: 1,
            capacity: 4,
            gateway: None,
            services: Vec::new(),
        }
    }

    #[tokio::test]
    async fn the_plane_is_ready_once_every_region_has_reported_and_its_summary_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with(dir.path(), &["fra", "iad"]).await;
        let reports = meridian_api::Reports::default();
        let (cache, readiness, task) = publish(store, &reports, Duration::from_secs(3600));
        done(&readiness, PUBLISHED).await;
        assert_eq!(readiness.waiting(), [REPORTED]);
        reports.record("fra".to_owned(), report());
        reports.record("iad".to_owned(), report());
        done(&readiness, REPORTED).await;
        assert!(reported(&cache, "fra") && reported(&cache, "iad"));
        task.abort();
    }

    #[tokio::test]
    async fn a_region_that_does_not_report_in_time_is_published_as_not_reporting() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with(dir.path(), &["fra", "iad"]).await;
        let reports = meridian_api::Reports::default();
        reports.record("fra".to_owned(), report());
        let started = Instant::now();
        let (cache, readiness, task) = publish(store, &reports, Duration::from_millis(200));
        done(&readiness, REPORTED).await;
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert!(*readiness.ready().borrow());
        assert!(reported(&cache, "fra"));
        assert!(!reported(&cache, "iad"));
        task.abort();
    }

    #[tokio::test]
    async fn a_publisher_started_again_withdraws_what_an_earlier_run_published_and_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with(dir.path(), &["fra"]).await;
        let reports = meridian_api::Reports::default();
        reports.record("fra".to_owned(), report());
        // What a run before (this task, before the supervisor started it again) left in the
        // cache: a service deleted since.
        let cache = Cache::new();
        let left = resource_name("fra", "acme/shop/deleted");
        cache.apply(
            REGIONAL_DEPLOYMENT,
            Update {
                put: vec![(
                    left.clone(),
                    Any {
                        type_url: REGIONAL_DEPLOYMENT.to_owned(),
                        value: Vec::new(),
                    },
                )],
                remove: Vec::new(),
            },
        );
        let (cache, readiness, task) =
            publish_into(cache, store, &reports, Duration::from_secs(3600));
        done(&readiness, PUBLISHED).await;
        assert!(cache.get(REGIONAL_DEPLOYMENT, &left).is_none());
        task.abort();
    }

    #[test]
    fn only_a_change_that_touches_something_puts_the_publisher_behind() {
        let mut behind = Behind::default();
        assert!(!behind.note(BTreeSet::new(), BTreeSet::new(), false));
        assert!(behind.is_empty());
        let web = ("acme".to_owned(), "shop".to_owned(), "web".to_owned());
        assert!(behind.note([web].into(), BTreeSet::new(), false));
        assert!(
            !behind.note(BTreeSet::new(), BTreeSet::new(), true),
            "behind already"
        );
        let mut summaries = Behind::default();
        assert!(summaries.note(BTreeSet::new(), BTreeSet::new(), true));
    }

    /// Whether a stream opening now would wait for the publisher to catch up.
    async fn behind(cache: &Cache) -> bool {
        tokio::select! {
            biased;
            () = cache.current() => false,
            () = std::future::ready(()) => true,
        }
    }

    #[tokio::test]
    async fn unfollowed_changes_are_published_only_once_a_stream_comes_and_before_it_is_answered() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with(dir.path(), &["fra"]).await;
        let definition = |command: &str| {
            meridian_model::parse_definition_json(
                serde_json::json!({
                    "org": "acme", "app": "shop", "name": "web", "regions": ["fra"],
                    "scale": {"min": 1, "max": 1},
                    "runtime": {"process": {"command": command}},
                })
                .to_string()
                .as_bytes(),
            )
            .unwrap()
        };
        let create = meridian_store::MissingOrg::Create;
        store
            .apply_service(&definition("/bin/one"), create)
            .await
            .unwrap();
        let reports = meridian_api::Reports::default();
        let (cache, readiness, task) = publish_followed(
            Cache::new(),
            store.clone(),
            &reports,
            Duration::from_secs(3600),
            false,
        );
        done(&readiness, PUBLISHED).await;
        // The first load is published whoever follows.
        assert_eq!(published_to(&cache, "fra").await.0, 1);
        assert!(!behind(&cache).await);
        let entry = cache
            .get(REGION_SERVICE, "regions/fra/acme/shop/web")
            .unwrap();

        // Nobody follows: version 2 is noted, not rendered, and the cache says it is behind.
        store
            .apply_service(&definition("/bin/two"), create)
            .await
            .unwrap();
        let end = Instant::now() + DEADLINE;
        while !behind(&cache).await {
            assert!(Instant::now() < end, "the publisher never fell behind");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(published_to(&cache, "fra").await.0, 1);

        // A stream comes: everything is published before it may be answered.
        let _stream = cache.subscriber();
        tokio::time::timeout(DEADLINE, cache.current())
            .await
            .unwrap();
        assert_eq!(published_to(&cache, "fra").await.0, 2);
        let rendered = cache
            .get(REGION_SERVICE, "regions/fra/acme/shop/web")
            .unwrap();
        assert_ne!(rendered.version, entry.version, "the entry shows version 2");

        // While it follows, changes are published as they come.
        store
            .apply_service(&definition("/bin/three"), create)
            .await
            .unwrap();
        until_published(&cache, "fra", 3, b"").await;
        assert!(!behind(&cache).await);
        task.abort();
    }

    /// What a region reports of acme/shop/web running `version`, with one healthy instance at
    /// `addresses`.
    fn web_healthy(version: u64, addresses: &[&str]) -> meridian_model::ServiceHealth {
        super::super::fixtures::health("web", version, 1, addresses)
    }

    #[tokio::test]
    async fn a_report_or_an_apply_renders_only_the_entries_it_changes() {
        use meridian_xds::meridian::RegionService;
        let dir = tempfile::tempdir().unwrap();
        let store = store_with(dir.path(), &["fra"]).await;
        let apply = |name: &'static str, command: &'static str| {
            let store = store.clone();
            async move {
                let definition = meridian_model::parse_definition_json(
                    serde_json::json!({
                        "org": "acme", "app": "shop", "name": name, "regions": ["fra"],
                        "scale": {"min": 1, "max": 1},
                        "runtime": {"process": {"command": command}},
                    })
                    .to_string()
                    .as_bytes(),
                )
                .unwrap();
                let create = meridian_store::MissingOrg::Create;
                store.apply_service(&definition, create).await.unwrap();
            }
        };
        apply("web", "/bin/web").await;
        apply("api", "/bin/api").await;
        let reports = meridian_api::Reports::default();
        let (cache, readiness, task) = publish(store.clone(), &reports, Duration::from_secs(3600));
        done(&readiness, PUBLISHED).await;
        let entry = |service: &str| {
            let held = cache
                .get(REGION_SERVICE, &format!("regions/fra/acme/shop/{service}"))
                .expect("an entry");
            let decoded = RegionService::decode(held.resource.value.as_slice()).unwrap();
            (held.version.clone(), decoded)
        };
        let (api_version, api) = entry("api");
        assert_eq!((api.version, api.healthy), (1, 0));

        // fra reports web healthy: web's entry says so, api's is not rendered again.
        let mut fra = report();
        fra.services.push(web_healthy(1, &["10.0.0.7"]));
        reports.record("fra".to_owned(), fra);
        let end = Instant::now() + DEADLINE;
        while entry("web").1.addresses != ["10.0.0.7"] {
            assert!(Instant::now() < end, "web's entry never showed the report");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(reported(&cache, "fra"));
        assert_eq!(entry("web").1.healthy, 1);
        assert_eq!(entry("api").0, api_version, "api's entry is as it was");

        // A new version of web: its entry changes, api's does not.
        apply("web", "/bin/web2").await;
        let end = Instant::now() + DEADLINE;
        while entry("web").1.version != 2 {
            assert!(Instant::now() < end, "web's entry never showed version 2");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(entry("web").1.addresses, ["10.0.0.7"], "still as reported");
        assert_eq!(entry("api").0, api_version, "api's entry is as it was");
        task.abort();
    }

    /// The version and control published to `region` for acme/shop/web, once there is one.
    async fn published_to(cache: &Cache, region: &str) -> (u64, Vec<u8>) {
        let end = Instant::now() + DEADLINE;
        loop {
            if let Some(held) =
                cache.get(REGIONAL_DEPLOYMENT, &resource_name(region, "acme/shop/web"))
            {
                let resource = meridian_xds::meridian::RegionalDeployment::decode(
                    held.resource.value.as_slice(),
                )
                .unwrap();
                let deployment: RegionalDeployment =
                    serde_json::from_slice(&resource.deployment_json).unwrap();
                return (deployment.version, resource.control_json);
            }
            assert!(Instant::now() < end, "nothing published to {region}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until `region` has version `version` of acme/shop/web, with `control` as JSON.
    async fn until_published(cache: &Cache, region: &str, version: u64, control: &[u8]) {
        let end = Instant::now() + DEADLINE;
        loop {
            let published = published_to(cache, region).await;
            if published == (version, control.to_vec()) {
                return;
            }
            assert!(Instant::now() < end, "{region} has {published:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_paused_rollout_releases_no_further_wave_and_every_region_gets_the_control() {
        use meridian_model::{Definition, RolloutControl, RolloutMode};
        let dir = tempfile::tempdir().unwrap();
        let store = store_with(dir.path(), &["fra", "iad"]).await;
        // Version 1 everywhere at once; version 2 in waves.
        let definition = |command: &str| -> Definition {
            let waves = if command == "/bin/one" {
                serde_json::json!([])
            } else {
                serde_json::json!([["fra"], ["iad"]])
            };
            serde_json::from_value(serde_json::json!({
                "org": "acme", "app": "shop", "name": "web", "regions": ["fra", "iad"],
                "scale": {"min": 1, "max": 1},
                "runtime": {"process": {"command": command}},
                "deploy": {"waves": waves},
            }))
            .unwrap()
        };
        let apply = |command: &'static str| {
            let store = store.clone();
            async move {
                store
                    .apply_service(&definition(command), meridian_store::MissingOrg::Create)
                    .await
                    .unwrap()
            }
        };
        apply("/bin/one").await;
        let reports = meridian_api::Reports::default();
        let (cache, readiness, task) = publish(store.clone(), &reports, Duration::from_secs(3600));
        done(&readiness, PUBLISHED).await;
        until_published(&cache, "iad", 1, b"").await;

        // Version 2 is paused (as soon as fra took it), and fra runs it to the full.
        let web = ServiceKey {
            org: "acme".to_owned(),
            app: "shop".to_owned(),
            name: "web".to_owned(),
        };
        let paused = RolloutControl {
            version: 2,
            mode: RolloutMode::Paused,
        };
        store.set_rollout_control(&web, Some(paused)).await.unwrap();
        let mut fra = report();
        fra.services.push(web_healthy(2, &[]));
        reports.record("fra".to_owned(), fra);
        apply("/bin/two").await;
        let control = to_json(&paused);
        until_published(&cache, "fra", 2, &control).await;
        assert_eq!(published_to(&cache, "iad").await, (1, control), "held back");

        // Resumed: the next wave starts.
        store.set_rollout_control(&web, None).await.unwrap();
        until_published(&cache, "iad", 2, b"").await;
        task.abort();
    }
}
