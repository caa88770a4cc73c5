//! One HTTP/3 request stream: its head and body become an `http::Request` for the request
//! path, and the answer goes back as HEADERS, DATA and trailers frames.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use h3::error::Code;
use h3::server::{RequestResolver, RequestStream};
use http::{HeaderMap, Response};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};

use super::checked;
use crate::body::ProxyBody;
use crate::body::{BoxError, ClientBody};
use crate::forward;
use crate::idle::InFlight;
use crate::server::ListenerContext;

/// Reads one request's head (within the header read timeout), passes the request through the
/// request path and writes the answer.
pub async fn serve_request(
    resolver: RequestResolver<checked::Connection, Bytes>,
    context: Arc<ListenerContext>,
    peer: crate::peer::Peer,
    _in_flight: InFlight,
    header_timeout: Duration,
) {
    let (request, stream) = match tokio::time::timeout(header_timeout, resolver.resolve_request())
        .await
    {
        Ok(Ok(resolved)) => resolved,
        Ok(Err(e)) => {
            tracing::debug!(listener = %context.name, peer = %peer.addr, error = %e, "HTTP/3 request refused");
            return;
        }
        Err(_elapsed) => return,
    };
    let (mut send, receive) = stream.split();
    let body = RequestBody::new(receive, request.headers()).await;
    let request = request.map(|()| ClientBody::Http3(Box::new(body)));
    let response = forward::handle(request, context.clone(), &peer).await;
    if let Err(e) = respond(&mut send, response).await {
        tracing::debug!(listener = %context.name, peer = %peer.addr, error = %e, "HTTP/3 response not sent");
    }
}

/// The sending half of a request stream.
type SendStream = RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;

/// Writes `response`: head, body and trailers. A body that breaks off resets the stream, so
/// that it is never taken for complete.
async fn respond(
    send: &mut SendStream,
    response: Response<ProxyBody>,
) -> Result<(), h3::error::StreamError> {
    let (parts, mut body) = response.into_parts();
    send.send_response(Response::from_parts(parts, ())).await?;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            send.stop_stream(Code::H3_INTERNAL_ERROR);
            return Ok(());
        };
        match frame.into_data() {
            Ok(data) if data.is_empty() => {}
            Ok(data) => send.send_data(data).await?,
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    send.send_trailers(trailers).await?;
                }
            }
        }
    }
    send.finish().await
}

/// The error of a request body whose DATA frames add up to another length than its
/// `Content-Length` (a malformed request, RFC 9114 §4.1.2).
#[derive(Debug, thiserror::Error)]
#[error("the request body does not have the length its content-length says")]
pub struct LengthMismatch;

/// Where reading a request body is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Data,
    Trailers,
    Done,
}

/// The body of an HTTP/3 request: its DATA frames, then its trailers, checked against its
/// `Content-Length`.
pub struct RequestBody {
    stream: RequestStream<checked::Checked<h3_quinn::RecvStream>, Bytes>,
    phase: Phase,
    /// Bytes the `Content-Length` still announces.
    expected: Option<u64>,
    /// A frame read ahead by [`RequestBody::new`].
    read_ahead: Option<Result<Frame<Bytes>, BoxError>>,
}

impl RequestBody {
    /// The body of the request with `headers`, read from `stream`. Whether it ends with the
    /// head (as a request without body does) is found out at once, without waiting: such a
    /// request is then forwarded without a body instead of streaming an empty one.
    pub async fn new(
        stream: RequestStream<checked::Checked<h3_quinn::RecvStream>, Bytes>,
        headers: &HeaderMap,
    ) -> RequestBody {
        let expected = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let mut body = RequestBody {
            stream,
            phase: Phase::Data,
            expected,
            read_ahead: None,
        };
        std::future::poll_fn(|cx| {
            if let Poll::Ready(Some(frame)) = body.poll_stream(cx) {
                body.read_ahead = Some(frame);
            }
            Poll::Ready(())
        })
        .await;
        body
    }

    /// The next frame from the stream.
    fn poll_stream(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.phase == Phase::Data {
            match ready!(self.stream.poll_recv_data(cx)) {
                Ok(Some(mut data)) => {
                    let data = data.copy_to_bytes(data.remaining());
                    if let Some(left) = self.expected.as_mut() {
                        match left.checked_sub(data.len() as u64) {
                            Some(rest) => *left = rest,
                            None => return self.fail(LengthMismatch.into()),
                        }
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(None) if self.expected.is_some_and(|left| left > 0) => {
                    return self.fail(LengthMismatch.into())
                }
                Ok(None) => self.phase = Phase::Trailers,
                Err(e) => return self.fail(e.into()),
            }
        }
        if self.phase == Phase::Trailers {
            let trailers = ready!(self.stream.poll_recv_trailers(cx));
            self.phase = Phase::Done;
            return Poll::Ready(match trailers {
                Ok(Some(trailers)) => Some(Ok(Frame::trailers(trailers))),
                Ok(None) => None,
                Err(e) => Some(Err(e.into())),
            });
        }
        Poll::Ready(None)
    }

    /// Ends the body with `error`, telling the client to stop sending it.
    fn fail(&mut self, error: BoxError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.phase = Phase::Done;
        self.stream.stop_sending(Code::H3_MESSAGE_ERROR);
        Poll::Ready(Some(Err(error)))
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(frame) = self.read_ahead.take() {
            return Poll::Ready(Some(frame));
        }
        self.poll_stream(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.read_ahead.is_none() && self.phase == Phase::Done
    }

    fn size_hint(&self) -> SizeHint {
        let read_ahead = self
            .read_ahead
            .as_ref()
            .and_then(|frame| frame.as_ref().ok())
            .and_then(Frame::data_ref)
            .map_or(0, |data| data.len() as u64);
        match self.expected {
            Some(left) => SizeHint::with_exact(left + read_ahead),
            None => SizeHint::default(),
        }
    }
}
