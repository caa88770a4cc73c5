//! Ordering certificates over ACME (RFC 8555) with instant-acme: one account per directory, its
//! credentials sealed in the store; for each order, both the HTTP-01 and the TLS-ALPN-01
//! challenge of every pending authorization go to the edges (so that whichever the CA tries,
//! every edge answers), then the CA is told that the chosen one is ready.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, CertificateIdentifier, ChallengeType,
    Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use meridian_identity::SealingKey;
use meridian_store::Store;
use meridian_xds::meridian::AcmeChallenge;
use meridian_xds::Cache;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use super::publish::{put_challenges, remove_challenges};
use super::Issued;

/// How long challenges are published before the CA is told to validate them, so that the
/// edges have them (an xDS push; well under this on a healthy installation).
const CHALLENGE_SETTLE: Duration = Duration::from_millis(200);
/// How order and certificate polling waits: short first, as a fast CA answers in about a second.
const POLL: RetryPolicy = RetryPolicy::new()
    .initial_delay(Duration::from_millis(100))
    .backoff(1.5)
    .timeout(Duration::from_secs(90));

/// Which challenge the CA is told to validate (the edges answer both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeKind {
    /// `http-01`: `GET /.well-known/acme-challenge/<token>` on port 80.
    Http01,
    /// `tls-alpn-01`: a TLS handshake with ALPN `acme-tls/1` on port 443.
    TlsAlpn01,
}

impl ChallengeKind {
    fn acme(self) -> ChallengeType {
        match self {
            ChallengeKind::Http01 => ChallengeType::Http01,
            ChallengeKind::TlsAlpn01 => ChallengeType::TlsAlpn01,
        }
    }
}

/// The ACME options of `meridian control --global`.
#[derive(Debug, Clone)]
pub struct AcmeOptions {
    /// The CA's directory URL (`--acme-directory`).
    pub directory: String,
    /// The PEM root that the CA's own HTTPS certificate chains to, for a private CA
    /// (`--acme-ca-root`); the system's web roots otherwise.
    pub ca_root: Option<PathBuf>,
    /// The account's contact e-mail (`--acme-email`).
    pub email: Option<String>,
    /// The challenge the CA validates (`--acme-challenge`).
    pub challenge: ChallengeKind,
}

/// Why an ACME step failed.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    /// The CA or the client failed.
    #[error("ACME: {0}")]
    Acme(#[from] instant_acme::Error),
    /// The stored account could not be read or written.
    #[error("ACME account for {directory}: {reason}")]
    Account {
        /// The directory.
        directory: String,
        /// Why.
        reason: String,
    },
    /// The CA refused or abandoned an order.
    #[error("the CA says the order is {status}: {detail}")]
    Order {
        /// The order's status.
        status: String,
        /// The CA's explanation.
        detail: String,
    },
}

/// An ACME account at one directory, ready to order.
pub struct Acme {
    account: Account,
    options: AcmeOptions,
    cache: Arc<Cache>,
}

fn account_label(directory: &str) -> String {
    format!("acme-account/{directory}")
}

impl Acme {
    /// The account at `options.directory`: restored from the store (sealed with `key`), or
    /// created at the CA and stored.
    pub async fn connect(
        store: &dyn Store,
        key: &SealingKey,
        options: AcmeOptions,
        cache: Arc<Cache>,
    ) -> Result<Acme, AcmeError> {
        let directory = options.directory.clone();
        let account_error = |reason: String| AcmeError::Account {
            directory: directory.clone(),
            reason,
        };
        let builder = || match &options.ca_root {
            Some(root) => Account::builder_with_root(root),
            None => Account::builder(),
        };
        let label = account_label(&directory);
        let stored = store
            .get_acme_account(&directory)
            .await
            .map_err(|e| account_error(e.to_string()))?;
        let account = match stored {
            Some(sealed) => {
                let plain = key
                    .open(&label, &sealed)
                    .map_err(|e| account_error(e.to_string()))?;
                let credentials: AccountCredentials = serde_json::from_slice(&plain)
                    .map_err(|e| account_error(format!("stored credentials: {e}")))?;
                builder()?.from_credentials(credentials).await?
            }
            None => {
                let contact = options.email.as_ref().map(|e| format!("mailto:{e}"));
                let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
                let new = NewAccount {
                    contact: &contacts,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                };
                let (account, credentials) =
                    builder()?.create(&new, directory.clone(), None).await?;
                let plain = serde_json::to_vec(&credentials)
                    .map_err(|e| account_error(format!("credentials: {e}")))?;
                let sealed = key
                    .seal(&label, &plain)
                    .map_err(|e| account_error(e.to_string()))?;
                store
                    .put_acme_account(&directory, &sealed)
                    .await
                    .map_err(|e| account_error(e.to_string()))?;
                tracing::info!(%directory, id = account.id(), "ACME account created");
                account
            }
        };
        Ok(Acme {
            account,
            options,
            cache,
        })
    }

