//! TLS on listeners: certificates from PEM files or from a source the embedding component
//! registers ([`TlsSource`]), ALPN offering HTTP/2 and HTTP/1.1.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::server::{ProducesTickets, ResolvesServerCert};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::{MeshConfig, TlsConfig, UpstreamMeshConfig};

/// Listener acceptors by what identifies their files' contents. A listener whose files have not
/// changed keeps its acceptor across config applies, and with it the session cache its clients
/// resume from: an xDS update does not cost every client a full handshake. New contents (a
/// renewed certificate, another trust bundle) make a new acceptor, so no session outlives the
/// certificates and bundle it was verified with.
pub type Acceptors = HashMap<String, Arc<TlsAcceptor>>;

/// The ALPN protocol of ACME's TLS-ALPN-01 validation (RFC 8737). Listeners with a certificate
/// source offer it last; a handshake that negotiates it is closed once complete, without HTTP:
/// the source's resolver alone decides what such a handshake is shown.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Certificates a listener's `tls: {source: NAME}` takes from the component that embeds the
/// proxy instead of from files: it picks each handshake's certificate (by SNI, say) and may
/// encrypt session tickets with keys of its own. Register it with
/// [`crate::Proxy::add_tls_source`]; a certificate it changes is used from the next handshake,
/// without a config apply.
#[derive(Clone)]
pub struct TlsSource {
    /// Picks the certificate of each handshake; `None` refuses the handshake with an alert.
    pub certificates: Arc<dyn ResolvesServerCert>,
    /// Encrypts and decrypts session tickets; `None`: rustls' default (sessions resume on this
    /// process only, from its in-memory cache).
    pub tickets: Option<Arc<dyn ProducesTickets>>,
}

impl std::fmt::Debug for TlsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSource").finish_non_exhaustive()
    }
}

/// ALPN of TCP listeners that terminate TLS: HTTP/2, then HTTP/1.1.
const HTTP_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

impl TlsSource {
    /// A source that always shows `key`: a listener's certificate files.
    pub fn single(key: Arc<CertifiedKey>) -> TlsSource {
        TlsSource {
            certificates: Arc::new(SingleCertAndKey::from(key)),
            tickets: None,
        }
    }

    /// The rustls server configuration of every listener built on this source: no client
    /// authentication, `versions` (TCP listeners: TLS 1.2 and 1.3; QUIC: TLS 1.3 only) and
    /// `alpn` in order of preference. The one place such configurations are made, so that a
    /// TCP and a QUIC listener on one source show the same certificates and share tickets.
    pub fn server_config(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
        alpn: &[&[u8]],
    ) -> Result<ServerConfig, rustls::Error> {
        let mut config = ServerConfig::builder_with_provider(meridian_identity::provider())
            .with_protocol_versions(versions)?
            .with_no_client_auth()
            .with_cert_resolver(self.certificates.clone());
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        if let Some(tickets) = &self.tickets {
            config.ticketer = tickets.clone();
        }
        Ok(config)
    }

    /// The acceptor of a TCP listener on this source: TLS 1.2 and 1.3, ALPN `h2`, `http/1.1`,
    /// and with `acme` also [`ACME_TLS_ALPN`].
    pub fn acceptor(&self, acme: bool) -> Result<Arc<TlsAcceptor>, rustls::Error> {
        let acme_alpn = [ACME_TLS_ALPN];
        let alpn: Vec<&[u8]> = HTTP_ALPN
            .iter()
            .chain(acme_alpn.iter().filter(|_| acme))
            .copied()
            .collect();
        let config = self.server_config(rustls::DEFAULT_VERSIONS, &alpn)?;
        Ok(Arc::new(TlsAcceptor::from(Arc::new(config))))
    }
}

/// The certificate sources registered on a proxy, by name, with the acceptor of each.
pub type Sources = HashMap<String, (TlsSource, Arc<TlsAcceptor>)>;

