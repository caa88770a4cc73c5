//! The cache step of the request path, for routes whose configuration has `cache`: a GET or
//! HEAD is answered from the shared HTTP cache when RFC 9111 allows (the rules are
//! `meridian_cache`'s), validated with the upstream when it must be, and filled on a miss —
//! one upstream request for concurrent misses on a key; a successful unsafe request
//! invalidates what it changed (§4.4). The cache is in memory, over an optional disk tier
//! ([`disk`]); compressible content is coded as the client asks ([`compress`]). Answers made
//! from the cache, and responses coded on their way, are the proxy's own (the `Err` side of
//! [`forward`]); responses passed on as they came are the `Ok` side.

mod answer;
mod compress;
mod disk;
mod fill;
mod partial;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::header::{HeaderName, RANGE};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use meridian_cache::encoding::{self, Coding};
use meridian_cache::invalidation::{invalidated, Target};
use meridian_cache::{
    CacheControl, CacheKey, CacheStatus, CollapseLimits, Collapser, DiskTier, Forward, Freshness,
    Join, Lookup, Object, QueryKey, ResponsePolicy, Reuse, Store, StoreLimits,
};
use meridian_model::CachePolicy;

use crate::answers::local_response;
use crate::body::ClientBody;
use crate::body::ProxyBody;
use crate::cluster::Cluster;
use crate::forward::{forward, upstream_response_head, ClientRequest};
use crate::metrics::{CacheMetrics, ProxyMetrics};
use crate::peer::Peer;
use crate::pool::ConnectionBody;
use crate::routing::{Route, RouteTable};
use crate::server::ListenerContext;

use fill::{Fetched, Fill, STALE_IF_ERROR};

/// The store's bounds unless configured otherwise.
pub const DEFAULT_LIMITS: StoreLimits = StoreLimits {
    max_bytes: 256 << 20,
    max_object_bytes: 8 << 20,
};

/// How long, and how many, requests wait for another's response on the same key.
const COLLAPSE: CollapseLimits = CollapseLimits {
    max_waiters: 1024,
    max_wait: Duration::from_secs(15),
};

/// The proxy's shared HTTP cache: its store in memory, its disk tier if it has one, the
/// requests in flight to fill it, and the codings of stored contents being made.
pub struct HttpCache {
    store: Store,
    disk: Option<disk::DiskCache>,
    collapser: Collapser<Arc<Object>>,
    coders: Collapser<Arc<Object>, (CacheKey, Coding)>,
}

impl HttpCache {
    /// An empty cache within `limits`.
    pub fn new(limits: StoreLimits) -> HttpCache {
        HttpCache {
            store: Store::new(limits),
            disk: None,
            collapser: Collapser::new(COLLAPSE),
            coders: Collapser::new(COLLAPSE),
        }
    }

    /// An empty memory tier within `limits` over the disk tier `disk`, which serves once the
    /// purges made while it was closed are applied ([`HttpCache::purges_caught_up`]).
    pub fn with_disk(limits: StoreLimits, disk: DiskTier) -> std::io::Result<HttpCache> {
        Ok(HttpCache {
            disk: Some(disk::DiskCache::new(disk)?),
            ..HttpCache::new(limits)
        })
    }

    /// The number of the last purge the disk tier had applied when it was opened; `None`
    /// without a disk tier, or when it did not know.
    pub fn disk_applied(&self) -> Option<u64> {
        self.disk.as_ref().and_then(|disk| disk.tier().applied())
    }

    /// Records `number` as the last purge applied (on disk, after the files it removed).
    pub fn purge_applied(&self, number: u64, metrics: &CacheMetrics) {
        metrics
            .purge_applied
            .set(i64::try_from(number).unwrap_or(i64::MAX));
        if let Some(disk) = &self.disk {
            disk.applied(number);
        }
    }

    /// The purges made while the disk tier was closed are applied: it may serve.
    pub fn purges_caught_up(&self) {
        if let Some(disk) = &self.disk {
            disk.tier().serve();
        }
    }

