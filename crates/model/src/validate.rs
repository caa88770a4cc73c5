//! Semantic validation of definitions and regions. Collects every problem, each naming its field.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use crate::names::{check_dns_label, check_url_path};
use crate::{
    check_secret_name, Amount, Definition, EndpointInput, EnvValue, HealthCheck, Image, Port,
    Process, RegionInput, RegistryCredentials, Runtime, ValidationErrors,
};

/// Explicit size limits on a definition.
#[derive(Debug, Clone, Copy)]
pub struct Limits;

impl Limits {
    /// Most regions a service may list.
    pub const REGIONS: usize = 64;
    /// Most instances per region.
    pub const SCALE_MAX: u32 = 1000;
    /// Most ports per service.
    pub const PORTS: usize = 32;
    /// Most routes per service.
    pub const ROUTES: usize = 64;
    /// Most public domains per service.
    pub const DOMAINS: usize = 64;
    /// Most health checks per service.
    pub const HEALTH_CHECKS: usize = 8;
    /// Most environment variables per process (after merging).
    pub const ENV_VARS: usize = 256;
    /// Most arguments per process.
    pub const ARGS: usize = 256;
    /// Most mesh allow patterns.
    pub const MESH_ALLOW: usize = 64;
    /// Longest string value (command, argument, env value, path).
    pub const STRING_LEN: usize = 4096;
    /// Largest threshold.
    pub const THRESHOLD_MAX: u32 = 100;
    /// Largest restart limit.
    pub const RESTART_LIMIT_MAX: u32 = 1000;
}

/// Validates `definition`; `region_exists` says whether a region name is known to the installation.
///
/// Returns every problem found, each with its field path, or `Ok(())`.
pub fn validate_definition(
    definition: &Definition,
    region_exists: &dyn Fn(&str) -> bool,
) -> Result<(), ValidationErrors> {
    let mut errs = ValidationErrors::default();
    let d = definition;
    label(&mut errs, "org", &d.org);
    label(&mut errs, "app", &d.app);
    label(&mut errs, "name", &d.name);

    validate_regions(&mut errs, &d.regions, region_exists);
    validate_scale(&mut errs, "scale", d.scale.min, d.scale.max, [true, true]);
    validate_autoscale(&mut errs, "scale", d.scale.targets, d.scale.down_window);
    if let Some(targets) = d.scale.targets {
        targets.validate_resources(&mut errs, "scale.targets", &d.resources);
    }
    if let Some(sleep) = &d.scale.sleep {
        sleep.validate(&mut errs, "scale.sleep", d.scale.min);
    }
    if let Some(concurrency) = &d.scale.concurrency {
        concurrency.validate(&mut errs, "scale.concurrency");
    }
    validate_runtime(&mut errs, &d.runtime);
    validate_ports(&mut errs, &d.ports);
    let port_names: HashSet<&str> = d.ports.iter().map(|p| p.name.as_str()).collect();
    validate_routes(&mut errs, d, &port_names);
    validate_domains(&mut errs, &d.domains);
    validate_https(&mut errs, &d.https);
    if let Some(cache) = &d.cache {
        crate::cache::validate_cache(&mut errs, "cache", cache);
    }
    validate_deploy(&mut errs, "deploy", &d.deploy);
    validate_waves(&mut errs, d);
    validate_checks(&mut errs, "health_checks", &d.health_checks, &port_names);
    validate_mesh(&mut errs, &d.mesh.allow);
    validate_overrides(&mut errs, d, &port_names);
    errs.into_result()
}

/// Checks a reported service's counts by version: each consistent and not empty, and together
/// no more than the service's (which bounds how many there are).
fn validate_versions(errs: &mut ValidationErrors, i: usize, service: &crate::ServiceHealth) {
    let (mut placed, mut healthy) = (0u64, 0u64);
    for (j, version) in service.versions.iter().enumerate() {
        if version.placed == 0 {
            errs.push(
                format!("services[{i}].versions[{j}].placed"),
                "must be at least 1 (a version no instance runs is not listed)",
            );
        }
        if version.healthy > version.placed {
            errs.push(
                format!("services[{i}].versions[{j}].healthy"),
                "must not exceed placed",
            );
        }
        placed += u64::from(version.placed);
        healthy += u64::from(version.healthy);
    }
    if placed > u64::from(service.placed) || healthy > u64::from(service.healthy) {
        errs.push(
            format!("services[{i}].versions"),
            "count more instances than the service's placed and healthy",
        );
    }
}

