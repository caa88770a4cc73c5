//! The global control plane, assembled: the public API over the store (SQLite in the data
//! directory, or a PostgreSQL database), the installation's root CA, and the xDS server from which regional control
//! planes follow their regional deployments and to which they report.
//!
//! Supervision, task by task:
//! - restarted (each rebuilds what it needs from the store and the reports): publishing the
//!   regional deployments and region summaries, publishing the purges of the edges' caches
//!   (and recording the edges' acknowledgements of each), renewing the plane's own
//!   certificate, the public domains' certificates (orders, renewals, publishing to edges,
//!   session ticket keys);
//! - the lease (restarted): of several replicas on one PostgreSQL database, the holder of the
//!   lease does the singleton work (see [`crate::lease`]); the certificates' task of every
//!   replica publishes, that of the holder alone orders, marks and rotates; the holder alone
//!   records the regions' rollouts and rolls back failed ones. At shutdown the
//!   holder releases the lease, so that another replica takes it at once;
//! - essential (each owns a bound socket): the API server and the xDS server for the regions.
//!   When one ends the plane stops and [`run_global`] returns the error.
//!
//! The xDS server answers regions and edges only once the plane is ready: the store's regional
//! deployments, region summaries, purges and certificates are in its cache, and every region
//! has reported (or [`FIRST_REPORTS`] has passed). Until then they keep what they hold; answered
//! earlier, a region or edge resuming after a restart of this plane would be told that what the
//! cache does not hold yet is gone (and stop instances, drop certificates, or route nowhere).
//! `/readyz` says what the plane still waits for.

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use meridian_api::Readiness;
use meridian_identity::{
    server_config, trust_bundle, Authority, CertStore, SealingKey, SpiffeId, Subject,
};
use meridian_store::{Store, StoreLocation};
use meridian_xds::{AdsServer, Cache, Limits, XdsMetrics};
use prometheus_client::registry::Registry;
use tonic::service::Routes;

use super::{bind, local, RunError, Say};
use crate::certificates::{
    CertificateMetrics, CertificateOptions, IssuerConfig, LocalCa, Manager, CERTIFICATES_PUBLISHED,
};
use crate::lease::{keep_lease, LeaseKeeper, LeaseMetrics, LeaseState, SQLITE_HOLDER};
use crate::purges::{publish_purges, PurgeSinks, PURGES_PUBLISHED};
use crate::supervise::Supervisor;
use crate::{
    issue_own_certificate, keep_own_certificate, publish_regional_deployments, tls_incoming,
    AuthenticatedAds, FirstLoad, JoinTokens, RegionReports, ReportService, ReportSource, PUBLISHED,
    REPORTED, REPORT_INTERVAL,
};

/// Lifetime of the global control plane's own certificate (renewed at two thirds of it).
const OWN_CERT_LIFETIME: Duration = Duration::from_secs(86_400);
/// How long the installation's root CA is valid.
const ROOT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400);
/// How long, from its start, the plane waits for every region's first report before it
/// publishes those that have not reported as not reporting: two report intervals, so that a
/// region whose report was due just as the plane came back has reported again.
const FIRST_REPORTS: Duration = REPORT_INTERVAL.saturating_mul(2);

/// What the global control plane needs; each field is the `meridian control --global` option
/// of the same name.
pub struct GlobalOptions {
    /// Holds the root CA and, unless `store` names another, the database; created if missing.
    pub data_dir: PathBuf,
    /// Where the store is, if not in SQLite in the data directory.
    pub store: Option<StoreLocation>,
    /// The installation's trust domain (fixed when the root CA is made, at the first start).
    pub trust_domain: String,
    /// Where the public API listens.
    pub listen: SocketAddr,
    /// Where regional control planes follow their regional deployments (xDS, mutual TLS).
    pub xds: SocketAddr,
    /// Certificates of public domains: the secrets key and the issuer.
    pub certificates: CertificateOptions,
    /// Where the plane says what it does.
    pub say: Say,
    /// The registries at which image tags are resolved to digests when definitions are applied.
    pub registries: meridian_model::RegistryOptions,
}

