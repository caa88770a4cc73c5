//! The in-memory tier: stored responses by primary key, each key holding its variants
//! (RFC 9111 §4.1), bounded in bytes, with a tag index for purges.
//!
//! Admission and eviction are moka's (a port of Caffeine's design): a count-min sketch of how
//! often each key is asked for decides whether a new response may displace the least
//! recently used one (TinyLFU admission), so a scan of keys seen once does not flush the
//! keys asked for often. The byte bound is applied when moka runs its pending work, which
//! the store has it do after every insert, so it holds whenever an insert has returned.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode};
use moka::notification::RemovalCause;
use moka::ops::compute::{CompResult, Op};
use moka::policy::EvictionPolicy;

use crate::age::Timing;
use crate::encoding::Coding;
use crate::key::CacheKey;
use crate::vary::Variant;

/// Most variants kept per key; a new one displaces the oldest.
pub const MAX_VARIANTS: usize = 32;

/// Bytes counted for each object besides its content, fields, variant and tags: what the
/// object's allocations, its entry, its key and moka's node take (`tests/overhead.rs`
/// measures the whole: 2,109 bytes resident per 1 KiB object with 4 fields, of which ~1,070
/// are the content's allocation, ~400 the fields, ~640 the rest), rounded up.
pub const OBJECT_OVERHEAD: usize = 672;

/// Bytes counted per tag in the tag index besides the tag and the key: two strings and the
/// entries of two maps.
const TAG_OVERHEAD: usize = 96;

/// Bytes counted per header field besides its name and value: its place in the object's
/// slice of fields, and its value's allocation (measured with the object overhead).
const FIELD_OVERHEAD: usize = 96;

/// A stored response.
#[derive(Debug, Clone)]
pub struct Object {
    /// Its status.
    pub status: StatusCode,
    /// Its fields as stored, in order: a slice of just their size (a field map keeps room for
    /// more, ~4 times as much for a few fields).
    fields: Box<[(HeaderName, HeaderValue)]>,
    /// Its content.
    pub body: Bytes,
    /// When it was received, and its age then.
    pub timing: Timing,
    /// Its freshness lifetime.
    pub lifetime: Duration,
    /// The request field values it was selected by (its `Vary`, and the service's key
    /// fields).
    pub variant: Variant,
    /// Its purge tags.
    pub tags: Vec<String>,
    /// When the response may be compressed, its content coded by the edge so far, one
    /// content per coding (made when a request first asks for the coding); `None` when it
    /// may not be.
    coded: Option<Box<[(Coding, Bytes)]>>,
}

impl Object {
    /// A stored response of `status`, `headers` and `body`, received with `timing`, fresh
    /// for `lifetime`, selected by `variant`, tagged `tags`.
    pub fn new(
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        timing: Timing,
        lifetime: Duration,
        variant: Variant,
        tags: Vec<String>,
    ) -> Object {
        // The values and the content are copied into one allocation of the object's own: the
        // bytes they came in (an upstream connection's read buffer, shared with what else was
        // read into it) are not kept alive for as long as the object is stored.
        let values: usize = headers.values().map(HeaderValue::len).sum();
        let mut own = BytesMut::with_capacity(values + body.len());
        for value in headers.values() {
            own.extend_from_slice(value.as_bytes());
        }
        own.extend_from_slice(&body);
        let mut own = own.freeze();
        let mut fields = Vec::with_capacity(headers.len());
        let mut name = None;
        for (key, value) in headers {
            // A name comes with the first of its values only.
            if let Some(key) = key {
                name = Some(key);
            }
            let copy = own.split_to(value.len());
            // The copy of a valid value is valid: the original stays should it not be.
            let mut copied = HeaderValue::from_maybe_shared(copy).unwrap_or(value.clone());
            copied.set_sensitive(value.is_sensitive());
            if let Some(name) = &name {
                fields.push((name.clone(), copied));
            }
        }
        Object {
            status,
            fields: fields.into_boxed_slice(),
            body: own,
            timing,
            lifetime,
            variant,
            tags,
            coded: None,
        }
    }

