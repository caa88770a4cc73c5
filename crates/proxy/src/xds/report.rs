//! A gateway's report to its region's control plane (`meridian.v1.Reports/GatewayReport`, over
//! the same mutual-TLS address as xDS, with the gateway's certificate): the requests it answered
//! per cluster so far, and where its `/metrics` is, every [`REPORT_EVERY`]. The region turns the
//! cumulative figures into windows per service.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use meridian_xds::meridian::{GatewayReport, ReportAck, GATEWAY_REPORT_PATH};
use meridian_xds::UnaryClient;

use crate::Proxy;

/// How often a gateway reports.
pub const REPORT_EVERY: Duration = Duration::from_secs(2);

/// Reports `proxy`'s figures through `control` as gateway `node`, whose admin port is at
/// `admin`, every [`REPORT_EVERY`] for as long as the task runs.
pub async fn report_gateway(
    proxy: Arc<Proxy>,
    mut control: UnaryClient,
    node: String,
    admin: SocketAddr,
) {
    // Tells this run's counts from another gateway's of the same node id, or an earlier run's.
    let run = format!("{:016x}", fastrand::u64(..));
    let mut tick = tokio::time::interval(REPORT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        let report = GatewayReport {
            node: node.clone(),
            run: run.clone(),
            metrics_address: admin.to_string(),
            clusters: proxy.cluster_traffic(),
        };
        let answer: Result<ReportAck, String> = control.call(GATEWAY_REPORT_PATH, report).await;
        match answer {
            Ok(_) if failing => {
                tracing::info!("reporting to the control plane again");
                failing = false;
            }
            Ok(_) => {}
            Err(e) if !failing => {
                tracing::warn!(error = %e, "cannot report to the control plane; retrying");
                failing = true;
            }
            Err(_) => {}
        }
    }
}
