//! The test as an edge of the global control plane: an edge certificate issued from the
//! installation's root CA in the control plane's data directory, and a delta-xDS client with
//! it that keeps every `Secret` and `AcmeChallenge` the edges get; and checks of a certificate
//! Secret against a trusted root.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::{data_source::Specifier, DataSource, Node};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{secret, Secret};
use meridian_identity::{Authority, CertStore, SpiffeId, Subject};
use meridian_xds::meridian::{AcmeChallenge, ACME_CHALLENGE, SECRET};
use meridian_xds::{run_delta_client, ClientOptions, Handler, Interest, Interests, Resources};
use prost::Message;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

/// What the test edge holds: secrets and challenges, by the names edges see.
#[derive(Default, Debug)]
pub struct Held {
    /// `certificate/<domain>` and `session-ticket-keys`.
    pub secrets: BTreeMap<String, Secret>,
    /// `challenge/<token>`.
    pub challenges: BTreeMap<String, AcmeChallenge>,
}

/// A running test edge; stops when dropped.
pub struct EdgeFeed {
    pub held: Arc<Mutex<Held>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EdgeFeed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Keeper(Arc<Mutex<Held>>);

fn interests() -> Interests {
    Interests::from([
        (SECRET.to_owned(), Interest::Wildcard),
        (ACME_CHALLENGE.to_owned(), Interest::Wildcard),
    ])
}

impl Handler for Keeper {
    fn initial_interests(&self) -> Interests {
        interests()
    }

    async fn accept(
        &mut self,
        resources: &Resources,
        _type_url: &str,
    ) -> Result<Interests, String> {
        let mut held = Held::default();
        for (name, resource) in resources.get(SECRET).into_iter().flatten() {
            let secret =
                Secret::decode(resource.resource.value.as_slice()).map_err(|e| e.to_string())?;
            held.secrets.insert(name.clone(), secret);
        }
        for (name, resource) in resources.get(ACME_CHALLENGE).into_iter().flatten() {
            let challenge = AcmeChallenge::decode(resource.resource.value.as_slice())
                .map_err(|e| e.to_string())?;
            held.challenges.insert(name.clone(), challenge);
        }
        *self.0.lock().unwrap() = held;
        Ok(interests())
    }
}

/// Follows the global control plane at `xds` (`https://…`) as edge `test`, with a certificate
/// from the root CA in `data_dir/ca` (trust domain `meridian.local`).
pub fn follow_as_edge(data_dir: &Path, xds: &str) -> EdgeFeed {
    let subject = Subject::Edge {
        location: "test".into(),
    };
    let options = ClientOptions {
        url: xds.to_owned(),
        tls: Some(client_tls(data_dir, subject)),
        node: Node {
            id: "edge-test".into(),
            ..Node::default()
        },
        backoff: (Duration::from_millis(100), Duration::from_secs(1)),
    };
    let held = Arc::new(Mutex::new(Held::default()));
    let task = tokio::spawn(run_delta_client(options, Keeper(held.clone())));
    EdgeFeed { held, task }
}

/// TLS for a client of the global control plane whose data is in `data_dir`, presenting a
/// certificate for `subject` issued by its root CA (trust domain `meridian.local`).
pub fn client_tls(data_dir: &Path, subject: Subject) -> Arc<rustls::ClientConfig> {
    let ca = Authority::load(&data_dir.join("ca"), "meridian.local")
        .unwrap()
        .expect("the control plane made its root CA");
    let id = SpiffeId {
        trust_domain: "meridian.local".into(),
        subject,
    };
    let (csr, key) = meridian_identity::request_for(&id).unwrap();
    let issued = ca.issue(&csr, &id, Duration::from_secs(3600)).unwrap();
    let own = CertStore::new(meridian_identity::certified_key(&issued.chain_pem, &key).unwrap());
    let bundle = meridian_identity::trust_bundle(ca.certificate_pem()).unwrap();
    Arc::new(meridian_identity::control_client_config(Some(own), bundle).unwrap())
}

impl EdgeFeed {
    /// Waits up to `deadline` until `check` accepts what the edge holds; returns its answer.
    pub async fn wait_for<T>(
        &self,
        deadline: Duration,
        what: &str,
        mut check: impl FnMut(&Held) -> Option<T>,
    ) -> T {
        let end = Instant::now() + deadline;
        loop {
            if let Some(found) = check(&self.held.lock().unwrap()) {
                return found;
            }
            assert!(Instant::now() < end, "waited in vain for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The chain and key of `domain`'s certificate, once the edge has it.
    pub async fn certificate(&self, domain: &str, deadline: Duration) -> (String, String) {
        let name = format!("certificate/{domain}");
        self.wait_for(deadline, &name, |held| {
            tls_certificate(held.secrets.get(&name)?)
        })
        .await
    }
}

fn inline(source: Option<&DataSource>) -> Option<String> {
    match source?.specifier.as_ref()? {
        Specifier::InlineBytes(bytes) => String::from_utf8(bytes.clone()).ok(),
        _ => None,
    }
}

/// The chain and key of a certificate Secret.
pub fn tls_certificate(secret: &Secret) -> Option<(String, String)> {
    match secret.r#type.as_ref()? {
        secret::Type::TlsCertificate(tls) => Some((
            inline(tls.certificate_chain.as_ref())?,
            inline(tls.private_key.as_ref())?,
        )),
        _ => None,
    }
}

/// Checks that `chain` verifies for `name` against the roots in `roots_pem` and that `key` is
/// its leaf's key.
pub fn assert_serves(chain: &str, key: &str, name: &str, roots_pem: &str) {
    let roots = meridian_identity::trust_bundle(roots_pem).unwrap();
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        roots.into(),
        meridian_identity::provider(),
    )
    .build()
    .unwrap();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    verifier
        .verify_server_cert(
            &certs[0],
            &certs[1..],
            &ServerName::try_from(name.to_owned()).unwrap(),
            &[],
            UnixTime::now(),
        )
        .unwrap_or_else(|e| panic!("the certificate for {name} does not verify: {e}"));
    let certified = meridian_identity::certified_key(chain, key).unwrap();
    certified
        .keys_match()
        .expect("the key is the certificate's");
}

/// Answers HTTP-01 on `listener` as an edge does: `GET /.well-known/acme-challenge/<token>`
/// with the key authorization of the `http-01` challenge the edge holds, 404 otherwise.
pub fn answer_http01(
    listener: tokio::net::TcpListener,
    held: Arc<Mutex<Held>>,
) -> tokio::task::JoinHandle<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let held = held.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let request = String::from_utf8_lossy(&request);
                let path = request.split_whitespace().nth(1).unwrap_or_default();
                let token = path
                    .strip_prefix("/.well-known/acme-challenge/")
                    .unwrap_or_default();
                let body = held
                    .lock()
                    .unwrap()
                    .challenges
                    .get(&format!("challenge/{token}"))
                    .filter(|c| c.kind == "http-01")
                    .map(|c| c.key_authorization.clone());
                let answer = match body {
                    Some(body) => format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    ),
                    None => {
                        "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                            .to_owned()
                    }
                };
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    })
}