    /// The same object, marked as one whose content the edge may compress.
    pub fn compressible(self) -> Object {
        Object {
            coded: Some(self.coded.unwrap_or_default()),
            ..self
        }
    }

    /// Whether the edge may compress its content ([`Object::compressible`]).
    pub fn is_compressible(&self) -> bool {
        self.coded.is_some()
    }

    /// The same object, compressible, with its content also coded with `coding` (`content`),
    /// in place of any content it had of that coding.
    pub fn with_coded(self, coding: Coding, content: Bytes) -> Object {
        let mut list: Vec<(Coding, Bytes)> = self.coded.unwrap_or_default().into_vec();
        list.retain(|(held, _)| *held != coding);
        list.push((coding, content));
        Object {
            coded: Some(list.into_boxed_slice()),
            ..self
        }
    }

    /// The same object with `other`'s codings (of the same content, as after a `304`).
    pub fn with_codings_of(self, other: &Object) -> Object {
        Object {
            coded: other.coded.clone(),
            ..self
        }
    }

    /// Its content coded with `coding`, if it was.
    pub fn coding(&self, coding: Coding) -> Option<&Bytes> {
        self.codings()
            .iter()
            .find(|(held, _)| *held == coding)
            .map(|(_, content)| content)
    }

    /// Its content coded by the edge, one per coding made.
    pub fn codings(&self) -> &[(Coding, Bytes)] {
        self.coded.as_deref().unwrap_or_default()
    }

    /// Its fields as stored, in a map of their own.
    pub fn headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::with_capacity(self.fields.len());
        for (name, value) in self.fields.iter() {
            headers.append(name.clone(), value.clone());
        }
        headers
    }

    /// The first value of field `name`.
    pub fn header(&self, name: &HeaderName) -> Option<&HeaderValue> {
        self.fields.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// The values of field `name`, in order.
    pub fn header_values<'a>(
        &'a self,
        name: &'a HeaderName,
    ) -> impl Iterator<Item = &'a HeaderValue> + 'a {
        self.fields
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v)
    }

    /// The bytes it is counted for against the store's bound.
    pub fn weight(&self) -> usize {
        let fields: usize = self
            .fields
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + FIELD_OVERHEAD)
            .sum();
        let tags: usize = self.tags.iter().map(String::len).sum();
        let coded: usize = self.codings().iter().map(|(_, c)| c.len()).sum();
        self.body.len() + coded + fields + self.variant.size() + tags + OBJECT_OVERHEAD
    }
}

/// The store's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreLimits {
    /// Most bytes held (by [`Object::weight`]).
    pub max_bytes: u64,
    /// Largest object stored; larger ones are not.
    pub max_object_bytes: usize,
}

impl StoreLimits {
    /// The largest `max_object_bytes` allowed (moka weighs an entry in 32 bits, and an entry
    /// holds up to [`MAX_VARIANTS`] objects).
    pub const MAX_OBJECT_BYTES: usize = (u32::MAX as usize) / MAX_VARIANTS;
}

/// What a lookup found.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// Nothing stored for the key.
    UriMiss,
    /// Responses stored for the key, none selected by the request's fields.
    VaryMiss,
    /// The stored response the request selects (the most recently stored one).
    Hit(Arc<Object>),
}

/// One key's variants, most recent first, with the generation that registered its tags.
#[derive(Debug)]
struct Entry {
    generation: u64,
    variants: Vec<Arc<Object>>,
}

impl Entry {
    /// Its objects' weights, its `key` (held twice: by moka and by the entry's node), and
    /// what the tag index holds for it: per tag, the tag, the key and map entries.
    fn weight(&self, key: &CacheKey) -> u32 {
        let objects: usize = self.variants.iter().map(|o| o.weight()).sum();
        let index: usize = self
            .variants
            .iter()
            .flat_map(|o| &o.tags)
            .map(|tag| tag.len() + key.as_str().len() + TAG_OVERHEAD)
            .sum();
        u32::try_from(objects + 2 * key.as_str().len() + index).unwrap_or(u32::MAX)
    }
}

