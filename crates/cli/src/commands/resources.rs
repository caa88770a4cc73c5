//! The API client commands: regions, orgs, tokens, deploy, get, status, rollback, delete.

use std::path::Path;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use meridian_api::{CreatedToken, ServiceStatus, WhoAmI};
use meridian_model::{
    App, Deployment, DeploymentOrigin, EdgeStatus, Org, Region, ServiceSummary, TokenInfo,
};
use reqwest::Method;
use serde_json::json;

use crate::client::Client;
use crate::definition;
use crate::output::{print, timestamp, Format};

/// Which app (and org) a service belongs to.
#[derive(Args, Clone)]
pub struct AppScope {
    /// The service's app.
    #[arg(long)]
    pub(crate) app: String,
    /// The org; defaults to the context's, else the token's org. With an admin token: the only
    /// org that has a service of that name.
    #[arg(long, env = "MERIDIAN_ORG")]
    pub(crate) org: Option<String>,
}

impl AppScope {
    /// The scope of `app` in `org`.
    pub fn new(app: &str, org: &str) -> AppScope {
        AppScope {
            app: app.to_owned(),
            org: Some(org.to_owned()),
        }
    }
}

/// `meridian region …`
#[derive(Subcommand)]
pub enum RegionCommand {
    /// Create or update a region with its coordinates.
    Add {
        /// The region's name (a DNS label, e.g. fra).
        name: String,
        /// Latitude in degrees.
        #[arg(long, allow_negative_numbers = true)]
        lat: f64,
        /// Longitude in degrees.
        #[arg(long, allow_negative_numbers = true)]
        lon: f64,
    },
    /// List regions.
    List,
}

/// `meridian org …`
#[derive(Subcommand)]
pub enum OrgCommand {
    /// Create an org.
    Create {
        /// The org's name (a DNS label).
        name: String,
    },
    /// List orgs.
    List,
}

/// `meridian token …`
#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create a token scoped to an org; prints its secret once.
    Create {
        /// The org the token may act on.
        #[arg(long)]
        org: String,
        /// What the token is for.
        #[arg(long, default_value = "cli")]
        label: String,
    },
    /// List an org's tokens (never their secrets).
    List {
        /// The org.
        #[arg(long)]
        org: String,
    },
    /// Revoke a token.
    Revoke {
        /// The org.
        #[arg(long)]
        org: String,
        /// The token's id (see `meridian token list`).
        id: String,
    },
}

/// `meridian get …`
#[derive(Subcommand)]
pub enum GetCommand {
    /// List services.
    Services {
        /// Only this org's services.
        #[arg(long, env = "MERIDIAN_ORG")]
        org: Option<String>,
        /// Only services of apps with this name.
        #[arg(long)]
        app: Option<String>,
    },
    /// List a service's deployment versions.
    Deployments {
        /// The service.
        service: String,
        #[command(flatten)]
        scope: AppScope,
    },
    /// List regions.
    Regions,
    /// List the edges and whether each announces its anycast addresses, and why (admin).
    Edges,
    /// List orgs.
    Orgs,
    /// List an org's apps.
    Apps {
        /// The org; defaults to the context's, else the token's org.
        #[arg(long, env = "MERIDIAN_ORG")]
        org: Option<String>,
    },
}

/// `meridian delete …`
#[derive(Subcommand)]
pub enum DeleteCommand {
    /// Delete a service and its history.
    Service {
        /// The service.
        name: String,
        #[command(flatten)]
        scope: AppScope,
    },
    /// Delete an app that has no services.
    App {
        /// The app.
        name: String,
        /// The org; defaults to the context's, else the token's org.
        #[arg(long, env = "MERIDIAN_ORG")]
        org: Option<String>,
    },
    /// Delete a region no service runs in.
    Region {
        /// The region.
        name: String,
    },
    /// Delete an org that has no apps.
    Org {
        /// The org.
        name: String,
    },
}

fn regions_table(regions: &[Region]) -> Vec<Vec<String>> {
    regions
        .iter()
        .map(|r| {
            vec![
                r.name.clone(),
                format!("{:.4}", r.lat),
                format!("{:.4}", r.lon),
            ]
        })
        .collect()
}

fn orgs_table(orgs: &[Org]) -> Vec<Vec<String>> {
    orgs.iter()
        .map(|o| vec![o.name.clone(), timestamp(o.created_at)])
        .collect()
}