    /// The stored response for `key` that a request with `request` fields selects: from
    /// memory, or read from the disk tier and kept in memory.
    async fn lookup(&self, key: &CacheKey, request: &HeaderMap, metrics: &CacheMetrics) -> Lookup {
        let found = self.store.lookup(key, request);
        let Some(disk) = self
            .disk
            .as_ref()
            .filter(|_| !matches!(found, Lookup::Hit(_)))
        else {
            return found;
        };
        let Some((object, epoch)) = disk.lookup(key, request).await else {
            return found;
        };
        let object = Arc::new(object);
        self.store.insert(key.clone(), Arc::clone(&object));
        // A purge of the disk tier comes before the memory's: one since the record was read
        // may have missed the copy just made.
        if disk.tier().epoch() != epoch {
            self.store.purge_key(key);
            return found;
        }
        metrics.disk_hit.inc();
        Lookup::Hit(object)
    }

    /// Keeps `object`, just stored in memory under `key`, on disk too.
    fn stored(&self, key: &CacheKey, object: &Arc<Object>) {
        if let Some(disk) = &self.disk {
            disk.write(key, object);
        }
    }

    /// Removes every response stored under `key`, and the parts stored of its
    /// representation, on disk and in memory; whether memory had any.
    fn remove_key(&self, key: &CacheKey) -> bool {
        let partial = key.partial();
        if let Some(disk) = &self.disk {
            disk.delete(disk.tier().purge_key(key));
            disk.delete(disk.tier().purge_key(&partial));
        }
        let parts = self.store.purge_key(&partial);
        self.store.purge_key(key) || parts
    }
}

impl HttpCache {
    /// Sets the size gauges from the store.
    fn account(&self, metrics: &CacheMetrics) {
        let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        metrics.bytes.set(gauge(self.store.bytes()));
        metrics.keys.set(gauge(self.store.keys()));
        if let Some(disk) = &self.disk {
            metrics.disk_bytes.set(gauge(disk.tier().bytes()));
            metrics
                .disk_records
                .set(gauge(disk.tier().records() as u64));
        }
    }

    /// Requests waiting for another's response to fill the cache.
    pub fn waiting(&self) -> usize {
        self.collapser.waiting()
    }
}

impl Default for HttpCache {
    fn default() -> Self {
        HttpCache::new(DEFAULT_LIMITS)
    }
}

impl std::fmt::Debug for HttpCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpCache")
            .field("bytes", &self.store.bytes())
            .field("keys", &self.store.keys())
            .finish()
    }
}

/// What to remove from the shared HTTP cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CachePurge {
    /// The responses stored for an absolute `http://` or `https://` URL, under either scheme,
    /// keyed as the route that serves it keys them. A URL without a port also names the
    /// responses stored for its host with the port of one of the proxy's listeners (what a
    /// client sends in `Host` to a listener on a port other than the scheme's).
    Url(String),
    /// Every response its origin tagged so (`Cache-Tag`, `Surrogate-Key`).
    Tag(String),
    /// Everything.
    All,
}

/// Which stored responses a purge may remove, by the host they were stored for.
#[derive(Debug, Clone, Copy)]
pub enum PurgeScope<'a> {
    /// Any host's.
    AnyHost,
    /// Those of the hosts one of these domains covers: a host name, or `*.` and a host name
    /// for every name below it (an app's domains).
    Domains(&'a [String]),
}

impl PurgeScope<'_> {
    fn admits(&self, host: &str) -> bool {
        match self {
            PurgeScope::AnyHost => true,
            PurgeScope::Domains(domains) => domains
                .iter()
                .any(|domain| meridian_model::domains_overlap(domain, host)),
        }
    }
}

/// A purge that names nothing the cache can look for.
#[derive(Debug, thiserror::Error)]
pub enum PurgeError {
    /// The URL is not an absolute `http://` or `https://` URL with a host.
    #[error("url: `{0}` is not an absolute http:// or https:// URL")]
    Url(String),
}

/// Where the proxy serves: the route tables in force, and its listeners' ports.
pub(crate) struct Served {
    /// The route tables (a URL is keyed as the route that serves it keys it).
    pub tables: Vec<Arc<RouteTable>>,
    /// The listeners' ports.
    pub ports: Vec<u16>,
}

