//! The node's image store: blobs by digest under `<state>/images/blobs/sha256/`, each verified
//! against its digest before it is kept; each layer unpacked once under
//! `<state>/images/layers/<hex>` and shared read-only by every instance that uses it; each
//! image's manifest and configuration under `<state>/images/manifests/<hex>.json`, so that an
//! instance of an image pinned to a digest that the node already holds starts without asking the
//! registry.
//!
//! A blob is pulled once per node: concurrent pulls of one digest wait for the first.
//!
//! The store is bounded: after each pull and whenever an instance stops using an image, layers
//! (blob and unpacked files) that no running or starting instance uses are evicted, least
//! recently used first, until the store's layers fit its size bound (see [`super::evict`]). An
//! image holds its layers with a [`Lease`], taken before the store looks whether it has them,
//! so that a layer found is never evicted under it.
//!
//! An image pulled with a credential (a definition's, from its app's secrets) is private: an
//! instance of it starts from the store only once the registry has accepted that instance's
//! own credential for its manifest, so that holding a digest never lends another app's access.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use meridian_model::{Credential, ImageRef, RegistryOptions};
use meridian_registry::{auth, client, client_for, remote_reference, RegistryError as PullError};
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::Reference;
use oci_spec::image::ImageConfiguration;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use super::evict::{evictions, LayerUse};

/// An image on this node, ready to be mounted.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The manifest's digest.
    pub digest: String,
    /// The image's configuration (entrypoint, command, env, user, …).
    pub config: ImageConfiguration,
    /// Its unpacked layers, bottom first.
    pub layers: Vec<PathBuf>,
    /// Holds its layers in the store (they are not evicted while a clone of it lives).
    pub lease: Arc<Lease>,
}

/// The store's figures, registered as `meridian_agent_image_*`.
#[derive(Debug, Clone, Default)]
pub struct StoreMetrics {
    /// Bytes the store's layers take (blobs and unpacked files).
    bytes: Gauge,
    /// Layers evicted to keep the store within its bound.
    evictions: Counter,
    /// Bytes of blobs fetched from registries.
    pulled: Counter,
}

impl StoreMetrics {
    /// The store's figures, registered in `registry`.
    pub fn new(registry: &mut Registry) -> StoreMetrics {
        let metrics = StoreMetrics::default();
        registry.register(
            "image_store_bytes",
            "Bytes the node's image store holds in layers (blobs and unpacked files)",
            metrics.bytes.clone(),
        );
        registry.register(
            "image_store_evictions",
            "Layers evicted from the node's image store to keep it within --image-store-max",
            metrics.evictions.clone(),
        );
        registry.register(
            "image_pulled_bytes",
            "Bytes of layer blobs fetched from registries",
            metrics.pulled.clone(),
        );
        metrics
    }
}

/// What the store holds and what is in use, shared with the leases.
#[derive(Debug, Default)]
struct Usage {
    /// Layers the store holds, by digest.
    layers: HashMap<String, Held>,
    /// How many leases name each digest (a layer may be named before it is there).
    users: HashMap<String, u32>,
}

/// A layer the store holds.
#[derive(Debug, Clone, Copy)]
struct Held {
    bytes: u64,
    last_used: SystemTime,
}

impl Usage {
    fn total(&self) -> u64 {
        self.layers.values().map(|held| held.bytes).sum()
    }
}

/// Shared by the store and its leases: the usage and who to wake to collect garbage.
#[derive(Debug, Default)]
struct Shared {
    usage: Mutex<Usage>,
    collect: Notify,
}

impl Shared {
    fn usage(&self) -> MutexGuard<'_, Usage> {
        self.usage
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Layers in use by an image an instance runs (or starts) with: none of them is evicted until
/// the lease is dropped, which marks them used now and wakes the garbage collection.
#[derive(Debug)]
pub struct Lease {
    shared: Arc<Shared>,
    digests: Vec<String>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let now = SystemTime::now();
        let mut usage = self.shared.usage();
        for digest in &self.digests {
            if let Some(users) = usage.users.get_mut(digest) {
                *users -= 1;
                if *users == 0 {
                    usage.users.remove(digest);
                }
            }
            if let Some(held) = usage.layers.get_mut(digest) {
                held.last_used = now;
            }
        }
        drop(usage);
        self.shared.collect.notify_one();
    }
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
    /// The bound, in bytes, of the layers not in use.
    max: u64,
    shared: Arc<Shared>,
    metrics: StoreMetrics,
    /// Names evicted layers apart in `trash/` until they are deleted.
    trashed: AtomicU64,
}

