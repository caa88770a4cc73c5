//! An edge serves HTTPS with the certificates its xDS secrets hold: its follower is fed the
//! resources a global control plane would send (region summaries, secrets, ACME challenges),
//! and clients make real TLS handshakes with its listeners on loopback, through a gateway (a
//! proxy with a mesh listener) to an upstream that echoes what it received.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::config::core::v3::DataSource;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    secret, Secret, TlsCertificate, TlsSessionTicketKeys,
};
use envoy_types::pb::google::protobuf::Any;
use meridian_edge::{EdgeOptions, Follower, Location};
use meridian_identity::{request_for, Authority, SpiffeId};
use meridian_proxy::Proxy;
use meridian_xds::meridian::{
    AcmeChallenge, RegionService, RegionSummary, ACME_CHALLENGE, REGION_SERVICE, REGION_SUMMARY,
    SECRET,
};
use meridian_xds::{
    AdsServer, AdsService, Cache, Changes, ClientOptions, Handler, Held, Resources, Update,
    XdsMetrics,
};
use prost::Message;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DAY: Duration = Duration::from_secs(24 * 3600);
const SHOP: &str = "shop.example.com";

/// The installation's CA (mesh identities) and a public CA (domains' certificates).
struct Pki {
    mesh: Authority,
    public: (rcgen::Certificate, rcgen::KeyPair),
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).unwrap();
        Pki {
            mesh: Authority::create_root("meridian.test", DAY).unwrap(),
            public: (ca, key),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Files (chain, key, bundle) of the mesh identity `id`.
    fn identity(&self, id: &str) -> [String; 3] {
        let id = SpiffeId::parse(id).unwrap();
        let (csr, key) = request_for(&id).unwrap();
        let chain = self.mesh.issue(&csr, &id, DAY).unwrap().chain_pem;
        let name = id.to_string().replace(['/', ':'], "_");
        let paths: [PathBuf; 3] =
            ["chain", "key", "bundle"].map(|n| self.dir.path().join(format!("{name}-{n}.pem")));
        std::fs::write(&paths[0], chain).unwrap();
        std::fs::write(&paths[1], key).unwrap();
        std::fs::write(&paths[2], self.mesh.certificate_pem()).unwrap();
        paths.map(|p| p.to_str().unwrap().to_owned())
    }

    /// A certificate of the public CA for `names`: (chain PEM, key PEM).
    fn certificate(&self, names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = rcgen::CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &self.public.0, &self.public.1)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.public.0.der().clone()).unwrap();
        roots
    }
}

