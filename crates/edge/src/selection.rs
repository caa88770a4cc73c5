//! Which regions serve a host, in which order: the edge's proxy configuration from the regions,
//! their reports and their deployments. Pure, so that the choice is tested without a network.

use std::collections::{BTreeMap, HashMap};

use meridian_model::{contested_domains, distance_km, RegionReport, RegionalDeployment};
use serde_json::{json, Value};

/// Where the edge is.
#[derive(Debug, Clone, PartialEq)]
pub struct Location {
    /// Its name.
    pub name: String,
    /// Latitude in degrees.
    pub lat: f64,
    /// Longitude in degrees.
    pub lon: f64,
}

/// What the edge knows of one region.
#[derive(Debug, Clone)]
pub struct RegionView {
    /// The region's name.
    pub name: String,
    /// Its coordinates.
    pub lat: f64,
    /// Longitude.
    pub lon: f64,
    /// Its last report, if it is recent.
    pub report: Option<RegionReport>,
    /// The services that run there.
    pub deployments: Vec<RegionalDeployment>,
}

/// The edge's public listeners.
pub struct Listeners<'a> {
    /// The plain-HTTP listener's address.
    pub http: &'a str,
    /// The HTTPS listener, if any.
    pub https: Option<HttpsListener<'a>>,
}

/// The HTTPS listener: where, and which domains it holds certificates for.
pub struct HttpsListener<'a> {
    /// Its address.
    pub address: &'a str,
    /// The port plain-HTTP requests are redirected to.
    pub port: u16,
    /// Whether the edge holds a certificate for a domain (a wildcard one level up counts).
    pub certified: &'a dyn Fn(&str) -> bool,
}

/// The name of the certificate source of the HTTPS listener (`tls: {source}`).
pub const CERTIFICATE_SOURCE: &str = "edge";

/// Who serves each domain in an edge configuration: domain → virtual host name
/// (`<org>/<app>/<service>`).
pub type Incumbents = HashMap<String, String>;

/// The domains `config` (made by [`edge_config`]) serves, and by which service.
pub fn incumbents(config: &Value) -> Incumbents {
    let listeners = config["listeners"].as_array();
    listeners
        .into_iter()
        .flatten()
        .filter_map(|listener| listener["virtual_hosts"].as_array())
        .flatten()
        .filter_map(|host| Some((host["name"].as_str()?, host["domains"].as_array()?)))
        .flat_map(|(name, domains)| {
            domains
                .iter()
                .filter_map(Value::as_str)
                .map(move |domain| (domain.to_owned(), name.to_owned()))
        })
        .collect()
}

/// A region that can serve a service, as the edge sees it.
#[derive(Debug, Clone)]
struct Serving {
    /// Its gateway.
    gateway: String,
    /// Its distance from the edge, km.
    km: f64,
    /// Whether the service's instances there all sleep.
    asleep: bool,
    /// How long their last wake took there, ms (0: not measured).
    wake_ms: u32,
}

/// Round trip per km between an edge and a region, ms: light in fibre covers about 200 km per
/// ms, there and back. The edge does not measure round trips to gateways yet.
const RTT_MS_PER_KM: f64 = 2.0 / 200.0;

/// The gateways of `serving` (nearest first) in the order the edge tries them, and the gateway
/// to nudge awake, if any. Warm elsewhere: when the service sleeps in the nearest region and
/// its measured wake there is longer than the extra round trip to the nearest region where it
/// is awake, that region goes first and the sleeping one is nudged (it comes first again once
/// it reports itself awake).
fn warm_first(serving: &[Serving]) -> (Vec<String>, Option<String>) {
    let mut order: Vec<&Serving> = serving.iter().collect();
    let mut nudge = None;
    if let Some(near) = serving.first().filter(|s| s.asleep && s.wake_ms > 0) {
        let warm = serving
            .iter()
            .position(|s| !s.asleep && (s.km - near.km) * RTT_MS_PER_KM < f64::from(near.wake_ms));
        if let Some(warm) = warm {
            let first = order.remove(warm);
            order.insert(0, first);
            nudge = Some(near.gateway.clone());
        }
    }
    (
        order.into_iter().map(|s| s.gateway.clone()).collect(),
        nudge,
    )
}

