//! `meridian top [SERVICE] --app APP`: the live figures of an app's services (or one of them)
//! per region, from the metrics API: requests/s, error ratios by class, latency percentiles,
//! open connections and instances, redrawn every `--interval` (plain ANSI: clear, then the
//! table) until Ctrl-C; `--once` prints the table once (for scripts and tests).

use std::time::Duration;

use anyhow::Result;
use clap::Args;
use meridian_model::{Rates, ServiceMetrics, ServiceSummary};
use serde::Serialize;

use super::resources::{service_path, AppScope};
use crate::client::Client;
use crate::output::{print, Format};

/// Options of `meridian top`.
#[derive(Args)]
pub struct TopArgs {
    /// The service; without it, every service of the app.
    service: Option<String>,
    #[command(flatten)]
    scope: AppScope,
    /// The stretch of time the figures are taken over, up to now (a multiple of 10s, at most
    /// 1h).
    #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
    window: Duration,
    /// How often the table is redrawn.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Print the table once and exit.
    #[arg(long)]
    once: bool,
}

/// One service's figures, as `-o json` prints them.
#[derive(Serialize)]
struct ServiceFigures {
    org: String,
    app: String,
    service: String,
    metrics: ServiceMetrics,
}

/// The columns of the table.
const HEADERS: [&str; 12] = [
    "SERVICE",
    "REGION",
    "REQ/S",
    "4XX",
    "5XX",
    "P50",
    "P90",
    "P99",
    "CONNS",
    "INSTANCES",
    "INGRESS/S",
    "INGRESS 5XX",
];

/// Runs `meridian top`.
pub async fn top(api: &Client, format: Format, args: TopArgs) -> Result<()> {
    if args.interval.is_zero() {
        anyhow::bail!("--interval: must be more than 0s");
    }
    let window = humantime::format_duration(args.window)
        .to_string()
        .replace(' ', "");
    let services = services(api, &args).await?;
    loop {
        let mut figures = Vec::with_capacity(services.len());
        for (org, service) in &services {
            let scope = AppScope::new(&args.scope.app, org);
            let path = service_path(api, service, &scope).await?;
            let metrics: ServiceMetrics = api
                .get(&format!("{path}/metrics?window={window}&step={window}"))
                .await?;
            figures.push(ServiceFigures {
                org: org.clone(),
                app: args.scope.app.clone(),
                service: service.clone(),
                metrics,
            });
        }
        if !args.once && format == Format::Table {
            // Clear the screen and go home, then draw.
            print!("\x1b[2J\x1b[H");
            println!(
                "{} services of app {}, last {window}, every {}  (Ctrl-C quits)",
                figures.len(),
                args.scope.app,
                humantime::format_duration(args.interval)
            );
        }
        print(format, &figures, &HEADERS, |all| rows(all))?;
        if args.once {
            return Ok(());
        }
        tokio::select! {
            () = tokio::time::sleep(args.interval) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

/// The services shown, with their orgs: the one named, or every service of the app.
async fn services(api: &Client, args: &TopArgs) -> Result<Vec<(String, String)>> {
    if let Some(service) = &args.service {
        let path = service_path(api, service, &args.scope).await?;
        // `/v1/orgs/{org}/…`: the org the service was found in.
        let org = path.split('/').nth(3).unwrap_or_default().to_owned();
        return Ok(vec![(org, service.clone())]);
    }
    let org = args
        .scope
        .org
        .as_deref()
        .or(api.default_org())
        .map(|org| format!("&org={org}"))
        .unwrap_or_default();
    let found: Vec<ServiceSummary> = api
        .get(&format!("/v1/services?app={}{org}", args.scope.app))
        .await?;
    if found.is_empty() {
        anyhow::bail!("no service in an app `{}`", args.scope.app);
    }
    Ok(found.into_iter().map(|s| (s.org, s.name)).collect())
}

/// One row per service and region.
fn rows(all: &[ServiceFigures]) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for figures in all {
        for region in &figures.metrics.regions {
            let total = &region.total;
            let (p50, p90, p99) = latency(&total.served);
            let healthy = region.instances.get("healthy").copied().unwrap_or(0);
            let all: u32 = region.instances.values().sum();
            rows.push(vec![
                figures.service.clone(),
                region.region.clone(),
                format!("{:.1}", total.served.requests_per_second),
                percent(total.served.error_ratio_4xx),
                percent(total.served.error_ratio_5xx),
                p50,
                p90,
                p99,
                total.open_connections.to_string(),
                format!("{healthy}/{all} healthy"),
                format!("{:.1}", total.ingress.requests_per_second),
                percent(total.ingress.error_ratio_5xx),
            ]);
        }
    }
    rows
}

/// The percentiles of `rates`, in milliseconds (`-` without requests).
fn latency(rates: &Rates) -> (String, String, String) {
    match &rates.latency_ms {
        Some(l) => (ms(l.p50), ms(l.p90), ms(l.p99)),
        None => ("-".to_owned(), "-".to_owned(), "-".to_owned()),
    }
}

fn ms(value: f64) -> String {
    if value < 10.0 {
        format!("{value:.1}ms")
    } else {
        format!("{value:.0}ms")
    }
}

fn percent(ratio: f64) -> String {
    format!("{:.1}%", ratio * 100.0)
}