impl HttpCache {
    /// Removes what `purge` names within `scope`, where the proxy serves as `served` says; the
    /// number of keys removed.
    pub(crate) fn purge(
        &self,
        purge: &CachePurge,
        scope: PurgeScope<'_>,
        served: &Served,
        metrics: &CacheMetrics,
    ) -> Result<u64, PurgeError> {
        let admitted = |key: &CacheKey| scope.admits(key.host());
        let urls = match purge {
            CachePurge::Url(url) => url_keys(url, served)?,
            _ => Vec::new(),
        };
        // The disk tier's first: see `HttpCache::lookup`.
        if let Some(disk) = &self.disk {
            let tier = disk.tier();
            let names = match (purge, scope) {
                (CachePurge::All, PurgeScope::AnyHost) => tier.purge_all(),
                (CachePurge::All, PurgeScope::Domains(_)) => tier.purge_matching(admitted),
                (CachePurge::Tag(tag), _) => tier.purge_tag(tag, admitted),
                (CachePurge::Url(_), _) => {
                    tier.purge_matching(|key| admitted(key) && urls.contains(key))
                }
            };
            metrics.purged_disk.inc_by(names.len() as u64);
            disk.delete(names);
        }
        let removed = match (purge, scope) {
            (CachePurge::All, PurgeScope::AnyHost) => {
                let held = self.store.keys();
                self.store.purge_all();
                held
            }
            (CachePurge::All, PurgeScope::Domains(_)) => self.store.purge_matching(admitted) as u64,
            (CachePurge::Tag(tag), _) => self.store.purge_tag(tag, admitted) as u64,
            (CachePurge::Url(_), _) => urls
                .iter()
                .filter(|key| admitted(key) && self.store.purge_key(key))
                .count() as u64,
        };
        metrics.purges.inc();
        metrics.purged_memory.inc_by(removed);
        self.account(metrics);
        Ok(removed)
    }
}

/// The keys of the responses stored for `url` (see [`CachePurge::Url`]), and of the parts
/// stored of them.
fn url_keys(url: &str, served: &Served) -> Result<Vec<CacheKey>, PurgeError> {
    let bad = || PurgeError::Url(url.to_owned());
    let uri: Uri = url.parse().map_err(|_| bad())?;
    let authority = uri.authority().ok_or_else(bad)?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(bad());
    }
    let host = authority.host();
    let authorities: Vec<String> = match authority.port_u16() {
        Some(_) => vec![authority.as_str().to_owned()],
        None => std::iter::once(host.to_owned())
            .chain(served.ports.iter().map(|port| format!("{host}:{port}")))
            .collect(),
    };
    let path_and_query = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut keys: Vec<CacheKey> = served
        .tables
        .iter()
        .filter_map(|table| table.find(host, uri.path(), &HeaderMap::new()))
        .filter_map(|route| route.cache.as_ref())
        .flat_map(|cache| {
            authorities.iter().flat_map(|authority| {
                ["http", "https"]
                    .map(|scheme| CacheKey::of_uri(scheme, authority, path_and_query, &cache.query))
            })
        })
        .flat_map(|key| [key.partial(), key])
        .collect();
    keys.sort();
    keys.dedup();
    Ok(keys)
}

/// A route's caching: the shared cache and the route's policy, compiled.
#[derive(Debug)]
pub struct RouteCache {
    cache: Arc<HttpCache>,
    default_ttl: Option<Duration>,
    query: QueryKey,
    key_headers: Vec<HeaderName>,
    bypass: Vec<String>,
}

impl RouteCache {
    /// The route's caching by `policy` (validated) in `cache`; `None` when it is disabled.
    pub fn new(policy: &CachePolicy, cache: &Arc<HttpCache>) -> Option<RouteCache> {
        if !policy.enabled {
            return None;
        }
        let key = &policy.key;
        let query = match (&key.query_include, key.query_exclude.is_empty()) {
            (Some(include), _) => QueryKey::Include(include.clone()),
            (None, false) => QueryKey::Exclude(key.query_exclude.clone()),
            (None, true) => QueryKey::All,
        };
        Some(RouteCache {
            cache: Arc::clone(cache),
            default_ttl: policy.default_ttl.map(|ttl| ttl.0),
            query,
            key_headers: key
                .headers
                .iter()
                .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
                .collect(),
            bypass: policy.bypass.clone(),
        })
    }

    fn bypassed(&self, path: &str) -> bool {
        self.bypass
            .iter()
            .any(|prefix| path.starts_with(prefix.as_str()))
    }
}

/// Where a request went, owned: its scheme, authority and path with query.
struct Place {
    scheme: &'static str,
    authority: String,
    path_and_query: String,
}

