//! A region's control plane, assembled: it gets its CA from the global control plane (once),
//! serves the region's xDS, certificates and agents' reports over mutual TLS, follows the
//! global control plane, keeps a disk copy, places instances and reports upward.
//!
//! Supervision, task by task:
//! - restarted (each holds nothing a restart loses; the region's state lives in [`Region`]):
//!   renewing the plane's own certificate, following the global control plane (a restart
//!   takes its first answer as a whole again), writing the disk copy, ticking the fleet,
//!   reporting upward, answering the global control plane's log queries;
//! - essential (each owns a bound socket; rebinding behind the back of the clients would hide
//!   a broken port): the authenticated xDS server, the unauthenticated one if any, and the
//!   admin server. When one ends the plane stops and [`run_regional`] returns the error.

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian_identity::enroll::JoinToken;
use meridian_identity::{control_client_config, control_server_config, trust_bundle, CertStore};
use meridian_xds::{AdsServer, Cache, Limits, UnaryClient, XdsMetrics};
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tonic::service::Routes;

use super::{bind, local, RunError, Say};
use crate::supervise::Supervisor;
use crate::{
    admin_router, follow_global, keep_disk_copy, regional_ca, report_upward, tls_incoming,
    AuthenticatedAds, GatewayListeners, GlobalApi, Issuer, JoinTokenAdmin, JoinTokens, KnownAdmins,
    Region, RegionalCa, ReportService,
};

/// The shortest and longest certificate lifetimes a region issues.
const CERT_LIFETIMES: (Duration, Duration) =
    (Duration::from_secs(10), Duration::from_secs(30 * 86_400));
/// How often the fleet is ticked (node expiry, the first placement).
const TICK: Duration = Duration::from_secs(1);

/// What a region's control plane needs; each field is the `meridian control --region` option
/// of the same name.
pub struct RegionalOptions {
    /// The region (a DNS label).
    pub region: String,
    /// The region keeps its CA, join tokens and disk copy in `region-<name>/` below it.
    pub data_dir: PathBuf,
    /// Where the xDS server (mutual TLS) listens: the region's proxies, agents and issuer.
    pub xds: SocketAddr,
    /// Where xDS is also served without authentication, for proxyless gRPC clients.
    pub xds_plaintext: Option<SocketAddr>,
    /// The admin port (/healthz, /readyz, /metrics, join tokens).
    pub admin: SocketAddr,
    /// The global control plane's xDS, an `https://` URL; or those of several replicas,
    /// separated by commas: the region follows one and moves to the next when it fails, and
    /// reports to each.
    pub global_xds: String,
    /// The global control plane's API.
    pub global_api: String,
    /// An admin token for the global API, which also gets the region its CA at the first start.
    pub admin_token: Option<String>,
    /// A one-time token for the region's first start (`meridian join-token control/<region>`).
    pub join_token: Option<String>,
    /// The lifetime of the certificates the region issues (10 s to 30 days).
    pub cert_lifetime: Duration,
    /// How long an xDS stream waits after a change before pushing.
    pub xds_coalesce: Duration,
    /// Where the region's gateways listen.
    pub gateway: GatewayListeners,
    /// Where the plane says what it does.
    pub say: Say,
}

