//! Mesh listeners: who is calling (the SPIFFE ID of the client certificate) and whether they
//! may. On a workload's listener (one with an org) a caller of that org may call; one of another
//! org only if an `allow` pattern names it; Meridian's gateways and edges may call (they carry
//! outside traffic in). On a gateway's listener (no org) only edges may call. The caller's ID
//! reaches the upstream in [`PEER_HEADER`], which is never taken from a client.

use http::{HeaderValue, Request, Response, StatusCode};
use meridian_identity::{SpiffeId, Subject};

use crate::answers::local_response;
use crate::body::ProxyBody;
use crate::config::MeshConfig;
use crate::peer::Peer;
use crate::server::ListenerContext;

/// The header that names the caller's SPIFFE ID to the upstream.
pub const PEER_HEADER: &str = "x-meridian-peer";
/// [`PEER_HEADER`] as a header name, so that each request does not parse it again.
static PEER: http::HeaderName = http::HeaderName::from_static(PEER_HEADER);

/// A mesh listener's authorization policy.
#[derive(Debug)]
pub struct MeshPolicy {
    /// The org of the workload served; `None` for a gateway.
    org: Option<String>,
    /// Allowed callers of other orgs: `[org, app, service]`, `*` for any.
    allow: Vec<[String; 3]>,
    /// The listener's own SPIFFE ID (from its certificate), for the audit log.
    callee: String,
}

impl MeshPolicy {
    /// The policy of a (validated) mesh section.
    pub fn new(mesh: &MeshConfig) -> MeshPolicy {
        let allow = mesh
            .allow
            .iter()
            .filter_map(|pattern| {
                let mut parts = pattern.split('/').map(str::to_owned);
                Some([parts.next()?, parts.next()?, parts.next()?])
            })
            .collect();
        MeshPolicy {
            org: mesh.org.clone(),
            allow,
            callee: own_id(&mesh.cert_file)
                .map_or_else(|| "unknown".to_owned(), |id| id.to_string()),
        }
    }

    /// Whether `caller` may call this listener.
    pub fn allows(&self, caller: &SpiffeId) -> bool {
        let Some(own_org) = &self.org else {
            return matches!(caller.subject, Subject::Edge { .. });
        };
        match &caller.subject {
            Subject::Workload { org, app, service } => {
                org == own_org
                    || self.allow.iter().any(|pattern| {
                        [org, app, service]
                            .iter()
                            .zip(pattern)
                            .all(|(value, wanted)| wanted == "*" || wanted == *value)
                    })
            }
            Subject::Gateway { .. } | Subject::Edge { .. } => true,
            Subject::Agent { .. } | Subject::Control { .. } => false,
        }
    }
}

/// Applies the listener's mesh rules to a request: the caller's own `x-meridian-peer` is always
/// dropped; on a mesh listener an authorized caller's ID is set in its place, and anyone else is
/// answered 403 `forbidden_peer` (counted and written to the audit log): that answer is
/// returned.
pub fn refuse<B>(
    request: &mut Request<B>,
    ctx: &ListenerContext,
    peer: &Peer,
) -> Option<Response<ProxyBody>> {
    request.headers_mut().remove(&PEER);
    let policy = ctx.mesh.load_full()?;
    let identity = peer.identity();
    let caller = identity.map(|(id, _)| id);
    match identity {
        Some((_, header)) if admits(&policy, ctx, caller, peer.addr, request.uri().path()) => {
            request.headers_mut().insert(PEER.clone(), header.clone());
            None
        }
        _ => Some(local_response(StatusCode::FORBIDDEN, "forbidden_peer")),
    }
}

/// Whether `caller` (the SPIFFE ID of `client`'s certificate, if it has one) may call the
/// listener of `ctx` under `policy`; a caller refused is counted in
/// `meridian_proxy_mesh_denied_total` and written to the audit log with `what` it asked for (a
/// request's path, or `tcp` for a relayed connection).
pub fn admits(
    policy: &MeshPolicy,
    ctx: &ListenerContext,
    caller: Option<&SpiffeId>,
    client: std::net::SocketAddr,
    what: &str,
) -> bool {
    if caller.is_some_and(|id| policy.allows(id)) {
        return true;
    }
    ctx.denied.inc();
    let caller = caller.map_or_else(|| "unknown".to_owned(), ToString::to_string);
    tracing::warn!(target: "audit", listener = %ctx.name, %caller, callee = %policy.callee,
        path = %what, %client, "mesh call denied");
    false
}

/// The SPIFFE ID of the leaf certificate in `cert_file`, if it can be read.
fn own_id(cert_file: &str) -> Option<SpiffeId> {
    use rustls_pki_types::pem::PemObject;
    let pem = std::fs::read(cert_file).ok()?;
    let leaf = rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
        .next()?
        .ok()?;
    meridian_identity::peer_id(&leaf)
}

/// The header value naming `id`.
pub fn header_value(id: &SpiffeId) -> Option<HeaderValue> {
    HeaderValue::from_str(&id.to_string()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(org: Option<&str>) -> MeshPolicy {
        MeshPolicy::new(&MeshConfig {
            cert_file: String::new(),
            key_file: String::new(),
            bundle_file: String::new(),
            org: org.map(str::to_owned),
            allow: vec!["partner/*/*".to_owned()],
        })
    }

    fn id(path: &str) -> SpiffeId {
        SpiffeId::parse(&format!("spiffe://meridian.local/{path}")).unwrap()
    }

    #[test]
    fn a_workloads_listener_admits_its_org_allowed_orgs_gateways_and_edges() {
        let acme = policy(Some("acme"));
        assert!(acme.allows(&id("org/acme/app/shop/service/web")));
        assert!(acme.allows(&id("org/partner/app/x/service/y")));
        assert!(!acme.allows(&id("org/other/app/shop/service/web")));
        assert!(acme.allows(&id("gateway/fra")));
        assert!(acme.allows(&id("edge/par")));
        assert!(!acme.allows(&id("agent/fra/node-1")));
    }

    #[test]
    fn a_gateways_listener_admits_edges_only() {
        let gateway = policy(None);
        assert!(gateway.allows(&id("edge/par")));
        assert!(!gateway.allows(&id("gateway/iad")));
        assert!(!gateway.allows(&id("org/acme/app/shop/service/web")));
        assert!(!gateway.allows(&id("control/fra")));
    }
}
