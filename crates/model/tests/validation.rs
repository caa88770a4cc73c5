//! Validation reports every problem, each naming its field path.

use meridian_model::{parse_definition_json, validate_definition, Definition, ValidationErrors};

fn parse(json: serde_json::Value) -> Definition {
    parse_definition_json(json.to_string().as_bytes()).expect("fixture parses")
}

fn known(region: &str) -> bool {
    ["fra", "iad", "sin"].contains(&region)
}

fn valid() -> serde_json::Value {
    serde_json::json!({
        "org": "acme", "app": "shop", "name": "web",
        "regions": ["fra", "iad"],
        "scale": {"min": 1, "max": 3},
        "runtime": {"process": {"command": "/usr/bin/python3", "args": ["-m", "http.server"],
                                "env": {"MODE": "prod"}}},
        "ports": [{"name": "http", "port": 8080, "protocol": "http"}],
        "routes": [{"path_prefix": "/", "port": "http"}],
        "domains": ["shop.example.com"],
        "health_checks": [{"http": {"port": "http", "path": "/healthz"}, "interval": "5s"}],
        "mesh": {"allow": ["partner/*/*"]},
        "overrides": {"iad": {"scale": {"max": 5}, "env": {"MODE": "us"}}}
    })
}

fn errors(json: serde_json::Value) -> ValidationErrors {
    validate_definition(&parse(json), &known).expect_err("definition should be rejected")
}

fn fields(err: &ValidationErrors) -> Vec<&str> {
    err.errors.iter().map(|e| e.field.as_str()).collect()
}

#[test]
fn the_reference_definition_is_valid() {
    validate_definition(&parse(valid()), &known).unwrap();
}

#[test]
fn defaults_are_filled_in() {
    let def = parse(serde_json::json!({
        "org": "a", "app": "b", "name": "c", "regions": ["fra"],
        "runtime": {"process": {"command": "x"}},
        "ports": [{"name": "p", "port": 1}],
        "health_checks": [{"tcp": {"port": "p"}}]
    }));
    assert_eq!((def.scale.min, def.scale.max), (1, 1));
    assert_eq!(def.ports[0].protocol, meridian_model::Protocol::Http);
    let check = &def.health_checks[0];
    assert_eq!(check.interval.to_string(), "10s");
    assert_eq!(check.timeout.to_string(), "2s");
    assert_eq!((check.healthy_threshold, check.unhealthy_threshold), (1, 3));
    assert_eq!(check.restart_limit, 5);
}

#[test]
fn collects_every_error_with_its_field_path() {
    let mut def = valid();
    def["name"] = "Web_1".into();
    def["regions"] = serde_json::json!(["fra", "mars", "fra"]);
    def["scale"] = serde_json::json!({"min": 4, "max": 2});
    def["ports"] = serde_json::json!([
        {"name": "http", "port": 8080}, {"name": "http", "port": 70000}
    ]);
    def["routes"] = serde_json::json!([{"path_prefix": "/", "port": "admin"}]);
    def["overrides"] = serde_json::json!({
        "fra": {"scale": {"min": 9}}, "sin": {"scale": {"max": 1}}
    });
    let err = errors(def);
    assert_eq!(
        fields(&err),
        [
            "name",
            "regions[1]",
            "regions[2]",
            "scale.min",
            "ports[1].name",
            "ports[1].port",
            "routes[0].port",
            "overrides.fra.scale.min",
            "overrides.sin",
        ],
        "{err}"
    );
    let text = err.to_string();
    for reason in [
        "not a DNS label",
        "unknown region `mars`",
        "listed twice",
        "greater than max",
        "duplicate port name",
        "out of range",
        "undeclared port `admin`",
        "not listed in `regions`",
    ] {
        assert!(text.contains(reason), "missing {reason:?} in {text}");
    }
}

