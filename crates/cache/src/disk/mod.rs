//! The optional disk tier: stored responses kept in files of a directory, one per key and
//! variant ([`record`]), bounded in bytes (the least recently used go first), surviving a
//! restart together with the number of the last purge applied to them.
//!
//! Every method does blocking file I/O, except the purges, which only change the index (a
//! lookup no longer finds what they name from the moment they return) and give back the
//! files to delete: the caller deletes them ([`DiskTier::delete`]) and then records the
//! purge's number ([`DiskTier::record_applied`]) off its async workers, in that order, so the
//! number on disk never runs ahead of the files. A file is written whole under a temporary
//! name and renamed, and checked against its checksums when read: a file a crash cut short
//! is dropped, never served.
//!
//! After a restart the tier serves nothing until its owner says the purges made meanwhile
//! were applied ([`DiskTier::serve`]).

pub mod record;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use http::HeaderMap;

use crate::key::CacheKey;
use crate::store::Object;
use crate::vary::Variant;

/// The file of the last purge number applied, in the tier's directory.
const PURGES_FILE: &str = "purges";
/// The directory of the records, in the tier's directory.
const OBJECTS_DIR: &str = "objects";
/// The suffix of a file being written.
const TEMPORARY: &str = ".tmp";
/// The first bytes of the purges file.
const PURGES_MAGIC: &[u8; 5] = b"MRDP\x01";

/// One record held.
#[derive(Debug)]
struct Meta {
    key: CacheKey,
    variant: Variant,
    tags: Vec<String>,
    size: u64,
    /// When it was last used (the tier's clock of uses).
    used: u64,
}

/// What the tier holds, by file name.
#[derive(Debug, Default)]
struct Index {
    files: HashMap<String, Meta>,
    by_key: HashMap<CacheKey, Vec<String>>,
    /// File names by their last use, oldest first.
    recency: BTreeMap<u64, String>,
    clock: u64,
    bytes: u64,
}

impl Index {
    fn add(&mut self, name: String, meta: Meta) {
        self.remove(&name);
        self.bytes += meta.size;
        self.recency.insert(meta.used, name.clone());
        self.by_key
            .entry(meta.key.clone())
            .or_default()
            .push(name.clone());
        self.files.insert(name, meta);
    }

    fn remove(&mut self, name: &str) -> Option<Meta> {
        let meta = self.files.remove(name)?;
        self.bytes -= meta.size;
        self.recency.remove(&meta.used);
        if let Some(names) = self.by_key.get_mut(&meta.key) {
            names.retain(|n| n != name);
            if names.is_empty() {
                self.by_key.remove(&meta.key);
            }
        }
        Some(meta)
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    fn touch(&mut self, name: &str) {
        let used = self.tick();
        if let Some(meta) = self.files.get_mut(name) {
            self.recency.remove(&meta.used);
            meta.used = used;
            self.recency.insert(used, name.to_owned());
        }
    }

    /// Removes the records `matches` selects; their file names.
    fn remove_where(&mut self, matches: impl Fn(&Meta) -> bool) -> Vec<String> {
        let names: Vec<String> = self
            .files
            .iter()
            .filter(|(_, meta)| matches(meta))
            .map(|(name, _)| name.clone())
            .collect();
        for name in &names {
            self.remove(name);
        }
        names
    }
}

/// The disk tier (see the module's documentation).
#[derive(Debug)]
pub struct DiskTier {
    dir: PathBuf,
    max_bytes: u64,
    index: Mutex<Index>,
    /// Counts purges: a record read or written across one is not used.
    epoch: AtomicU64,
    serving: AtomicBool,
    /// The last purge number recorded when the tier was opened.
    applied: Option<u64>,
}

impl DiskTier {
    /// Opens the tier in `dir` (made if missing), holding at most `max_bytes` of records:
    /// reads the head of every record (dropping those that do not check out and files left
    /// half-written), the least recently written first to go.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<DiskTier> {
        let objects = dir.join(OBJECTS_DIR);
        fs::create_dir_all(&objects)?;
        let mut found = Vec::new();
        for entry in fs::read_dir(&objects)? {
            let entry = entry?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let head = (!name.ends_with(TEMPORARY))
                .then(|| read_head(&path))
                .and_then(Result::ok)
                .filter(|(head, _)| file_name(&head.key, &head.variant) == name);
            match head {
                Some((head, size)) => {
                    let modified = entry.metadata()?.modified()?;
                    found.push((modified, name, head, size));
                }
                None => {
                    tracing::info!(file = %path.display(), "a cache file that does not check out was removed");
                    remove(&path);
                }
            }
        }
        found.sort_by_key(|(modified, ..)| *modified);
        let mut index = Index::default();
        for (_, name, head, size) in found {
            let used = index.tick();
            let meta = Meta {
                key: head.key,
                variant: head.variant,
                tags: head.tags,
                size,
                used,
            };
            index.add(name, meta);
        }
        let tier = DiskTier {
            dir: dir.to_owned(),
            max_bytes,
            index: Mutex::new(index),
            epoch: AtomicU64::new(0),
            serving: AtomicBool::new(false),
            applied: read_applied(&dir.join(PURGES_FILE)),
        };
        let evicted = tier.evict(&mut tier.lock(), 0);
        tier.delete(&evicted);
        Ok(tier)
    }

