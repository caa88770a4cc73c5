//! The region's report to the global control plane (`meridian.v1.Reports/RegionReport` on its
//! xDS port, over mutual TLS with the region's own certificate): its nodes, capacity and each
//! service's placed and healthy instances, sent as soon as it changes and every few seconds
//! anyway. While the global control plane is away the region goes on and reports again when it
//! is back.

use std::sync::Arc;
use std::time::Duration;

use meridian_xds::meridian::{ReportAck, UpwardReport, REGION_REPORT_PATH};
use meridian_xds::UnaryClient;

use crate::region::Region;

/// How often the region reports.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(2);

/// Reports `region` through `global` when it changes and at least every [`REPORT_INTERVAL`],
/// for as long as the task runs.
pub async fn report_upward(mut global: UnaryClient, region: Arc<Region>) {
    let due = region.report_due();
    let mut tick = tokio::time::interval(REPORT_INTERVAL);
    let mut failing = false;
    let mut sent = None;
    loop {
        let heartbeat = tokio::select! {
            _ = tick.tick() => true,
            () = due.notified() => false,
        };
        let report = region.report_upward();
        if !heartbeat && sent.as_ref() == Some(&report) {
            continue;
        }
        let report_json = match serde_json::to_vec(&report) {
            Ok(json) => json,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode the region's report; not sent");
                continue;
            }
        };
        let upward = UpwardReport {
            region: region.name().to_owned(),
            report_json,
        };
        let answer: Result<ReportAck, String> = global.call(REGION_REPORT_PATH, upward).await;
        match answer.map(drop) {
            Ok(()) if failing => {
                tracing::info!("reporting to the global control plane again");
                failing = false;
                sent = Some(report);
            }
            Ok(()) => sent = Some(report),
            Err(e) if !failing => {
                tracing::warn!(error = %e, "cannot report to the global control plane; the region goes on");
                failing = true;
            }
            Err(_) => {}
        }
    }
}
