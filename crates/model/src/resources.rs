//! The resources the store keeps besides definitions: regions, deployments and the change feed.

use serde::{Deserialize, Serialize};

use crate::Definition;

/// A region: a place where instances run, with coordinates used to order regions by distance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Region {
    /// The region's name; a DNS label.
    pub name: String,
    /// Latitude in degrees, −90 to 90.
    pub lat: f64,
    /// Longitude in degrees, −180 to 180.
    pub lon: f64,
}

/// The body of a request that creates or updates a region (its name comes from the path).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RegionInput {
    /// Latitude in degrees, −90 to 90.
    #[cfg_attr(feature = "openapi", schema(minimum = -90.0, maximum = 90.0))]
    pub lat: f64,
    /// Longitude in degrees, −180 to 180.
    #[cfg_attr(feature = "openapi", schema(minimum = -180.0, maximum = 180.0))]
    pub lon: f64,
}

/// What a region's control plane reports upward: its nodes and the health of the services it
/// runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RegionReport {
    /// Nodes whose agents report.
    pub nodes: u32,
    /// How many instances those nodes may run together.
    pub capacity: u32,
    /// Where the region's gateway listens (`ip:port`), if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Each service the region runs.
    pub services: Vec<ServiceHealth>,
}

/// A service's instances in a region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ServiceHealth {
    /// Owning org.
    pub org: String,
    /// Owning app.
    pub app: String,
    /// The service.
    pub service: String,
    /// The deployment version the region runs.
    pub version: u64,
    /// Instances placed on nodes.
    pub placed: u32,
    /// Of those, the healthy ones (asleep counts: it takes requests, which wake it).
    pub healthy: u32,
    /// The addresses of the healthy instances (their node proxies' mesh listeners are there),
    /// through which other regions' services reach this one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// During a rollout, the instances in service by the version they run (the new one and
    /// those it replaces); empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<VersionHealth>,
    /// The service's last rollout in the region (under way, or how the last one ended);
    /// none when the region has not rolled out a version of it since it took it over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<crate::RolloutStatus>,
    /// What keeps instances from running as wanted, in words: instances that fit on no node
    /// and why (`1 instance not placed: no node has 2 cpu free …`), instances unhealthy or
    /// failed and why (`web-0 unhealthy: oom_killed: …`), instances starting whose image
    /// cannot be pulled (`web-0 starting: pulling image failed: unauthorized …`, see
    /// [`ServiceHealth::PULL_FAILED`]); at most [`ServiceHealth::PROBLEMS`],
    /// each at most [`ServiceHealth::PROBLEM_LEN`] bytes; empty when none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// Its instances in service by state: `pending` (placed, not reported yet), then as their
    /// agents report them (`starting`, `healthy`, `sleeping (light)`, `sleeping (deep)`,
    /// `unhealthy`, `failed`, `stopped`); empty from an older region.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub instances: std::collections::BTreeMap<String, u32>,
    /// The region's last autoscaling decision, when the service scales on its load
    /// (`scale.targets`): instances in service, wanted, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<crate::AutoscaleStatus>,
    /// Whether all of its instances in service sleep (`scale.sleep`): a request there waits
    /// for a wake.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub asleep: bool,
    /// The longest of its instances' last wakes, in milliseconds (0: none measured yet): what
    /// a request waits there when it is asleep, which edges weigh against going elsewhere.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub wake_ms: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl ServiceHealth {
    /// Most problems reported per service.
    pub const PROBLEMS: usize = 8;
    /// Longest problem reported, in bytes.
    pub const PROBLEM_LEN: usize = 512;
    /// How an agent's detail of a `starting` instance begins while the instance's image
    /// cannot be pulled (the agent retries with backoff): such an instance is a problem.
    pub const PULL_FAILED: &'static str = "pulling image failed: ";
    /// The states [`ServiceHealth::instances`] counts by.
    pub const STATES: [&'static str; 8] = [
        "pending",
        "starting",
        "healthy",
        crate::SLEEPING_LIGHT,
        crate::SLEEPING_DEEP,
        "unhealthy",
        "failed",
        "stopped",
    ];

    /// Whether an instance reported in `state` with `detail` is a problem.
    pub fn is_problem(state: &str, detail: &str) -> bool {
        match state {
            "unhealthy" | "failed" => true,
            "starting" => detail.starts_with(Self::PULL_FAILED),
            _ => false,
        }
    }
}

/// A service's instances in service in a region that run one version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VersionHealth {
    /// The deployment version.
    pub version: u64,
    /// Instances placed with it, in service.
    pub placed: u32,
    /// Of those, the healthy ones.
    pub healthy: u32,
}

