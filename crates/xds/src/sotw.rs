//! State-of-the-world ADS: every response for a type carries the whole subscribed set.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use tonic::Status;

use crate::cache::{Awaited, Dirty, Versioned};
use crate::stream::{Context, Protocol};
use crate::{served, wildcard_by_default};

/// One type's state on a state-of-the-world stream.
#[derive(Default)]
struct TypeState {
    /// Whether the client asked for this type yet.
    started: bool,
    /// Subscribed names (as the node names them).
    names: BTreeSet<String>,
    /// Subscribed to everything in the node's scope.
    wildcard: bool,
    /// Version string of the last response.
    version: u64,
    /// Nonce of the last response; requests carrying another nonce are stale.
    nonce: Option<String>,
    /// The resources in the last response, by node name: a push looks up only the names that
    /// changed and sends the others as they were.
    sent: HashMap<String, Arc<Versioned>>,
    /// The oldest change sent and not yet acknowledged.
    unacked_since: Option<Instant>,
    /// Resources sent whose ACK someone awaits, by cache name (usually none): the ACK of the
    /// last response, which carries them all, acknowledges them.
    awaited: Vec<(Arc<Awaited>, String)>,
}

/// The state-of-the-world flavour.
#[derive(Default)]
pub(crate) struct Sotw {
    types: HashMap<String, TypeState>,
}

impl Protocol for Sotw {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;
    const API: &'static str = "sotw";

    fn node(request: &DiscoveryRequest) -> Option<&Node> {
        request.node.as_ref()
    }

    fn on_request(
        &mut self,
        request: DiscoveryRequest,
        cx: &mut Context,
    ) -> Result<Vec<DiscoveryResponse>, Status> {
        let type_url = request.type_url;
        if request.resource_names.len() > cx.limits.max_names_per_type {
            return Err(Status::resource_exhausted(format!(
                "resource_names: {} names for {type_url}; at most {} are allowed",
                request.resource_names.len(),
                cx.limits.max_names_per_type
            )));
        }
        if !served(&type_url) {
            // An empty answer to the first request, nothing to its ACKs, and no state kept.
            if !request.response_nonce.is_empty() {
                return Ok(Vec::new());
            }
            tracing::debug!(node = %cx.scope.node_id, %type_url, "request for a type this server does not serve");
            return Ok(vec![DiscoveryResponse {
                version_info: "0".to_owned(),
                type_url,
                nonce: cx.nonce(),
                ..Default::default()
            }]);
        }
        let state = self.types.entry(type_url.clone()).or_default();
        if !request.response_nonce.is_empty() {
            if state.nonce.as_deref() != Some(request.response_nonce.as_str()) {
                // A reply to an older response: the client has newer data coming.
                return Ok(Vec::new());
            }
            match &request.error_detail {
                Some(error) => {
                    cx.metrics.nacked(Sotw::API, &type_url);
                    tracing::warn!(node = %cx.scope.node_id, %type_url,
                        rejected_version = state.version, kept_version = %request.version_info,
                        error = %error.message, "client rejected a configuration (NACK)");
                }
                None => {
                    cx.metrics.acked(state.unacked_since.take());
                    for (awaited, name) in state.awaited.drain(..) {
                        cx.subscriber.acknowledged(&awaited, &name);
                    }
                }
            }
        }
        let wildcard = request.resource_names.iter().any(|n| n == "*")
            || (request.resource_names.is_empty() && wildcard_by_default(&type_url));
        let names: BTreeSet<String> = request
            .resource_names
            .into_iter()
            .filter(|n| n != "*")
            .collect();
        let changed = !state.started || names != state.names || wildcard != state.wildcard;
        if !changed {
            return Ok(Vec::new());
        }
        let cache_names = |set: &BTreeSet<String>| -> Vec<String> {
            set.iter()
                .map(|n| cx.scope.cache_name(&type_url, n))
                .collect()
        };
        let gone = cache_names(&state.names.difference(&names).cloned().collect());
        let new = cache_names(&names.difference(&state.names).cloned().collect());
        cx.subscriber.unsubscribe(&type_url, &gone);
        cx.subscriber.subscribe(&type_url, &new);
        if wildcard && !state.wildcard {
            let prefix = cx.scope.prefix(&type_url).to_owned();
            cx.subscriber.subscribe_wildcard(&type_url, &prefix);
        } else if !wildcard && state.wildcard {
            cx.subscriber.unsubscribe_wildcard(&type_url);
        }
        state.started = true;
        state.names = names;
        state.wildcard = wildcard;
        Ok(vec![respond(&type_url, state, cx, None)])
    }