    /// Orders a certificate for `domain` (a host name) with a fresh ECDSA P-256 key. The
    /// challenges it publishes are withdrawn whatever the outcome.
    pub async fn order(&self, domain: &str) -> Result<Issued, AcmeError> {
        let mut published = Vec::new();
        let result = self.order_publishing(domain, &mut published).await;
        remove_challenges(&self.cache, &published);
        result
    }

    async fn order_publishing(
        &self,
        domain: &str,
        published: &mut Vec<AcmeChallenge>,
    ) -> Result<Issued, AcmeError> {
        let identifiers = [Identifier::Dns(domain.to_owned())];
        let mut order = self.account.new_order(&NewOrder::new(&identifiers)).await?;
        let thumbprint = self.account.key_thumbprint().to_owned();
        let mut authorizations = order.authorizations();
        while let Some(authorization) = authorizations.next().await {
            let mut authorization = authorization?;
            match authorization.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => {
                    return Err(AcmeError::Order {
                        status: format!("{other:?}").to_lowercase(),
                        detail: format!("the authorization for {domain} cannot be completed"),
                    })
                }
            }
            let challenges: Vec<AcmeChallenge> = authorization
                .challenges
                .iter()
                .filter_map(|challenge| {
                    let kind = match challenge.r#type {
                        ChallengeType::Http01 => "http-01",
                        ChallengeType::TlsAlpn01 => "tls-alpn-01",
                        _ => return None,
                    };
                    Some(AcmeChallenge {
                        domain: domain.to_owned(),
                        kind: kind.to_owned(),
                        token: challenge.token.clone(),
                        key_authorization: format!("{}.{thumbprint}", challenge.token),
                    })
                })
                .collect();
            put_challenges(&self.cache, &challenges);
            published.extend(challenges);
            tokio::time::sleep(CHALLENGE_SETTLE).await;
            let Some(mut challenge) = authorization.challenge(self.options.challenge.acme()) else {
                return Err(AcmeError::Order {
                    status: "pending".to_owned(),
                    detail: format!(
                        "the CA offers no {:?} challenge for {domain}",
                        self.options.challenge
                    ),
                });
            };
            challenge.set_ready().await?;
        }
        let status = order.poll_ready(&POLL).await?;
        if status != OrderStatus::Ready {
            let detail = order
                .state()
                .error
                .as_ref()
                .map_or_else(|| "no detail".to_owned(), |p| p.to_string());
            return Err(AcmeError::Order {
                status: format!("{status:?}").to_lowercase(),
                detail,
            });
        }
        let key_pem = order.finalize().await?;
        let chain_pem = order.poll_certificate(&POLL).await?;
        let renew_window = self.renewal_window(&chain_pem).await;
        Ok(Issued {
            chain_pem,
            key_pem,
            renew_window,
        })
    }

    /// The renewal window the CA suggests for the leaf of `chain_pem` (RFC 9773), as seconds
    /// since the epoch; `None` when the CA offers no renewal information or it fails.
    pub async fn renewal_window(&self, chain_pem: &str) -> Option<(i64, i64)> {
        let leaf = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .next()?
            .ok()?;
        let id = CertificateIdentifier::try_from(&leaf).ok()?;
        match self.account.renewal_info(&id).await {
            Ok((info, _)) => Some((
                info.suggested_window.start.unix_timestamp(),
                info.suggested_window.end.unix_timestamp(),
            )),
            Err(instant_acme::Error::Unsupported(_)) => None,
            Err(e) => {
                tracing::debug!(error = %e, "no ACME renewal information");
                None
            }
        }
    }
}
