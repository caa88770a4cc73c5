//! The service definition a user applies, and the effective per-region spec derived from it.
//!
//! Every field and default is documented in `docs/definition.md`; keep the two in step.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::autoscale::ScaleTargets;
use crate::deploy::Deploy;
use crate::duration::HumanDuration;
use crate::env::EnvValue;
use crate::{CachePolicy, Resources};

/// A service definition: what a user applies with `meridian deploy`.
///
/// Unknown fields are rejected by [`crate::parse_definition_json`], all of them at once; semantic rules
/// are checked by [`crate::validate_definition`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Definition {
    /// The organisation (tenant) owning the service; a DNS label.
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
    )]
    pub org: String,
    /// The application the service belongs to; a DNS label.
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
    )]
    pub app: String,
    /// The service's name, unique within its app; a DNS label.
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
    )]
    pub name: String,
    /// The regions the service runs in, by name; at least one, no duplicates.
    pub regions: Vec<String>,
    /// Instance count bounds; defaults to `{min: 1, max: 1}`.
    #[serde(default)]
    pub scale: Scale,
    /// How an instance is started.
    pub runtime: Runtime,
    /// The CPU and memory each instance may use; not limited when absent.
    #[serde(default, skip_serializing_if = "Resources::is_empty")]
    pub resources: Resources,
    /// The ports an instance listens on.
    #[serde(default)]
    pub ports: Vec<Port>,
    /// Public routes: path prefixes exposed through the edges, each to a declared port.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Public host names served by this service's routes.
    #[serde(default)]
    pub domains: Vec<String>,
    /// Health checks run against every instance.
    #[serde(default)]
    pub health_checks: Vec<HealthCheck>,
    /// Who outside the org may call this service over the mesh.
    #[serde(default)]
    pub mesh: Mesh,
    /// How the edges serve the service's domains over HTTPS.
    #[serde(default, skip_serializing_if = "Https::is_default")]
    pub https: Https,
    /// How the edges cache the service's responses; nothing is cached when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CachePolicy>,
    /// How a new version replaces the running one.
    #[serde(default, skip_serializing_if = "Deploy::is_default")]
    pub deploy: Deploy,
    /// Per-region overrides, keyed by a region listed in `regions`.
    #[serde(default)]
    pub overrides: BTreeMap<String, RegionOverride>,
}

/// Bounds on the number of instances in one region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Scale {
    /// Fewest instances kept running (0 allowed); defaults to 1.
    #[serde(default = "default_scale")]
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 1000))]
    pub min: u32,
    /// Most instances ever run; at least 1 and at least `min`; defaults to 1.
    #[serde(default = "default_scale")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 1000))]
    pub max: u32,
    /// What each instance should carry: the region runs as many instances as the load needs,
    /// between `min` and `max`; absent: always `min`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targets: Option<ScaleTargets>,
    /// How long the load must stay low before instances are removed (the stabilisation
    /// window of scale-down); defaults to `5m`, at most `1h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub down_window: Option<HumanDuration>,
    /// With `min: 0`: the instances sleep once idle for `sleep.after` and the first request
    /// wakes one; absent, `min: 0` runs none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sleep: Option<crate::Sleep>,
    /// Limits on the requests in flight to each instance, enforced by its node proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<crate::Concurrency>,
}

fn default_scale() -> u32 {
    1
}

impl Default for Scale {
    fn default() -> Self {
        Scale {
            min: 1,
            max: 1,
            targets: None,
            down_window: None,
            sleep: None,
            concurrency: None,
        }
    }
}

impl Scale {
    /// The stabilisation window of scale-down.
    pub fn down_window(&self) -> std::time::Duration {
        self.down_window
            .map_or(crate::autoscale::DEFAULT_DOWN_WINDOW, |w| w.0)
    }