/// Runs a region's control plane until `shutdown` resolves (`Ok`) or an essential task ends
/// (the error). Fails at once when an option is wrong or a port cannot be bound; at the first
/// start, waits for the global control plane to issue the region's CA (or for `shutdown`).
pub async fn run_regional(
    options: RegionalOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    let region = options.region.clone();
    meridian_model::check_dns_label(&region).map_err(|reason| RunError::Option {
        option: "--region",
        reason: reason.to_string(),
    })?;
    let (shortest, longest) = CERT_LIFETIMES;
    if options.cert_lifetime < shortest || options.cert_lifetime > longest {
        return Err(RunError::Option {
            option: "--cert-lifetime",
            reason: "must be between 10s and 30days".to_owned(),
        });
    }
    check_global_xds(&options.global_xds)?;
    let join_token = options
        .join_token
        .as_deref()
        .map(JoinToken::parse)
        .transpose()
        .map_err(|e| RunError::Option {
            option: "--join-token",
            reason: e.to_string(),
        })?;
    let say = options.say.clone();
    let xds = bind(options.xds, "xDS")?;
    let admin = bind(options.admin, "admin")?;
    let plaintext = options
        .xds_plaintext
        .map(|address| bind(address, "xDS without authentication"))
        .transpose()?;
    // Without a join token, an admin token also gets the region its CA.
    let credential = match (&options.join_token, &options.admin_token) {
        (Some(join), _) => join.as_str(),
        (None, Some(admin)) => admin.as_str(),
        (None, None) => "",
    };
    let global = GlobalApi::new(&options.global_api, credential);
    let region_dir = options.data_dir.join(format!("region-{region}"));
    let ca_dir = region_dir.join("ca");
    let mut shutdown = std::pin::pin!(shutdown);
    let regional = tokio::select! {
        regional = obtain_regional_ca(&global, &region, &ca_dir, join_token.as_ref(), &say) => regional?,
        () = &mut shutdown => return Err(RunError::Stopped("the region had a CA")),
    };
    say(&format!(
        "intermediate CA of region {region} {} in {} (trust domain {})",
        if regional.issued_now {
            "issued by the global control plane, stored"
        } else {
            "loaded"
        },
        ca_dir.display(),
        regional.ca.trust_domain()
    ));

    let mut registry = Registry::default();
    let metrics = XdsMetrics::new(&mut registry);
    let cache = Cache::new();
    let trust_domain = regional.ca.trust_domain().to_owned();
    let state = Arc::new(Region::new(
        &region,
        cache.clone(),
        options.gateway,
        Some(&trust_domain),
        &mut registry,
    ));
    let tokens = JoinTokens::open(&region_dir.join("join-tokens.json"))
        .map_err(|e| RunError::start("the region's join tokens", e))?;
    let issuer = Arc::new(Issuer::new(
        regional.ca,
        regional.bundle_pem,
        options.cert_lifetime,
        tokens,
        state.clone(),
        &mut registry,
    ));
    let own = issuer
        .own_certificate()
        .map_err(|e| RunError::start("making the control plane's certificate", e))?;
    let own = CertStore::new(own);
    let bundle =
        || trust_bundle(issuer.bundle_pem()).map_err(|e| RunError::start("the trust bundle", e));
    let tls = control_server_config(own.clone(), bundle()?)
        .map_err(|e| RunError::start("the xDS server's TLS", e))?;
    let to_global = control_client_config(Some(own.clone()), bundle()?)
        .map_err(|e| RunError::start("TLS to the global control plane", e))?;
    let to_global = Arc::new(to_global);
    say(&format!(
        "meridian control (region {region}) serving xDS on https://{}, admin http://{}, following {}",
        local(&xds)?,
        local(&admin)?,
        options.global_xds,
    ));
    say("  xDS and certificates need mutual TLS; proxies join with a token (meridian join-token)");

    let (synced, synced_rx) = watch::channel(false);
    let disk_copy = region_dir.join("state.json");
    if let Some(copy) = crate::disk_copy::load(&disk_copy) {
        let services = copy.deployments.len();
        state.restore(copy);
        synced.send_replace(true);
        say(&format!(
            "serving the region's last known state ({services} services, from {}) until the \
             global control plane answers",
            disk_copy.display()
        ));
    }

    let mut supervisor = Supervisor::new(&mut registry);
    supervisor.restarting("own certificate", {
        let (issuer, own) = (issuer.clone(), own.clone());
        move || issuer.clone().keep_own_certificate(own.clone())
    });
    let admin_address = local(&admin)?;
    supervisor.restarting("report upward", {
        let (url, tls, state) = (options.global_xds.clone(), to_global.clone(), state.clone());
        move || {
            let global = UnaryClient::new(&url, tls.clone());
            report_upward(global, state.clone(), admin_address)
        }
    });
    supervisor.restarting("traffic windows", {
        let state = state.clone();
        move || close_traffic_windows(state.clone())
    });
    let copy_due = state.copy_due();
    supervisor.restarting("disk copy", {
        let (state, due) = (state.clone(), copy_due.clone());
        move || keep_disk_copy(state.clone(), disk_copy.clone(), due.clone())
    });
    let log_offers = meridian_xds::logs::Offers::default();
    supervisor.restarting("answer log queries", {
        let (url, tls, state) = (options.global_xds.clone(), to_global.clone(), state.clone());
        let (offers, region) = (log_offers.clone(), region.clone());
        move || {
            let options = meridian_xds::logs::AnswerOptions {
                url: url.clone(),
                tls: Some(tls.clone()),
                concurrency: crate::REGION_LOG_QUERIES,
                who: format!("region {region}"),
            };
            let logs = crate::RegionLogs::new(state.clone(), offers.clone());
            meridian_xds::logs::answer_queries(options, logs)
        }
    });
    supervisor.restarting("follow global", {
        let (url, state) = (options.global_xds.clone(), state.clone());
        let copy_due = copy_due.clone();
        move || {
            let (tls, state) = (to_global.clone(), state.clone());
            follow_global(url.clone(), tls, state, synced.clone(), copy_due.clone())
        }
    });
    supervisor.restarting("fleet tick", {
        let state = state.clone();
        move || tick_fleet(state.clone())
    });

    let stop = supervisor.stop();
    let join_tokens = JoinTokenAdmin {
        issuer: issuer.clone(),
        global_api: options.global_api.clone(),
        known_admins: Arc::new(KnownAdmins::open(&region_dir.join("known-admins.json"))),
    };
    let limits = Limits {
        coalesce: options.xds_coalesce,
        ..Limits::default()
    };
    let ads = AdsServer::new(cache, metrics, limits);
    if let Some(plaintext) = plaintext {
        say(&format!(
            "  xDS without authentication for proxyless gRPC clients on {} (nodes are scoped by \
             the org they declare)",
            local(&plaintext)?
        ));
        let server = ads.clone().serve(plaintext, stop.clone().wait());
        supervisor.essential("the unauthenticated xDS server", server);
    }
    let authenticated = AuthenticatedAds::regional(ads.clone().into_service(), &region);
    let routes = Routes::new(authenticated)
        .add_service(ReportService::new(state.clone()))
        .add_service(meridian_xds::logs::OfferService::new(
            log_offers,
            crate::agents_of(&region),
        ))
        .into_axum_router()
        .merge(issuer.routes());
    let server = ads.serve_routes(
        Routes::from(routes),
        tls_incoming(xds, Arc::new(tls)),
        stop.clone().wait(),
    );
    supervisor.essential("the xDS server", server);
    // The admin server last: /metrics shows every metric registered above.
    let nodes = crate::nodes_admin::NodeAdmin {
        admin: join_tokens.clone(),
        region: state.clone(),
        copy_due: copy_due.clone(),
    };
    let router = admin_router(Arc::new(registry), synced_rx, Some(join_tokens))
        .merge(crate::nodes_admin::node_router(nodes));
    let admin_server = axum::serve(admin, router).with_graceful_shutdown(stop.wait());
    supervisor.essential("the admin server", admin_server.into_future());

    supervisor.run(shutdown).await?;
    tracing::info!(region = %region, "stopped");
    Ok(())
}