/// Checks a reported service's rollout: of the service's version, from another one, within
/// its steps, with weights that add up to 100, and with a failure exactly when a gate failed.
fn validate_rollout(errs: &mut ValidationErrors, i: usize, service: &crate::ServiceHealth) {
    let Some(rollout) = &service.rollout else {
        return;
    };
    let field = |name: &str| format!("services[{i}].rollout.{name}");
    if rollout.version != service.version {
        errs.push(field("version"), "must be the service's version");
    }
    if rollout.previous == rollout.version {
        errs.push(field("previous"), "must differ from version");
    }
    if rollout.steps == 0 || rollout.step >= rollout.steps {
        errs.push(field("step"), "must be below steps, which is at least 1");
    }
    let total: u64 = rollout.weights.iter().map(|w| u64::from(w.weight)).sum();
    if !rollout.weights.is_empty() && total != 100 {
        errs.push(field("weights"), "must add up to 100");
    }
    if rollout.failure.is_some() != rollout.phase.failed() {
        errs.push(
            field("failure"),
            "must be set exactly when the phase is failed or rolled_back",
        );
    }
}

/// Validates the body of a region create/update.
pub fn validate_region(name: &str, input: &RegionInput) -> Result<(), ValidationErrors> {
    let mut errs = ValidationErrors::default();
    label(&mut errs, "name", name);
    if !(-90.0..=90.0).contains(&input.lat) {
        errs.push("lat", "must be a latitude between -90 and 90");
    }
    if !(-180.0..=180.0).contains(&input.lon) {
        errs.push("lon", "must be a longitude between -180 and 180");
    }
    errs.into_result()
}

/// Checks a service's instances by state: known states, no more than placed.
fn validate_states(errs: &mut ValidationErrors, i: usize, service: &crate::ServiceHealth) {
    let field = format!("services[{i}].instances");
    if let Some(state) = service
        .instances
        .keys()
        .find(|s| !crate::ServiceHealth::STATES.contains(&s.as_str()))
    {
        errs.push(
            field,
            format!(
                "`{state}` is not a state; states are {}",
                crate::ServiceHealth::STATES.join(", ")
            ),
        );
    } else if service
        .instances
        .values()
        .fold(0u64, |sum, n| sum + u64::from(*n))
        > u64::from(service.placed)
    {
        errs.push(field, "must not count more instances than placed");
    }
}

/// Most services one region report may list.
pub const MAX_REPORTED_SERVICES: usize = 100_000;

/// Checks a region's report: names are DNS labels, no more healthy instances than placed ones,
/// and at most [`MAX_REPORTED_SERVICES`] services.
pub fn validate_region_report(report: &crate::RegionReport) -> Result<(), ValidationErrors> {
    let mut errs = ValidationErrors::default();
    if report.services.len() > MAX_REPORTED_SERVICES {
        errs.push(
            "services",
            format!("at most {MAX_REPORTED_SERVICES} services per report"),
        );
        return errs.into_result();
    }
    if let Some(gateway) = &report.gateway {
        if gateway.parse::<std::net::SocketAddr>().is_err() {
            errs.push("gateway", "must be an address ip:port");
        }
    }
    for (i, service) in report.services.iter().enumerate() {
        label(&mut errs, &format!("services[{i}].org"), &service.org);
        label(&mut errs, &format!("services[{i}].app"), &service.app);
        label(
            &mut errs,
            &format!("services[{i}].service"),
            &service.service,
        );
        if service.healthy > service.placed {
            errs.push(format!("services[{i}].healthy"), "must not exceed placed");
        }
        if service.addresses.len() > service.healthy as usize {
            errs.push(
                format!("services[{i}].addresses"),
                "at most one per healthy instance",
            );
        }
        if service.problems.len() > crate::ServiceHealth::PROBLEMS
            || service
                .problems
                .iter()
                .any(|p| p.len() > crate::ServiceHealth::PROBLEM_LEN)
        {
            errs.push(
                format!("services[{i}].problems"),
                format!(
                    "at most {} problems of at most {} bytes each",
                    crate::ServiceHealth::PROBLEMS,
                    crate::ServiceHealth::PROBLEM_LEN
                ),
            );
        }
        if let Some(autoscale) = &service.autoscale {
            autoscale.validate(&mut errs, &format!("services[{i}].autoscale"));
        }
        validate_versions(&mut errs, i, service);
        validate_states(&mut errs, i, service);
        validate_rollout(&mut errs, i, service);
        for (j, address) in service.addresses.iter().enumerate() {
            if address.parse::<std::net::IpAddr>().is_err() {
                errs.push(
                    format!("services[{i}].addresses[{j}]"),
                    "must be an IP address",
                );
            }
        }
    }
    errs.into_result()
}