#[test]
fn health_checks_need_exactly_one_kind_and_sane_timings() {
    let mut def = valid();
    def["health_checks"] = serde_json::json!([
        {"interval": "5s"},
        {"tcp": {"port": "http"}, "interval": "1s", "timeout": "5s", "healthy_threshold": 0},
        {"http": {"port": "nope", "path": "healthz", "method": "get"}}
    ]);
    let err = errors(def);
    assert_eq!(
        fields(&err),
        [
            "health_checks[0]",
            "health_checks[1].timeout",
            "health_checks[1].healthy_threshold",
            "health_checks[2].http.port",
            "health_checks[2].http.path",
            "health_checks[2].http.method",
        ],
        "{err}"
    );
}

#[test]
fn override_fields_are_checked_where_they_are_written() {
    let mut def = valid();
    def["overrides"] = serde_json::json!({"iad": {
        "env": {"1BAD": "x"},
        "runtime": {"process": {"command": " "}},
        "health_checks": [{"tcp": {"port": "ghost"}}]
    }});
    let err = errors(def);
    assert_eq!(
        fields(&err),
        [
            "overrides.iad.env.1BAD",
            "overrides.iad.runtime.process.command",
            "overrides.iad.health_checks[0].tcp.port",
        ],
        "{err}"
    );
}

#[test]
fn mesh_patterns_and_domains_are_checked() {
    let mut def = valid();
    def["mesh"] = serde_json::json!({"allow": ["partner/*", "a/b/C"]});
    def["domains"] = serde_json::json!(["localhost", "shop.example.com", "shop.example.com"]);
    let err = errors(def);
    assert_eq!(
        fields(&err),
        ["domains[0]", "domains[2]", "mesh.allow[0]", "mesh.allow[1]"],
        "{err}"
    );
}

#[test]
fn limits_are_explicit() {
    let mut def = valid();
    def["scale"] = serde_json::json!({"min": 1, "max": 100000});
    def["runtime"]["process"]["args"] = serde_json::json!(vec!["x"; 300]);
    let err = errors(def);
    assert_eq!(fields(&err), ["scale.max", "runtime.process.args"], "{err}");
}

#[test]
fn https_settings_are_checked_and_default_to_redirecting() {
    let def = parse(valid());
    assert!(def.https.redirect);
    assert_eq!(def.https.hsts, None);
    let mut def = valid();
    def["https"] = serde_json::json!({"redirect": false,
        "hsts": {"max_age": "1y", "include_subdomains": true, "preload": true}});
    let parsed = parse(def.clone());
    validate_definition(&parsed, &known).unwrap();
    assert_eq!(
        parsed.https.hsts.unwrap().header_value(),
        "max-age=31557600; includeSubDomains; preload"
    );
    def["https"]["hsts"] = serde_json::json!({"max_age": "3y", "preload": true});
    let err = errors(def.clone());
    assert_eq!(
        fields(&err),
        ["https.hsts.max_age", "https.hsts.preload"],
        "{err}"
    );
    def["https"]["hsts"] = serde_json::json!({"max_age": "30d", "include_subdomains": true,
        "preload": true});
    assert_eq!(fields(&errors(def)), ["https.hsts.preload"]);
}

#[test]
fn cache_settings_are_checked_and_caching_is_off_without_them() {
    assert_eq!(parse(valid()).cache, None);
    let mut def = valid();
    def["cache"] = serde_json::json!({});
    let cache = parse(def.clone()).cache.unwrap();
    assert!(cache.enabled, "a cache section turns caching on");
    assert_eq!(cache.default_ttl, None, "no default TTL unless set");
    def["cache"] = serde_json::json!({"enabled": true, "default_ttl": "5m",
        "key": {"query_include": ["page"], "headers": ["x-device"]}, "bypass": ["/api/"]});
    validate_definition(&parse(def.clone()), &known).unwrap();
    def["cache"] = serde_json::json!({"default_ttl": "0s",
        "key": {"query_include": ["page", "a&b"], "query_exclude": ["utm"],
                "headers": ["X-Device", "ok"]},
        "bypass": ["api", "/ok"]});
    let err = errors(def.clone());
    assert_eq!(
        fields(&err),
        [
            "cache.default_ttl",
            "cache.key.query_exclude",
            "cache.key.query_include[1]",
            "cache.key.headers[0]",
            "cache.bypass[0]"
        ],
        "{err}"
    );
    def["cache"] = serde_json::json!({"default_ttl": "2y", "bypass": vec!["/x"; 65]});
    assert_eq!(
        fields(&errors(def.clone())),
        ["cache.default_ttl", "cache.bypass"]
    );
    def["cache"] = serde_json::json!({"ttl": "5m"});
    let unknown = parse_definition_json(def.to_string().as_bytes()).unwrap_err();
    assert_eq!(fields(&unknown), ["cache.ttl"], "{unknown}");
}

