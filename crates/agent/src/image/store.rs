//! The node's image store: blobs by digest under `<state>/images/blobs/sha256/`, each verified
//! against its digest before it is kept; each layer unpacked once under
//! `<state>/images/layers/<hex>` and shared read-only by every instance that uses it; each
//! image's manifest and configuration under `<state>/images/manifests/<hex>.json`, so that an
//! instance of an image pinned to a digest that the node already holds starts without asking the
//! registry.
//!
//! A blob is pulled once per node: concurrent pulls of one digest wait for the first.
//!
//! An image pulled with a credential (a definition's, from its app's secrets) is private: an
//! instance of it starts from the store only once the registry has accepted that instance's
//! own credential for its manifest, so that holding a digest never lends another app's access.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use meridian_model::{Credential, ImageRef, RegistryOptions};
use meridian_registry::{auth, client, client_for, remote_reference, RegistryError as PullError};
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::Reference;
use oci_spec::image::ImageConfiguration;
use sha2::{Digest, Sha256};

/// An image on this node, ready to be mounted.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The manifest's digest.
    pub digest: String,
    /// The image's configuration (entrypoint, command, env, user, …).
    pub config: ImageConfiguration,
    /// Its unpacked layers, bottom first.
    pub layers: Vec<PathBuf>,
}

/// The manifest and configuration of an image, as kept by digest.
#[derive(serde::Serialize, serde::Deserialize)]
struct Kept {
    manifest: OciImageManifest,
    config: String,
    /// Pulled with a definition's credential (see the module's documentation).
    #[serde(default)]
    private: bool,
}

/// How one pull asks the registry.
struct Asking<'a> {
    client: Cow<'a, oci_client::Client>,
    auth: RegistryAuth,
    /// Whether a definition's credential is given.
    private: bool,
}

/// The node's image store.
pub struct ImageStore {
    root: PathBuf,
    client: oci_client::Client,
    options: RegistryOptions,
    /// One lock per blob digest being fetched or unpacked.
    busy: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for ImageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageStore")
            .field("root", &self.root)
            .finish()
    }
}

/// Layer media types the agent unpacks (tar, gzip-compressed or not).
const LAYER_TYPES: [&str; 4] = [
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
];

impl ImageStore {
    /// The store under `<state_dir>/images`, pulling with `options`.
    pub fn new(state_dir: &Path, options: RegistryOptions) -> ImageStore {
        ImageStore {
            root: state_dir.join("images"),
            client: client(&options),
            options,
            busy: Mutex::default(),
        }
    }

    /// Makes `reference` ready on this node, asking the registry with `credential` (else as
    /// the node's options say): its manifest (from the store when it is pinned to a digest the
    /// store holds, and, for a private image, the registry accepts `credential` for it; else
    /// from the registry), its configuration and every layer, each verified by digest and
    /// fetched only if the store lacks it.
    pub async fn pull(
        &self,
        reference: &str,
        credential: Option<&Credential>,
    ) -> Result<Pulled, PullError> {
        let parsed = ImageRef::parse(reference).map_err(PullError::BadReference)?;
        let remote = remote_reference(&parsed);
        let asking = Asking {
            client: client_for(&self.client, &self.options, credential),
            auth: auth(&self.options, &parsed.registry, credential),
            private: credential.is_some(),
        };
        let (kept, digest) = self.manifest(&parsed, &remote, &asking).await?;
        let config: ImageConfiguration = serde_json::from_str(&kept.config)
            .map_err(|e| PullError::Unsupported(format!("image configuration: {e}")))?;
        let mut layers = Vec::with_capacity(kept.manifest.layers.len());
        for layer in &kept.manifest.layers {
            if !LAYER_TYPES.contains(&layer.media_type.as_str()) {
                return Err(PullError::Unsupported(format!(
                    "layer type {}",
                    layer.media_type
                )));
            }
            layers.push(self.layer(&remote, layer, &asking.client).await?);
        }
        if layers.is_empty() {
            return Err(PullError::Unsupported("the image has no layers".into()));
        }
        Ok(Pulled {
            digest,
            config,
            layers,
        })
    }