/// An upstream that answers with the request's forwarding headers as JSON.
async fn echo() -> SocketAddr {
    let app = axum::Router::new().fallback(|headers: http::HeaderMap| async move {
        let header = |name: &str| {
            headers
                .get(name)
                .map_or("", |v| v.to_str().unwrap())
                .to_owned()
        };
        axum::Json(serde_json::json!({
            "x-forwarded-for": header("x-forwarded-for"),
            "x-forwarded-proto": header("x-forwarded-proto"),
            "forwarded": header("forwarded"),
        }))
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    address
}

/// A region's gateway: a mesh listener only edges may call, forwarding everything to `echo`.
async fn gateway(pki: &Pki, echo: SocketAddr) -> (Proxy, SocketAddr) {
    let [cert, key, bundle] = pki.identity("spiffe://meridian.test/gateway/fra");
    let config = serde_json::json!({
        "listeners": [{"name": "edges", "address": "127.0.0.1:0",
            "mesh": {"cert_file": cert, "key_file": key, "bundle_file": bundle},
            "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [{"cluster": "echo"}]}]}],
        "clusters": [{"name": "echo", "endpoints": [{"address": echo.to_string()}]}],
    });
    let proxy = Proxy::default();
    proxy.apply_text(&config.to_string()).await.unwrap();
    let address = proxy.listeners().await[0].1;
    (proxy, address)
}

/// An ADS server over `cache` (cleartext) that grants every client the role `edge`, as the
/// global control plane's certificate check does for an edge's certificate; its address and
/// the text of its metrics.
async fn ads_for_edges(cache: Arc<Cache>) -> (SocketAddr, impl Fn() -> String) {
    /// The ADS service, with every request granted the role `edge`.
    #[derive(Clone)]
    struct AsEdge(AdsService);

    impl tonic::server::NamedService for AsEdge {
        const NAME: &'static str = <AdsService as tonic::server::NamedService>::NAME;
    }

    impl<B> tower::Service<http::Request<B>> for AsEdge
    where
        AdsService: tower::Service<http::Request<B>>,
    {
        type Response = <AdsService as tower::Service<http::Request<B>>>::Response;
        type Error = <AdsService as tower::Service<http::Request<B>>>::Error;
        type Future = <AdsService as tower::Service<http::Request<B>>>::Future;

        fn poll_ready(
            &mut self,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Self::Error>> {
            self.0.poll_ready(cx)
        }

        fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
            request.extensions_mut().insert(meridian_xds::Grant {
                role: "edge".into(),
                org: None,
                node: None,
                region: None,
            });
            self.0.call(request)
        }
    }

    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = XdsMetrics::new(&mut registry);
    let server = AdsServer::new(cache, metrics, Default::default());
    let routes = tonic::service::Routes::new(AsEdge(server.clone().into_service()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(server.serve_routes(routes, incoming, std::future::pending()));
    let metrics = move || {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    };
    (address, metrics)
}

/// Waits up to 10 s for `condition`.
async fn eventually<F: std::future::Future<Output = bool>>(what: &str, condition: impl Fn() -> F) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !condition().await {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An edge at Paris with plain and HTTPS listeners, and the follower that configures it.
struct Edge {
    proxy: Arc<Proxy>,
    follower: Follower,
    held: Resources,
}

impl Edge {
    fn new(pki: &Pki) -> Edge {
        let [cert_file, key_file, bundle_file] = pki.identity("spiffe://meridian.test/edge/par");
        let tls = rustls::ClientConfig::builder_with_provider(meridian_identity::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let options = EdgeOptions {
            location: Location {
                name: "par".into(),
                lat: 48.86,
                lon: 2.35,
            },
            listen: "127.0.0.1:0".into(),
            listen_https: Some("127.0.0.1:0".into()),
            global_xds: "https://127.0.0.1:9".into(),
            tls: Arc::new(tls),
            identity: meridian_proxy::Identity {
                cert_file,
                key_file,
                bundle_file,
            },
            trust_domain: "meridian.test".into(),
            renewed: Arc::default(),
        };
        let proxy = Arc::new(Proxy::default());
        let (ready, _) = tokio::sync::oneshot::channel();
        let follower = Follower::new(options, proxy.clone(), ready).unwrap();
        Edge {
            proxy,
            follower,
            held: Resources::new(),
        }
    }

    /// Delivers a response for `type_url` that sets `resources` (name, body; `None` removes it),
    /// as the xDS client does: what the follower refuses is not held.
    async fn deliver(
        &mut self,
        type_url: &str,
        resources: Vec<(&str, Option<Vec<u8>>)>,
    ) -> Result<(), String> {
        let before = self.held.clone();
        let held = self.held.entry(type_url.to_owned()).or_default();
        let mut names = Vec::new();
        for (name, body) in resources {
            match body {
                Some(value) => {
                    let resource = Arc::new(Any {
                        type_url: type_url.to_owned(),
                        value,
                    });
                    let version = "1".to_owned();
                    held.insert(name.to_owned(), Held { version, resource });
                }
                None => {
                    held.remove(name);
                }
            }
            names.push(name.to_owned());
        }
        let changes = Changes {
            type_url,
            names: &names,
        };
        let accepted = self.follower.accept_changes(&self.held, &changes).await;
        if accepted.is_err() {
            self.held = before;
        }
        accepted.map(drop)
    }

    async fn listener(&self, name: &str) -> SocketAddr {
        let listeners = self.proxy.listeners().await;
        listeners.into_iter().find(|(n, _)| n == name).unwrap().1
    }

    /// Region `fra` (its gateway at `gateway`) runs the shop, whose `https` settings are given.
    async fn serve_shop(&mut self, gateway: SocketAddr, https: serde_json::Value) {
        let (summary, web) = shop_summary(gateway, https);
        self.deliver(REGION_SUMMARY, vec![("fra", Some(summary))])
            .await
            .unwrap();
        self.deliver(REGION_SERVICE, vec![("fra/acme/shop/web", Some(web))])
            .await
            .unwrap();
    }
}

/// The summary of region `fra` (its gateway at `gateway`) and its entry of the shop's `web`,
/// which runs with the `https` settings given.
fn shop_summary(gateway: SocketAddr, https: serde_json::Value) -> (Vec<u8>, Vec<u8>) {
    {
        let spec = serde_json::json!({
            "scale": {"min": 1, "max": 1},
            "runtime": {"process": {"command": "x"}},
            "ports": [{"name": "http", "port": 8080}],
            "routes": [{"path_prefix": "/", "port": "http"}],
            "domains": [SHOP, "*.example.com", "acme.example.com"],
            "health_checks": [],
            "mesh": {"allow": []},
            "https": https,
        });
        let summary = RegionSummary {
            lat: 50.11,
            lon: 8.68,
            reported: true,
            gateway: gateway.to_string(),
        };
        let web = RegionService {
            org: "acme".into(),
            app: "shop".into(),
            service: "web".into(),
            version: 1,
            spec_json: spec.to_string().into_bytes(),
            healthy: 1,
            ..Default::default()
        };
        (summary.encode_to_vec(), web.encode_to_vec())
    }
}

fn inline(pem: &str) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(Specifier::InlineBytes(pem.as_bytes().to_vec())),
        ..Default::default()
    })
}

/// The body of the `Secret` holding a certificate (chain, key).
fn certificate_secret((chain, key): &(String, String)) -> Vec<u8> {
    Secret {
        name: String::new(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: inline(chain),
            private_key: inline(key),
            ..Default::default()
        })),
    }
    .encode_to_vec()
}

fn ticket_keys_secret(keys: &[[u8; 80]]) -> Vec<u8> {
    let keys = keys
        .iter()
        .map(|k| DataSource {
            specifier: Some(Specifier::InlineBytes(k.to_vec())),
            ..Default::default()
        })
        .collect();
    Secret {
        name: String::new(),
        r#type: Some(secret::Type::SessionTicketKeys(TlsSessionTicketKeys {
            keys,
        })),
    }
    .encode_to_vec()
}

