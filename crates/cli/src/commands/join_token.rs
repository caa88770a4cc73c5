//! `meridian join-token`: asks a region's control plane (its admin port) for a one-time join
//! token for one identity, which a proxy or agent redeems for its first certificate; or, for
//! `control/<region>`, the global API for the token a region's control plane gets its CA with.

use anyhow::{Context, Result};
use clap::Args;

use crate::connection::ClientArgs;

/// Options of `meridian join-token`.
#[derive(Args)]
pub struct JoinTokenArgs {
    /// The identity the token admits, relative to the region: `gateway`, `agent/<node>`,
    /// `edge/<location>` or `org/<org>/app/<app>/service/<service>`; or `control/<region>`, a
    /// region's control plane (made by the global API, `--api`).
    identity: String,
    /// The region's control plane admin address (its `--admin`).
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:9902")]
    control: String,
    /// How long the token may be redeemed (at most a week).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: std::time::Duration,
}

/// Prints a new join token on standard output (and what it is for on standard error).
pub async fn run(args: JoinTokenArgs, client: ClientArgs) -> Result<()> {
    let client = client.connection().await?;
    let token = client.token.context(
        "join tokens are for administrators: pass --token, set MERIDIAN_TOKEN or use a context \
         with an admin token",
    )?;
    let ttl_seconds = args.ttl.as_secs().max(1);
    let (url, body, what) = match args.identity.strip_prefix("control/") {
        Some(region) => (
            format!("{}/v1/regions/{region}/join-tokens", client.api),
            serde_json::json!({"ttl_seconds": ttl_seconds}),
            "the global control plane",
        ),
        None => (
            format!("{}/v1/join-tokens", args.control.trim_end_matches('/')),
            serde_json::json!({"identity": args.identity, "ttl_seconds": ttl_seconds}),
            "the region's control plane",
        ),
    };
    let request = reqwest::Client::new()
        .post(&url)
        .bearer_auth(token)
        .json(&body);
    let body = crate::commands::region_admin::call(request, &url, what).await?;
    let (Some(token), Some(id)) = (body["token"].as_str(), body["spiffe_id"].as_str()) else {
        anyhow::bail!("{url} answered without a token");
    };
    eprintln!(
        "join token for {id}, valid {} and once:",
        humantime::format_duration(args.ttl)
    );
    println!("{token}");
    Ok(())
}
