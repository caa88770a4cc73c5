//! A gateway's report to its region's control plane (`meridian.v1.Reports/GatewayReport`, over
//! the same mutual-TLS address as xDS, with the gateway's certificate): the requests it answered
//! per cluster so far, and where its `/metrics` is, every [`REPORT_EVERY`]. The region turns the
//! cumulative figures into windows per service.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use meridian_xds::meridian::{GatewayReport, GATEWAY_REPORT_PATH};
use meridian_xds::UnaryClient;

use crate::Proxy;

/// How often a gateway reports.
pub const REPORT_EVERY: Duration = Duration::from_secs(2);

/// Reports `proxy`'s figures through `control` as gateway `node`, whose admin port is at
/// `admin`, every [`REPORT_EVERY`] for as long as the task runs.
pub async fn report_gateway(
    proxy: Arc<Proxy>,
    control: UnaryClient,
    node: String,
    admin: SocketAddr,
) {
    // Tells this run's counts from another gateway's of the same node id, or an earlier run's.
    let run = format!("{:016x}", fastrand::u64(..));
    let report = move || GatewayReport {
        node: node.clone(),
        run: run.clone(),
        metrics_address: admin.to_string(),
        clusters: proxy.cluster_traffic(),
    };
    control
        .report_every(GATEWAY_REPORT_PATH, REPORT_EVERY, "gateway figures", report)
        .await;
}
