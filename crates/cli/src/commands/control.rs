//! `meridian control --global`: the global control plane (public API over the store), and
//! `meridian control --region R`: a region's control plane (xDS for the region's proxies). Both
//! are assembled and supervised in `meridian-control`; this is their command line.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use clap::Args;
use meridian_control::{
    run_global, run_regional, AcmeOptions, CertificateOptions, ChallengeKind, GatewayListeners,
    GlobalOptions, RegionalOptions, Say,
};
use meridian_store::StoreLocation;

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
    /// Keep the store in this PostgreSQL database instead of SQLite in the data directory
    /// (global only): postgres://user:password@host:port/database. Its schema is made or
    /// brought up to date at start; the root CA stays in the data directory.
    #[arg(long, value_name = "URL", env = "MERIDIAN_STORE", hide_env_values = true,
          value_parser = StoreLocation::postgres)]
    store: Option<StoreLocation>,
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
    /// certificate (region only); with several replicas, their URLs separated by commas (it
    /// follows one, moves to the next when it fails, and reports to each).
    #[arg(
        long,
        value_name = "URL[,URL…]",
        default_value = "https://127.0.0.1:17000"
    )]
    global_xds: String,
    /// The global control plane's public API, where the region gets its CA at its first start
    /// (region only).
    #[arg(long, value_name = "URL", env = "MERIDIAN_API", default_value = crate::connection::DEFAULT_API)]
    api: String,
    /// An admin token of the global API, which also gets the region its CA at its first start
    /// when there is no `--join-token` (region only).
    #[arg(long, env = "MERIDIAN_TOKEN", hide_env_values = true)]
    token: Option<String>,
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
    /// A registry (`HOST:PORT`, as image references name it) asked over plain HTTP instead of
    /// HTTPS when image tags are resolved to digests; repeat for several (global only). Only
    /// for registries on a trusted network.
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    insecure_registries: Vec<String>,
    #[command(flatten)]
    certificates: CertificateArgs,
}

/// Certificates of public domains (global only; docs/edge.md, "How a domain gets its
/// certificate").
#[derive(Args)]
#[command(next_help_heading = "Certificates of public domains (global only)")]
struct CertificateArgs {
    /// File with the 32-byte key that seals private keys, ACME account keys, session ticket
    /// keys and apps' secrets in the store. It must exist and be exactly 32 bytes (make one
    /// with `head -c 32 /dev/urandom > FILE; chmod 600 FILE`) unless --create-secrets-key.
    /// Without it the plane manages no certificates and refuses uploads and secrets.
    #[arg(long, value_name = "FILE")]
    secrets_key: Option<PathBuf>,
    /// Create the --secrets-key file (32 random bytes, mode 0600) if it does not exist.
    #[arg(long, requires = "secrets_key")]
    create_secrets_key: bool,
    /// Issue every claimed domain (wildcards too) a 90-day certificate from a local CA for
    /// public names, made once in `<data-dir>/public-ca/` (clients trust its `ca.pem`; the path
    /// is printed at start). For development and tests.
    #[arg(long, requires = "secrets_key", conflicts_with = "acme_directory")]
    local_ca: bool,
    /// Order certificates from this ACME (RFC 8555) directory, e.g.
    /// https://acme-v02.api.letsencrypt.org/directory. The edges answer the challenges.
    #[arg(long, value_name = "URL", requires = "secrets_key")]
    acme_directory: Option<String>,
    /// PEM root certificate the ACME server's HTTPS chains to, for a private CA such as pebble
    /// (default: the system's web roots).
    #[arg(long, value_name = "FILE", requires = "acme_directory")]
    acme_ca_root: Option<PathBuf>,
    /// Contact e-mail for the ACME account.
    #[arg(long, value_name = "EMAIL", requires = "acme_directory")]
    acme_email: Option<String>,
    /// The challenge the CA is asked to validate (the edges answer both).
    #[arg(long, value_name = "KIND", default_value = "http-01", value_parser = ["http-01", "tls-alpn-01"])]
    acme_challenge: String,
}

impl CertificateArgs {
    fn options(self) -> CertificateOptions {
        let challenge = if self.acme_challenge == "tls-alpn-01" {
            ChallengeKind::TlsAlpn01
        } else {
            ChallengeKind::Http01
        };
        CertificateOptions {
            secrets_key: self.secrets_key,
            create_secrets_key: self.create_secrets_key,
            local_ca: self.local_ca,
            acme: self.acme_directory.map(|directory| AcmeOptions {
                directory,
                ca_root: self.acme_ca_root,
                email: self.acme_email,
                challenge,
            }),
        }
    }
}

/// Runs the chosen control plane until Ctrl-C or SIGTERM; an error when it cannot start or one
/// of its essential tasks stops.
pub async fn run(args: ControlArgs) -> Result<()> {
    let say: Say = Arc::new(|line: &str| println!("{line}"));
    match args.region {
        Some(region) => {
            let options = RegionalOptions {
                region,
                data_dir: args.data_dir,
                xds: args.xds.unwrap_or(REGIONAL_XDS),
                xds_plaintext: args.xds_plaintext,
                admin: args.admin,
                global_xds: args.global_xds,
                global_api: args.api,
                admin_token: args.token.filter(|t| !t.is_empty()),
                join_token: args.join_token,
                cert_lifetime: args.cert_lifetime,
                xds_coalesce: args.xds_coalesce,
                gateway: GatewayListeners {
                    mesh: args.gateway,
                    plaintext: args.gateway_plaintext,
                },
                say,
            };
            run_regional(options, shutdown_signal()).await?;
        }
        None => {
            let options = GlobalOptions {
                data_dir: args.data_dir,
                store: args.store,
                trust_domain: args.trust_domain,
                listen: args.listen,
                xds: args.xds.unwrap_or(GLOBAL_XDS),
                certificates: args.certificates.options(),
                say,
                registries: meridian_model::RegistryOptions {
                    insecure: args.insecure_registries,
                    ..Default::default()
                },
            };
            run_global(options, shutdown_signal()).await?;
        }
    }
    Ok(())
}

/// The regional control plane's xDS address unless `--xds` says otherwise.
const REGIONAL_XDS: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 18000);
/// The global control plane's xDS address unless `--xds` says otherwise.
const GLOBAL_XDS: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 17000);

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