/// Checks an endpoint registration for a service whose current definition is `definition`:
/// the id is a DNS label, the region one of the service's regions, the address an IP address, and
/// every port override names a declared port with a number in 1–65535.
pub fn validate_endpoint(
    id: &str,
    input: &EndpointInput,
    definition: &Definition,
) -> Result<(), ValidationErrors> {
    let mut errs = ValidationErrors::default();
    label(&mut errs, "id", id);
    if !definition.regions.contains(&input.region) {
        errs.push(
            "region",
            format!(
                "`{}` is not a region of the service (its regions: {})",
                input.region,
                definition.regions.join(", ")
            ),
        );
    }
    if input.address.parse::<std::net::IpAddr>().is_err() {
        errs.push(
            "address",
            format!("`{}` is not an IPv4 or IPv6 address", input.address),
        );
    }
    for (name, number) in &input.ports {
        let field = format!("ports.{name}");
        if !definition.ports.iter().any(|p| &p.name == name) {
            errs.push(field.as_str(), "names no port of the service");
        }
        if !(1..=65535).contains(number) {
            errs.push(field.as_str(), "must be a port number between 1 and 65535");
        }
    }
    errs.into_result()
}

fn label(errs: &mut ValidationErrors, field: &str, value: &str) {
    if let Err(reason) = check_dns_label(value) {
        errs.push(field, reason);
    }
}

fn too_many(errs: &mut ValidationErrors, field: &str, len: usize, max: usize) -> bool {
    if len > max {
        errs.push(
            field,
            format!("has {len} entries; at most {max} are allowed"),
        );
        return true;
    }
    false
}

fn string_value(errs: &mut ValidationErrors, field: &str, value: &str) {
    if value.len() > Limits::STRING_LEN {
        errs.push(
            field,
            format!(
                "is {} bytes long; at most {} are allowed",
                value.len(),
                Limits::STRING_LEN
            ),
        );
    }
}

fn validate_regions(
    errs: &mut ValidationErrors,
    regions: &[String],
    region_exists: &dyn Fn(&str) -> bool,
) {
    if regions.is_empty() {
        errs.push("regions", "must list at least one region");
    }
    if too_many(errs, "regions", regions.len(), Limits::REGIONS) {
        return;
    }
    let mut seen = BTreeSet::new();
    for (i, region) in regions.iter().enumerate() {
        let field = format!("regions[{i}]");
        if !seen.insert(region.as_str()) {
            errs.push(field, format!("region `{region}` is listed twice"));
        } else if let Err(reason) = check_dns_label(region) {
            errs.push(field, reason);
        } else if !region_exists(region) {
            errs.push(
                field,
                format!("unknown region `{region}` (see `meridian get regions`)"),
            );
        }
    }
}

/// Checks merged scale bounds. `named` says which of min/max the writer of `prefix` set, so the
/// error points at a field they wrote.
fn validate_scale(errs: &mut ValidationErrors, prefix: &str, min: u32, max: u32, named: [bool; 2]) {
    if named[0] && min > Limits::SCALE_MAX {
        errs.push(
            format!("{prefix}.min"),
            format!("must be at most {}", Limits::SCALE_MAX),
        );
    }
    if named[1] && max > Limits::SCALE_MAX {
        errs.push(
            format!("{prefix}.max"),
            format!("must be at most {}", Limits::SCALE_MAX),
        );
    }
    if named[1] && max == 0 {
        errs.push(format!("{prefix}.max"), "must be at least 1");
    }
    if min > max {
        let field = if named[0] { "min" } else { "max" };
        errs.push(
            format!("{prefix}.{field}"),
            format!("min ({min}) is greater than max ({max})"),
        );
    }
}

/// Checks the autoscaling fields written at `prefix` (`scale`, `overrides.fra.scale`).
fn validate_autoscale(
    errs: &mut ValidationErrors,
    prefix: &str,
    targets: Option<crate::ScaleTargets>,
    down_window: Option<crate::HumanDuration>,
) {
    if let Some(targets) = targets {
        targets.validate(errs, &format!("{prefix}.targets"));
    }
    crate::autoscale::validate_down_window(errs, &format!("{prefix}.down_window"), down_window);
}

