//! TLS on listeners: certificates from PEM files, ALPN offering HTTP/2 and HTTP/1.1.

use std::collections::HashMap;
use std::sync::Arc;

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

/// The acceptor for a listener's `tls` section: the one in `built` for the same certificate
/// file contents, or a new one; the error names the file and the reason.
pub fn acceptor(
    tls: &TlsConfig,
    built: &Acceptors,
) -> Result<(String, Arc<TlsAcceptor>), (&'static str, String)> {
    let chain = std::fs::read(&tls.cert_file)
        .map_err(|e| ("cert_file", format!("cannot read {}: {e}", tls.cert_file)))?;
    let key = std::fs::read(&tls.key_file)
        .map_err(|e| ("key_file", format!("cannot read {}: {e}", tls.key_file)))?;
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
                format!("cannot read certificates from {}: {e}", tls.cert_file),
            )
        })?;
    if certs.is_empty() {
        return Err((
            "cert_file",
            format!("{} holds no certificate", tls.cert_file),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(&key).map_err(|e| {
        (
            "key_file",
            format!("cannot read a private key from {}: {e}", tls.key_file),
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ("cert_file", e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            (
                "key_file",
                format!("the key does not fit the certificate: {e}"),
            )
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((fingerprint, Arc::new(TlsAcceptor::from(Arc::new(config)))))
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
    use super::{mesh_peer, MeshPeer};

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
