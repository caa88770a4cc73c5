//! TLS on listeners: certificates from PEM files, ALPN offering HTTP/2 and HTTP/1.1.

use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;

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
