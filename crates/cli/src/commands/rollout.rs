//! `meridian rollout …`: a service's rollouts, region by region: the one under way, the
//! history, and pausing, resuming, promoting or aborting it.

use anyhow::Result;
use clap::Subcommand;
use meridian_model::{
    AnalysisFigures, Deployment, RolloutControl, RolloutRecord, RolloutStatus, VersionWeight,
};
use reqwest::Method;

use crate::client::Client;
use crate::commands::resources::{read_status, service_path, AppScope};
use crate::output::{print, Format};

/// What `meridian rollout` does.
#[derive(Subcommand)]
pub enum RolloutCommand {
    /// Show the rollout of the current version in each region: strategy, phase, step, weights,
    /// the metric gates' last figures (each version's requests, success rate and p99 over the
    /// analysis window), and the failed gate with its figures.
    Status {
        /// The service.
        service: String,
        #[command(flatten)]
        scope: AppScope,
    },
    /// List past rollouts, newest version first, with their outcome and reason.
    History {
        /// The service.
        service: String,
        /// One line per event of each rollout (each change of phase, step or split, with the
        /// seconds since the rollout started) instead of one per rollout.
        #[arg(long)]
        events: bool,
        #[command(flatten)]
        scope: AppScope,
    },
    /// Abort the rollout under way (or a blue-green or canary one that ended while the previous
    /// set is kept): the version it replaces becomes current again (a new version), and every
    /// region returns to it by draining the new instances, at once where the previous set is
    /// still kept.
    Abort {
        /// The service.
        service: String,
        #[command(flatten)]
        scope: AppScope,
    },
    /// Pause the rollout under way in every region: no instance replaced, no canary step
    /// taken, no further wave started; the gates keep watching (a failing version still rolls
    /// back) and the progress deadline stops.
    Pause {
        /// The service.
        service: String,
        #[command(flatten)]
        scope: AppScope,
    },
    /// Resume a paused rollout where it was held.
    Resume {
        /// The service.
        service: String,
        #[command(flatten)]
        scope: AppScope,
    },
    /// Promote the rollout under way: a canary skips its remaining steps and pauses, and the
    /// new version takes every request as soon as its instances are ready.
    Promote {
        /// The service.
        service: String,
        #[command(flatten)]
        scope: AppScope,
    },
}

/// Runs `meridian rollout …`.
pub async fn rollout(api: &Client, format: Format, cmd: RolloutCommand) -> Result<()> {
    match cmd {
        RolloutCommand::Status { service, scope } => {
            let status = read_status(api, format, &service, &scope).await?;
            let headers = [
                "REGION", "STATE", "STRATEGY", "PHASE", "STEP", "WEIGHTS", "GATES", "REASON",
            ];
            print(format, &status, &headers, |status| {
                status
                    .regions
                    .iter()
                    .map(|r| {
                        let mut row = vec![r.region.clone(), r.state.clone()];
                        row.extend(rollout_cells(r.rollout.as_ref()));
                        row
                    })
                    .collect()
            })
        }
        RolloutCommand::History {
            service,
            events,
            scope,
        } => {
            let path = service_path(api, &service, &scope).await?;
            let history: Vec<RolloutRecord> = api.get(&format!("{path}/rollouts")).await?;
            if events {
                let headers = [
                    "VERSION", "REGION", "AFTER", "PHASE", "STEP", "WEIGHTS", "REASON",
                ];
                return print(format, &history, &headers, |history| {
                    history.iter().flat_map(event_rows).collect()
                });
            }
            let headers = [
                "VERSION", "REGION", "FROM", "STRATEGY", "OUTCOME", "TOOK", "REASON",
            ];
            print(format, &history, &headers, |history| {
                history.iter().map(history_row).collect()
            })
        }
        RolloutCommand::Abort { service, scope } => {
            let path = service_path(api, &service, &scope).await?;
            let deployment: Deployment = api
                .send(
                    Method::POST,
                    &format!("{path}/rollout/abort"),
                    &serde_json::json!({}),
                )
                .await?;
            match format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&deployment)?),
                Format::Table => println!(
                    "aborted: {service} goes back to version {} as version {} (revision {})",
                    deployment.rolled_back_from.unwrap_or_default(),
                    deployment.version,
                    deployment.revision
                ),
            }
            Ok(())
        }
        RolloutCommand::Pause { service, scope } => {
            control(api, format, &service, &scope, "pause", "paused").await
        }
        RolloutCommand::Resume { service, scope } => {
            control(api, format, &service, &scope, "resume", "resumed").await
        }
        RolloutCommand::Promote { service, scope } => {
            control(api, format, &service, &scope, "promote", "promoted").await
        }
    }
}

