//! Joining the installation and staying enrolled. A component (a proxy, a gateway, an agent)
//! makes its key here; a one-time join token buys its first certificate from a control plane,
//! and from then on its own certificate renews it at about two thirds of its lifetime. The key
//! never leaves the process, and is stored with mode 0600.
//!
//! A join token also pins the installation: it carries the fingerprint of the root certificate,
//! so a joiner fetches the trust bundle from the control plane and checks it before it trusts
//! anything that control plane says.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::authority::{blank_request, request_for, write_private, BACKDATE};
use crate::verify::{bundle_download_config, control_client_config, provider};
use crate::{certified_key, peer_id, trust_bundle, CertStore, SpiffeId, TlsError};

/// Where a control plane serves the trust bundle (PEM, no authentication).
pub const BUNDLE_PATH: &str = "/v1/trust-bundle";
/// Where a control plane redeems a join token for a first certificate ([`JoinRequest`]).
pub const JOIN_PATH: &str = "/v1/join";
/// Where a control plane issues a certificate to a caller authenticated by its own
/// ([`CertificateRequest`]).
pub const CERTIFICATES_PATH: &str = "/v1/certificates";

const TOKEN_PREFIX: &str = "mrdjoin";
/// Hex digits of the root fingerprint in a token (128 bits of SHA-256).
const FINGERPRINT_HEX: usize = 32;
/// Hex digits of a token's secret (256 bits).
const SECRET_HEX: usize = 64;

/// A one-time join token: `mrdjoin_<root fingerprint>_<secret>`. Its `Debug` shows the
/// fingerprint only.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    text: String,
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JoinToken({TOKEN_PREFIX}_{}_…)", self.fingerprint())
    }
}

/// Why a string is not a join token: which part is wrong, and the form it must have.
#[derive(Debug, Clone, thiserror::Error)]
#[error("not a join token: {reason}; it must look like {TOKEN_PREFIX}_<32 hex digits>_<64 hex digits>, as `meridian join-token` prints it")]
pub struct BadJoinToken {
    reason: &'static str,
}

impl JoinToken {
    /// A new random token for the installation whose root certificate is `bundle_pem`.
    pub fn generate(bundle_pem: &str) -> Result<JoinToken, TlsError> {
        let fingerprint = bundle_fingerprint(bundle_pem)?;
        let mut secret = [0u8; SECRET_HEX / 2];
        provider()
            .secure_random
            .fill(&mut secret)
            .map_err(|_| rustls::Error::FailedToGetRandomBytes)?;
        Ok(JoinToken {
            text: format!("{TOKEN_PREFIX}_{fingerprint}_{}", hex::encode(secret)),
        })
    }

    /// Parses a token as printed by [`JoinToken::as_str`] (surrounding whitespace ignored, hex
    /// digits in either case); anything else is refused with the part that is wrong. Never
    /// panics, whatever the input.
    pub fn parse(text: &str) -> Result<JoinToken, BadJoinToken> {
        let bad = |reason| Err(BadJoinToken { reason });
        let hex_of =
            |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
        let text = text.trim();
        let mut parts = text.split('_');
        if parts.next() != Some(TOKEN_PREFIX) {
            return bad("it does not start with `mrdjoin_`");
        }
        let (Some(fingerprint), Some(secret), None) = (parts.next(), parts.next(), parts.next())
        else {
            return bad("it does not have three parts separated by `_`");
        };
        if !hex_of(fingerprint, FINGERPRINT_HEX) {
            return bad("the second part (the installation's fingerprint) is not 32 hex digits");
        }
        if !hex_of(secret, SECRET_HEX) {
            return bad("the third part (the secret) is not 64 hex digits");
        }
        Ok(JoinToken {
            text: text.to_ascii_lowercase(),
        })
    }

    /// The token as the operator passes it.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The fingerprint of the installation's root certificate the token pins.
    pub fn fingerprint(&self) -> &str {
        &self.text[TOKEN_PREFIX.len() + 1..TOKEN_PREFIX.len() + 1 + FINGERPRINT_HEX]
    }

    /// What a control plane stores instead of the token: its SHA-256, hex.
    pub fn digest(&self) -> String {
        hex::encode(Sha256::digest(self.text.as_bytes()))
    }
}

/// The fingerprint of the first certificate of `bundle_pem`: the first 128 bits of the SHA-256
/// of its DER, hex.
pub fn bundle_fingerprint(bundle_pem: &str) -> Result<String, TlsError> {
    let first = CertificateDer::pem_slice_iter(bundle_pem.as_bytes())
        .next()
        .and_then(Result::ok)
        .ok_or_else(|| TlsError::Pem {
            what: "trust bundle",
            reason: "no certificate".to_owned(),
        })?;
    let digest = Sha256::digest(first.as_ref());
    Ok(hex::encode(&digest[..FINGERPRINT_HEX / 2]))
}