/// Runs the global control plane until `shutdown` resolves (`Ok`) or an essential task ends
/// (the error). Fails at once when an option is wrong, the store or the CA cannot be opened or a
/// port cannot be bound.
pub async fn run_global(
    options: GlobalOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    let GlobalOptions {
        data_dir,
        store,
        trust_domain,
        listen,
        xds,
        certificates,
        say,
        registries,
    } = options;
    std::fs::create_dir_all(&data_dir).map_err(|e| {
        RunError::start(
            format!("creating the data directory {}", data_dir.display()),
            e,
        )
    })?;
    let location = store.unwrap_or_else(|| StoreLocation::Sqlite(data_dir.join("meridian.db")));
    let store: Arc<dyn Store> = Arc::new(
        location
            .open()
            .await
            .map_err(|e| RunError::start(format!("opening the store at {location}"), e))?,
    );
    let admin_token = meridian_api::bootstrap_admin_token(&*store)
        .await
        .map_err(|e| RunError::start("creating the admin token", format!("{e:?}")))?;
    let (ca, created) = root_ca(&data_dir, &trust_domain)?;
    let (secrets, issuer) = certificate_setup(&data_dir, &certificates, &say)?;
    let ca = Arc::new(ca);
    let listener = bind(listen, "the API")?;
    let xds = bind(xds, "xDS")?;
    let addr = local(&listener)?;
    say(&format!(
        "meridian control (global) serving http://{addr} (data in {}, store {location})",
        data_dir.display()
    ));
    say(&format!(
        "  regional control planes follow https://{} (xDS over mutual TLS)",
        local(&xds)?
    ));
    say(&format!(
        "root CA for trust domain {} {} in {} (key readable by its owner only)",
        ca.trust_domain(),
        if created { "created" } else { "loaded" },
        data_dir.join("ca").display()
    ));
    match admin_token {
        Some(token) => {
            say(&format!(
                "admin token (shown only at first start, stored hashed): {token}"
            ));
            say(&format!(
                "  export MERIDIAN_API=http://{addr} MERIDIAN_TOKEN={token}"
            ));
        }
        None => say("admin token: created at first start, not shown again"),
    }

    let mut registry = Registry::default();
    let metrics = XdsMetrics::new(&mut registry);
    let mut supervisor = Supervisor::new(&mut registry);
    let holder = match &location {
        StoreLocation::Sqlite(_) => SQLITE_HOLDER.to_owned(),
        StoreLocation::Postgres(_) => format!("{addr} pid {}", std::process::id()),
    };
    let (keeper, lease) =
        LeaseKeeper::new(store.clone(), &holder, LeaseMetrics::new(&mut registry));
    supervisor.restarting("lease", {
        let keeper = keeper.clone();
        move || keep_lease(keeper.clone())
    });
    let cache = Cache::new();
    let reports = meridian_api::Reports::default();
    let certificates_part = secrets.as_ref().map(|_| CERTIFICATES_PUBLISHED);
    let readiness = Readiness::waiting_for(
        [PUBLISHED, REPORTED, PURGES_PUBLISHED]
            .into_iter()
            .chain(certificates_part),
    );
    readiness.describe_with({
        let lease = lease.clone();
        move || describe_lease(&lease)
    });
    let first = FirstLoad {
        readiness: readiness.clone(),
        reports_by: tokio::time::Instant::now() + FIRST_REPORTS,
    };
    supervisor.restarting("publish regional deployments", {
        let (store, cache, reports) = (store.clone(), cache.clone(), reports.clone());
        let secrets = secrets.clone();
        move || {
            let latest = reports.clone();
            let source = ReportSource {
                latest: Box::new(move |region| latest.get(region)),
                changed: reports.subscribe(),
            };
            publish_regional_deployments(
                store.clone(),
                cache.clone(),
                source,
                first.clone(),
                secrets.clone(),
            )
        }
    });
    supervisor.restarting("publish purges", {
        let store = store.clone();
        let sinks = Arc::new(PurgeSinks {
            cache: cache.clone(),
            acks: reports.purges().clone(),
            readiness: readiness.clone(),
        });
        move || {
            let (store, sinks) = (store.clone(), sinks.clone());
            async move { publish_purges(store, &sinks).await }
        }
    });
    supervisor.restarting("record rollouts", {
        let (store, reports, lease) = (store.clone(), reports.clone(), lease.clone());
        move || {
            let latest = reports.clone();
            crate::rollout_history::record_rollouts(
                store.clone(),
                Box::new(move |region| latest.get(region)),
                reports.subscribe(),
                lease.clone(),
            )
        }
    });
    let own_id = SpiffeId {
        trust_domain: ca.trust_domain().to_owned(),
        subject: Subject::Control { region: None },
    };
    let own = issue_own_certificate(&ca, &own_id, OWN_CERT_LIFETIME)
        .map_err(|e| RunError::start("making the control plane's certificate", e))?;
    let own = CertStore::new(own);
    supervisor.restarting("own certificate", {
        let (ca, own) = (ca.clone(), own.clone());
        move || {
            let (ca, id) = (ca.clone(), own_id.clone());
            keep_own_certificate(own.clone(), OWN_CERT_LIFETIME, move || {
                issue_own_certificate(&ca, &id, OWN_CERT_LIFETIME)
            })
        }
    });
    let bundle =
        trust_bundle(ca.certificate_pem()).map_err(|e| RunError::start("the trust bundle", e))?;
    let tls = server_config(own, bundle).map_err(|e| RunError::start("the xDS server's TLS", e))?;
    if let Some(key) = &secrets {
        let certificate_metrics = CertificateMetrics::new(&mut registry);
        let (store, cache, key) = (store.clone(), cache.clone(), key.clone());
        let (readiness, lease) = (readiness.clone(), lease.clone());
        supervisor.restarting("certificates", move || {
            let manager = Manager::new(
                store.clone(),
                cache.clone(),
                key.clone(),
                issuer.clone(),
                certificate_metrics.clone(),
                lease.clone(),
            );
            let readiness = readiness.clone();
            async move {
                if let Err(e) = manager.run(&readiness).await {
                    tracing::warn!(error = %e, "certificates: reading the store failed");
                }
            }
        });
    }
    let stop = supervisor.stop();
    let ads = AdsServer::new(cache, metrics, Limits::default()).answering_when(readiness.ready());
    reports.set_own_target(meridian_model::MetricsTarget {
        address: addr.to_string(),
        role: "control".to_owned(),
        node: "global".to_owned(),
    });
    let recorder: Arc<dyn crate::RegionRecorder> = Arc::new(reports.clone());
    let report_methods = (
        RegionReports::new(recorder.clone()),
        crate::EdgeReports::new(recorder),
    );
    let log_offers = meridian_xds::logs::Offers::default();
    let federation = ads.clone().serve_routes(
        Routes::new(AuthenticatedAds::global(ads.into_service()))
            .add_service(ReportService::with(report_methods))
            .add_service(meridian_xds::logs::OfferService::new(
                log_offers.clone(),
                crate::regional_planes(),
            )),
        tls_incoming(xds, Arc::new(tls)),
        stop.clone().wait(),
    );
    supervisor.essential("the xDS server for the regions", federation);
    let region_tokens = JoinTokens::open(&data_dir.join("region-join-tokens.json"))
        .map_err(|e| RunError::start("the regions' join tokens", e))?;
    let trust = meridian_api::RootTrust {
        ca,
        region_tokens: Arc::new(region_tokens),
    };
    // The API last: its /metrics shows every metric registered above.
    let router = meridian_api::router_with(
        store,
        Some(trust),
        registry,
        reports,
        secrets,
        readiness,
        registries,
        Some(Arc::new(crate::GlobalLogs::new(log_offers))),
    );
    let api = axum::serve(listener, router).with_graceful_shutdown(stop.wait());
    supervisor.essential("the API server", api.into_future());

    let outcome = supervisor.run(shutdown).await;
    keeper.release().await;
    outcome?;
    tracing::info!("stopped");
    Ok(())
}

