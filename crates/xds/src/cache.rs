//! The resource cache: the current version of every resource, by type URL and name, and who is
//! subscribed to what, so that an update wakes only the streams that asked for what changed.
//!
//! Names in the cache are global; a stream that serves a tenant sees them through a
//! [`crate::Scope`].
//!
//! Work in proportion to subscribers: a publisher may leave its resources behind while no
//! stream follows the cache ([`Cache::followers`]: how many there are) and say so
//! ([`Cache::fall_behind`]); a stream that opens then waits to be answered until the
//! publisher has caught up ([`Cache::caught_up`]), so that it is never sent what the
//! publisher left behind. The cache lock is a plain mutex, held only for map operations, never
//! across an `.await`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Instant;

use envoy_types::pb::google::protobuf::Any;
use tokio::sync::{watch, Notify};

/// One resource as stored: its bytes and the version they were given.
#[derive(Debug)]
pub struct Versioned {
    /// The resource's version: a digest of its content, so that it changes with the content and
    /// a restarted server gives the same content the same version (a resuming client that holds
    /// it is not sent it again, and one that holds other content is).
    pub version: String,
    /// The encoded resource.
    pub resource: Any,
    /// When this version entered the cache (start of the push and convergence clocks).
    pub changed_at: Instant,
    /// Who still has to acknowledge this version, when it was put with
    /// [`Cache::apply_tracked`].
    pub(crate) delivery: Option<Arc<Awaited>>,
}

/// The acknowledgements a [`Delivery`] waits for: (stream, cache name) pairs; and how many
/// were owed and came.
#[derive(Debug, Default)]
pub(crate) struct Awaited {
    pending: watch::Sender<HashSet<(u64, String)>>,
    owed: AtomicUsize,
    came: AtomicUsize,
}

impl Awaited {
    /// Stream `id` acknowledged a response carrying `name` at this version.
    fn acknowledged(&self, id: u64, name: &str) {
        self.pending.send_if_modified(|pending| {
            let removed = pending.remove(&(id, name.to_owned()));
            if removed {
                self.came.fetch_add(1, Ordering::Relaxed);
            }
            removed
        });
    }

    /// Stream `id` is gone: it will acknowledge nothing more.
    fn gone(&self, id: u64) {
        self.pending.send_if_modified(|pending| {
            let before = pending.len();
            pending.retain(|(stream, _)| *stream != id);
            pending.len() != before
        });
    }
}

/// The acknowledgements of the resources one [`Cache::apply_tracked`] put: every stream
/// subscribed to one of them at that moment owes an ACK of a response carrying its new version,
/// until it acknowledges or goes away. Streams that subscribe later owe nothing. A NACK or a
/// newer version put before the push leaves the ACK owed: wait with a timeout.
#[derive(Debug, Clone)]
pub struct Delivery(Arc<Awaited>);

impl Delivery {
    /// How many (stream, resource) acknowledgements are still owed.
    pub fn pending(&self) -> usize {
        self.0.pending.borrow().len()
    }

    /// How many (stream, resource) acknowledgements were owed when the resources were put, and
    /// how many of them came so far (the others are pending, or their streams went away).
    pub fn tally(&self) -> Tally {
        Tally {
            owed: self.0.owed.load(Ordering::Relaxed),
            acknowledged: self.0.came.load(Ordering::Relaxed),
        }
    }

    /// Completes once every acknowledgement owed has come (at once when none is owed).
    pub async fn acknowledged(&self) {
        let mut pending = self.0.pending.subscribe();
        // The sender lives in `self`: waiting cannot fail.
        let _ = pending.wait_for(HashSet::is_empty).await;
    }

    /// Completes once every acknowledgement owed of resource `name` (a cache name) has come,
    /// whatever the other resources put with it still wait for.
    pub async fn acknowledged_name(&self, name: &str) {
        let mut pending = self.0.pending.subscribe();
        let _ = pending
            .wait_for(|pending| !pending.iter().any(|(_, owed)| owed == name))
            .await;
    }
}

