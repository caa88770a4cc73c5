//! Meridian's store: orgs, tokens, regions, apps, services and their deployment history, and the
//! recent purges of the edges' caches, behind the [`Store`] trait, with one global revision and
//! a gap-free change feed.
//!
//! Every write is atomic: it bumps the global revision by exactly one and appends one
//! [`Change`] to the feed, or writes nothing (applies that arrive together share one
//! transaction, and one flush to disk, each still all or nothing); a write has committed when
//! it returns (on SQLite, flushed to disk); [`Watch`] yields the feed in order from any revision. Two backends
//! implement it, alike in every rule ([`SqlStore`]): SQLite in a file, the default for one
//! machine, and PostgreSQL, which several control planes may share. Callers see only the trait:
//! nothing backend-specific (SQL, database types) may leak into it. Validation is the caller's
//! job; the store enforces only identity and referential rules (exists, already exists, still in
//! use) and that a public domain belongs to one service across all orgs.
//!
//! Several control planes sharing a PostgreSQL store share the work that must happen once
//! through a lease ([`Store::acquire_lease`]): one holder at a time, with a fencing token that
//! the holder's writes carry and the store checks in the same transaction ([`Fence`]).

mod lease;
mod location;
mod sql;
#[cfg(feature = "testing")]
pub mod testing;
pub mod trace;
mod watch;

use async_trait::async_trait;
use meridian_model::{
    App, CertificateSource, CertificateState, Change, Definition, Deployment, Endpoint,
    EndpointInput, Org, Purge, PurgeTarget, Region, RolloutControl, RolloutRecord, RolloutStatus,
    SecretInfo, SecretOwner, ServiceSummary, TokenInfo,
};

pub use lease::{Fence, LeaseInfo};
pub use location::StoreLocation;
pub use sql::SqlStore;
pub use watch::{wait_for_changes, Watch};

/// What [`Store::apply_service`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// The service's current deployment after the apply.
    pub deployment: Deployment,
    /// Whether the apply made it (false: the definition equalled the current version's).
    pub changed: bool,
}

/// Identifies a service: org, app and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    /// Owning org.
    pub org: String,
    /// Owning app.
    pub app: String,
    /// Service name.
    pub name: String,
}

impl ServiceKey {
    /// The key of the service `definition` describes.
    pub fn of(definition: &Definition) -> Self {
        ServiceKey {
            org: definition.org.clone(),
            app: definition.app.clone(),
            name: definition.name.clone(),
        }
    }

    /// The key that a change's key (`org/app/service`, then anything: an endpoint's
    /// `org/app/service/endpoint`) names; `None` if it names no service.
    pub fn from_change_key(key: &str) -> Option<Self> {
        let mut parts = key.splitn(4, '/');
        let (org, app, name) = (parts.next()?, parts.next()?, parts.next()?);
        Some(ServiceKey {
            org: org.to_owned(),
            app: app.to_owned(),
            name: name.to_owned(),
        })
    }
}

impl std::fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.org, self.app, self.name)
    }
}

/// What the regions need of a service now ([`Store::service_states`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceState {
    /// Its current deployment; `None` when the service does not exist.
    pub deployment: Option<Deployment>,
    /// The pause or promotion of its rollout, if one was asked.
    pub control: Option<RolloutControl>,
    /// Its endpoints, by id.
    pub endpoints: Vec<Endpoint>,
}

/// Narrows a service listing; `None` fields match everything.
#[derive(Debug, Clone, Default)]
pub struct ServiceFilter {
    /// Only services of this org.
    pub org: Option<String>,
    /// Only services of apps with this name.
    pub app: Option<String>,
    /// Only services with this name.
    pub name: Option<String>,
}

/// A token to store: its secret is already hashed by the caller.
#[derive(Debug, Clone)]
pub struct NewToken {
    /// Public id of the token.
    pub id: String,
    /// Org scope; `None` for an admin token.
    pub org: Option<String>,
    /// What the token is for.
    pub label: String,
    /// Hash of the secret (hex).
    pub hash: String,
}

