//! Meridian's client of OCI distribution registries, shared by the global control plane (which
//! resolves tags to digests when a definition is applied) and agents (which pull images): the
//! client with the installation's registry options, and the errors in words people read in
//! `meridian status` and API answers.
//!
//! It must not keep images (agents' image store does) nor decide what runs.

use std::borrow::Cow;

use meridian_model::{Credential, ImageRef, RegistryOptions};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::Reference;

pub use oci_client;

/// A client of the OCI distribution protocol that speaks plain HTTP to `options`' insecure
/// registries.
///
/// A client keeps the first credential it is given for each registry and uses it for every
/// later request there: share one only for the installation's credentials (see [`client_for`]).
pub fn client(options: &RegistryOptions) -> oci_client::Client {
    oci_client::Client::new(ClientConfig {
        protocol: ClientProtocol::HttpsExcept(options.insecure.clone()),
        ..Default::default()
    })
}

/// The client to ask a registry with: `shared` (made by [`client`] with `options`, asked
/// anonymously or with the installation's credentials) without `given`, a client of its own
/// with a definition's credential, so that one app's credential never serves another's
/// requests.
pub fn client_for<'a>(
    shared: &'a oci_client::Client,
    options: &RegistryOptions,
    given: Option<&Credential>,
) -> Cow<'a, oci_client::Client> {
    match given {
        None => Cow::Borrowed(shared),
        Some(_) => Cow::Owned(client(options)),
    }
}

/// The credential to present to `registry`: `given` (a definition's, from its app's secrets)
/// when there is one, else the one `options` holds for it, else anonymous.
pub fn auth(options: &RegistryOptions, registry: &str, given: Option<&Credential>) -> RegistryAuth {
    given
        .or_else(|| options.credentials.get(registry))
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

/// The digest of the manifest that `reference` names now (its tag asked of the registry, as
/// `given` or the installation's credential lets it be asked), or the reference's own digest
/// when it pins one and no credential is `given`. With a credential, a pinned digest is asked
/// too, so that a refused credential is refused now rather than at the agents.
pub async fn resolve(
    shared: &oci_client::Client,
    options: &RegistryOptions,
    reference: &ImageRef,
    given: Option<&Credential>,
) -> Result<String, RegistryError> {
    if let (Some(digest), None) = (&reference.digest, given) {
        return Ok(digest.clone());
    }
    let client = client_for(shared, options, given);
    let digest = client
        .fetch_manifest_digest(
            &remote_reference(reference),
            &auth(options, &reference.registry, given),
        )
        .await
        .map_err(RegistryError::from_registry)?;
    if let Some(expected) = reference.digest.as_ref().filter(|d| **d != digest) {
        return Err(RegistryError::DigestMismatch {
            expected: expected.clone(),
            got: digest,
        });
    }
    meridian_model::check_digest(&digest).map_err(RegistryError::Registry)?;
    Ok(digest)
}