/// The acceptor for a listener's `tls` section: that of its registered `source`; or, for files,
/// the one in `built` for the same certificate file contents, or a new one. The error names the
/// field and the reason.
pub fn acceptor(
    tls: &TlsConfig,
    built: &Acceptors,
    sources: &Sources,
) -> Result<(String, Arc<TlsAcceptor>), (&'static str, String)> {
    let (cert_file, key_file) = match (&tls.source, &tls.cert_file, &tls.key_file) {
        (Some(name), _, _) => {
            let (_, acceptor) = sources.get(name).ok_or_else(|| {
                (
                    "source",
                    format!("no certificate source `{name}` is registered"),
                )
            })?;
            return Ok((format!("source:{name}"), acceptor.clone()));
        }
        (None, Some(cert_file), Some(key_file)) => (cert_file, key_file),
        // Validation rules this out.
        _ => return Err(("cert_file", "give cert_file and key_file".to_owned())),
    };
    let chain = std::fs::read(cert_file)
        .map_err(|e| ("cert_file", format!("cannot read {cert_file}: {e}")))?;
    let key = std::fs::read(key_file)
        .map_err(|e| ("key_file", format!("cannot read {key_file}: {e}")))?;
    // The key is not part of the identity: another key for the same certificate cannot work.
    let fingerprint = format!("tls:{}", String::from_utf8_lossy(&chain));
    if let Some(acceptor) = built.get(&fingerprint) {
        return Ok((fingerprint, acceptor.clone()));
    }
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&chain)
        .collect::<Result<_, _>>()
        .map_err(|e| {
            (
                "cert_file",
                format!("cannot read certificates from {cert_file}: {e}"),
            )
        })?;
    if certs.is_empty() {
        return Err(("cert_file", format!("{cert_file} holds no certificate")));
    }
    let key = PrivateKeyDer::from_pem_slice(&key).map_err(|e| {
        (
            "key_file",
            format!("cannot read a private key from {key_file}: {e}"),
        )
    })?;
    let key = CertifiedKey::from_der(certs, key, &meridian_identity::provider()).map_err(|e| {
        (
            "key_file",
            format!("the key does not fit the certificate: {e}"),
        )
    })?;
    let acceptor = TlsSource::single(Arc::new(key))
        .acceptor(false)
        .map_err(|e| ("cert_file", e.to_string()))?;
    Ok((fingerprint, acceptor))
}

/// The client config of a cluster's `mesh` section (mutual TLS to its endpoints), and what
/// identifies its contents (the certificate chain, bundle and peer: a renewed certificate makes
/// a new client); the error names the field and the reason.
pub type MeshConnector = (Arc<rustls::ClientConfig>, String);

/// Whom a mesh cluster's endpoints must be.
pub enum MeshPeer {
    /// This identity.
    Exactly(meridian_identity::SpiffeId),
    /// Any region's gateway (`spiffe://<trust domain>/gateway/*`), for an edge.
    AnyGateway,
}

/// The peer a cluster's `mesh.peer` names: a SPIFFE ID, or `spiffe://<trust domain>/gateway/*`;
/// the error says why not.
pub fn mesh_peer(peer: &str) -> Result<MeshPeer, String> {
    if let Some(gateways) = peer.strip_suffix("/gateway/*") {
        // The trust domain must be one a SPIFFE ID may have.
        meridian_identity::SpiffeId::parse(&format!("{gateways}/gateway/any"))
            .map_err(|e| e.reason)?;
        return Ok(MeshPeer::AnyGateway);
    }
    meridian_identity::SpiffeId::parse(peer)
        .map(MeshPeer::Exactly)
        .map_err(|e| e.reason)
}

