//! `meridian control --global`: the global control plane (public API over the store), and
//! `meridian control --region R`: a region's control plane (xDS for the region's proxies).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use meridian_control::{
    admin_router, follow_global, issue_own_certificate, keep_own_certificate,
    publish_regional_deployments, regional_ca, report_upward, tls_incoming, AuthenticatedAds,
    GatewayListeners, GlobalApi, Issuer, JoinTokenAdmin, JoinTokens, KnownAdmins, Region,
    RegionReports, RegionalCa, ReportService, ReportSource,
};
use meridian_identity::enroll::JoinToken;
use meridian_identity::{
    control_client_config, control_server_config, server_config, trust_bundle, Authority,
    CertStore, SpiffeId, Subject,
};
use meridian_store::{SqliteStore, Store};
use meridian_xds::{AdsServer, Cache, Limits, UnaryClient, XdsMetrics};
use tonic::service::Routes;

use crate::ClientArgs;

/// Options of `meridian control`.
#[derive(Args)]
#[command(group(clap::ArgGroup::new("plane").required(true).args(["global", "region"])))]
pub struct ControlArgs {
    /// Run the global control plane: the public API, the store and the change feed.
    #[arg(long)]
    global: bool,
    /// Run the control plane of this region: it follows the global control plane's xDS
    /// (`--global-xds`) and serves the region's configuration over xDS. At its first start it
    /// gets its CA from the global API (`--api`) with `--join-token`.
    #[arg(long, value_name = "REGION")]
    region: Option<String>,
    /// Directory for the embedded database and the root CA (global), or for the region's CA
    /// (region, in `region-<name>/` below it); created if missing.
    #[arg(long, default_value = "./data")]
    data_dir: PathBuf,
    /// The installation's trust domain: the host part of every SPIFFE ID (global only; fixed at
    /// the first start, when the root CA is made).
    #[arg(long, default_value = "meridian.local")]
    trust_domain: String,
    /// Address for the public API (global only; port 0 picks a free port, the chosen one is
    /// printed).
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Address for the xDS (ADS over gRPC) server over mutual TLS. Region: the region's
    /// proxies, agents and certificate issuer (default 127.0.0.1:18000). Global: where regional
    /// control planes follow their regional deployments (default 127.0.0.1:17000). Port 0 picks
    /// a free port.
    #[arg(long, value_name = "ADDRESS")]
    xds: Option<SocketAddr>,
    /// The global control plane's xDS, which the region follows over mutual TLS with its own
    /// certificate (region only).
    #[arg(long, value_name = "URL", default_value = "https://127.0.0.1:17000")]
    global_xds: String,
    /// Also serve xDS without authentication here, for proxyless gRPC clients that cannot
    /// present a certificate (grpc-js-xds); nodes there are scoped by the org they declare, so
    /// bind it where only trusted workloads reach it (region only; off by default).
    #[arg(long, value_name = "ADDRESS")]
    xds_plaintext: Option<SocketAddr>,
    /// Lifetime of the certificates the region issues; holders renew at two thirds of it
    /// (region only; from 10s to 30 days).
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    cert_lifetime: std::time::Duration,
    /// Address for the admin port with /healthz, /readyz and /metrics (region only).
    #[arg(long, default_value = "127.0.0.1:9902")]
    admin: SocketAddr,
    /// How long an xDS stream waits after a change before pushing, so that close changes go out
    /// together (region only; 0ms pushes at once).
    #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
    xds_coalesce: std::time::Duration,
    /// Where the region's gateway proxies listen for edges, over mutual TLS (only edges may
    /// call); reported to the global control plane, edges reach the region there (region only).
    #[arg(long, value_name = "ADDRESS")]
    gateway: Option<SocketAddr>,
    /// Where the region's gateway proxies also listen in plain HTTP, for operators and tests;
    /// never reported (region only).
    #[arg(long, value_name = "ADDRESS")]
    gateway_plaintext: Option<SocketAddr>,
    /// A one-time token for the region's first start, made with
    /// `meridian join-token control/<region>` against the global API: the region gets its
    /// intermediate CA with it, and checks the installation's root against it (region only;
    /// not needed once the CA is in the data directory).
    #[arg(long, value_name = "TOKEN", env = "MERIDIAN_JOIN_TOKEN")]
    join_token: Option<String>,
}

