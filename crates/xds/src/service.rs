//! The ADS gRPC service itself: routes the two ADS methods to their stream handlers, with codec
//! buffers sized for xDS traffic (small requests, mostly small responses) instead of tonic's
//! 8 KiB per direction and stream; at thousands of clients that is most of a client's memory.

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::marker::PhantomData;
use std::task::{Context, Poll};

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use prost::Message;
use tonic::codec::{BufferSettings, Codec};
use tonic::codegen::{http, Body, BoxFuture, StdError};
use tonic::server::{Grpc, NamedService, StreamingService};
use tonic::{Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

use crate::delta::Delta;
use crate::node::Grant;
use crate::server::AdsServer;
use crate::sotw::Sotw;
use crate::stream::{self, Responses};

const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// Initial codec buffer per direction and stream; buffers grow for larger messages.
const CODEC_BUFFER: usize = 1024;
/// Encoded bytes after which a response stream yields to the connection.
const YIELD_THRESHOLD: usize = 32 * 1024;

/// Prost encoding with small initial buffers.
struct SmallCodec<E, D>(PhantomData<(E, D)>);

impl<E, D> Codec for SmallCodec<E, D>
where
    E: Message + Send + 'static,
    D: Message + Default + Send + 'static,
{
    type Encode = E;
    type Decode = D;
    type Encoder = <ProstCodec<E, D> as Codec>::Encoder;
    type Decoder = <ProstCodec<E, D> as Codec>::Decoder;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<E, D>::raw_encoder(BufferSettings::new(CODEC_BUFFER, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<E, D>::raw_decoder(BufferSettings::new(CODEC_BUFFER, YIELD_THRESHOLD))
    }
}

/// The `AggregatedDiscoveryService` as a tower service that tonic's router serves.
#[derive(Clone)]
pub struct AdsService {
    server: AdsServer,
}

impl AdsService {
    /// The service over `server`.
    pub fn new(server: AdsServer) -> AdsService {
        AdsService { server }
    }
}

impl NamedService for AdsService {
    const NAME: &'static str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
}

/// The state-of-the-world method.
struct SotwMethod(AdsServer);

impl StreamingService<DiscoveryRequest> for SotwMethod {
    type Response = DiscoveryResponse;
    type ResponseStream = Responses<DiscoveryResponse>;
    type Future = Ready<Result<Response<Self::ResponseStream>, Status>>;

    fn call(&mut self, request: Request<Streaming<DiscoveryRequest>>) -> Self::Future {
        ready(Ok(Response::new(self.0.open::<Sotw>(request))))
    }
}

/// The delta method.
struct DeltaMethod(AdsServer);

impl StreamingService<DeltaDiscoveryRequest> for DeltaMethod {
    type Response = DeltaDiscoveryResponse;
    type ResponseStream = Responses<DeltaDiscoveryResponse>;
    type Future = Ready<Result<Response<Self::ResponseStream>, Status>>;

    fn call(&mut self, request: Request<Streaming<DeltaDiscoveryRequest>>) -> Self::Future {
        ready(Ok(Response::new(self.0.open::<Delta>(request))))
    }
}

impl<B> tower::Service<http::Request<B>> for AdsService
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
        let server = self.server.clone();
        let limits = server.limits();
        let sizes = (
            Some(limits.max_request_bytes),
            Some(limits.max_response_bytes),
        );
        match request.uri().path() {
            SOTW_PATH => Box::pin(async move {
                let mut grpc = Grpc::new(SmallCodec(PhantomData))
                    .apply_max_message_size_config(sizes.0, sizes.1);
                Ok(grpc.streaming(SotwMethod(server), request).await)
            }),
            DELTA_PATH => Box::pin(async move {
                let mut grpc = Grpc::new(SmallCodec(PhantomData))
                    .apply_max_message_size_config(sizes.0, sizes.1);
                Ok(grpc.streaming(DeltaMethod(server), request).await)
            }),
            path => {
                let status = Status::unimplemented(format!("{path} is not an ADS method"));
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

impl AdsServer {
    /// Opens one stream of flavour `P` over this server's cache, scoped by the request's
    /// [`Grant`] if its connection was authenticated.
    fn open<P: stream::Protocol>(
        &self,
        request: Request<Streaming<P::Request>>,
    ) -> Responses<P::Response> {
        let grant = request.extensions().get::<Grant>().cloned();
        stream::spawn::<P>(request.into_inner(), grant, self.parts())
    }
}
