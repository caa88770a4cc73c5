//! The configuration parser against arbitrary and mutated input: it never panics, and every
//! error names the field it is about. CI runs a few hundred cases (a few seconds); set
//! `PROPTEST_CASES` (e.g. 100000) for a run at scale.

use meridian_proxy::parse_config;
use proptest::prelude::*;
use serde_json::{json, Value};

/// A configuration that uses every section, for mutations to start from.
fn valid() -> Value {
    json!({
        "listeners": [
            {
                "name": "public",
                "address": "127.0.0.1:0",
                "max_connections": 100,
                "trust_forwarded": "none",
                "sources": ["127.0.0.1"],
                "virtual_hosts": [{
                    "name": "shop",
                    "domains": ["shop.example.com", "*.example.com"],
                    "routes": [{
                        "name": "api",
                        "match": {"prefix": "/api", "headers": [{"name": "x-canary", "exact": "1"}]},
                        "weighted_clusters": [{"name": "api", "weight": 90}, {"name": "web", "weight": 10}],
                        "prefix_rewrite": "/",
                        "timeout": "2s",
                        "retries": {"attempts": 2, "on": ["connect_failure", "gateway_error"],
                                    "per_try_timeout": "500ms", "non_idempotent": true},
                        "request_headers_add": {"x-route": "api"},
                        "response_headers_remove": ["x-internal"]
                    }, {"cluster": "web"}]
                }]
            },
            {"name": "relay", "address": "127.0.0.1:0", "protocol": "tcp", "cluster": "web"}
        ],
        "clusters": [
            {
                "name": "api",
                "lb": "ring_hash",
                "hash_on": {"header": "x-user"},
                "protocol": "http2",
                "outlier_detection": {"consecutive_5xx": 3, "base_ejection_time": "1s"},
                "circuit_breakers": {"max_requests": 10, "max_pending_requests": 0},
                "retry_budget": {"ratio": 0.5, "min_per_second": 5},
                "health_check": {"http": {"path": "/healthz"}, "interval": "1s", "timeout": "500ms"},
                "endpoints": [{"address": "127.0.0.1:9000", "weight": 2, "priority": 1}]
            },
            {"name": "web", "endpoints": [{"address": "127.0.0.1:9001"}]}
        ],
        "limits": {"max_header_bytes": 16384, "request_body_timeout": "5s", "max_request_body_bytes": 1000},
        "access_log": true
    })
}

/// Any JSON value, a few levels deep, with the kinds of scalar a config gets wrong.
fn any_value() -> impl Strategy<Value = Value> {
    let scalar = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "[ -~]{0,12}".prop_map(Value::String),
        prop_oneof![
            Just("0s"),
            Just("25h"),
            Just("*"),
            Just("not an address"),
            Just("[::1]:80"),
            Just("http2"),
            Just("")
        ]
        .prop_map(|s| Value::String(s.to_owned())),
    ];
    scalar.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,10}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// What to do to one node of the document.
#[derive(Debug, Clone)]
enum Mutation {
    Replace(Value),
    Remove,
    AddField(String, Value),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any_value().prop_map(Mutation::Replace),
        Just(Mutation::Remove),
        ("[a-z_]{1,12}", any_value()).prop_map(|(k, v)| Mutation::AddField(k, v)),
    ]
}

/// Applies `mutation` to the node that `choice` picks among all nodes of `value` (depth first).
fn mutate(value: &mut Value, choice: &mut usize, mutation: &Mutation) -> bool {
    if *choice == 0 {
        match mutation {
            Mutation::Replace(new) => *value = new.clone(),
            Mutation::Remove => *value = Value::Null,
            Mutation::AddField(key, new) => {
                if let Value::Object(map) = value {
                    map.insert(key.clone(), new.clone());
                } else {
                    *value = new.clone();
                }
            }
        }
        return true;
    }
    *choice -= 1;
    match value {
        Value::Array(items) => {
            for index in 0..items.len() {
                if *choice == 0 && matches!(mutation, Mutation::Remove) {
                    items.remove(index);
                    return true;
                }
                if mutate(&mut items[index], choice, mutation) {
                    return true;
                }
            }
            false
        }
        Value::Object(map) => {
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                if *choice == 0 && matches!(mutation, Mutation::Remove) {
                    map.remove(&key);
                    return true;
                }
                if let Some(child) = map.get_mut(&key) {
                    if mutate(child, choice, mutation) {
                        return true;
                    }
                }
            }
            false
        }
        _ => false,
    }
}

/// Checks the parser's contract on `text`: no panic (the test would fail), and an error names a
/// field, which for a mapping at the top is one of its keys, a required one, or `config`.
fn check(text: &str, top_keys: &[String]) -> Result<(), TestCaseError> {
    let Err(errors) = parse_config(text) else {
        return Ok(());
    };
    prop_assert!(!errors.errors.is_empty());
    for error in &errors.errors {
        prop_assert!(!error.field.is_empty(), "no field: {}", errors);
        prop_assert!(!error.message.is_empty(), "no reason: {}", errors);
        if !top_keys.is_empty() {
            let first = error.field.split(['.', '[']).next().unwrap_or("");
            let named =
                first == "config" || first == "listeners" || top_keys.iter().any(|k| k == first);
            prop_assert!(
                named,
                "`{}` names no field of the input: {}",
                error.field,
                errors
            );
        }
    }
    Ok(())
}

fn top_keys(value: &Value) -> Vec<String> {
    value
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

proptest! {
    // 256 cases, or `PROPTEST_CASES`.
    #![proptest_config(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn mutated_configs_never_panic_and_errors_name_a_field(
        mutations in prop::collection::vec((any::<usize>(), mutation()), 1..4),
        as_yaml in any::<bool>(),
    ) {
        let mut config = valid();
        for (choice, mutation) in &mutations {
            let nodes = count(&config);
            let mut choice = choice % nodes;
            mutate(&mut config, &mut choice, mutation);
        }
        let text = if as_yaml {
            serde_yaml_ng::to_string(&config).unwrap()
        } else {
            config.to_string()
        };
        check(&text, &top_keys(&config))?;
    }

    #[test]
    fn arbitrary_text_never_panics_and_errors_name_a_field(text in "(?s).{0,200}") {
        check(&text, &[])?;
    }

    #[test]
    fn yaml_like_text_never_panics(
        lines in prop::collection::vec("[ -~]{0,30}", 0..12),
        indents in prop::collection::vec(0usize..6, 12),
    ) {
        let text: Vec<String> = lines
            .iter()
            .zip(&indents)
            .map(|(line, indent)| format!("{}{line}", " ".repeat(*indent)))
            .collect();
        check(&text.join("\n"), &[])?;
    }
}

/// The number of nodes of `value`.
fn count(value: &Value) -> usize {
    1 + match value {
        Value::Array(items) => items.iter().map(count).sum(),
        Value::Object(map) => map.values().map(count).sum(),
        _ => 0,
    }
}

#[test]
fn the_starting_point_is_valid() {
    let text = valid().to_string();
    parse_config(&text).unwrap();
}
