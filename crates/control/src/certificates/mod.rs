//! Certificates owned by the platform, on the global control plane: for every claimed public
//! domain, a certificate from the local CA (`--local-ca`) or an ACME CA (`--acme-directory`),
//! or one a user uploaded; each valid one published to the edges as the
//! `edge/certificate/<domain>` Secret, renewed at two thirds of its lifetime, its private key
//! sealed in the store with the secrets key. Also the edges' shared session ticket keys.
//!
//! One module per job: [`manager`] follows the store and decides what is due, [`local`] and
//! [`acme`] issue, [`records`] says what the store is told, [`renew`] when to try again and
//! [`schedule`] keeps those times,
//! [`publish`] renders the edges' resources, [`tickets`] keeps the session ticket keys.

mod acme;
mod local;
mod manager;
mod metrics;
mod publish;
mod records;
mod renew;
mod schedule;
mod tickets;

use std::path::PathBuf;
use std::sync::Arc;

pub use acme::{AcmeOptions, ChallengeKind};
pub use local::LocalCa;
pub(crate) use manager::{Manager, CERTIFICATES_PUBLISHED};
pub use metrics::CertificateMetrics;

/// A certificate just issued: the chain (leaf first) and its private key, PEM, and the renewal
/// window the CA suggested (RFC 9773; seconds since the epoch), if it did.
pub struct Issued {
    /// The chain, PEM.
    pub chain_pem: String,
    /// The private key, PEM.
    pub key_pem: String,
    /// The CA's suggested renewal window.
    pub renew_window: Option<(i64, i64)>,
}

/// The certificate options of `meridian control --global`.
#[derive(Debug, Clone, Default)]
pub struct CertificateOptions {
    /// The secrets key file (`--secrets-key`): 32 bytes that seal private keys, ACME
    /// credentials and session ticket keys in the store. Without it the plane manages no
    /// certificates (and refuses uploads).
    pub secrets_key: Option<PathBuf>,
    /// Make the secrets key file when it does not exist (`--create-secrets-key`, for
    /// `meridian dev`); otherwise a missing file is an error.
    pub create_secrets_key: bool,
    /// Issue every claimed domain a certificate from a local CA (`--local-ca`).
    pub local_ca: bool,
    /// Order certificates over ACME (`--acme-directory` and its companions).
    pub acme: Option<AcmeOptions>,
}

/// Where the plane gets certificates from.
#[derive(Clone)]
pub enum IssuerConfig {
    /// Only uploads.
    None,
    /// The local CA for public names.
    Local(Arc<LocalCa>),
    /// An ACME CA (the account is made or restored at the first order).
    Acme(AcmeOptions),
}