/// Ends a window of request figures at each multiple of
/// [`meridian_model::TRAFFIC_STEP_SECONDS`] of the wall clock, for as long as the task runs.
async fn close_traffic_windows(state: Arc<Region>) {
    let step_ms = meridian_model::TRAFFIC_STEP_SECONDS * 1000;
    loop {
        let now_ms = crate::region::unix_millis();
        let end_ms = (now_ms / step_ms + 1) * step_ms;
        tokio::time::sleep(Duration::from_millis(end_ms - now_ms)).await;
        state.close_traffic_window(end_ms / 1000, Instant::now());
    }
}

/// Ticks the region's fleet every [`TICK`] (node expiry, the first placement), waits for the
/// proxies' acknowledgements of each instance that starts draining, and removes drained
/// instances as soon as their delay is over.
async fn tick_fleet(state: Arc<Region>) {
    let mut tick = tokio::time::interval(TICK);
    let drain_started = state.drain_started();
    let mut next_drained = None;
    let mut waits = tokio::task::JoinSet::new();
    loop {
        let drained = async {
            match next_drained {
                Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tick.tick() => state.tick(Instant::now()),
            () = drain_started.notified() => {}
            () = drained => {}
            Some(_) = waits.join_next(), if !waits.is_empty() => {}
        }
        for wait in state.take_ack_waits() {
            let state = state.clone();
            waits.spawn(async move { state.wait_for_acks(&wait).await });
        }
        next_drained = state.drain(Instant::now());
    }
}

/// The region's CA: loaded, or at the first start requested from the global control plane,
/// retried (saying so) until it answers or refuses.
async fn obtain_regional_ca(
    global: &GlobalApi,
    region: &str,
    ca_dir: &Path,
    join_token: Option<&JoinToken>,
    say: &Say,
) -> Result<RegionalCa, RunError> {
    let mut wait = Duration::from_millis(200);
    loop {
        match regional_ca(global, region, ca_dir, join_token).await {
            Ok(regional) => return Ok(regional),
            Err(e) if !e.is_transient() => {
                return Err(RunError::start(format!("region {region}'s CA"), e))
            }
            Err(e) => say(&format!(
                "waiting for the global control plane to issue region {region}'s CA: {e} \
                 (retrying in {wait:?})"
            )),
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(5));
    }
}

/// Fails naming `--global-xds` unless `urls` is one `https://` URL or several separated by
/// commas.
fn check_global_xds(urls: &str) -> Result<(), RunError> {
    let servers = meridian_xds::servers(urls);
    let bad = servers.iter().find(|url| !url.starts_with("https://"));
    if servers.is_empty() || bad.is_some() {
        return Err(RunError::Option {
            option: "--global-xds",
            reason: format!(
                "`{}` is not an https:// URL: give one, e.g. https://127.0.0.1:17000, or \
                 several separated by commas (replicas of the global control plane)",
                bad.map_or(urls, String::as_str)
            ),
        });
    }
    Ok(())
}