/// The edge's proxy configuration (docs/proxy-config.md) on `listeners`: one virtual host per
/// service with public domains and routes, to a cluster of the gateways of the regions
/// that report healthy instances of it, nearest first (priority 0, then 1, …; but see
/// [`warm_first`] for a service asleep in the nearest region). Gateways are
/// health-checked; a failed request is retried on another gateway. With `mesh` (a cluster's
/// `mesh` section), gateways are reached over mutual TLS.
///
/// A domain that overlaps one of another service in any region's deployments (the regions'
/// copies disagree for a moment: the store never accepts such claims) stays with the service
/// that `incumbents` (see [`incumbents`]) says served it, if that one still claims it, and is
/// served by none of them otherwise: never handed to another service than its owner
/// (docs/definition.md, "Domains").
///
/// A service with an enabled `cache` policy has its routes cached by the edge (the policy goes
/// into each route as it is).
///
/// With an HTTPS listener, it serves the same hosts (with the service's HSTS header, if set),
/// and the plain listener answers a domain the edge holds a certificate for with a redirect to
/// HTTPS, unless the service turned `https.redirect` off.
pub fn edge_config(
    edge: &Location,
    listeners: &Listeners<'_>,
    regions: &[RegionView],
    mesh: Option<&Value>,
    incumbents: &Incumbents,
) -> Value {
    let mut by_distance: Vec<&RegionView> = regions.iter().collect();
    by_distance.sort_by(|a, b| {
        let here = (edge.lat, edge.lon);
        distance_km(here, (a.lat, a.lon)).total_cmp(&distance_km(here, (b.lat, b.lon)))
    });
    // Per service: its deployment (for domains and routes) and the gateways of the regions
    // where it has healthy instances, nearest first. A service healthy nowhere keeps its
    // domains with no gateway: the edge answers 503 (it exists, it cannot answer now), not 404.
    let mut services: BTreeMap<(String, String, String), (RegionalDeployment, Vec<Serving>)> =
        BTreeMap::new();
    for region in &by_distance {
        let gateway = region
            .report
            .as_ref()
            .and_then(|report| Some((report, report.gateway.as_ref()?)));
        for deployment in &region.deployments {
            if deployment.spec.domains.is_empty() || deployment.spec.routes.is_empty() {
                continue;
            }
            let key = (
                deployment.org.clone(),
                deployment.app.clone(),
                deployment.service.clone(),
            );
            let (served, gateways) = services
                .entry(key)
                .or_insert_with(|| (deployment.clone(), Vec::new()));
            let Some((report, gateway)) = gateway else {
                continue;
            };
            let healthy = report.services.iter().find(|s| {
                s.org == deployment.org
                    && s.app == deployment.app
                    && s.service == deployment.service
                    && s.healthy > 0
            });
            if let Some(health) = healthy {
                if gateways.is_empty() {
                    // Domains and routes come from the nearest region that can serve them.
                    *served = deployment.clone();
                }
                gateways.push(Serving {
                    gateway: gateway.clone(),
                    km: distance_km((edge.lat, edge.lon), (region.lat, region.lon)),
                    asleep: health.asleep,
                    wake_ms: health.wake_ms,
                });
            }
        }
    }
    let contested = contested_domains(
        regions
            .iter()
            .flat_map(|region| &region.deployments)
            .map(|d| ((&d.org, &d.app, &d.service), d.spec.domains.as_slice())),
    );
    let mut virtual_hosts = Vec::new();
    let mut secure_hosts = Vec::new();
    let mut clusters = Vec::new();
    for ((org, app, service), (deployment, serving)) in &services {
        let name = format!("{org}/{app}/{service}");
        let (gateways, asleep) = warm_first(serving);
        let domains: Vec<&String> = deployment
            .spec
            .domains
            .iter()
            .filter(|d| !contested.contains(*d) || incumbents.get(*d) == Some(&name))
            .collect();
        if domains.is_empty() {
            continue;
        }
        let cluster = format!("edge/{org}/{app}/{service}");
        let mut route = json!({
            "cluster": cluster,
            "retries": {"attempts": 2, "on": ["connect_failure", "gateway_error"]},
        });
        if let Some(cache) = deployment.spec.cache.as_ref().filter(|c| c.enabled) {
            route["cache"] = json!(cache);
        }
        if let Some(asleep) = asleep {
            // Its requests nudge the nearer region awake while the warm one answers them.
            let wake = format!("edge-wake/{org}/{app}/{service}");
            route["wake_cluster"] = json!(wake);
            let mut cluster = json!({"name": wake, "lb": "least_request",
                "endpoints": [{"address": asleep}]});
            if let Some(mesh) = mesh {
                cluster["mesh"] = mesh.clone();
            }
            clusters.push(cluster);
        }
        let mut plain = domains.clone();
        if let Some(https) = &listeners.https {
            let mut secure_route = route.clone();
            if let Some(hsts) = &deployment.spec.https.hsts {
                secure_route["response_headers_add"] =
                    json!({"strict-transport-security": hsts.header_value()});
            }
            secure_hosts.push(json!({"name": name, "domains": domains, "routes": [secure_route]}));
            if deployment.spec.https.redirect {
                let (redirected, rest) = domains.iter().partition(|d| (https.certified)(d));
                plain = rest;
                if !redirected.is_empty() {
                    virtual_hosts.push(json!({
                        "name": name,
                        "domains": redirected,
                        "routes": [{"https_redirect": {"port": https.port}}],
                    }));
                }
            }
        }
        if !plain.is_empty() {
            virtual_hosts.push(json!({"name": name, "domains": plain, "routes": [route]}));
        }
        let endpoints: Vec<Value> = gateways
            .iter()
            .enumerate()
            .map(|(rank, address)| json!({"address": address, "priority": rank.min(9)}))
            .collect();
        let mut cluster = json!({
            "name": cluster,
            "lb": "least_request",
            "panic_threshold": 0,
            "health_check": {"tcp": {}, "interval": "500ms", "timeout": "250ms", "unhealthy_threshold": 2},
            "outlier_detection": {"consecutive_gateway_errors": 3, "base_ejection_time": "5s"},
            "endpoints": endpoints,
        });
        if let Some(mesh) = mesh {
            cluster["mesh"] = mesh.clone();
        }
        clusters.push(cluster);
    }
    // The internet's x-forwarded-* are not believed: the chain starts at the socket peer.
    let mut public = vec![json!({"name": "public", "address": listeners.http,
        "trust_forwarded": "none", "virtual_hosts": virtual_hosts})];
    // HTTPS over TCP and, on the same port number over UDP, HTTP/3 (advertised in Alt-Svc).
    if let Some(https) = &listeners.https {
        public.push(json!({"name": "https", "address": https.address,
            "tls": {"source": CERTIFICATE_SOURCE, "http3": true}, "trust_forwarded": "none",
            "virtual_hosts": secure_hosts}));
    }
    json!({"listeners": public, "clusters": clusters})
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_model::{ServiceHealth, ServiceSpec};

    const PLAIN: Listeners<'static> = Listeners {
        http: "127.0.0.1:0",
        https: None,
    };

    fn deployment(region: &str) -> RegionalDeployment {
        serving(region, ("acme", "web"), &["shop.example.com"])
    }

    /// Service `web` of app `shop` of `org` in `region`, with public `domains`.
    fn serving(region: &str, (org, service): (&str, &str), domains: &[&str]) -> RegionalDeployment {
        let spec: ServiceSpec = serde_json::from_value(json!({
            "scale": {"min": 1, "max": 1},
            "runtime": {"process": {"command": "x"}},
            "ports": [{"name": "http", "port": 8080}],
            "routes": [{"path_prefix": "/", "port": "http"}],
            "domains": domains,
            "health_checks": [],
            "mesh": {"allow": []},
        }))
        .unwrap();
        RegionalDeployment {
            org: org.into(),
            app: "shop".into(),
            service: service.into(),
            region: region.into(),
            version: 1,
            spec,
        }
    }

    fn region(name: &str, lat: f64, lon: f64, healthy: u32) -> RegionView {
        RegionView {
            name: name.into(),
            lat,
            lon,
            report: Some(RegionReport {
                nodes: 1,
                capacity: 4,
                gateway: Some(format!("{name}.gateway:80")),
                services: vec![ServiceHealth {
                    org: "acme".into(),
                    app: "shop".into(),
                    service: "web".into(),
                    version: 1,
                    placed: 1,
                    healthy,
                    addresses: Vec::new(),
                    versions: Vec::new(),
                    rollout: None,
                    problems: Vec::new(),
                    instances: Default::default(),
                    autoscale: None,
                    asleep: false,
                    wake_ms: 0,
                }],
            }),
            deployments: vec![deployment(name)],
        }
    }

    #[test]
    fn a_service_asleep_nearby_is_served_warm_elsewhere_when_its_wake_outlasts_the_detour() {
        let edge = Location {
            name: "paris".into(),
            lat: 48.86,
            lon: 2.35,
        };
        // fra is about 480 km from Paris, iad about 6,200 km: some 57 ms more round trip.
        let asleep = |wake_ms: u32| {
            let mut fra = region("fra", 50.11, 8.68, 1);
            if let Some(report) = fra.report.as_mut() {
                report.services[0].asleep = true;
                report.services[0].wake_ms = wake_ms;
            }
            [fra, region("iad", 38.95, -77.45, 1)]
        };
        let order = |regions: &[RegionView]| {
            let config = edge_config(&edge, &PLAIN, regions, None, &Incumbents::new());
            let main = config["clusters"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["name"] == "edge/acme/shop/web")
                .unwrap()
                .clone();
            let first = main["endpoints"][0]["address"].as_str().unwrap().to_owned();
            let route = &config["listeners"][0]["virtual_hosts"][0]["routes"][0];
            let wake = route["wake_cluster"].as_str().map(|wake| {
                let cluster = config["clusters"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|c| c["name"] == wake)
                    .unwrap();
                cluster["endpoints"][0]["address"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            });
            (first, wake)
        };
        // A wake of 200 ms outlasts the detour: iad first, fra nudged.
        assert_eq!(
            order(&asleep(200)),
            (
                "iad.gateway:80".to_owned(),
                Some("fra.gateway:80".to_owned())
            )
        );
        // 20 ms does not, nor an unmeasured wake: fra first, as when it is awake.
        for regions in [asleep(20), asleep(0)] {
            assert_eq!(order(&regions), ("fra.gateway:80".to_owned(), None));
        }
        let awake = [
            region("fra", 50.11, 8.68, 1),
            region("iad", 38.95, -77.45, 1),
        ];
        assert_eq!(order(&awake), ("fra.gateway:80".to_owned(), None));
    }

    fn gateways(config: &Value) -> Vec<(String, u64)> {
        config["clusters"][0]["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["address"].as_str().unwrap().to_owned(),
                    e["priority"].as_u64().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn the_nearest_region_with_healthy_instances_comes_first() {
        let paris = Location {
            name: "par".into(),
            lat: 48.86,
            lon: 2.35,
        };
        let regions = [
            region("iad", 38.95, -77.45, 2),
            region("fra", 50.11, 8.68, 2),
            region("sin", 1.35, 103.82, 2),
        ];
        let config = edge_config(&paris, &PLAIN, &regions, None, &Incumbents::new());
        assert_eq!(
            gateways(&config),
            [
                ("fra.gateway:80".to_owned(), 0),
                ("iad.gateway:80".to_owned(), 1),
                ("sin.gateway:80".to_owned(), 2)
            ]
        );
        // A region with no healthy instance of the service is left out.
        let regions = [
            region("fra", 50.11, 8.68, 0),
            region("iad", 38.95, -77.45, 1),
        ];
        let config = edge_config(&paris, &PLAIN, &regions, None, &Incumbents::new());
        assert_eq!(gateways(&config), [("iad.gateway:80".to_owned(), 0)]);
        assert_eq!(
            config["listeners"][0]["virtual_hosts"][0]["domains"],
            json!(["shop.example.com"])
        );
        assert_eq!(config["listeners"][0]["trust_forwarded"], "none");
        // Healthy nowhere: the domain stays routed, to no gateway (the proxy answers 503).
        let regions = [
            region("fra", 50.11, 8.68, 0),
            region("iad", 38.95, -77.45, 0),
        ];
        let config = edge_config(&paris, &PLAIN, &regions, None, &Incumbents::new());
        assert_eq!(gateways(&config), []);
        assert_eq!(
            config["listeners"][0]["virtual_hosts"][0]["domains"],
            json!(["shop.example.com"])
        );
    }

    #[test]
    fn a_services_cache_policy_goes_into_its_routes_when_enabled() {
        let paris = Location {
            name: "par".into(),
            lat: 48.86,
            lon: 2.35,
        };
        let cached = |policy: Value| {
            let mut fra = region("fra", 50.11, 8.68, 1);
            fra.deployments[0].spec.cache = serde_json::from_value(policy).unwrap();
            let config = edge_config(&paris, &PLAIN, &[fra], None, &Incumbents::new());
            config["listeners"][0]["virtual_hosts"][0]["routes"][0]["cache"].clone()
        };
        let policy = json!({"enabled": true, "default_ttl": "1m", "bypass": ["/api/"]});
        assert_eq!(cached(policy.clone()), policy);
        assert_eq!(cached(json!({"enabled": false})), Value::Null);
        assert_eq!(cached(Value::Null), Value::Null);
    }

    /// The service each host is routed to: (domain, virtual host name).
    fn hosts(config: &Value) -> Vec<(String, String)> {
        let mut hosts: Vec<(String, String)> = config["listeners"][0]["virtual_hosts"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|v| {
                let name = v["name"].as_str().unwrap().to_owned();
                v["domains"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(move |d| (d.as_str().unwrap().to_owned(), name.clone()))
            })
            .collect();
        hosts.sort();
        hosts
    }

    #[test]
    fn a_contested_domain_stays_with_the_service_that_served_it_and_never_goes_to_another() {
        let paris = Location {
            name: "par".into(),
            lat: 48.86,
            lon: 2.35,
        };
        let healthy = |org: &str| ServiceHealth {
            org: org.into(),
            app: "shop".into(),
            service: "web".into(),
            version: 1,
            placed: 1,
            healthy: 1,
            addresses: Vec::new(),
            versions: Vec::new(),
            rollout: None,
            problems: Vec::new(),
            instances: Default::default(),
            autoscale: None,
            asleep: false,
            wake_ms: 0,
        };
        // Regions whose copies disagree: Frankfurt runs acme's web with its domains, and
        // Washington the web of an org whose name sorts first (the order that used to decide)
        // claiming one of them, a wildcard over another, and a name of its own.
        let mut fra = region("fra", 50.11, 8.68, 1);
        fra.deployments = vec![serving(
            "fra",
            ("acme", "web"),
            &["shop.example.com", "img.example.org", "acme.example.net"],
        )];
        let mut iad = region("iad", 38.95, -77.45, 1);
        iad.deployments = vec![serving(
            "iad",
            ("aaa", "web"),
            &["shop.example.com", "*.example.org", "aaa.example.net"],
        )];
        if let Some(report) = &mut iad.report {
            report.services = vec![healthy("aaa")];
        }
        let owned = |domain: &str, by: &str| (domain.to_owned(), by.to_owned());
        let regions = [fra, iad];
        // On its own, Frankfurt gives acme all its domains.
        let before = edge_config(&paris, &PLAIN, &regions[..1], None, &Incumbents::new());
        let acme = [
            owned("acme.example.net", "acme/shop/web"),
            owned("img.example.org", "acme/shop/web"),
            owned("shop.example.com", "acme/shop/web"),
        ];
        assert_eq!(hosts(&before), acme);
        // Then Washington's copy arrives: acme keeps what it served, the other org gets only
        // its own name (not the wildcard over acme's).
        let config = edge_config(&paris, &PLAIN, &regions, None, &incumbents(&before));
        let mut expected = acme.to_vec();
        expected.insert(0, owned("aaa.example.net", "aaa/shop/web"));
        assert_eq!(hosts(&config), expected);
        // An edge that served neither (just started) gives the contested names to nobody.
        let config = edge_config(&paris, &PLAIN, &regions, None, &Incumbents::new());
        assert_eq!(
            hosts(&config),
            [
                owned("aaa.example.net", "aaa/shop/web"),
                owned("acme.example.net", "acme/shop/web")
            ]
        );
    }
}
