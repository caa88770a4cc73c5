//! Route tables at run time: a listener's virtual hosts and routes, compiled for matching.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::cache::{HttpCache, RouteCache};
use crate::cluster::Cluster;
use crate::config::{RetryPolicy, RouteConfig, VirtualHost};
use crate::metrics::RouteMetrics;

/// How a route matches the path.
#[derive(Debug)]
enum PathMatch {
    Any,
    Prefix(String),
    Exact(String),
}

/// Where a route sends traffic: one cluster, or several by weight.
#[derive(Debug)]
pub struct Target {
    /// The cluster.
    pub cluster: Arc<Cluster>,
    /// This target's metrics.
    pub metrics: RouteMetrics,
    /// Cumulative weight up to and including this target.
    cumulative: u32,
}

/// A compiled route.
#[derive(Debug)]
pub struct Route {
    /// Name used in metrics and logs.
    pub name: String,
    path: PathMatch,
    headers: Vec<(HeaderName, Option<HeaderValue>)>,
    targets: Vec<Target>,
    /// Answer with a redirect to HTTPS on this port instead of forwarding.
    pub https_redirect: Option<u16>,
    /// Replacement for the matched part of the path.
    pub prefix_rewrite: Option<String>,
    /// Time for the upstream to answer with headers, retries included.
    pub timeout: Duration,
    /// The retry policy, if any.
    pub retries: Option<RetryPolicy>,
    /// Headers set on the upstream request.
    pub request_add: Vec<(HeaderName, HeaderValue)>,
    /// Headers removed from the upstream request.
    pub request_remove: Vec<HeaderName>,
    /// Headers set on the response.
    pub response_add: Vec<(HeaderName, HeaderValue)>,
    /// Headers removed from the response.
    pub response_remove: Vec<HeaderName>,
    /// The shared HTTP cache, if the route's responses are cached.
    pub cache: Option<RouteCache>,
    /// The cluster each request nudges awake, if any.
    pub wake: Option<crate::nudge::Nudge>,
}

impl Route {
    fn matches(&self, path: &str, headers: &HeaderMap) -> bool {
        let path_ok = match &self.path {
            PathMatch::Any => true,
            PathMatch::Prefix(p) => path.starts_with(p.as_str()),
            PathMatch::Exact(p) => path == p,
        };
        path_ok
            && self
                .headers
                .iter()
                .all(|(name, want)| match (headers.get(name), want) {
                    (Some(got), Some(want)) => got == want,
                    (Some(_), None) => true,
                    (None, _) => false,
                })
    }

    /// Picks the target for one request, by weight (`None` only if the route has no target,
    /// which validation rules out). A cluster of a split that has no endpoint yet (a new
    /// cluster whose endpoints come in an update of their own, as a canary's does) leaves its
    /// share to the first of the split that has some, as Envoy keeps a warming cluster out.
    pub fn target(&self) -> Option<&Target> {
        if self.targets.len() == 1 {
            return self.targets.first();
        }
        let total = self.targets.last()?.cumulative;
        let roll = fastrand::u32(0..total.max(1));
        let slot = self.targets.partition_point(|t| t.cumulative <= roll);
        let chosen = self.targets.get(slot).or(self.targets.last())?;
        if chosen.cluster.has_endpoints() {
            return Some(chosen);
        }
        self.targets
            .iter()
            .find(|t| t.cluster.has_endpoints())
            .or(Some(chosen))
    }

    /// The upstream path for `path_and_query` after this route's rewrite.
    pub fn rewrite(&self, path: &str, query: Option<&str>) -> Option<String> {
        let replacement = self.prefix_rewrite.as_deref()?;
        let rest = match &self.path {
            PathMatch::Prefix(p) => &path[p.len().min(path.len())..],
            PathMatch::Exact(_) => "",
            PathMatch::Any => path,
        };
        let mut out = String::with_capacity(replacement.len() + rest.len() + 1);
        out.push_str(replacement);
        if out.ends_with('/') && rest.starts_with('/') {
            out.push_str(&rest[1..]);
        } else {
            out.push_str(rest);
        }
        if let Some(q) = query {
            out.push('?');
            out.push_str(q);
        }
        Some(out)
    }
}