fn tokens_table(tokens: &[TokenInfo]) -> Vec<Vec<String>> {
    tokens
        .iter()
        .map(|t| vec![t.id.clone(), t.label.clone(), timestamp(t.created_at)])
        .collect()
}

/// Runs `meridian region …`.
pub async fn region(api: &Client, format: Format, cmd: RegionCommand) -> Result<()> {
    match cmd {
        RegionCommand::Add { name, lat, lon } => {
            let region: Region = api
                .send(
                    Method::PUT,
                    &format!("/v1/regions/{name}"),
                    &json!({"lat": lat, "lon": lon}),
                )
                .await?;
            print(format, &region, &["REGION", "LAT", "LON"], |r| {
                regions_table(std::slice::from_ref(r))
            })
        }
        RegionCommand::List => list_regions(api, format).await,
    }
}

async fn list_regions(api: &Client, format: Format) -> Result<()> {
    let regions: Vec<Region> = api.get("/v1/regions").await?;
    print(format, &regions, &["REGION", "LAT", "LON"], |list| {
        regions_table(list)
    })
}

async fn list_orgs(api: &Client, format: Format) -> Result<()> {
    let orgs: Vec<Org> = api.get("/v1/orgs").await?;
    print(format, &orgs, &["ORG", "CREATED"], |list| orgs_table(list))
}

/// Runs `meridian org …`.
pub async fn org(api: &Client, format: Format, cmd: OrgCommand) -> Result<()> {
    match cmd {
        OrgCommand::Create { name } => {
            let org: Org = api
                .send(Method::POST, "/v1/orgs", &json!({"name": name}))
                .await?;
            print(format, &org, &["ORG", "CREATED"], |o| {
                orgs_table(std::slice::from_ref(o))
            })
        }
        OrgCommand::List => list_orgs(api, format).await,
    }
}

/// Runs `meridian token …`.
pub async fn token(api: &Client, format: Format, cmd: TokenCommand) -> Result<()> {
    match cmd {
        TokenCommand::Create { org, label } => {
            let created: CreatedToken = api
                .send(
                    Method::POST,
                    &format!("/v1/orgs/{org}/tokens"),
                    &json!({"label": label}),
                )
                .await?;
            match format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&created)?),
                Format::Table => {
                    println!("created token {} for org {org}", created.token.id);
                    println!("secret (shown only now): {}", created.secret);
                }
            }
            Ok(())
        }
        TokenCommand::List { org } => {
            let tokens: Vec<TokenInfo> = api.get(&format!("/v1/orgs/{org}/tokens")).await?;
            print(format, &tokens, &["ID", "LABEL", "CREATED"], |list| {
                tokens_table(list)
            })
        }
        TokenCommand::Revoke { org, id } => {
            api.delete(&format!("/v1/orgs/{org}/tokens/{id}")).await?;
            println!("revoked token {id}");
            Ok(())
        }
    }
}

/// Reads a definition file (YAML or JSON; `-` for standard input) into JSON (see
/// [`definition::parse`]).
fn read_definition(file: &Path) -> Result<serde_json::Value> {
    let text = if file == Path::new("-") {
        std::io::read_to_string(std::io::stdin()).context("reading standard input")?
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?
    };
    definition::parse(&file.display().to_string(), &text)
}

/// Runs `meridian deploy -f FILE`; with `follow`, follows the new version's rollout until it
/// ends (an error when it failed).
pub async fn deploy(api: &Client, format: Format, file: &Path, follow: bool) -> Result<()> {
    let applied = deploy_definition(api, format, &read_definition(file)?).await?;
    match applied {
        Some(deployment) if follow => {
            let d = &deployment.definition;
            let path = format!("/v1/orgs/{}/apps/{}/services/{}", d.org, d.app, d.name);
            crate::commands::follow::follow(api, &path, deployment.version).await
        }
        _ => Ok(()),
    }
}