    /// The fewest instances a region places: `min`, but one for a service that sleeps with
    /// `min: 0` (it sleeps there and wakes on the first request).
    pub fn fewest_placed(&self) -> u32 {
        if self.sleep.is_some() {
            self.min.max(1)
        } else {
            self.min
        }
    }
}

/// How an instance runs: a local process or an OCI image. Exactly one of the two is set
/// (checked by [`crate::validate_definition`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Runtime {
    /// A process started by the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<Process>,
    /// A container the agent runs from an OCI image with runc.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<Image>,
}

impl Runtime {
    /// A process runtime.
    pub fn process(process: Process) -> Runtime {
        Runtime {
            process: Some(process),
            image: None,
        }
    }

    /// The environment of whichever runtime is set (`None` when neither is).
    pub fn env_mut(&mut self) -> Option<&mut BTreeMap<String, EnvValue>> {
        match (&mut self.process, &mut self.image) {
            (Some(p), _) => Some(&mut p.env),
            (None, Some(i)) => Some(&mut i.env),
            (None, None) => None,
        }
    }

    /// The environment of whichever runtime is set (empty when neither is).
    pub fn env(&self) -> &BTreeMap<String, EnvValue> {
        static EMPTY: BTreeMap<String, EnvValue> = BTreeMap::new();
        match (&self.process, &self.image) {
            (Some(p), _) => &p.env,
            (None, Some(i)) => &i.env,
            (None, None) => &EMPTY,
        }
    }
}

/// A container run from an OCI image. The image's configuration (entrypoint, command,
/// environment, working directory, user) gives the defaults that the fields here override.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Image {
    /// `[REGISTRY/]REPOSITORY[:TAG][@sha256:DIGEST]`; the tag defaults to `latest`. The global
    /// control plane pins a tag to its digest when the definition is applied
    /// (`REPOSITORY:TAG@sha256:…`), so that every instance of a version runs the same bytes.
    #[serde(rename = "ref")]
    pub reference: String,
    /// Replaces the image's entrypoint (and then its command too, unless `args` is given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Replaces the image's command (the entrypoint's arguments).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    /// Environment variables, merged by key over the image's: each a string or `{secret:
    /// NAME}`, a secret of the service's app resolved by the agent at start.
    #[serde(default)]
    pub env: BTreeMap<String, EnvValue>,
    /// Replaces the image's working directory; an absolute path inside the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// Replaces the image's user: `UID[:GID]` (numeric).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Mount the root filesystem read-only (`/tmp` stays writable); defaults to false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only_root_fs: bool,
    /// The credential for the image's registry, from secrets (the app's, else its org's); without it the
    /// registry is asked anonymously (or with the installation's `--registry-credential`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<RegistryCredentials>,
}

/// A registry's user name and password, as a definition names them: the password is always a
/// secret of the service's app (`{secret: NAME}`, checked by [`crate::validate_definition`]),
/// the user name a string or a secret. The global control plane uses them to resolve tags at
/// apply; the agents that run the instances receive them like the environment's secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RegistryCredentials {
    /// The user name: a string or `{secret: NAME}`.
    pub username: EnvValue,
    /// The password or token: `{secret: NAME}` only.
    pub password: EnvValue,
}

impl RegistryCredentials {
    /// The secrets named, with the field (under `prefix`, e.g. `runtime.image.credentials`)
    /// that names each.
    pub fn secret_references(&self, prefix: &str) -> Vec<(String, &str)> {
        [("username", &self.username), ("password", &self.password)]
            .into_iter()
            .filter_map(|(field, value)| Some((format!("{prefix}.{field}"), value.secret()?)))
            .collect()
    }
}

/// A process the agent starts for each instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Process {
    /// The executable to run; not empty.
    pub command: String,
    /// Arguments passed to the command.
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment variables set for the process: each a string or `{secret: NAME}`, a secret
    /// of the service's app resolved by the agent at start.
    #[serde(default)]
    pub env: BTreeMap<String, EnvValue>,
    /// Working directory; defaults to the instance's own directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
}