/// Runs the chosen control plane until Ctrl-C or SIGTERM.
pub async fn run(args: ControlArgs, client: ClientArgs) -> Result<()> {
    match args.region.clone() {
        Some(region) => run_regional(args, client, region).await,
        None => run_global(args).await,
    }
}

/// Runs a region's control plane.
async fn run_regional(args: ControlArgs, client: ClientArgs, region: String) -> Result<()> {
    meridian_model::check_dns_label(&region)
        .map_err(|reason| anyhow::anyhow!("--region: {reason}"))?;
    if args.cert_lifetime < MIN_CERT_LIFETIME || args.cert_lifetime > MAX_CERT_LIFETIME {
        anyhow::bail!(
            "--cert-lifetime: must be between {} and {}",
            humantime::format_duration(MIN_CERT_LIFETIME),
            humantime::format_duration(MAX_CERT_LIFETIME)
        );
    }
    let join_token = args
        .join_token
        .as_deref()
        .map(JoinToken::parse)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--join-token: {e}"))?;
    let cache = Cache::new();
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = XdsMetrics::new(&mut registry);
    let (synced, synced_rx) = tokio::sync::watch::channel(false);
    let bind = |address: SocketAddr, what: &'static str| {
        meridian_xds::listen(address)
            .with_context(|| format!("listening for {what} on {address} (is the port in use?)"))
    };
    let xds = bind(args.xds.unwrap_or(REGIONAL_XDS), "xDS")?;
    let admin = bind(args.admin, "admin")?;
    let plaintext = match args.xds_plaintext {
        Some(address) => Some(bind(address, "xDS without authentication")?),
        None => None,
    };
    // Without a join token, an admin token (--token) also gets the region its CA.
    let credential = match (&join_token, &client.token) {
        (Some(join), _) => join.as_str(),
        (None, Some(admin)) => admin.as_str(),
        (None, None) => "",
    };
    let global = GlobalApi::new(&client.api, credential);
    let global_xds = args.global_xds.clone();
    if !global_xds.starts_with("https://") {
        anyhow::bail!("--global-xds: must be an https:// URL, e.g. https://127.0.0.1:17000");
    }
    let region_dir = args.data_dir.join(format!("region-{region}"));
    let ca_dir = region_dir.join("ca");
    let regional = obtain_regional_ca(&global, &region, &ca_dir, join_token.as_ref()).await?;
    println!(
        "intermediate CA of region {region} {} in {} (trust domain {})",
        if regional.issued_now {
            "issued by the global control plane, stored"
        } else {
            "loaded"
        },
        ca_dir.display(),
        regional.ca.trust_domain()
    );
    let state = Arc::new(Region::new(
        &region,
        cache.clone(),
        GatewayListeners {
            mesh: args.gateway,
            plaintext: args.gateway_plaintext,
        },
        Some(regional.ca.trust_domain()),
        &mut registry,
    ));
    let tokens = JoinTokens::open(&region_dir.join("join-tokens.json"))?;
    let issuer = Arc::new(Issuer::new(
        regional.ca,
        regional.bundle_pem,
        args.cert_lifetime,
        tokens,
        state.clone(),
        &mut registry,
    ));
    let own = issuer
        .own_certificate()
        .map_err(|e| anyhow::anyhow!("making the control plane's certificate: {e}"))?;
    let own = CertStore::new(own);
    tokio::spawn(issuer.clone().keep_own_certificate(own.clone()));
    let tls = control_server_config(own.clone(), trust_bundle(issuer.bundle_pem())?)?;
    let to_global = control_client_config(Some(own), trust_bundle(issuer.bundle_pem())?)?;
    println!(
        "meridian control (region {region}) serving xDS on https://{}, admin http://{}, following {global_xds}",
        xds.local_addr()?,
        admin.local_addr()?,
    );
    println!(
        "  xDS and certificates need mutual TLS; proxies join with a token (meridian join-token)"
    );
    let upward = UnaryClient::new(&global_xds, Arc::new(to_global.clone()));
    tokio::spawn(report_upward(upward, state.clone()));
    let disk_copy = region_dir.join("state.json");
    if let Some(copy) = meridian_control::disk_copy::load(&disk_copy) {
        let services = copy.deployments.len();
        state.restore(copy);
        synced.send_replace(true);
        println!(
            "serving the region's last known state ({services} services, from {}) until the \
             global control plane answers",
            disk_copy.display()
        );
    }
    tokio::spawn(follow_global(
        global_xds,
        Arc::new(to_global),
        state.clone(),
        synced,
        disk_copy,
    ));
    tokio::spawn(tick_fleet(state.clone()));
    let join_tokens = JoinTokenAdmin {
        issuer: issuer.clone(),
        global_api: client.api.clone(),
        known_admins: Arc::new(KnownAdmins::open(&region_dir.join("known-admins.json"))),
    };
    let admin_server = axum::serve(
        admin,
        admin_router(Arc::new(registry), synced_rx, Some(join_tokens)),
    )
    .with_graceful_shutdown(shutdown_signal());
    tokio::spawn(async move {
        if let Err(e) = admin_server.await {
            tracing::error!(error = %e, "admin server failed");
        }
    });
    let limits = Limits {
        coalesce: args.xds_coalesce,
        ..Limits::default()
    };
    let ads = AdsServer::new(cache, metrics, limits);
    if let Some(plaintext) = plaintext {
        println!(
            "  xDS without authentication for proxyless gRPC clients on {} (nodes are scoped by \
             the org they declare)",
            plaintext.local_addr()?
        );
        let server = ads.clone().serve(plaintext, shutdown_signal());
        tokio::spawn(async move {
            if let Err(e) = server.await {
                tracing::error!(error = %e, "the unauthenticated xDS server failed");
            }
        });
    }
    let authenticated = AuthenticatedAds::regional(ads.clone().into_service(), &region);
    let routes = Routes::new(authenticated)
        .add_service(ReportService::new(state))
        .into_axum_router()
        .merge(issuer.routes());
    ads.serve_routes(
        Routes::from(routes),
        tls_incoming(xds, Arc::new(tls)),
        shutdown_signal(),
    )
    .await
    .context("serving xDS")?;
    tracing::info!("stopped");
    Ok(())
}