/// The `/readyz` line saying whether this replica holds the lease.
fn describe_lease(lease: &LeaseState) -> String {
    match lease.fence() {
        Some(fence) => format!(
            "lease: held by this replica ({}, token {}): it does the singleton work\n",
            lease.holder(),
            fence.token
        ),
        None => format!(
            "lease: not held by this replica ({}): another does the singleton work\n",
            lease.holder()
        ),
    }
}

/// The installation's root CA: loaded from `<data>/ca`, or made there at the first start.
/// Returns it and whether it was made now.
fn root_ca(data_dir: &Path, trust_domain: &str) -> Result<(Authority, bool), RunError> {
    let valid = !trust_domain.is_empty()
        && trust_domain
            .split('.')
            .all(|label| meridian_model::check_dns_label(label).is_ok());
    if !valid {
        return Err(RunError::Option {
            option: "--trust-domain",
            reason: format!("`{trust_domain}` is not DNS labels separated by dots"),
        });
    }
    let dir = data_dir.join("ca");
    if let Some(ca) = Authority::load(&dir, trust_domain)
        .map_err(|e| RunError::start("loading the root CA", e))?
    {
        return Ok((ca, false));
    }
    let ca = Authority::create_root(trust_domain, ROOT_VALIDITY)
        .map_err(|e| RunError::start("making the root CA", e))?;
    ca.save(&dir)
        .map_err(|e| RunError::start("storing the root CA", e))?;
    Ok((ca, true))
}