/// Picks, for a TLS-ALPN-01 handshake (ALPN `acme-tls/1`), a certificate for the SNI name
/// carrying the `acmeIdentifier` extension of the `tls-alpn-01` challenge the edge holds for it
/// (RFC 8737).
#[derive(Debug)]
struct AlpnChallenges(Arc<Mutex<Held>>);

impl rustls::server::ResolvesServerCert for AlpnChallenges {
    fn resolve(
        &self,
        hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        use sha2::Digest;
        let domain = hello.server_name()?.to_owned();
        let key_authorization = self
            .0
            .lock()
            .unwrap()
            .challenges
            .values()
            .find(|c| c.kind == "tls-alpn-01" && c.domain == domain)?
            .key_authorization
            .clone();
        let digest = sha2::Sha256::digest(key_authorization.as_bytes());
        let key = rcgen::KeyPair::generate().ok()?;
        let mut params = rcgen::CertificateParams::new(vec![domain]).ok()?;
        params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(&digest)];
        let cert = params.self_signed(&key).ok()?;
        meridian_identity::certified_key(&cert.pem(), &key.serialize_pem()).ok()
    }
}

/// Answers TLS-ALPN-01 on `listener` as an edge does, from the challenges the edge holds.
pub fn answer_tls_alpn01(
    listener: tokio::net::TcpListener,
    held: Arc<Mutex<Held>>,
) -> tokio::task::JoinHandle<()> {
    let mut config = rustls::ServerConfig::builder_with_provider(meridian_identity::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(AlpnChallenges(held)));
    config.alpn_protocols = vec![b"acme-tls/1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            // The validation ends with the handshake.
            tokio::spawn(async move { drop(acceptor.accept(stream).await) });
        }
    })
}