/// Applies a definition (as JSON) and prints the new version, or that nothing changed; returns
/// the new version's deployment (none when nothing changed).
pub async fn deploy_definition(
    api: &Client,
    format: Format,
    definition: &serde_json::Value,
) -> Result<Option<Deployment>> {
    let (deployment, headers): (Deployment, _) = api
        .send_keeping_headers(Method::POST, "/v1/services", definition)
        .await?;
    let unchanged = headers
        .get(meridian_api::APPLY_HEADER)
        .is_some_and(|outcome| outcome == "unchanged");
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&deployment)?),
        Format::Table => {
            let d = &deployment.definition;
            let service = format!("{}/{}/{}", d.org, d.app, d.name);
            if unchanged {
                println!(
                    "{service} unchanged: version {} already has this definition",
                    deployment.version
                );
            } else {
                println!(
                    "deployed {service} version {} to {} (revision {})",
                    deployment.version,
                    d.regions.join(", "),
                    deployment.revision
                );
            }
        }
    }
    Ok((!unchanged).then_some(deployment))
}

/// Finds the org of `service` in `scope.app` when neither `--org` nor the context gives one.
async fn resolve_org(api: &Client, service: &str, scope: &AppScope) -> Result<String> {
    if let Some(org) = scope.org.as_deref().or(api.default_org()) {
        return Ok(org.to_owned());
    }
    let me: WhoAmI = api.get("/v1/whoami").await?;
    if let Some(org) = me.org {
        return Ok(org);
    }
    let found: Vec<ServiceSummary> = api
        .get(&format!("/v1/services?app={}&name={service}", scope.app))
        .await?;
    match found.as_slice() {
        [one] => Ok(one.org.clone()),
        [] => bail!("no service `{service}` in an app `{}`", scope.app),
        many => {
            let orgs: Vec<&str> = many.iter().map(|s| s.org.as_str()).collect();
            bail!(
                "several orgs have a service `{service}` in an app `{}` ({}); pass --org",
                scope.app,
                orgs.join(", ")
            )
        }
    }
}

/// The API path of a service, resolving its org.
pub(crate) async fn service_path(api: &Client, service: &str, scope: &AppScope) -> Result<String> {
    let org = resolve_org(api, service, scope).await?;
    Ok(format!(
        "/v1/orgs/{org}/apps/{}/services/{service}",
        scope.app
    ))
}

/// `org`, or else the context's, or else the token's org (an admin token has none: an error
/// asking for --org).
pub(super) async fn default_org(api: &Client, org: Option<String>) -> Result<String> {
    if let Some(org) = org.or_else(|| api.default_org().map(str::to_owned)) {
        return Ok(org);
    }
    let me: WhoAmI = api.get("/v1/whoami").await?;
    me.org.context(
        "an admin token has no org of its own; pass --org (or set MERIDIAN_ORG, or the \
         context's org: `meridian context set NAME --org ORG`)",
    )
}

fn deployments_table(deployments: &[Deployment]) -> Vec<Vec<String>> {
    let current = deployments.iter().map(|d| d.version).max();
    deployments
        .iter()
        .map(|d| {
            let origin = match (d.origin, d.rolled_back_from) {
                (DeploymentOrigin::Rollback, Some(from)) => format!("rollback to {from}"),
                (DeploymentOrigin::Rollback, None) => "rollback".to_owned(),
                (DeploymentOrigin::Apply, _) => "apply".to_owned(),
                (DeploymentOrigin::Secret, _) => "secret changed".to_owned(),
            };
            let marker = if Some(d.version) == current { "*" } else { "" };
            // The pinned reference (REPOSITORY:TAG@sha256:…) that every instance of it runs.
            let image = d
                .definition
                .runtime
                .image
                .as_ref()
                .map_or_else(|| "-".to_owned(), |i| i.reference.clone());
            vec![
                format!("{}{marker}", d.version),
                origin,
                d.definition.regions.join(","),
                image,
                timestamp(d.created_at),
            ]
        })
        .collect()
}