/// How a deployment version came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum DeploymentOrigin {
    /// A user applied a definition.
    Apply,
    /// A rollback copied an earlier version.
    Rollback,
    /// A secret the definition references changed: a copy of the version before, so that its
    /// instances roll over to the new value as `deploy.strategy` says.
    Secret,
}

/// One version of a service's definition. Versions start at 1 and only grow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Deployment {
    /// The version number, unique per service.
    pub version: u64,
    /// The store revision that created this version.
    pub revision: u64,
    /// Creation time, seconds since the Unix epoch.
    pub created_at: i64,
    /// Whether this version was applied or rolled back to.
    pub origin: DeploymentOrigin,
    /// For a rollback, the version that was copied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back_from: Option<u64>,
    /// The definition of this version.
    pub definition: Definition,
}

/// A service as listed: its identity and current version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ServiceSummary {
    /// Owning org.
    pub org: String,
    /// Owning app.
    pub app: String,
    /// Service name.
    pub name: String,
    /// The current deployment version.
    pub version: u64,
    /// Regions of the current version.
    pub regions: Vec<String>,
    /// Time of the last change, seconds since the Unix epoch.
    pub updated_at: i64,
}

/// What kind of resource a change touched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    /// An org (key: `org`).
    Org,
    /// An API token (key: the token's id).
    Token,
    /// A region (key: `region`).
    Region,
    /// An app (key: `org/app`).
    App,
    /// A service and its current deployment (key: `org/app/service`).
    Service,
    /// An endpoint of a service (key: `org/app/service/endpoint`).
    Endpoint,
    /// The public domains a service claims (key: `org/app/service`): recorded with the version
    /// that changed them, and only then; a deleted service's claims go with its `service`
    /// change.
    Domains,
    /// A public domain's certificate (key: the domain).
    Certificate,
    /// An ACME account (key: the directory URL).
    #[serde(rename = "acme_account")]
    AcmeAccount,
    /// The edges' TLS session ticket keys (key: `session-ticket-keys`).
    #[serde(rename = "ticket_keys")]
    TicketKeys,
    /// A region's rollout of a service's version (key: `org/app/service/region`).
    Rollout,
    /// A pause or promotion of a service's rollout (key: `org/app/service`).
    #[serde(rename = "rollout_control")]
    RolloutControl,
    /// A secret of an app (key: `org/app/NAME`); the change carries the secret's new version,
    /// never its value.
    Secret,
    /// A secret of an org (key: `org/NAME`); the change carries the secret's new version, never
    /// its value.
    #[serde(rename = "org_secret")]
    OrgSecret,
    /// A purge of an app's responses cached at the edges (key: `org/app`); the change carries
    /// the purge's sequence number.
    Purge,
}

/// A secret as listed: its name and version, never its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SecretInfo {
    /// The secret's name (an environment variable name).
    pub name: String,
    /// Its version: 1 when created, one more at each change of its value.
    pub version: u64,
    /// Time of its last change, seconds since the Unix epoch.
    pub updated_at: i64,
}

/// Whose a secret is: an app's, seen by the app's services only, or an org's, seen by every
/// app of the org that has no secret of the same name (an app's secret shadows its org's).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SecretOwner {
    /// Secrets of app `app` of org `org`.
    App {
        /// The org.
        org: String,
        /// The app.
        app: String,
    },
    /// Secrets of org `org`.
    Org {
        /// The org.
        org: String,
    },
}

impl SecretOwner {
    /// The secrets of app `org/app`.
    pub fn app(org: &str, app: &str) -> SecretOwner {
        SecretOwner::App {
            org: org.to_owned(),
            app: app.to_owned(),
        }
    }

    /// The secrets of org `org`.
    pub fn org(org: &str) -> SecretOwner {
        SecretOwner::Org {
            org: org.to_owned(),
        }
    }

    /// The org the secrets belong to (directly, or through its app).
    pub fn org_name(&self) -> &str {
        match self {
            SecretOwner::App { org, .. } | SecretOwner::Org { org } => org,
        }
    }

    /// The label secret `name`'s sealed value is bound to (see the identity crate's sealing),
    /// so that a value copied onto another secret's row does not open there:
    /// `secret/<org>/<app>/<name>` for an app's, `org-secret/<org>/<name>` for an org's.
    pub fn seal_label(&self, name: &str) -> String {
        match self {
            SecretOwner::App { org, app } => format!("secret/{org}/{app}/{name}"),
            SecretOwner::Org { org } => format!("org-secret/{org}/{name}"),
        }
    }