/// `POST …/rollout/<action>`, then says `done`.
async fn control(
    api: &Client,
    format: Format,
    service: &str,
    scope: &AppScope,
    action: &str,
    done: &str,
) -> Result<()> {
    let path = service_path(api, service, scope).await?;
    let answer: Option<RolloutControl> = api
        .send(
            Method::POST,
            &format!("{path}/rollout/{action}"),
            &serde_json::json!({}),
        )
        .await?;
    match (format, answer) {
        (Format::Json, Some(control)) => println!("{}", serde_json::to_string_pretty(&control)?),
        (Format::Json, None) => println!("{{}}"),
        (Format::Table, Some(control)) => {
            println!(
                "{done}: the rollout of {service} version {}",
                control.version
            )
        }
        (Format::Table, None) => println!("{done}: the rollout of {service}"),
    }
    Ok(())
}

/// Strategy, phase, step, weights, metric-gate figures and reason of a region's rollout (`-`
/// when there is none).
fn rollout_cells(rollout: Option<&RolloutStatus>) -> Vec<String> {
    let Some(r) = rollout else {
        return vec!["-".to_owned(); 6];
    };
    let weights = split(&r.weights);
    vec![
        enum_name(&r.strategy),
        enum_name(&r.phase),
        format!("{}/{}", r.step + 1, r.steps),
        weights,
        r.analysis.as_ref().map_or_else(|| "-".to_owned(), figures),
        reason(r),
    ]
}

/// The metric gates' last figures: each version's requests, success rate and p99 over the
/// window (`v2 40 req 97.50% p99 50ms, v1 263 req 100.00% p99 41ms / 2s`).
pub(crate) fn figures(analysis: &AnalysisFigures) -> String {
    let versions: Vec<String> = analysis
        .versions
        .iter()
        .map(|f| {
            let rate = f.success_rate;
            format!(
                "v{} {} req {}.{:02}% p99 {}ms",
                f.version,
                f.requests,
                rate / 100,
                rate % 100,
                f.p99_ms
            )
        })
        .collect();
    format!(
        "{} / {:.0}s",
        versions.join(", "),
        analysis.window_ms as f64 / 1000.0
    )
}

/// The share of each version (`v2 5%, v1 95%`), or `-`.
fn split(weights: &[VersionWeight]) -> String {
    if weights.is_empty() {
        return "-".to_owned();
    }
    weights
        .iter()
        .map(|w| format!("v{} {}%", w.version, w.weight))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The rows of a rollout's events.
fn event_rows(record: &RolloutRecord) -> Vec<Vec<String>> {
    let r = &record.rollout;
    record
        .events
        .iter()
        .map(|e| {
            vec![
                r.version.to_string(),
                record.region.clone(),
                format!("{:.1}s", e.at.saturating_sub(r.started_at) as f64 / 1000.0),
                enum_name(&e.phase),
                format!("{}/{}", e.step + 1, r.steps),
                split(&e.weights),
                e.reason.clone().unwrap_or_else(|| "-".to_owned()),
            ]
        })
        .collect()
}

/// One row of the history.
fn history_row(record: &RolloutRecord) -> Vec<String> {
    let r = &record.rollout;
    let took = r.updated_at.saturating_sub(r.started_at);
    vec![
        r.version.to_string(),
        record.region.clone(),
        r.previous.to_string(),
        enum_name(&r.strategy),
        enum_name(&r.phase),
        if r.phase.ended() {
            format!("{:.1}s", took as f64 / 1000.0)
        } else {
            "-".to_owned()
        },
        reason(r),
    ]
}

/// The failed gate's words, or `-`.
fn reason(rollout: &RolloutStatus) -> String {
    rollout
        .failure
        .as_ref()
        .map_or_else(|| "-".to_owned(), |f| f.reason.clone())
}

/// A unit enum's name as the API writes it (`rolled_back`, `blue_green`).
fn enum_name<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}
