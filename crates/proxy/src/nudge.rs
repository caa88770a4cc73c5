//! Wake nudges: a route can nudge a cluster awake with each of its requests ([`Nudge`]). An
//! edge sends a service's requests to a warm region while the nearer one, whose instances all
//! sleep, would take longer to wake than the extra round trip; its route nudges the sleeping
//! region's gateway, so that the region wakes and takes the requests again once awake. A nudge
//! is `GET /` for the request's host with [`WAKE_HEADER`]: the gateway routes it like any
//! request of the host, and the node proxy of an instance answers it itself (`204`), ringing
//! its wake gate if it sleeps; the instance never sees it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, HOST};
use http::uri::Authority;
use http::{HeaderMap, Method, Request, Uri};
use http_body_util::{Either, Full};

use crate::cluster::Cluster;
use crate::fields::AddedFields;

/// The request field of a wake nudge.
pub const WAKE_HEADER: HeaderName = HeaderName::from_static("x-meridian-wake");

/// Longest a nudge is waited for before another may go.
const NUDGE_TIMEOUT: Duration = Duration::from_secs(5);

/// A route's nudges of one cluster: at most one under way.
#[derive(Debug)]
pub struct Nudge {
    cluster: Arc<Cluster>,
    sending: Arc<AtomicBool>,
}

impl Nudge {
    /// Nudges of `cluster`.
    pub(crate) fn new(cluster: Arc<Cluster>) -> Nudge {
        Nudge {
            cluster,
            sending: Arc::default(),
        }
    }

    /// Nudges the cluster for `host` in a task of its own, unless a nudge is under way.
    pub(crate) fn send(&self, host: &str) {
        let Ok(authority) = Authority::try_from(host) else {
            return;
        };
        if self.sending.swap(true, Ordering::AcqRel) {
            return;
        }
        let cluster = self.cluster.clone();
        let sending = self.sending.clone();
        tokio::spawn(async move {
            let sent = tokio::time::timeout(NUDGE_TIMEOUT, nudge(&cluster, authority)).await;
            if !matches!(sent, Ok(true)) {
                tracing::debug!(cluster = %cluster.name, "a wake nudge got no answer");
            }
            sending.store(false, Ordering::Release);
        });
    }
}

/// Sends one nudge for `authority` to an endpoint of `cluster`; whether it was answered.
async fn nudge(cluster: &Cluster, authority: Authority) -> bool {
    let Some(lease) = cluster.pick(&HeaderMap::new(), None) else {
        return false;
    };
    let endpoint = lease.endpoint();
    let uri = match cluster.client.uri_authority(endpoint, Some(&authority)) {
        Some(named) => Uri::builder()
            .scheme("http")
            .authority(named.clone())
            .path_and_query("/")
            .build(),
        None => Ok(Uri::from_static("/")),
    };
    let Ok(uri) = uri else {
        return false;
    };
    let mut request = Request::new(Either::Right(Full::new(Bytes::new())));
    *request.method_mut() = Method::GET;
    *request.uri_mut() = uri;
    let headers = request.headers_mut();
    if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
        headers.insert(HOST, host);
    }
    headers.insert(WAKE_HEADER, HeaderValue::from_static("1"));
    cluster
        .client
        .request(endpoint, request, &AddedFields::default())
        .await
        .is_ok()
}

/// Whether a request is a wake nudge.
pub(crate) fn is_nudge(headers: &HeaderMap) -> bool {
    headers.contains_key(WAKE_HEADER)
}
