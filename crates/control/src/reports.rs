//! The report service (`meridian.v1.Reports`): agents report their node and the states of their
//! instances here, over the control plane's mutual-TLS port. A report is accepted only from the
//! agent of that node in this region (by its certificate).

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use meridian_identity::Subject;
use meridian_xds::meridian::{NodeReport, ReportAck, REPORT_PATH};
use tonic::codegen::{http, Body, BoxFuture, StdError};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;

use crate::region::RegionState;
use crate::tls::Peer;

/// Most instances one report may list.
const MAX_INSTANCES_PER_REPORT: usize = 10_000;
/// Largest report accepted, in bytes.
const MAX_REPORT_BYTES: usize = 4 << 20;

/// The report service over a region's state.
#[derive(Clone)]
pub struct ReportService {
    state: Arc<Mutex<RegionState>>,
}

impl ReportService {
    /// The service, recording reports into `state`.
    pub fn new(state: Arc<Mutex<RegionState>>) -> ReportService {
        ReportService { state }
    }
}

impl NamedService for ReportService {
    const NAME: &'static str = "meridian.v1.Reports";
}

/// The `Report` method.
struct ReportMethod(Arc<Mutex<RegionState>>);

impl UnaryService<NodeReport> for ReportMethod {
    type Response = ReportAck;
    type Future = Ready<Result<Response<ReportAck>, Status>>;

    fn call(&mut self, request: Request<NodeReport>) -> Self::Future {
        let peer = request.extensions().get::<Peer>().cloned();
        let report = request.into_inner();
        ready(record(&self.0, peer, report).map(|()| Response::new(ReportAck {})))
    }
}

/// Checks that `peer` is the agent of the reported node in this region, and records the report.
fn record(
    state: &Mutex<RegionState>,
    peer: Option<Peer>,
    report: NodeReport,
) -> Result<(), Status> {
    let id = peer.and_then(|p| p.id).ok_or_else(|| {
        Status::unauthenticated("reports need an agent's client certificate: join first")
    })?;
    if report.instances.len() > MAX_INSTANCES_PER_REPORT {
        return Err(Status::invalid_argument(format!(
            "instances: {} listed, at most {MAX_INSTANCES_PER_REPORT} per report",
            report.instances.len()
        )));
    }
    let mut state = state
        .lock()
        .map_err(|_| Status::internal("the region's state is unavailable"))?;
    match &id.subject {
        Subject::Agent { region, node } if *region == state.region() && *node == report.node => {
            state.report(report, Instant::now());
            Ok(())
        }
        _ => Err(Status::permission_denied(format!(
            "{id} may not report for node `{}` of region {}",
            report.node,
            state.region()
        ))),
    }
}

impl<B> tower::Service<http::Request<B>> for ReportService
where
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
        let state = self.state.clone();
        if request.uri().path() != REPORT_PATH {
            let status = Status::unimplemented(format!("{} is not a method", request.uri().path()));
            return Box::pin(async move { Ok(status.into_http()) });
        }
        Box::pin(async move {
            let mut grpc = Grpc::new(ProstCodec::<ReportAck, NodeReport>::default())
                .apply_max_message_size_config(Some(MAX_REPORT_BYTES), Some(MAX_REPORT_BYTES));
            Ok(grpc.unary(ReportMethod(state), request).await)
        })
    }
}
