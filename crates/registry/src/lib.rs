//! Meridian's client of OCI distribution registries, shared by the global control plane (which
//! resolves tags to digests when a definition is applied) and agents (which pull images): the
//! client with the installation's registry options, and the errors in words people read in
//! `meridian status` and API answers.
//!
//! It must not keep images (agents' image store does) nor decide what runs.

use meridian_model::{ImageRef, RegistryOptions};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::Reference;

pub use oci_client;

/// A client of the OCI distribution protocol that speaks plain HTTP to `options`' insecure
/// registries.
pub fn client(options: &RegistryOptions) -> oci_client::Client {
    oci_client::Client::new(ClientConfig {
        protocol: ClientProtocol::HttpsExcept(options.insecure.clone()),
        ..Default::default()
    })
}

/// The credential `options` holds for `registry`, or anonymous.
pub fn auth(options: &RegistryOptions, registry: &str) -> RegistryAuth {
    options
        .credentials
        .get(registry)
        .map_or(RegistryAuth::Anonymous, |c| {
            RegistryAuth::Basic(c.username.clone(), c.password.clone())
        })
}

/// Why an image could not be had (resolved, pulled); each says it in a few words for `meridian status`.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The reference does not parse.
    #[error("bad image reference: {0}")]
    BadReference(String),
    /// The registry has no such repository, tag or digest.
    #[error("not found in the registry: {0}")]
    NotFound(String),
    /// The registry refused the credentials (or their absence).
    #[error("unauthorized by the registry: {0}")]
    Unauthorized(String),
    /// What the registry sent does not have the digest it was asked for.
    #[error("digest mismatch: expected {expected}, got {got}")]
    DigestMismatch {
        /// The digest asked for.
        expected: String,
        /// The digest of what came.
        got: String,
    },
    /// The registry could not be reached.
    #[error("registry unreachable: {0}")]
    Unreachable(String),
    /// The registry answered with another error.
    #[error("registry error: {0}")]
    Registry(String),
    /// The image is not one the agent can run (no layers, an unknown layer type).
    #[error("unsupported image: {0}")]
    Unsupported(String),
    /// The node's store failed (disk full, permissions).
    #[error("image store: {0}")]
    Store(#[from] std::io::Error),
}

impl RegistryError {
    /// Classifies an error of the distribution client.
    pub fn from_registry(error: OciDistributionError) -> RegistryError {
        match error {
            OciDistributionError::ImageManifestNotFoundError(what) => RegistryError::NotFound(what),
            OciDistributionError::AuthenticationFailure(what) => RegistryError::Unauthorized(what),
            OciDistributionError::UnauthorizedError { url } => RegistryError::Unauthorized(url),
            OciDistributionError::RegistryError { envelope, url } => {
                let codes = || envelope.errors.iter().map(|e| &e.code);
                if codes().any(|c| {
                    matches!(
                        c,
                        OciErrorCode::ManifestUnknown
                            | OciErrorCode::NameUnknown
                            | OciErrorCode::BlobUnknown
                            | OciErrorCode::NotFound
                    )
                }) {
                    RegistryError::NotFound(url)
                } else if codes()
                    .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
                {
                    RegistryError::Unauthorized(url)
                } else {
                    RegistryError::Registry(format!("{url}: {envelope:?}"))
                }
            }
            OciDistributionError::ServerError { code: 404, url, .. } => {
                RegistryError::NotFound(url)
            }
            OciDistributionError::ServerError {
                code: 401 | 403,
                url,
                ..
            } => RegistryError::Unauthorized(url),
            OciDistributionError::RequestError(e) if e.is_connect() || e.is_timeout() => {
                RegistryError::Unreachable(e.to_string())
            }
            OciDistributionError::DigestError(e) => RegistryError::DigestMismatch {
                expected: "the digest asked for".into(),
                got: e.to_string(),
            },
            other => RegistryError::Registry(other.to_string()),
        }
    }
}

/// The distribution client's reference for `parsed` (by digest when it has one).
pub fn remote_reference(parsed: &ImageRef) -> Reference {
    match &parsed.digest {
        Some(digest) => Reference::with_digest(
            parsed.registry.clone(),
            parsed.repository.clone(),
            digest.clone(),
        ),
        None => Reference::with_tag(
            parsed.registry.clone(),
            parsed.repository.clone(),
            parsed.tag.clone().unwrap_or_else(|| "latest".into()),
        ),
    }
}

/// The digest of the manifest that `reference` names now (its tag asked of the registry), or
/// the reference's own digest when it pins one.
pub async fn resolve(
    client: &oci_client::Client,
    options: &RegistryOptions,
    reference: &ImageRef,
) -> Result<String, RegistryError> {
    if let Some(digest) = &reference.digest {
        return Ok(digest.clone());
    }
    let digest = client
        .fetch_manifest_digest(
            &remote_reference(reference),
            &auth(options, &reference.registry),
        )
        .await
        .map_err(RegistryError::from_registry)?;
    meridian_model::check_digest(&digest).map_err(RegistryError::Registry)?;
    Ok(digest)
}