/// The body of a join: the token and a signing request that names nothing (the token decides
/// the identity).
#[derive(Debug, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The join token.
    pub token: String,
    /// The signing request, PEM.
    pub csr: String,
}

/// The body of a certificate request by an enrolled caller.
#[derive(Debug, Serialize, Deserialize)]
pub struct CertificateRequest {
    /// The signing request, PEM.
    pub csr: String,
    /// The identity wanted; absent: the caller's own (a renewal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spiffe_id: Option<String>,
}

/// A control plane's answer to a join or a certificate request. It never holds a key.
#[derive(Debug, Serialize, Deserialize)]
pub struct CertificateIssued {
    /// The identity issued.
    pub spiffe_id: String,
    /// The certificate and its intermediates, PEM.
    pub chain_pem: String,
    /// The trust bundle (the installation's root), PEM.
    pub bundle_pem: String,
}

/// Why joining or renewing failed. Nothing is stored then.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// The token is malformed.
    #[error(transparent)]
    BadToken(#[from] BadJoinToken),
    /// A TLS setup or a PEM input failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Making the key or the signing request failed.
    #[error("making the key: {0}")]
    Key(#[from] rcgen::Error),
    /// The control plane could not be reached, or its answer did not parse.
    #[error("calling the control plane at {url}: {source}")]
    Http {
        /// What was called.
        url: String,
        /// Why it failed.
        source: reqwest::Error,
    },
    /// The control plane refused.
    #[error("the control plane at {url} refused ({status}): {message}")]
    Refused {
        /// What was called.
        url: String,
        /// The HTTP status.
        status: u16,
        /// Its reason.
        message: String,
    },
    /// The control plane serves another installation's trust bundle than the token pins.
    #[error("{url} serves the trust bundle of another installation (fingerprint {found}, the join token pins {expected}): check the control plane's address and the token")]
    WrongInstallation {
        /// Where the bundle came from.
        url: String,
        /// Its fingerprint.
        found: String,
        /// The token's.
        expected: String,
    },
    /// The issued certificate is not what was asked for.
    #[error("the issued certificate: {0}")]
    BadCertificate(String),
    /// There are no valid stored credentials and no join token to get new ones.
    #[error("{dir}: {why}; pass a join token (ask an administrator: meridian join-token)")]
    NotEnrolled {
        /// Where credentials were looked for.
        dir: String,
        /// What was found.
        why: &'static str,
    },
    /// Reading or writing the stored credentials failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// File names of stored credentials.
const CHAIN_FILE: &str = "cert.pem";
const KEY_FILE: &str = "key.pem";
const BUNDLE_FILE: &str = "bundle.pem";

/// A component's identity: its certificate chain, its key, the trust bundle, and the validity of
/// the certificate. Its `Debug` never shows the key.
#[derive(Clone)]
pub struct Credentials {
    /// Who the certificate says the holder is.
    pub id: SpiffeId,
    /// The certificate and its intermediates, PEM.
    pub chain_pem: String,
    key_pem: String,
    /// The installation's trust bundle, PEM.
    pub bundle_pem: String,
    /// When the certificate was issued.
    pub issued_at: SystemTime,
    /// When it expires.
    pub not_after: SystemTime,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("id", &self.id.to_string())
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Credentials from a control plane's answer to a request made with `key_pem`; the
    /// certificate must name `spiffe_id` and chain to the answer's bundle.
    fn from_issued(issued: CertificateIssued, key_pem: String) -> Result<Credentials, EnrollError> {
        let bad = |reason: String| EnrollError::BadCertificate(reason);
        let leaf = CertificateDer::pem_slice_iter(issued.chain_pem.as_bytes())
            .next()
            .and_then(Result::ok)
            .ok_or_else(|| bad("the chain holds no certificate".to_owned()))?;
        let id = peer_id(&leaf).ok_or_else(|| bad("it names no SPIFFE ID".to_owned()))?;
        if id.to_string() != issued.spiffe_id {
            return Err(bad(format!(
                "it names {id}, the answer says {}",
                issued.spiffe_id
            )));
        }
        let (_, parsed) =
            X509Certificate::from_der(leaf.as_ref()).map_err(|e| bad(e.to_string()))?;
        let at = |t: i64| SystemTime::UNIX_EPOCH + Duration::from_secs(t.max(0).unsigned_abs());
        let validity = parsed.validity();
        let issued_at = at(validity.not_before.timestamp())
            + Duration::from_secs(BACKDATE.whole_seconds().unsigned_abs());
        let credentials = Credentials {
            id,
            not_after: at(validity.not_after.timestamp()),
            issued_at,
            chain_pem: issued.chain_pem,
            key_pem,
            bundle_pem: issued.bundle_pem,
        };
        // Both must parse before anyone relies on them.
        credentials.certified_key()?;
        credentials.bundle()?;
        Ok(credentials)
    }

    /// The certificate and key, ready for rustls (e.g. for [`CertStore::rotate`]).
    pub fn certified_key(&self) -> Result<Arc<CertifiedKey>, TlsError> {
        certified_key(&self.chain_pem, &self.key_pem)
    }

    /// The trust bundle, ready for rustls.
    pub fn bundle(&self) -> Result<RootCertStore, TlsError> {
        trust_bundle(&self.bundle_pem)
    }

    /// When to renew: at two thirds of the lifetime.
    pub fn renew_at(&self) -> SystemTime {
        let lifetime = self
            .not_after
            .duration_since(self.issued_at)
            .unwrap_or_default();
        self.issued_at + lifetime * 2 / 3
    }

    /// Whether the certificate has expired.
    pub fn expired(&self) -> bool {
        SystemTime::now() >= self.not_after
    }

    /// Writes the credentials to `dir` (created if missing): the key readable by its owner only.
    pub fn save(&self, dir: &Path) -> Result<(), EnrollError> {
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| EnrollError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        // The key first, so that a crash between the two writes leaves a pair that fails to
        // load (and is replaced by a join) rather than a certificate with a wrong key.
        let key = dir.join(KEY_FILE);
        write_private(&key, &self.key_pem).map_err(io(&key))?;
        let chain = dir.join(CHAIN_FILE);
        std::fs::write(&chain, &self.chain_pem).map_err(io(&chain))?;
        let bundle = dir.join(BUNDLE_FILE);
        std::fs::write(&bundle, &self.bundle_pem).map_err(io(&bundle))?;
        Ok(())
    }

    /// Reads credentials written by [`Credentials::save`]; `None` when `dir` holds none.
    pub fn load(dir: &Path) -> Result<Option<Credentials>, EnrollError> {
        if !dir.join(KEY_FILE).exists() {
            return Ok(None);
        }
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| EnrollError::Io {
                path: path.display().to_string(),
                source,
            })
        };
        let chain_pem = read(CHAIN_FILE)?;
        let leaf_id = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .next()
            .and_then(Result::ok)
            .and_then(|leaf| peer_id(&leaf))
            .ok_or_else(|| {
                EnrollError::BadCertificate(format!(
                    "{} names no SPIFFE ID",
                    dir.join(CHAIN_FILE).display()
                ))
            })?;
        let issued = CertificateIssued {
            spiffe_id: leaf_id.to_string(),
            chain_pem,
            bundle_pem: read(BUNDLE_FILE)?,
        };
        Credentials::from_issued(issued, read(KEY_FILE)?).map(Some)
    }
}

