//! Where a change's time goes between its commit and the HTTP watcher (`--trace`): the
//! planes' stage trace ([`meridian_store::trace`]), lined up per revision with when the
//! watcher received each change.
//!
//! Every stage is measured on one clock (microseconds since the epoch), from the time the
//! change is stamped with (`committed_at_us`, taken before the write's first statement):
//!
//! - **write**: to its commit's return on the replica that wrote it (the statements, the
//!   `COMMIT`'s flush to disk, the write lock's wait);
//! - **notify**: to when the watched replica (the first) knew of it: 0 for its own writes
//!   (told in process at commit), else its listener's receipt of the notification;
//! - **idle**: to when the watcher's request that returned it arrived, if that was later
//!   (the change waited for the client, not the server);
//! - **wake**: to when the feed handler had read it (the handler's wakeup and read);
//! - **deliver**: to the watcher's receipt (JSON, the HTTP response, the client's wakeup).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use meridian_bench::percentile;
use serde_json::Value;

/// One change as the watcher received it.
#[derive(Clone, Copy)]
pub struct Received {
    /// Its revision.
    pub revision: u64,
    /// Its `committed_at_us`.
    pub stamped: i64,
    /// When the watcher had it.
    pub seen: i64,
}

/// The stages' names, in order.
const STAGES: [&str; 5] = ["write", "notify", "idle", "wake", "deliver"];

/// One trace event: stage, revisions, time.
struct Event {
    stage: String,
    first: u64,
    last: u64,
    at: i64,
}

/// The trace events in the JSON log at `path`.
fn events(path: &Path) -> Result<Vec<Event>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|v| v["target"] == meridian_store::trace::TARGET)
        .filter_map(|v| {
            Some(Event {
                stage: v["stage"].as_str()?.to_owned(),
                first: v["first"].as_u64()?,
                last: v["last"].as_u64()?,
                at: v["at_us"].as_i64()?,
            })
        })
        .collect())
}

/// Per change, each stage's microseconds (in [`STAGES`] order), from the logs of the
/// replicas (`logs[0]` the watched one) and what the watcher `received`.
fn stages(logs: &[&Path], received: &[Received]) -> Result<Vec<[f64; 5]>> {
    let mut committed: HashMap<u64, (usize, i64)> = HashMap::new();
    let (mut notified, mut read) = (HashMap::new(), Vec::new());
    let mut asked = Vec::new();
    for (replica, log) in logs.iter().enumerate() {
        for e in events(log)? {
            match (e.stage.as_str(), replica) {
                ("committed", _) => {
                    for r in e.first..=e.last {
                        committed.insert(r, (replica, e.at));
                    }
                }
                ("notified", 0) => {
                    notified.entry(e.first).or_insert(e.at);
                }
                ("read", 0) => read.push((e.first, e.last, e.at)),
                ("asked", 0) => asked.push(e.at),
                _ => {}
            }
        }
    }
    asked.sort_unstable();
    read.sort_by_key(|(_, _, at)| *at);
    let mut out = Vec::with_capacity(received.len());
    for change in received {
        let r = change.revision;
        let Some(&(writer, commit)) = committed.get(&r) else {
            continue;
        };
        let known = if writer == 0 {
            commit
        } else {
            match notified.get(&r) {
                Some(at) => *at,
                None => continue,
            }
        };
        let Some(&(_, _, read_at)) = read
            .iter()
            .find(|(first, last, _)| (*first..=*last).contains(&r))
        else {
            continue;
        };
        let request = asked
            .iter()
            .rev()
            .find(|at| **at <= read_at)
            .copied()
            .unwrap_or(known);
        let ready = known.max(request);
        out.push([
            (commit - change.stamped) as f64,
            (known - commit) as f64,
            (ready - known) as f64,
            (read_at - ready) as f64,
            (change.seen - read_at) as f64,
        ]);
    }
    Ok(out)
}

/// Prints the stages' p50 and p99, and their means over the slowest 1% of the changes (what
/// the feed's p99 is made of).
pub fn report(logs: &[&Path], received: &[Received]) -> Result<()> {
    let per_change = stages(logs, received)?;
    if per_change.is_empty() {
        println!("  trace: no change could be followed through the logs");
        return Ok(());
    }
    let mut totals: Vec<f64> = per_change.iter().map(|s| s.iter().sum()).collect();
    let p99 = percentile(&mut totals.clone(), 99.0);
    let tail: Vec<&[f64; 5]> = per_change
        .iter()
        .filter(|s| s.iter().sum::<f64>() >= p99)
        .collect();
    println!(
        "  trace of {} of {} changes (µs; total p50 {:.0}, p99 {p99:.0}):",
        per_change.len(),
        received.len(),
        percentile(&mut totals, 50.0)
    );
    println!(
        "  {:<8} {:>8} {:>8} {:>14}",
        "stage", "p50", "p99", "mean of p99+"
    );
    for (i, name) in STAGES.iter().enumerate() {
        let mut values: Vec<f64> = per_change.iter().map(|s| s[i]).collect();
        let tail_mean = tail.iter().map(|s| s[i]).sum::<f64>() / tail.len() as f64;
        println!(
            "  {name:<8} {:>8.0} {:>8.0} {tail_mean:>14.0}",
            percentile(&mut values, 50.0),
            percentile(&mut values, 99.0)
        );
    }
    Ok(())
}