impl Place {
    fn of(request: &Request<ClientBody>, peer: &Peer) -> Place {
        Place {
            scheme: peer.scheme,
            authority: crate::framing::authority(request).to_owned(),
            path_and_query: request
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned(),
        }
    }

    fn target(&self) -> Target<'_> {
        Target {
            scheme: self.scheme,
            authority: &self.authority,
            path_and_query: &self.path_and_query,
        }
    }
}

/// Serves one request of a route that caches (see the module's documentation).
pub(crate) async fn exchange(
    cache: &RouteCache,
    client: ClientRequest<'_>,
    route: &Route,
    cluster: &Arc<Cluster>,
    ctx: &Arc<ListenerContext>,
) -> Result<Response<ConnectionBody>, Response<ProxyBody>> {
    let metrics = &ctx.shared.metrics;
    let method = client.request.method().clone();
    let place = Place::of(&client.request, client.peer);
    if method != Method::GET && method != Method::HEAD {
        let query = cache.query.clone();
        let mut result = forward(client, route, cluster, metrics).await;
        if let Ok(response) = &mut result {
            let status = response.status();
            for key in invalidated(&method, place.target(), status, response.headers(), &query) {
                cache.cache.remove_key(&key);
            }
            cache.cache.account(metrics.cache());
            let status = CacheStatus {
                forward: Some(Forward::Method),
                forward_status: Some(status.as_u16()),
                ..CacheStatus::default()
            };
            answer::finish(response.headers_mut(), &status);
        }
        return result;
    }
    let Some(key) = CacheKey::of(
        &method,
        place.scheme,
        &place.authority,
        &place.path_and_query,
        &cache.query,
    )
    .filter(|_| !cache.bypassed(client.request.uri().path())) else {
        return pass(client, route, cluster, ctx, Forward::Bypass).await;
    };
    let request_directives = CacheControl::from_headers(client.request.headers());
    let now = SystemTime::now();
    let found = (cache.cache)
        .lookup(&key, client.request.headers(), metrics.cache())
        .await;
    let (reason, stored) = match found {
        Lookup::Hit(object) => {
            let headers = object.headers();
            let policy = ResponsePolicy::of(&headers);
            let state = Freshness {
                directives: &policy.directives,
                lifetime: object.lifetime,
                age: object.timing.current_age(now),
            };
            let mut status = CacheStatus {
                hit: true,
                ttl: Some(answer::ttl(&state)),
                ..CacheStatus::default()
            };
            match state.reuse(&request_directives) {
                Reuse::Fresh | Reuse::Stale => {
                    metrics.cache().hit.inc();
                    let request = (client.request.method(), client.request.headers());
                    let answer = Answer {
                        object,
                        headers: Some(headers),
                        status,
                    };
                    return Err(answer.make(&cache.cache, &key, request, metrics).await);
                }
                Reuse::StaleWhileRevalidate => {
                    metrics.cache().stale.inc();
                    status.detail = Some("stale-while-revalidate".into());
                    revalidate_later(ctx, &client, key.clone(), Arc::clone(&object));
                    let request = (client.request.method(), client.request.headers());
                    let answer = Answer {
                        object,
                        headers: Some(headers),
                        status,
                    };
                    return Err(answer.make(&cache.cache, &key, request, metrics).await);
                }
                Reuse::Validate if state.is_fresh() => (Forward::Request, Some(object)),
                Reuse::Validate => (Forward::Stale, Some(object)),
            }
        }
        Lookup::VaryMiss => (Forward::VaryMiss, None),
        Lookup::UriMiss => (Forward::UriMiss, None),
    };
    // A HEAD or a range with nothing stored fills the cache with the whole representation
    // and is answered from it; a range of one too large to store goes upstream again as it
    // was asked for, and the part that comes back is stored ([`partial`]). A range with a
    // body (which a GET should not have) goes as it is.
    let range = stored.is_none() && client.request.headers().contains_key(RANGE);
    let bodiless = hyper::body::Body::is_end_stream(client.request.body());
    let parts = match range && bodiless && method == Method::GET {
        true => partial::lookup(cache, &key, client.request.headers(), metrics.cache()).await,
        false => None,
    };
    if let Some(parts) = parts {
        let request = client.request.headers();
        if let Some(answer) = partial::answer(&parts, request, &request_directives, now) {
            metrics.cache().hit.inc();
            return Err(answer);
        }
        metrics.cache().miss.inc();
        if request_directives.only_if_cached {
            return Err(local_response(StatusCode::GATEWAY_TIMEOUT, "not_cached"));
        }
        return partial::fetch(
            cache,
            &key,
            Forward::Partial,
            client,
            route,
            cluster,
            metrics,
        )
        .await;
    }
    if request_directives.only_if_cached {
        // RFC 9111 §5.2.1.7: nothing usable stored.
        metrics.cache().miss.inc();
        return Err(local_response(StatusCode::GATEWAY_TIMEOUT, "not_cached"));
    }
    if range && !bodiless {
        return pass(client, route, cluster, ctx, reason).await;
    }
    let again = range.then(|| Again::of(&client));
    let leader = match cache.cache.collapser.join(&key).await {
        Join::Lead(leader) => Some(leader),
        Join::Shared(object) if object.variant.matches(client.request.headers()) => {
            metrics.cache().collapsed.inc();
            let status = CacheStatus {
                forward: Some(reason),
                forward_status: Some(object.status.as_u16()),
                collapsed: true,
                ..CacheStatus::default()
            };
            let request = (client.request.method(), client.request.headers());
            let answer = Answer {
                object,
                headers: None,
                status,
            };
            return Err(answer.make(&cache.cache, &key, request, metrics).await);
        }
        Join::Shared(_) | Join::Alone(_) => None,
    };
    let (request_method, request_headers) = (method, client.request.headers().clone());
    let wanted = encoding::wanted(&request_method, &request_headers);
    let fill = Fill {
        cache,
        key: &key,
        request: &request_headers,
        directives: &request_directives,
        stored: stored.as_ref(),
        reason,
        wanted,
    };
    let validating = stored.is_some();
    let fetched = fill::fetch(fill, client, route, cluster, metrics).await;
    count(&cache.cache, metrics.cache(), &fetched, validating);
    match fetched {
        Fetched::Stored(object, status, fuller) => {
            if let (true, Some(leader)) = (status.stored, leader) {
                leader.share(Arc::clone(&object));
            }
            let request = (&request_method, &request_headers);
            let answer = Answer {
                object,
                headers: fuller,
                status,
            };
            Err(answer.make(&cache.cache, &key, request, metrics).await)
        }
        Fetched::Passed(response) => compress::passed(response, wanted, (cluster, metrics)),
        Fetched::TooLarge(response) => match again {
            Some(again) => {
                // Dropped unread: its connection closes.
                drop(response);
                let again = again.request();
                match request_method == Method::GET {
                    true => {
                        partial::fetch(cache, &key, reason, again, route, cluster, metrics).await
                    }
                    false => pass(again, route, cluster, ctx, reason).await,
                }
            }
            None => compress::passed(response, wanted, (cluster, metrics)),
        },
        Fetched::Made(response) => Err(response),
    }
}