fn validate_runtime(errs: &mut ValidationErrors, runtime: &Runtime) {
    match (&runtime.process, &runtime.image) {
        (Some(p), None) => validate_process(errs, "runtime.process", p),
        (None, Some(i)) => validate_image(errs, "runtime.image", i),
        _ => errs.push("runtime", "exactly one of `process` or `image` must be set"),
    }
}

fn validate_image(errs: &mut ValidationErrors, prefix: &str, i: &Image) {
    validate_image_ref(errs, prefix, &i.reference);
    validate_image_fields(
        errs,
        prefix,
        i.command.as_deref(),
        i.args.as_deref(),
        &i.env,
        i.working_dir.as_deref(),
        i.user.as_deref(),
    );
    if let Some(credentials) = &i.credentials {
        validate_credentials(errs, &format!("{prefix}.credentials"), credentials);
    }
}

/// Checks registry credentials: the user name a string (without `:`, which HTTP basic
/// authentication cannot carry) or a secret, the password a secret only: a plain password
/// would be stored, and shown, with the definition.
fn validate_credentials(errs: &mut ValidationErrors, prefix: &str, c: &RegistryCredentials) {
    let secret = |errs: &mut ValidationErrors, field: String, reference: &crate::SecretRef| {
        if let Err(reason) = check_secret_name(&reference.secret) {
            errs.push(format!("{field}.secret"), reason);
        }
    };
    let field = format!("{prefix}.username");
    match &c.username {
        EnvValue::Plain(name) if name.is_empty() || name.contains(':') => errs.push(
            field,
            "must not be empty nor contain `:` (HTTP basic authentication cannot carry it)",
        ),
        EnvValue::Plain(name) => string_value(errs, &field, name),
        EnvValue::Secret(reference) => secret(errs, field, reference),
    }
    let field = format!("{prefix}.password");
    match &c.password {
        EnvValue::Plain(_) => errs.push(
            field,
            "must be a secret ({secret: NAME}: the app's, else its org's), never the password \
             itself: a definition is stored and shown as written",
        ),
        EnvValue::Secret(reference) => secret(errs, field, reference),
    }
}

fn validate_image_ref(errs: &mut ValidationErrors, prefix: &str, reference: &str) {
    if let Err(reason) = crate::ImageRef::parse(reference) {
        errs.push(format!("{prefix}.ref"), reason);
    }
}

/// Checks the fields an image and its override share; `None` is a field not given.
fn validate_image_fields(
    errs: &mut ValidationErrors,
    prefix: &str,
    command: Option<&[String]>,
    args: Option<&[String]>,
    env: &BTreeMap<String, EnvValue>,
    working_dir: Option<&str>,
    user: Option<&str>,
) {
    if let Some(command) = command {
        if command.first().is_none_or(|c| c.trim().is_empty()) {
            errs.push(
                format!("{prefix}.command"),
                "must name an executable first (omit it for the image's entrypoint)",
            );
        }
        validate_args(errs, format!("{prefix}.command"), command);
    }
    if let Some(args) = args {
        validate_args(errs, format!("{prefix}.args"), args);
    }
    validate_env(errs, &format!("{prefix}.env"), env);
    if let Some(dir) = working_dir {
        if !dir.starts_with('/') {
            errs.push(
                format!("{prefix}.working_dir"),
                "must be an absolute path inside the container",
            );
        }
        validate_working_dir(errs, prefix, dir);
    }
    if let Some(user) = user {
        let numeric = |s: &str| !s.is_empty() && s.len() <= 10 && s.parse::<u32>().is_ok();
        let valid = match user.split_once(':') {
            Some((uid, gid)) => numeric(uid) && numeric(gid),
            None => numeric(user),
        };
        if !valid {
            errs.push(
                format!("{prefix}.user"),
                format!("`{user}` is not UID or UID:GID (numbers)"),
            );
        }
    }
}

fn validate_process(errs: &mut ValidationErrors, prefix: &str, p: &Process) {
    if p.command.trim().is_empty() {
        errs.push(format!("{prefix}.command"), "must not be empty");
    }
    string_value(errs, &format!("{prefix}.command"), &p.command);
    validate_args(errs, format!("{prefix}.args"), &p.args);
    validate_env(errs, &format!("{prefix}.env"), &p.env);
    if let Some(dir) = &p.working_dir {
        validate_working_dir(errs, prefix, dir);
    }
}

/// Checks the list of strings at `field` (arguments, or an image's command).
fn validate_args(errs: &mut ValidationErrors, field: String, args: &[String]) {
    if !too_many(errs, &field, args.len(), Limits::ARGS) {
        for (i, arg) in args.iter().enumerate() {
            string_value(errs, &format!("{field}[{i}]"), arg);
        }
    }
}