/// How long a call to a control plane may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

fn http_client(url: &str, tls: ClientConfig) -> Result<reqwest::Client, EnrollError> {
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .https_only(true)
        .timeout(CALL_TIMEOUT)
        .build()
        .map_err(|source| EnrollError::Http {
            url: url.to_owned(),
            source,
        })
}

/// Sends `request` and returns the answer if it succeeded, or the control plane's reason.
async fn send(
    url: &str,
    request: reqwest::RequestBuilder,
) -> Result<reqwest::Response, EnrollError> {
    let http = |source| EnrollError::Http {
        url: url.to_owned(),
        source,
    };
    let response = request.send().await.map_err(http)?;
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = response.text().await.map_err(http)?;
    #[derive(Deserialize)]
    struct Reason {
        error: ReasonDetail,
    }
    #[derive(Deserialize)]
    struct ReasonDetail {
        message: String,
    }
    let message = serde_json::from_str::<Reason>(&body)
        .map(|r| r.error.message)
        .unwrap_or(body);
    Err(EnrollError::Refused {
        url: url.to_owned(),
        status: status.as_u16(),
        message,
    })
}

/// Posts `body` to `url` and decodes the certificate issued.
async fn post_for_certificate<B: Serialize>(
    client: &reqwest::Client,
    url: &str,
    body: &B,
) -> Result<CertificateIssued, EnrollError> {
    send(url, client.post(url).json(body))
        .await?
        .json()
        .await
        .map_err(|source| EnrollError::Http {
            url: url.to_owned(),
            source,
        })
}

