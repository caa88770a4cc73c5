//! One hop of a traced request: its place in the trace (from the caller's `traceparent`, or a
//! new trace), the `traceparent` and `tracestate` the upstream gets, and the server span the
//! hop records, with OpenTelemetry's HTTP semantic conventions.

use std::borrow::Cow;
use std::time::SystemTime;

use http::{HeaderMap, Method, Request, Response, Version};
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

use super::context::{self, SAMPLED, TRACEPARENT, TRACESTATE};
use super::Tracer;
use crate::answers::ERROR_HEADER;
use crate::peer::Peer;

/// Attributes a span has at most (those of the request, the answer and the route).
const ATTRIBUTES: usize = 14;

/// A request's hop in its trace, from its arrival until its answer's head.
pub(crate) struct Hop {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    /// The caller's span, when the request came with a `traceparent`.
    parent: Option<[u8; 8]>,
    /// What the span records; `None` when the trace is not sampled (nothing is recorded).
    recording: Option<Recording>,
}

/// What a sampled hop's span has gathered so far.
struct Recording {
    start: SystemTime,
    name: &'static str,
    attributes: Vec<KeyValue>,
}

impl Hop {
    /// The hop of `request` from `peer`: in the caller's trace if it sent a valid
    /// `traceparent`, else in a new one. The caller's sampled flag is followed if it is
    /// `trusted`; otherwise (and for a new trace) `tracer` decides. The request's
    /// `traceparent` is replaced by this hop's (its own span as the parent when it records,
    /// the caller's otherwise); its `tracestate` is kept, bounded, in the caller's trace, and
    /// dropped in a new one.
    pub(crate) fn start<B>(
        tracer: &Tracer,
        request: &mut Request<B>,
        peer: &Peer,
        trusted: bool,
    ) -> Hop {
        let caller = context::parent(request.headers());
        let trace_id = caller.map_or_else(new_trace_id, |c| c.trace_id);
        let sampled = match caller {
            Some(caller) if trusted => caller.sampled(),
            _ => tracer.samples(trace_id),
        };
        let span_id = new_span_id();
        let flags = caller.map_or(0, |c| c.flags);
        let flags = if sampled {
            flags | SAMPLED
        } else {
            flags & !SAMPLED
        };
        let downstream = match caller {
            Some(caller) if !sampled => caller.span_id,
            _ => span_id,
        };
        let headers = request.headers_mut();
        let state = caller.and_then(|_| context::tracestate(headers));
        match state {
            Some(state) => headers.insert(&TRACESTATE, state),
            None => headers.remove(&TRACESTATE),
        };
        headers.insert(
            &TRACEPARENT,
            context::traceparent(&trace_id, &downstream, flags),
        );
        let recording = sampled.then(|| Recording::of(request, peer));
        Hop {
            trace_id,
            span_id,
            parent: caller.map(|c| c.span_id),
            recording,
        }
    }

    /// Notes the listener, route and cluster that served the request.
    pub(crate) fn routed(&mut self, listener: &str, route: &str, cluster: &str) {
        if let Some(recording) = &mut self.recording {
            recording.attributes.extend([
                KeyValue::new("meridian.listener", listener.to_owned()),
                KeyValue::new("meridian.route", route.to_owned()),
                KeyValue::new("meridian.cluster", cluster.to_owned()),
            ]);
        }
    }

    /// Ends the hop with `response`'s head: its span (if sampled) goes to `tracer`'s queue.
    pub(crate) fn answered<B>(self, tracer: &Tracer, response: &Response<B>) {
        let (status, headers) = (response.status().as_u16(), response.headers());
        if let Some(span) = self.span(status, headers, &tracer.scope) {
            tracer.queue.push(span);
        }
    }