/// Tag → keys carrying it, each with the generation of the entry that registered it.
type TagIndex = HashMap<String, HashMap<CacheKey, u64>>;

/// The in-memory store.
pub struct Store {
    objects: moka::sync::Cache<CacheKey, Arc<Entry>>,
    tags: Arc<Mutex<TagIndex>>,
    generations: AtomicU64,
    /// Held to read by a replacement of a stored object ([`Store::recode`]), to write by a
    /// purge: a purge waits for a replacement under way, and a replacement for a purge, so
    /// that a purged response is never put back.
    purging: RwLock<()>,
    limits: StoreLimits,
}

impl Store {
    /// An empty store with `limits` (`max_object_bytes` capped at
    /// [`StoreLimits::MAX_OBJECT_BYTES`]).
    pub fn new(limits: StoreLimits) -> Store {
        let tags: Arc<Mutex<TagIndex>> = Arc::default();
        let index = Arc::clone(&tags);
        let objects = moka::sync::Cache::builder()
            .max_capacity(limits.max_bytes)
            .eviction_policy(EvictionPolicy::tiny_lfu())
            .weigher(|key: &CacheKey, entry: &Arc<Entry>| entry.weight(key))
            .eviction_listener(
                move |key: Arc<CacheKey>, entry: Arc<Entry>, _cause: RemovalCause| {
                    unregister(&index, &key, &entry);
                },
            )
            .build();
        Store {
            objects,
            tags,
            generations: AtomicU64::new(0),
            purging: RwLock::new(()),
            limits: StoreLimits {
                max_object_bytes: limits.max_object_bytes.min(StoreLimits::MAX_OBJECT_BYTES),
                ..limits
            },
        }
    }

    /// The stored response for `key` that a request with `request` fields selects.
    pub fn lookup(&self, key: &CacheKey, request: &HeaderMap) -> Lookup {
        let Some(entry) = self.objects.get(key) else {
            return Lookup::UriMiss;
        };
        match entry.variants.iter().find(|o| o.variant.matches(request)) {
            Some(object) => Lookup::Hit(Arc::clone(object)),
            None => Lookup::VaryMiss,
        }
    }

    /// Stores `object` under `key`, replacing the variant with the same field values;
    /// `false` when it is larger than the largest object stored. Two inserts of new variants
    /// of one key at once may keep only one of them (the other is fetched again later).
    pub fn insert(&self, key: CacheKey, object: Arc<Object>) -> bool {
        if object.weight() > self.limits.max_object_bytes {
            return false;
        }
        let mut variants = vec![Arc::clone(&object)];
        if let Some(existing) = self.objects.get(&key) {
            let others = existing
                .variants
                .iter()
                .filter(|o| o.variant != object.variant);
            variants.extend(others.take(MAX_VARIANTS - 1).cloned());
        }
        let generation = self.register(&key, &variants);
        let entry = Arc::new(Entry {
            generation,
            variants,
        });
        self.objects.insert(key, entry);
        self.objects.run_pending_tasks();
        true
    }

    /// Puts `recoded` (the same response as `held`, with another coding of its content made)
    /// in the place of `held` among `key`'s variants, if `held` is still stored there: a
    /// purge or a newer response in between wins. Whether it did.
    pub fn recode(&self, key: &CacheKey, held: &Arc<Object>, recoded: &Arc<Object>) -> bool {
        if recoded.weight() > self.limits.max_object_bytes {
            return false;
        }
        let purges = self.purging.read().unwrap_or_else(PoisonError::into_inner);
        let result = self.objects.entry(key.clone()).and_compute_with(|entry| {
            let Some(entry) = entry else {
                return Op::Nop;
            };
            let mut variants = entry.value().variants.clone();
            let Some(at) = variants.iter().position(|o| Arc::ptr_eq(o, held)) else {
                return Op::Nop;
            };
            variants[at] = Arc::clone(recoded);
            let generation = self.register(key, &variants);
            Op::Put(Arc::new(Entry {
                generation,
                variants,
            }))
        });
        drop(purges);
        self.objects.run_pending_tasks();
        matches!(result, CompResult::ReplacedWith(_))
    }