fn validate_working_dir(errs: &mut ValidationErrors, prefix: &str, dir: &str) {
    let field = format!("{prefix}.working_dir");
    if dir.is_empty() {
        errs.push(
            field,
            "must not be empty when given (omit it for the default)",
        );
    } else {
        string_value(errs, &field, dir);
    }
}

fn validate_env(errs: &mut ValidationErrors, prefix: &str, env: &BTreeMap<String, EnvValue>) {
    if too_many(errs, prefix, env.len(), Limits::ENV_VARS) {
        return;
    }
    for (key, value) in env {
        let field = format!("{prefix}.{key}");
        if !crate::env::is_env_name(key) {
            errs.push(
                field.clone(),
                "is not an environment variable name (letters, digits and _, not starting with a digit)",
            );
        }
        match value {
            EnvValue::Plain(value) => string_value(errs, &field, value),
            EnvValue::Secret(reference) => {
                if let Err(reason) = check_secret_name(&reference.secret) {
                    errs.push(format!("{field}.secret"), reason);
                }
            }
        }
    }
}

fn validate_ports(errs: &mut ValidationErrors, ports: &[Port]) {
    if too_many(errs, "ports", ports.len(), Limits::PORTS) {
        return;
    }
    let mut names = HashSet::new();
    let mut numbers = HashSet::new();
    for (i, port) in ports.iter().enumerate() {
        if let Err(reason) = check_dns_label(&port.name) {
            errs.push(format!("ports[{i}].name"), reason);
        } else if !names.insert(port.name.as_str()) {
            errs.push(
                format!("ports[{i}].name"),
                format!("duplicate port name `{}`", port.name),
            );
        }
        if !(1..=65535).contains(&port.port) {
            errs.push(
                format!("ports[{i}].port"),
                format!("port {} is out of range (1-65535)", port.port),
            );
        } else if !numbers.insert(port.port) {
            errs.push(
                format!("ports[{i}].port"),
                format!("port {} is declared twice", port.port),
            );
        }
    }
}

fn port_ref(errs: &mut ValidationErrors, field: String, port: &str, declared: &HashSet<&str>) {
    if !declared.contains(port) {
        errs.push(
            field,
            format!("refers to undeclared port `{port}` (declare it under `ports`)"),
        );
    }
}

fn validate_path(errs: &mut ValidationErrors, field: String, path: &str) {
    match check_url_path(path) {
        Err(reason) => errs.push(field, reason),
        Ok(()) => string_value(errs, &field, path),
    }
}

fn validate_routes(errs: &mut ValidationErrors, d: &Definition, ports: &HashSet<&str>) {
    if too_many(errs, "routes", d.routes.len(), Limits::ROUTES) {
        return;
    }
    let mut prefixes = HashSet::new();
    for (i, route) in d.routes.iter().enumerate() {
        validate_path(errs, format!("routes[{i}].path_prefix"), &route.path_prefix);
        if !prefixes.insert(route.path_prefix.as_str()) {
            errs.push(
                format!("routes[{i}].path_prefix"),
                format!("duplicate route for `{}`", route.path_prefix),
            );
        }
        port_ref(errs, format!("routes[{i}].port"), &route.port, ports);
    }
    if !d.domains.is_empty() && d.routes.is_empty() {
        errs.push("routes", "domains are listed but no route exposes a port");
    }
}

fn validate_https(errs: &mut ValidationErrors, https: &crate::Https) {
    // A year as `1y` reads (365.25 days), and as preload lists count it (365 days).
    const YEAR: u64 = 31_557_600;
    const PRELOAD: u64 = 31_536_000;
    let Some(hsts) = &https.hsts else {
        return;
    };
    let max_age = hsts.max_age.0.as_secs();
    if max_age > 2 * YEAR {
        errs.push("https.hsts.max_age", "must be at most two years (2y)");
    }
    if hsts.preload && !hsts.include_subdomains {
        errs.push(
            "https.hsts.preload",
            "needs include_subdomains: true (preload lists require it)",
        );
    }
    if hsts.preload && max_age < PRELOAD {
        errs.push(
            "https.hsts.preload",
            "needs a max_age of at least a year (preload lists require it)",
        );
    }
}