/// The protocol spoken on a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1.
    Http,
    /// HTTP/2 (cleartext, prior knowledge) behind the mesh.
    Http2,
    /// gRPC (HTTP/2).
    Grpc,
    /// Opaque TCP.
    Tcp,
}

/// A named port an instance listens on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Port {
    /// The port's name, unique within the service; a DNS label. Routes and checks refer to it.
    pub name: String,
    /// The port number, 1–65535, unique within the service.
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 65535))]
    pub port: u32,
    /// The protocol; defaults to `http`.
    #[serde(default = "default_protocol")]
    pub protocol: Protocol,
}

impl Protocol {
    /// Whether the port speaks HTTP/2 (cleartext, prior knowledge): `http2` and `grpc`.
    pub fn is_http2(self) -> bool {
        matches!(self, Protocol::Http2 | Protocol::Grpc)
    }
}

fn default_protocol() -> Protocol {
    Protocol::Http
}

/// A public route: requests whose path starts with `path_prefix` go to `port`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Route {
    /// Path prefix, starting with `/`; defaults to `/`.
    #[serde(default = "default_path")]
    pub path_prefix: String,
    /// Name of a declared port.
    pub port: String,
}

fn default_path() -> String {
    "/".to_owned()
}

fn default_method() -> String {
    "GET".to_owned()
}

/// One health check. Exactly one of `tcp` or `http` is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HealthCheck {
    /// Healthy when a TCP connection to the port succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpCheck>,
    /// Healthy when an HTTP request answers 2xx or 3xx.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpCheck>,
    /// Time after start during which failures do not count; defaults to `10s`.
    #[serde(default = "HumanDuration::ten_seconds")]
    pub grace_period: HumanDuration,
    /// Time between checks; defaults to `10s`; more than zero.
    #[serde(default = "HumanDuration::ten_seconds")]
    pub interval: HumanDuration,
    /// How long one check may take; defaults to `2s`; more than zero, at most `interval`.
    #[serde(default = "HumanDuration::two_seconds")]
    pub timeout: HumanDuration,
    /// Consecutive successes to become healthy; defaults to 1.
    #[serde(default = "default_healthy_threshold")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 100))]
    pub healthy_threshold: u32,
    /// Consecutive failures to become unhealthy; defaults to 3.
    #[serde(default = "default_unhealthy_threshold")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 100))]
    pub unhealthy_threshold: u32,
    /// Restarts of an unhealthy instance before it is replaced elsewhere; defaults to 5.
    #[serde(default = "default_restart_limit")]
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 1000))]
    pub restart_limit: u32,
}

fn default_healthy_threshold() -> u32 {
    1
}

fn default_unhealthy_threshold() -> u32 {
    3
}

fn default_restart_limit() -> u32 {
    5
}

/// A TCP connect check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TcpCheck {
    /// Name of a declared port.
    pub port: String,
}

/// An HTTP request check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HttpCheck {
    /// Name of a declared port.
    pub port: String,
    /// Request path, starting with `/`; defaults to `/`.
    #[serde(default = "default_path")]
    pub path: String,
    /// Request method; defaults to `GET`.
    #[serde(default = "default_method")]
    pub method: String,
    /// Extra request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// Mesh access policy for callers from other orgs (callers in the same org are always allowed).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Mesh {
    /// Patterns `org/app/service`; each segment a DNS label or `*`.
    #[serde(default)]
    pub allow: Vec<String>,
}

/// How the edges serve a service's domains over HTTPS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Https {
    /// Answer plain-HTTP requests for a domain with `308` to the same URL over HTTPS, once the
    /// edge holds a certificate for it; defaults to true.
    #[serde(default = "default_true")]
    pub redirect: bool,
    /// Send `Strict-Transport-Security` on HTTPS responses; none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hsts: Option<Hsts>,
}