/// Runs `meridian get …`.
pub async fn get(api: &Client, format: Format, cmd: GetCommand) -> Result<()> {
    match cmd {
        GetCommand::Services { org, app } => {
            let mut query = Vec::new();
            query.extend(org.map(|o| format!("org={o}")));
            query.extend(app.map(|a| format!("app={a}")));
            let services: Vec<ServiceSummary> = api
                .get(&format!("/v1/services?{}", query.join("&")))
                .await?;
            let headers = ["ORG", "APP", "SERVICE", "VERSION", "REGIONS", "UPDATED"];
            print(format, &services, &headers, |list| {
                list.iter()
                    .map(|s| {
                        vec![
                            s.org.clone(),
                            s.app.clone(),
                            s.name.clone(),
                            s.version.to_string(),
                            s.regions.join(","),
                            timestamp(s.updated_at),
                        ]
                    })
                    .collect()
            })
        }
        GetCommand::Deployments { service, scope } => {
            let path = service_path(api, &service, &scope).await?;
            let deployments: Vec<Deployment> = api.get(&format!("{path}/deployments")).await?;
            let headers = ["VERSION", "ORIGIN", "REGIONS", "IMAGE", "CREATED"];
            print(format, &deployments, &headers, |list| {
                deployments_table(list)
            })
        }
        GetCommand::Regions => list_regions(api, format).await,
        GetCommand::Edges => {
            let edges: Vec<EdgeStatus> = api.get("/v1/edges").await?;
            let headers = ["EDGE", "ANYCAST", "REASON", "SINCE", "REPORTED", "DETAIL"];
            print(format, &edges, &headers, |list| edges_table(list))
        }
        GetCommand::Orgs => list_orgs(api, format).await,
        GetCommand::Apps { org } => {
            let org = default_org(api, org).await?;
            let apps: Vec<App> = api.get(&format!("/v1/orgs/{org}/apps")).await?;
            print(format, &apps, &["ORG", "APP", "CREATED"], |list| {
                list.iter()
                    .map(|a| vec![a.org.clone(), a.name.clone(), timestamp(a.created_at)])
                    .collect()
            })
        }
    }
}

/// The rows of `meridian get edges`: an edge without anycast addresses shows `-`.
fn edges_table(edges: &[EdgeStatus]) -> Vec<Vec<String>> {
    let ago =
        |secs: u64| humantime::format_duration(std::time::Duration::from_secs(secs)).to_string();
    edges
        .iter()
        .map(|edge| {
            let reported = format!("{} ago", ago(edge.reported_seconds_ago));
            match &edge.anycast {
                Some(anycast) => vec![
                    edge.location.clone(),
                    if anycast.announced {
                        "announced"
                    } else {
                        "withdrawn"
                    }
                    .to_owned(),
                    anycast.reason.clone(),
                    ago(anycast.since_seconds),
                    reported,
                    anycast.detail.clone(),
                ],
                None => vec![
                    edge.location.clone(),
                    "-".to_owned(),
                    "-".to_owned(),
                    "-".to_owned(),
                    reported,
                    String::new(),
                ],
            }
        })
        .collect()
}

/// A service's status, its heading (`org/app/service  version N`) printed first for a table.
pub(crate) async fn read_status(
    api: &Client,
    format: Format,
    service: &str,
    scope: &AppScope,
) -> Result<ServiceStatus> {
    let path = service_path(api, service, scope).await?;
    let status: ServiceStatus = api.get(&format!("{path}/status")).await?;
    if format == Format::Table {
        println!(
            "{}/{}/{}  version {}",
            status.org, status.app, status.name, status.version
        );
    }
    Ok(status)
}

/// Runs `meridian status SERVICE --app APP`.
pub async fn status(api: &Client, format: Format, service: &str, scope: &AppScope) -> Result<()> {
    let status = read_status(api, format, service, scope).await?;
    let headers = [
        "REGION",
        "DESIRED",
        "MAX",
        "VERSION",
        "HEALTHY",
        "STATE",
        "LAST REPORT",
    ];
    print(format, &status, &headers, status_table)?;
    if format == Format::Table {
        print!("{}", autoscaling(&status));
        print!("{}", problems(&status));
    }
    Ok(())
}

/// Each autoscaled region's last decision, one line each under the table
/// (`fra: autoscaling: 1 in service, 3 wanted: scaling up from 1 to 3: …`).
fn autoscaling(status: &ServiceStatus) -> String {
    status
        .regions
        .iter()
        .filter_map(|r| {
            let a = r.autoscale.as_ref()?;
            Some(format!(
                "{}: autoscaling: {} in service, {} wanted: {}\n",
                r.region, a.current, a.desired, a.reason
            ))
        })
        .collect()
}

/// Each region's problems, one line each under the table (`fra: web-0 unhealthy: …`).
fn problems(status: &ServiceStatus) -> String {
    status
        .regions
        .iter()
        .flat_map(|r| {
            r.problems
                .iter()
                .map(move |p| format!("{}: {p}\n", r.region))
        })
        .collect()
}

