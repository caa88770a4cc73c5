//! Who is on the other end of a stream: the node's role and tenant, and the names it sees.

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::value::Kind;

/// The namespace of the resources rendered for Meridian's proxies.
pub const PROXY_NAMESPACE: &str = "proxy/";

/// The namespace of the resources rendered for `org`'s proxyless gRPC clients.
pub fn tenant_namespace(org: &str) -> String {
    format!("grpc/{org}/")
}

/// The part of the cache a node sees. Cache names start with a namespace: a node whose metadata
/// names an `org` (a proxyless gRPC client of a tenant) sees only `grpc/<org>/…`, under names
/// relative to it (cache name `grpc/acme/api.shop.internal:8080` is `api.shop.internal:8080` to
/// a node of org `acme`); other nodes (Meridian's own proxies) see `proxy/…` the same way.
///
/// Until workload identities exist, the org is what the node declares; the identity issue ties
/// it to the node's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// The prefix that turns a node's names into cache names.
    prefix: String,
    /// The node's role, for metrics and logs (`metadata.role`, or `unknown`).
    pub role: String,
    /// The node's id, for logs.
    pub node_id: String,
}

impl Scope {
    /// The scope of `node` (an absent node sees everything, as role `unknown`).
    pub fn of(node: Option<&Node>) -> Scope {
        let string = |key: &str| {
            let value = node?.metadata.as_ref()?.fields.get(key)?;
            match &value.kind {
                Some(Kind::StringValue(s)) if !s.is_empty() => Some(s.clone()),
                _ => None,
            }
        };
        Scope {
            prefix: string("org")
                .map_or_else(|| PROXY_NAMESPACE.to_owned(), |org| tenant_namespace(&org)),
            role: string("role").unwrap_or_else(|| "unknown".to_owned()),
            node_id: node.map(|n| n.id.clone()).unwrap_or_default(),
        }
    }

    /// The cache name of a name the node uses.
    pub fn cache_name(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// The name the node uses for a cache name, if the node may see it.
    pub fn node_name<'a>(&self, cache_name: &'a str) -> Option<&'a str> {
        cache_name.strip_prefix(self.prefix.as_str())
    }

    /// The prefix of every cache name the node may see.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}
