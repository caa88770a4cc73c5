//! The edge's follower: a delta-xDS stream to the global control plane (mutual TLS, with the
//! edge's own certificate), subscribed to every region's `meridian.v1.RegionSummary` (where it
//! is, its gateway, what it runs and how healthy it is). Each update that changes the edge's
//! configuration is applied at once; a summary that does not decode is rejected (NACK) and the
//! last configuration goes on serving, as it does while the global control plane is away.

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use meridian_model::{RegionReport, RegionalDeployment, ServiceHealth};
use meridian_proxy::Proxy;
use meridian_xds::meridian::{RegionSummary, REGION_SUMMARY};
use meridian_xds::{run_delta_client, ClientOptions, Handler, Interest, Interests, Resources};
use prost::Message;

use crate::selection::{edge_config, incumbents, Incumbents, Location, RegionView};

/// First and longest wait between attempts to reach the global control plane.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(5));

/// Where the edge is, where it listens, and the control plane it follows.
#[derive(Debug, Clone)]
pub struct EdgeOptions {
    /// Its location.
    pub location: Location,
    /// Its public listener's address.
    pub listen: String,
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
/// Says so through `ready` (once) when the first configuration is applied.
pub async fn run_edge(
    options: EdgeOptions,
    proxy: Arc<Proxy>,
    ready: tokio::sync::oneshot::Sender<()>,
) {
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
    let mesh = serde_json::json!({
        "cert_file": options.identity.cert_file,
        "key_file": options.identity.key_file,
        "bundle_file": options.identity.bundle_file,
        "peer": format!("spiffe://{}/gateway/*", options.trust_domain),
    });
    let follower = Follower {
        options,
        mesh,
        proxy,
        ready: Some(ready),
        applied: String::new(),
        incumbents: Incumbents::new(),
    };
    run_delta_client(client, follower).await;
}

struct Follower {
    options: EdgeOptions,
    /// The `mesh` section of the clusters to the gateways.
    mesh: serde_json::Value,
    proxy: Arc<Proxy>,
    ready: Option<tokio::sync::oneshot::Sender<()>>,
    /// The configuration applied last, as JSON text.
    applied: String,
    /// Who serves each domain in that configuration.
    incumbents: Incumbents,
}

fn interests() -> Interests {
    Interests::from([(REGION_SUMMARY.to_owned(), Interest::Wildcard)])
}

/// What the summaries held say of each region, or which summary is bad and why.
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
        let mut deployments = Vec::new();
        let mut health = Vec::new();
        for (i, service) in summary.services.into_iter().enumerate() {
            let spec = serde_json::from_slice(&service.spec_json)
                .map_err(|e| bad(format!("services[{i}].spec_json: {e}")))?;
            health.push(ServiceHealth {
                org: service.org.clone(),
                app: service.app.clone(),
                service: service.service.clone(),
                version: service.version,
                placed: service.healthy,
                healthy: service.healthy,
                addresses: Vec::new(),
            });
            deployments.push(RegionalDeployment {
                org: service.org,
                app: service.app,
                service: service.service,
                region: name.clone(),
                version: service.version,
                spec,
            });
        }
        let report = summary.reported.then(|| RegionReport {
            nodes: 0,
            capacity: 0,
            gateway: Some(summary.gateway).filter(|g| !g.is_empty()),
            services: health,
        });
        views.push(RegionView {
            name: name.clone(),
            lat: summary.lat,
            lon: summary.lon,
            report,
            deployments,
        });
    }
    Ok(views)
}

impl Handler for Follower {
    fn initial_interests(&self) -> Interests {
        interests()
    }

    async fn accept(&mut self, resources: &Resources, type_url: &str) -> Result<Interests, String> {
        if type_url != REGION_SUMMARY {
            return Ok(interests());
        }
        let regions = region_views(resources)?;
        let options = &self.options;
        let config = edge_config(
            &options.location,
            &options.listen,
            &regions,
            Some(&self.mesh),
            &self.incumbents,
        );
        let text = config.to_string();
        if text != self.applied {
            self.proxy
                .apply_text(&text)
                .await
                .map_err(|e| format!("the edge configuration was refused: {e}"))?;
            tracing::info!(location = %options.location.name, "edge configuration applied");
            self.applied = text;
            self.incumbents = incumbents(&config);
        }
        if let Some(ready) = self.ready.take() {
            let _ = ready.send(());
        }
        Ok(interests())
    }
}