#[test]
fn deploy_defaults_to_a_rolling_deploy_that_keeps_every_instance_ready() {
    let def = parse(valid());
    assert_eq!(def.deploy, meridian_model::Deploy::default());
    assert_eq!(def.deploy.strategy, meridian_model::Strategy::Rolling);
    assert_eq!(def.deploy.bounds(4), (1, 0));
    assert_eq!(def.deploy.drain_delay.to_string(), "1s");
    assert_eq!(def.deploy.drain_timeout.to_string(), "30s");
    assert_eq!(def.deploy.stop_timeout.to_string(), "10s");
    let mut given = valid();
    given["deploy"] = serde_json::json!({"strategy": "rolling", "max_surge": "50%",
        "max_unavailable": 1, "drain_delay": "500ms", "drain_timeout": "1h",
        "stop_timeout": "0s"});
    let def = parse(given);
    validate_definition(&def, &known).unwrap();
    assert_eq!(def.deploy.bounds(3), (2, 1));
    assert_eq!(
        def.deploy.drain_timeout.0,
        std::time::Duration::from_secs(3600)
    );
}

#[test]
fn drain_and_stop_timeouts_are_bounded() {
    let mut def = valid();
    def["deploy"] = serde_json::json!({"drain_timeout": "61m", "stop_timeout": "11m"});
    let err = errors(def);
    assert_eq!(
        fields(&err),
        ["deploy.drain_timeout", "deploy.stop_timeout"],
        "{err}"
    );
    assert!(err.errors[0].message.contains("at most 1h"), "{err}");
    assert!(err.errors[1].message.contains("at most 10m"), "{err}");
}

#[test]
fn deploy_bounds_are_counts_or_percentages_and_let_the_rollout_move() {
    let mut def = valid();
    def["deploy"] = serde_json::json!({"max_surge": "150%", "max_unavailable": "a few",
        "drain_delay": "2m", "progress_deadline": "2h"});
    let err = errors(def);
    assert_eq!(
        fields(&err),
        [
            "deploy.max_surge",
            "deploy.max_unavailable",
            "deploy.drain_delay",
            "deploy.progress_deadline"
        ],
        "{err}"
    );
    assert!(err.errors[0].message.contains("`150%`"), "{err}");
    let mut def = valid();
    def["deploy"] = serde_json::json!({"max_surge": 0, "max_unavailable": "0%"});
    let err = errors(def);
    assert_eq!(fields(&err), ["deploy.max_surge"]);
    assert!(err.errors[0].message.contains("both be 0"), "{err}");
    let mut def = valid();
    def["deploy"] = serde_json::json!({"keep_previous": "1m"});
    let err = errors(def);
    assert_eq!(fields(&err), ["deploy.keep_previous"]);
    assert!(err.errors[0].message.contains("blue_green"), "{err}");
    let mut def = valid();
    def["deploy"] = serde_json::json!({"strategy": "blue_green", "keep_previous": "2h"});
    assert_eq!(fields(&errors(def)), ["deploy.keep_previous"]);
    let mut def = valid();
    def["deploy"] = serde_json::json!({"strategy": "blue_green", "keep_previous": "30s"});
    let def = parse(def);
    validate_definition(&def, &known).unwrap();
    assert_eq!(
        def.deploy.keep_previous(),
        std::time::Duration::from_secs(30)
    );
    let mut def = valid();
    def["deploy"] = serde_json::json!({"strategy": "canary"});
    assert_eq!(fields(&errors(def)), ["deploy.steps"]);
    let mut def = valid();
    def["deploy"] = serde_json::json!({"steps": [{"weight": 5}]});
    assert_eq!(fields(&errors(def)), ["deploy.steps"]);
    let mut def = valid();
    def["deploy"] = serde_json::json!({"strategy": "canary",
        "steps": [{"weight": 25}, {"weight": 5, "pause": "2h"}, {"weight": 101}]});
    assert_eq!(
        fields(&errors(def)),
        [
            "deploy.steps[1].weight",
            "deploy.steps[1].pause",
            "deploy.steps[2].weight"
        ]
    );
    let mut def = valid();
    def["deploy"] = serde_json::json!({"strategy": "canary",
        "steps": [{"weight": 5, "pause": "1m"}, {"weight": 50}]});
    let def = parse(def);
    validate_definition(&def, &known).unwrap();
    let minute = std::time::Duration::from_secs(60);
    assert_eq!(
        def.deploy.canary_weights(),
        [
            (5, minute),
            (50, std::time::Duration::ZERO),
            (100, std::time::Duration::ZERO)
        ]
    );
    let mut def = valid();
    def["deploy"] = serde_json::json!({"strategy": "big_bang"});
    let err = parse_definition_json(def.to_string().as_bytes()).unwrap_err();
    assert_eq!(fields(&err), ["deploy.strategy"], "{err}");
}

