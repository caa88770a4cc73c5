//! Mesh listeners against callers with real certificates from a real CA, on loopback: the
//! caller's identity reaches the upstream (and cannot be forged), other orgs are refused unless
//! allowed, and plaintext never gets in; `tcp` listeners carry connections over a mesh hop
//! (one proxy's mesh cluster to another's mesh `tcp` listener) under the same rules.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use meridian_identity::{
    certified_key, client_config, mesh_server_name, request_for, trust_bundle, Authority,
    CertStore, SpiffeId,
};
use meridian_proxy::{Proxy, ERROR_HEADER, PEER_HEADER};
use tokio_rustls::TlsConnector;

const DAY: Duration = Duration::from_secs(86_400);

fn id(org: &str, app: &str, service: &str) -> SpiffeId {
    SpiffeId::workload("meridian.test", org, app, service)
}

struct Pki {
    root: Authority,
    fra: Authority,
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let root = Authority::create_root("meridian.test", DAY).unwrap();
        let fra = root.issue_intermediate("fra", DAY).unwrap();
        Pki {
            root,
            fra,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A certificate and key for `id`, as PEM texts.
    fn issue(&self, id: &SpiffeId) -> (String, String) {
        let (csr, key) = request_for(id).unwrap();
        (self.fra.issue(&csr, id, DAY).unwrap().chain_pem, key)
    }

    /// Files for the proxy: its chain, its key, the bundle.
    fn files(&self, id: &SpiffeId) -> [PathBuf; 3] {
        self.files_in(id, "")
    }

    /// [`Pki::files`] in the subdirectory `sub`, so that two proxies' files can be side by side.
    fn files_in(&self, id: &SpiffeId, sub: &str) -> [PathBuf; 3] {
        let (chain, key) = self.issue(id);
        let dir = self.dir.path().join(sub);
        std::fs::create_dir_all(&dir).unwrap();
        let paths = ["chain.pem", "key.pem", "bundle.pem"].map(|n| dir.join(n));
        std::fs::write(&paths[0], chain).unwrap();
        std::fs::write(&paths[1], key).unwrap();
        std::fs::write(&paths[2], self.root.certificate_pem()).unwrap();
        paths
    }
}

/// An upstream that answers with the `x-meridian-peer` it received.
async fn peer_echo() -> SocketAddr {
    let app = axum::Router::new().fallback(|headers: http::HeaderMap| async move {
        headers
            .get(PEER_HEADER)
            .map_or("none".to_owned(), |v| v.to_str().unwrap().to_owned())
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    address
}

async fn mesh_proxy(pki: &Pki, me: &SpiffeId, upstream: SocketAddr) -> (Arc<Proxy>, SocketAddr) {
    let (proxy, address, _) = mesh_proxy_with_text(pki, me, upstream).await;
    (proxy, address)
}

/// [`mesh_proxy`], and the config text it applied.
async fn mesh_proxy_with_text(
    pki: &Pki,
    me: &SpiffeId,
    upstream: SocketAddr,
) -> (Arc<Proxy>, SocketAddr, String) {
    let [chain, key, bundle] = pki.files(me);
    let text = format!(
        "listeners:
  - name: mesh
    address: 127.0.0.1:0
    mesh: {{cert_file: {}, key_file: {}, bundle_file: {}, org: acme, allow: [initech/*/*]}}
    virtual_hosts: [{{name: all, domains: ['*'], routes: [{{cluster: c}}]}}]
clusters:
  - name: c
    endpoints: [{{address: '{upstream}'}}]
",
        chain.display(),
        key.display(),
        bundle.display()
    );
    let proxy = Arc::new(Proxy::default());
    proxy.apply_text(&text).await.unwrap();
    let address = proxy.listeners().await[0].1;
    (proxy, address, text)
}

/// One GET over mutual TLS as `caller` (claiming another identity in the header); the status,
/// the body and the `x-meridian-error` header.
async fn call(
    pki: &Pki,
    caller: &SpiffeId,
    server: &SpiffeId,
    address: SocketAddr,
) -> (u16, String, Option<String>) {
    let (chain, key) = pki.issue(caller);
    let local = CertStore::new(certified_key(&chain, &key).unwrap());
    let bundle = trust_bundle(pki.root.certificate_pem()).unwrap();
    let mut config = client_config(local, bundle, server.clone()).unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let forged = "spiffe://meridian.test/org/acme/app/shop/service/admin";
    let (_, response) = mesh_get(&Arc::new(config), address, Some(forged)).await;
    let status = response.status().as_u16();
    let why = response
        .headers()
        .get(ERROR_HEADER)
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned(), why)
}

#[tokio::test]
async fn the_callers_identity_reaches_the_upstream_and_cannot_be_forged() {
    let pki = Pki::new();
    let api = id("acme", "shop", "api");
    let (_proxy, address) = mesh_proxy(&pki, &api, peer_echo().await).await;
    let web = id("acme", "shop", "web");
    let (status, body, _) = call(&pki, &web, &api, address).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        web.to_string(),
        "the header the caller sent was replaced"
    );
}

#[tokio::test]
async fn another_org_is_refused_unless_allowed_and_the_refusal_is_counted() {
    let pki = Pki::new();
    let api = id("acme", "shop", "api");
    let (proxy, address) = mesh_proxy(&pki, &api, peer_echo().await).await;
    let (status, _, why) = call(&pki, &id("globex", "shop", "web"), &api, address).await;
    assert_eq!((status, why.as_deref()), (403, Some("forbidden_peer")));
    let allowed = id("initech", "billing", "api");
    let (status, body, _) = call(&pki, &allowed, &api, address).await;
    assert_eq!((status, body), (200, allowed.to_string()));
    assert!(proxy
        .metrics_text()
        .contains(r#"meridian_proxy_mesh_denied_total{listener="mesh"} 1"#));
}

#[tokio::test]
async fn plaintext_never_reaches_a_mesh_listener() {
    let pki = Pki::new();
    let api = id("acme", "shop", "api");
    let (_proxy, address) = mesh_proxy(&pki, &api, peer_echo().await).await;
    let answer = reqwest::get(format!("http://{address}/")).await;
    assert!(answer.is_err(), "plaintext got an answer: {answer:?}");
}

#[tokio::test]
async fn a_mesh_section_with_bad_files_or_patterns_is_rejected_by_field() {
    let proxy = Proxy::default();
    let text = "listeners:
  - name: mesh
    address: 127.0.0.1:0
    mesh: {cert_file: /nonexistent/chain.pem, key_file: /nonexistent/key.pem, bundle_file: /nonexistent/b.pem, org: Acme, allow: [acme/web]}
    virtual_hosts: [{name: all, domains: ['*'], routes: [{cluster: c}]}]
clusters:
  - {name: c, endpoints: []}
";
    let error = proxy.apply_text(text).await.unwrap_err().to_string();
    assert!(error.contains("listeners[0].mesh.org"), "{error}");
    assert!(error.contains("listeners[0].mesh.allow[0]"), "{error}");
}

/// A proxy whose cluster `c` reaches `target` over mutual TLS as `me`, expecting `peer`; its
/// plain listener's address.
async fn outbound_proxy(
    pki: &Pki,
    me: &SpiffeId,
    peer: &SpiffeId,
    target: SocketAddr,
) -> (Arc<Proxy>, SocketAddr) {
    let (proxy, address, _, _) = outbound_proxy_with_files(pki, me, peer, target).await;
    (proxy, address)
}

/// [`outbound_proxy`], the config text it applied, and its identity files (chain, key, bundle).
async fn outbound_proxy_with_files(
    pki: &Pki,
    me: &SpiffeId,
    peer: &SpiffeId,
    target: SocketAddr,
) -> (Arc<Proxy>, SocketAddr, String, [PathBuf; 3]) {
    let dir = pki.dir.path().join(format!("outbound-{}", next_number()));
    std::fs::create_dir_all(&dir).unwrap();
    let (chain, key) = pki.issue(me);
    let paths = ["chain.pem", "key.pem", "bundle.pem"].map(|n| dir.join(n));
    std::fs::write(&paths[0], chain).unwrap();
    std::fs::write(&paths[1], key).unwrap();
    std::fs::write(&paths[2], pki.root.certificate_pem()).unwrap();
    let text = format!(
        "listeners:
  - name: out
    address: 127.0.0.1:0
    virtual_hosts: [{{name: all, domains: ['*'], routes: [{{cluster: c}}]}}]
clusters:
  - name: c
    mesh: {{cert_file: {}, key_file: {}, bundle_file: {}, peer: '{peer}'}}
    endpoints: [{{address: '{target}'}}]
",
        paths[0].display(),
        paths[1].display(),
        paths[2].display()
    );
    let proxy = Arc::new(Proxy::default());
    proxy.apply_text(&text).await.unwrap();
    let address = proxy.listeners().await[0].1;
    (proxy, address, text, paths)
}

fn next_number() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

#[tokio::test]
async fn a_proxy_to_proxy_hop_carries_the_callers_identity_over_one_pooled_connection() {
    let pki = Pki::new();
    let api = id("acme", "shop", "api");
    let (inbound, mesh_address) = mesh_proxy(&pki, &api, peer_echo().await).await;
    let web = id("acme", "shop", "web");
    let (_outbound, plain) = outbound_proxy(&pki, &web, &api, mesh_address).await;
    let client = reqwest::Client::new();
    for _ in 0..20 {
        let answer = client.get(format!("http://{plain}/")).send().await.unwrap();
        assert_eq!(answer.status(), 200);
        assert_eq!(answer.text().await.unwrap(), web.to_string());
    }
    // Twenty requests, one mutual-TLS connection between the proxies (HTTP/2, pooled).
    assert!(inbound
        .metrics_text()
        .contains(r#"meridian_proxy_active_connections{listener="mesh"} 1"#));
}

#[tokio::test]
async fn a_hop_to_an_endpoint_with_another_identity_fails() {
    let pki = Pki::new();
    let api = id("acme", "shop", "api");
    let (_inbound, mesh_address) = mesh_proxy(&pki, &api, peer_echo().await).await;
    let web = id("acme", "shop", "web");
    let expected = id("acme", "shop", "billing");
    let (_outbound, plain) = outbound_proxy(&pki, &web, &expected, mesh_address).await;
    let answer = reqwest::get(format!("http://{plain}/")).await.unwrap();
    assert!(answer.status().is_server_error(), "{}", answer.status());
}

/// An upstream that answers with the `x-forwarded-for` and `x-forwarded-host` it received.
async fn forwarded_echo() -> SocketAddr {
    let app = axum::Router::new().fallback(|headers: http::HeaderMap| async move {
        let header = |name: &str| {
            headers
                .get(name)
                .map_or("", |v| v.to_str().unwrap())
                .to_owned()
        };
        format!(
            "{} | {}",
            header("x-forwarded-for"),
            header("x-forwarded-host")
        )
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    address
}

#[tokio::test]
async fn a_mesh_hop_keeps_the_forwarding_headers_its_proxy_peer_set() {
    let pki = Pki::new();
    let api = id("acme", "shop", "api");
    // As a gateway or a node proxy's inbound listener: a mesh listener, default trust.
    let (_inbound, mesh_address) = mesh_proxy(&pki, &api, forwarded_echo().await).await;
    let web = id("acme", "shop", "web");
    // As an edge: a plain listener, whose clients are not believed.
    let (_outbound, plain) = outbound_proxy(&pki, &web, &api, mesh_address).await;
    let answer = reqwest::Client::new()
        .get(format!("http://{plain}/"))
        .header("host", "shop.example.com")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-host", "bank.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    // The outbound hop started the chain at its client; the mesh hop appended the outbound
    // proxy and kept its x-forwarded-host.
    assert_eq!(
        answer.text().await.unwrap(),
        "127.0.0.1, 127.0.0.1 | shop.example.com"
    );
}

/// Writes a new certificate and key for `me` over `files` (chain, key) and re-applies `text`,
/// as a renewal does; returns the new chain (PEM).
async fn rotate(pki: &Pki, proxy: &Proxy, me: &SpiffeId, files: &[PathBuf], text: &str) -> String {
    let (chain, key) = pki.issue(me);
    std::fs::write(&files[0], &chain).unwrap();
    std::fs::write(&files[1], key).unwrap();
    proxy.apply_text(text).await.unwrap();
    chain
}

/// The leaf certificate a new mutual-TLS handshake with `address` (expecting `server`) gets.
async fn served_certificate(pki: &Pki, server: &SpiffeId, address: SocketAddr) -> Vec<u8> {
    let (chain, key) = pki.issue(&id("acme", "shop", "probe"));
    let local = CertStore::new(certified_key(&chain, &key).unwrap());
    let bundle = trust_bundle(pki.root.certificate_pem()).unwrap();
    let config = client_config(local, bundle, server.clone()).unwrap();
    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let tls = TlsConnector::from(Arc::new(config))
        .connect(mesh_server_name(), tcp)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn leaf_der(chain_pem: &str) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_under_steady_load_without_a_failed_request() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let pki = Pki::new();
    let api = id("acme", "shop", "api");
    let web = id("acme", "shop", "web");
    let (inbound, mesh_address, inbound_text) =
        mesh_proxy_with_text(&pki, &api, peer_echo().await).await;
    let inbound_files = ["chain.pem", "key.pem"].map(|n| pki.dir.path().join(n));
    let (outbound, plain, outbound_text, outbound_files) =
        outbound_proxy_with_files(&pki, &web, &api, mesh_address).await;

    // Steady load: four clients; every answer must be 200 with the caller's identity.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let web = web.to_string();
        clients.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            while !stop.load(Ordering::Relaxed) {
                let good = match client.get(format!("http://{plain}/")).send().await {
                    Ok(answer) if answer.status() == 200 => {
                        answer.text().await.ok().as_deref() == Some(web.as_str())
                    }
                    _ => false,
                };
                let counter = if good { &ok } else { &failed };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let served_more = |more: u64| {
        let ok = ok.clone();
        let at_least = ok.load(Ordering::Relaxed) + more;
        async move {
            let end = tokio::time::Instant::now() + Duration::from_secs(20);
            while ok.load(Ordering::Relaxed) < at_least {
                assert!(tokio::time::Instant::now() < end, "the load stalled");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    served_more(100).await;
    for _ in 0..3 {
        let renewed = rotate(&pki, &inbound, &api, &inbound_files, &inbound_text).await;
        served_more(100).await;
        assert_eq!(
            served_certificate(&pki, &api, mesh_address).await,
            leaf_der(&renewed),
            "new handshakes get the renewed certificate"
        );
        rotate(&pki, &outbound, &web, &outbound_files, &outbound_text).await;
        served_more(100).await;
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no request failed");
    assert!(ok.load(Ordering::Relaxed) >= 700);
    assert_eq!(
        inbound.listeners().await[0].1,
        mesh_address,
        "same listener throughout"
    );
}

/// A GET over a new mutual-TLS connection made with `config` (with `x-meridian-peer: forged`
/// if given): how the handshake went, and the response.
async fn mesh_get(
    config: &Arc<rustls::ClientConfig>,
    address: SocketAddr,
    forged: Option<&str>,
) -> (rustls::HandshakeKind, http::Response<hyper::body::Incoming>) {
    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let tls = TlsConnector::from(config.clone())
        .connect(mesh_server_name(), tcp)
        .await
        .unwrap();
    let kind = tls.get_ref().1.handshake_kind().unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(connection);
    let mut request = http::Request::get("/").header("host", "api.shop.internal");
    if let Some(forged) = forged {
        request = request.header(PEER_HEADER, forged);
    }
    let request = request.body(Empty::<bytes::Bytes>::new()).unwrap();
    (kind, sender.send_request(request).await.unwrap())
}

/// One request over a new mutual-TLS connection made with `config`; how its handshake went.
async fn handshake_kind(
    config: &Arc<rustls::ClientConfig>,
    address: SocketAddr,
) -> rustls::HandshakeKind {
    let (kind, response) = mesh_get(config, address, None).await;
    assert_eq!(response.status(), 200);
    // The response brings the session tickets the next connection resumes with.
    response.into_body().collect().await.unwrap();
    kind
}

#[tokio::test]
async fn sessions_resume_across_config_changes_but_not_across_a_new_certificate() {
    use rustls::HandshakeKind::{Full, Resumed};
    let pki = Pki::new();
    let me = id("acme", "shop", "api");
    let upstream = peer_echo().await;
    let (proxy, address, text) = mesh_proxy_with_text(&pki, &me, upstream).await;
    let (chain, key) = pki.issue(&id("acme", "shop", "web"));
    let local = CertStore::new(certified_key(&chain, &key).unwrap());
    let bundle = trust_bundle(pki.root.certificate_pem()).unwrap();
    let mut config = client_config(local, bundle, me.clone()).unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let config = Arc::new(config);
    assert_eq!(handshake_kind(&config, address).await, Full);
    assert_eq!(handshake_kind(&config, address).await, Resumed);

    // Another policy, same files: the listener keeps its session cache.
    let changed = text.replace("allow: [initech/*/*]", "allow: [initech/*/*, globex/*/*]");
    assert_ne!(changed, text);
    proxy.apply_text(&changed).await.unwrap();
    assert_eq!(handshake_kind(&config, address).await, Resumed);

    // A renewed certificate: no session outlives the certificate it was made with.
    let files = ["chain.pem", "key.pem"].map(|n| pki.dir.path().join(n));
    rotate(&pki, &proxy, &me, &files, &changed).await;
    assert_eq!(handshake_kind(&config, address).await, Full);
}

/// A TCP mesh hop, as two node proxies make it: `outbound` relays its plain `tcp` listener over
/// mutual TLS, as `caller`, to a mesh cluster whose endpoint must be `callee`; `inbound`, as
/// `callee` of org acme (allowing initech), admits the caller and relays to `upstream`.
struct TcpHop {
    inbound: Arc<Proxy>,
    outbound: Arc<Proxy>,
    /// `inbound`'s mesh listener.
    mesh: SocketAddr,
    /// `outbound`'s plain listener.
    entry: SocketAddr,
}

impl TcpHop {
    async fn start(
        pki: &Pki,
        caller: &SpiffeId,
        callee: &SpiffeId,
        upstream: SocketAddr,
        limits: &str,
    ) -> TcpHop {
        let api = id("acme", "shop", "api");
        let [chain, key, bundle] = pki.files_in(&api, "in").map(|p| p.display().to_string());
        let inbound = Arc::new(Proxy::default());
        inbound
            .apply_text(&format!(
                "listeners:
  - name: in
    address: 127.0.0.1:0
    protocol: tcp
    cluster: local
    mesh: {{cert_file: {chain}, key_file: {key}, bundle_file: {bundle}, org: acme, allow: [initech/*/*]}}
clusters:
  - {{name: local, endpoints: [{{address: '{upstream}'}}]}}
"
            ))
            .await
            .unwrap();
        let mesh = inbound.listeners().await[0].1;
        let [chain, key, bundle] = pki.files_in(caller, "out").map(|p| p.display().to_string());
        let outbound = Arc::new(Proxy::default());
        outbound
            .apply_text(&format!(
                "listeners:
  - {{name: out, address: 127.0.0.1:0, protocol: tcp, cluster: api}}
clusters:
  - name: api
    mesh: {{cert_file: {chain}, key_file: {key}, bundle_file: {bundle}, peer: '{callee}'}}
    endpoints: [{{address: '{mesh}'}}]
{limits}"
            ))
            .await
            .unwrap();
        let entry = outbound.listeners().await[0].1;
        TcpHop {
            inbound,
            outbound,
            mesh,
            entry,
        }
    }
}

/// A TCP upstream that reads until its client half-closes, then answers how many bytes it read
/// and closes; counts the connections it accepted.
async fn byte_counter() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut read = Vec::new();
                stream.read_to_end(&mut read).await.unwrap();
                let answer = format!("read {}", read.len());
                stream.write_all(answer.as_bytes()).await.unwrap();
                stream.shutdown().await.unwrap();
            });
        }
    });
    (address, accepted)
}

/// A TCP echo upstream: each connection gets back what it sends, and is closed after it
/// half-closes.
async fn tcp_echo() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut reader, mut writer) = stream.split();
                tokio::io::copy(&mut reader, &mut writer).await.unwrap();
                tokio::io::AsyncWriteExt::shutdown(&mut writer)
                    .await
                    .unwrap();
            });
        }
    });
    address
}

/// Sends `sent` to `address`, half-closes, and reads until the other end closes (within 30 s);
/// a connection closed with a reset (the proxy closed it with bytes unread) ends it too.
async fn exchange(address: SocketAddr, sent: &[u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let sending = async {
        // A refused connection may be closed before all is sent.
        if writer.write_all(sent).await.is_ok() {
            let _ = writer.shutdown().await;
        }
    };
    let mut received = Vec::new();
    let receiving = reader.read_to_end(&mut received);
    let (_, read) = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::join!(sending, receiving)
    })
    .await
    .expect("the exchange finished in time");
    if let Err(e) = read {
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    }
    received
}

/// Waits until `proxy`'s metrics contain `line`.
async fn metric_shows(proxy: &Proxy, line: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !proxy.metrics_text().contains(line) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no `{line}` in {}",
            proxy.metrics_text()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_tcp_mesh_hop_carries_a_large_stream_and_a_half_close_intact() {
    let pki = Pki::new();
    let api = id("acme", "shop", "api");
    let hop = TcpHop::start(&pki, &id("acme", "shop", "web"), &api, tcp_echo().await, "").await;
    // 8 MiB that differ from byte to byte, so that a lost or repeated chunk shows.
    let sent: Vec<u8> = (0..8u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let echoed = exchange(hop.entry, &sent).await;
    assert_eq!(echoed.len(), sent.len());
    assert!(echoed == sent, "the echo differs");
    metric_shows(
        &hop.outbound,
        r#"meridian_proxy_tcp_relayed_bytes_total{listener="out",direction="upstream"} 8388608"#,
    )
    .await;
    metric_shows(
        &hop.inbound,
        r#"meridian_proxy_tcp_relayed_bytes_total{listener="in",direction="downstream"} 8388608"#,
    )
    .await;
    metric_shows(
        &hop.inbound,
        r#"meridian_proxy_tcp_connections_total{listener="in"} 1"#,
    )
    .await;

    // The caller's end of stream crosses both hops, and the answer the upstream gives only
    // after it comes back over the half-closed connection.
    let (counter, _) = byte_counter().await;
    let hop = TcpHop::start(&pki, &id("acme", "shop", "web"), &api, counter, "").await;
    assert_eq!(exchange(hop.entry, b"twelve bytes").await, b"read 12");
}

#[tokio::test]
async fn a_tcp_mesh_listener_closes_callers_of_another_org_before_relaying_a_byte() {
    let pki = Pki::new();
    let api = id("acme", "shop", "api");
    let (upstream, accepted) = byte_counter().await;
    let refused = TcpHop::start(&pki, &id("globex", "shop", "web"), &api, upstream, "").await;
    assert_eq!(exchange(refused.entry, b"let me in").await, b"");
    metric_shows(
        &refused.inbound,
        r#"meridian_proxy_mesh_denied_total{listener="in"} 1"#,
    )
    .await;
    // Plaintext straight to the mesh port is not relayed either (TLS answers it with an alert).
    let answer = exchange(refused.mesh, b"plain bytes").await;
    assert!(answer.is_empty() || answer[0] == 21, "{answer:?}");
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
    // An org that the policy allows gets through.
    let allowed = TcpHop::start(&pki, &id("initech", "billing", "api"), &api, upstream, "").await;
    assert_eq!(exchange(allowed.entry, b"hello").await, b"read 5");
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_tcp_mesh_hop_refuses_an_endpoint_that_is_not_the_service_named() {
    let pki = Pki::new();
    let db = id("acme", "shop", "db");
    let (upstream, accepted) = byte_counter().await;
    // The endpoint proves it is api; the caller wanted db.
    let hop = TcpHop::start(&pki, &id("acme", "shop", "web"), &db, upstream, "").await;
    assert_eq!(exchange(hop.entry, b"secret").await, b"");
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
    metric_shows(
        &hop.outbound,
        r#"meridian_proxy_upstream_errors_total{cluster="api",kind="connect"}"#,
    )
    .await;
}

#[tokio::test]
async fn an_idle_tcp_relay_is_closed_after_the_idle_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = Pki::new();
    let api = id("acme", "shop", "api");
    let limits = "limits: {tcp_idle_timeout: 300ms}\n";
    let hop = TcpHop::start(
        &pki,
        &id("acme", "shop", "web"),
        &api,
        tcp_echo().await,
        limits,
    )
    .await;
    let mut stream = tokio::net::TcpStream::connect(hop.entry).await.unwrap();
    // Bytes moving keep it open past the timeout.
    for _ in 0..4 {
        stream.write_all(b"ping").await.unwrap();
        let mut echoed = [0; 4];
        stream.read_exact(&mut echoed).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Then, left alone, it is closed.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest)).await;
    assert!(matches!(closed, Ok(Ok(0))), "{closed:?}");
}