    /// The span of a hop answered with `status` and `headers`, if it records one, as
    /// `scope` records it.
    fn span(
        self,
        status: u16,
        headers: &HeaderMap,
        scope: &InstrumentationScope,
    ) -> Option<SpanData> {
        let Recording {
            start,
            name,
            mut attributes,
        } = self.recording?;
        attributes.push(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        // The proxy's own reason when it answered itself, else a server error's code.
        let proxy_error = headers.get(ERROR_HEADER).and_then(|v| v.to_str().ok());
        let error = match proxy_error {
            Some(reason) => Some(reason.to_owned()),
            None if status >= 500 => Some(status.to_string()),
            None => None,
        };
        let status = match (&error, status >= 500) {
            (Some(error), true) => Status::error(error.clone()),
            _ => Status::Unset,
        };
        if let Some(error) = error {
            attributes.push(KeyValue::new("error.type", error));
        }
        Some(SpanData {
            span_context: SpanContext::new(
                TraceId::from_bytes(self.trace_id),
                SpanId::from_bytes(self.span_id),
                TraceFlags::SAMPLED,
                false,
                TraceState::NONE,
            ),
            parent_span_id: self.parent.map_or(SpanId::INVALID, SpanId::from_bytes),
            parent_span_is_remote: self.parent.is_some(),
            span_kind: SpanKind::Server,
            name: Cow::Borrowed(name),
            start_time: start,
            end_time: SystemTime::now(),
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status,
            instrumentation_scope: scope.clone(),
        })
    }
}

impl Recording {
    /// What the span of `request` from `peer` says of the request.
    fn of<B>(request: &Request<B>, peer: &Peer) -> Recording {
        let method = request.method();
        let mut attributes = Vec::with_capacity(ATTRIBUTES);
        attributes.extend([
            KeyValue::new("http.request.method", method_name(method)),
            KeyValue::new("url.path", request.uri().path().to_owned()),
            KeyValue::new("url.scheme", peer.scheme),
            KeyValue::new("network.protocol.name", "http"),
            KeyValue::new(
                "network.protocol.version",
                protocol_version(request.version()),
            ),
            KeyValue::new("client.address", peer.addr.ip().to_string()),
        ]);
        let host = crate::forward::request_host(request);
        if !host.is_empty() {
            attributes.push(KeyValue::new("server.address", host.to_owned()));
        }
        Recording {
            start: SystemTime::now(),
            // The conventions' name of a span without a route template: the method alone.
            name: method_name(method),
            attributes,
        }
    }
}

/// `method`'s name as the conventions have it: `_OTHER` for a method they do not know.
fn method_name(method: &Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "CONNECT" => "CONNECT",
        "OPTIONS" => "OPTIONS",
        "TRACE" => "TRACE",
        "PATCH" => "PATCH",
        _ => "_OTHER",
    }
}

