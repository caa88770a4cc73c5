//! Mutual TLS with SPIFFE identities: rustls configs that require a peer certificate chaining to
//! the trust bundle, check a server's SPIFFE ID (not a DNS name), read a peer's ID, and rotate
//! the local certificate for new handshakes without touching open connections.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig,
    SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::SpiffeId;

/// Why a TLS setup could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM text holds no usable certificate or key.
    #[error("{what}: {reason}")]
    Pem {
        /// Which input.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// rustls refused the setup.
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The crypto provider every Meridian TLS config uses: *ring*'s, preferring AES-128-GCM among the
/// TLS 1.3 suites (as BoringSSL, and so Envoy, does; it is the suite TLS 1.3 requires of every
/// implementation). It encrypts a bulk hop with 10 AES rounds instead of AES-256's 14.
pub fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    // A stable sort: the other suites keep their order.
    provider
        .cipher_suites
        .sort_by_key(|suite| suite.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(provider)
}

/// The SPIFFE ID in a certificate's URI SAN, if it has exactly one valid one.
pub fn peer_id(cert: &CertificateDer<'_>) -> Option<SpiffeId> {
    let (_, parsed) = X509Certificate::from_der(cert.as_ref()).ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    let mut uris = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) if uri.starts_with("spiffe://") => Some(*uri),
            _ => None,
        });
    let id = SpiffeId::parse(uris.next()?).ok()?;
    uris.next().is_none().then_some(id)
}

/// Whether the first certificate of `pem` is self-issued (a root).
pub(crate) fn is_self_issued(pem: &str) -> bool {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .and_then(Result::ok)
        .and_then(|der| {
            let (_, cert) = X509Certificate::from_der(der.as_ref()).ok()?;
            Some(cert.subject() == cert.issuer())
        })
        .unwrap_or(false)
}

/// A trust bundle from PEM certificates.
pub fn trust_bundle(pem: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let cert = cert.map_err(|e| TlsError::Pem {
            what: "trust bundle",
            reason: e.to_string(),
        })?;
        roots.add(cert)?;
    }
    if roots.is_empty() {
        return Err(TlsError::Pem {
            what: "trust bundle",
            reason: "no certificate".to_owned(),
        });
    }
    Ok(roots)
}