#[test]
fn metric_gates_are_checked_and_a_region_overrides_them_by_key() {
    let mut def = valid();
    def["deploy"] = serde_json::json!({"analysis": {"window": "10s",
        "success_rate": {"min": "99.5%"}, "p99": {"max": "500ms", "max_increase": "50%"}}});
    def["overrides"]["iad"]["deploy"] = serde_json::json!({"analysis": {"window": "1m"}});
    let def = parse(def);
    validate_definition(&def, &known).unwrap();
    let regional = meridian_model::derive_regional(&def, 1);
    let (fra, iad) = (&regional[0].spec.deploy, &regional[1].spec.deploy);
    let (fra, iad) = (
        fra.analysis.as_ref().unwrap(),
        iad.analysis.as_ref().unwrap(),
    );
    assert_eq!(
        (fra.window.to_string(), iad.window.to_string()),
        ("10s".to_owned(), "1m".to_owned())
    );
    assert_eq!((iad.min_success(), iad.min_requests), (Some(9_950), 20));
    assert_eq!(iad.max_p99(), Some(std::time::Duration::from_millis(500)));

    let mut bad = valid();
    bad["deploy"] = serde_json::json!({"analysis": {"success_rate": {"min": "101%"}}});
    bad["overrides"]["iad"]["deploy"] = serde_json::json!({"analysis": {"window": "2h"}});
    let err = errors(bad);
    assert_eq!(
        fields(&err),
        [
            "deploy.analysis.success_rate.min",
            "overrides.iad.deploy.analysis.window"
        ],
        "{err}"
    );
    let mut bad = valid();
    bad["deploy"] = serde_json::json!({"analysis": {"p99": {"maximum": "1s"}}});
    let err = parse_definition_json(bad.to_string().as_bytes()).unwrap_err();
    assert_eq!(fields(&err), ["deploy.analysis.p99.maximum"], "{err}");
}