#[derive(Debug)]
struct Host {
    routes: Vec<Route>,
}

/// A listener's routing: host lookup (exact, longest `*.` suffix, then `*`), then the first
/// matching route of that host.
#[derive(Debug, Default)]
pub struct RouteTable {
    hosts: Vec<Host>,
    exact: HashMap<String, usize>,
    /// (".example.com", host index), longest suffix first.
    suffixes: Vec<(String, usize)>,
    any: Option<usize>,
}

fn header_pairs(
    map: &std::collections::BTreeMap<String, String>,
) -> Vec<(HeaderName, HeaderValue)> {
    map.iter()
        .filter_map(|(k, v)| {
            Some((
                HeaderName::from_bytes(k.as_bytes()).ok()?,
                HeaderValue::from_str(v).ok()?,
            ))
        })
        .collect()
}

fn header_names(names: &[String]) -> Vec<HeaderName> {
    names
        .iter()
        .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
        .collect()
}

impl RouteTable {
    /// Compiles a listener's validated virtual hosts; `cluster` resolves a cluster by name,
    /// `metrics` makes a route's metric handles, and routes that cache use `cache`.
    pub fn build(
        listener: &str,
        vhosts: &[VirtualHost],
        cluster: &dyn Fn(&str) -> Option<Arc<Cluster>>,
        metrics: &dyn Fn(&str, &str, &str, &str) -> RouteMetrics,
        cache: &Arc<HttpCache>,
    ) -> RouteTable {
        let mut table = RouteTable::default();
        for (index, vhost) in vhosts.iter().enumerate() {
            let routes = vhost
                .routes
                .iter()
                .enumerate()
                .map(|(r, route)| {
                    let mut compiled =
                        compile_route(listener, &vhost.name, r, route, cluster, metrics);
                    compiled.cache = route.cache.as_ref().and_then(|c| RouteCache::new(c, cache));
                    compiled
                })
                .collect();
            table.hosts.push(Host { routes });
            for domain in &vhost.domains {
                let domain = domain.to_ascii_lowercase();
                if domain == "*" {
                    table.any = Some(index);
                } else if let Some(suffix) = domain.strip_prefix('*') {
                    table.suffixes.push((suffix.to_owned(), index));
                } else {
                    table.exact.insert(domain, index);
                }
            }
        }
        table.suffixes.sort_by_key(|s| std::cmp::Reverse(s.0.len()));
        table
    }

    /// The route for a request to `host` (without port) with `path` and `headers`.
    pub fn find(&self, host: &str, path: &str, headers: &HeaderMap) -> Option<&Route> {
        let lowered;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = host.to_ascii_lowercase();
            lowered.as_str()
        } else {
            host
        };
        let index = self
            .exact
            .get(host)
            .copied()
            .or_else(|| {
                self.suffixes
                    .iter()
                    .find(|(suffix, _)| {
                        host.len() > suffix.len() && host.ends_with(suffix.as_str())
                    })
                    .map(|(_, i)| *i)
            })
            .or(self.any)?;
        self.hosts[index]
            .routes
            .iter()
            .find(|route| route.matches(path, headers))
    }
}

