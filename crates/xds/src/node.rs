//! Who is on the other end of a stream: the node's role and tenant, and the names it sees.

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::value::Kind;

/// Where Meridian's own type URLs start.
const MERIDIAN_TYPES: &str = "type.googleapis.com/meridian.";
/// A prefix no cache name has.
const NOTHING: &str = "\u{0}none/";

/// The namespace of the resources rendered for Meridian's proxies.
pub const PROXY_NAMESPACE: &str = "proxy/";

/// The namespace of the listeners and routes rendered for Meridian's proxies playing `role`
/// (`gateway`, `node-proxy`, `edge`); clusters and endpoints are shared by all roles.
pub fn role_namespace(role: &str) -> String {
    format!("{PROXY_NAMESPACE}{role}/")
}

/// The namespace of Meridian's own resources for node `node` (its instance assignments).
pub fn node_namespace(node: &str) -> String {
    format!("node/{node}/")
}

/// The namespace of Meridian's own resources for the control plane of `region` (its regional
/// deployments, served by the global control plane).
pub fn region_namespace(region: &str) -> String {
    format!("region/{region}/")
}

/// The namespace of the resources rendered for `org`'s proxyless gRPC clients.
pub fn tenant_namespace(org: &str) -> String {
    format!("grpc/{org}/")
}

/// What a client's certificate grants it: its role and, for a tenant's workloads, its org. The
/// server's authentication in front of the ADS service puts it in each request's extensions;
/// when present it decides the node's [`Scope`], and whatever the node declares in its metadata
/// is ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The role: `gateway`, `node-proxy`, `edge`, `grpc` for a tenant's workloads, or
    /// `control` for a regional control plane.
    pub role: String,
    /// The org of a tenant's workload.
    pub org: Option<String>,
    /// The node of an agent: it sees that node's Meridian resources (assignments).
    pub node: Option<String>,
    /// The region of a regional control plane: it sees that region's Meridian resources
    /// (regional deployments).
    pub region: Option<String>,
}

/// The part of the cache a node sees. Cache names start with a namespace: a node whose metadata
/// names an `org` (a proxyless gRPC client of a tenant) sees only `grpc/<org>/…`, under names
/// relative to it (cache name `grpc/acme/api.shop.internal:8080` is `api.shop.internal:8080` to
/// a node of org `acme`); other nodes (Meridian's own proxies) see the listeners and routes of
/// their role under `proxy/<role>/…`, and the clusters and endpoints under `proxy/…`, the same
/// way.
///
/// With a [`Grant`] (the client authenticated with a certificate) the role and org are the
/// grant's; without one (a server that does not authenticate) they are what the node declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// The prefix that turns a node's names of clusters and endpoints into cache names.
    shared: String,
    /// The prefix that turns a node's names of listeners and routes into cache names.
    listeners: String,
    /// The prefix of the node's Meridian resources (`None`: it sees none).
    own: Option<String>,
    /// Whether the node is an agent, which also sees the region's mesh services.
    agent: bool,
    /// Whether the node sees every region's summary (a regional control plane or an edge).
    summaries: bool,
    /// Whether the node is an edge (granted so by its certificate), the only one that sees
    /// certificates, their keys, ACME challenges and cache purges.
    edge: bool,
    /// The node's role, for metrics and logs (`metadata.role`, or `unknown`).
    pub role: String,
    /// The node's id, for logs.
    pub node_id: String,
}