#[test]
fn a_region_may_override_deploy_by_field_but_not_the_waves() {
    let mut def = valid();
    def["deploy"] = serde_json::json!({"max_surge": 2, "waves": [["fra"], ["iad"]]});
    def["overrides"]["iad"]["deploy"] = serde_json::json!({"drain_delay": "5s"});
    let def = parse(def);
    validate_definition(&def, &known).unwrap();
    let regional = meridian_model::derive_regional(&def, 1);
    let (fra, iad) = (&regional[0].spec.deploy, &regional[1].spec.deploy);
    assert_eq!(fra.drain_delay.to_string(), "1s");
    assert_eq!(iad.drain_delay.to_string(), "5s");
    assert_eq!(iad.max_surge, fra.max_surge);

    let mut bad = valid();
    bad["overrides"]["iad"]["deploy"] = serde_json::json!({"max_surje": 1,
        "drain_delay": 5, "max_unavailable": "a few", "waves": [["iad"]]});
    let err = errors(bad);
    assert_eq!(fields(&err), ["overrides.iad.deploy.waves"], "{err}");
    let mut bad = valid();
    bad["overrides"]["iad"]["deploy"] = serde_json::json!({"max_surje": 1, "drain_delay": "2s"});
    let err = errors(bad);
    assert_eq!(fields(&err), ["overrides.iad.deploy.max_surje"], "{err}");
    let mut bad = valid();
    bad["overrides"]["iad"]["deploy"] = serde_json::json!({"drain_delay": 5});
    let err = errors(bad);
    assert_eq!(fields(&err), ["overrides.iad.deploy.drain_delay"], "{err}");
    let mut bad = valid();
    bad["overrides"]["iad"]["deploy"] = serde_json::json!({"drain_delay": "2m",
        "max_unavailable": "a few"});
    let err = errors(bad);
    assert_eq!(
        fields(&err),
        [
            "overrides.iad.deploy.max_unavailable",
            "overrides.iad.deploy.drain_delay"
        ],
        "{err}"
    );
}

#[test]
fn waves_name_listed_regions_once() {
    let mut def = valid();
    def["deploy"] = serde_json::json!({"waves": [["fra", "sin"], [], ["fra"]]});
    let err = errors(def);
    assert_eq!(
        fields(&err),
        [
            "deploy.waves[0][1]",
            "deploy.waves[1]",
            "deploy.waves[2][0]"
        ],
        "{err}"
    );
    assert!(err.errors[0].message.contains("not listed"), "{err}");
    assert!(err.errors[2].message.contains("earlier wave"), "{err}");
}

#[test]
fn a_region_reports_a_rollouts_versions_with_consistent_counts() {
    let report = |versions: serde_json::Value| -> meridian_model::RegionReport {
        serde_json::from_value(serde_json::json!({"nodes": 1, "capacity": 4, "services": [
            {"org": "acme", "app": "shop", "service": "web", "version": 2,
             "placed": 3, "healthy": 2, "versions": versions}]}))
        .unwrap()
    };
    let good = serde_json::json!([{"version": 1, "placed": 2, "healthy": 2},
        {"version": 2, "placed": 1, "healthy": 0}]);
    meridian_model::validate_region_report(&report(good)).unwrap();
    let bad = serde_json::json!([{"version": 1, "placed": 0, "healthy": 0},
        {"version": 2, "placed": 1, "healthy": 2},
        {"version": 3, "placed": 3, "healthy": 1}]);
    let err = meridian_model::validate_region_report(&report(bad)).unwrap_err();
    assert_eq!(
        fields(&err),
        [
            "services[0].versions[0].placed",
            "services[0].versions[1].healthy",
            "services[0].versions"
        ]
    );
}

#[test]
fn a_region_reports_a_rollout_of_its_version_with_a_reason_when_it_failed() {
    let report = |rollout: serde_json::Value| -> meridian_model::RegionReport {
        serde_json::from_value(serde_json::json!({"nodes": 1, "capacity": 4, "services": [
            {"org": "acme", "app": "shop", "service": "web", "version": 2,
             "placed": 1, "healthy": 1, "rollout": rollout}]}))
        .unwrap()
    };
    let failure = serde_json::json!({"gate": "health_checks", "instance": "web-2",
        "observed": 1, "limit": 0, "reason": "web-2 failed 3 health checks in a row"});
    let good = serde_json::json!({"version": 2, "previous": 1, "strategy": "rolling",
        "phase": "rolled_back", "started_at": 1, "updated_at": 2, "failure": failure});
    meridian_model::validate_region_report(&report(good)).unwrap();
    let bad = serde_json::json!({"version": 3, "previous": 3, "strategy": "rolling",
        "phase": "succeeded", "step": 1, "steps": 1, "started_at": 1, "updated_at": 2,
        "weights": [{"version": 3, "weight": 50}], "failure": failure});
    let err = meridian_model::validate_region_report(&report(bad)).unwrap_err();
    assert_eq!(
        fields(&err),
        [
            "services[0].rollout.version",
            "services[0].rollout.previous",
            "services[0].rollout.step",
            "services[0].rollout.weights",
            "services[0].rollout.failure"
        ]
    );
}