/// What a [`Delivery`] was owed, and what came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// (stream, resource) acknowledgements owed when the resources were put.
    pub owed: usize,
    /// Of which came.
    pub acknowledged: usize,
}

impl Versioned {
    /// The acknowledgements of this version, when it was put with [`Cache::apply_tracked`].
    pub fn delivery(&self) -> Option<Delivery> {
        self.delivery.clone().map(Delivery)
    }
}

/// A change to one type: resources to add or replace, and names to remove.
#[derive(Debug, Default)]
pub struct Update {
    /// Resources to add or replace, by name.
    pub put: Vec<(String, Any)>,
    /// Names to remove.
    pub remove: Vec<String>,
}

#[derive(Default)]
struct Table {
    resources: BTreeMap<String, Arc<Versioned>>,
    /// Streams subscribed to a name.
    by_name: HashMap<String, HashMap<u64, Arc<Watcher>>>,
    /// Streams subscribed to every name starting with a prefix (wildcard within their scope).
    wildcard: HashMap<u64, (String, Arc<Watcher>)>,
}

#[derive(Default)]
struct Inner {
    types: HashMap<String, Table>,
}

/// The shared resource cache. Cheap to share behind an [`Arc`].
#[derive(Default)]
pub struct Cache {
    inner: Mutex<Inner>,
    next_watcher: AtomicU64,
    /// How many [`Subscriber`]s (streams) there are.
    followers: watch::Sender<usize>,
    /// Whether a publisher left resources behind (see the module).
    behind: watch::Sender<bool>,
}

/// What a stream has been told changed since it last looked: names by type URL.
pub type Dirty = HashMap<String, BTreeSet<String>>;

/// A stream's mailbox: names that changed, and a wake-up; and the deliveries it owes an ACK
/// (released when it goes away).
#[derive(Default)]
struct Watcher {
    dirty: Mutex<Dirty>,
    notify: Notify,
    owes: Mutex<Vec<Weak<Awaited>>>,
}

impl Watcher {
    fn mark(&self, type_url: &str, name: &str) {
        let mut dirty = lock(&self.dirty);
        dirty
            .entry(type_url.to_owned())
            .or_default()
            .insert(name.to_owned());
        drop(dirty);
        self.notify.notify_one();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain maps in a usable state.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The version of `resource`: the first 64 bits of the SHA-256 of its type and bytes, in hex.
fn content_version(resource: &Any) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::new()
        .chain_update(resource.type_url.as_bytes())
        .chain_update([0])
        .chain_update(&resource.value)
        .finalize();
    hex::encode(&digest[..8])
}

impl Cache {
    /// An empty cache.
    pub fn new() -> Arc<Cache> {
        Arc::new(Cache::default())
    }

    /// Applies `update` to `type_url`: a put whose content equals the stored one changes
    /// nothing; every real change gets the new content's version and wakes the streams
    /// subscribed to that name. Returns how many resources changed.
    pub fn apply(&self, type_url: &str, update: Update) -> usize {
        self.apply_with(type_url, update, None)
    }

    /// [`Cache::apply`], and the acknowledgements of what it put: every stream then subscribed
    /// to a resource it changed owes an ACK of that resource's new version.
    pub fn apply_tracked(&self, type_url: &str, update: Update) -> Delivery {
        let awaited = Arc::new(Awaited::default());
        self.apply_with(type_url, update, Some(&awaited));
        Delivery(awaited)
    }

