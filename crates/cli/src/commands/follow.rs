//! Following a rollout from the command line: `meridian deploy` prints each region's progress
//! as it changes until the new version runs everywhere, or it was rolled back.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Result};
use meridian_api::{RegionStatus, ServiceStatus};
use meridian_model::RolloutPhase;

use crate::client::Client;

/// How often the status is read again.
const POLL: Duration = Duration::from_millis(500);

/// Where one region stands with the version followed.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Still on its way (or waiting for its wave).
    Going,
    /// Runs the version to the full.
    Done,
    /// Its rollout of the version failed: the reason.
    Failed(String),
}

/// What `region` says of `version`.
fn outcome(region: &RegionStatus, version: u64) -> Outcome {
    let rollout = region.rollout.as_ref().filter(|r| r.version == version);
    if let Some(r) = rollout.filter(|r| r.phase.failed()) {
        let reason = r
            .failure
            .as_ref()
            .map_or("a gate failed", |f| f.reason.as_str());
        return Outcome::Failed(reason.to_owned());
    }
    let succeeded = rollout.is_none_or(|r| r.phase == RolloutPhase::Succeeded);
    if region.version == version && region.state == "running" && succeeded {
        Outcome::Done
    } else {
        Outcome::Going
    }
}

/// How wide a progress bar is, in characters between its brackets.
const BAR: u32 = 10;

/// A progress bar of `done` out of `of` (`[######----]`).
fn bar(done: u32, of: u32) -> String {
    let filled = (done.min(of) * BAR).checked_div(of).unwrap_or(BAR) as usize;
    format!(
        "[{}{}]",
        "#".repeat(filled),
        "-".repeat(BAR as usize - filled)
    )
}

/// How many instances of `version` are ready in `region`.
fn ready(region: &RegionStatus, version: u64) -> u32 {
    match region.versions.iter().find(|v| v.version == version) {
        Some(v) => v.healthy,
        None if region.version == version => region.healthy.unwrap_or(0),
        None => 0,
    }
}

/// One line saying where `region` is with `version`: a progress bar of its ready instances,
/// then the step, the split, and the gates' figures or the failed gate's words.
fn line(region: &RegionStatus, version: u64) -> String {
    let healthy = match (region.healthy, region.placed) {
        (Some(healthy), Some(placed)) => format!("{healthy}/{placed} healthy in service"),
        _ => "no report".to_owned(),
    };
    let ready = ready(region, version);
    let mut text = format!(
        "  {:<8} {:<20} {} v{version} {ready}/{} ready, {healthy}",
        region.region,
        region.state,
        bar(ready, region.desired),
        region.desired
    );
    if let Some(r) = &region.rollout {
        if r.steps > 1 {
            text.push_str(&format!(", step {}/{}", r.step + 1, r.steps));
        }
        for w in &r.weights {
            text.push_str(&format!(", v{} {}%", w.version, w.weight));
        }
        if r.promoted && !r.phase.ended() {
            text.push_str(", promoted");
        }
        if let Some(f) = &r.failure {
            text.push_str(&format!(": {}", f.reason));
        } else if let Some(analysis) = &r.analysis {
            let figures = super::rollout::figures(analysis);
            text.push_str(&format!(", gates {figures}"));
        }
    }
    text
}

/// Follows the rollout of `version` of the service at `path` until every region runs it (Ok)
/// or one rolled it back, or another version became current (an error saying so).
pub async fn follow(api: &Client, path: &str, version: u64) -> Result<()> {
    println!(
        "following the rollout of version {version} (Ctrl-C stops following; the rollout goes on)"
    );
    let mut shown: BTreeMap<String, String> = BTreeMap::new();
    loop {
        let status: ServiceStatus = api.get(&format!("{path}/status")).await?;
        for region in &status.regions {
            let now = line(region, version);
            if shown.get(&region.region) != Some(&now) {
                println!("{now}");
                shown.insert(region.region.clone(), now);
            }
        }
        if let Some((region, reason)) =
            status
                .regions
                .iter()
                .find_map(|r| match outcome(r, version) {
                    Outcome::Failed(reason) => Some((r.region.clone(), reason)),
                    _ => None,
                })
        {
            bail!("the rollout of version {version} failed in {region}: {reason}; the regions return to the previous version");
        }
        if status.version != version {
            bail!(
                "version {version} is no longer current (now version {}): it was rolled back, aborted or replaced",
                status.version
            );
        }
        if status
            .regions
            .iter()
            .all(|r| outcome(r, version) == Outcome::Done)
        {
            println!("version {version} runs in every region");
            return Ok(());
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_region_s_line_shows_the_new_version_s_progress() {
        let region: RegionStatus = serde_json::from_value(serde_json::json!({
            "region": "fra", "desired": 3, "max": 3, "version": 2, "placed": 5, "healthy": 5,
            "state": "rolling out",
            "versions": [{"version": 2, "placed": 2, "healthy": 2},
                         {"version": 1, "placed": 3, "healthy": 3}],
        }))
        .unwrap();
        let text = line(&region, 2);
        assert!(
            text.contains("[######----] v2 2/3 ready, 5/5 healthy in service"),
            "{text}"
        );
        assert_eq!(bar(0, 3), "[----------]");
        assert_eq!(bar(4, 3), "[##########]");
        assert_eq!(bar(0, 0), "[##########]");
    }
}
