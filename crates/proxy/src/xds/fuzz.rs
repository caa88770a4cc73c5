//! Fuzzing of the xDS translation at scale (proptest): the gateway fixture's Listener,
//! RouteConfiguration, Clusters and ClusterLoadAssignments, their encodings mutated byte by
//! byte (flips, insertions, deletions, truncation) or their type URLs swapped. Translation
//! never panics, and what it refuses is refused with the resource named. CI runs it briefly
//! (`PROPTEST_CASES` overrides the number of cases).

use std::sync::Arc;

use envoy_types::pb::google::protobuf::Any;
use meridian_xds::{Held, CLUSTER, ENDPOINT, LISTENER, ROUTE};
use proptest::prelude::*;

use super::fixture;
use super::state::Translation;

/// One change to an encoding.
#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, bits: u8 },
    Insert { at: usize, byte: u8 },
    Delete { at: usize },
    Truncate { at: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1..=255u8).prop_map(|(at, bits)| Mutation::Flip { at, bits }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Insert { at, byte }),
        any::<usize>().prop_map(|at| Mutation::Delete { at }),
        any::<usize>().prop_map(|at| Mutation::Truncate { at }),
    ]
}

fn mutate(bytes: &mut Vec<u8>, mutation: &Mutation) {
    let len = bytes.len();
    match *mutation {
        Mutation::Flip { at, bits } if len > 0 => bytes[at % len] ^= bits,
        Mutation::Insert { at, byte } => bytes.insert(at % (len + 1), byte),
        Mutation::Delete { at } if len > 0 => {
            bytes.remove(at % len);
        }
        Mutation::Truncate { at } => bytes.truncate(at % (len + 1)),
        _ => {}
    }
}

/// Which resource to mutate: its type URL and name.
fn target() -> impl Strategy<Value = (&'static str, String)> {
    prop_oneof![
        Just((LISTENER, "gateway".to_owned())),
        Just((ROUTE, "gateway".to_owned())),
        (0..3usize).prop_map(|i| (CLUSTER, fixture::service(i))),
        (0..3usize).prop_map(|i| (ENDPOINT, fixture::service(i))),
    ]
}

const TYPES: [&str; 4] = [LISTENER, ROUTE, CLUSTER, ENDPOINT];

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(512),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn fuzz_xds_translation_never_panics_and_names_what_it_refuses(
        (type_url, name) in target(),
        mutations in prop::collection::vec(mutation(), 1..8),
        swap_type in prop::option::weighted(0.1, 0..4usize),
    ) {
        let mut resources = fixture::resources(3, "127.0.0.1:0".parse().unwrap());
        let held = resources.get_mut(type_url).unwrap().get_mut(&name).unwrap();
        let mut value = held.resource.value.clone();
        for m in &mutations {
            mutate(&mut value, m);
        }
        let type_url_sent = swap_type.map_or(type_url, |t| TYPES[t]).to_owned();
        *held = Held {
            version: "2".to_owned(),
            resource: Arc::new(Any { type_url: type_url_sent, value }),
        };
        // Everything translated once, as after a full update; then the mutated one alone.
        // The resource is named (a Cluster's error may name its assignment, and a Listener's
        // its RouteConfiguration: the same name in this fixture).
        let named = format!("`{name}`");
        let mut translation = Translation::default();
        for t in [LISTENER, CLUSTER] {
            let names: Vec<String> = resources[t].keys().cloned().collect();
            match translation.stage(&resources, t, &names, None) {
                Ok(staged) => {
                    translation.commit(staged, &resources);
                }
                Err(reason) => prop_assert!(reason.contains(&named), "{reason}"),
            }
        }
        match translation.stage(&resources, type_url, std::slice::from_ref(&name), None) {
            Ok(_) => {}
            Err(reason) => {
                prop_assert!(reason.contains(&named), "{reason}");
                prop_assert!(reason.contains(": "), "no field or reason: {reason}");
            }
        }
    }
}