/// `network.protocol.version` of `version`.
fn protocol_version(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// A random trace id (never all zeros).
fn new_trace_id() -> [u8; 16] {
    fastrand::u128(1..).to_be_bytes()
}

/// A random span id (never all zeros).
fn new_span_id() -> [u8; 8] {
    fastrand::u64(1..).to_be_bytes()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::trace::export::{SpanQueue, TraceCounters};

    const CALLER: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    /// A span as a hop records it.
    pub(crate) fn sample_span() -> SpanData {
        let (tracer, _) = tracer(1.0);
        let mut request = Request::new(());
        let hop = Hop::start(&tracer, &mut request, &peer(), true);
        hop.span(200, &HeaderMap::new(), &tracer.scope).unwrap()
    }

    fn peer() -> Peer {
        Peer::new("10.0.0.9:4000".parse().unwrap(), "https")
    }

    /// A tracer sampling `ratio` whose queue is left unread (the receiver is returned).
    fn tracer(ratio: f64) -> (Tracer, tokio::sync::mpsc::Receiver<SpanData>) {
        let (queue, receiver) = SpanQueue::unread(16, TraceCounters::default());
        (Tracer::with_queue(ratio, queue), receiver)
    }

    fn request(fields: &[(&str, &str)]) -> Request<()> {
        let mut request = Request::builder()
            .method("POST")
            .uri("/api/items?x=1")
            .header("host", "shop.example.com:8443");
        for (name, value) in fields {
            request = request.header(*name, *value);
        }
        request.body(()).unwrap()
    }

    fn sent(request: &Request<()>) -> (context::Parent, Option<&str>) {
        let headers = request.headers();
        let parent = context::parent(headers).unwrap();
        let state = headers.get(&TRACESTATE).map(|v| v.to_str().unwrap());
        (parent, state)
    }

    #[test]
    fn a_trusted_callers_trace_is_followed_and_this_hop_becomes_the_parent() {
        let (tracer, _) = tracer(0.0);
        let mut request = request(&[("traceparent", CALLER), ("tracestate", "rojo=1")]);
        let hop = Hop::start(&tracer, &mut request, &peer(), true);
        let caller = context::parse_traceparent(CALLER.as_bytes()).unwrap();
        let (upstream, state) = sent(&request);
        assert_eq!(upstream.trace_id, caller.trace_id);
        assert_eq!(upstream.span_id, hop.span_id);
        assert_ne!(hop.span_id, caller.span_id);
        assert!(upstream.sampled(), "the caller's flag, not the ratio 0");
        assert_eq!(state, Some("rojo=1"));
        let span = hop.span(200, &HeaderMap::new(), &tracer.scope).unwrap();
        assert_eq!(span.parent_span_id, SpanId::from_bytes(caller.span_id));
        assert!(span.parent_span_is_remote);
        assert_eq!(
            span.span_context.trace_id(),
            TraceId::from_bytes(caller.trace_id)
        );
        assert_eq!(span.name, "POST");
        let attribute = |key: &str| {
            span.attributes
                .iter()
                .find(|kv| kv.key.as_str() == key)
                .map(|kv| kv.value.to_string())
        };
        assert_eq!(attribute("http.request.method").as_deref(), Some("POST"));
        assert_eq!(attribute("url.path").as_deref(), Some("/api/items"));
        assert_eq!(
            attribute("server.address").as_deref(),
            Some("shop.example.com")
        );
        assert_eq!(
            attribute("network.protocol.version").as_deref(),
            Some("1.1")
        );
        assert_eq!(
            attribute("http.response.status_code").as_deref(),
            Some("200")
        );
        assert_eq!(attribute("error.type"), None);
    }

    #[test]
    fn an_unsampled_trusted_caller_is_followed_without_a_span() {
        let (tracer, _) = tracer(1.0);
        let unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
        let mut request = request(&[("traceparent", unsampled)]);
        let hop = Hop::start(&tracer, &mut request, &peer(), true);
        let (upstream, _) = sent(&request);
        // Nothing recorded here: the upstream's parent stays the caller's span.
        assert_eq!(request.headers()["traceparent"], unsampled);
        assert!(!upstream.sampled());
        assert!(hop.span(200, &HeaderMap::new(), &tracer.scope).is_none());
    }

    #[test]
    fn an_untrusted_callers_sampled_flag_is_decided_again() {
        let (tracer, _) = tracer(0.0);
        let mut request = request(&[("traceparent", CALLER)]);
        let hop = Hop::start(&tracer, &mut request, &peer(), false);
        let (upstream, _) = sent(&request);
        // Same trace, but the ratio (0) decides: not recorded, the caller stays the parent.
        assert!(!upstream.sampled());
        assert_eq!(
            &request.headers()["traceparent"].as_bytes()[..52],
            &CALLER.as_bytes()[..52]
        );
        assert!(hop.span(200, &HeaderMap::new(), &tracer.scope).is_none());
    }

    #[test]
    fn a_trace_starts_where_none_or_an_invalid_one_came() {
        let (tracer, _) = tracer(1.0);
        let bad = "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01";
        let mut request = request(&[("traceparent", bad), ("tracestate", "rojo=1")]);
        let hop = Hop::start(&tracer, &mut request, &peer(), true);
        let (upstream, state) = sent(&request);
        assert_ne!(upstream.trace_id, [0; 16]);
        assert_eq!(upstream.span_id, hop.span_id);
        assert!(upstream.sampled());
        assert_eq!(state, None, "a new trace has no state of the old one");
        let span = hop.span(502, &HeaderMap::new(), &tracer.scope).unwrap();
        assert_eq!(span.parent_span_id, SpanId::INVALID);
        assert!(matches!(span.status, Status::Error { .. }));
        let error = span
            .attributes
            .iter()
            .find(|kv| kv.key.as_str() == "error.type");
        assert_eq!(error.unwrap().value.to_string(), "502");
    }

    #[test]
    fn the_ratio_decides_the_same_for_a_trace_id() {
        let (half, _) = tracer(0.5);
        let (none, _) = tracer(0.0);
        let (all, _) = tracer(1.0);
        let ids: Vec<[u8; 16]> = (0..1000).map(|_| new_trace_id()).collect();
        let sampled = ids.iter().filter(|id| half.samples(**id)).count();
        assert!((300..700).contains(&sampled), "{sampled} of 1000 at 0.5");
        assert!(ids.iter().all(|id| half.samples(*id) == half.samples(*id)));
        assert!(ids.iter().all(|id| all.samples(*id) && !none.samples(*id)));
    }

    #[test]
    fn a_proxy_answer_names_its_reason_as_the_error_type() {
        let (tracer, _) = tracer(1.0);
        let mut request = request(&[]);
        let hop = Hop::start(&tracer, &mut request, &peer(), false);
        let mut headers = HeaderMap::new();
        headers.insert(ERROR_HEADER, "upstream_timeout".parse().unwrap());
        let span = hop.span(504, &headers, &tracer.scope).unwrap();
        let error = span
            .attributes
            .iter()
            .find(|kv| kv.key.as_str() == "error.type");
        assert_eq!(error.unwrap().value.to_string(), "upstream_timeout");
        assert_eq!(
            method_name(&Method::from_bytes(b"PURGE").unwrap()),
            "_OTHER"
        );
    }
}
