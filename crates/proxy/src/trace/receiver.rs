//! An OTLP/gRPC trace receiver that keeps the spans it is sent, for tests (the collector's
//! `TraceService`, as opentelemetry-proto generates it for tonic): where a test points
//! `--otlp-endpoint`, to check what each hop recorded.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;

/// A span as the receiver got it, its ids in hex.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    /// The trace's id (32 hex digits).
    pub trace_id: String,
    /// The span's id (16 hex digits).
    pub span_id: String,
    /// The parent span's id (16 hex digits), empty for a trace's first span.
    pub parent_span_id: String,
    /// The span's name.
    pub name: String,
    /// Its kind (OTLP's numbers: 2 is a server span).
    pub kind: i32,
    /// Its attributes, each value as text.
    pub attributes: BTreeMap<String, String>,
    /// The attributes of the resource that sent it (`service.name`, `meridian.node`, …).
    pub resource: BTreeMap<String, String>,
}

/// A running receiver; it stops when dropped.
pub struct OtlpReceiver {
    /// Where it listens.
    pub address: SocketAddr,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl OtlpReceiver {
    /// A receiver listening at `address` (port 0 picks one).
    pub async fn start(address: SocketAddr) -> std::io::Result<OtlpReceiver> {
        let listener = tokio::net::TcpListener::bind(address).await?;
        let address = listener.local_addr()?;
        let spans = Arc::new(Mutex::new(Vec::new()));
        let service = TraceServiceServer::new(Keeper(spans.clone()));
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let server = tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await;
            if let Err(e) = served {
                tracing::warn!(error = %e, "the OTLP receiver stopped");
            }
        });
        Ok(OtlpReceiver {
            address,
            spans,
            server,
        })
    }

    /// The endpoint to export to: `http://<address>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    /// The spans received so far, in the order they came.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        crate::lock(&self.spans).clone()
    }
}

/// The service: keeps every span of every request.
struct Keeper(Arc<Mutex<Vec<ReceivedSpan>>>);

#[tonic::async_trait]
impl TraceService for Keeper {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let resource = resource_spans
                .resource
                .map(|r| texts(&r.attributes))
                .unwrap_or_default();
            for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
                received.push(ReceivedSpan {
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    name: span.name,
                    kind: span.kind,
                    attributes: texts(&span.attributes),
                    resource: resource.clone(),
                });
            }
        }
        crate::lock(&self.0).extend(received);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// Attributes with their values as text.
fn texts(attributes: &[KeyValue]) -> BTreeMap<String, String> {
    attributes
        .iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                Some(Value::IntValue(i)) => i.to_string(),
                Some(Value::BoolValue(b)) => b.to_string(),
                Some(Value::DoubleValue(d)) => d.to_string(),
                Some(other) => format!("{other:?}"),
                None => String::new(),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

/// `bytes` in lowercase hex.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