/// Joins the installation through the control plane at `base` (`https://host:port`): fetches
/// its trust bundle and checks it against the token's fingerprint, then redeems the token for a
/// certificate with a key made here.
pub async fn join(base: &str, token: &JoinToken) -> Result<Credentials, EnrollError> {
    let base = base.trim_end_matches('/');
    let bundle_url = format!("{base}{BUNDLE_PATH}");
    let download = http_client(&bundle_url, bundle_download_config()?)?;
    let bundle_pem = send(&bundle_url, download.get(&bundle_url))
        .await?
        .text()
        .await
        .map_err(|source| EnrollError::Http {
            url: bundle_url.clone(),
            source,
        })?;
    let found = bundle_fingerprint(&bundle_pem)?;
    if found != token.fingerprint() {
        return Err(EnrollError::WrongInstallation {
            url: bundle_url,
            found,
            expected: token.fingerprint().to_owned(),
        });
    }
    let join_url = format!("{base}{JOIN_PATH}");
    let client = http_client(
        &join_url,
        control_client_config(None, trust_bundle(&bundle_pem)?)?,
    )?;
    let (csr, key_pem) = blank_request()?;
    let body = JoinRequest {
        token: token.as_str().to_owned(),
        csr,
    };
    let issued = post_for_certificate(&client, &join_url, &body).await?;
    Credentials::from_issued(issued, key_pem)
}

/// Asks the control plane at `base` for a certificate, authenticated by `current`: for
/// `wanted`, or (`None`) for the holder's own identity, which renews it. The new key is made
/// here.
pub async fn request_certificate(
    base: &str,
    current: &Credentials,
    wanted: Option<&SpiffeId>,
) -> Result<Credentials, EnrollError> {
    let url = format!("{}{CERTIFICATES_PATH}", base.trim_end_matches('/'));
    let tls = control_client_config(
        Some(CertStore::new(current.certified_key()?)),
        current.bundle()?,
    )?;
    let client = http_client(&url, tls)?;
    let (csr, key_pem) = request_for(wanted.unwrap_or(&current.id))?;
    let body = CertificateRequest {
        csr,
        spiffe_id: wanted.map(ToString::to_string),
    };
    let issued = post_for_certificate(&client, &url, &body).await?;
    Credentials::from_issued(issued, key_pem)
}

/// Where and how a component keeps its identity fresh.
#[derive(Debug, Clone)]
pub struct Renewal {
    /// The control plane, `https://host:port`.
    pub base: String,
    /// Where the credentials are stored.
    pub dir: PathBuf,
    /// Where new handshakes take the certificate from.
    pub store: Arc<CertStore>,
    /// Told after each renewal is stored (e.g. to reload configurations that read the files).
    pub renewed: Option<Arc<tokio::sync::Notify>>,
}

/// Renews `credentials` at about two thirds of their lifetime for as long as the task runs:
/// each new certificate is stored in `renewal.dir` and used for new handshakes from
/// `renewal.store`; open connections stay. A failed renewal is retried while the certificate is
/// still valid, sooner as its end nears.
pub async fn keep_renewed(renewal: Renewal, mut credentials: Credentials) {
    loop {
        let wait = credentials
            .renew_at()
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        tokio::time::sleep(wait).await;
        let renewed = match request_certificate(&renewal.base, &credentials, None).await {
            Ok(renewed) => renewed.save(&renewal.dir).map(|()| renewed),
            Err(e) => Err(e),
        };
        match renewed.and_then(|r| Ok((r.certified_key()?, r))) {
            Ok((key, renewed)) => {
                renewal.store.rotate(key);
                if let Some(renewed) = &renewal.renewed {
                    renewed.notify_one();
                }
                tracing::info!(id = %renewed.id, valid_for = ?renewed.not_after.duration_since(SystemTime::now()).unwrap_or_default(),
                    "certificate renewed; new connections use it");
                credentials = renewed;
            }
            Err(e) => {
                let left = credentials
                    .not_after
                    .duration_since(SystemTime::now())
                    .unwrap_or_default();
                let retry = (left / 10).clamp(Duration::from_millis(200), Duration::from_secs(30));
                tracing::warn!(error = %e, expires_in = ?left, retry_in = ?retry,
                    "renewing the certificate failed; the current one stays in use");
                tokio::time::sleep(retry).await;
            }
        }
    }
}

/// The credentials stored in `dir` if they are still valid; otherwise (none stored, or expired)
/// joins through the control plane at `base` with `token` and stores what it gets. Returns them
/// and whether they were joined now.
pub async fn enrolled(
    base: &str,
    dir: &Path,
    token: Option<&str>,
) -> Result<(Credentials, bool), EnrollError> {
    let stored = Credentials::load(dir)?;
    if let Some(stored) = stored.as_ref().filter(|c| !c.expired()) {
        return Ok((stored.clone(), false));
    }
    let Some(token) = token else {
        return Err(EnrollError::NotEnrolled {
            dir: dir.display().to_string(),
            why: if stored.is_some() {
                "its certificate expired"
            } else {
                "it holds no certificate"
            },
        });
    };
    let joined = join(base, &JoinToken::parse(token)?).await?;
    joined.save(dir)?;
    Ok((joined, true))
}