/// One row per region: what its last report says (no count once it is too old to vouch for
/// any instance) and how old that report is.
fn status_table(status: &ServiceStatus) -> Vec<Vec<String>> {
    status
        .regions
        .iter()
        .map(|r| {
            vec![
                r.region.clone(),
                r.desired.to_string(),
                r.max.to_string(),
                versions(r),
                match (r.healthy, r.placed) {
                    (Some(healthy), Some(placed)) => format!("{healthy}/{placed}"),
                    _ => "-".to_owned(),
                },
                r.state.clone(),
                r.report_age_seconds
                    .map_or_else(|| "never".to_owned(), |age| format!("{age}s ago")),
            ]
        })
        .collect()
}

/// The version a region runs; during a rollout, each version in service with its healthy and
/// placed instances (`2 (1/2), 1 (2/2)`), the newest first.
fn versions(region: &meridian_api::RegionStatus) -> String {
    if region.versions.is_empty() {
        return region.version.to_string();
    }
    let each: Vec<String> = region
        .versions
        .iter()
        .rev()
        .map(|v| format!("{} ({}/{})", v.version, v.healthy, v.placed))
        .collect();
    each.join(", ")
}

/// Runs `meridian rollback SERVICE --app APP --to N`.
pub async fn rollback(
    api: &Client,
    format: Format,
    service: &str,
    scope: &AppScope,
    to: u64,
) -> Result<()> {
    let path = service_path(api, service, scope).await?;
    let deployment: Deployment = api
        .send(
            Method::POST,
            &format!("{path}/rollback"),
            &json!({"to": to}),
        )
        .await?;
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&deployment)?),
        Format::Table => println!(
            "rolled back {service} to version {to}: now version {} (revision {})",
            deployment.version, deployment.revision
        ),
    }
    Ok(())
}

/// Runs `meridian delete …`.
pub async fn delete(api: &Client, cmd: DeleteCommand) -> Result<()> {
    let (path, what) = match cmd {
        DeleteCommand::Service { name, scope } => (
            service_path(api, &name, &scope).await?,
            format!("service {name}"),
        ),
        DeleteCommand::App { name, org } => {
            let org = default_org(api, org).await?;
            (
                format!("/v1/orgs/{org}/apps/{name}"),
                format!("app {org}/{name}"),
            )
        }
        DeleteCommand::Region { name } => (format!("/v1/regions/{name}"), format!("region {name}")),
        DeleteCommand::Org { name } => (format!("/v1/orgs/{name}"), format!("org {name}")),
    };
    api.delete(&path).await?;
    println!("deleted {what}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_says_how_old_each_region_s_report_is_and_counts_only_fresh_ones() {
        let status: ServiceStatus = serde_json::from_value(json!({
            "org": "demo", "app": "shop", "name": "web", "version": 1, "regions": [
                {"region": "fra", "desired": 2, "max": 3, "version": 1, "placed": 2,
                 "healthy": 2, "report_age_seconds": 1, "state": "running"},
                {"region": "iad", "desired": 2, "max": 3, "version": 1, "placed": null,
                 "healthy": null, "report_age_seconds": 25, "state": "unknown"},
                {"region": "sin", "desired": 2, "max": 3, "version": 1, "placed": null,
                 "healthy": null, "report_age_seconds": null, "state": "pending"}
            ]
        }))
        .unwrap();
        let rows = status_table(&status);
        let cells = |i: usize| rows[i][4..].join(" ");
        assert_eq!(cells(0), "2/2 running 1s ago");
        assert_eq!(cells(1), "- unknown 25s ago");
        assert_eq!(cells(2), "- pending never");
    }

    #[test]
    fn status_shows_each_version_in_service_during_a_rollout() {
        let status: ServiceStatus = serde_json::from_value(json!({
            "org": "demo", "app": "shop", "name": "web", "version": 2, "regions": [
                {"region": "fra", "desired": 2, "max": 3, "version": 2, "placed": 3,
                 "healthy": 2, "report_age_seconds": 1, "state": "rolling out", "versions": [
                    {"version": 1, "placed": 2, "healthy": 2},
                    {"version": 2, "placed": 1, "healthy": 0}]}
            ]
        }))
        .unwrap();
        let rows = status_table(&status);
        assert_eq!(rows[0][3], "2 (0/1), 1 (2/2)");
        assert_eq!(rows[0][5], "rolling out");
    }
}
