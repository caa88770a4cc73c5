//! A delta-ADS client: holds the resources it accepted, hands each response to a [`Handler`]
//! that accepts (ACK) or rejects (NACK, with the reason) it as a whole, follows the interests the
//! handler derives (e.g. routes named by listeners), and reconnects with backoff, resuming with
//! the versions it holds so that the server sends only what changed.
//!
//! A client may be given several servers that serve the same resources (replicas of the global
//! control plane): it follows one at a time and, when that one fails, moves to the next at
//! once, resuming there with what it holds (resource versions are digests of the content, so
//! the same on every replica: the next one sends only the difference). It waits (backoff)
//! only once every server failed in turn.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use tokio::sync::mpsc;

/// One accepted resource.
#[derive(Debug, Clone)]
pub struct Held {
    /// Its version, as the server named it.
    pub version: String,
    /// Its body.
    pub resource: Arc<Any>,
}

/// Resources held, by type URL, then name. A type is present once a response for it arrived
/// (even an empty one).
pub type Resources = BTreeMap<String, BTreeMap<String, Held>>;

/// What a client subscribes to for one type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interest {
    /// Every resource of the type the server has for this node.
    Wildcard,
    /// These names.
    Names(BTreeSet<String>),
}

/// Interests by type URL.
pub type Interests = BTreeMap<String, Interest>;

/// What the client does with resources.
pub trait Handler: Send {
    /// The interests to start with.
    fn initial_interests(&self) -> Interests;
    /// Accepts `resources` (what is held, with one response for `type_url` applied) and returns
    /// the interests from now on; or rejects it with a reason, and the client keeps what it held.
    fn accept(
        &mut self,
        resources: &Resources,
        type_url: &str,
    ) -> impl Future<Output = Result<Interests, String>> + Send;

    /// [`Handler::accept`], told which resources the response changed, so that a handler can
    /// work in proportion to the change; `Ok(None)` keeps the interests as they are. By
    /// default, calls `accept`.
    fn accept_changes(
        &mut self,
        resources: &Resources,
        changes: &Changes<'_>,
    ) -> impl Future<Output = Result<Option<Interests>, String>> + Send {
        let accepted = self.accept(resources, changes.type_url);
        async move { accepted.await.map(Some) }
    }

    /// Told `true` when a session with the server opens (its stream is up), and `false` when
    /// it ends (the client then keeps what it held and connects again). By default, nothing.
    fn session_changed(&mut self, open: bool) {
        let _ = open;
    }
}

/// What one response changed.
#[derive(Debug, Clone, Copy)]
pub struct Changes<'a> {
    /// The type of the resources.
    pub type_url: &'a str,
    /// The names of those it added, updated or removed.
    pub names: &'a [String],
}

/// A response applied to the held resources in place, and what undoes it.
#[derive(Debug)]
pub struct Applied {
    type_url: String,
    /// The names added, updated or removed.
    pub names: Vec<String>,
    /// What each name held before (`None`: nothing).
    before: Vec<Option<Held>>,
    /// Whether the type had not been held at all.
    new_type: bool,
}

impl Applied {
    /// Puts `held` back as it was before the response.
    pub fn undo(self, held: &mut Resources) {
        if self.new_type {
            held.remove(&self.type_url);
            return;
        }
        let Some(resources) = held.get_mut(&self.type_url) else {
            return;
        };
        // In reverse, so that a name listed twice ends as it first was.
        for (name, before) in self.names.into_iter().zip(self.before).rev() {
            match before {
                Some(old) => resources.insert(name, old),
                None => resources.remove(&name),
            };
        }
    }
}

/// Applies a delta response to `held` in place (its resources are moved out of `response`),
/// with work proportional to the response; or says why it cannot be, changing nothing.
pub fn apply_delta(
    held: &mut Resources,
    response: &mut DeltaDiscoveryResponse,
) -> Result<Applied, String> {
    for resource in &response.resources {
        let Some(body) = &resource.resource else {
            return Err(format!("resource `{}` has no body", resource.name));
        };
        if body.type_url != response.type_url {
            return Err(format!(
                "resource `{}` is a {}, not a {}",
                resource.name, body.type_url, response.type_url
            ));
        }
    }
    let new_type = !held.contains_key(&response.type_url);
    let resources = held.entry(response.type_url.clone()).or_default();
    let count = response.resources.len() + response.removed_resources.len();
    let mut names = Vec::with_capacity(count);
    let mut before = Vec::with_capacity(count);
    for resource in std::mem::take(&mut response.resources) {
        let Some(body) = resource.resource else {
            continue;
        };
        let fresh = Held {
            version: resource.version,
            resource: Arc::new(body),
        };
        before.push(resources.insert(resource.name.clone(), fresh));
        names.push(resource.name);
    }
    for name in std::mem::take(&mut response.removed_resources) {
        before.push(resources.remove(&name));
        names.push(name);
    }
    Ok(Applied {
        type_url: response.type_url.clone(),
        names,
        before,
        new_type,
    })
}