/// The regional control plane's xDS address unless `--xds` says otherwise.
const REGIONAL_XDS: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 18000);
/// The global control plane's xDS address unless `--xds` says otherwise.
const GLOBAL_XDS: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 17000);
/// Lifetime of the global control plane's own certificate (renewed at two thirds of it).
const GLOBAL_CERT_LIFETIME: std::time::Duration = std::time::Duration::from_secs(86_400);

/// Ticks the region's fleet every second (node expiry, the first placement).
async fn tick_fleet(state: Arc<Region>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tick.tick().await;
        state.tick(std::time::Instant::now());
    }
}

/// The shortest and longest certificate lifetimes a region issues.
const MIN_CERT_LIFETIME: std::time::Duration = std::time::Duration::from_secs(10);
const MAX_CERT_LIFETIME: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);

/// The region's CA: loaded, or at the first start requested from the global control plane,
/// retried until it answers (or until Ctrl-C).
async fn obtain_regional_ca(
    global: &GlobalApi,
    region: &str,
    ca_dir: &std::path::Path,
    join_token: Option<&JoinToken>,
) -> Result<RegionalCa> {
    let mut wait = std::time::Duration::from_millis(200);
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        match regional_ca(global, region, ca_dir, join_token).await {
            Ok(regional) => return Ok(regional),
            Err(e) if !e.is_transient() => anyhow::bail!("region {region}'s CA: {e}"),
            Err(e) => {
                println!(
                    "waiting for the global control plane to issue region {region}'s CA: {e} \
                     (retrying in {})",
                    humantime::format_duration(wait)
                );
            }
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = &mut shutdown => anyhow::bail!("stopped before the region had a CA"),
        }
        wait = (wait * 2).min(std::time::Duration::from_secs(5));
    }
}

/// How long the installation's root CA is valid.
const ROOT_VALIDITY: std::time::Duration = std::time::Duration::from_secs(10 * 365 * 86_400);

