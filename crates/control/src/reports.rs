//! The report service (`meridian.v1.Reports`), over a control plane's mutual-TLS port: agents
//! report their node and the states of their instances to their region's control plane (accepted
//! only from the agent of that node in this region, by its certificate), and regional control
//! planes report their region to the global one (accepted only from that region's control
//! plane).

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use meridian_identity::Subject;
use meridian_model::{validate_region_report, RegionReport};
use meridian_xds::meridian::{
    NodeReport, ReportAck, UpwardReport, REGION_REPORT_PATH, REPORT_PATH,
};
use tonic::codegen::{http, Body, BoxFuture, StdError};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;

use crate::region::Region;
use crate::tls::Peer;

/// Most instances one report may list.
const MAX_INSTANCES_PER_REPORT: usize = 10_000;
/// Largest report accepted, in bytes.
const MAX_REPORT_BYTES: usize = 4 << 20;

/// A report method: where it is, what it takes, and what it does with it.
pub trait ReportMethod: Clone + Send + Sync + 'static {
    /// The report.
    type Report: prost::Message + Default + Send + Sync + 'static;
    /// The gRPC path of the method.
    const PATH: &'static str;
    /// Checks that `peer` may send `report`, and records it.
    fn record(&self, peer: Option<Peer>, report: Self::Report) -> Result<(), Status>;
}

/// The report service (`meridian.v1.Reports`) with one method.
#[derive(Clone)]
pub struct ReportService<M> {
    method: M,
}

impl ReportService<NodeReports> {
    /// The service of a regional control plane: agents report their nodes into `region`.
    pub fn new(region: Arc<Region>) -> ReportService<NodeReports> {
        ReportService {
            method: NodeReports(region),
        }
    }
}

impl<M: ReportMethod> ReportService<M> {
    /// The service with `method`.
    pub fn with(method: M) -> ReportService<M> {
        ReportService { method }
    }
}

impl<M> NamedService for ReportService<M> {
    const NAME: &'static str = "meridian.v1.Reports";
}

/// Agents' reports of their nodes, into a region's state.
#[derive(Clone)]
pub struct NodeReports(Arc<Region>);

impl ReportMethod for NodeReports {
    type Report = NodeReport;
    const PATH: &'static str = REPORT_PATH;

    fn record(&self, peer: Option<Peer>, report: NodeReport) -> Result<(), Status> {
        record(&self.0, peer, report)
    }
}

/// Regional control planes' reports of their regions, handed to a recorder (the global control
/// plane's memory of the regions).
#[derive(Clone)]
pub struct RegionReports(Arc<dyn Fn(String, RegionReport) + Send + Sync>);

impl RegionReports {
    /// Reports that go to `record` (region, report) once checked.
    pub fn new(record: impl Fn(String, RegionReport) + Send + Sync + 'static) -> RegionReports {
        RegionReports(Arc::new(record))
    }
}

impl ReportMethod for RegionReports {
    type Report = UpwardReport;
    const PATH: &'static str = REGION_REPORT_PATH;

    fn record(&self, peer: Option<Peer>, upward: UpwardReport) -> Result<(), Status> {
        let id = peer.and_then(|p| p.id).ok_or_else(|| {
            Status::unauthenticated("region reports need a regional control plane's certificate")
        })?;
        match &id.subject {
            Subject::Control {
                region: Some(region),
            } if *region == upward.region => {}
            _ => {
                return Err(Status::permission_denied(format!(
                    "{id} may not report for region `{}`",
                    upward.region
                )))
            }
        }
        let report: RegionReport = serde_json::from_slice(&upward.report_json)
            .map_err(|e| Status::invalid_argument(format!("report_json: {e}")))?;
        validate_region_report(&report)
            .map_err(|errors| Status::invalid_argument(format!("report_json: {errors}")))?;
        (self.0)(upward.region, report);
        Ok(())
    }
}

/// One call of a method.
struct Call<M>(M);

impl<M: ReportMethod> UnaryService<M::Report> for Call<M> {
    type Response = ReportAck;
    type Future = Ready<Result<Response<ReportAck>, Status>>;

    fn call(&mut self, request: Request<M::Report>) -> Self::Future {
        let peer = request.extensions().get::<Peer>().cloned();
        let report = request.into_inner();
        ready(
            self.0
                .record(peer, report)
                .map(|()| Response::new(ReportAck {})),
        )
    }
}

/// Checks that `peer` is the agent of the reported node in this region, and records the report.
fn record(region: &Region, peer: Option<Peer>, report: NodeReport) -> Result<(), Status> {
    let id = peer.and_then(|p| p.id).ok_or_else(|| {
        Status::unauthenticated("reports need an agent's client certificate: join first")
    })?;
    if report.instances.len() > MAX_INSTANCES_PER_REPORT {
        return Err(Status::invalid_argument(format!(
            "instances: {} listed, at most {MAX_INSTANCES_PER_REPORT} per report",
            report.instances.len()
        )));
    }
    match &id.subject {
        Subject::Agent {
            region: theirs,
            node,
        } if theirs == region.name() && *node == report.node => {
            region.report(report, Instant::now());
            Ok(())
        }
        _ => Err(Status::permission_denied(format!(
            "{id} may not report for node `{}` of region {}",
            report.node,
            region.name()
        ))),
    }
}

impl<M, B> tower::Service<http::Request<B>> for ReportService<M>
where
    M: ReportMethod,
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = self.method.clone();
        if request.uri().path() != M::PATH {
            let status = Status::unimplemented(format!("{} is not a method", request.uri().path()));
            return Box::pin(async move { Ok(status.into_http()) });
        }
        Box::pin(async move {
            let mut grpc = Grpc::new(ProstCodec::<ReportAck, M::Report>::default())
                .apply_max_message_size_config(Some(MAX_REPORT_BYTES), Some(MAX_REPORT_BYTES));
            Ok(grpc.unary(Call(method), request).await)
        })
    }
}
