//! The report service (`meridian.v1.Reports`), over a control plane's mutual-TLS port: agents
//! report their node and the states of their instances to their region's control plane (accepted
//! only from the agent of that node in this region, by its certificate), gateways the requests
//! they answered (accepted only from a gateway of this region), and regional control planes
//! report their region to the global one (accepted only from that region's control plane),
//! and edges where their metrics are (accepted only from that edge location).

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use meridian_identity::Subject;
use meridian_model::{validate_edge_anycast, validate_region_report, EdgeAnycast, RegionReport};
use meridian_model::{validate_targets, validate_traffic, MetricsTarget, TrafficWindow};
use meridian_xds::meridian::{
    EdgeReport, GatewayReport, NodeReport, ReportAck, UpwardReport, EDGE_REPORT_PATH,
    GATEWAY_REPORT_PATH, REGION_REPORT_PATH, REPORT_PATH,
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
/// Most clusters one gateway report may list.
const MAX_CLUSTERS_PER_REPORT: usize = 100_000;

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

impl ReportService<(NodeReports, GatewayReports)> {
    /// The service of a regional control plane: agents report their nodes into `region`, and
    /// gateways their requests.
    pub fn new(region: Arc<Region>) -> ReportService<(NodeReports, GatewayReports)> {
        ReportService {
            method: (NodeReports(region.clone()), GatewayReports(region)),
        }
    }
}

impl<M> ReportService<M> {
    /// The service with `method`: one [`ReportMethod`], or a pair of them.
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

/// Gateways' reports of the requests they answered, into a region's figures.
#[derive(Clone)]
pub struct GatewayReports(Arc<Region>);

impl ReportMethod for GatewayReports {
    type Report = GatewayReport;
    const PATH: &'static str = GATEWAY_REPORT_PATH;

    fn record(&self, peer: Option<Peer>, mut report: GatewayReport) -> Result<(), Status> {
        let peer = peer.ok_or_else(|| Status::unauthenticated("reports need a certificate"))?;
        let id = peer.id.as_ref().ok_or_else(|| {
            Status::unauthenticated("gateway reports need a gateway's client certificate")
        })?;
        match &id.subject {
            Subject::Gateway { region } if region == self.0.name() => {}
            _ => {
                return Err(Status::permission_denied(format!(
                    "{id} may not report as a gateway of region {}",
                    self.0.name()
                )))
            }
        }
        if report.clusters.len() > MAX_CLUSTERS_PER_REPORT {
            return Err(Status::invalid_argument(format!(
                "clusters: {} listed, at most {MAX_CLUSTERS_PER_REPORT} per report",
                report.clusters.len()
            )));
        }
        if report.node.is_empty() || report.node.len() > 253 || report.run.len() > 64 {
            return Err(Status::invalid_argument(
                "node: 1 to 253 bytes; run: at most 64 bytes",
            ));
        }
        report.metrics_address = scrape_address(&report.metrics_address, &peer)?;
        self.0.gateway_report(report, Instant::now());
        Ok(())
    }
}

/// Where a reporter's `/metrics` is, from the address it says (`ip:port`, or empty): one it
/// binds on every address (`0.0.0.0`) is scraped at the address it reported from.
fn scrape_address(said: &str, peer: &Peer) -> Result<String, Status> {
    if said.is_empty() {
        return Ok(String::new());
    }
    let mut address: std::net::SocketAddr = said.parse().map_err(|_| {
        Status::invalid_argument(format!("metrics_address: `{said}` is not ip:port"))
    })?;
    if address.ip().is_unspecified() {
        address.set_ip(peer.remote.ip());
    }
    Ok(address.to_string())
}

/// What the global control plane does with a region's report (its summary, its windows of
/// request figures, and where its components serve `/metrics`) and with an edge's.
pub trait RegionRecorder: Send + Sync + 'static {
    /// Records `region`'s summary.
    fn report(&self, region: String, report: RegionReport);
    /// Records `region`'s windows of request figures.
    fn traffic(&self, region: &str, windows: Vec<TrafficWindow>);
    /// Records where `region`'s components serve `/metrics`.
    fn targets(&self, region: &str, targets: Vec<MetricsTarget>);
    /// Records where an edge serves `/metrics`.
    fn edge_target(&self, target: MetricsTarget);
    /// Records that edge `location` reported, with its anycast announcement if it has one.
    fn edge_report(&self, location: &str, anycast: Option<EdgeAnycast>);
}

/// Edges' reports of where their metrics are, handed to a recorder.
#[derive(Clone)]
pub struct EdgeReports(Arc<dyn RegionRecorder>);

impl EdgeReports {
    /// Reports that go to `recorder` once checked.
    pub fn new(recorder: Arc<dyn RegionRecorder>) -> EdgeReports {
        EdgeReports(recorder)
    }
}

impl ReportMethod for EdgeReports {
    type Report = EdgeReport;
    const PATH: &'static str = EDGE_REPORT_PATH;

    fn record(&self, peer: Option<Peer>, report: EdgeReport) -> Result<(), Status> {
        let peer = peer.ok_or_else(|| Status::unauthenticated("reports need a certificate"))?;
        let id = peer.id.as_ref().ok_or_else(|| {
            Status::unauthenticated("edge reports need an edge's client certificate")
        })?;
        match &id.subject {
            Subject::Edge { location } if *location == report.location => {}
            _ => {
                return Err(Status::permission_denied(format!(
                    "{id} may not report for edge `{}`",
                    report.location
                )))
            }
        }
        let address = scrape_address(&report.metrics_address, &peer)?;
        let anycast = report.anycast.map(|a| EdgeAnycast {
            announced: a.announced,
            reason: a.reason,
            detail: a.detail,
            since_seconds: a.since_seconds,
            prefixes: a.prefixes,
        });
        if let Some(anycast) = &anycast {
            validate_edge_anycast(anycast).map_err(|e| Status::invalid_argument(e.to_string()))?;
        }
        self.0.edge_report(&report.location, anycast);
        if !address.is_empty() {
            self.0.edge_target(MetricsTarget {
                address,
                role: "edge".to_owned(),
                node: report.location,
            });
        }
        Ok(())
    }
}

impl RegionRecorder for meridian_api::Reports {
    fn report(&self, region: String, report: RegionReport) {
        self.record(region, report);
    }

    fn traffic(&self, region: &str, windows: Vec<TrafficWindow>) {
        self.record_traffic(region, windows);
    }

    fn targets(&self, region: &str, targets: Vec<MetricsTarget>) {
        self.set_targets(region, targets);
    }

    fn edge_target(&self, target: MetricsTarget) {
        self.set_edge_target(target);
    }

    fn edge_report(&self, location: &str, anycast: Option<EdgeAnycast>) {
        self.set_edge_anycast(location, anycast);
    }
}

/// Regional control planes' reports of their regions, handed to a recorder (the global control
/// plane's memory of the regions).
#[derive(Clone)]
pub struct RegionReports(Arc<dyn RegionRecorder>);

impl RegionReports {
    /// Reports that go to `recorder` once checked.
    pub fn new(recorder: Arc<dyn RegionRecorder>) -> RegionReports {
        RegionReports(recorder)
    }
}

/// The JSON array in `json` (none when empty), checked by `validate`; `field` names it in
/// errors.
fn json_list<T: serde::de::DeserializeOwned>(
    json: &[u8],
    field: &str,
    validate: fn(&[T]) -> Result<(), meridian_model::ValidationErrors>,
) -> Result<Vec<T>, Status> {
    if json.is_empty() {
        return Ok(Vec::new());
    }
    let list: Vec<T> = serde_json::from_slice(json)
        .map_err(|e| Status::invalid_argument(format!("{field}: {e}")))?;
    validate(&list).map_err(|errors| Status::invalid_argument(format!("{field}: {errors}")))?;
    Ok(list)
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
        let traffic = json_list(&upward.traffic_json, "traffic_json", validate_traffic)?;
        let targets = json_list(&upward.targets_json, "targets_json", validate_targets)?;
        if !upward.targets_json.is_empty() {
            self.0.targets(&upward.region, targets);
        }
        if !traffic.is_empty() {
            self.0.traffic(&upward.region, traffic);
        }
        self.0.report(upward.region, report);
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
    let peer = peer.ok_or_else(|| Status::unauthenticated("reports need a certificate"))?;
    let id = peer.id.clone().ok_or_else(|| {
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
            let mut report = report;
            report.metrics_address = scrape_address(&report.metrics_address, &peer)?;
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

/// Answers `request` with `method`.
fn serve<M, B>(
    method: M,
    request: http::Request<B>,
) -> BoxFuture<http::Response<tonic::body::Body>, Infallible>
where
    M: ReportMethod,
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    Box::pin(async move {
        let mut grpc = Grpc::new(ProstCodec::<ReportAck, M::Report>::default())
            .apply_max_message_size_config(Some(MAX_REPORT_BYTES), Some(MAX_REPORT_BYTES));
        Ok(grpc.unary(Call(method), request).await)
    })
}

/// The answer to a call of a method the service does not have.
fn unimplemented(path: &str) -> BoxFuture<http::Response<tonic::body::Body>, Infallible> {
    let status = Status::unimplemented(format!("{path} is not a method"));
    Box::pin(async move { Ok(status.into_http()) })
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
        if request.uri().path() != M::PATH {
            return unimplemented(request.uri().path());
        }
        serve(self.method.clone(), request)
    }
}

impl<M, N, B> tower::Service<http::Request<B>> for ReportService<(M, N)>
where
    M: ReportMethod,
    N: ReportMethod,
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
        let path = request.uri().path();
        if path == M::PATH {
            serve(self.method.0.clone(), request)
        } else if path == N::PATH {
            serve(self.method.1.clone(), request)
        } else {
            unimplemented(path)
        }
    }
}
