//! Reports to the region's control plane: the node and its instances' states, sent when a state
//! changes and at least every [`HEARTBEAT`] (a node that stops reporting is presumed gone).

use std::sync::Arc;
use std::time::Duration;

use meridian_xds::meridian::{NodeReport, ReportAck, REPORT_PATH};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic_prost::ProstCodec;

/// Longest time between two reports.
pub const HEARTBEAT: Duration = Duration::from_secs(2);

/// A client of the report service that reconnects after failures.
pub struct Reporter {
    url: String,
    tls: Arc<rustls::ClientConfig>,
    channel: Option<Channel>,
}

impl Reporter {
    /// A reporter to the control plane at `url`, over `tls`.
    pub fn new(url: &str, tls: Arc<rustls::ClientConfig>) -> Reporter {
        Reporter {
            url: url.to_owned(),
            tls,
            channel: None,
        }
    }

    /// Sends `report`; on failure the next call connects anew.
    pub async fn send(&mut self, report: NodeReport) -> Result<(), String> {
        let channel = match &self.channel {
            Some(channel) => channel.clone(),
            None => {
                let channel = meridian_xds::connect(&self.url, Some(self.tls.clone()))
                    .await
                    .map_err(|e| format!("connecting to {}: {e}", self.url))?;
                self.channel = Some(channel.clone());
                channel
            }
        };
        let mut grpc = tonic::client::Grpc::new(channel);
        let result = async {
            grpc.ready().await.map_err(|e| e.to_string())?;
            grpc.unary(
                tonic::Request::new(report),
                PathAndQuery::from_static(REPORT_PATH),
                ProstCodec::<NodeReport, ReportAck>::default(),
            )
            .await
            .map_err(|status| format!("{:?}: {}", status.code(), status.message()))
        }
        .await;
        if result.is_err() {
            self.channel = None;
        }
        result.map(|_| ())
    }
}
