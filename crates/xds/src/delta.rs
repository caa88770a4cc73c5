//! Delta (incremental) ADS: responses carry only what changed, per resource version.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};
use tonic::Status;

use crate::cache::{Awaited, Dirty};
use crate::stream::{Context, Protocol};
use crate::{served, wildcard_by_default};

/// Responses whose ACK a stream still tracks per type; older ones count as lost.
const TRACKED_NONCES: usize = 16;

/// One type's state on a delta stream.
#[derive(Default)]
struct TypeState {
    /// Whether the client asked for this type yet.
    started: bool,
    /// Names subscribed explicitly (as the node names them).
    names: BTreeSet<String>,
    /// Subscribed to everything in the node's scope.
    wildcard: bool,
    /// The version the client has of each resource (sent by us or declared at resume).
    known: HashMap<String, String>,
    /// Responses not yet acknowledged.
    unacked: VecDeque<Unacked>,
}

/// A response not yet acknowledged.
struct Unacked {
    nonce: String,
    /// The oldest change it carries (pushes only).
    oldest: Option<Instant>,
    /// The resources it carries whose ACK someone awaits, by cache name (usually none).
    awaited: Vec<(Arc<Awaited>, String)>,
}

/// The delta flavour.
#[derive(Default)]
pub(crate) struct Delta {
    types: HashMap<String, TypeState>,
}

impl Protocol for Delta {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;
    const API: &'static str = "delta";

    fn node(request: &DeltaDiscoveryRequest) -> Option<&Node> {
        request.node.as_ref()
    }

    fn on_request(
        &mut self,
        request: DeltaDiscoveryRequest,
        cx: &mut Context,
    ) -> Result<Vec<DeltaDiscoveryResponse>, Status> {
        let type_url = request.type_url;
        if !served(&type_url) {
            return unserved(
                type_url,
                request.response_nonce,
                request.resource_names_subscribe,
                cx,
            );
        }
        let state = self.types.entry(type_url.clone()).or_default();
        if !request.response_nonce.is_empty() {
            acknowledge(
                state,
                &type_url,
                &request.response_nonce,
                request.error_detail,
                cx,
            );
        }
        let first = !state.started;
        state.started = true;
        let mut candidates = BTreeSet::new();
        let mut announce_missing = BTreeSet::new();
        if first {
            for (name, version) in request.initial_resource_versions {
                candidates.insert(name.clone());
                state.known.insert(name, version);
            }
        }
        let mut subscribe = Vec::new();
        let mut wildcard = state.wildcard
            || (first
                && request.resource_names_subscribe.is_empty()
                && wildcard_by_default(&type_url));
        for name in request.resource_names_subscribe {
            if name == "*" {
                wildcard = true;
            } else if state.names.insert(name.clone()) {
                subscribe.push(cx.scope.cache_name(&type_url, &name));
                announce_missing.insert(name.clone());
                candidates.insert(name);
            }
        }
        if state.names.len() > cx.limits.max_names_per_type {
            return Err(Status::resource_exhausted(format!(
                "resource_names_subscribe: {} names for {type_url}; at most {} are allowed",
                state.names.len(),
                cx.limits.max_names_per_type
            )));
        }
        // A new wildcard subscription is always answered, even with nothing, so that a client
        // waiting for its first configuration learns that there is nothing of this type.
        let answer_even_empty = wildcard && !state.wildcard;
        let mut unsubscribe = Vec::new();
        for name in request.resource_names_unsubscribe {
            if name == "*" {
                wildcard = false;
            } else if state.names.remove(&name) {
                unsubscribe.push(cx.scope.cache_name(&type_url, &name));
                state.known.remove(&name);
            }
        }
        cx.subscriber.subscribe(&type_url, &subscribe);
        cx.subscriber.unsubscribe(&type_url, &unsubscribe);
        if wildcard && !state.wildcard {
            let prefix = cx.scope.prefix(&type_url).to_owned();
            cx.subscriber.subscribe_wildcard(&type_url, &prefix);
            let cache = cx.subscriber.cache();
            candidates.extend(
                cache
                    .names(&type_url, &prefix)
                    .iter()
                    .filter_map(|n| cx.scope.node_name(&type_url, n).map(str::to_owned)),
            );
        } else if !wildcard && state.wildcard {
            cx.subscriber.unsubscribe_wildcard(&type_url);
        }
        state.wildcard = wildcard;
        Ok(respond(
            &type_url,
            state,
            candidates,
            &announce_missing,
            cx,
            Answer::Requested {
                even_empty: answer_even_empty,
            },
        )
        .into_iter()
        .collect())
    }

    fn on_changed(&mut self, changed: Dirty, cx: &mut Context) -> Vec<DeltaDiscoveryResponse> {
        let mut responses = Vec::new();
        for (type_url, names) in changed {
            let Some(state) = self.types.get_mut(&type_url) else {
                continue;
            };
            let candidates = names
                .iter()
                .filter_map(|n| cx.scope.node_name(&type_url, n).map(str::to_owned))
                .collect();
            responses.extend(respond(
                &type_url,
                state,
                candidates,
                &BTreeSet::new(),
                cx,
                Answer::Pushed,
            ));
        }
        responses
    }
}