/// Counts a trip upstream of a request (a stale answer on an error is `stale`), and what it
/// stored.
fn count(cache: &HttpCache, metrics: &CacheMetrics, fetched: &Fetched, validating: bool) {
    let status = match fetched {
        Fetched::Stored(_, status, _) => Some(status),
        _ => None,
    };
    if status.is_some_and(|s| s.detail.as_deref() == Some(STALE_IF_ERROR)) {
        metrics.stale.inc();
    } else if validating {
        metrics.validate.inc();
    } else {
        metrics.miss.inc();
    }
    if status.is_some_and(|s| s.stored) {
        metrics.stored.inc();
        cache.account(metrics);
    }
}

/// Forwards a request the cache does not handle, saying so in `Cache-Status`.
async fn pass(
    client: ClientRequest<'_>,
    route: &Route,
    cluster: &Arc<Cluster>,
    ctx: &Arc<ListenerContext>,
    reason: Forward,
) -> Result<Response<ConnectionBody>, Response<ProxyBody>> {
    let metrics = &ctx.shared.metrics;
    metrics.cache().bypass.inc();
    let wanted = encoding::wanted(client.request.method(), client.request.headers());
    let mut response = forward(client, route, cluster, metrics).await?;
    let status = CacheStatus {
        forward: Some(reason),
        forward_status: Some(response.status().as_u16()),
        ..CacheStatus::default()
    };
    answer::finish(response.headers_mut(), &status);
    upstream_response_head(response.headers_mut());
    compress::passed(response, wanted, (cluster, metrics))
}