fn compile_route(
    listener: &str,
    vhost: &str,
    index: usize,
    route: &RouteConfig,
    cluster: &dyn Fn(&str) -> Option<Arc<Cluster>>,
    metrics: &dyn Fn(&str, &str, &str, &str) -> RouteMetrics,
) -> Route {
    let name = route.name.clone().unwrap_or_else(|| index.to_string());
    let split: Vec<(String, u32)> = match (&route.cluster, &route.weighted_clusters) {
        (Some(single), _) => vec![(single.clone(), 1)],
        (None, Some(weighted)) => weighted
            .iter()
            .map(|w| (w.name.clone(), w.weight))
            .collect(),
        (None, None) => Vec::new(),
    };
    let mut cumulative = 0;
    let targets = split
        .into_iter()
        .filter_map(|(cluster_name, weight)| {
            cumulative += weight;
            Some(Target {
                cluster: cluster(&cluster_name)?,
                metrics: metrics(listener, vhost, &name, &cluster_name),
                cumulative,
            })
        })
        .collect();
    let path = match (&route.matcher.path, &route.matcher.prefix) {
        (Some(exact), _) => PathMatch::Exact(exact.clone()),
        (None, Some(prefix)) if prefix != "/" => PathMatch::Prefix(prefix.clone()),
        _ => PathMatch::Any,
    };
    Route {
        headers: route
            .matcher
            .headers
            .iter()
            .filter_map(|h| {
                let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
                let value = match &h.exact {
                    Some(v) => Some(HeaderValue::from_str(v).ok()?),
                    None => None,
                };
                Some((name, value))
            })
            .collect(),
        name,
        path,
        targets,
        https_redirect: route.https_redirect.map(|r| r.port),
        prefix_rewrite: route.prefix_rewrite.clone(),
        timeout: route.timeout.0,
        retries: route.retries.clone(),
        request_add: header_pairs(&route.request_headers_add),
        request_remove: header_names(&route.request_headers_remove),
        response_add: header_pairs(&route.response_headers_add),
        response_remove: header_names(&route.response_headers_remove),
        cache: None,
        wake: route
            .wake_cluster
            .as_deref()
            .and_then(cluster)
            .map(crate::nudge::Nudge::new),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse_config, ProxyConfig};
    use proptest::prelude::*;

    /// A table whose virtual hosts each have one route per prefix, named `vhost:prefix`.
    fn table(domains: &[Vec<String>], prefixes: &[String]) -> RouteTable {
        let vhosts: Vec<String> = domains
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let routes: Vec<String> = prefixes
                    .iter()
                    .map(|p| {
                        format!("{{name: \"v{i}:{p}\", match: {{prefix: \"{p}\"}}, cluster: c}}")
                    })
                    .collect();
                format!(
                    "{{name: v{i}, domains: [{}], routes: [{}]}}",
                    d.iter()
                        .map(|x| format!("\"{x}\""))
                        .collect::<Vec<_>>()
                        .join(", "),
                    routes.join(", ")
                )
            })
            .collect();
        let text = format!(
            "listeners: [{{name: l, address: \"127.0.0.1:1\", virtual_hosts: [{}]}}]\nclusters: [{{name: c, endpoints: [{{address: \"127.0.0.1:2\"}}]}}]\n",
            vhosts.join(", ")
        );
        table_of(&text)
    }

    /// The route table of the first listener of config `text`.
    fn table_of(text: &str) -> RouteTable {
        let config: ProxyConfig = parse_config(text).expect("generated config is valid");
        RouteTable::build(
            "l",
            &config.listeners[0].virtual_hosts,
            &|_| None,
            &|_, _, _, _| crate::metrics::ProxyMetrics::default().route("l", "v", "r", "c"),
            &Arc::default(),
        )
    }

    #[test]
    fn a_split_leaves_the_share_of_a_cluster_without_endpoints_to_one_with_some() {
        let text = "listeners: [{name: l, address: \"127.0.0.1:1\", virtual_hosts: [{name: v, \
            domains: [\"*\"], routes: [{match: {prefix: /}, weighted_clusters: [{name: new, \
            weight: 99}, {name: old, weight: 1}]}]}]}]\nclusters: [{name: new, endpoints: []}, \
            {name: old, endpoints: [{address: \"127.0.0.1:2\"}]}]\n";
        let config: ProxyConfig = parse_config(text).expect("valid");
        let clusters: Vec<Arc<Cluster>> = config
            .clusters
            .iter()
            .map(|c| Arc::new(Cluster::build(c, crate::upstream::test_client(), None)))
            .collect();
        let table = RouteTable::build(
            "l",
            &config.listeners[0].virtual_hosts,
            &|name| clusters.iter().find(|c| c.name == name).cloned(),
            &|_, _, _, _| crate::metrics::ProxyMetrics::default().route("l", "v", "r", "c"),
            &Arc::default(),
        );
        let route = table.find("any", "/", &HeaderMap::new()).expect("a route");
        for _ in 0..50 {
            assert_eq!(route.target().expect("a target").cluster.name, "old");
        }
    }

    /// The reference: which virtual host serves `host`.
    fn expected_vhost(domains: &[Vec<String>], host: &str) -> Option<usize> {
        let find =
            |pred: &dyn Fn(&str) -> bool| domains.iter().position(|d| d.iter().any(|x| pred(x)));
        find(&|d| d == host)
            .or_else(|| {
                let mut best: Option<(usize, usize)> = None;
                for (i, d) in domains.iter().enumerate() {
                    for x in d {
                        if let Some(suffix) = x.strip_prefix('*') {
                            if suffix.len() > 1
                                && host.len() > suffix.len()
                                && host.ends_with(suffix)
                                && best.is_none_or(|(len, _)| suffix.len() > len)
                            {
                                best = Some((suffix.len(), i));
                            }
                        }
                    }
                }
                best.map(|(_, i)| i)
            })
            .or_else(|| find(&|d| d == "*"))
    }

    fn label() -> impl Strategy<Value = String> {
        "[a-c]{1,2}"
    }

    fn domain() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("*".to_owned()),
            (label(), label()).prop_map(|(a, b)| format!("{a}.{b}")),
            (label(), label()).prop_map(|(a, b)| format!("*.{a}.{b}")),
            label().prop_map(|a| format!("*.{a}")),
        ]
    }

    /// A route's path condition: none, a prefix, or an exact path.
    fn path_rule() -> impl Strategy<Value = Option<(bool, String)>> {
        proptest::option::of((any::<bool>(), "/[a-b]{0,2}"))
    }

    proptest! {
        #[test]
        fn path_and_header_conditions_pick_the_first_route_that_holds(
            routes in proptest::collection::vec(
                (path_rule(), proptest::option::of(("x-[a-b]", proptest::option::of("[a-b]")))),
                1..5,
            ),
            path in "/[a-b]{0,3}",
            sent in proptest::collection::vec(("x-[a-b]", "[a-b]"), 0..3),
        ) {
            let yaml: Vec<String> = routes
                .iter()
                .enumerate()
                .map(|(i, (rule, header))| {
                    let mut conditions = Vec::new();
                    match rule {
                        Some((true, p)) => conditions.push(format!("path: \"{p}\"")),
                        Some((false, p)) => conditions.push(format!("prefix: \"{p}\"")),
                        None => {}
                    }
                    match header {
                        Some((name, Some(value))) => conditions
                            .push(format!("headers: [{{name: {name}, exact: \"{value}\"}}]")),
                        Some((name, None)) => conditions.push(format!("headers: [{{name: {name}}}]")),
                        None => {}
                    }
                    format!("{{name: r{i}, match: {{{}}}, cluster: c}}", conditions.join(", "))
                })
                .collect();
            let text = format!(
                "listeners: [{{name: l, address: \"127.0.0.1:1\", virtual_hosts: [{{name: v, domains: [\"*\"], routes: [{}]}}]}}]\nclusters: [{{name: c, endpoints: [{{address: \"127.0.0.1:2\"}}]}}]\n",
                yaml.join(", ")
            );
            let table = table_of(&text);
            let mut headers = HeaderMap::new();
            for (name, value) in &sent {
                headers.append(
                    http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    http::HeaderValue::from_str(value).unwrap(),
                );
            }
            // The reference: the first route whose path rule and header condition both hold
            // (a header's first value counts).
            let first_value = |name: &str| sent.iter().find(|(n, _)| n == name).map(|(_, v)| v);
            let expected = routes.iter().position(|(rule, header)| {
                let path_ok = match rule {
                    Some((true, p)) => path == *p,
                    Some((false, p)) => path.starts_with(p.as_str()),
                    None => true,
                };
                let header_ok = match header {
                    Some((name, Some(value))) => first_value(name) == Some(value),
                    Some((name, None)) => first_value(name).is_some(),
                    None => true,
                };
                path_ok && header_ok
            });
            let found = table.find("any", &path, &headers).map(|r| r.name.clone());
            prop_assert_eq!(found, expected.map(|i| format!("r{i}")));
        }

        #[test]
        fn host_and_path_matching_follow_the_documented_order(
            domains in proptest::collection::vec(proptest::collection::vec(domain(), 1..3), 1..4),
            prefixes in proptest::collection::vec("/[a-b]{0,3}", 1..4),
            host in "([a-c]{1,2}\\.){0,3}[a-c]{1,2}",
            path in "/[a-b/]{0,6}",
        ) {
            // Domains must be unique across virtual hosts, as validation demands.
            let mut seen = std::collections::HashSet::new();
            let domains: Vec<Vec<String>> = domains
                .into_iter()
                .map(|d| d.into_iter().filter(|x| seen.insert(x.clone())).collect::<Vec<_>>())
                .filter(|d: &Vec<String>| !d.is_empty())
                .collect();
            prop_assume!(!domains.is_empty());
            let mut unique = std::collections::HashSet::new();
            let prefixes: Vec<String> = prefixes.into_iter().filter(|p| unique.insert(p.clone())).collect();
            let table = table(&domains, &prefixes);
            let found = table.find(&host, &path, &HeaderMap::new()).map(|r| r.name.clone());
            let expected = expected_vhost(&domains, &host).and_then(|v| {
                prefixes
                    .iter()
                    .find(|p| p.as_str() == "/" || path.starts_with(p.as_str()))
                    .map(|p| format!("v{v}:{p}"))
            });
            prop_assert_eq!(found, expected);
        }

        #[test]
        fn matching_and_rewriting_never_panic(
            host in any::<String>(),
            path in any::<String>(),
            query in proptest::option::of(any::<String>()),
        ) {
            let table = table(&[vec!["*".to_owned()]], &["/a".to_owned(), "/".to_owned()]);
            if let Some(route) = table.find(&host, &path, &HeaderMap::new()) {
                let _ = route.rewrite(&path, query.as_deref());
            }
        }

        #[test]
        fn config_parsing_never_panics(text in any::<String>()) {
            let _ = parse_config(&text);
        }

        #[test]
        fn mutated_configs_are_accepted_or_rejected_with_a_field(
            cut in 0usize..400,
            insert in "[ -~]{0,8}",
        ) {
            let valid = "listeners:\n  - name: web\n    address: 127.0.0.1:8080\n    virtual_hosts:\n      - name: all\n        domains: [\"*\"]\n        routes:\n          - match: {prefix: /api}\n            cluster: api\n            retries: {attempts: 2}\nclusters:\n  - name: api\n    lb: ring_hash\n    hash_on: {header: x-user}\n    endpoints: [{address: \"127.0.0.1:9000\", weight: 2}]\n";
            let at = (cut % valid.len()).min(valid.len());
            let at = (0..=at).rev().find(|i| valid.is_char_boundary(*i)).unwrap_or(0);
            let text = format!("{}{}{}", &valid[..at], insert, &valid[at..]);
            if let Err(errors) = parse_config(&text) {
                prop_assert!(!errors.errors.is_empty());
                prop_assert!(errors.errors.iter().all(|e| !e.field.is_empty() && !e.message.is_empty()));
            }
        }
    }
}