/// The answer to a request for a type the server does not serve: the first request of a
/// subscription gets every name it asked for back as removed (so the client stops waiting for
/// them); ACKs of that answer get nothing. No state is kept.
fn unserved(
    type_url: String,
    nonce: String,
    names: Vec<String>,
    cx: &mut Context,
) -> Result<Vec<DeltaDiscoveryResponse>, Status> {
    if !nonce.is_empty() {
        return Ok(Vec::new());
    }
    if names.len() > cx.limits.max_names_per_type {
        return Err(Status::resource_exhausted(format!(
            "resource_names_subscribe: {} names for {type_url}; at most {} are allowed",
            names.len(),
            cx.limits.max_names_per_type
        )));
    }
    tracing::debug!(node = %cx.scope.node_id, %type_url, "request for a type this server does not serve");
    Ok(vec![DeltaDiscoveryResponse {
        removed_resources: names.into_iter().filter(|n| n != "*").collect(),
        type_url,
        nonce: cx.nonce(),
        ..Default::default()
    }])
}

/// Why a response is made.
#[derive(Clone, Copy)]
enum Answer {
    /// A change in the cache (counts in the push and convergence latencies).
    Pushed,
    /// A request; `even_empty` answers it when there is nothing to send.
    Requested {
        /// Whether to answer with an empty response.
        even_empty: bool,
    },
}

/// Handles the ACK or NACK of the response with `nonce`.
fn acknowledge(
    state: &mut TypeState,
    type_url: &str,
    nonce: &str,
    error: Option<envoy_types::pb::google::rpc::Status>,
    cx: &Context,
) {
    let Some(position) = state.unacked.iter().position(|u| u.nonce == nonce) else {
        return;
    };
    // Acknowledging a response acknowledges the ones before it too: the earliest change any of
    // them carried is the one this ACK completes last.
    let mut oldest: Option<Instant> = None;
    for unacked in state.unacked.drain(..=position) {
        if let Some(at) = unacked.oldest {
            oldest = Some(oldest.map_or(at, |o| o.min(at)));
        }
        if error.is_none() {
            for (awaited, name) in &unacked.awaited {
                cx.subscriber.acknowledged(awaited, name);
            }
        }
    }
    match error {
        Some(error) => {
            cx.metrics.nacked(Delta::API, type_url);
            tracing::warn!(node = %cx.scope.node_id, %type_url, %nonce, error = %error.message,
                "client rejected a configuration (NACK)");
        }
        None => cx.metrics.acked(oldest),
    }
}

/// A response with what the client lacks among `candidates` (node names): resources whose
/// version it does not have, and removals of those it has that are gone or no longer
/// subscribed. Names in `announce_missing` that do not exist are reported removed even if the
/// client never had them, so that it stops waiting for them. `None` when there is nothing to say
/// (unless `answer` asks for a response even then).
fn respond(
    type_url: &str,
    state: &mut TypeState,
    candidates: BTreeSet<String>,
    announce_missing: &BTreeSet<String>,
    cx: &mut Context,
    answer: Answer,
) -> Option<DeltaDiscoveryResponse> {
    let pushed = matches!(answer, Answer::Pushed);
    let cache = cx.subscriber.cache();
    let mut resources = Vec::new();
    let mut removed = Vec::new();
    let mut oldest: Option<Instant> = None;
    let mut awaited = Vec::new();
    for name in candidates {
        let wanted = state.wildcard || state.names.contains(&name);
        let current = wanted
            .then(|| {
                let cache_name = cx.scope.cache_name(type_url, &name);
                Some((cache.get(type_url, &cache_name)?, cache_name))
            })
            .flatten();
        match current {
            Some((versioned, cache_name)) => {
                if state.known.get(&name) == Some(&versioned.version) {
                    continue;
                }
                if let Some(delivery) = &versioned.delivery {
                    awaited.push((delivery.clone(), cache_name));
                }
                if pushed {
                    let at = versioned.changed_at;
                    oldest = Some(oldest.map_or(at, |o| o.min(at)));
                }
                state.known.insert(name.clone(), versioned.version.clone());
                resources.push(Resource {
                    name,
                    version: versioned.version.clone(),
                    resource: Some(versioned.resource.clone()),
                    ..Default::default()
                });
            }
            None => {
                if state.known.remove(&name).is_some() || announce_missing.contains(&name) {
                    removed.push(name);
                }
            }
        }
    }
    let even_empty = matches!(answer, Answer::Requested { even_empty: true });
    if resources.is_empty() && removed.is_empty() && !even_empty {
        return None;
    }
    let nonce = cx.nonce();
    if state.unacked.len() == TRACKED_NONCES {
        state.unacked.pop_front();
    }
    state.unacked.push_back(Unacked {
        nonce: nonce.clone(),
        oldest,
        awaited,
    });
    cx.metrics
        .pushed(Delta::API, type_url, resources.len(), oldest);
    Some(DeltaDiscoveryResponse {
        resources,
        type_url: type_url.to_owned(),
        removed_resources: removed,
        nonce,
        ..Default::default()
    })
}
