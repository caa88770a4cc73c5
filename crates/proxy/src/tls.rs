//! TLS on listeners: certificates from PEM files, ALPN offering HTTP/2 and HTTP/1.1.

use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::{MeshConfig, TlsConfig, UpstreamMeshConfig};

/// Builds the acceptor for a listener's `tls` section; the error names the file and the reason.
pub fn acceptor(tls: &TlsConfig) -> Result<TlsAcceptor, (&'static str, String)> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert_file)
        .and_then(|certs| certs.collect())
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
    let key = PrivateKeyDer::from_pem_file(&tls.key_file).map_err(|e| {
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
    Ok(TlsAcceptor::from(Arc::new(config)))
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
    let (local, bundle, fingerprint) =
        identity_files(&mesh.cert_file, &mesh.key_file, &mesh.bundle_file)?;
    let config = match mesh_peer(&mesh.peer).map_err(|reason| ("peer", reason))? {
        MeshPeer::Exactly(peer) => meridian_identity::client_config(local, bundle, peer),
        MeshPeer::AnyGateway => meridian_identity::gateway_client_config(local, bundle),
    };
    let mut config = config.map_err(|e| ("cert_file", e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((Arc::new(config), format!("{fingerprint}{}", mesh.peer)))
}

/// What [`identity_files`] reads: this proxy's certificate, the bundle, and their PEM texts.
type Identity = (
    Arc<meridian_identity::CertStore>,
    rustls::RootCertStore,
    String,
);

/// This proxy's certificate (from `cert_file` and `key_file`) and the trust bundle.
fn identity_files(
    cert_file: &str,
    key_file: &str,
    bundle_file: &str,
) -> Result<Identity, (&'static str, String)> {
    let read = |field: &'static str, path: &str| {
        std::fs::read_to_string(path).map_err(|e| (field, format!("cannot read {path}: {e}")))
    };
    let chain = read("cert_file", cert_file)?;
    let key = read("key_file", key_file)?;
    let bundle = read("bundle_file", bundle_file)?;
    let local =
        meridian_identity::certified_key(&chain, &key).map_err(|e| ("cert_file", e.to_string()))?;
    let roots =
        meridian_identity::trust_bundle(&bundle).map_err(|e| ("bundle_file", e.to_string()))?;
    Ok((
        meridian_identity::CertStore::new(local),
        roots,
        format!("{chain}{bundle}"),
    ))
}

/// Encrypted bytes rustls may hold per mesh connection, both ends (its default is 64 KiB). A bulk
/// stream then reaches the socket in writes of up to this size, and the kernel, not the crypto,
/// is most of a mesh hop's cost: in `bench/mesh-hop.sh` 1 MiB used about 4% less CPU per GiB than
/// 64 KiB. Mesh connections are few and pooled, and HTTP/2 flow control bounds what they carry.
pub(crate) const MESH_SEND_BUFFER: usize = 1 << 20;

/// Builds the acceptor for a listener's `mesh` section: TLS 1.3, a client certificate chaining
/// to the bundle required; the error names the file and the reason.
pub fn mesh_acceptor(mesh: &MeshConfig) -> Result<TlsAcceptor, (&'static str, String)> {
    let (local, bundle, _) = identity_files(&mesh.cert_file, &mesh.key_file, &mesh.bundle_file)?;
    let config = meridian_identity::server_config(local, bundle)
        .map_err(|e| ("cert_file", e.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
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