/// The installation's root CA: loaded from `<data>/ca`, or made there at the first start.
/// Returns it and whether it was made now.
fn root_ca(data_dir: &std::path::Path, trust_domain: &str) -> Result<(Authority, bool)> {
    let valid = !trust_domain.is_empty()
        && trust_domain
            .split('.')
            .all(|label| meridian_model::check_dns_label(label).is_ok());
    if !valid {
        anyhow::bail!("--trust-domain: `{trust_domain}` is not DNS labels separated by dots");
    }
    let dir = data_dir.join("ca");
    if let Some(ca) = Authority::load(&dir, trust_domain).context("loading the root CA")? {
        return Ok((ca, false));
    }
    let ca = Authority::create_root(trust_domain, ROOT_VALIDITY).context("making the root CA")?;
    ca.save(&dir).context("storing the root CA")?;
    Ok((ca, true))
}

/// Runs the global control plane.
async fn run_global(args: ControlArgs) -> Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating the data directory {}", args.data_dir.display()))?;
    let db = args.data_dir.join("meridian.db");
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(&db)
            .await
            .with_context(|| format!("opening the store at {}", db.display()))?,
    );
    let admin_token = meridian_api::bootstrap_admin_token(&*store)
        .await
        .map_err(|e| anyhow::anyhow!("creating the admin token: {e:?}"))?;
    let (ca, created) = root_ca(&args.data_dir, &args.trust_domain)?;
    let ca = Arc::new(ca);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {} (is the port in use?)", args.listen))?;
    let xds_address = args.xds.unwrap_or(GLOBAL_XDS);
    let xds = meridian_xds::listen(xds_address)
        .with_context(|| format!("listening for xDS on {xds_address} (is the port in use?)"))?;
    let addr = listener.local_addr()?;
    println!(
        "meridian control (global) serving http://{addr} (data in {})",
        args.data_dir.display()
    );
    println!(
        "  regional control planes follow https://{} (xDS over mutual TLS)",
        xds.local_addr()?
    );
    println!(
        "root CA for trust domain {} {} in {} (key readable by its owner only)",
        ca.trust_domain(),
        if created { "created" } else { "loaded" },
        args.data_dir.join("ca").display()
    );
    match admin_token {
        Some(token) => {
            println!("admin token (shown only at first start, stored hashed): {token}");
            println!("  export MERIDIAN_API=http://{addr} MERIDIAN_TOKEN={token}");
        }
        None => println!("admin token: created at first start, not shown again"),
    }
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = XdsMetrics::new(&mut registry);
    let cache = Cache::new();
    let reports = meridian_api::Reports::default();
    let source = ReportSource {
        latest: Box::new({
            let reports = reports.clone();
            move |region| reports.get(region)
        }),
        changed: reports.subscribe(),
    };
    tokio::spawn(publish_regional_deployments(
        store.clone(),
        cache.clone(),
        source,
    ));
    let own_id = SpiffeId {
        trust_domain: ca.trust_domain().to_owned(),
        subject: Subject::Control { region: None },
    };
    let own = issue_own_certificate(&ca, &own_id, GLOBAL_CERT_LIFETIME)
        .map_err(|e| anyhow::anyhow!("making the control plane's certificate: {e}"))?;
    let own = CertStore::new(own);
    let renewing = ca.clone();
    tokio::spawn(keep_own_certificate(
        own.clone(),
        GLOBAL_CERT_LIFETIME,
        move || issue_own_certificate(&renewing, &own_id, GLOBAL_CERT_LIFETIME),
    ));
    let tls = server_config(own, trust_bundle(ca.certificate_pem())?)?;
    let ads = AdsServer::new(cache, metrics, Limits::default());
    let recorder = reports.clone();
    let region_reports = RegionReports::new(move |region, report| recorder.record(region, report));
    let federation = ads.clone().serve_routes(
        Routes::new(AuthenticatedAds::global(ads.into_service()))
            .add_service(ReportService::with(region_reports)),
        tls_incoming(xds, Arc::new(tls)),
        shutdown_signal(),
    );
    tokio::spawn(async move {
        if let Err(e) = federation.await {
            tracing::error!(error = %e, "the xDS server for the regions failed");
        }
    });
    let region_tokens = Arc::new(JoinTokens::open(
        &args.data_dir.join("region-join-tokens.json"),
    )?);
    let trust = meridian_api::RootTrust { ca, region_tokens };
    axum::serve(
        listener,
        meridian_api::router_with(store, Some(trust), registry, reports),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await
    .context("serving the API")?;
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; stopping on Ctrl-C only");
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}