    /// Registers the tags of `variants`, about to be stored under `key`, under a new
    /// generation; the generation.
    fn register(&self, key: &CacheKey, variants: &[Arc<Object>]) -> u64 {
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        let mut index = self.tags.lock().unwrap_or_else(PoisonError::into_inner);
        for tag in variants.iter().flat_map(|o| &o.tags) {
            index
                .entry(tag.clone())
                .or_default()
                .insert(key.clone(), generation);
        }
        generation
    }

    /// Waits for replacements under way ([`Store::recode`]); held while purging.
    fn purging(&self) -> std::sync::RwLockWriteGuard<'_, ()> {
        self.purging.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Removes every response stored under `key`; whether there were any.
    pub fn purge_key(&self, key: &CacheKey) -> bool {
        let _purging = self.purging();
        let removed = self.objects.remove(key).is_some();
        self.objects.run_pending_tasks();
        removed
    }

    /// Removes every response tagged `tag` whose key `matches`; the number of keys removed.
    pub fn purge_tag(&self, tag: &str, matches: impl Fn(&CacheKey) -> bool) -> usize {
        let _purging = self.purging();
        let keys: Vec<CacheKey> = {
            let mut index = self.tags.lock().unwrap_or_else(PoisonError::into_inner);
            let Some(tagged) = index.get_mut(tag) else {
                return 0;
            };
            let taken: Vec<CacheKey> = tagged.keys().filter(|key| matches(key)).cloned().collect();
            for key in &taken {
                tagged.remove(key);
            }
            if tagged.is_empty() {
                index.remove(tag);
            }
            taken
        };
        let removed = keys
            .iter()
            .filter(|key| self.objects.remove(*key).is_some())
            .count();
        self.objects.run_pending_tasks();
        removed
    }

    /// Removes every response whose key `matches`; the number of keys removed. It looks at
    /// every key held.
    pub fn purge_matching(&self, matches: impl Fn(&CacheKey) -> bool) -> usize {
        let _purging = self.purging();
        let keys: Vec<Arc<CacheKey>> = self
            .objects
            .iter()
            .filter(|(key, _)| matches(key))
            .map(|(key, _)| key)
            .collect();
        let removed = keys
            .iter()
            .filter(|key| self.objects.remove(key.as_ref()).is_some())
            .count();
        self.objects.run_pending_tasks();
        removed
    }

    /// Removes everything.
    pub fn purge_all(&self) {
        let _purging = self.purging();
        self.objects.invalidate_all();
        self.objects.run_pending_tasks();
    }

    /// The store's bounds.
    pub fn limits(&self) -> StoreLimits {
        self.limits
    }

    /// Bytes held (by [`Object::weight`]).
    pub fn bytes(&self) -> u64 {
        self.objects.weighted_size()
    }

    /// Keys held.
    pub fn keys(&self) -> u64 {
        self.objects.entry_count()
    }

    /// Keys the tag index lists for `tag` (for tests and metrics).
    pub fn tagged(&self, tag: &str) -> usize {
        let index = self.tags.lock().unwrap_or_else(PoisonError::into_inner);
        index.get(tag).map_or(0, HashMap::len)
    }
}