/// Builds a cluster's [`MeshConnector`].
pub fn mesh_connector(mesh: &UpstreamMeshConfig) -> Result<MeshConnector, (&'static str, String)> {
    let files = IdentityFiles::read(&mesh.cert_file, &mesh.key_file, &mesh.bundle_file)?;
    let (local, bundle) = files.load()?;
    let config = match mesh_peer(&mesh.peer).map_err(|reason| ("peer", reason))? {
        MeshPeer::Exactly(peer) => meridian_identity::client_config(local, bundle, peer),
        MeshPeer::AnyGateway => meridian_identity::gateway_client_config(local, bundle),
    };
    let mut config = config.map_err(|e| ("cert_file", e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((
        Arc::new(config),
        format!("{}{}", files.fingerprint(), mesh.peer),
    ))
}

/// The texts of a mesh section's files: this proxy's chain and key, and the trust bundle.
struct IdentityFiles {
    chain: String,
    key: String,
    bundle: String,
}

impl IdentityFiles {
    /// Reads the three files; the error names the field of the one that cannot be read.
    fn read(
        cert_file: &str,
        key_file: &str,
        bundle_file: &str,
    ) -> Result<IdentityFiles, (&'static str, String)> {
        let read = |field: &'static str, path: &str| {
            std::fs::read_to_string(path).map_err(|e| (field, format!("cannot read {path}: {e}")))
        };
        Ok(IdentityFiles {
            chain: read("cert_file", cert_file)?,
            key: read("key_file", key_file)?,
            bundle: read("bundle_file", bundle_file)?,
        })
    }

    /// What identifies the contents: the chain and the bundle (a key that does not belong to
    /// the chain fails to load, so it adds nothing).
    fn fingerprint(&self) -> String {
        format!("{}{}", self.chain, self.bundle)
    }

    /// The certificate with its key, and the bundle as roots.
    fn load(
        &self,
    ) -> Result<(Arc<meridian_identity::CertStore>, rustls::RootCertStore), (&'static str, String)>
    {
        let local = meridian_identity::certified_key(&self.chain, &self.key)
            .map_err(|e| ("cert_file", e.to_string()))?;
        let roots = meridian_identity::trust_bundle(&self.bundle)
            .map_err(|e| ("bundle_file", e.to_string()))?;
        Ok((meridian_identity::CertStore::new(local), roots))
    }
}

/// Encrypted bytes rustls may hold per mesh connection, both ends (its default is 64 KiB). A bulk
/// stream then reaches the socket in writes of up to this size, and the kernel, not the crypto,
/// is most of a mesh hop's cost: in `bench/mesh-hop.sh` 1 MiB used about 4% less CPU per GiB than
/// 64 KiB. Mesh connections are few and pooled, and HTTP/2 flow control bounds what they carry.
pub(crate) const MESH_SEND_BUFFER: usize = 1 << 20;

/// The acceptor for a listener's `mesh` section (TLS 1.3, a client certificate chaining to the
/// bundle required): the one in `built` for the same files' contents, or a new one; the error
/// names the file and the reason.
pub fn mesh_acceptor(
    mesh: &MeshConfig,
    built: &Acceptors,
) -> Result<(String, Arc<TlsAcceptor>), (&'static str, String)> {
    let files = IdentityFiles::read(&mesh.cert_file, &mesh.key_file, &mesh.bundle_file)?;
    let fingerprint = format!("mesh:{}", files.fingerprint());
    if let Some(acceptor) = built.get(&fingerprint) {
        return Ok((fingerprint, acceptor.clone()));
    }
    let (local, bundle) = files.load()?;
    let config = meridian_identity::server_config(local, bundle)
        .map_err(|e| ("cert_file", e.to_string()))?;
    Ok((fingerprint, Arc::new(TlsAcceptor::from(Arc::new(config)))))
}

#[cfg(test)]
mod tests {
    use super::{mesh_peer, MeshPeer, TlsSource};
    use std::sync::Arc;

    #[test]
    fn a_source_makes_tcp_and_quic_configurations_alike() {
        use rustls_pki_types::pem::PemObject;
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["shop.example.com".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = rustls_pki_types::PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes())
            .unwrap();
        let provider = meridian_identity::provider();
        let certified =
            rustls::sign::CertifiedKey::from_der(vec![cert.der().clone()], der, &provider).unwrap();
        let proxy = crate::Proxy::default();
        assert!(proxy.tls_source("edge").is_none());
        proxy
            .add_tls_source("edge", TlsSource::single(Arc::new(certified)))
            .unwrap();
        let source = proxy.tls_source("edge").unwrap();
        let quic = source
            .server_config(&[&rustls::version::TLS13], &[b"h3"])
            .unwrap();
        assert_eq!(quic.alpn_protocols, [b"h3".to_vec()]);
        let tcp = source
            .server_config(rustls::DEFAULT_VERSIONS, &[b"h2"])
            .unwrap();
        assert!(Arc::ptr_eq(&quic.cert_resolver, &tcp.cert_resolver));
    }

    #[test]
    fn a_mesh_peer_is_one_identity_or_any_gateway() {
        assert!(matches!(
            mesh_peer("spiffe://meridian.local/org/acme/app/shop/service/api"),
            Ok(MeshPeer::Exactly(_))
        ));
        assert!(matches!(
            mesh_peer("spiffe://meridian.local/gateway/*"),
            Ok(MeshPeer::AnyGateway)
        ));
        assert!(mesh_peer("spiffe://meridian.local/org/*").is_err());
        assert!(mesh_peer("spiffe://bad domain/gateway/*").is_err());
    }
}