    fn on_changed(&mut self, changed: Dirty, cx: &mut Context) -> Vec<DiscoveryResponse> {
        let mut responses = Vec::new();
        for (type_url, names) in changed {
            let Some(state) = self.types.get_mut(&type_url) else {
                continue;
            };
            let relevant = names.iter().any(|cache_name| {
                cx.scope
                    .node_name(&type_url, cache_name)
                    .is_some_and(|n| state.wildcard || state.names.contains(n))
            });
            if relevant {
                responses.push(respond(&type_url, state, cx, Some(&names)));
            }
        }
        responses
    }
}

/// The whole subscribed set of `type_url`, as a new response. `changed` holds the cache names
/// whose change caused it: only those are looked up again, and only such responses count in the
/// push and convergence latencies. Without it (a new subscription's answer) every name is looked
/// up.
fn respond(
    type_url: &str,
    state: &mut TypeState,
    cx: &mut Context,
    changed: Option<&BTreeSet<String>>,
) -> DiscoveryResponse {
    let cache = cx.subscriber.cache();
    let everything: Vec<String>;
    let names: Vec<&String> = if state.wildcard {
        everything = cache
            .names(type_url, cx.scope.prefix(type_url))
            .iter()
            .filter_map(|n| cx.scope.node_name(type_url, n).map(str::to_owned))
            .collect();
        everything.iter().collect()
    } else {
        state.names.iter().collect()
    };
    let sent = &mut state.sent;
    let fresh: Option<BTreeSet<&str>> = changed.map(|changed| {
        changed
            .iter()
            .filter_map(|n| cx.scope.node_name(type_url, n))
            .collect()
    });
    if fresh.is_none() || state.wildcard {
        // The subscription changed, or a wildcard's set did: forget what is no longer there.
        let wanted: BTreeSet<&str> = names.iter().map(|n| n.as_str()).collect();
        sent.retain(|name, _| wanted.contains(name.as_str()));
    }
    let mut resources = Vec::with_capacity(names.len());
    let mut oldest: Option<Instant> = None;
    for name in names {
        let unchanged = fresh.as_ref().is_some_and(|f| !f.contains(name.as_str()));
        let versioned = match sent.get(name) {
            Some(last) if unchanged => last.clone(),
            last => {
                let cache_name = cx.scope.cache_name(type_url, name);
                let Some(current) = cache.get(type_url, &cache_name) else {
                    sent.remove(name);
                    continue;
                };
                if let Some(delivery) = &current.delivery {
                    state.awaited.push((delivery.clone(), cache_name));
                }
                if fresh.is_some() && last.is_none_or(|l| l.version != current.version) {
                    oldest = Some(oldest.map_or(current.changed_at, |o| o.min(current.changed_at)));
                }
                sent.insert(name.clone(), current.clone());
                current
            }
        };
        resources.push(versioned.resource.clone());
    }
    state.version += 1;
    if let Some(at) = oldest {
        state.unacked_since = Some(state.unacked_since.map_or(at, |o| o.min(at)));
    }
    let nonce = cx.nonce();
    state.nonce = Some(nonce.clone());
    cx.metrics
        .pushed(Sotw::API, type_url, resources.len(), oldest);
    DiscoveryResponse {
        version_info: state.version.to_string(),
        resources,
        type_url: type_url.to_owned(),
        nonce,
        ..Default::default()
    }
}