    /// The number of the last purge applied to the records when the tier was opened; `None`
    /// when it is not known (a new tier, or the file does not check out).
    pub fn applied(&self) -> Option<u64> {
        self.applied
    }

    /// From now on, lookups find what the tier holds: the purges made while it was closed
    /// have been applied.
    pub fn serve(&self) {
        self.serving.store(true, Ordering::SeqCst);
    }

    /// Counts purges (see [`DiskTier::lookup`] and [`DiskTier::write`]).
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// The record stored for `key` that a request with `request` fields selects, if the tier
    /// serves and no purge came between finding and reading it; with the epoch it was read
    /// in. A record that does not check out is dropped.
    pub fn lookup(&self, key: &CacheKey, request: &HeaderMap) -> Option<(Object, u64)> {
        if !self.serving.load(Ordering::SeqCst) {
            return None;
        }
        let (name, epoch) = {
            let mut index = self.lock();
            let names = index.by_key.get(key)?;
            let name = names
                .iter()
                .find(|name| {
                    index
                        .files
                        .get(*name)
                        .is_some_and(|meta| meta.variant.matches(request))
                })?
                .clone();
            index.touch(&name);
            (name, self.epoch())
        };
        let path = self.object_path(&name);
        let read = fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|bytes| record::decode(&bytes).map_err(|e| e.to_string()));
        match read {
            Ok((stored, object)) if stored == *key && self.epoch() == epoch => {
                Some((object, epoch))
            }
            Ok(_) => None,
            Err(error) => {
                tracing::info!(file = %path.display(), %error, "a cache file that does not check out was removed");
                let mut index = self.lock();
                if self.epoch() == epoch {
                    index.remove(&name);
                    remove(&path);
                }
                None
            }
        }
    }

    /// Writes `object` for `key`, unless a purge came since `epoch` or it is larger than the
    /// tier; evicts the least recently used records beyond the bound.
    pub fn write(&self, key: &CacheKey, object: &Object, epoch: u64) -> io::Result<()> {
        if self.epoch() != epoch {
            return Ok(());
        }
        let bytes = record::encode(key, object);
        let size = bytes.len() as u64;
        if size > self.max_bytes {
            return Ok(());
        }
        let name = file_name(key, &object.variant);
        let path = self.object_path(&name);
        // Room first, so that the files never hold more than the bound: for the new record,
        // beside the one it replaces until it is renamed over it.
        let evicted = {
            let mut index = self.lock();
            let replaced = index.files.get(&name).map_or(0, |meta| meta.size);
            self.evict(&mut index, size + replaced)
        };
        self.delete(&evicted);
        let temporary = self.object_path(&format!("{name}{TEMPORARY}"));
        fs::write(&temporary, &bytes)?;
        fs::rename(&temporary, &path)?;
        let mut index = self.lock();
        if self.epoch() != epoch {
            // A purge came while it was written: it may name it.
            drop(index);
            remove(&path);
            return Ok(());
        }
        let used = index.tick();
        let meta = Meta {
            key: key.clone(),
            variant: object.variant.clone(),
            tags: object.tags.clone(),
            size,
            used,
        };
        index.add(name, meta);
        Ok(())
    }

    /// Removes the records of `key` from the index; their files, to [`DiskTier::delete`].
    pub fn purge_key(&self, key: &CacheKey) -> Vec<String> {
        let mut index = self.lock();
        self.epoch.fetch_add(1, Ordering::SeqCst);
        let names = index.by_key.get(key).cloned().unwrap_or_default();
        for name in &names {
            index.remove(name);
        }
        names
    }

    /// Removes the records tagged `tag` whose key `matches`.
    pub fn purge_tag(&self, tag: &str, matches: impl Fn(&CacheKey) -> bool) -> Vec<String> {
        self.purge(|meta| meta.tags.iter().any(|t| t == tag) && matches(&meta.key))
    }

    /// Removes the records whose key `matches`.
    pub fn purge_matching(&self, matches: impl Fn(&CacheKey) -> bool) -> Vec<String> {
        self.purge(|meta| matches(&meta.key))
    }

    /// Removes every record.
    pub fn purge_all(&self) -> Vec<String> {
        self.purge(|_| true)
    }

    fn purge(&self, matches: impl Fn(&Meta) -> bool) -> Vec<String> {
        let mut index = self.lock();
        self.epoch.fetch_add(1, Ordering::SeqCst);
        index.remove_where(matches)
    }

    /// Deletes the files of records removed from the index.
    pub fn delete(&self, names: &[String]) {
        for name in names {
            remove(&self.object_path(name));
        }
    }

    /// Records `number` as the last purge applied (the files it removed deleted first).
    pub fn record_applied(&self, number: u64) -> io::Result<()> {
        let mut bytes = PURGES_MAGIC.to_vec();
        bytes.extend_from_slice(&number.to_le_bytes());
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        let path = self.dir.join(PURGES_FILE);
        let temporary = self.dir.join(format!("{PURGES_FILE}{TEMPORARY}"));
        fs::write(&temporary, &bytes)?;
        fs::File::open(&temporary)?.sync_all()?;
        fs::rename(&temporary, &path)?;
        fs::File::open(&self.dir)?.sync_all()
    }

    /// Bytes of the records held.
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    /// Records held.
    pub fn records(&self) -> usize {
        self.lock().files.len()
    }

    /// The most bytes of records held.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Removes the least recently used records until `room` more bytes fit within the
    /// bound; their files.
    fn evict(&self, index: &mut Index, room: u64) -> Vec<String> {
        let mut evicted = Vec::new();
        while index.bytes + room > self.max_bytes {
            let Some(name) = index.recency.values().next().cloned() else {
                break;
            };
            index.remove(&name);
            evicted.push(name);
        }
        evicted
    }

    fn object_path(&self, name: &str) -> PathBuf {
        self.dir.join(OBJECTS_DIR).join(name)
    }

    fn lock(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The file name of the record of `key`'s `variant`: a hash of both (FNV-1a, 64 bits; a
/// record's head names its key and variant, so a collision replaces, never confuses).
fn file_name(key: &CacheKey, variant: &Variant) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for byte in bytes {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    };
    feed(key.as_str().as_bytes());
    for (name, value) in variant.fields() {
        feed(b"\n");
        feed(name.as_str().as_bytes());
        match value {
            Some(value) => {
                feed(b"=");
                feed(value.as_bytes());
            }
            None => feed(b"!"),
        }
    }
    format!("{hash:016x}")
}

