//! An instance leaving service, the agent's part. The regional control plane removes its
//! assignment only once the region's proxies stopped sending it requests; then the agent
//! removes the instance's inbound listeners from the node proxy, where every connection to
//! the instance arrives (the instance keeps its outbound listener: it may still call others
//! while it finishes). Their connections finish the requests in flight and close (idle
//! keep-alive connections at once, HTTP/2 with GOAWAY); WebSockets and other upgraded or TCP
//! connections get the definition's `deploy.drain_timeout`, then are closed. Then the instance
//! gets SIGTERM, and SIGKILL after `deploy.stop_timeout` ([`crate::instance`]).

use std::sync::Arc;
use std::time::Duration;

/// Where an instance is in leaving service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leaving {
    /// It serves.
    No,
    /// No longer assigned: its inbound listeners go with the next node proxy configuration,
    /// then [`drain`] runs.
    Due,
    /// [`drain`] runs; the instance is stopped when it ends.
    Draining,
}

/// Drains the inbound listeners of instance `name` (as [`crate::node_proxy::LocalInstance::name`]
/// says), which the node proxy's configuration no longer has, for at most `timeout`; returns
/// how many connections were closed at the deadline.
pub async fn drain(proxy: Arc<meridian_proxy::Proxy>, name: &str, timeout: Duration) -> usize {
    let left = proxy.drain_listeners(&format!("in/{name}/"), timeout).await;
    if left > 0 {
        tracing::info!(instance = %name, left, ?timeout,
            "closed the connections still open at the drain deadline");
    }
    left
}
