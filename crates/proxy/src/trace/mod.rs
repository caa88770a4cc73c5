//! Distributed tracing of the requests the proxy serves: W3C Trace Context at every hop
//! ([`context`]), one OpenTelemetry server span per hop ([`hop`]), exported with OTLP over gRPC
//! in batches from a bounded queue ([`export`]). Off unless a component asks for it
//! ([`crate::Proxy::trace_to`]); off, the request path pays one branch on an `Option` and
//! passes the client's `traceparent` and `tracestate` through untouched.

pub(crate) mod context;
mod export;
pub(crate) mod hop;
pub mod receiver;

use opentelemetry::trace::{SpanKind, TraceId};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{Sampler, SamplingDecision, ShouldSample, SpanExporter as _};
use opentelemetry_sdk::Resource;

pub use export::TraceCounters;

/// Where a component's spans go, and how many traces it starts are recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceOptions {
    /// The OTLP/gRPC collector, `http://HOST:PORT`.
    pub endpoint: String,
    /// The share of the traces this proxy starts (or whose caller it does not trust) that are
    /// recorded, 0 to 1.
    pub sample_ratio: f64,
    /// Who records the spans (`edge`, `gateway`, `node-proxy`, `proxy`): the spans' resource
    /// is `service.name = meridian-<component>`.
    pub component: String,
    /// The node (an edge's location, a gateway's or proxy's node id, an agent's node).
    pub node: String,
    /// The region, for gateways and node proxies.
    pub region: Option<String>,
}

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The ratio is not a number from 0 to 1.
    #[error("sample ratio {0}: must be from 0 to 1")]
    Ratio(f64),
    /// The endpoint is not an `http://` or `https://` URL the exporter takes.
    #[error("endpoint `{endpoint}`: {reason}")]
    Endpoint {
        /// The endpoint.
        endpoint: String,
        /// Why.
        reason: String,
    },
}

/// A process's tracer: how traces are sampled, and the queue its spans leave by.
pub(crate) struct Tracer {
    sampler: Sampler,
    queue: export::SpanQueue,
    scope: InstrumentationScope,
}

impl Tracer {
    /// A tracer exporting to `options.endpoint`, counted in `counters`; needs a Tokio runtime.
    pub(crate) fn start(
        options: &TraceOptions,
        counters: TraceCounters,
    ) -> Result<Self, TraceError> {
        if !(0.0..=1.0).contains(&options.sample_ratio) {
            return Err(TraceError::Ratio(options.sample_ratio));
        }
        let endpoint_error = |reason: String| TraceError::Endpoint {
            endpoint: options.endpoint.clone(),
            reason,
        };
        let scheme_ok = ["http://", "https://"]
            .iter()
            .any(|scheme| options.endpoint.starts_with(scheme));
        if !scheme_ok || options.endpoint.parse::<http::Uri>().is_err() {
            return Err(endpoint_error("must be http://HOST:PORT".to_owned()));
        }
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(options.endpoint.clone())
            .build()
            .map_err(|e| endpoint_error(e.to_string()))?;
        exporter.set_resource(&resource(options));
        let queue = export::SpanQueue::start(exporter, export::QUEUE_SPANS, counters);
        Ok(Tracer::with_queue(options.sample_ratio, queue))
    }

    fn with_queue(ratio: f64, queue: export::SpanQueue) -> Tracer {
        Tracer {
            sampler: Sampler::TraceIdRatioBased(ratio),
            queue,
            scope: InstrumentationScope::builder("meridian-proxy")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        }
    }

    /// Exports the spans waiting, at most `timeout`; whether they went in time.
    pub(crate) async fn flush(&self, timeout: std::time::Duration) -> bool {
        self.queue.flush(timeout).await
    }

    /// Whether a trace this proxy decides for is recorded: OpenTelemetry's trace-id ratio
    /// rule, so that every hop deciding with the same ratio decides the same for a trace.
    pub(crate) fn samples(&self, trace_id: [u8; 16]) -> bool {
        let result = self.sampler.should_sample(
            None,
            TraceId::from_bytes(trace_id),
            "",
            &SpanKind::Server,
            &[],
            &[],
        );
        matches!(result.decision, SamplingDecision::RecordAndSample)
    }
}

/// The resource of a component's spans.
fn resource(options: &TraceOptions) -> Resource {
    let mut attributes = vec![
        KeyValue::new("meridian.component", options.component.clone()),
        KeyValue::new("meridian.node", options.node.clone()),
        KeyValue::new("service.instance.id", options.node.clone()),
    ];
    if let Some(region) = &options.region {
        attributes.push(KeyValue::new("meridian.region", region.clone()));
    }
    Resource::builder_empty()
        .with_service_name(format!("meridian-{}", options.component))
        .with_attributes(attributes)
        .build()
}