/// Checks `deploy`, naming its fields under `at` (`deploy`, `overrides.fra.deploy`).
fn validate_deploy(errs: &mut ValidationErrors, at: &str, deploy: &crate::Deploy) {
    let amounts = [
        ("max_surge", &deploy.max_surge),
        ("max_unavailable", &deploy.max_unavailable),
    ];
    for (field, amount) in amounts {
        let field = format!("{at}.{field}");
        match amount {
            Amount::Count(n) if *n > Limits::SCALE_MAX => {
                errs.push(field, format!("must be at most {}", Limits::SCALE_MAX));
            }
            Amount::Percent(text) if amount.percent().is_none() => {
                errs.push(
                    field,
                    format!("`{text}` is neither a count nor a percentage from 0% to 100%"),
                );
            }
            _ => {}
        }
    }
    let zero = |amount: &Amount| match amount {
        Amount::Count(n) => *n == 0,
        Amount::Percent(_) => amount.percent() == Some(0),
    };
    if zero(&deploy.max_surge) && zero(&deploy.max_unavailable) {
        errs.push(
            format!("{at}.max_surge"),
            "max_surge and max_unavailable cannot both be 0: the rollout could not move",
        );
    }
    if deploy.drain_delay.0 > std::time::Duration::from_secs(60) {
        errs.push(format!("{at}.drain_delay"), "must be at most 1m");
    }
    if deploy.drain_timeout.0 > crate::Deploy::MAX_DRAIN {
        errs.push(format!("{at}.drain_timeout"), "must be at most 1h");
    }
    if deploy.stop_timeout.0 > crate::Deploy::MAX_STOP {
        errs.push(format!("{at}.stop_timeout"), "must be at most 10m");
    }
    let deadline = deploy.progress_deadline.0;
    if deadline < std::time::Duration::from_secs(1)
        || deadline > std::time::Duration::from_secs(3600)
    {
        errs.push(format!("{at}.progress_deadline"), "must be from 1s to 1h");
    }
    let canary = deploy.strategy == crate::Strategy::Canary;
    if !canary && !deploy.steps.is_empty() {
        errs.push(format!("{at}.steps"), "only with strategy canary");
    }
    if canary && deploy.steps.is_empty() {
        errs.push(format!("{at}.steps"), "a canary needs at least one step");
    }
    let mut before = 0;
    for (i, step) in deploy.steps.iter().enumerate() {
        if step.weight <= before || step.weight > 100 {
            errs.push(
                format!("{at}.steps[{i}].weight"),
                "must be from 1 to 100, more than the step before",
            );
        }
        before = step.weight;
        if step.pause.0 > std::time::Duration::from_secs(3600) {
            errs.push(format!("{at}.steps[{i}].pause"), "must be at most 1h");
        }
    }
    if let Some(analysis) = &deploy.analysis {
        analysis.validate(errs, &format!("{at}.analysis"));
    }
    if let Some(keep) = &deploy.keep_previous {
        if deploy.strategy == crate::Strategy::Rolling {
            errs.push(
                format!("{at}.keep_previous"),
                "only with strategy blue_green or canary",
            );
        } else if keep.0 > std::time::Duration::from_secs(3600) {
            errs.push(format!("{at}.keep_previous"), "must be at most 1h");
        }
    }
}

/// Checks `deploy.waves`: regions listed in `regions`, each in one wave, no empty wave.
fn validate_waves(errs: &mut ValidationErrors, d: &Definition) {
    let mut seen = HashSet::new();
    for (i, wave) in d.deploy.waves.iter().enumerate() {
        let at = format!("deploy.waves[{i}]");
        if wave.is_empty() {
            errs.push(at.clone(), "a wave needs at least one region");
        }
        for (j, region) in wave.iter().enumerate() {
            if !d.regions.contains(region) {
                errs.push(
                    format!("{at}[{j}]"),
                    format!("region `{region}` is not listed in `regions`"),
                );
            } else if !seen.insert(region.as_str()) {
                errs.push(
                    format!("{at}[{j}]"),
                    format!("region `{region}` is already in an earlier wave"),
                );
            }
        }
    }
}

/// Checks a region's `deploy` override: it must read merged into the definition's `deploy`,
/// must not set `waves`, and the merged result must pass the same rules (errors are reported
/// for the fields the override names, the others being the definition's own).
fn validate_deploy_override(
    errs: &mut ValidationErrors,
    at: &str,
    base: &crate::Deploy,
    o: &crate::DeployOverride,
) {
    if o.names("waves") {
        errs.push(
            format!("{at}.waves"),
            "waves order the regions of the whole service: set them in `deploy.waves`",
        );
        return;
    }
    match base.with_override(o) {
        Err(read) => {
            for e in read.errors {
                errs.push(format!("{at}.{}", e.field), e.message);
            }
        }
        Ok(merged) => {
            let mut found = ValidationErrors::default();
            validate_deploy(&mut found, at, &merged);
            for e in found.errors {
                let field = e.field.strip_prefix(at).unwrap_or(&e.field);
                if writes(&o.0, field.trim_start_matches('.')) {
                    errs.push(e.field, e.message);
                }
            }
        }
    }
}