impl std::fmt::Debug for ImageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageStore")
            .field("root", &self.root)
            .field("max", &self.max)
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
    /// The store under `<state_dir>/images`, pulling with `options`, keeping its layers within
    /// `max` bytes where instances do not use more, its figures in `metrics`. It learns what
    /// the directory holds (their last use: when each was unpacked) and deletes what an
    /// earlier agent left half-written, before anything is pulled.
    pub async fn open(
        state_dir: &Path,
        options: RegistryOptions,
        max: u64,
        metrics: StoreMetrics,
    ) -> ImageStore {
        let store = ImageStore {
            root: state_dir.join("images"),
            client: client(&options),
            options,
            busy: Mutex::default(),
            max,
            shared: Arc::default(),
            metrics,
            trashed: AtomicU64::new(0),
        };
        let root = store.root.clone();
        let found = tokio::task::spawn_blocking(move || scan(&root))
            .await
            .unwrap_or_default();
        let mut usage = store.shared.usage();
        usage.layers = found;
        store.show(&usage);
        drop(usage);
        store.shared.collect.notify_one();
        store
    }

    /// Collects garbage whenever a pull ends or a lease is dropped (and once at start); runs
    /// until the agent stops.
    pub async fn collect_garbage(self: Arc<Self>) {
        loop {
            self.shared.collect.notified().await;
            let store = self.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || store.collect()).await {
                tracing::error!(error = %e, "collecting the image store's garbage failed");
            }
        }
    }

    /// Evicts the layers [`evictions`] chooses: each is taken out of the store under the lock
    /// (its unpacked directory moved to `trash/`, its blob deleted), so that no lease can find
    /// it half-deleted, then deleted. Blocking.
    pub fn collect(&self) {
        let mut usage = self.shared.usage();
        let layers: Vec<LayerUse> = usage
            .layers
            .iter()
            .map(|(digest, held)| LayerUse {
                digest: digest.clone(),
                bytes: held.bytes,
                last_used: held.last_used,
                in_use: usage.users.contains_key(digest),
            })
            .collect();
        let chosen = evictions(&layers, self.max);
        if chosen.is_empty() {
            return;
        }
        let trash = self.root.join("trash");
        let _ = std::fs::create_dir_all(&trash);
        let mut moved = Vec::with_capacity(chosen.len());
        for digest in chosen {
            let Ok(hex) = hex_of(digest) else { continue };
            let dir = self.root.join("layers").join(hex);
            let n = self.trashed.fetch_add(1, Ordering::Relaxed);
            let to = trash.join(format!("{hex}-{n}"));
            match std::fs::rename(&dir, &to) {
                Ok(()) => moved.push(to),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(layer = digest, error = %e, "cannot evict the layer; keeping it");
                    continue;
                }
            }
            let _ = std::fs::remove_file(self.root.join("blobs/sha256").join(hex));
            usage.layers.remove(digest);
            self.metrics.evictions.inc();
            tracing::info!(layer = digest, "evicted the layer from the image store");
        }
        self.show(&usage);
        drop(usage);
        for dir in moved {
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    /// Shows the store's size in its gauge; says when what is in use exceeds the bound.
    fn show(&self, usage: &Usage) {
        let total = usage.total();
        self.metrics
            .bytes
            .set(i64::try_from(total).unwrap_or(i64::MAX));
        if total > self.max {
            tracing::warn!(
                bytes = total,
                max = self.max,
                "the image store holds more than its bound: its layers are in use"
            );
        }
    }

    /// A lease on `digests`, marking them used now.
    fn lease(&self, digests: Vec<String>) -> Lease {
        let now = SystemTime::now();
        let mut usage = self.shared.usage();
        for digest in &digests {
            *usage.users.entry(digest.clone()).or_default() += 1;
            if let Some(held) = usage.layers.get_mut(digest) {
                held.last_used = now;
            }
        }
        drop(usage);
        Lease {
            shared: self.shared.clone(),
            digests,
        }
    }

    /// Records that the store holds layer `digest` (unless it knew), measuring it off the
    /// async threads.
    async fn record(&self, digest: &str) -> std::io::Result<()> {
        if self.shared.usage().layers.contains_key(digest) {
            return Ok(());
        }
        let hex = hex_of(digest).map_err(std::io::Error::other)?.to_owned();
        let root = self.root.clone();
        let bytes = tokio::task::spawn_blocking(move || layer_bytes(&root, &hex))
            .await
            .map_err(std::io::Error::other)?;
        let mut usage = self.shared.usage();
        usage.layers.insert(
            digest.to_owned(),
            Held {
                bytes,
                last_used: SystemTime::now(),
            },
        );
        self.show(&usage);
        Ok(())
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
        let digests = kept.manifest.layers.iter().map(|l| l.digest.clone());
        let lease = Arc::new(self.lease(digests.collect()));
        let pulled = self.layers(&remote, &kept, &asking.client).await;
        // Whatever it brought in, the store may now be over its bound.
        self.shared.collect.notify_one();
        Ok(Pulled {
            digest,
            config,
            layers: pulled?,
            lease,
        })
    }

    /// Every layer of the image `kept`, bottom first, fetched and unpacked where the store
    /// lacks it.
    async fn layers(
        &self,
        remote: &Reference,
        kept: &Kept,
        client: &oci_client::Client,
    ) -> Result<Vec<PathBuf>, PullError> {
        let mut layers = Vec::with_capacity(kept.manifest.layers.len());
        for layer in &kept.manifest.layers {
            if !LAYER_TYPES.contains(&layer.media_type.as_str()) {
                return Err(PullError::Unsupported(format!(
                    "layer type {}",
                    layer.media_type
                )));
            }
            layers.push(self.layer(remote, layer, client).await?);
        }
        if layers.is_empty() {
            return Err(PullError::Unsupported("the image has no layers".into()));
        }
        Ok(layers)
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
        if tokio::fs::metadata(&dir).await.is_err() {
            self.unpack(remote, layer, &dir, client).await?;
        }
        self.record(&layer.digest).await?;
        Ok(dir)
    }

    /// Fetches `layer`'s blob unless the store has it and unpacks it to `dir`.
    async fn unpack(
        &self,
        remote: &Reference,
        layer: &OciDescriptor,
        dir: &Path,
        client: &oci_client::Client,
    ) -> Result<(), PullError> {
        let blob = self.blob(remote, layer, client).await?;
        let partial = dir.with_extension("partial");
        let target = dir.to_owned();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let _ = std::fs::remove_dir_all(&partial);
            super::unpack::unpack_layer(&blob, &partial)?;
            std::fs::rename(&partial, &target)
        })
        .await
        .map_err(std::io::Error::other)??;
        Ok(())
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
        let fetched = tokio::fs::metadata(&partial).await?.len();
        self.metrics.pulled.inc_by(fetched);
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