/// Where and as whom a client connects.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The server, e.g. `http://127.0.0.1:18000`, or `https://…` with `tls`; or several,
    /// separated by commas, that serve the same resources (see [`servers`]).
    pub url: String,
    /// TLS for the connection (with the client's certificate for mutual TLS); `None`: cleartext.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The node this client is.
    pub node: Node,
    /// First and longest wait between reconnection attempts.
    pub backoff: (Duration, Duration),
}

/// The servers a list of URLs separated by commas names, in order (spaces around each and
/// empty items are ignored): `https://a:17000,https://b:17000`.
pub fn servers(urls: &str) -> Vec<String> {
    urls.split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A gRPC channel to the xDS server at `url`: over TLS with `tls` (which checks the server and
/// may present the client's certificate), or cleartext without. Its connection is pinged
/// ([`KEEP_ALIVE`]) when nothing arrives, so that a server lost without a reset (stopped, or cut
/// off) ends the calls on it.
pub async fn connect(
    url: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    connect_kept_alive(url, tls, KEEP_ALIVE).await
}

/// [`connect`], pinging the connection after `keep_alive.0` without anything arriving and
/// giving it up when the answer takes longer than `keep_alive.1`.
pub(crate) async fn connect_kept_alive(
    url: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
    keep_alive: (Duration, Duration),
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(keep_alive.0)
        .keep_alive_timeout(keep_alive.1)
        .keep_alive_while_idle(true);
    match tls {
        Some(config) => endpoint.connect_with_connector(TlsConnect(config)).await,
        None => endpoint.connect().await,
    }
}

/// How long a connection may go without anything arriving before it is pinged, and how long
/// the answer may take before the connection is given up: a lost server is noticed within
/// their sum (half a minute).
pub(crate) const KEEP_ALIVE: (Duration, Duration) =
    (Duration::from_secs(20), Duration::from_secs(10));

/// [`KEEP_ALIVE`] of a client that has other servers to move to (replicas of the global
/// control plane): a replica lost without a reset is left within 1.5 s, so that the client
/// follows another within the 2 s of the failover target. A ping costs the server little (a
/// frame of 17 bytes each way), and only while the stream is quiet.
pub(crate) const FAILOVER_KEEP_ALIVE: (Duration, Duration) =
    (Duration::from_millis(500), Duration::from_millis(1000));

/// A gRPC channel to the server at `url` over TLS with `tls` (cleartext without), made
/// without connecting: it connects at its first call and again after a failure, and pings its
/// connection even while no call is active, so that a call waiting on a connection that died
/// ends within half a minute.
pub fn kept_alive_channel(
    url: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEP_ALIVE.0)
        .keep_alive_timeout(KEEP_ALIVE.1)
        .keep_alive_while_idle(true);
    Ok(match tls {
        Some(tls) => endpoint.connect_with_connector_lazy(TlsConnect(tls)),
        None => endpoint.connect_lazy(),
    })
}

/// Opens TLS connections to the server's host and port with a rustls config (which checks the
/// server's identity its own way and may present a client certificate).
#[derive(Clone)]
struct TlsConnect(Arc<rustls::ClientConfig>);

impl tower::Service<http::Uri> for TlsConnect {
    type Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>,
    >;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connector = tokio_rustls::TlsConnector::from(self.0.clone());
        Box::pin(async move {
            let invalid = |what: &str| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{uri}: {what}"))
            };
            let host = uri
                .host()
                .ok_or_else(|| invalid("no host"))?
                .trim_matches(['[', ']']);
            let port = uri.port_u16().unwrap_or(443);
            let name = rustls::pki_types::ServerName::try_from(host.to_owned())
                .map_err(|_| invalid("the host is not a valid server name"))?;
            let tcp = tokio::net::TcpStream::connect((host, port)).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(name, tcp).await?;
            Ok(hyper_util::rt::TokioIo::new(tls))
        })
    }
}