/// A certificate chain and its key, from PEM, ready for rustls.
pub fn certified_key(chain_pem: &str, key_pem: &str) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem {
            what: "certificate chain",
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Pem {
            what: "certificate chain",
            reason: "no certificate".to_owned(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TlsError::Pem {
        what: "private key",
        reason: e.to_string(),
    })?;
    let signing = provider().key_provider.load_private_key(key)?;
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

/// The local certificate, swappable: a rotation affects new handshakes only.
#[derive(Debug)]
pub struct CertStore {
    current: ArcSwap<CertifiedKey>,
}

impl CertStore {
    /// A store holding `key`.
    pub fn new(key: Arc<CertifiedKey>) -> Arc<CertStore> {
        Arc::new(CertStore {
            current: ArcSwap::new(key),
        })
    }

    /// Uses `key` from the next handshake on.
    pub fn rotate(&self, key: Arc<CertifiedKey>) {
        self.current.store(key);
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl ResolvesClientCert for CertStore {
    fn resolve(
        &self,
        _issuers: &[&[u8]],
        _schemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A server config for a mesh port: TLS 1.3, the certificate from `local`, and a client
/// certificate chaining to `bundle` required (no certificate, or another CA's, fails the
/// handshake). The caller authorizes the client's ID ([`peer_id`]).
pub fn server_config(
    local: Arc<CertStore>,
    bundle: RootCertStore,
) -> Result<ServerConfig, TlsError> {
    tls13_server(local, bundle, false)
}

/// A server config for a control plane's port: like [`server_config`], except that a client
/// may come without a certificate (to join with a join token); a certificate it presents must
/// still chain to `bundle`. Each request must check whether its caller presented one.
pub fn control_server_config(
    local: Arc<CertStore>,
    bundle: RootCertStore,
) -> Result<ServerConfig, TlsError> {
    tls13_server(local, bundle, true)
}

fn tls13_server(
    local: Arc<CertStore>,
    bundle: RootCertStore,
    anonymous_allowed: bool,
) -> Result<ServerConfig, TlsError> {
    let provider = provider();
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(bundle), provider.clone());
    let builder = if anonymous_allowed {
        builder.allow_unauthenticated()
    } else {
        builder
    };
    let verifier = builder
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(local);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// A client config for a mesh hop: TLS 1.3, the certificate from `local`, and the server's
/// chain checked against `bundle` and its SPIFFE ID against `expected`.
pub fn client_config(
    local: Arc<CertStore>,
    bundle: RootCertStore,
    expected: SpiffeId,
) -> Result<ClientConfig, TlsError> {
    tls13_client(Some(local), bundle, Expected::Exactly(expected))
}

/// A client config for a hop to a region's gateway (an edge's): like [`client_config`], except
/// that the gateway of any region of the installation is accepted.
pub fn gateway_client_config(
    local: Arc<CertStore>,
    bundle: RootCertStore,
) -> Result<ClientConfig, TlsError> {
    tls13_client(Some(local), bundle, Expected::AnyGateway)
}

/// A client config for calls to a control plane of the installation (any control plane whose
/// certificate chains to `bundle` and names a `control/…` ID), presenting the certificate from
/// `local`, or none (to join).
pub fn control_client_config(
    local: Option<Arc<CertStore>>,
    bundle: RootCertStore,
) -> Result<ClientConfig, TlsError> {
    tls13_client(local, bundle, Expected::AnyControlPlane)
}

fn tls13_client(
    local: Option<Arc<CertStore>>,
    bundle: RootCertStore,
    expected: Expected,
) -> Result<ClientConfig, TlsError> {
    let provider = provider();
    let verifier = Arc::new(SpiffeServerVerifier {
        roots: bundle,
        expected,
        provider: provider.clone(),
    });
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match local {
        Some(local) => builder.with_client_cert_resolver(local),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A client config that accepts any server certificate, for one purpose only: fetching the
/// trust bundle, which the caller then checks against a fingerprint it got out of band (the
/// join token). Nothing else may travel over it.
pub(crate) fn bundle_download_config() -> Result<ClientConfig, TlsError> {
    tls13_client(
        None,
        RootCertStore::empty(),
        Expected::AnyoneForPinnedDownload,
    )
}

/// The server a client expects.
#[derive(Debug)]
enum Expected {
    /// Any server: only for [`bundle_download_config`].
    AnyoneForPinnedDownload,
    /// This identity.
    Exactly(SpiffeId),
    /// Any control plane (global or regional) of the trust domain.
    AnyControlPlane,
    /// Any region's gateway of the trust domain.
    AnyGateway,
}

impl Expected {
    fn admits(&self, id: &SpiffeId) -> bool {
        match self {
            Expected::Exactly(expected) => id == expected,
            Expected::AnyControlPlane => matches!(id.subject, crate::Subject::Control { .. }),
            Expected::AnyGateway => matches!(id.subject, crate::Subject::Gateway { .. }),
            Expected::AnyoneForPinnedDownload => true,
        }
    }
}

impl std::fmt::Display for Expected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expected::Exactly(id) => id.fmt(f),
            Expected::AnyControlPlane => f.write_str("a control plane"),
            Expected::AnyGateway => f.write_str("a gateway"),
            Expected::AnyoneForPinnedDownload => f.write_str("any server"),
        }
    }
}

/// The server name a mesh client sends: servers are told apart by SPIFFE ID, not DNS name.
pub fn mesh_server_name() -> ServerName<'static> {
    ServerName::DnsName(
        rustls_pki_types::DnsName::try_from("mesh.meridian.invalid").expect("a valid DNS name"),
    )
}

/// Checks a server's chain against the trust bundle and its SPIFFE ID against the expected one.
#[derive(Debug)]
struct SpiffeServerVerifier {
    roots: RootCertStore,
    expected: Expected,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if matches!(self.expected, Expected::AnyoneForPinnedDownload) {
            return Ok(ServerCertVerified::assertion());
        }
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        match peer_id(end_entity) {
            Some(id) if self.expected.admits(&id) => Ok(ServerCertVerified::assertion()),
            Some(id) => Err(rustls::Error::General(format!(
                "the server is {id}, not {}",
                self.expected
            ))),
            None => Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