    fn apply_with(&self, type_url: &str, update: Update, awaited: Option<&Arc<Awaited>>) -> usize {
        let now = Instant::now();
        let mut inner = lock(&self.inner);
        let inner = &mut *inner;
        let table = inner.types.entry(type_url.to_owned()).or_default();
        let mut changed = Vec::new();
        for (name, resource) in update.put {
            if table
                .resources
                .get(&name)
                .is_some_and(|old| old.resource == resource)
            {
                continue;
            }
            let versioned = Versioned {
                version: content_version(&resource),
                resource,
                changed_at: now,
                delivery: awaited.cloned(),
            };
            table.resources.insert(name.clone(), Arc::new(versioned));
            if let Some(awaited) = awaited {
                owe(table, &name, awaited);
            }
            changed.push(name);
        }
        for name in update.remove {
            if table.resources.remove(&name).is_some() {
                changed.push(name);
            }
        }
        for name in &changed {
            for watcher in table.by_name.get(name).into_iter().flat_map(|w| w.values()) {
                watcher.mark(type_url, name);
            }
            for (prefix, watcher) in table.wildcard.values() {
                if name.starts_with(prefix.as_str()) {
                    watcher.mark(type_url, name);
                }
            }
        }
        changed.len()
    }

    /// The current version of one resource.
    pub fn get(&self, type_url: &str, name: &str) -> Option<Arc<Versioned>> {
        let inner = lock(&self.inner);
        inner.types.get(type_url)?.resources.get(name).cloned()
    }

    /// The names of every resource of `type_url` starting with `prefix`, in order.
    pub fn names(&self, type_url: &str, prefix: &str) -> Vec<String> {
        let inner = lock(&self.inner);
        let Some(table) = inner.types.get(type_url) else {
            return Vec::new();
        };
        table
            .resources
            .range(prefix.to_owned()..)
            .take_while(|(name, _)| name.starts_with(prefix))
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// How many resources of `type_url` the cache holds.
    pub fn len(&self, type_url: &str) -> usize {
        let inner = lock(&self.inner);
        inner.types.get(type_url).map_or(0, |t| t.resources.len())
    }

    /// Whether the cache holds no resource of `type_url`.
    pub fn is_empty(&self, type_url: &str) -> bool {
        self.len(type_url) == 0
    }

    /// How many subscribers (streams) follow the cache; changes as they come and go.
    pub fn followers(&self) -> watch::Receiver<usize> {
        self.followers.subscribe()
    }

    /// A publisher left some of its resources behind (it does so only while no stream follows
    /// the cache): streams that open from now on wait until it has [`Cache::caught_up`].
    pub fn fall_behind(&self) {
        self.behind
            .send_if_modified(|behind| !std::mem::replace(behind, true));
    }

    /// The publisher that fell behind holds every resource current again: waiting streams are
    /// answered.
    pub fn caught_up(&self) {
        self.behind
            .send_if_modified(|behind| std::mem::replace(behind, false));
    }

    /// Completes once no publisher is behind (at once when none is).
    pub async fn current(&self) {
        let mut behind = self.behind.subscribe();
        // The sender lives in `self`: waiting cannot fail.
        let _ = behind.wait_for(|behind| !*behind).await;
    }

    /// A new subscriber handle; its subscriptions end when it is dropped. It counts as a
    /// follower of the cache until then.
    pub fn subscriber(self: &Arc<Self>) -> Subscriber {
        self.followers.send_modify(|followers| *followers += 1);
        Subscriber {
            cache: self.clone(),
            id: self.next_watcher.fetch_add(1, Ordering::Relaxed),
            watcher: Arc::new(Watcher::default()),
            names: HashMap::new(),
            wildcards: HashMap::new(),
        }
    }
}

/// One stream's subscriptions to the cache, and its mailbox of changed names.
pub struct Subscriber {
    cache: Arc<Cache>,
    id: u64,
    watcher: Arc<Watcher>,
    names: HashMap<String, BTreeSet<String>>,
    wildcards: HashMap<String, String>,
}

impl Subscriber {
    /// Subscribes to `names` (cache names) of `type_url`.
    pub fn subscribe<'a>(&mut self, type_url: &str, names: impl IntoIterator<Item = &'a String>) {
        let mut inner = lock(&self.cache.inner);
        let table = inner.types.entry(type_url.to_owned()).or_default();
        let mine = self.names.entry(type_url.to_owned()).or_default();
        for name in names {
            if mine.insert(name.clone()) {
                table
                    .by_name
                    .entry(name.clone())
                    .or_default()
                    .insert(self.id, self.watcher.clone());
            }
        }
    }