/// Largest response accepted, in bytes.
const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// Why a session with the server ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("cannot connect: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("the stream failed: {0}")]
    Stream(#[from] tonic::Status),
    #[error("the stream was closed")]
    Closed,
}

/// Runs the client until the task is dropped: connects, resumes, and reconnects after failures
/// (to the next server, if it has several: see the module's documentation).
pub async fn run_delta_client<H: Handler>(options: ClientOptions, mut handler: H) {
    let mut held = Resources::new();
    let mut interests = handler.initial_interests();
    let mut backoff = options.backoff.0;
    let servers = servers(&options.url);
    let Some(mut server) = servers.first() else {
        tracing::error!(url = %options.url, "no xDS server to follow");
        return;
    };
    // Sessions that failed in a row without one lasting a while.
    let mut failed = 0;
    loop {
        let started = Instant::now();
        let result = session(server, &options, &mut handler, &mut held, &mut interests).await;
        handler.session_changed(false);
        // A session that lasted a while was healthy: start the backoff over.
        if started.elapsed() > options.backoff.1 {
            backoff = options.backoff.0;
            failed = 0;
        }
        failed += 1;
        let next = &servers[servers
            .iter()
            .position(|s| s == server)
            .map_or(0, |i| i + 1)
            % servers.len()];
        // Another server that has not failed in this round is tried at once.
        let wait = if failed < servers.len() {
            Duration::ZERO
        } else {
            failed = 0;
            backoff.mul_f64(0.5 + fastrand::f64())
        };
        match result {
            Err(SessionError::Closed) => {
                tracing::info!(%server, %next, retry_in = ?wait, "xDS stream closed by the server")
            }
            Err(e) => tracing::warn!(%server, error = %e, %next, retry_in = ?wait,
                "xDS connection lost; keeping the last accepted configuration"),
            Ok(()) => {}
        }
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(options.backoff.1);
        }
        server = next;
    }
}

fn subscribe(
    type_url: &str,
    interest: &Interest,
    held: Option<&BTreeMap<String, Held>>,
) -> DeltaDiscoveryRequest {
    let names = match interest {
        Interest::Wildcard => vec!["*".to_owned()],
        Interest::Names(names) => names.iter().cloned().collect(),
    };
    DeltaDiscoveryRequest {
        type_url: type_url.to_owned(),
        resource_names_subscribe: names,
        initial_resource_versions: held
            .into_iter()
            .flatten()
            .map(|(name, h)| (name.clone(), h.version.clone()))
            .collect(),
        ..Default::default()
    }
}

/// The requests that move the subscriptions from `old` to `new`, dropping from `held` what is no
/// longer subscribed.
fn changes(old: &Interests, new: &Interests, held: &mut Resources) -> Vec<DeltaDiscoveryRequest> {
    let mut requests = Vec::new();
    for (type_url, want) in new {
        let before = old.get(type_url);
        if before == Some(want) {
            continue;
        }
        let (subscribe, unsubscribe): (Vec<String>, Vec<String>) = match (before, want) {
            (Some(Interest::Names(was)), Interest::Names(now)) => (
                now.difference(was).cloned().collect(),
                was.difference(now).cloned().collect(),
            ),
            (Some(Interest::Wildcard), Interest::Names(now)) => {
                (now.iter().cloned().collect(), vec!["*".to_owned()])
            }
            (_, Interest::Wildcard) => (vec!["*".to_owned()], Vec::new()),
            (None, Interest::Names(now)) => (now.iter().cloned().collect(), Vec::new()),
        };
        if let (Interest::Names(now), Some(resources)) = (want, held.get_mut(type_url)) {
            resources.retain(|name, _| now.contains(name));
        }
        requests.push(DeltaDiscoveryRequest {
            type_url: type_url.clone(),
            resource_names_subscribe: subscribe,
            resource_names_unsubscribe: unsubscribe,
            ..Default::default()
        });
    }
    requests
}

