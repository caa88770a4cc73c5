//! The edge's reports to the global control plane: where its admin port serves `/metrics`, and
//! its anycast announcement — every few seconds, and at once when the announcement changes
//! (announced or withdrawn, or why), so that `meridian get edges` shows it when it happens.

use std::sync::Arc;
use std::time::Duration;

use meridian_xds::meridian::{AnycastReport, EdgeReport, ReportAck, EDGE_REPORT_PATH};
use meridian_xds::UnaryClient;

use crate::anycast::Anycast;

/// Reports edge `location` (its metrics at `metrics_address`) through `client` every `every`
/// and whenever `anycast`'s announcement changes, for as long as the task runs.
pub async fn report(
    mut client: UnaryClient,
    location: String,
    metrics_address: String,
    anycast: Option<Arc<Anycast>>,
    every: Duration,
) {
    let mut status = anycast.as_ref().map(|a| a.status());
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    let mut last = None;
    loop {
        let report = EdgeReport {
            location: location.clone(),
            metrics_address: metrics_address.clone(),
            anycast: anycast.as_ref().map(|a| anycast_report(a)),
        };
        let state = report
            .anycast
            .as_ref()
            .map(|a| (a.announced, a.reason.clone()));
        let answer: Result<ReportAck, String> = client.call(EDGE_REPORT_PATH, report).await;
        match answer {
            Ok(_) => {
                if failing {
                    tracing::info!("reporting to the global control plane again");
                }
                failing = false;
                last = state;
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "cannot report to the global control plane; retrying");
                }
                failing = true;
            }
        }
        // Until the next tick, or a change of announcement not reported yet.
        loop {
            let changed = async {
                match status.as_mut() {
                    Some(status) => status.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tick.tick() => break,
                open = changed => {
                    if !open {
                        status = None;
                        continue;
                    }
                    let now = anycast.as_ref().map(|a| {
                        let s = a.status().borrow().clone();
                        (s.announced, s.reason.as_str().to_owned())
                    });
                    if now != last {
                        break;
                    }
                }
            }
        }
    }
}

fn anycast_report(anycast: &Anycast) -> AnycastReport {
    let status = anycast.status().borrow().clone();
    AnycastReport {
        announced: status.announced,
        reason: status.reason.as_str().to_owned(),
        detail: status.detail,
        since_seconds: status.since.elapsed().as_secs(),
        prefixes: anycast.prefixes().iter().map(|p| p.network()).collect(),
    }
}