/// Whether an override (`written`) writes the field at `path` (`max_surge`,
/// `analysis.success_rate.min`, `steps[1].pause`): it names each object on the way, and the
/// field or a value that replaces one of those objects whole.
fn writes(written: &serde_json::Map<String, serde_json::Value>, path: &str) -> bool {
    let mut object = written;
    for segment in path.split('.') {
        let name = segment.split('[').next().unwrap_or(segment);
        match object.get(name) {
            None => return false,
            Some(serde_json::Value::Object(inner)) => object = inner,
            Some(_) => return true,
        }
    }
    true
}

fn validate_domains(errs: &mut ValidationErrors, domains: &[String]) {
    if too_many(errs, "domains", domains.len(), Limits::DOMAINS) {
        return;
    }
    let mut seen = HashSet::new();
    for (i, domain) in domains.iter().enumerate() {
        if let Err(reason) = crate::check_domain(domain) {
            errs.push(format!("domains[{i}]"), reason);
        } else if !seen.insert(domain.as_str()) {
            errs.push(
                format!("domains[{i}]"),
                format!("`{domain}` is listed twice"),
            );
        }
    }
}

fn validate_checks(
    errs: &mut ValidationErrors,
    prefix: &str,
    checks: &[HealthCheck],
    ports: &HashSet<&str>,
) {
    if too_many(errs, prefix, checks.len(), Limits::HEALTH_CHECKS) {
        return;
    }
    for (i, check) in checks.iter().enumerate() {
        let at = format!("{prefix}[{i}]");
        match (&check.tcp, &check.http) {
            (Some(tcp), None) => port_ref(errs, format!("{at}.tcp.port"), &tcp.port, ports),
            (None, Some(http)) => {
                port_ref(errs, format!("{at}.http.port"), &http.port, ports);
                validate_path(errs, format!("{at}.http.path"), &http.path);
                if http.method.is_empty() || !http.method.chars().all(|c| c.is_ascii_uppercase()) {
                    errs.push(
                        format!("{at}.http.method"),
                        format!("`{}` is not an HTTP method (e.g. GET, HEAD)", http.method),
                    );
                }
                for (name, value) in &http.headers {
                    let valid = !name.is_empty()
                        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
                    if !valid {
                        errs.push(
                            format!("{at}.http.headers.{name}"),
                            "is not a header name (letters, digits and -)",
                        );
                    }
                    if value.chars().any(|c| c.is_control()) {
                        errs.push(
                            format!("{at}.http.headers.{name}"),
                            "value must not contain control characters",
                        );
                    }
                }
            }
            _ => errs.push(at.clone(), "exactly one of `tcp` or `http` must be set"),
        }
        if check.interval.0.is_zero() {
            errs.push(format!("{at}.interval"), "must be more than zero");
        }
        if check.timeout.0.is_zero() {
            errs.push(format!("{at}.timeout"), "must be more than zero");
        } else if check.timeout > check.interval {
            errs.push(
                format!("{at}.timeout"),
                format!(
                    "timeout ({}) must not exceed interval ({})",
                    check.timeout, check.interval
                ),
            );
        }
        for (name, value) in [
            ("healthy_threshold", check.healthy_threshold),
            ("unhealthy_threshold", check.unhealthy_threshold),
        ] {
            if !(1..=Limits::THRESHOLD_MAX).contains(&value) {
                errs.push(
                    format!("{at}.{name}"),
                    format!("must be between 1 and {}", Limits::THRESHOLD_MAX),
                );
            }
        }
        if check.restart_limit > Limits::RESTART_LIMIT_MAX {
            errs.push(
                format!("{at}.restart_limit"),
                format!("must be at most {}", Limits::RESTART_LIMIT_MAX),
            );
        }
    }
}