#[test]
fn resources_are_read_per_field_named_in_errors_and_replaced_per_region() {
    let mut json = valid();
    json["resources"] = serde_json::json!({"cpu": 0.5, "memory": "256Mi"});
    json["overrides"]["iad"]["resources"] = serde_json::json!({"memory": "1Gi"});
    let def = parse(json.clone());
    validate_definition(&def, &known).unwrap();
    let regional = meridian_model::derive_regional(&def, 1);
    let limits = |i: usize| {
        let r = regional[i].spec.resources;
        (r.cpu.map(|c| c.millis()), r.memory.map(|m| m.bytes()))
    };
    assert_eq!(limits(0), (Some(500), Some(256 << 20)), "fra: the base");
    assert_eq!(
        limits(1),
        (Some(500), Some(1 << 30)),
        "iad: memory replaced"
    );
    // Written back as read, and absent when not set (existing definitions are unchanged).
    let written = serde_json::to_value(&def).unwrap();
    assert_eq!(written["resources"], json["resources"]);
    assert!(serde_json::to_value(parse(valid()))
        .unwrap()
        .get("resources")
        .is_none());

    for (field, value, says) in [
        (
            "resources.memory",
            serde_json::json!({"memory": "256MB"}),
            "unknown unit",
        ),
        (
            "resources.cpu",
            serde_json::json!({"cpu": 2000}),
            "between 0.01 and 1024",
        ),
        (
            "resources.cpu",
            serde_json::json!({"cpu": "lots"}),
            "not a number of cores",
        ),
    ] {
        let mut json = valid();
        json["resources"] = value;
        let err = parse_definition_json(json.to_string().as_bytes()).unwrap_err();
        assert_eq!(fields(&err), [field], "{err}");
        assert!(err.errors[0].message.contains(says), "{err}");
    }
    let mut json = valid();
    json["overrides"]["iad"]["resources"] = serde_json::json!({"memory": "1Ki"});
    let err = parse_definition_json(json.to_string().as_bytes()).unwrap_err();
    assert_eq!(fields(&err), ["overrides.iad.resources.memory"], "{err}");
}

fn with_image(image: serde_json::Value) -> serde_json::Value {
    let mut def = valid();
    def["runtime"] = serde_json::json!({"image": image});
    def["overrides"] = serde_json::json!({});
    def
}

#[test]
fn an_image_runtime_is_valid_and_keeps_its_wire_form() {
    let json = with_image(serde_json::json!({
        "ref": "127.0.0.1:5000/shop/web:v1", "command": ["/hello"], "args": ["-v"],
        "env": {"MODE": "prod"}, "working_dir": "/srv", "user": "1000:1000",
        "read_only_root_fs": true
    }));
    let def = parse(json.clone());
    validate_definition(&def, &known).unwrap();
    assert_eq!(
        serde_json::to_value(&def).unwrap()["runtime"],
        json["runtime"]
    );
    // A process definition reads and writes as before: no `image` key appears.
    let process = parse(valid());
    assert_eq!(
        serde_json::to_value(&process).unwrap()["runtime"],
        valid()["runtime"]
    );
}

#[test]
fn exactly_one_runtime_is_set() {
    let mut both = valid();
    both["runtime"]["image"] = serde_json::json!({"ref": "hello"});
    let mut neither = valid();
    neither["runtime"] = serde_json::json!({});
    for def in [both, neither] {
        let err = errors(def);
        assert_eq!(fields(&err), ["runtime"], "{err}");
        assert!(err
            .to_string()
            .contains("exactly one of `process` or `image`"));
    }
}

#[test]
fn image_fields_are_checked() {
    let err = errors(with_image(serde_json::json!({
        "ref": "Shop/Web:v1", "command": [], "env": {"1BAD": "x"},
        "working_dir": "srv", "user": "nobody"
    })));
    assert_eq!(
        fields(&err),
        [
            "runtime.image.ref",
            "runtime.image.command",
            "runtime.image.env.1BAD",
            "runtime.image.working_dir",
            "runtime.image.user",
        ],
        "{err}"
    );
}