fn default_true() -> bool {
    true
}

impl Default for Https {
    fn default() -> Self {
        Https {
            redirect: true,
            hsts: None,
        }
    }
}

impl Https {
    /// Whether every field has its default (then it is left out of documents).
    pub fn is_default(&self) -> bool {
        *self == Https::default()
    }
}

/// HTTP Strict Transport Security (RFC 6797): browsers use only HTTPS for the domain for
/// `max_age`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Hsts {
    /// How long browsers remember it (`1y`, `180d`); at most two years.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub max_age: crate::HumanDuration,
    /// Also every subdomain; defaults to false.
    #[serde(default)]
    pub include_subdomains: bool,
    /// Ask to be on browsers' preload lists (needs `include_subdomains` and a `max_age` of at
    /// least a year); defaults to false.
    #[serde(default)]
    pub preload: bool,
}

impl Hsts {
    /// The `Strict-Transport-Security` header value.
    pub fn header_value(&self) -> String {
        let mut value = format!("max-age={}", self.max_age.0.as_secs());
        if self.include_subdomains {
            value.push_str("; includeSubDomains");
        }
        if self.preload {
            value.push_str("; preload");
        }
        value
    }
}

/// What one region changes relative to the base definition.
///
/// Maps merge by key (the override wins); lists and scalars replace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RegionOverride {
    /// Replaces the `scale` fields it sets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<ScaleOverride>,
    /// Merged into the runtime's env (`runtime.process.env` or `runtime.image.env`), after the
    /// override's own `runtime` env.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, EnvValue>>,
    /// Replaces the named process or image fields; their `env` merges by key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<RuntimeOverride>,
    /// Replaces the whole list of health checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_checks: Option<Vec<HealthCheck>>,
    /// Replaces the `resources` fields it sets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Any `deploy` fields but `waves`, merged into `deploy` by key (see
    /// [`DeployOverride`](crate::DeployOverride)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub deploy: Option<crate::DeployOverride>,
}

/// A partial [`Scale`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ScaleOverride {
    /// Replaces `scale.min`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 1000))]
    pub min: Option<u32>,
    /// Replaces `scale.max`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 1000))]
    pub max: Option<u32>,
    /// Replaces `scale.targets` as a whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targets: Option<ScaleTargets>,
    /// Replaces `scale.down_window`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub down_window: Option<HumanDuration>,
    /// Replaces `scale.sleep` as a whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sleep: Option<crate::Sleep>,
    /// Replaces `scale.concurrency` as a whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<crate::Concurrency>,
}

/// A partial [`Runtime`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RuntimeOverride {
    /// Changes to the process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessOverride>,
    /// Changes to the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageOverride>,
}

/// A partial [`Image`]: `env` merges by key, every other field named replaces.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ImageOverride {
    /// Replaces the image reference.
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// Replaces the command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Replaces the arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    /// Merged into the environment by key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, EnvValue>>,
    /// Replaces the working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// Replaces the user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Replaces `read_only_root_fs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only_root_fs: Option<bool>,
    /// Replaces the registry credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<RegistryCredentials>,
}

/// A partial [`Process`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProcessOverride {
    /// Replaces the command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Replaces the argument list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    /// Merged into the environment by key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, EnvValue>>,
    /// Replaces the working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
}