/// The layers under `root` (an image store's directory), by digest, each with its size and,
/// as its last use, when it was unpacked; deletes what is half-written (`*.partial`) or was
/// being evicted (`trash/`). Blocking; run before anything is pulled.
fn scan(root: &Path) -> HashMap<String, Held> {
    let _ = std::fs::remove_dir_all(root.join("trash"));
    for dir in [root.join("layers"), root.join("blobs/sha256")] {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.path().extension().is_some_and(|e| e == "partial") {
                let _ = std::fs::remove_dir_all(entry.path());
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    let mut found = HashMap::new();
    // A blob whose unpacking an earlier agent did not finish counts too, as a layer.
    let entries = [root.join("layers"), root.join("blobs/sha256")]
        .into_iter()
        .flat_map(|dir| std::fs::read_dir(dir).into_iter().flatten().flatten());
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        let digest = format!("sha256:{name}");
        if meridian_model::check_digest(&digest).is_err() || found.contains_key(&digest) {
            continue;
        }
        let last_used = entry
            .metadata()
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let bytes = layer_bytes(root, &name);
        found.insert(digest, Held { bytes, last_used });
    }
    found
}

/// Bytes layer `hex` takes under `root`: its blob and its unpacked files. Blocking.
fn layer_bytes(root: &Path, hex: &str) -> u64 {
    let blob = std::fs::metadata(root.join("blobs/sha256").join(hex)).map_or(0, |m| m.len());
    blob + tree_bytes(&root.join("layers").join(hex))
}

/// Bytes of the files under `dir` (not following symbolic links). Blocking.
fn tree_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            match entry.metadata() {
                Ok(m) if m.is_dir() => pending.push(entry.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Layer `n` in the store under `root`: a blob of 50 bytes and 100 bytes unpacked in two
    /// files, unpacked `age` ago; its digest.
    fn layer(root: &Path, n: u8, age: Duration) -> String {
        let hex = format!("{n:064x}");
        let dir = root.join("layers").join(&hex);
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        std::fs::write(dir.join("etc/a"), [0u8; 60]).unwrap();
        std::fs::write(dir.join("b"), [0u8; 40]).unwrap();
        std::fs::create_dir_all(root.join("blobs/sha256")).unwrap();
        std::fs::write(root.join("blobs/sha256").join(&hex), [0u8; 50]).unwrap();
        let when = SystemTime::now() - age;
        std::fs::File::open(&dir)
            .unwrap()
            .set_modified(when)
            .unwrap();
        format!("sha256:{hex}")
    }

    fn held(root: &Path, digest: &str) -> bool {
        let hex = &digest["sha256:".len()..];
        root.join("layers").join(hex).exists() && root.join("blobs/sha256").join(hex).exists()
    }

    #[tokio::test]
    async fn idle_layers_are_evicted_least_recently_used_first_and_leased_ones_never() {
        let state = tempfile::tempdir().unwrap();
        let root = state.path().join("images");
        let hour = Duration::from_secs(3600);
        let oldest = layer(&root, 1, 3 * hour);
        let older = layer(&root, 2, 2 * hour);
        let newer = layer(&root, 3, hour);
        // Left by an earlier agent: a half-unpacked layer and a half-deleted one.
        std::fs::create_dir_all(root.join("layers").join(format!("{:064x}.partial", 9))).unwrap();
        std::fs::create_dir_all(root.join("trash/x")).unwrap();
        let metrics = StoreMetrics::default();
        let store = ImageStore::open(
            state.path(),
            RegistryOptions::default(),
            350,
            metrics.clone(),
        )
        .await;
        assert_eq!(metrics.bytes.get(), 450, "three layers of 150 bytes");
        assert!(!root.join("trash").exists());
        assert!(!root.join(format!("layers/{:064x}.partial", 9)).exists());

        // The oldest is in use: the next oldest goes, and that is enough.
        let lease = store.lease(vec![oldest.clone()]);
        store.collect();
        assert!(held(&root, &oldest) && held(&root, &newer));
        assert!(
            !held(&root, &older),
            "the least recently used idle layer stays"
        );
        assert_eq!((metrics.bytes.get(), metrics.evictions.get()), (300, 1));

        // Released, the oldest was used last: a new layer over the bound evicts `newer`.
        drop(lease);
        let newest = layer(&root, 4, Duration::ZERO);
        store.record(&newest).await.unwrap();
        assert_eq!(metrics.bytes.get(), 450);
        store.collect();
        assert!(held(&root, &oldest) && held(&root, &newest));
        assert!(!held(&root, &newer));
        assert_eq!((metrics.bytes.get(), metrics.evictions.get()), (300, 2));

        // Everything in use over the bound: nothing goes.
        let _all = store.lease(vec![oldest.clone(), newest.clone()]);
        let extra = layer(&root, 5, 5 * hour);
        let _extra = store.lease(vec![extra.clone()]);
        store.record(&extra).await.unwrap();
        store.collect();
        assert!(held(&root, &oldest) && held(&root, &newest) && held(&root, &extra));
        assert_eq!(metrics.evictions.get(), 2);
    }
}