/// The head of the record at `path`, and the file's size.
fn read_head(path: &Path) -> io::Result<(record::Head, u64)> {
    let mut file = fs::File::open(path)?;
    let size = file.metadata()?.len();
    let mut prefix = [0u8; record::PREFIX];
    file.read_exact(&mut prefix)?;
    let corrupt = |e: record::Corrupt| io::Error::new(io::ErrorKind::InvalidData, e);
    let length = record::head_length(&prefix).map_err(corrupt)?;
    if length as u64 > size {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "head too long"));
    }
    let mut bytes = prefix.to_vec();
    bytes.resize(record::PREFIX + length + 4, 0);
    file.read_exact(&mut bytes[record::PREFIX..])?;
    Ok((record::decode_head(&bytes).map_err(corrupt)?, size))
}

/// The number in the purges file at `path`, if it checks out.
fn read_applied(path: &Path) -> Option<u64> {
    let bytes = fs::read(path).ok()?;
    let (body, crc) = bytes.split_last_chunk::<4>()?;
    let number = body.strip_prefix(PURGES_MAGIC)?;
    (u32::from_le_bytes(*crc) == crc32fast::hash(body))
        .then(|| Some(u64::from_le_bytes(number.try_into().ok()?)))
        .flatten()
}

/// Removes a file; one already gone is fine.
fn remove(path: &Path) {
    if let Err(error) = fs::remove_file(path) {
        if error.kind() != io::ErrorKind::NotFound {
            tracing::warn!(file = %path.display(), %error, "a cache file could not be removed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::age::Timing;
    use crate::key::QueryKey;
    use bytes::Bytes;
    use http::StatusCode;
    use std::time::{Duration, SystemTime};

    fn key(path: &str) -> CacheKey {
        CacheKey::of_uri("https", "shop.example.com", path, &QueryKey::All)
    }

    fn object(body: &str, tags: &[&str]) -> Object {
        Object::new(
            StatusCode::OK,
            HeaderMap::new(),
            Bytes::copy_from_slice(body.as_bytes()),
            Timing::new(&HeaderMap::new(), SystemTime::now(), SystemTime::now()),
            Duration::from_secs(60),
            Variant::default(),
            tags.iter().map(|t| t.to_string()).collect(),
        )
    }

    fn body(tier: &DiskTier, path: &str) -> Option<Bytes> {
        tier.lookup(&key(path), &HeaderMap::new())
            .map(|(object, _)| object.body)
    }

    fn files(dir: &Path) -> usize {
        fs::read_dir(dir.join(OBJECTS_DIR)).unwrap().count()
    }

    #[test]
    fn records_and_the_last_purge_applied_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let tier = DiskTier::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(tier.applied(), None);
        tier.serve();
        tier.write(&key("/a"), &object("a", &["t"]), tier.epoch())
            .unwrap();
        tier.write(&key("/b"), &object("b", &[]), tier.epoch())
            .unwrap();
        tier.record_applied(7).unwrap();
        assert_eq!(body(&tier, "/a").unwrap(), "a");
        drop(tier);
        let tier = DiskTier::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(tier.applied(), Some(7));
        assert_eq!(tier.records(), 2);
        // Nothing is served until the purges made meanwhile are applied.
        assert!(body(&tier, "/a").is_none());
        let names = tier.purge_tag("t", |_| true);
        tier.delete(&names);
        tier.record_applied(8).unwrap();
        tier.serve();
        assert!(body(&tier, "/a").is_none());
        assert_eq!(body(&tier, "/b").unwrap(), "b");
        drop(tier);
        let tier = DiskTier::open(dir.path(), 1 << 20).unwrap();
        assert_eq!((tier.applied(), tier.records()), (Some(8), 1));
    }

    #[test]
    fn a_write_begun_before_a_purge_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let tier = DiskTier::open(dir.path(), 1 << 20).unwrap();
        tier.serve();
        let epoch = tier.epoch();
        tier.delete(&tier.purge_all());
        tier.write(&key("/a"), &object("a", &[]), epoch).unwrap();
        assert!(body(&tier, "/a").is_none());
        assert_eq!(files(dir.path()), 0);
    }

    #[test]
    fn files_that_do_not_check_out_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let tier = DiskTier::open(dir.path(), 1 << 20).unwrap();
        tier.serve();
        for path in ["/a", "/b", "/c"] {
            tier.write(&key(path), &object(path, &[]), tier.epoch())
                .unwrap();
        }
        let name = |path: &str| file_name(&key(path), &Variant::default());
        let objects = dir.path().join(OBJECTS_DIR);
        // Cut short (a crash while writing), and a content byte changed.
        let whole = fs::read(objects.join(name("/a"))).unwrap();
        fs::write(objects.join(name("/a")), &whole[..whole.len() / 2]).unwrap();
        let mut changed = fs::read(objects.join(name("/b"))).unwrap();
        let at = changed.len() - 6;
        changed[at] ^= 1;
        fs::write(objects.join(name("/b")), changed).unwrap();
        fs::write(objects.join("0123.tmp"), b"half").unwrap();
        fs::write(dir.path().join(PURGES_FILE), b"MRDP\x01garbage").unwrap();
        drop(tier);
        let tier = DiskTier::open(dir.path(), 1 << 20).unwrap();
        tier.serve();
        assert_eq!(tier.applied(), None);
        assert!(body(&tier, "/a").is_none());
        assert!(body(&tier, "/b").is_none());
        assert_eq!(body(&tier, "/c").unwrap(), "/c");
        assert_eq!((tier.records(), files(dir.path())), (1, 1));
    }

    #[test]
    fn the_bound_holds_under_a_scan_of_ten_times_the_tier_and_keeps_what_is_used() {
        let dir = tempfile::tempdir().unwrap();
        let max = 64 << 10;
        let tier = DiskTier::open(dir.path(), max).unwrap();
        tier.serve();
        let content = "x".repeat(1000);
        tier.write(&key("/hot"), &object(&content, &[]), tier.epoch())
            .unwrap();
        let mut written = 0;
        let mut i = 0;
        while written < 10 * max {
            let path = format!("/scan/{i}");
            tier.write(&key(&path), &object(&content, &[]), tier.epoch())
                .unwrap();
            written += 1000;
            i += 1;
            assert!(tier.bytes() <= max, "{} bytes after {i}", tier.bytes());
            // The hot record is used between the scan's writes.
            assert!(
                body(&tier, "/hot").is_some(),
                "the hot record went after {i}"
            );
        }
        assert!(tier.bytes() > max / 2);
        assert_eq!(files(dir.path()), tier.records());
        assert!(body(&tier, "/scan/0").is_none());
        drop(tier);
        let tier = DiskTier::open(dir.path(), max / 2).unwrap();
        assert!(tier.bytes() <= max / 2);
        assert_eq!(files(dir.path()), tier.records());
    }
}