/// A purge to record: the app and what it removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPurge {
    /// The org of the app.
    pub org: String,
    /// The app.
    pub app: String,
    /// What it removes.
    pub target: PurgeTarget,
}

/// A public domain's certificate as stored: its private key only sealed (the store never sees
/// it in clear). Times are seconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateRecord {
    /// The domain (a host name, or a wildcard `*.example.com`); it must be claimed by a service.
    pub domain: String,
    /// Where the certificate comes from.
    pub source: CertificateSource,
    /// Its state.
    pub state: CertificateState,
    /// The issuer's name (the certificate's issuer common name or organisation), once there is
    /// a certificate.
    pub issuer: Option<String>,
    /// Start of the certificate's validity.
    pub not_before: Option<i64>,
    /// End of the certificate's validity.
    pub not_after: Option<i64>,
    /// The chain, PEM, leaf first.
    pub chain_pem: Option<String>,
    /// The private key (PEM), sealed by the caller.
    pub sealed_key: Option<Vec<u8>>,
    /// Why the last attempt failed, or why none can be made.
    pub last_error: Option<String>,
    /// When the next attempt (issuance, renewal, retry) is due; `None` when none is planned.
    pub next_attempt: Option<i64>,
    /// Failed attempts in a row (for backoff).
    pub attempts: u32,
    /// Time of the last write (set by the store).
    pub updated_at: i64,
}

/// A claimed public domain, with its certificate if it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainClaim {
    /// The domain.
    pub domain: String,
    /// The service that claims it.
    pub service: ServiceKey,
    /// Its certificate row, if any.
    pub certificate: Option<CertificateRecord>,
}

/// Whether applying a service may create its org when it does not exist yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingOrg {
    /// Create the org (an installation admin applies).
    Create,
    /// Fail with [`StoreError::NotFound`].
    Reject,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The named resource does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The named resource exists already.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The operation would break a reference (e.g. deleting a region still in use).
    #[error("{0}")]
    Conflict(String),
    /// A public domain is served by another service: `index` is its place in the definition's
    /// `domains`, `held` the claim that overlaps it (the domain itself or a wildcard) and
    /// `holder` the service holding it. Whom to name the holder to is the caller's decision;
    /// the message names nobody.
    #[error("domains[{index}]: `{domain}` is already served by another service")]
    DomainTaken {
        /// The domain's index in `domains`.
        index: usize,
        /// The domain asked for.
        domain: String,
        /// The claim that overlaps it.
        held: String,
        /// The service that holds `held`.
        holder: Box<ServiceKey>,
    },
    /// The backend failed (I/O, database).
    #[error("storage failure: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The database cannot be reached (down, restarting, refusing connections, or the
    /// connection broke, perhaps during a commit). Nothing was written, or, if the connection
    /// broke during the commit, perhaps everything: try again once it is back.
    #[error("the database is unreachable: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A definition references a secret neither its app nor its org has: `field` is the first
    /// field that does (e.g. `runtime.process.env.DB_PASSWORD`).
    #[error("{field}: {}", secret_missing(secret, app))]
    SecretMissing {
        /// The field that references it.
        field: String,
        /// The secret's name.
        secret: String,
        /// The app, `org/app`.
        app: String,
    },
    /// The store was shut down while a watcher waited.
    #[error("the store was closed")]
    Closed,
    /// A backup to restore is not one, or not a whole one: the message names the first
    /// problem (e.g. `tables.orgs[3].created_at: expected an integer`).
    #[error("not a valid backup: {0}")]
    InvalidBackup(String),
    /// A write made for the holder of a lease was refused: the holder's term (its fencing
    /// token) is over, because the lease expired or another replica took it.
    #[error(
        "lease `{}` is no longer held by `{}` with token {}: the write was refused",
        .0.lease, .0.holder, .0.token
    )]
    Fenced(Fence),
    /// Stored data could not be read back.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