/// Drops `entry`'s tags from the index, unless a later entry of the key registered them.
fn unregister(index: &Mutex<TagIndex>, key: &CacheKey, entry: &Entry) {
    let mut index = index.lock().unwrap_or_else(PoisonError::into_inner);
    for tag in entry.variants.iter().flat_map(|o| &o.tags) {
        if let Some(keys) = index.get_mut(tag) {
            if keys.get(key) == Some(&entry.generation) {
                keys.remove(key);
            }
            if keys.is_empty() {
                index.remove(tag);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::QueryKey;
    use http::header::HeaderName;
    use std::time::SystemTime;

    const LIMITS: StoreLimits = StoreLimits {
        max_bytes: 1 << 20,
        max_object_bytes: 64 << 10,
    };

    fn key(path: &str) -> CacheKey {
        CacheKey::of_uri("https", "shop.example.com", path, &QueryKey::All)
    }

    fn object(body: &'static str, variant: Variant, tags: &[&str]) -> Arc<Object> {
        Arc::new(Object::new(
            StatusCode::OK,
            HeaderMap::new(),
            Bytes::from_static(body.as_bytes()),
            Timing::new(&HeaderMap::new(), SystemTime::now(), SystemTime::now()),
            Duration::from_secs(60),
            variant,
            tags.iter().map(|t| t.to_string()).collect(),
        ))
    }

    fn request(list: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in list {
            headers.append(*name, value.parse().unwrap());
        }
        headers
    }

    fn body(lookup: Lookup) -> Option<Bytes> {
        match lookup {
            Lookup::Hit(object) => Some(object.body.clone()),
            _ => None,
        }
    }

    #[test]
    fn a_coding_made_later_replaces_the_object_only_while_it_is_stored() {
        let store = Store::new(LIMITS);
        let held = object("hello", Variant::default(), &["t"]);
        assert!(store.insert(key("/a"), Arc::clone(&held)));
        let coded = |from: &Arc<Object>| {
            let object = Object::clone(from).compressible();
            Arc::new(object.with_coded(Coding::Zstd, Bytes::from_static(b"z")))
        };
        let recoded = coded(&held);
        assert!(store.recode(&key("/a"), &held, &recoded));
        let Lookup::Hit(found) = store.lookup(&key("/a"), &HeaderMap::new()) else {
            panic!("not stored");
        };
        assert_eq!(found.coding(Coding::Zstd).unwrap(), "z");
        assert!(found.coding(Coding::Brotli).is_none());
        assert!(store.bytes() > u64::try_from(held.weight()).unwrap());
        // Its tags still purge it.
        assert_eq!(store.tagged("t"), 1);
        // Not once it was replaced (`held` is no longer there), nor once it was purged.
        assert!(!store.recode(&key("/a"), &held, &coded(&held)));
        assert_eq!(store.purge_tag("t", |_| true), 1);
        assert!(!store.recode(&key("/a"), &found, &coded(&found)));
        assert!(matches!(
            store.lookup(&key("/a"), &HeaderMap::new()),
            Lookup::UriMiss
        ));
    }

    #[test]
    fn rfc9111_4_1_variants_of_one_key_are_selected_by_the_request() {
        let store = Store::new(LIMITS);
        let names = [HeaderName::from_static("accept-language")];
        let en = Variant::of(&names, &request(&[("accept-language", "en")]));
        let fr = Variant::of(&names, &request(&[("accept-language", "fr")]));
        assert!(matches!(
            store.lookup(&key("/a"), &HeaderMap::new()),
            Lookup::UriMiss
        ));
        assert!(store.insert(key("/a"), object("hello", en.clone(), &[])));
        assert!(store.insert(key("/a"), object("bonjour", fr, &[])));
        assert_eq!(
            body(store.lookup(&key("/a"), &request(&[("accept-language", "en")]))).unwrap(),
            "hello"
        );
        assert_eq!(
            body(store.lookup(&key("/a"), &request(&[("accept-language", "fr")]))).unwrap(),
            "bonjour"
        );
        assert!(matches!(
            store.lookup(&key("/a"), &request(&[("accept-language", "de")])),
            Lookup::VaryMiss
        ));
        // A new response for a variant replaces it.
        assert!(store.insert(key("/a"), object("hi", en, &[])));
        assert_eq!(
            body(store.lookup(&key("/a"), &request(&[("accept-language", "en")]))).unwrap(),
            "hi"
        );
        assert_eq!(store.keys(), 1);
    }

    #[test]
    fn purges_by_key_tag_and_all() {
        let store = Store::new(LIMITS);
        store.insert(
            key("/p/1"),
            object("1", Variant::default(), &["product-1", "catalog"]),
        );
        store.insert(
            key("/p/2"),
            object("2", Variant::default(), &["product-2", "catalog"]),
        );
        store.insert(key("/p/3"), object("3", Variant::default(), &[]));
        assert_eq!(store.tagged("catalog"), 2);
        assert_eq!(store.purge_tag("product-1", |_| true), 1);
        assert!(matches!(
            store.lookup(&key("/p/1"), &HeaderMap::new()),
            Lookup::UriMiss
        ));
        assert_eq!(
            store.tagged("catalog"),
            1,
            "the purged key left the other tags"
        );
        assert!(store.purge_key(&key("/p/3")));
        assert!(!store.purge_key(&key("/p/3")));
        assert_eq!(store.purge_tag("catalog", |_| true), 1);
        assert_eq!(store.keys(), 0);
        store.insert(key("/p/4"), object("4", Variant::default(), &["x"]));
        store.purge_all();
        assert!(matches!(
            store.lookup(&key("/p/4"), &HeaderMap::new()),
            Lookup::UriMiss
        ));
        assert_eq!(store.bytes(), 0);
    }

    #[test]
    fn purges_by_tag_or_by_key_remove_only_the_keys_that_match() {
        let store = Store::new(LIMITS);
        let other = CacheKey::of_uri("https", "other.example.org", "/p/1", &QueryKey::All);
        for key in [key("/p/1"), key("/p/2"), other.clone()] {
            store.insert(key, object("x", Variant::default(), &["catalog"]));
        }
        let shop = |key: &CacheKey| key.host() == "shop.example.com";
        assert_eq!(
            store.purge_tag("catalog", |key| key.host() == "other.example.org"),
            1
        );
        assert_eq!(store.tagged("catalog"), 2, "the other keys stay indexed");
        assert_eq!(store.purge_tag("catalog", |_| false), 0);
        store.insert(other.clone(), object("x", Variant::default(), &[]));
        assert_eq!(store.purge_matching(shop), 2);
        assert_eq!(store.keys(), 1);
        assert!(matches!(
            store.lookup(&other, &HeaderMap::new()),
            Lookup::Hit(_)
        ));
        assert_eq!(store.tagged("catalog"), 0);
    }

    #[test]
    fn a_replaced_entry_keeps_the_tags_of_its_replacement() {
        let store = Store::new(LIMITS);
        store.insert(key("/a"), object("1", Variant::default(), &["t"]));
        store.insert(key("/a"), object("2", Variant::default(), &["t"]));
        assert_eq!(store.tagged("t"), 1);
        assert_eq!(store.purge_tag("t", |_| true), 1);
    }

    #[test]
    fn the_tag_index_and_the_key_are_counted() {
        let store = Store::new(LIMITS);
        store.insert(key("/a"), object("x", Variant::default(), &[]));
        let untagged = store.bytes();
        store.purge_all();
        store.insert(key("/a"), object("x", Variant::default(), &["t1", "t2"]));
        let per_tag = TAG_OVERHEAD + key("/a").as_str().len();
        assert_eq!(store.bytes(), untagged + 2 * (per_tag as u64 + 2) + 4);
    }

    #[test]
    fn an_object_over_the_largest_size_is_not_stored() {
        let store = Store::new(StoreLimits {
            max_bytes: 1 << 20,
            max_object_bytes: 800,
        });
        assert!(!store.insert(
            key("/big"),
            object("x".repeat(200).leak(), Variant::default(), &[])
        ));
        assert!(store.insert(key("/small"), object("x", Variant::default(), &[])));
    }
}