/// The secrets key and the issuer `options` ask for: no key, no certificates (and an issuer
/// without a key is an error); `--local-ca` and `--acme-directory` exclude each other.
fn certificate_setup(
    data_dir: &Path,
    options: &CertificateOptions,
    say: &Say,
) -> Result<(Option<Arc<SealingKey>>, IssuerConfig), RunError> {
    let Some(path) = &options.secrets_key else {
        if options.local_ca || options.acme.is_some() {
            return Err(RunError::Option {
                option: "--secrets-key",
                reason: "--local-ca and --acme-directory need a secrets key file to seal \
                         private keys in the store"
                    .to_owned(),
            });
        }
        say("certificates: off (no --secrets-key); edges get no certificates from this plane");
        return Ok((None, IssuerConfig::None));
    };
    let option_error = |reason: String| RunError::Option {
        option: "--secrets-key",
        reason,
    };
    let key = if options.create_secrets_key {
        let (key, created) =
            SealingKey::load_or_create(path).map_err(|e| option_error(e.to_string()))?;
        if created {
            say(&format!(
                "secrets key created in {} (keep it: the store's private keys open only with it)",
                path.display()
            ));
        }
        key
    } else {
        SealingKey::load(path).map_err(|e| option_error(e.to_string()))?
    };
    let issuer = match (&options.acme, options.local_ca) {
        (Some(_), true) => {
            return Err(RunError::Option {
                option: "--local-ca",
                reason: "choose one issuer: --local-ca or --acme-directory".to_owned(),
            })
        }
        (Some(acme), false) => {
            say(&format!(
                "certificates: ordered from {} (ACME, {:?} challenges answered by the edges)",
                acme.directory, acme.challenge
            ));
            IssuerConfig::Acme(acme.clone())
        }
        (None, true) => {
            let (ca, created) = LocalCa::open(data_dir)
                .map_err(|e| RunError::start("the local CA for public names", e))?;
            say(&format!(
                "certificates: issued by the local CA for public names ({}); clients trust {}",
                if created { "created" } else { "loaded" },
                ca.certificate_file().display()
            ));
            IssuerConfig::Local(Arc::new(ca))
        }
        (None, false) => {
            say("certificates: uploads only (no --local-ca or --acme-directory)");
            IssuerConfig::None
        }
    };
    Ok((Some(Arc::new(key)), issuer))
}
