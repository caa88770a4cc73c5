//! Mutual TLS between real sockets on loopback with certificates from a real CA: who gets in,
//! who is refused and why, rotation, and the CA's key handling.

use std::sync::Arc;
use std::time::Duration;

use meridian_identity::{
    certified_key, client_config, mesh_server_name, peer_id, request_for, server_config,
    trust_bundle, Authority, CertStore, IssueError, SpiffeId,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

const DAY: Duration = Duration::from_secs(86_400);

fn id(org: &str, service: &str) -> SpiffeId {
    SpiffeId::workload("meridian.test", org, "shop", service)
}

/// A certificate for `id` from `ca`, its key made here.
fn certificate(ca: &Authority, id: &SpiffeId, lifetime: Duration) -> Arc<CertStore> {
    let (csr, key) = request_for(id).unwrap();
    let issued = ca.issue(&csr, id, lifetime).unwrap();
    CertStore::new(certified_key(&issued.chain_pem, &key).unwrap())
}

struct Installation {
    root: Authority,
    fra: Authority,
}

fn installation() -> Installation {
    let root = Authority::create_root("meridian.test", 365 * DAY).unwrap();
    let fra = root.issue_intermediate("fra", 30 * DAY).unwrap();
    Installation { root, fra }
}

/// A mesh server that answers each connection with the caller's SPIFFE ID, or nothing if the
/// handshake failed; returns its address and the store of its certificate.
async fn server(
    installation: &Installation,
    as_id: &SpiffeId,
) -> (std::net::SocketAddr, Arc<CertStore>) {
    let store = certificate(&installation.fra, as_id, DAY);
    let bundle = trust_bundle(installation.root.certificate_pem()).unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(server_config(store.clone(), bundle).unwrap()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(stream).await {
                    let peer = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| peer_id(&c[0]));
                    let answer = peer.map_or("no identity".to_owned(), |p| p.to_string());
                    let _ = tls.write_all(format!("{answer}\n").as_bytes()).await;
                    let mut rest = Vec::new();
                    let _ = tls.read_to_end(&mut rest).await;
                }
            });
        }
    });
    (address, store)
}

