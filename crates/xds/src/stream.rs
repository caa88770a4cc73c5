//! One ADS stream, either flavour: reads requests, wakes on cache changes, and queues responses
//! through a bounded channel so that a client that reads slowly holds a bounded amount of memory
//! (changes meanwhile collapse into its set of changed names).

use envoy_types::pb::envoy::config::core::v3::Node;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use crate::cache::{Dirty, Subscriber};
use crate::metrics::XdsMetrics;
use crate::node::{Grant, Scope};
use crate::server::{Limits, StreamParts};

/// What a stream's handler works with.
pub(crate) struct Context {
    /// The stream's subscriptions.
    pub subscriber: Subscriber,
    /// What the node sees.
    pub scope: Scope,
    /// Shared metrics.
    pub metrics: XdsMetrics,
    /// Limits on what a client may ask.
    pub limits: Limits,
    next_nonce: u64,
}

impl Context {
    /// A nonce not used before on this stream.
    pub fn nonce(&mut self) -> String {
        self.next_nonce += 1;
        self.next_nonce.to_string()
    }
}

/// A flavour of ADS: how requests and cache changes turn into responses.
pub(crate) trait Protocol: Default + Send + 'static {
    /// The request message.
    type Request: Send + 'static;
    /// The response message.
    type Response: Send + 'static;
    /// `sotw` or `delta`, for metrics and logs.
    const API: &'static str;
    /// The node a request names, if any.
    fn node(request: &Self::Request) -> Option<&Node>;
    /// Handles one request; an error ends the stream with that status.
    fn on_request(
        &mut self,
        request: Self::Request,
        cx: &mut Context,
    ) -> Result<Vec<Self::Response>, Status>;
    /// Handles changed cache names.
    fn on_changed(&mut self, changed: Dirty, cx: &mut Context) -> Vec<Self::Response>;
}

/// Serves one stream in a task of its own and returns its responses. Nothing is answered
/// before `parts.ready` (if set) is true.
pub(crate) fn spawn<P: Protocol>(
    mut inbound: Streaming<P::Request>,
    grant: Option<Grant>,
    parts: StreamParts<'_>,
) -> Responses<P::Response> {
    let StreamParts {
        cache,
        metrics,
        limits,
        mut closing,
        ready,
    } = parts;
    let (tx, rx) = mpsc::channel(limits.queued_responses);
    let subscriber = cache.subscriber();
    tokio::spawn(async move {
        let first = tokio::select! {
            first = inbound.message() => match first {
                Ok(Some(first)) => first,
                _ => return,
            },
            _ = closing.wait_for(|closing| *closing) => return,
        };
        let scope = Scope::of(P::node(&first), grant.as_ref());
        let _connected = metrics.connected(P::API, &scope.role);
        tracing::debug!(api = P::API, node = %scope.node_id, role = %scope.role, "ADS stream opened");
        if let Some(mut ready) = ready {
            tokio::select! {
                ready = ready.wait_for(|ready| *ready) => if ready.is_err() { return },
                _ = closing.wait_for(|closing| *closing) => return,
                () = tx.closed() => return,
            }
        }
        // A publisher that left resources behind while nobody followed catches up first.
        tokio::select! {
            () = subscriber.cache().current() => {}
            _ = closing.wait_for(|closing| *closing) => return,
            () = tx.closed() => return,
        }
        let mut cx = Context {
            subscriber,
            scope,
            metrics,
            limits,
            next_nonce: 0,
        };
        let mut protocol = P::default();
        let mut next = Some(first);
        loop {
            let responses = match next.take() {
                Some(request) => match protocol.on_request(request, &mut cx) {
                    Ok(responses) => responses,
                    Err(status) => {
                        tracing::warn!(api = P::API, node = %cx.scope.node_id,
                            error = %status.message(), "closing ADS stream");
                        let _ = tx.send(Box::new(Err(status))).await;
                        return;
                    }
                },
                None => {
                    tokio::select! {
                    biased;
                    _ = closing.wait_for(|closing| *closing) => break,
                    message = inbound.message() => {
                        match message {
                            Ok(Some(request)) => next = Some(request),
                            Ok(None) => break,
                            Err(status) => {
                                tracing::debug!(api = P::API, node = %cx.scope.node_id,
                                    error = %status.message(), "ADS stream broke off");
                                // A request that could not be read (too large, malformed) ends
                                // the stream with the reason, if the client still listens.
                                let _ = tx.try_send(Box::new(Err(status)));
                                break;
                            }
                        }
                        continue;
                    }
                    () = cx.subscriber.changed() => {}
                    () = tx.closed() => break,
                    }
                    if !cx.limits.coalesce.is_zero() {
                        // Let more changes collect into this push.
                        tokio::time::sleep(cx.limits.coalesce).await;
                    }
                    let changed = cx.subscriber.take_changed();
                    protocol.on_changed(changed, &mut cx)
                }
            };
            for response in responses {
                if tx.send(Box::new(Ok(response))).await.is_err() {
                    return;
                }
            }
        }
        tracing::debug!(api = P::API, node = %cx.scope.node_id, "ADS stream closed");
    });
    Responses(rx)
}

/// The responses of one stream, as tonic sends them. Queued boxed: a channel allocates its
/// slots in blocks of 32, and 32 boxes are far smaller than 32 responses, for every client.
pub struct Responses<T>(mpsc::Receiver<Box<Result<T, Status>>>);

impl<T> tokio_stream::Stream for Responses<T> {
    type Item = Result<T, Status>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|item| item.map(|boxed| *boxed))
    }
}