    /// The manifest and configuration, from the store for a pinned digest it holds, else
    /// from the registry (then kept).
    async fn manifest(
        &self,
        parsed: &ImageRef,
        remote: &Reference,
        asking: &Asking<'_>,
    ) -> Result<(Kept, String), PullError> {
        if let Some(digest) = &parsed.digest {
            if let Ok(bytes) = tokio::fs::read(self.manifest_path(digest)).await {
                if let Ok(kept) = serde_json::from_slice::<Kept>(&bytes) {
                    if kept.private {
                        asking
                            .client
                            .fetch_manifest_digest(remote, &asking.auth)
                            .await
                            .map_err(PullError::from_registry)?;
                    }
                    return Ok((kept, digest.clone()));
                }
            }
        }
        let (manifest, digest, config) = asking
            .client
            .pull_manifest_and_config(remote, &asking.auth)
            .await
            .map_err(PullError::from_registry)?;
        if let Some(expected) = &parsed.digest {
            if *expected != digest {
                return Err(PullError::DigestMismatch {
                    expected: expected.clone(),
                    got: digest,
                });
            }
        }
        let got = sha256(config.as_bytes());
        if got != manifest.config.digest {
            return Err(PullError::DigestMismatch {
                expected: manifest.config.digest.clone(),
                got,
            });
        }
        let kept = Kept {
            manifest,
            config,
            private: asking.private,
        };
        let path = self.manifest_path(&digest);
        let bytes = serde_json::to_vec(&kept).map_err(std::io::Error::other)?;
        write_atomically(&path, &bytes).await?;
        Ok((kept, digest))
    }

    /// The unpacked layer `layer`, fetched and unpacked unless the store has it.
    async fn layer(
        &self,
        remote: &Reference,
        layer: &OciDescriptor,
        client: &oci_client::Client,
    ) -> Result<PathBuf, PullError> {
        let hex = hex_of(&layer.digest)?;
        let dir = self.root.join("layers").join(hex);
        let lock = self.lock(&layer.digest);
        let _held = lock.lock().await;
        if tokio::fs::metadata(&dir).await.is_ok() {
            return Ok(dir);
        }
        let blob = self.blob(remote, layer, client).await?;
        let partial = dir.with_extension("partial");
        let target = dir.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let _ = std::fs::remove_dir_all(&partial);
            super::unpack::unpack_layer(&blob, &partial)?;
            std::fs::rename(&partial, &target)
        })
        .await
        .map_err(std::io::Error::other)??;
        Ok(dir)
    }

    /// The blob of `layer` in the store, fetched and verified unless there.
    async fn blob(
        &self,
        remote: &Reference,
        layer: &OciDescriptor,
        client: &oci_client::Client,
    ) -> Result<PathBuf, PullError> {
        let path = self.blob_path(&layer.digest)?;
        if tokio::fs::metadata(&path).await.is_ok() {
            return Ok(path);
        }
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        let partial = path.with_extension("partial");
        let file = tokio::fs::File::create(&partial).await?;
        let mut out = tokio::io::BufWriter::new(file);
        client
            .pull_blob(remote, layer, &mut out)
            .await
            .map_err(PullError::from_registry)?;
        tokio::io::AsyncWriteExt::flush(&mut out).await?;
        drop(out);
        let check = partial.clone();
        let got = tokio::task::spawn_blocking(move || sha256_file(&check))
            .await
            .map_err(std::io::Error::other)??;
        if got != layer.digest {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(PullError::DigestMismatch {
                expected: layer.digest.clone(),
                got,
            });
        }
        tokio::fs::rename(&partial, &path).await?;
        Ok(path)
    }

    fn lock(&self, digest: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut busy = self
            .busy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        busy.retain(|_, lock| Arc::strong_count(lock) > 1);
        busy.entry(digest.to_owned()).or_default().clone()
    }

    fn manifest_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.root.join("manifests").join(format!("{hex}.json"))
    }

    fn blob_path(&self, digest: &str) -> Result<PathBuf, PullError> {
        Ok(self.root.join("blobs/sha256").join(hex_of(digest)?))
    }
}

/// The hex part of a sha256 digest; an error for another algorithm or a malformed one (it is
/// used in paths).
fn hex_of(digest: &str) -> Result<&str, PullError> {
    meridian_model::check_digest(digest).map_err(PullError::Unsupported)?;
    Ok(&digest["sha256:".len()..])
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}

async fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await?;
    }
    let partial = path.with_extension("partial");
    tokio::fs::write(&partial, bytes).await?;
    tokio::fs::rename(&partial, path).await
}
