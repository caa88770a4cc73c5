//! `meridian domains` and `meridian cert add`: the public domains of one's services with the
//! state of their certificates, and uploading a certificate for one (docs/edge.md).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use meridian_api::DomainStatus;
use reqwest::Method;
use serde_json::json;

use crate::client::Client;
use crate::output::{print, timestamp, Format};

/// Longest error shown in the table (the JSON output has all of it).
const ERROR_WIDTH: usize = 72;

/// `meridian domains`
#[derive(Args)]
pub struct DomainsArgs {
    /// Only the domains of services of this app.
    #[arg(long)]
    app: Option<String>,
}

/// `meridian cert …`
#[derive(Subcommand)]
pub enum CertCommand {
    /// Upload a certificate and key for a domain of one of your services (a wildcard too, as
    /// `'*.example.com'`). It is checked (the key matches, the chain is valid now, its names
    /// cover the domain), served by the edges at once, and not renewed by the platform: upload
    /// a new one before it expires.
    Add {
        /// The domain, as the service claims it.
        domain: String,
        /// The certificate chain, PEM, leaf first.
        #[arg(long, value_name = "FILE")]
        cert: PathBuf,
        /// The leaf's private key, PEM.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
    },
}

/// Runs `meridian domains`.
pub async fn domains(api: &Client, format: Format, args: DomainsArgs) -> Result<()> {
    let path = match &args.app {
        Some(app) => format!("/v1/domains?app={app}"),
        None => "/v1/domains".to_owned(),
    };
    let domains: Vec<DomainStatus> = api.get(&path).await?;
    let headers = ["DOMAIN", "SERVICE", "STATE", "ISSUER", "EXPIRES", "ERROR"];
    print(format, &domains, &headers, |list| {
        list.iter().map(row).collect()
    })
}

fn row(domain: &DomainStatus) -> Vec<String> {
    let or_dash = |value: Option<String>| value.unwrap_or_else(|| "-".to_owned());
    let mut error = domain.last_error.clone().unwrap_or_default();
    if error.chars().count() > ERROR_WIDTH {
        error = error.chars().take(ERROR_WIDTH - 1).collect::<String>() + "…";
    }
    vec![
        domain.domain.clone(),
        format!("{}/{}", domain.app, domain.service),
        domain.state.as_str().to_owned(),
        or_dash(domain.issuer.clone()),
        or_dash(domain.not_after.map(timestamp)),
        error,
    ]
}

/// Runs `meridian cert …`.
pub async fn cert(api: &Client, format: Format, cmd: CertCommand) -> Result<()> {
    let CertCommand::Add { domain, cert, key } = cmd;
    let read = |path: &PathBuf, what: &str| {
        std::fs::read_to_string(path)
            .with_context(|| format!("reading the {what} {}", path.display()))
    };
    let body = json!({
        "certificate": read(&cert, "certificate")?,
        "private_key": read(&key, "private key")?,
    });
    let stored: DomainStatus = api
        .send(
            Method::PUT,
            &format!("/v1/domains/{domain}/certificate"),
            &body,
        )
        .await?;
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&stored)?),
        Format::Table => println!(
            "certificate for {} stored and served; it expires {} (upload a new one before then)",
            stored.domain,
            stored.not_after.map_or_else(|| "-".to_owned(), timestamp)
        ),
    }
    Ok(())
}