/// Connects with `config`; the server's answer, or the handshake's error.
async fn call(
    address: std::net::SocketAddr,
    config: rustls::ClientConfig,
) -> Result<String, String> {
    let stream = TcpStream::connect(address).await.unwrap();
    let connector = TlsConnector::from(Arc::new(config));
    let mut tls = connector
        .connect(mesh_server_name(), stream)
        .await
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    let mut byte = [0u8; 1];
    loop {
        match tls.read(&mut byte).await {
            Ok(0) => return Err(format!("closed after `{answer}`")),
            Ok(_) if byte[0] == b'\n' => return Ok(answer),
            Ok(_) => answer.push(byte[0] as char),
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// A TLS connection to `address` through `connector` (the handshake must succeed).
async fn handshake(
    connector: &TlsConnector,
    address: std::net::SocketAddr,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let stream = TcpStream::connect(address).await.unwrap();
    connector.connect(mesh_server_name(), stream).await.unwrap()
}

fn client(
    installation: &Installation,
    me: Arc<CertStore>,
    server: &SpiffeId,
) -> rustls::ClientConfig {
    let bundle = trust_bundle(installation.root.certificate_pem()).unwrap();
    client_config(me, bundle, server.clone()).unwrap()
}

#[tokio::test]
async fn a_workload_with_a_certificate_from_the_installation_gets_in_and_is_known_by_its_id() {
    let installation = installation();
    let api = id("acme", "api");
    let (address, _) = server(&installation, &api).await;
    let web = id("acme", "web");
    let config = client(
        &installation,
        certificate(&installation.fra, &web, DAY),
        &api,
    );
    assert_eq!(call(address, config).await.unwrap(), web.to_string());
}

#[tokio::test]
async fn mesh_connections_negotiate_tls13_with_aes_128_gcm() {
    let installation = installation();
    let api = id("acme", "api");
    let (address, _) = server(&installation, &api).await;
    let web = certificate(&installation.fra, &id("acme", "web"), DAY);
    let connector = TlsConnector::from(Arc::new(client(&installation, web, &api)));
    let tls = handshake(&connector, address).await;
    let suite = tls.get_ref().1.negotiated_cipher_suite().map(|s| s.suite());
    assert_eq!(suite, Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256));
}

#[tokio::test]
async fn callers_without_a_good_certificate_are_refused_at_the_handshake() {
    let installation = installation();
    let api = id("acme", "api");
    let (address, _) = server(&installation, &api).await;

    // No certificate at all.
    let bare = rustls::ClientConfig::builder_with_provider(meridian_identity::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer))
        .with_no_client_auth();
    let refused = call(address, bare).await.unwrap_err();
    assert!(refused.contains("CertificateRequired"), "{refused}");

    // A certificate from another installation's CA.
    let foreign = Authority::create_root("elsewhere.test", DAY).unwrap();
    let stranger = SpiffeId::workload("elsewhere.test", "acme", "shop", "web");
    let config = client(&installation, certificate(&foreign, &stranger, DAY), &api);
    let refused = call(address, config).await.unwrap_err();
    assert!(refused.contains("UnknownCA"), "{refused}");

    // An expired certificate: one that lives a second, tried until it has expired.
    let short = certificate(
        &installation.fra,
        &id("acme", "web"),
        Duration::from_secs(1),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let refused = loop {
        match call(address, client(&installation, short.clone(), &api)).await {
            Err(refused) => break refused,
            Ok(_) => assert!(tokio::time::Instant::now() < deadline, "never expired"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(refused.contains("CertificateExpired"), "{refused}");
}

#[tokio::test]
async fn a_client_refuses_a_server_that_is_not_the_expected_service() {
    let installation = installation();
    let (address, _) = server(&installation, &id("acme", "api")).await;
    let me = certificate(&installation.fra, &id("acme", "web"), DAY);
    let refused = call(address, client(&installation, me, &id("acme", "billing")))
        .await
        .unwrap_err();
    assert!(
        refused.contains("spiffe://meridian.test/org/acme/app/shop/service/api"),
        "{refused}"
    );
}

#[test]
fn a_request_for_another_identity_is_refused() {
    let installation = installation();
    let (csr, _key) = request_for(&id("globex", "api")).unwrap();
    let refused = installation
        .fra
        .issue(&csr, &id("acme", "web"), DAY)
        .unwrap_err();
    assert!(
        matches!(refused, IssueError::WrongIdentity { .. }),
        "{refused}"
    );
    assert!(refused.to_string().contains("globex"));
    let other_domain = SpiffeId::workload("elsewhere.test", "acme", "shop", "web");
    let (csr, _key) = request_for(&other_domain).unwrap();
    assert!(matches!(
        installation.fra.issue(&csr, &other_domain, DAY),
        Err(IssueError::ForeignTrustDomain { .. })
    ));
    assert!(matches!(
        installation
            .fra
            .issue("not a request", &id("acme", "web"), DAY),
        Err(IssueError::BadRequest(_))
    ));
}

#[tokio::test]
async fn a_rotated_certificate_serves_new_handshakes_and_open_connections_stay() {
    let installation = installation();
    let api = id("acme", "api");
    let (address, store) = server(&installation, &api).await;
    let me = certificate(&installation.fra, &id("acme", "web"), DAY);
    let connector = TlsConnector::from(Arc::new(client(&installation, me, &api)));
    let open = handshake(&connector, address).await;
    let before = open.get_ref().1.peer_certificates().unwrap()[0].clone();

    let (csr, key) = request_for(&api).unwrap();
    let renewed = installation.fra.issue(&csr, &api, DAY).unwrap();
    store.rotate(certified_key(&renewed.chain_pem, &key).unwrap());

    let fresh = handshake(&connector, address).await;
    let after = fresh.get_ref().1.peer_certificates().unwrap()[0].clone();
    assert_ne!(
        before, after,
        "the new handshake got the renewed certificate"
    );
    assert_eq!(peer_id(&after), Some(api));
    // The connection opened before the rotation still talks.
    let mut open = open;
    let mut line = vec![0u8; 64];
    let n = open.read(&mut line).await.unwrap();
    assert!(String::from_utf8_lossy(&line[..n]).starts_with("spiffe://"));
}

#[test]
fn the_ca_key_is_stored_for_its_owner_only_and_never_printed() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let root = Authority::create_root("meridian.test", DAY).unwrap();
    root.save(dir.path()).unwrap();
    let mode = std::fs::metadata(dir.path().join("ca.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let loaded = Authority::load(dir.path(), "meridian.test")
        .unwrap()
        .unwrap();
    assert_eq!(loaded.certificate_pem(), root.certificate_pem());
    assert!(!format!("{loaded:?}").contains("PRIVATE KEY"));
    // An intermediate issued by the reloaded root chains to the original bundle.
    let fra = loaded.issue_intermediate("fra", DAY).unwrap();
    let (csr, _) = request_for(&id("acme", "web")).unwrap();
    let issued = fra.issue(&csr, &id("acme", "web"), DAY).unwrap();
    assert_eq!(
        issued.chain_pem.matches("BEGIN CERTIFICATE").count(),
        2,
        "leaf and intermediate"
    );
    assert!(
        Authority::load(&dir.path().join("missing"), "meridian.test")
            .unwrap()
            .is_none()
    );
}

#[test]
fn spiffe_ids_parse_and_print_alike_and_bad_ones_say_why() {
    for text in [
        "spiffe://meridian.test/org/acme/app/shop/service/api",
        "spiffe://meridian.test/gateway/fra",
        "spiffe://meridian.test/edge/ams",
        "spiffe://meridian.test/agent/fra/node-1",
        "spiffe://meridian.test/control/global",
        "spiffe://meridian.test/control/fra",
    ] {
        assert_eq!(SpiffeId::parse(text).unwrap().to_string(), text);
    }
    for (text, why) in [
        ("http://meridian.test/gateway/fra", "spiffe://"),
        (
            "spiffe://meridian.test/org/acme/app/shop",
            "the path must be",
        ),
        ("spiffe://meridian.test/gateway/FRA", "not a DNS label"),
        ("spiffe:///gateway/fra", "trust domain"),
    ] {
        let error = SpiffeId::parse(text).unwrap_err().to_string();
        assert!(error.contains(why), "{text}: {error}");
    }
}

/// Accepts any server (the test of a client without a certificate is about the server).
#[derive(Debug)]
struct AnyServer;

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        meridian_identity::provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[tokio::test]
async fn a_region_gets_its_intermediate_by_request_and_its_certificates_chain_to_the_root() {
    let root = Authority::create_root("meridian.test", 365 * DAY).unwrap();
    let (csr, key) = meridian_identity::blank_request().unwrap();
    let chain = root.issue_intermediate_for(&csr, "fra", 30 * DAY).unwrap();
    let fra = Authority::from_issued("meridian.test", &chain, &key).unwrap();
    assert!(matches!(
        root.issue_intermediate_for("garbage", "fra", DAY),
        Err(IssueError::BadRequest(_))
    ));
    let installation = Installation { root, fra };
    let api = id("acme", "api");
    let (address, _) = server(&installation, &api).await;
    let web = id("acme", "web");
    let config = client(
        &installation,
        certificate(&installation.fra, &web, DAY),
        &api,
    );
    assert_eq!(call(address, config).await.unwrap(), web.to_string());
}