fn challenge(domain: &str, kind: &str, token: &str) -> Vec<u8> {
    AcmeChallenge {
        domain: domain.into(),
        kind: kind.into(),
        token: token.into(),
        key_authorization: format!("{token}.thumbprint"),
    }
    .encode_to_vec()
}

/// A TLS client trusting the public CA, offering `alpn`.
fn client_config(pki: &Pki, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut config = rustls::ClientConfig::builder_with_provider(meridian_identity::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(pki.roots())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A TLS connection to `address` for `sni` with `config`.
async fn connect(
    config: &Arc<rustls::ClientConfig>,
    address: SocketAddr,
    sni: &str,
) -> std::io::Result<Tls> {
    let tcp = tokio::net::TcpStream::connect(address).await?;
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    tokio_rustls::TlsConnector::from(config.clone())
        .connect(name, tcp)
        .await
}

fn leaf(tls: &Tls) -> Vec<u8> {
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn leaf_of(chain_pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

/// One HTTP/1.1 request on `tls` (kept open), and the status line of its answer.
async fn request_on(tls: &mut Tls, host: &str) -> String {
    let request = format!("GET / HTTP/1.1\r\nhost: {host}\r\n\r\n");
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0; 4096];
    // The echo's answers are small: the head and a JSON body of known length.
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") || !answer.ends_with(b"}") {
        let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buffer))
            .await
            .expect("no answer")
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buffer[..n]);
    }
    let text = String::from_utf8_lossy(&answer);
    text.lines().next().unwrap().to_owned()
}