#[test]
fn an_image_override_must_match_the_base_runtime() {
    let mut def = with_image(serde_json::json!({"ref": "hello:v1"}));
    def["overrides"] = serde_json::json!({
        "fra": {"runtime": {"image": {"ref": "hello:"}}},
        "iad": {"runtime": {"process": {"command": "x"}}}
    });
    let err = errors(def);
    assert_eq!(
        fields(&err),
        [
            "overrides.fra.runtime.image.ref",
            "overrides.iad.runtime.process"
        ],
        "{err}"
    );
    let mut def = valid();
    def["overrides"] = serde_json::json!({"fra": {"runtime": {"image": {"user": "1"}}}});
    assert_eq!(fields(&errors(def)), ["overrides.fra.runtime.image"]);
}

#[test]
fn an_image_override_replaces_fields_and_merges_env() {
    let mut json = with_image(serde_json::json!({
        "ref": "hello:v1", "args": ["a"], "env": {"A": "1", "B": "2"}, "user": "1000"
    }));
    json["overrides"] = serde_json::json!({"iad": {
        "env": {"C": "3"},
        "runtime": {"image": {"ref": "hello:v2", "env": {"B": "x"}, "read_only_root_fs": true}}
    }});
    let def = parse(json);
    validate_definition(&def, &known).unwrap();
    let derived = meridian_model::derive_regional(&def, 1);
    let image = derived[1].spec.runtime.image.as_ref().unwrap();
    assert_eq!(image.reference, "hello:v2");
    assert_eq!(image.args.as_deref(), Some(&["a".to_owned()][..]));
    assert_eq!(image.user.as_deref(), Some("1000"));
    assert!(image.read_only_root_fs);
    let plain = |v: &str| meridian_model::EnvValue::Plain(v.to_owned());
    let env: Vec<_> = image
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    assert_eq!(
        env,
        [("A", plain("1")), ("B", plain("x")), ("C", plain("3"))]
    );
    assert_eq!(derived[0].spec.runtime, def.runtime);
}

#[test]
fn registry_credentials_take_the_password_from_a_secret_only() {
    let creds = |username: serde_json::Value, password: serde_json::Value| {
        serde_json::json!({"ref": "r.example/hello:v1",
            "credentials": {"username": username, "password": password}})
    };
    let def = parse(with_image(creds(
        "robot".into(),
        serde_json::json!({"secret": "REG_PASSWORD"}),
    )));
    validate_definition(&def, &known).unwrap();
    assert_eq!(
        meridian_model::env::secret_references(&def),
        [(
            "runtime.image.credentials.password".to_owned(),
            "REG_PASSWORD"
        )]
    );

    let err = errors(with_image(creds("a:b".into(), "hunter2".into())));
    assert_eq!(
        fields(&err),
        [
            "runtime.image.credentials.username",
            "runtime.image.credentials.password"
        ],
        "{err}"
    );
    assert!(err.to_string().contains("must be a secret"), "{err}");
    assert!(!err.to_string().contains("hunter2"), "{err}");

    let mut def = with_image(serde_json::json!({"ref": "hello:v1"}));
    def["overrides"] = serde_json::json!({"fra": {"runtime": {"image": {"credentials": {
        "username": {"secret": "REG_USER"}, "password": {"secret": "1BAD"}}}}}});
    let err = errors(def.clone());
    assert_eq!(
        fields(&err),
        ["overrides.fra.runtime.image.credentials.password.secret"],
        "{err}"
    );
    def["overrides"]["fra"]["runtime"]["image"]["credentials"]["password"]["secret"] =
        "REG_PASSWORD".into();
    let def = parse(def);
    let fra = meridian_model::derive_spec(&def, def.overrides.get("fra"));
    let iad = meridian_model::derive_spec(&def, None);
    assert_eq!(
        fra.secret_names().collect::<Vec<_>>(),
        ["REG_USER", "REG_PASSWORD"]
    );
    assert_eq!(iad.secret_names().count(), 0);
}
