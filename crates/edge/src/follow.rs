//! The edge's follower: a delta-xDS stream to the global control plane (mutual TLS, with the
//! edge's own certificate), subscribed to every region's `meridian.v1.RegionSummary` (where it
//! is, its gateway) and `meridian.v1.RegionService` entries (what it runs and how healthy it
//! is), to the edge's `Secret`s
//! (certificates, session ticket keys) and ACME challenges, and to the purges of its cache
//! (applied as [`crate::purges`] says; the ACK of a response tells the plane they were). Each update that changes the edge's
//! configuration is applied at once; certificates, keys and challenges are swapped in place,
//! without a configuration apply. A resource that does not decode or fit is rejected (NACK,
//! naming it and the reason) and what was held goes on serving, as it does while the global
//! control plane is away.

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use meridian_model::{RegionReport, RegionalDeployment, ServiceHealth};
use meridian_proxy::Proxy;
use meridian_xds::meridian::{
    RegionService, RegionSummary, ACME_CHALLENGE, CACHE_PURGE, REGION_SERVICE, REGION_SUMMARY,
    SECRET,
};
use meridian_xds::{
    run_delta_client, Changes, ClientOptions, Handler, Interest, Interests, Resources,
};
use prost::Message;

use crate::anycast::{ControlFeed, Gateway};
use crate::purges::{app_domains, AppDomains, Purges};
use crate::selection::{
    edge_config, incumbents, HttpsListener, Incumbents, Listeners, Location, RegionView,
};
use crate::tls::EdgeTls;

/// First and longest wait between attempts to reach the global control plane.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(5));

/// Where the edge is, where it listens, and the control plane it follows.
#[derive(Debug, Clone)]
pub struct EdgeOptions {
    /// Its location.
    pub location: Location,
    /// Its public listener's address.
    pub listen: String,
    /// Its HTTPS listener's address, if it serves HTTPS.
    pub listen_https: Option<String>,
    /// The global control plane's xDS (`https://…`).
    pub global_xds: String,
    /// TLS with the edge's certificate, for the global control plane.
    pub tls: Arc<rustls::ClientConfig>,
    /// The edge's certificate files and trust domain, for mutual TLS to the gateways.
    pub identity: meridian_proxy::Identity,
    /// The installation's trust domain.
    pub trust_domain: String,
    /// Told when the edge's certificate was renewed.
    pub renewed: Arc<tokio::sync::Notify>,
}

/// Follows the global control plane and keeps `proxy` configured, for as long as the task runs.
/// Says so through `ready` (once) when the first configuration is applied, and tells `feed`
/// whether it follows and which regions' gateways can serve.
pub async fn run_edge(
    options: EdgeOptions,
    proxy: Arc<Proxy>,
    ready: tokio::sync::oneshot::Sender<()>,
    feed: ControlFeed,
) -> Result<(), rustls::Error> {
    let client = ClientOptions {
        url: options.global_xds.clone(),
        tls: Some(options.tls.clone()),
        node: Node {
            id: format!("edge-{}", options.location.name),
            ..Node::default()
        },
        backoff: BACKOFF,
    };
    tokio::spawn(meridian_proxy::reapply_on_renewal(
        proxy.clone(),
        options.renewed.clone(),
    ));
    let follower = Follower::new(options, proxy, ready)?.with_feed(feed);
    run_delta_client(client, follower).await;
    Ok(())
}

/// The edge's xDS handler: renders and applies its configuration from the region summaries,
/// and keeps its certificates, ticket keys and challenges. Public so that it can be driven
/// without a control plane (tests).
pub struct Follower {
    options: EdgeOptions,
    /// The `mesh` section of the clusters to the gateways.
    mesh: serde_json::Value,
    proxy: Arc<Proxy>,
    ready: Option<tokio::sync::oneshot::Sender<()>>,
    /// The configuration applied last, as JSON text.
    applied: String,
    /// Who serves each domain in that configuration.
    incumbents: Incumbents,
    /// Certificates, session tickets and challenges, registered on the proxy.
    tls: EdgeTls,
    /// The HTTPS listener's bound port, once bound (where redirects send clients).
    https_port: Option<u16>,
    /// The purges applied to the cache.
    purges: Purges,
    /// The domains of each app, as the region summaries say (purges stay within them).
    app_domains: AppDomains,
    /// Whether the plane's purges were received (an empty history included).
    purges_received: bool,
    /// Told whether the edge follows, and which gateways serve healthy regions.
    feed: ControlFeed,
}