/// The effective specification of a service in one region: the definition with that region's
/// overrides applied, and without the fields that only matter before derivation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ServiceSpec {
    /// Instance count bounds.
    pub scale: Scale,
    /// How an instance is started.
    pub runtime: Runtime,
    /// The CPU and memory each instance may use.
    #[serde(default, skip_serializing_if = "Resources::is_empty")]
    pub resources: Resources,
    /// The ports an instance listens on.
    pub ports: Vec<Port>,
    /// Public routes.
    pub routes: Vec<Route>,
    /// Public host names.
    pub domains: Vec<String>,
    /// Health checks.
    pub health_checks: Vec<HealthCheck>,
    /// Mesh access policy.
    pub mesh: Mesh,
    /// HTTPS at the edges.
    #[serde(default, skip_serializing_if = "Https::is_default")]
    pub https: Https,
    /// Caching at the edges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CachePolicy>,
    /// How a new version replaces the running one.
    #[serde(default, skip_serializing_if = "Deploy::is_default")]
    pub deploy: Deploy,
    /// The version of each secret the environment references, by name: set by the global
    /// control plane when it sends the spec to a region (empty in a derivation), so that a
    /// changed secret changes what the instances run, and they are replaced.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, u64>,
}

impl ServiceSpec {
    /// The names of the secrets the environment and the image's registry credentials
    /// reference.
    pub fn secret_names(&self) -> impl Iterator<Item = &str> {
        let credentials = self
            .runtime
            .image
            .as_ref()
            .and_then(|i| i.credentials.as_ref());
        let credentials = credentials
            .into_iter()
            .flat_map(|c| [&c.username, &c.password]);
        self.runtime
            .env()
            .values()
            .chain(credentials)
            .filter_map(EnvValue::secret)
    }

    /// Whether an instance started with `self` runs the same as one started with `other`: the
    /// two differ at most in what the instance never sees — what only the edges read
    /// (`domains`, `https`, `cache`) and what only the control planes read (`scale`, `deploy`). A deploy
    /// that changes only those keeps the running instances, with the new spec; a new version of
    /// a secret they use (`secrets`) replaces them.
    pub fn runs_like(&self, other: &ServiceSpec) -> bool {
        // Every field is named: a new one is compared unless it is added to the unseen here.
        let ServiceSpec {
            scale: _,
            runtime,
            resources,
            ports,
            routes,
            domains: _,
            health_checks,
            mesh,
            https: _,
            cache: _,
            deploy: _,
            secrets,
        } = self;
        (
            runtime,
            resources,
            ports,
            routes,
            health_checks,
            mesh,
            secrets,
        ) == (
            &other.runtime,
            &other.resources,
            &other.ports,
            &other.routes,
            &other.health_checks,
            &other.mesh,
            &other.secrets,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(changes: serde_json::Value) -> ServiceSpec {
        let mut spec = serde_json::json!({
            "scale": {"min": 1, "max": 1},
            "runtime": {"process": {"command": "hello"}},
            "ports": [{"name": "http", "port": 8080}],
            "routes": [{"path_prefix": "/", "port": "http"}],
            "domains": ["shop.example.com"],
            "health_checks": [],
            "mesh": {},
        });
        for (field, value) in changes.as_object().unwrap() {
            spec[field] = value.clone();
        }
        serde_json::from_value(spec).unwrap()
    }

    #[test]
    fn only_what_the_instance_never_sees_may_change_under_a_running_instance() {
        let running = spec(serde_json::json!({}));
        let unseen = spec(serde_json::json!({
            "domains": ["www.example.com"],
            "https": {"redirect": false, "hsts": {"max_age": "1d"}},
            "cache": {"default_ttl": "1m"},
            "scale": {"min": 3, "max": 5},
            "deploy": {"max_surge": 2, "drain_delay": "3s"},
        }));
        assert!(running.runs_like(&unseen));
        for seen in [
            serde_json::json!({"runtime": {"process": {"command": "other"}}}),
            serde_json::json!({"runtime": {"process": {"command": "hello", "env": {"A": "b"}}}}),
            serde_json::json!({"ports": [{"name": "http", "port": 8081}]}),
            serde_json::json!({"mesh": {"allow": ["acme/*/*"]}}),
            serde_json::json!({"secrets": {"DB_PASSWORD": 2}}),
            serde_json::json!({"resources": {"memory": "64Mi"}}),
        ] {
            assert!(!running.runs_like(&spec(seen.clone())), "{seen}");
        }
    }
}