/// Why a reference to secret `secret` of a service of app `app` (`org/app`) resolves to
/// nothing, and what to do.
pub fn secret_missing(secret: &str, app: &str) -> String {
    let org = app.split_once('/').map_or(app, |(org, _)| org);
    format!(
        "secret `{secret}` does not exist in app `{app}` nor in org `{org}` \
         (set it first with `meridian secret set --app` or `--org`)"
    )
}

/// Result of a store operation.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Persistence for the global control plane. Every method that writes bumps the global revision
/// by exactly one and appends one change, atomically; a method that fails writes nothing.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The revision of the last write (0 for an empty store).
    async fn revision(&self) -> Result<u64>;
    /// Reads from the database itself (nothing the store keeps in memory answers it): fails
    /// with [`StoreError::Unavailable`] when it cannot be reached.
    async fn check_reachable(&self) -> Result<()>;
    /// A receiver whose value is the latest committed revision; it changes after every commit.
    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64>;
    /// Up to `limit` changes with revision greater than `after`, in revision order.
    async fn changes_after(&self, after: u64, limit: u32) -> Result<Vec<Change>>;

    /// Stores a new token.
    async fn create_token(&self, token: NewToken) -> Result<TokenInfo>;
    /// The token whose secret hashes to `hash`, if any.
    async fn find_token(&self, hash: &str) -> Result<Option<TokenInfo>>;
    /// Tokens of `org`, or admin tokens when `org` is `None`.
    async fn list_tokens(&self, org: Option<&str>) -> Result<Vec<TokenInfo>>;
    /// Revokes a token.
    async fn delete_token(&self, id: &str) -> Result<()>;

    /// Creates an org.
    async fn create_org(&self, name: &str) -> Result<Org>;
    /// All orgs, by name.
    async fn list_orgs(&self) -> Result<Vec<Org>>;
    /// One org.
    async fn get_org(&self, name: &str) -> Result<Option<Org>>;
    /// Deletes an org with no apps, and its tokens.
    async fn delete_org(&self, name: &str) -> Result<()>;

    /// Creates or updates a region.
    async fn put_region(&self, region: &Region) -> Result<()>;
    /// All regions, by name.
    async fn list_regions(&self) -> Result<Vec<Region>>;
    /// Deletes a region no service runs in.
    async fn delete_region(&self, name: &str) -> Result<()>;

    /// Creates an app in an existing org.
    async fn create_app(&self, org: &str, name: &str) -> Result<App>;
    /// Apps, of one org or of all.
    async fn list_apps(&self, org: Option<&str>) -> Result<Vec<App>>;
    /// One app.
    async fn get_app(&self, org: &str, name: &str) -> Result<Option<App>>;
    /// Deletes an app with no services.
    async fn delete_app(&self, org: &str, name: &str) -> Result<()>;

    /// Creates or updates a service: a new deployment version, current from now on, unless
    /// `definition` equals the current version's (then nothing is written, no change is fed,
    /// and the current version comes back with `changed: false`). The
    /// app is created if missing; the org as `missing_org` says. Fails with
    /// [`StoreError::DomainTaken`] if another service holds one of its domains or a claim that
    /// overlaps it (equal, or a wildcard covering one or the other); the service's own claims
    /// follow its domains, and deleting it releases them.
    async fn apply_service(
        &self,
        definition: &Definition,
        missing_org: MissingOrg,
    ) -> Result<Applied>;
    /// Services matching `filter`, ordered by org, app, name.
    async fn list_services(&self, filter: &ServiceFilter) -> Result<Vec<ServiceSummary>>;
    /// The current deployment of a service.
    async fn get_service(&self, key: &ServiceKey) -> Result<Option<Deployment>>;
    /// Deletes a service and its history.
    async fn delete_service(&self, key: &ServiceKey) -> Result<()>;
    /// Every version of a service, oldest first.
    async fn list_deployments(&self, key: &ServiceKey) -> Result<Vec<Deployment>>;
    /// One version of a service.
    async fn get_deployment(&self, key: &ServiceKey, version: u64) -> Result<Option<Deployment>>;
    /// Creates a new version equal to version `to`, current from now on; its domains are claimed
    /// as by [`Store::apply_service`]. With a `fence` (a rollback the lease's holder makes), it
    /// is refused with [`StoreError::Fenced`] unless that term of the lease is still current.
    async fn rollback(
        &self,
        key: &ServiceKey,
        to: u64,
        fence: Option<&Fence>,
    ) -> Result<Deployment>;
    /// Records `region`'s rollout of a version of a service, replacing what was recorded for
    /// that region and version (a [`RolloutRecord`] of the history); returns false and writes
    /// nothing when it equals what is recorded. Fails with [`StoreError::NotFound`] when the
    /// service does not exist; fenced as [`Store::rollback`].
    async fn record_rollout(
        &self,
        key: &ServiceKey,
        region: &str,
        rollout: &RolloutStatus,
        fence: Option<&Fence>,
    ) -> Result<bool>;
    /// The rollouts of a service, newest version first, then by region.
    async fn list_rollouts(&self, key: &ServiceKey) -> Result<Vec<RolloutRecord>>;
    /// Sets (`Some`) or removes (`None`) the pause or promotion of a service's rollout;
    /// returns false and writes nothing when that is already so. Fails with
    /// [`StoreError::NotFound`] when the service does not exist.
    async fn set_rollout_control(
        &self,
        key: &ServiceKey,
        control: Option<RolloutControl>,
    ) -> Result<bool>;
    /// The pause or promotion of a service's rollout, if one was asked.
    async fn get_rollout_control(&self, key: &ServiceKey) -> Result<Option<RolloutControl>>;
    /// For each of `keys`, in order, what [`Store::get_service`],
    /// [`Store::get_rollout_control`] and [`Store::list_endpoints`] answer, in a few round
    /// trips however many keys there are.
    async fn service_states(&self, keys: &[ServiceKey]) -> Result<Vec<ServiceState>>;
    /// The current deployments of every service that runs in `region`, ordered by key.
    async fn deployments_in_region(&self, region: &str) -> Result<Vec<Deployment>>;

    /// Registers or updates endpoint `id` of an existing service.
    async fn put_endpoint(
        &self,
        key: &ServiceKey,
        id: &str,
        input: &EndpointInput,
    ) -> Result<Endpoint>;
    /// The endpoints of a service, by id (empty when the service has none or does not exist).
    async fn list_endpoints(&self, key: &ServiceKey) -> Result<Vec<Endpoint>>;
    /// Every endpoint registered in `region`, ordered by org, app, service and id.
    async fn endpoints_in_region(&self, region: &str) -> Result<Vec<Endpoint>>;
    /// Removes an endpoint.
    async fn delete_endpoint(&self, key: &ServiceKey, id: &str) -> Result<()>;

    /// Claimed domains matching `filter` (by their service), ordered by domain, each with its
    /// certificate.
    async fn list_domains(&self, filter: &ServiceFilter) -> Result<Vec<DomainClaim>>;
    /// One claimed domain (exactly this name, no wildcard matching), with its certificate.
    async fn get_domain(&self, domain: &str) -> Result<Option<DomainClaim>>;
    /// Creates or replaces the certificate of a claimed domain ([`StoreError::NotFound`] when
    /// the domain is not claimed: the row lives as long as the claim). `updated_at` is set by
    /// the store. With a `fence` (work done for a lease's holder), the write is refused with
    /// [`StoreError::Fenced`] unless that term of the lease is still current.
    async fn put_certificate(
        &self,
        certificate: &CertificateRecord,
        fence: Option<&Fence>,
    ) -> Result<()>;
    /// The sealed credentials of the ACME account at `directory`, if one was stored.
    async fn get_acme_account(&self, directory: &str) -> Result<Option<Vec<u8>>>;
    /// Stores the sealed credentials of the ACME account at `directory`, replacing any.
    async fn put_acme_account(&self, directory: &str, sealed: &[u8]) -> Result<()>;
    /// The sealed TLS session ticket keys and when they were last rotated, if stored.
    async fn get_ticket_keys(&self) -> Result<Option<(Vec<u8>, i64)>>;
    /// Stores the sealed TLS session ticket keys, rotated at `rotated_at`; fenced as
    /// [`Store::put_certificate`].
    async fn put_ticket_keys(
        &self,
        sealed: &[u8],
        rotated_at: i64,
        fence: Option<&Fence>,
    ) -> Result<()>;

    /// Takes lease `name` for `holder` until `ttl` from now (the database's clock) when it is
    /// free or expired, with a fencing token one greater than the last holder's; renews it,
    /// same token, when `holder` holds it; `None` when another holds it. Writes no change.
    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<Option<Fence>>;
    /// Ends `fence`'s term of its lease now (if it is still current), so that another holder
    /// may take it at once.
    async fn release_lease(&self, fence: &Fence) -> Result<()>;
    /// Lease `name`, if it was ever taken.
    async fn get_lease(&self, name: &str) -> Result<Option<LeaseInfo>>;

    /// Creates or replaces secret `name` of `owner` with `sealed` (sealed by the caller; the
    /// store never sees a value in clear), one version more than before (1 when new). An app
    /// is created if missing; the org must exist ([`StoreError::NotFound`]). Each service whose
    /// current version references the secret and resolves it to this one (for an org's: a
    /// service of the org whose app has no secret of that name) gets, in the same transaction,
    /// a new version equal to it ([`meridian_model::DeploymentOrigin::Secret`]), which rolls
    /// its instances over to the new value.
    async fn put_secret(
        &self,
        owner: &SecretOwner,
        name: &str,
        sealed: &[u8],
    ) -> Result<SecretInfo>;
    /// The secrets of `owner`, by name: names and versions only.
    async fn list_secrets(&self, owner: &SecretOwner) -> Result<Vec<SecretInfo>>;
    /// Secret `name` of `owner` with its sealed value, if it exists.
    async fn get_secret(
        &self,
        owner: &SecretOwner,
        name: &str,
    ) -> Result<Option<(SecretInfo, Vec<u8>)>>;
    /// Deletes secret `name` of `owner`. The services whose current version references it
    /// and resolves it to this one must have another to resolve to (an app's secret that
    /// shadows the org's of that name): each then gets, in the same transaction, a new version
    /// equal to it (origin secret) that rolls its instances over to the org's value; otherwise
    /// [`StoreError::Conflict`] naming them.
    async fn delete_secret(&self, owner: &SecretOwner, name: &str) -> Result<()>;

    /// Records a purge of an existing app ([`StoreError::NotFound`] otherwise) as the next in
    /// sequence (one more than the last: 1, 2, 3, … without gaps), and drops the oldest
    /// beyond [`meridian_model::PURGE_HISTORY`]. The change carries the sequence.
    async fn add_purge(&self, purge: &NewPurge) -> Result<Purge>;
    /// Up to `limit` of the purges kept with a sequence greater than `after`, oldest first.
    async fn purges_after(&self, after: u64, limit: u32) -> Result<Vec<Purge>>;
    /// The secret a reference `{secret: NAME}` of a service of app `org/app` resolves to: the
    /// app's secret of that name if it exists, else the org's; with its owner (whose
    /// [`SecretOwner::seal_label`] opens it) and sealed value.
    async fn resolve_secret(
        &self,
        org: &str,
        app: &str,
        name: &str,
    ) -> Result<Option<(SecretOwner, SecretInfo, Vec<u8>)>> {
        for owner in [SecretOwner::app(org, app), SecretOwner::org(org)] {
            if let Some((info, sealed)) = self.get_secret(&owner, name).await? {
                return Ok(Some((owner, info, sealed)));
            }
        }
        Ok(None)
    }
}
