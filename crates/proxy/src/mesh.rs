//! Mesh listeners: who is calling (the SPIFFE ID of the client certificate) and whether they
//! may. A caller of the listener's org may call; one of another org only if an `allow` pattern
//! names it; Meridian's gateways and edges may call (they carry outside traffic in). The caller's
//! ID reaches the upstream in [`PEER_HEADER`], which is never taken from a client.

use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use meridian_identity::{SpiffeId, Subject};

use crate::config::MeshConfig;
use crate::forward::{local_response, Peer, ProxyBody};
use crate::server::ListenerContext;

/// The header that names the caller's SPIFFE ID to the upstream.
pub const PEER_HEADER: &str = "x-meridian-peer";

/// A mesh listener's authorization policy.
#[derive(Debug)]
pub struct MeshPolicy {
    org: String,
    /// Allowed callers of other orgs: `[org, app, service]`, `*` for any.
    allow: Vec<[String; 3]>,
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
        }
    }

    /// Whether `caller` may call this listener.
    pub fn allows(&self, caller: &SpiffeId) -> bool {
        match &caller.subject {
            Subject::Workload { org, app, service } => {
                *org == self.org
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
pub fn refuse(
    request: &mut Request<Incoming>,
    ctx: &ListenerContext,
    peer: &Peer,
) -> Option<Response<ProxyBody>> {
    request.headers_mut().remove(PEER_HEADER);
    let policy = ctx.mesh.load_full()?;
    match peer.identity() {
        Some((id, header)) if policy.allows(id) => {
            request.headers_mut().insert(PEER_HEADER, header.clone());
            None
        }
        caller => {
            ctx.denied.inc();
            let caller = caller.map_or_else(|| "unknown".to_owned(), |(id, _)| id.to_string());
            tracing::warn!(target: "audit", listener = %ctx.name, %caller, callee_org = %policy.org,
                path = %request.uri().path(), client = %peer.addr, "mesh call denied");
            Some(local_response(StatusCode::FORBIDDEN, "forbidden_peer"))
        }
    }
}

/// The header value naming `id`.
pub fn header_value(id: &SpiffeId) -> Option<HeaderValue> {
    HeaderValue::from_str(&id.to_string()).ok()
}