impl Follower {
    /// A follower configuring `proxy` (on which it registers its certificate source and
    /// HTTP-01 answers), telling `ready` when the first configuration is applied.
    pub fn new(
        options: EdgeOptions,
        proxy: Arc<Proxy>,
        ready: tokio::sync::oneshot::Sender<()>,
    ) -> Result<Follower, rustls::Error> {
        let mesh = serde_json::json!({
            "cert_file": options.identity.cert_file,
            "key_file": options.identity.key_file,
            "bundle_file": options.identity.bundle_file,
            "peer": format!("spiffe://{}/gateway/*", options.trust_domain),
        });
        let tls = EdgeTls::register(&proxy)?;
        let https_port = options
            .listen_https
            .as_deref()
            .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
            .map(|a| a.port())
            .filter(|port| *port != 0);
        let purges = Purges::of(&proxy);
        Ok(Follower {
            options,
            mesh,
            proxy,
            ready: Some(ready),
            applied: String::new(),
            incumbents: Incumbents::new(),
            tls,
            https_port,
            purges,
            app_domains: AppDomains::new(),
            purges_received: false,
            feed: ControlFeed::new(),
        })
    }

    /// The follower, telling `feed` whether it follows and which gateways serve healthy
    /// regions.
    pub fn with_feed(mut self, feed: ControlFeed) -> Follower {
        self.feed = feed;
        self
    }

    /// The edge's configuration for `regions`.
    fn render(&self, regions: &[RegionView]) -> serde_json::Value {
        let options = &self.options;
        let certified = |domain: &str| self.tls.certified(domain);
        let https = options
            .listen_https
            .as_deref()
            .map(|address| HttpsListener {
                address,
                port: self.https_port.unwrap_or(443),
                certified: &certified,
            });
        let listeners = Listeners {
            http: &options.listen,
            https,
        };
        edge_config(
            &options.location,
            &listeners,
            regions,
            Some(&self.mesh),
            &self.incumbents,
        )
    }

    /// Applies the purges held that are new, once both they and the region summaries were
    /// received: a purge stays within its app's domains, which only the summaries say (after
    /// a restart, purges may arrive first; the disk tier serves only once they are applied).
    async fn follow_purges(&mut self, resources: &Resources) -> Result<(), String> {
        if !self.purges_received || !regions_known(resources) {
            return Ok(());
        }
        let held = resources.get(CACHE_PURGE);
        self.purges
            .follow(&self.proxy, held, &self.app_domains)
            .await
    }

    /// Renders the configuration from the summaries in `resources` and applies it if it
    /// changed; once more if that bound the HTTPS listener on a port redirects did not know.
    async fn configure(&mut self, resources: &Resources) -> Result<(), String> {
        let regions = region_views(resources)?;
        self.app_domains = app_domains(&regions);
        self.feed.set_gateways(healthy_gateways(&regions));
        for _ in 0..2 {
            let config = self.render(&regions);
            let text = config.to_string();
            if text == self.applied {
                return Ok(());
            }
            self.proxy
                .apply_text(&text)
                .await
                .map_err(|e| format!("the edge configuration was refused: {e}"))?;
            tracing::info!(location = %self.options.location.name, "edge configuration applied");
            self.applied = text;
            self.incumbents = incumbents(&config);
            if self.https_port.is_some() || self.options.listen_https.is_none() {
                return Ok(());
            }
            let bound = self.proxy.listeners().await;
            self.https_port = bound
                .iter()
                .find(|(name, _)| name == "https")
                .map(|(_, address)| address.port());
        }
        Ok(())
    }
}

/// The gateways of the regions that report healthy instances of some service.
fn healthy_gateways(regions: &[RegionView]) -> Vec<Gateway> {
    regions
        .iter()
        .filter_map(|region| {
            let report = region.report.as_ref()?;
            let address = report.gateway.as_deref()?.parse().ok()?;
            report
                .services
                .iter()
                .any(|service| service.healthy > 0)
                .then(|| Gateway {
                    region: region.name.clone(),
                    address,
                })
        })
        .collect()
}

fn interests() -> Interests {
    [
        REGION_SUMMARY,
        REGION_SERVICE,
        SECRET,
        ACME_CHALLENGE,
        CACHE_PURGE,
    ]
    .into_iter()
    .map(|type_url| (type_url.to_owned(), Interest::Wildcard))
    .collect()
}

/// Whether the summaries and the service entries were both received (a first response each,
/// empty or not).
fn regions_known(resources: &Resources) -> bool {
    resources.contains_key(REGION_SUMMARY) && resources.contains_key(REGION_SERVICE)
}