fn validate_mesh(errs: &mut ValidationErrors, allow: &[String]) {
    if too_many(errs, "mesh.allow", allow.len(), Limits::MESH_ALLOW) {
        return;
    }
    for (i, pattern) in allow.iter().enumerate() {
        let segments: Vec<&str> = pattern.split('/').collect();
        let valid = segments.len() == 3
            && segments
                .iter()
                .all(|s| *s == "*" || check_dns_label(s).is_ok());
        if !valid {
            errs.push(
                format!("mesh.allow[{i}]"),
                format!("`{pattern}` is not a pattern org/app/service (each a DNS label or *)"),
            );
        }
    }
}

fn validate_overrides(errs: &mut ValidationErrors, d: &Definition, ports: &HashSet<&str>) {
    for (region, o) in &d.overrides {
        let prefix = format!("overrides.{region}");
        if !d.regions.contains(region) {
            errs.push(
                prefix.clone(),
                format!("region `{region}` is not listed in `regions`"),
            );
            continue;
        }
        if let Some(scale) = &o.scale {
            let min = scale.min.unwrap_or(d.scale.min);
            let max = scale.max.unwrap_or(d.scale.max);
            let named = [scale.min.is_some(), scale.max.is_some()];
            validate_scale(errs, &format!("{prefix}.scale"), min, max, named);
            validate_autoscale(
                errs,
                &format!("{prefix}.scale"),
                scale.targets,
                scale.down_window,
            );
            if let Some(concurrency) = &scale.concurrency {
                concurrency.validate(errs, &format!("{prefix}.scale.concurrency"));
            }
            // The region's own targets, against the region's resources.
            if let Some(targets) = scale.targets {
                let resources = o
                    .resources
                    .map_or(d.resources, |r| d.resources.with_override(&r));
                targets.validate_resources(errs, &format!("{prefix}.scale.targets"), &resources);
            }
        }
        // The region's effective sleep, checked against its effective min; where the
        // override names neither, the top level's check said it all.
        let scale_override = o.scale.unwrap_or_default();
        if scale_override.sleep.is_some() || scale_override.min.is_some() {
            let min = scale_override.min.unwrap_or(d.scale.min);
            if let Some(sleep) = scale_override.sleep.or(d.scale.sleep) {
                sleep.validate(errs, &format!("{prefix}.scale.sleep"), min);
            }
        }
        if let Some(env) = &o.env {
            validate_env(errs, &format!("{prefix}.env"), env);
        }
        if let Some(runtime) = &o.runtime {
            validate_runtime_override(errs, &prefix, &d.runtime, runtime);
        }
        let merged = crate::derive_spec(d, Some(o));
        let env_len = merged.runtime.env().len();
        if env_len > Limits::ENV_VARS {
            errs.push(
                format!("{prefix}.env"),
                format!(
                    "the merged environment has {env_len} variables; at most {} are allowed",
                    Limits::ENV_VARS
                ),
            );
        }
        if let Some(checks) = &o.health_checks {
            validate_checks(errs, &format!("{prefix}.health_checks"), checks, ports);
        }
        if let Some(deploy) = &o.deploy {
            validate_deploy_override(errs, &format!("{prefix}.deploy"), &d.deploy, deploy);
        }
    }
}

fn validate_runtime_override(
    errs: &mut ValidationErrors,
    prefix: &str,
    base: &Runtime,
    o: &crate::RuntimeOverride,
) {
    if let Some(p) = &o.process {
        let at = format!("{prefix}.runtime.process");
        if base.process.is_none() {
            errs.push(at.clone(), "the service runs an image, not a process");
        }
        if let Some(command) = &p.command {
            if command.trim().is_empty() {
                errs.push(format!("{at}.command"), "must not be empty");
            }
            string_value(errs, &format!("{at}.command"), command);
        }
        if let Some(args) = &p.args {
            validate_args(errs, format!("{at}.args"), args);
        }
        if let Some(env) = &p.env {
            validate_env(errs, &format!("{at}.env"), env);
        }
        if let Some(dir) = &p.working_dir {
            validate_working_dir(errs, &at, dir);
        }
    }
    if let Some(i) = &o.image {
        let at = format!("{prefix}.runtime.image");
        if base.image.is_none() {
            errs.push(at.clone(), "the service runs a process, not an image");
        }
        if let Some(reference) = &i.reference {
            validate_image_ref(errs, &at, reference);
        }
        validate_image_fields(
            errs,
            &at,
            i.command.as_deref(),
            i.args.as_deref(),
            i.env.as_ref().unwrap_or(&BTreeMap::new()),
            i.working_dir.as_deref(),
            i.user.as_deref(),
        );
        if let Some(credentials) = &i.credentials {
            validate_credentials(errs, &format!("{at}.credentials"), credentials);
        }
    }
}