/// An HTTPS client trusting the public CA, resolving the shop's names to `https`.
fn https_client(pki: &Pki, https: SocketAddr) -> reqwest::Client {
    let ca = reqwest::Certificate::from_der(pki.public.0.der()).unwrap();
    reqwest::Client::builder()
        .add_root_certificate(ca)
        .tls_built_in_root_certs(false)
        .resolve(SHOP, https)
        .resolve("img.example.com", https)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_serves_https_with_the_certificates_and_challenges_of_its_secrets() {
    let pki = Pki::new();
    let (_gateway, gateway_address) = gateway(&pki, echo().await).await;
    let mut edge = Edge::new(&pki);
    let hsts = serde_json::json!({"hsts": {"max_age": "1y", "include_subdomains": true}});
    edge.serve_shop(gateway_address, hsts).await;
    let plain = edge.listener("public").await;
    let https = edge.listener("https").await;
    let plain_client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let get_plain = |path: &str, host: &str| {
        plain_client
            .get(format!("http://{plain}{path}"))
            .header("host", host)
            .send()
    };

    // No certificate yet: plain HTTP is served, not redirected; HTTPS refuses the handshake.
    let answer = get_plain("/", SHOP).await.unwrap();
    assert_eq!(answer.status(), 200);
    let h2 = client_config(&pki, &[b"h2", b"http/1.1"]);
    assert!(connect(&h2, https, SHOP).await.is_err());

    // The shop's certificate and a wildcard arrive.
    let shop = pki.certificate(&[SHOP]);
    let wildcard = pki.certificate(&["*.example.com"]);
    edge.deliver(
        SECRET,
        vec![
            (
                "certificate/shop.example.com",
                Some(certificate_secret(&shop)),
            ),
            (
                "certificate/*.example.com",
                Some(certificate_secret(&wildcard)),
            ),
        ],
    )
    .await
    .unwrap();
    // SNI picks the exact certificate, else the wildcard one level up; others are refused.
    let exact = connect(&h2, https, SHOP).await.unwrap();
    assert_eq!(leaf(&exact), leaf_of(&shop.0));
    assert_eq!(exact.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let img = connect(&h2, https, "img.example.com").await.unwrap();
    assert_eq!(leaf(&img), leaf_of(&wildcard.0));
    for unknown in ["a.b.example.com", "shop.example.org"] {
        assert!(connect(&h2, https, unknown).await.is_err(), "{unknown}");
    }

    // Over HTTPS: HTTP/2, the service's HSTS header, the forwarding headers of an https hop.
    let client = https_client(&pki, https);
    let answer = client
        .get(format!("https://{SHOP}:{}/", https.port()))
        .header("x-forwarded-for", "6.6.6.6")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.version(), http::Version::HTTP_2);
    assert_eq!(
        answer.headers()["strict-transport-security"],
        "max-age=31557600; includeSubDomains"
    );
    let seen: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(seen["x-forwarded-proto"], "https");
    assert!(
        seen["x-forwarded-for"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1,"),
        "{seen}"
    );
    assert!(
        seen["forwarded"]
            .as_str()
            .unwrap()
            .starts_with("for=127.0.0.1;proto=https;host=\"shop.example.com:"),
        "{seen}"
    );
    // Plain HTTP to a domain with a certificate is redirected to the HTTPS port; HSTS is sent
    // on HTTPS only.
    let answer = get_plain("/cart?item=1", SHOP).await.unwrap();
    assert_eq!(answer.status(), 308);
    assert_eq!(
        answer.headers()["location"],
        format!("https://{SHOP}:{}/cart?item=1", https.port()).as_str()
    );
    assert!(!answer.headers().contains_key("strict-transport-security"));

    // A renewed certificate is shown to the next handshake; a connection made before the
    // renewal goes on serving.
    let http1 = client_config(&pki, &[b"http/1.1"]);
    let mut open = connect(&http1, https, SHOP).await.unwrap();
    assert_eq!(request_on(&mut open, SHOP).await, "HTTP/1.1 200 OK");
    let renewed = pki.certificate(&[SHOP]);
    let renewal = certificate_secret(&renewed);
    edge.deliver(
        SECRET,
        vec![("certificate/shop.example.com", Some(renewal))],
    )
    .await
    .unwrap();
    // A new client: one that resumed its session would not be shown a certificate.
    let fresh = client_config(&pki, &[b"http/1.1"]);
    let mut next = connect(&fresh, https, SHOP).await.unwrap();
    assert_eq!(leaf(&next), leaf_of(&renewed.0));
    assert_eq!(request_on(&mut next, SHOP).await, "HTTP/1.1 200 OK");
    assert_eq!(leaf(&open), leaf_of(&shop.0));
    assert_eq!(request_on(&mut open, SHOP).await, "HTTP/1.1 200 OK");

    // A bad secret is refused, naming it and why; what was held goes on serving.
    let other = pki.certificate(&[SHOP]);
    let mismatched = certificate_secret(&(renewed.0.clone(), other.1));
    let refused = edge
        .deliver(
            SECRET,
            vec![("certificate/shop.example.com", Some(mismatched))],
        )
        .await
        .unwrap_err();
    assert!(
        refused.starts_with("secret `certificate/shop.example.com`: private_key"),
        "{refused}"
    );
    let refused = edge
        .deliver(
            SECRET,
            vec![("certificate/bad name", Some(certificate_secret(&shop)))],
        )
        .await
        .unwrap_err();
    assert!(refused.contains("domain `bad name`"), "{refused}");
    assert!(connect(&h2, https, SHOP).await.is_ok());

    // HTTP-01: any host, before routing; an unknown token is 404.
    edge.deliver(
        ACME_CHALLENGE,
        vec![("challenge/tok1", Some(challenge(SHOP, "http-01", "tok1")))],
    )
    .await
    .unwrap();
    let answer = get_plain("/.well-known/acme-challenge/tok1", "unrouted.example.net")
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["content-type"], "text/plain");
    assert_eq!(answer.text().await.unwrap(), "tok1.thumbprint");
    let answer = get_plain("/.well-known/acme-challenge/tok2", SHOP)
        .await
        .unwrap();
    assert_eq!(answer.status(), 404);

    // TLS-ALPN-01: a handshake offering only acme-tls/1 gets the challenge certificate, then
    // the connection closes without HTTP.
    let acme = acme_client();
    assert!(connect(&acme, https, "acme.example.com").await.is_err());
    edge.deliver(
        ACME_CHALLENGE,
        vec![(
            "challenge/tok3",
            Some(challenge("acme.example.com", "tls-alpn-01", "tok3")),
        )],
    )
    .await
    .unwrap();
    let mut validation = connect(&acme, https, "acme.example.com").await.unwrap();
    assert_eq!(
        validation.get_ref().1.alpn_protocol(),
        Some(meridian_proxy::ACME_TLS_ALPN)
    );
    let digest = ring_sha256(b"tok3.thumbprint");
    assert_eq!(acme_identifier(&leaf(&validation)), Some((true, digest)));
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), validation.read_to_end(&mut rest))
        .await
        .expect("the validation connection stayed open");
    assert!(read.is_err() || rest.is_empty(), "{rest:?}");
    // Removed: the challenge is no longer answered.
    edge.deliver(ACME_CHALLENGE, vec![("challenge/tok1", None)])
        .await
        .unwrap();
    let answer = get_plain("/.well-known/acme-challenge/tok1", SHOP)
        .await
        .unwrap();
    assert_eq!(answer.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_may_keep_plain_http_beside_https() {
    let pki = Pki::new();
    let (_gateway, gateway_address) = gateway(&pki, echo().await).await;
    let mut edge = Edge::new(&pki);
    edge.serve_shop(gateway_address, serde_json::json!({"redirect": false}))
        .await;
    let shop = pki.certificate(&[SHOP]);
    edge.deliver(
        SECRET,
        vec![(
            "certificate/shop.example.com",
            Some(certificate_secret(&shop)),
        )],
    )
    .await
    .unwrap();
    let plain = edge.listener("public").await;
    let answer = reqwest::Client::new()
        .get(format!("http://{plain}/"))
        .header("host", SHOP)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let https = edge.listener("https").await;
    let answer = https_client(&pki, https)
        .get(format!("https://{SHOP}:{}/", https.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert!(!answer.headers().contains_key("strict-transport-security"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_from_one_edge_resumes_on_another_once_they_share_ticket_keys() {
    let pki = Pki::new();
    let (_gateway, gateway_address) = gateway(&pki, echo().await).await;
    let shop = certificate_secret(&pki.certificate(&[SHOP]));
    let mut edges = Vec::new();
    for _ in 0..2 {
        let mut edge = Edge::new(&pki);
        edge.serve_shop(gateway_address, serde_json::json!({}))
            .await;
        let certificate = ("certificate/shop.example.com", Some(shop.clone()));
        edge.deliver(SECRET, vec![certificate]).await.unwrap();
        edges.push(edge);
    }
    let a = edges[0].listener("https").await;
    let b = edges[1].listener("https").await;
    // A TLS 1.3 session from A, on B: which handshake B makes. The client config's session
    // store is shared by its connections.
    let resumed_on_b = || async {
        let mut config = (*client_config(&pki, &[b"http/1.1"])).clone();
        config.resumption = rustls::client::Resumption::in_memory_sessions(16);
        let config = Arc::new(config);
        let mut first = connect(&config, a, SHOP).await.unwrap();
        assert_eq!(
            first.get_ref().1.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        // The tickets come after the handshake: read an answer to take them in.
        assert_eq!(request_on(&mut first, SHOP).await, "HTTP/1.1 200 OK");
        let again = connect(&config, a, SHOP).await.unwrap();
        assert_eq!(
            again.get_ref().1.handshake_kind(),
            Some(rustls::HandshakeKind::Resumed),
            "a session does not even resume on its own edge"
        );
        let other = connect(&config, b, SHOP).await.unwrap();
        other.get_ref().1.handshake_kind()
    };
    // Each edge's own keys: B cannot open A's tickets.
    assert_eq!(resumed_on_b().await, Some(rustls::HandshakeKind::Full));
    let keys = ticket_keys_secret(&[[7; 80]]);
    for edge in &mut edges {
        let secret = ("session-ticket-keys", Some(keys.clone()));
        edge.deliver(SECRET, vec![secret]).await.unwrap();
    }
    assert_eq!(resumed_on_b().await, Some(rustls::HandshakeKind::Resumed));
    // A bad key list is refused naming the key; the shared keys stay.
    let mut short = TlsSessionTicketKeys::default();
    short.keys.push(DataSource {
        specifier: Some(Specifier::InlineBytes(vec![1; 48])),
        ..Default::default()
    });
    let short = Secret {
        name: String::new(),
        r#type: Some(secret::Type::SessionTicketKeys(short)),
    }
    .encode_to_vec();
    let refused = edges[1]
        .deliver(SECRET, vec![("session-ticket-keys", Some(short))])
        .await
        .unwrap_err();
    assert_eq!(
        refused,
        "secret `session-ticket-keys`: keys[0]: 48 bytes, not 80"
    );
    assert_eq!(resumed_on_b().await, Some(rustls::HandshakeKind::Resumed));
}

fn ring_sha256(data: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .to_vec()
}

/// The acmeIdentifier extension (1.3.6.1.5.5.7.1.31) of `der`: whether it is critical, and the
/// digest it holds.
fn acme_identifier(der: &[u8]) -> Option<(bool, Vec<u8>)> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let extension = cert
        .extensions()
        .iter()
        .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")?;
    let value = extension.value.strip_prefix(&[0x04, 0x20])?;
    Some((extension.critical, value.to_vec()))
}

/// A TLS client as an ACME server validating TLS-ALPN-01: ALPN `acme-tls/1` only, and any
/// certificate accepted (it checks the extension itself).
fn acme_client() -> Arc<rustls::ClientConfig> {
    let mut config = rustls::ClientConfig::builder_with_provider(meridian_identity::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate))
        .with_no_client_auth();
    config.alpn_protocols = vec![meridian_proxy::ACME_TLS_ALPN.to_vec()];
    Arc::new(config)
}

#[derive(Debug)]
struct AnyCertificate;

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        meridian_identity::provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_following_xds_serves_the_certificates_published_for_edges() {
    let pki = Pki::new();
    let (_gateway, gateway_address) = gateway(&pki, echo().await).await;
    let cache = Cache::new();
    let any = |type_url: &str, value: Vec<u8>| Any {
        type_url: type_url.to_owned(),
        value,
    };
    let (summary, web) = shop_summary(gateway_address, serde_json::json!({}));
    let put = |type_url: &str, name: &str, value: Vec<u8>| {
        let update = Update {
            put: vec![(name.to_owned(), any(type_url, value))],
            remove: Vec::new(),
        };
        cache.apply(type_url, update);
    };
    put(REGION_SUMMARY, "regions/fra", summary);
    put(REGION_SERVICE, "regions/fra/acme/shop/web", web);
    let shop = pki.certificate(&[SHOP]);
    put(
        SECRET,
        "edge/certificate/shop.example.com",
        certificate_secret(&shop),
    );
    put(
        ACME_CHALLENGE,
        "edge/challenge/tok",
        challenge(SHOP, "http-01", "tok"),
    );
    let (ads, metrics) = ads_for_edges(cache.clone()).await;
    let Edge {
        proxy, follower, ..
    } = Edge::new(&pki);
    let client = ClientOptions {
        url: format!("http://{ads}"),
        tls: None,
        node: Default::default(),
        backoff: (Duration::from_millis(50), Duration::from_millis(200)),
    };
    let following = tokio::spawn(meridian_xds::run_delta_client(client, follower));
    let bound = |name: &'static str| {
        let proxy = proxy.clone();
        async move {
            let listeners = proxy.listeners().await;
            listeners
                .into_iter()
                .find(|(n, _)| n == name)
                .map(|(_, a)| a)
        }
    };
    eventually("the edge is configured", || async {
        bound("https").await.is_some()
    })
    .await;
    let (https, plain) = (
        bound("https").await.unwrap(),
        bound("public").await.unwrap(),
    );
    // The certificate published under edge/ reaches the edge under its own name; so does the
    // challenge.
    let h2 = client_config(&pki, &[b"h2"]);
    eventually("the shop's certificate is served", || async {
        connect(&h2, https, SHOP).await.is_ok()
    })
    .await;
    let challenge_url = format!("http://{plain}/.well-known/acme-challenge/tok");
    let answer = reqwest::get(&challenge_url).await.unwrap();
    assert_eq!(answer.text().await.unwrap(), "tok.thumbprint");
    // A bad certificate is NACKed; the good one goes on serving.
    let other = pki.certificate(&[SHOP]);
    let mismatched = certificate_secret(&(shop.0.clone(), other.1));
    put(SECRET, "edge/certificate/img.example.com", mismatched);
    let nacked = r#"meridian_xds_nacks_total{api="delta",type_url="secret"} 1"#;
    eventually("the bad secret is NACKed", || async {
        metrics().contains(nacked)
    })
    .await;
    assert!(connect(&h2, https, SHOP).await.is_ok());
    // A renewal reaches the next handshake.
    let renewed = pki.certificate(&[SHOP]);
    put(
        SECRET,
        "edge/certificate/shop.example.com",
        certificate_secret(&renewed),
    );
    eventually("the renewed certificate is served", || async {
        let fresh = client_config(&pki, &[b"h2"]);
        let tls = connect(&fresh, https, SHOP).await;
        tls.is_ok_and(|tls| leaf(&tls) == leaf_of(&renewed.0))
    })
    .await;
    following.abort();
}
