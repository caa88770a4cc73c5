//! The `grpc` port of `meridian-hello` (HTTP/2 cleartext, prior knowledge): the bidirectional
//! stream `/meridian.hello.Echo/Chat` answers each part of the request as it arrives with the
//! same bytes (so each gRPC message with itself), then ends with `grpc-status: 0` and
//! `echoed-bytes: <n>` in its trailers; any other method is answered `grpc-status: 12`
//! (unimplemented) in a trailers-only response.

use std::convert::Infallible;
use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// The gRPC method served.
const CHAT: &str = "/meridian.hello.Echo/Chat";

/// Serves the `grpc` port on `listener` until it fails.
pub async fn serve(listener: tokio::net::TcpListener) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let service = hyper::service::service_fn(chat);
            let served = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                eprintln!("grpc connection: {e}");
            }
        });
    }
}

/// A response body fed by a channel.
struct Channel(tokio::sync::mpsc::Receiver<Frame<Bytes>>);

impl Body for Channel {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|frame| frame.map(Ok))
    }
}

async fn chat(request: Request<Incoming>) -> Result<Response<Channel>, Infallible> {
    let (sender, frames) = tokio::sync::mpsc::channel(16);
    let chat = request.uri().path() == CHAT;
    let mut body = request.into_body();
    tokio::spawn(async move {
        let mut echoed = 0;
        while let Some(Ok(frame)) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            let Ok(data) = frame.into_data() else {
                continue;
            };
            echoed += data.len();
            if chat && sender.send(Frame::data(data)).await.is_err() {
                return;
            }
        }
        let mut trailers = HeaderMap::new();
        let status = if chat { "0" } else { "12" };
        trailers.insert("grpc-status", HeaderValue::from_static(status));
        trailers.insert("echoed-bytes", HeaderValue::from(echoed));
        let _ = sender.send(Frame::trailers(trailers)).await;
    });
    let mut response = Response::new(Channel(frames));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    Ok(response)
}