/// What the summaries and service entries held say of each region, or which resource is bad
/// and why.
fn region_views(resources: &Resources) -> Result<Vec<RegionView>, String> {
    let mut views = Vec::new();
    for (name, held) in resources.get(REGION_SUMMARY).into_iter().flatten() {
        let bad = |reason: String| format!("region summary `{name}`: {reason}");
        meridian_model::check_dns_label(name).map_err(|e| bad(format!("name: {e}")))?;
        let summary = RegionSummary::decode(held.resource.value.as_slice())
            .map_err(|e| bad(e.to_string()))?;
        if !summary.gateway.is_empty() && summary.gateway.parse::<std::net::SocketAddr>().is_err() {
            return Err(bad(format!(
                "gateway: `{}` is not an address ip:port",
                summary.gateway
            )));
        }
        let report = summary.reported.then(|| RegionReport {
            nodes: 0,
            capacity: 0,
            gateway: Some(summary.gateway).filter(|g| !g.is_empty()),
            services: Vec::new(),
        });
        views.push(RegionView {
            name: name.clone(),
            lat: summary.lat,
            lon: summary.lon,
            report,
            deployments: Vec::new(),
        });
    }
    for (name, held) in resources.get(REGION_SERVICE).into_iter().flatten() {
        let bad = |reason: String| format!("region service `{name}`: {reason}");
        let region = name.split('/').next().unwrap_or_default();
        // An entry whose region's summary has not come yet waits for it.
        let Some(view) = views.iter_mut().find(|v| v.name == region) else {
            continue;
        };
        let service = RegionService::decode(held.resource.value.as_slice())
            .map_err(|e| bad(e.to_string()))?;
        let spec = serde_json::from_slice(&service.spec_json)
            .map_err(|e| bad(format!("spec_json: {e}")))?;
        if let Some(report) = &mut view.report {
            report.services.push(ServiceHealth {
                org: service.org.clone(),
                app: service.app.clone(),
                service: service.service.clone(),
                version: service.version,
                placed: service.healthy,
                healthy: service.healthy,
                addresses: Vec::new(),
                versions: Vec::new(),
                rollout: None,
                problems: Vec::new(),
                instances: Default::default(),
                autoscale: None,
                asleep: service.asleep,
                wake_ms: service.wake_ms,
            });
        }
        view.deployments.push(RegionalDeployment {
            org: service.org,
            app: service.app,
            service: service.service,
            region: view.name.clone(),
            version: service.version,
            spec,
        });
    }
    Ok(views)
}

impl Handler for Follower {
    fn initial_interests(&self) -> Interests {
        interests()
    }

    fn session_changed(&mut self, open: bool) {
        self.feed.set_following(open);
    }

    async fn accept(&mut self, resources: &Resources, type_url: &str) -> Result<Interests, String> {
        // Everything held of the type, as if it had all changed.
        let names: Vec<String> = resources
            .get(type_url)
            .into_iter()
            .flat_map(|held| held.keys().cloned())
            .collect();
        let changes = Changes {
            type_url,
            names: &names,
        };
        self.accept_changes(resources, &changes)
            .await
            .map(|_| interests())
    }

    async fn accept_changes(
        &mut self,
        resources: &Resources,
        changes: &Changes<'_>,
    ) -> Result<Option<Interests>, String> {
        match changes.type_url {
            // Until both the summaries and the entries came, the regions are not known: the
            // edge would be configured with regions that run nothing.
            REGION_SUMMARY | REGION_SERVICE if regions_known(resources) => {
                self.configure(resources).await?;
                self.follow_purges(resources).await?;
            }
            SECRET => {
                let domains_changed = self.tls.apply_secrets(resources, changes.names)?;
                if domains_changed && regions_known(resources) {
                    // Redirects follow the domains the edge holds certificates for. The
                    // secrets are good and in use whatever happens to the configuration: a
                    // refusal is logged, not a reason to reject them.
                    if let Err(e) = self.configure(resources).await {
                        tracing::warn!(error = %e, "the edge configuration was not updated");
                    }
                }
            }
            ACME_CHALLENGE => self.tls.apply_challenges(resources, changes.names)?,
            CACHE_PURGE => {
                self.purges_received = true;
                self.follow_purges(resources).await?;
            }
            _ => {}
        }
        if regions_known(resources) {
            if let Some(ready) = self.ready.take() {
                let _ = ready.send(());
            }
        }
        Ok(None)
    }
}
