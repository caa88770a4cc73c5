//! Property tests of regional derivation: the laws docs/definition.md states.

use std::collections::BTreeMap;

use meridian_model::{
    derive_regional, derive_spec, Definition, EnvValue, HealthCheck, HumanDuration, Mesh, Port,
    Process, ProcessOverride, Protocol, RegionOverride, Route, Runtime, RuntimeOverride, Scale,
    ScaleOverride, SecretRef, TcpCheck,
};
use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;

const REGIONS: [&str; 4] = ["fra", "iad", "sin", "syd"];

fn env() -> impl Strategy<Value = BTreeMap<String, EnvValue>> {
    let value = prop_oneof![
        "[a-z]{0,4}".prop_map(EnvValue::Plain),
        "[A-C]".prop_map(|secret| EnvValue::Secret(SecretRef { secret })),
    ];
    btree_map("[A-E]", value, 0..4)
}

fn checks() -> impl Strategy<Value = Vec<HealthCheck>> {
    vec(
        (1u32..5, 1u64..30).prop_map(|(threshold, secs)| HealthCheck {
            tcp: Some(TcpCheck {
                port: "http".into(),
            }),
            http: None,
            grace_period: HumanDuration::ten_seconds(),
            interval: HumanDuration(std::time::Duration::from_secs(secs)),
            timeout: HumanDuration(std::time::Duration::from_secs(1)),
            healthy_threshold: threshold,
            unhealthy_threshold: 3,
            restart_limit: 5,
        }),
        0..3,
    )
}

fn region_override() -> impl Strategy<Value = RegionOverride> {
    let scale = option::of((option::of(0u32..10), option::of(1u32..10))).prop_map(|s| {
        s.map(|(min, max)| ScaleOverride {
            min,
            max,
            ..ScaleOverride::default()
        })
    });
    let process = option::of((
        option::of("[a-z]{1,6}"),
        option::of(vec("[a-z]{1,3}", 0..3)),
        option::of(env()),
        option::of("/[a-z]{1,5}"),
    ))
    .prop_map(|p| {
        p.map(|(command, args, env, working_dir)| RuntimeOverride {
            process: Some(ProcessOverride {
                command,
                args,
                env,
                working_dir,
            }),
            image: None,
        })
    });
    (scale, option::of(env()), process, option::of(checks())).prop_map(
        |(scale, env, runtime, health_checks)| RegionOverride {
            scale,
            env,
            runtime,
            health_checks,
            deploy: None,
            resources: None,
        },
    )
}

fn definition() -> impl Strategy<Value = Definition> {
    (
        proptest::sample::subsequence(REGIONS.to_vec(), 1..=REGIONS.len()),
        (0u32..5, 5u32..10),
        "[a-z]{1,8}",
        vec("[a-z]{1,3}", 0..3),
        env(),
        checks(),
        btree_map(
            proptest::sample::select(REGIONS.to_vec()),
            region_override(),
            0..4,
        ),
    )
        .prop_map(
            |(regions, (min, max), command, args, env, health_checks, overrides)| {
                let regions: Vec<String> = regions.into_iter().map(String::from).collect();
                let overrides = overrides
                    .into_iter()
                    .filter(|(r, _)| regions.iter().any(|x| x == r))
                    .map(|(r, o)| (r.to_owned(), o))
                    .collect();
                Definition {
                    org: "acme".into(),
                    app: "shop".into(),
                    name: "web".into(),
                    regions,
                    scale: Scale {
                        min,
                        max,
                        ..Scale::default()
                    },
                    runtime: Runtime::process(Process {
                        command,
                        args,
                        env,
                        working_dir: None,
                    }),
                    resources: Default::default(),
                    ports: vec![Port {
                        name: "http".into(),
                        port: 8080,
                        protocol: Protocol::Http,
                    }],
                    routes: vec![Route {
                        path_prefix: "/".into(),
                        port: "http".into(),
                    }],
                    domains: vec!["shop.example.com".into()],
                    health_checks,
                    mesh: Mesh::default(),
                    https: Default::default(),
                    cache: None,
                    deploy: Default::default(),
                    overrides,
                }
            },
        )
}

proptest! {
    #[test]
    fn one_deployment_per_region_in_order(def in definition(), version in 1u64..100) {
        let derived = derive_regional(&def, version);
        let regions: Vec<&str> = derived.iter().map(|d| d.region.as_str()).collect();
        prop_assert_eq!(regions, def.regions.iter().map(String::as_str).collect::<Vec<_>>());
        prop_assert!(derived.iter().all(|d| d.version == version && d.service == def.name));
    }

    #[test]
    fn a_region_without_overrides_equals_the_base(def in definition()) {
        let base = derive_spec(&def, None);
        for d in derive_regional(&def, 1) {
            if !def.overrides.contains_key(&d.region) {
                prop_assert_eq!(&d.spec, &base);
                prop_assert_eq!(&d.spec.runtime, &def.runtime);
                prop_assert_eq!(d.spec.scale, def.scale);
            }
        }
    }

    #[test]
    fn an_override_changes_only_what_it_names(def in definition(), o in region_override()) {
        let base = derive_spec(&def, None);
        let spec = derive_spec(&def, Some(&o));
        // Never overridable: identical to the base.
        prop_assert_eq!(&spec.ports, &base.ports);
        prop_assert_eq!(&spec.routes, &base.routes);
        prop_assert_eq!(&spec.domains, &base.domains);
        prop_assert_eq!(&spec.mesh, &base.mesh);
        // Scalars replace when named, else keep the base.
        let s = o.scale.unwrap_or_default();
        prop_assert_eq!(spec.scale.min, s.min.unwrap_or(base.scale.min));
        prop_assert_eq!(spec.scale.max, s.max.unwrap_or(base.scale.max));
        let p = o.runtime.clone().and_then(|r| r.process).unwrap_or_default();
        let (got, was) = (spec.runtime.process.as_ref().unwrap(), base.runtime.process.as_ref().unwrap());
        prop_assert_eq!(&got.command, p.command.as_ref().unwrap_or(&was.command));
        prop_assert_eq!(&got.working_dir, &p.working_dir.clone().or(was.working_dir.clone()));
        // Lists replace when named.
        prop_assert_eq!(&got.args, p.args.as_ref().unwrap_or(&was.args));
        prop_assert_eq!(&spec.health_checks, o.health_checks.as_ref().unwrap_or(&base.health_checks));
        // Maps merge by key: region env wins over runtime env, which wins over the base.
        let named: BTreeMap<&String, &EnvValue> = p.env.iter().flatten()
            .chain(o.env.iter().flatten())
            .collect();
        for (key, value) in &got.env {
            match named.get(key) {
                Some(v) => prop_assert_eq!(value, *v),
                None => prop_assert_eq!(Some(value), was.env.get(key)),
            }
        }
        prop_assert!(was.env.keys().all(|k| got.env.contains_key(k)));
        prop_assert!(named.keys().all(|k| got.env.contains_key(*k)));
    }

    #[test]
    fn derivation_is_deterministic(def in definition()) {
        let once = derive_regional(&def, 7);
        let again = derive_regional(&def.clone(), 7);
        prop_assert_eq!(&once, &again);
        let json = serde_json::to_string(&once).unwrap();
        prop_assert_eq!(json, serde_json::to_string(&again).unwrap());
    }

    #[test]
    fn definitions_round_trip_through_json(def in definition()) {
        let json = serde_json::to_vec(&def).unwrap();
        let parsed = meridian_model::parse_definition_json(&json).unwrap();
        prop_assert_eq!(parsed, def);
    }
}
