//! The region's report to the global control plane (`meridian.v1.Reports/RegionReport` on its
//! xDS port, over mutual TLS with the region's own certificate): its nodes, capacity and each
//! service's placed and healthy instances, sent as soon as it changes and every few seconds
//! anyway; with it the windows of request figures it has not had yet, and where the region's
//! components serve `/metrics`. While the global control plane is away the region goes on and
//! reports again when it is back (the windows of the last minutes with it).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use meridian_model::MetricsTarget;

use meridian_xds::meridian::{ReportAck, UpwardReport, REGION_REPORT_PATH};
use meridian_xds::UnaryClient;

use crate::region::Region;

/// How often the region reports.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(2);

/// Reports `region`, whose control plane's admin port is at `admin`, through `global` when it
/// changes and at least every [`REPORT_INTERVAL`], for as long as the task runs.
pub async fn report_upward(mut global: UnaryClient, region: Arc<Region>, admin: SocketAddr) {
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
        let windows = region.pending_traffic();
        if !heartbeat && windows.is_empty() && sent.as_ref() == Some(&report) {
            continue;
        }
        let mut targets = region.metrics_targets();
        targets.push(MetricsTarget {
            address: admin.to_string(),
            role: "control".to_owned(),
            node: region.name().to_owned(),
        });
        let encoded = (
            serde_json::to_vec(&report),
            serde_json::to_vec(&windows),
            serde_json::to_vec(&targets),
        );
        let (report_json, traffic_json, targets_json) = match encoded {
            (Ok(report), Ok(traffic), Ok(targets)) => (report, traffic, targets),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                tracing::error!(error = %e, "cannot encode the region's report; not sent");
                continue;
            }
        };
        let upward = UpwardReport {
            region: region.name().to_owned(),
            report_json,
            traffic_json: if windows.is_empty() {
                Vec::new()
            } else {
                traffic_json
            },
            targets_json,
        };
        let newest = windows.last().map(|w| w.start);
        let answer: Result<ReportAck, String> = global.call(REGION_REPORT_PATH, upward).await;
        if let (Ok(_), Some(newest)) = (&answer, newest) {
            region.traffic_acknowledged(newest);
        }
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
