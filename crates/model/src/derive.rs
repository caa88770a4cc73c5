//! Regional derivation: a definition becomes one [`RegionalDeployment`] per listed region.
//!
//! Override semantics: maps merge by key with the override winning (`scale`, `runtime`,
//! `runtime.process`, `runtime.image`, their `env`, and `env`); lists and scalars replace
//! (`args`, `health_checks`, `command`, `working_dir`, `ref`, `user`, `read_only_root_fs`,
//! `scale.min`, `scale.max`, and each field of `resources`); `deploy` merges by key like a map
//! (see [`crate::DeployOverride`]). The region-level `env` merges after the runtime's `env`, so
//! it wins where both name a key.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::env::EnvValue;
use crate::{
    Definition, Image, ImageOverride, Process, ProcessOverride, RegionOverride, ServiceSpec,
};

/// A service's definition as one region runs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RegionalDeployment {
    /// Owning org.
    pub org: String,
    /// Owning app.
    pub app: String,
    /// Service name.
    pub service: String,
    /// The region this deployment is for.
    pub region: String,
    /// The deployment version it was derived from.
    pub version: u64,
    /// The effective spec in this region.
    pub spec: ServiceSpec,
}

/// Derives one regional deployment per region of `definition`, in the order the regions are listed.
///
/// Pure and deterministic; assumes the definition is valid (overrides for unlisted regions are
/// ignored).
pub fn derive_regional(definition: &Definition, version: u64) -> Vec<RegionalDeployment> {
    definition
        .regions
        .iter()
        .map(|region| RegionalDeployment {
            org: definition.org.clone(),
            app: definition.app.clone(),
            service: definition.name.clone(),
            region: region.clone(),
            version,
            spec: derive_spec(definition, definition.overrides.get(region)),
        })
        .collect()
}

/// The effective spec: the definition's base with `region_override` (if any) applied.
pub fn derive_spec(
    definition: &Definition,
    region_override: Option<&RegionOverride>,
) -> ServiceSpec {
    let mut spec = ServiceSpec {
        scale: definition.scale,
        runtime: definition.runtime.clone(),
        resources: definition.resources,
        ports: definition.ports.clone(),
        routes: definition.routes.clone(),
        domains: definition.domains.clone(),
        health_checks: definition.health_checks.clone(),
        mesh: definition.mesh.clone(),
        https: definition.https.clone(),
        cache: definition.cache.clone(),
        deploy: definition.deploy.clone(),
        secrets: BTreeMap::new(),
    };
    if let Some(o) = region_override {
        apply_override(&mut spec, o);
    }
    spec
}

fn apply_override(spec: &mut ServiceSpec, o: &RegionOverride) {
    if let Some(scale) = &o.scale {
        spec.scale.min = scale.min.unwrap_or(spec.scale.min);
        spec.scale.max = scale.max.unwrap_or(spec.scale.max);
        spec.scale.targets = scale.targets.or(spec.scale.targets);
        spec.scale.down_window = scale.down_window.or(spec.scale.down_window);
        spec.scale.sleep = scale.sleep.or(spec.scale.sleep);
        spec.scale.concurrency = scale.concurrency.or(spec.scale.concurrency);
    }
    if let Some(r) = &o.runtime {
        if let (Some(process), Some(p)) = (&mut spec.runtime.process, &r.process) {
            apply_process_override(process, p);
        }
        if let (Some(image), Some(i)) = (&mut spec.runtime.image, &r.image) {
            apply_image_override(image, i);
        }
    }
    if let (Some(env), Some(named)) = (spec.runtime.env_mut(), &o.env) {
        merge_env(env, named);
    }
    if let Some(checks) = &o.health_checks {
        spec.health_checks.clone_from(checks);
    }
    if let Some(resources) = &o.resources {
        spec.resources = spec.resources.with_override(resources);
    }
    // Validation made sure that the merge reads; an override that does not is ignored.
    if let Some(deploy) = o
        .deploy
        .as_ref()
        .and_then(|d| spec.deploy.with_override(d).ok())
    {
        spec.deploy = deploy;
    }
}

fn merge_env(env: &mut BTreeMap<String, EnvValue>, named: &BTreeMap<String, EnvValue>) {
    env.extend(named.iter().map(|(k, v)| (k.clone(), v.clone())));
}

fn apply_process_override(process: &mut Process, p: &ProcessOverride) {
    if let Some(command) = &p.command {
        process.command.clone_from(command);
    }
    if let Some(args) = &p.args {
        process.args.clone_from(args);
    }
    if let Some(dir) = &p.working_dir {
        process.working_dir = Some(dir.clone());
    }
    if let Some(env) = &p.env {
        merge_env(&mut process.env, env);
    }
}

fn apply_image_override(image: &mut Image, i: &ImageOverride) {
    if let Some(reference) = &i.reference {
        image.reference.clone_from(reference);
    }
    if let Some(command) = &i.command {
        image.command = Some(command.clone());
    }
    if let Some(args) = &i.args {
        image.args = Some(args.clone());
    }
    if let Some(dir) = &i.working_dir {
        image.working_dir = Some(dir.clone());
    }
    if let Some(user) = &i.user {
        image.user = Some(user.clone());
    }
    if let Some(read_only) = i.read_only_root_fs {
        image.read_only_root_fs = read_only;
    }
    if let Some(credentials) = &i.credentials {
        image.credentials = Some(credentials.clone());
    }
    if let Some(env) = &i.env {
        merge_env(&mut image.env, env);
    }
}