    /// Unsubscribes from `names` of `type_url`.
    pub fn unsubscribe<'a>(&mut self, type_url: &str, names: impl IntoIterator<Item = &'a String>) {
        let mut inner = lock(&self.cache.inner);
        let Some(table) = inner.types.get_mut(type_url) else {
            return;
        };
        let Some(mine) = self.names.get_mut(type_url) else {
            return;
        };
        for name in names {
            if mine.remove(name) {
                remove_watcher(table, name, self.id);
            }
        }
    }

    /// Subscribes to every resource of `type_url` whose name starts with `prefix`.
    pub fn subscribe_wildcard(&mut self, type_url: &str, prefix: &str) {
        let mut inner = lock(&self.cache.inner);
        let table = inner.types.entry(type_url.to_owned()).or_default();
        table
            .wildcard
            .insert(self.id, (prefix.to_owned(), self.watcher.clone()));
        self.wildcards
            .insert(type_url.to_owned(), prefix.to_owned());
    }

    /// Ends the wildcard subscription to `type_url`.
    pub fn unsubscribe_wildcard(&mut self, type_url: &str) {
        if self.wildcards.remove(type_url).is_none() {
            return;
        }
        let mut inner = lock(&self.cache.inner);
        if let Some(table) = inner.types.get_mut(type_url) {
            table.wildcard.remove(&self.id);
        }
    }

    /// Waits until some subscribed resource changes (returns at once if one changed since the
    /// last [`Subscriber::take_changed`]).
    pub async fn changed(&self) {
        self.watcher.notify.notified().await;
    }

    /// The names that changed since the last call, by type URL.
    pub fn take_changed(&self) -> Dirty {
        std::mem::take(&mut *lock(&self.watcher.dirty))
    }

    /// The cache this subscriber reads.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// This stream's client acknowledged a response carrying `name` (a cache name) at the
    /// version `delivery` awaits.
    pub(crate) fn acknowledged(&self, delivery: &Awaited, name: &str) {
        delivery.acknowledged(self.id, name);
    }
}

/// Records that every stream subscribed to `name` owes `awaited` an ACK of it.
fn owe(table: &Table, name: &str, awaited: &Arc<Awaited>) {
    let by_name = table.by_name.get(name).into_iter().flatten();
    let by_prefix = table
        .wildcard
        .iter()
        .filter(|(_, (prefix, _))| name.starts_with(prefix.as_str()))
        .map(|(id, (_, watcher))| (id, watcher));
    for (id, watcher) in by_name.chain(by_prefix) {
        let added = awaited
            .pending
            .send_if_modified(|pending| pending.insert((*id, name.to_owned())));
        if added {
            awaited.owed.fetch_add(1, Ordering::Relaxed);
            let mut owes = lock(&watcher.owes);
            owes.retain(|owed| owed.strong_count() > 0);
            owes.push(Arc::downgrade(awaited));
        }
    }
}

fn remove_watcher(table: &mut Table, name: &str, id: u64) {
    if let Some(watchers) = table.by_name.get_mut(name) {
        watchers.remove(&id);
        if watchers.is_empty() {
            table.by_name.remove(name);
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.cache
            .followers
            .send_modify(|followers| *followers = followers.saturating_sub(1));
        for owed in std::mem::take(&mut *lock(&self.watcher.owes)) {
            if let Some(awaited) = owed.upgrade() {
                awaited.gone(self.id);
            }
        }
        let mut inner = lock(&self.cache.inner);
        for (type_url, names) in &self.names {
            if let Some(table) = inner.types.get_mut(type_url) {
                for name in names {
                    remove_watcher(table, name, self.id);
                }
            }
        }
        for type_url in self.wildcards.keys() {
            if let Some(table) = inner.types.get_mut(type_url) {
                table.wildcard.remove(&self.id);
            }
        }
    }
}
