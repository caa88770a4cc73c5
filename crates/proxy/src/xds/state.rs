//! What has been translated from xDS so far, kept per resource so that an update re-translates
//! only what it touches: a changed Listener or RouteConfiguration the listeners concerned, a
//! changed Cluster or ClusterLoadAssignment the clusters concerned.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use meridian_xds::{Interest, Interests, Resources, CLUSTER, ENDPOINT, LISTENER, ROUTE};

use envoy_types::pb::google::protobuf::Any;

use super::translate::{self, ByName, Identity, TranslatedCluster, TranslatedListener};
use crate::config::{ClusterConfig, ProxyConfig};

/// The translated resources, with who uses which RouteConfiguration and ClusterLoadAssignment.
#[derive(Default)]
pub struct Translation {
    listeners: BTreeMap<String, TranslatedListener>,
    clusters: BTreeMap<String, TranslatedCluster>,
    /// Listeners by the RouteConfiguration they name.
    route_users: HashMap<String, BTreeSet<String>>,
    /// Clusters by the ClusterLoadAssignment they name.
    assignment_users: HashMap<String, BTreeSet<String>>,
}

/// New translations (`None`: the resource is gone), not yet in a [`Translation`].
#[derive(Debug, Default)]
pub struct Staged {
    listeners: Vec<(String, Option<TranslatedListener>)>,
    clusters: Vec<(String, Option<TranslatedCluster>)>,
}

impl Staged {
    /// The clusters translated (in tests: to see how much an update touched).
    #[cfg(test)]
    pub fn cluster_names(&self) -> Vec<&str> {
        self.clusters
            .iter()
            .map(|(name, _)| name.as_str())
            .collect()
    }

    /// Both `self` and `other` (which must not overlap).
    pub fn and(mut self, other: Staged) -> Staged {
        self.listeners.extend(other.listeners);
        self.clusters.extend(other.clusters);
        self
    }
}

/// What [`Translation::swap`] did.
struct Swapped {
    undo: Staged,
    /// Listeners changed, or clusters came or went.
    whole: bool,
    /// The new versions of clusters that were there before.
    clusters: Vec<ClusterConfig>,
    interests_changed: bool,
}

/// What a committed change asks of the proxy.
pub enum Apply {
    /// Nothing yet: listeners or clusters have not arrived, or no listener is complete.
    Nothing,
    /// These clusters, already in force, have new versions (perhaps only new endpoints).
    Clusters(Vec<ClusterConfig>),
    /// The whole configuration (boxed: it is much larger than the other variants).
    Whole(Box<ProxyConfig>),
}

impl Translation {
    /// Translates what `names` of `type_url` (updated or removed in `resources`) touch; nothing
    /// in `self` changes. Fails, naming the resource and field, if one of them is bad.
    pub fn stage(
        &self,
        resources: &Resources,
        type_url: &str,
        names: &[String],
        identity: Option<&Identity>,
    ) -> Result<Staged, String> {
        let mut listeners = BTreeSet::new();
        let mut clusters = BTreeSet::new();
        for name in names {
            match type_url {
                LISTENER => {
                    listeners.insert(name.as_str());
                }
                ROUTE => listeners.extend(users(&self.route_users, name)),
                CLUSTER => {
                    clusters.insert(name.as_str());
                }
                ENDPOINT => clusters.extend(users(&self.assignment_users, name)),
                _ => {}
            }
        }
        Ok(Staged {
            listeners: each(listeners, resources.get(LISTENER), |any, name| {
                translate::listener(any, name, resources.get(ROUTE), identity)
            })?,
            clusters: each(clusters, resources.get(CLUSTER), |any, name| {
                translate::cluster(any, name, resources.get(ENDPOINT), identity)
            })?,
        })
    }

    /// Makes `staged` current. Returns what undoes it, what to apply, and whether the
    /// subscriptions (RouteConfigurations, ClusterLoadAssignments named) changed.
    pub fn commit(&mut self, staged: Staged, resources: &Resources) -> (Staged, Apply, bool) {
        let swapped = self.swap(staged);
        let apply = match (self.ready(resources), swapped.whole) {
            (false, _) => Apply::Nothing,
            (true, true) => Apply::Whole(Box::new(self.config())),
            (true, false) if swapped.clusters.is_empty() => Apply::Nothing,
            (true, false) => Apply::Clusters(swapped.clusters),
        };
        (swapped.undo, apply, swapped.interests_changed)
    }

    /// Puts back what [`Translation::commit`] returned as its undo.
    pub fn undo(&mut self, undo: Staged) {
        self.swap(undo);
    }