/// A client's request without a body kept to be sent again as it came (see [`exchange`]).
struct Again<'p> {
    uri: Uri,
    headers: HeaderMap,
    version: http::Version,
    peer: &'p Peer,
    trusted: bool,
    body_timeout: Duration,
    body_timeouts: &'p prometheus_client::metrics::counter::Counter,
}

impl<'p> Again<'p> {
    fn of(client: &ClientRequest<'p>) -> Again<'p> {
        Again {
            uri: client.request.uri().clone(),
            headers: client.request.headers().clone(),
            version: client.version,
            peer: client.peer,
            trusted: client.trusted,
            body_timeout: client.body_timeout,
            body_timeouts: client.body_timeouts,
        }
    }

    /// The request again.
    fn request(self) -> ClientRequest<'p> {
        let mut request = Request::new(ClientBody::Empty);
        *request.uri_mut() = self.uri;
        *request.headers_mut() = self.headers;
        *request.version_mut() = self.version;
        ClientRequest {
            request,
            peer: self.peer,
            body_limit: None,
            trusted: self.trusted,
            version: self.version,
            switch: None,
            body_timeout: self.body_timeout,
            body_timeouts: self.body_timeouts,
        }
    }
}

/// An answer to make from a stored (or just fetched) object: its fields when they are not
/// the object's own (see `fill::Fetched::Stored`), and its `Cache-Status`.
struct Answer {
    object: Arc<Object>,
    headers: Option<HeaderMap>,
    status: CacheStatus,
}

impl Answer {
    /// The answer to a request with `method` and `request` fields, the content coded as it
    /// asks (the coding made now if it was not, and kept in `cache` under `key`).
    async fn make(
        self,
        cache: &HttpCache,
        key: &CacheKey,
        request: (&Method, &HeaderMap),
        metrics: &ProxyMetrics,
    ) -> Response<ProxyBody> {
        let object = compress::for_request(cache, key, self.object, request, metrics.cache()).await;
        let headers = self.headers.unwrap_or_else(|| object.headers());
        answer::from_object(&object, headers, request, SystemTime::now(), self.status)
    }
}

/// Validates a stale response served meanwhile (`stale-while-revalidate`) in a task of its
/// own: the request is made again as the proxy's own (no body, the client's fields), on
/// the route that then serves its host and path; at most one at a time per key.
fn revalidate_later(
    ctx: &Arc<ListenerContext>,
    client: &ClientRequest<'_>,
    key: CacheKey,
    object: Arc<Object>,
) {
    let ctx = Arc::clone(ctx);
    let peer = client.peer.clone();
    let trusted = client.trusted;
    let version = client.version;
    let (uri, headers) = (
        client.request.uri().clone(),
        client.request.headers().clone(),
    );
    tokio::spawn(async move {
        let mut request = Request::new(ClientBody::Empty);
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        *request.version_mut() = version;
        let table = ctx.table.load_full();
        let host = crate::forward::request_host(&request);
        let Some(route) = table.find(host, request.uri().path(), request.headers()) else {
            return;
        };
        let (Some(cache), Some(target)) = (&route.cache, route.target()) else {
            return;
        };
        let Join::Lead(leader) = cache.cache.collapser.join(&key).await else {
            return;
        };
        let request_headers = request.headers().clone();
        let directives = CacheControl::from_headers(&request_headers);
        let body_timeout = ctx.shared.limits.load().request_body_timeout.0;
        let client = ClientRequest {
            request,
            peer: &peer,
            body_limit: None,
            trusted,
            version,
            switch: None,
            body_timeout,
            body_timeouts: &ctx.body_timeouts,
        };
        let fill = Fill {
            cache,
            key: &key,
            request: &request_headers,
            directives: &directives,
            stored: Some(&object),
            reason: Forward::Stale,
            wanted: None,
        };
        let metrics = &ctx.shared.metrics;
        let fetched = fill::fetch(fill, client, route, &target.cluster, metrics).await;
        if let Fetched::Stored(object, status, _) = &fetched {
            if status.stored {
                metrics.cache().stored.inc();
                cache.cache.account(metrics.cache());
                leader.share(Arc::clone(object));
            }
        }
    });
}