impl Scope {
    /// The scope of `node` with `grant` (an absent node without a grant sees everything, as
    /// role `unknown`).
    pub fn of(node: Option<&Node>, grant: Option<&Grant>) -> Scope {
        let string = |key: &str| {
            let value = node?.metadata.as_ref()?.fields.get(key)?;
            match &value.kind {
                Some(Kind::StringValue(s)) if !s.is_empty() => Some(s.clone()),
                _ => None,
            }
        };
        let (role, org, own) = match grant {
            Some(grant) => (
                grant.role.clone(),
                grant.org.clone(),
                grant
                    .node
                    .as_deref()
                    .map(node_namespace)
                    .or_else(|| grant.region.as_deref().map(region_namespace)),
            ),
            None => (
                string("role").unwrap_or_else(|| "unknown".to_owned()),
                string("org"),
                None,
            ),
        };
        let agent = grant.is_some_and(|g| g.node.is_some());
        let edge = grant.is_some_and(|g| g.role == "edge");
        let summaries = edge || grant.is_some_and(|g| g.region.is_some());
        let (shared, listeners) = match org {
            Some(org) => (tenant_namespace(&org), tenant_namespace(&org)),
            None => (PROXY_NAMESPACE.to_owned(), role_namespace(&role)),
        };
        Scope {
            shared,
            listeners,
            own,
            agent,
            summaries,
            edge,
            role,
            node_id: node.map(|n| n.id.clone()).unwrap_or_default(),
        }
    }

    /// The prefix of every cache name of `type_url` the node may see.
    pub fn prefix(&self, type_url: &str) -> &str {
        if [
            crate::meridian::SECRET,
            crate::meridian::ACME_CHALLENGE,
            crate::meridian::CACHE_PURGE,
        ]
        .contains(&type_url)
        {
            return if self.edge {
                crate::meridian::EDGE_NAMESPACE
            } else {
                NOTHING
            };
        }
        if type_url == crate::LISTENER || type_url == crate::ROUTE {
            &self.listeners
        } else if type_url.starts_with(MERIDIAN_TYPES) {
            // A node granted nothing of these (not an agent, a regional control plane or an
            // edge) sees no Meridian resource: no cache name starts so.
            if [
                crate::meridian::REGION_SUMMARY,
                crate::meridian::REGION_SERVICE,
            ]
            .contains(&type_url)
            {
                return if self.summaries {
                    crate::meridian::REGIONS_NAMESPACE
                } else {
                    NOTHING
                };
            }
            match &self.own {
                Some(_) if self.agent && type_url == crate::meridian::SERVICE => {
                    crate::meridian::MESH_NAMESPACE
                }
                Some(own) => own,
                None => NOTHING,
            }
        } else {
            &self.shared
        }
    }

    /// The cache name of a name of `type_url` the node uses.
    pub fn cache_name(&self, type_url: &str, name: &str) -> String {
        format!("{}{name}", self.prefix(type_url))
    }

    /// The name the node uses for a cache name of `type_url`, if the node may see it.
    pub fn node_name<'a>(&self, type_url: &str, cache_name: &'a str) -> Option<&'a str> {
        cache_name.strip_prefix(self.prefix(type_url))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meridian::{ACME_CHALLENGE, CACHE_PURGE, EDGE_NAMESPACE, SECRET};

    fn granted(role: &str, region: Option<&str>) -> Scope {
        let grant = Grant {
            role: role.to_owned(),
            org: None,
            node: None,
            region: region.map(str::to_owned),
        };
        Scope::of(None, Some(&grant))
    }

    #[test]
    fn only_edges_see_certificates_challenges_and_purges() {
        let edge = granted("edge", None);
        for type_url in [SECRET, ACME_CHALLENGE, CACHE_PURGE] {
            assert_eq!(edge.prefix(type_url), EDGE_NAMESPACE);
            assert_eq!(
                edge.node_name(type_url, "edge/certificate/shop.example.com"),
                Some("certificate/shop.example.com")
            );
            for other in [granted("control", Some("fra")), granted("gateway", None)] {
                assert_eq!(
                    other.node_name(type_url, "edge/certificate/a.example"),
                    None
                );
            }
            let declared = Scope::of(None, None);
            assert_eq!(
                declared.node_name(type_url, "edge/certificate/a.example"),
                None
            );
        }
    }
}