    /// The key of secret `name`'s changes in the feed: `org/app/NAME` ([`ChangeKind::Secret`])
    /// or `org/NAME` ([`ChangeKind::OrgSecret`]).
    pub fn change_key(&self, name: &str) -> (ChangeKind, String) {
        match self {
            SecretOwner::App { org, app } => (ChangeKind::Secret, format!("{org}/{app}/{name}")),
            SecretOwner::Org { org } => (ChangeKind::OrgSecret, format!("{org}/{name}")),
        }
    }
}

/// Names the owner as messages do: app `org/app`, or org `org`.
impl std::fmt::Display for SecretOwner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretOwner::App { org, app } => write!(f, "app `{org}/{app}`"),
            SecretOwner::Org { org } => write!(f, "org `{org}`"),
        }
    }
}

/// Whether a change created/updated or removed its resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ChangeOp {
    /// Created or updated.
    Put,
    /// Removed.
    Delete,
}

/// One entry of the store's change feed. Every write produces exactly one, with the next revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Change {
    /// The global revision of the write; consecutive, starting at 1.
    pub revision: u64,
    /// What kind of resource changed.
    pub kind: ChangeKind,
    /// Which resource changed (format depends on `kind`).
    pub key: String,
    /// Put or delete.
    pub op: ChangeOp,
    /// For a service put, the new current version; for a secret put, the secret's new version;
    /// for a purge, its sequence number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// Commit time, microseconds since the Unix epoch.
    pub committed_at_us: i64,
}

/// An organisation: the tenant that owns apps and is the unit of isolation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Org {
    /// The org's name; a DNS label.
    pub name: String,
    /// Creation time, seconds since the Unix epoch.
    pub created_at: i64,
}

/// An application: a group of services within an org.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct App {
    /// Owning org.
    pub org: String,
    /// The app's name; a DNS label.
    pub name: String,
    /// Creation time, seconds since the Unix epoch.
    pub created_at: i64,
}

/// An API token as listed: never its secret, which is shown once at creation and stored hashed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenInfo {
    /// The token's id (not secret), used to revoke it.
    pub id: String,
    /// The org the token is scoped to; absent for an installation admin token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    /// A label saying what the token is for.
    pub label: String,
    /// Creation time, seconds since the Unix epoch.
    pub created_at: i64,
}

/// The health of an endpoint, as its reporter (today the API caller, later the agent) sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum EndpointHealth {
    /// Serving; receives traffic.
    #[default]
    Healthy,
    /// Failing its checks; receives no traffic.
    Unhealthy,
    /// Going away: finishes what it has, receives no new traffic.
    Draining,
}

impl EndpointHealth {
    /// The name used in JSON: `healthy`, `unhealthy` or `draining`.
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointHealth::Healthy => "healthy",
            EndpointHealth::Unhealthy => "unhealthy",
            EndpointHealth::Draining => "draining",
        }
    }
}

/// The body of a request that registers or updates an endpoint (its identity comes from the path).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EndpointInput {
    /// The region the endpoint runs in; one of the service's current regions.
    pub region: String,
    /// The endpoint's IP address (IPv4 or IPv6).
    pub address: String,
    /// Port numbers by port name, for ports where the endpoint listens on another number than the
    /// definition declares (e.g. several instances on one loopback address). Names must be ports
    /// of the service.
    #[serde(default)]
    pub ports: std::collections::BTreeMap<String, u32>,
    /// Health; defaults to `healthy`.
    #[serde(default)]
    pub health: EndpointHealth,
}

/// An instance of a service that proxies may send traffic to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Endpoint {
    /// Owning org.
    pub org: String,
    /// Owning app.
    pub app: String,
    /// The service it is an instance of.
    pub service: String,
    /// The endpoint's id, unique within the service; a DNS label.
    pub id: String,
    /// The region it runs in.
    pub region: String,
    /// Its IP address.
    pub address: String,
    /// Port numbers by port name that differ from the definition's.
    #[serde(default)]
    pub ports: std::collections::BTreeMap<String, u32>,
    /// Its health.
    pub health: EndpointHealth,
    /// Time of the last change, seconds since the Unix epoch.
    pub updated_at: i64,
}

#[cfg(test)]
mod tests {
    use super::ServiceHealth;

    #[test]
    fn a_starting_instance_is_a_problem_only_while_its_image_cannot_be_pulled() {
        let failing = format!(
            "{}unauthorized by the registry: …; retrying in 4s",
            ServiceHealth::PULL_FAILED
        );
        assert!(ServiceHealth::is_problem("starting", &failing));
        assert!(!ServiceHealth::is_problem("starting", "pulling r/hello:v1"));
        assert!(!ServiceHealth::is_problem("starting", "started"));
        assert!(ServiceHealth::is_problem("unhealthy", "exited 1"));
        assert!(ServiceHealth::is_problem("failed", "gave up"));
        assert!(!ServiceHealth::is_problem("healthy", &failing));
    }
}