async fn session<H: Handler>(
    server: &str,
    options: &ClientOptions,
    handler: &mut H,
    held: &mut Resources,
    interests: &mut Interests,
) -> Result<(), SessionError> {
    let keep_alive = if servers(&options.url).len() > 1 {
        FAILOVER_KEEP_ALIVE
    } else {
        KEEP_ALIVE
    };
    let channel = connect_kept_alive(server, options.tls.clone(), keep_alive).await?;
    let mut client = AggregatedDiscoveryServiceClient::new(channel)
        .max_decoding_message_size(MAX_RESPONSE_BYTES);
    let (tx, rx) = mpsc::unbounded_channel();
    for (i, (type_url, interest)) in interests.iter().enumerate() {
        let mut request = subscribe(type_url, interest, held.get(type_url));
        if i == 0 {
            request.node = Some(options.node.clone());
        }
        let _ = tx.send(request);
    }
    let requests = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
    let mut responses = client
        .delta_aggregated_resources(requests)
        .await?
        .into_inner();
    tracing::info!(%server, resumed = held.values().map(|r| r.len()).sum::<usize>(),
        "xDS stream open");
    handler.session_changed(true);
    loop {
        let Some(mut response) = responses.message().await? else {
            return Err(SessionError::Closed);
        };
        let verdict = match apply_delta(held, &mut response) {
            Ok(applied) => {
                let changes = Changes {
                    type_url: &response.type_url,
                    names: &applied.names,
                };
                match handler.accept_changes(held, &changes).await {
                    Ok(new_interests) => Ok(new_interests),
                    Err(reason) => {
                        applied.undo(held);
                        Err(reason)
                    }
                }
            }
            Err(reason) => Err(reason),
        };
        let mut ack = DeltaDiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            ..Default::default()
        };
        match verdict {
            Ok(new_interests) => {
                let _ = tx.send(ack);
                if let Some(new_interests) = new_interests {
                    for request in changes(interests, &new_interests, held) {
                        let _ = tx.send(request);
                    }
                    *interests = new_interests;
                }
            }
            Err(reason) => {
                tracing::warn!(type_url = %response.type_url, nonce = %response.nonce, %reason,
                    "rejected an xDS update (NACK); keeping the last accepted configuration");
                ack.error_detail = Some(RpcStatus {
                    code: tonic::Code::InvalidArgument as i32,
                    message: reason,
                    details: Vec::new(),
                });
                let _ = tx.send(ack);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::service::discovery::v3::Resource;

    use super::*;

    const TYPE: &str = "type.googleapis.com/test.Thing";

    fn body(value: u8) -> Any {
        Any {
            type_url: TYPE.to_owned(),
            value: vec![value],
        }
    }

    fn resource(name: &str, value: u8) -> Resource {
        Resource {
            name: name.to_owned(),
            version: value.to_string(),
            resource: Some(body(value)),
            ..Default::default()
        }
    }

    fn contents(held: &Resources) -> Vec<(String, String, u8)> {
        held.get(TYPE)
            .into_iter()
            .flatten()
            .map(|(n, h)| (n.clone(), h.version.clone(), h.resource.value[0]))
            .collect()
    }

    #[test]
    fn a_response_applies_in_place_and_undoes_exactly() {
        let mut held = Resources::new();
        let mut first = DeltaDiscoveryResponse {
            type_url: TYPE.to_owned(),
            resources: vec![resource("a", 1), resource("b", 1)],
            ..Default::default()
        };
        apply_delta(&mut held, &mut first).unwrap();
        let before = contents(&held);
        let mut second = DeltaDiscoveryResponse {
            type_url: TYPE.to_owned(),
            resources: vec![resource("a", 2), resource("c", 2)],
            removed_resources: vec!["b".to_owned()],
            ..Default::default()
        };
        let applied = apply_delta(&mut held, &mut second).unwrap();
        assert_eq!(applied.names, ["a", "c", "b"]);
        assert_eq!(
            contents(&held),
            [("a".into(), "2".into(), 2), ("c".into(), "2".into(), 2)]
        );
        applied.undo(&mut held);
        assert_eq!(contents(&held), before);

        // A malformed response changes nothing; a first response of a type undoes to nothing.
        let mut bad = DeltaDiscoveryResponse {
            type_url: TYPE.to_owned(),
            resources: vec![resource("a", 3), Resource::default()],
            ..Default::default()
        };
        assert!(apply_delta(&mut held, &mut bad).is_err());
        assert_eq!(contents(&held), before);
        let mut other = Resources::new();
        let mut once = DeltaDiscoveryResponse {
            type_url: TYPE.to_owned(),
            resources: vec![resource("a", 1)],
            ..Default::default()
        };
        apply_delta(&mut other, &mut once).unwrap().undo(&mut other);
        assert!(
            other.is_empty(),
            "the type is not held until a response is accepted"
        );
    }
}