    fn swap(&mut self, staged: Staged) -> Swapped {
        let mut swapped = Swapped {
            undo: Staged::default(),
            whole: !staged.listeners.is_empty(),
            clusters: Vec::new(),
            interests_changed: false,
        };
        for (name, new) in staged.listeners {
            let new_routes = new.as_ref().and_then(|l| l.routes.clone());
            let old = put(&mut self.listeners, &name, new);
            let old_routes = old.as_ref().and_then(|l| l.routes.clone());
            swapped.interests_changed |=
                relink(&mut self.route_users, &name, old_routes, new_routes);
            swapped.undo.listeners.push((name, old));
        }
        for (name, new) in staged.clusters {
            let new_source = new.as_ref().and_then(|c| c.assignment.clone());
            match (self.clusters.contains_key(&name), &new) {
                (true, Some(cluster)) => swapped.clusters.push(cluster.config.clone()),
                // A cluster that comes or goes changes what routes resolve to.
                _ => swapped.whole = true,
            }
            let old = put(&mut self.clusters, &name, new);
            let old_source = old.as_ref().and_then(|c| c.assignment.clone());
            swapped.interests_changed |=
                relink(&mut self.assignment_users, &name, old_source, new_source);
            swapped.undo.clusters.push((name, old));
        }
        swapped
    }

    /// Whether there is something to serve: Listeners and Clusters have arrived, and a listener
    /// is complete.
    pub fn ready(&self, resources: &Resources) -> bool {
        resources.contains_key(LISTENER)
            && resources.contains_key(CLUSTER)
            && self.listeners.values().any(|l| l.config.is_some())
    }

    /// The names translated so far of `type_url` (Listeners or Clusters).
    pub fn names(&self, type_url: &str) -> impl Iterator<Item = String> + '_ {
        let listeners = (type_url == LISTENER).then_some(self.listeners.keys());
        let clusters = (type_url == CLUSTER).then_some(self.clusters.keys());
        listeners
            .into_iter()
            .flatten()
            .chain(clusters.into_iter().flatten())
            .cloned()
    }

    /// The whole configuration: the complete listeners and every cluster, with a cluster that
    /// a route names but that has not arrived (it answers 503: no endpoints).
    pub fn config(&self) -> ProxyConfig {
        let listeners: Vec<_> = self
            .listeners
            .values()
            .filter_map(|l| l.config.clone())
            .collect();
        let mut clusters: BTreeMap<&str, ClusterConfig> = self
            .clusters
            .iter()
            .map(|(name, c)| (name.as_str(), c.config.clone()))
            .collect();
        for listener in self.listeners.values().filter(|l| l.config.is_some()) {
            for name in &listener.clusters {
                clusters
                    .entry(name)
                    .or_insert_with(|| ClusterConfig::empty(name));
            }
        }
        ProxyConfig {
            listeners,
            clusters: clusters.into_values().collect(),
            limits: Default::default(),
            access_log: false,
        }
    }

    /// The subscriptions: every Listener and Cluster, and the RouteConfigurations and
    /// ClusterLoadAssignments they name.
    pub fn interests(&self) -> Interests {
        let names = |users: &HashMap<String, BTreeSet<String>>| {
            Interest::Names(users.keys().cloned().collect())
        };
        [
            (LISTENER.to_owned(), Interest::Wildcard),
            (CLUSTER.to_owned(), Interest::Wildcard),
            (ROUTE.to_owned(), names(&self.route_users)),
            (ENDPOINT.to_owned(), names(&self.assignment_users)),
        ]
        .into_iter()
        .collect()
    }
}

/// Puts `new` under `name` (`None`: removes it); returns what was there.
fn put<T>(map: &mut BTreeMap<String, T>, name: &str, new: Option<T>) -> Option<T> {
    match new {
        Some(value) => map.insert(name.to_owned(), value),
        None => map.remove(name),
    }
}

/// Each of `names` translated from `held` (`None`: no longer held).
fn each<T>(
    names: BTreeSet<&str>,
    held: Option<&ByName>,
    translate: impl Fn(&Any, &str) -> Result<T, String>,
) -> Result<Vec<(String, Option<T>)>, String> {
    names
        .into_iter()
        .map(|name| {
            let translated = held
                .and_then(|h| h.get(name))
                .map(|h| translate(&h.resource, name))
                .transpose()?;
            Ok((name.to_owned(), translated))
        })
        .collect()
}

fn users<'a>(
    map: &'a HashMap<String, BTreeSet<String>>,
    name: &str,
) -> impl Iterator<Item = &'a str> {
    map.get(name).into_iter().flatten().map(String::as_str)
}

/// Moves `user` from the users of `old` to those of `new`; whether a name gained its first
/// user or lost its last (the subscriptions change).
fn relink(
    map: &mut HashMap<String, BTreeSet<String>>,
    user: &str,
    old: Option<String>,
    new: Option<String>,
) -> bool {
    if old == new {
        return false;
    }
    let mut changed = false;
    if let Some(old) = old {
        if let Some(set) = map.get_mut(&old) {
            set.remove(user);
            if set.is_empty() {
                map.remove(&old);
                changed = true;
            }
        }
    }
    if let Some(new) = new {
        let set = map.entry(new).or_default();
        changed |= set.is_empty();
        set.insert(user.to_owned());
    }
    changed
}
