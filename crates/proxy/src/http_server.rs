//! The HTTP server of one client connection: hyper's HTTP/1.1 or its HTTP/2 connection, chosen
//! before it is built (by ALPN on TLS, by the first bytes on plaintext), bounded by the limits
//! of the current configuration.
//!
//! Choosing first, rather than serving through an automatic server that reads the first bytes
//! itself, keeps an HTTP/1.1 connection's state to HTTP/1.1's (624 bytes where the automatic
//! server's is 1,528, whichever protocol it serves) and its reads free of a rewind buffer.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::server::conn::{http1, http2};
use hyper::service::HttpService;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::Limits;

/// The HTTP version a client connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    Http1,
    Http2,
}

impl Protocol {
    /// The protocol TLS agreed on: HTTP/2 when ALPN chose `h2` (RFC 9113 §3.2), else HTTP/1.1.
    pub(crate) fn of_alpn(alpn: Option<&[u8]>) -> Protocol {
        if alpn == Some(b"h2") {
            Protocol::Http2
        } else {
            Protocol::Http1
        }
    }
}

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The protocol a plaintext client speaks: HTTP/2 when its first bytes are the HTTP/2
/// connection preface (prior knowledge, RFC 9113 §3.3), else HTTP/1.1 (also when it closes
/// first). Waits for the first bytes without taking them. A client that sent only part of the
/// preface is looked at again after a pause that doubles up to 100 ms; the caller bounds the
/// whole wait.
pub(crate) async fn sniff(stream: &tokio::net::TcpStream) -> io::Result<Protocol> {
    let mut first = [0u8; PREFACE.len()];
    let mut pause = Duration::from_millis(1);
    loop {
        let read = stream.peek(&mut first).await?;
        if read == 0 || first[..read] != PREFACE[..read] {
            return Ok(Protocol::Http1);
        }
        if read == PREFACE.len() {
            return Ok(Protocol::Http2);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// A connection being served, whichever its protocol.
pub(crate) trait Serving: Future<Output = Result<(), hyper::Error>> + Send {
    /// Finishes what is in flight, then ends (HTTP/2: GOAWAY; HTTP/1.1: close after the
    /// response).
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S, B> Serving for http1::UpgradeableConnection<I, S>
where
    S: HttpService<Incoming, ResBody = B> + Send,
    S::Future: Send,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http1::UpgradeableConnection::graceful_shutdown(self)
    }
}

impl<I, S, B> Serving for http2::Connection<I, S, TokioExecutor>
where
    S: HttpService<Incoming, ResBody = B> + Send,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http2::Connection::graceful_shutdown(self)
    }
}

/// Serves `io` with `service` in `protocol`, bounded by `limits`. Built here, on the heap, so
/// that the future awaiting it holds a pointer, not the connection.
pub(crate) fn serve<I, S, B>(
    protocol: Protocol,
    io: I,
    service: S,
    limits: &Limits,
) -> Pin<Box<dyn Serving>>
where
    S: HttpService<Incoming, ResBody = B> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match protocol {
        Protocol::Http1 => Box::pin(
            http1_server(limits)
                .serve_connection(io, service)
                .with_upgrades(),
        ),
        Protocol::Http2 => Box::pin(http2_server(limits).serve_connection(io, service)),
    }
}

/// The HTTP/1.1 server: headers within `header_read_timeout` and `max_header_bytes`.
fn http1_server(limits: &Limits) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout.0)
        .max_buf_size(limits.max_header_bytes);
    builder
}

/// The HTTP/2 server: streams, frames, header lists, resets, buffers and windows as `limits`
/// say, keep-alive pings, and extended CONNECT (RFC 8441) for WebSocket over HTTP/2.
fn http2_server(limits: &Limits) -> http2::Builder<TokioExecutor> {
    let http2 = &limits.http2;
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_frame_size(crate::upstream::H2_MAX_FRAME)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(http2.max_pending_accept_reset_streams as usize)
        .max_local_error_reset_streams(http2.max_local_error_reset_streams as usize)
        .max_send_buf_size(http2.max_send_buffer_bytes as usize)
        .keep_alive_interval(http2.keep_alive_interval.map(|i| i.0))
        .keep_alive_timeout(http2.keep_alive_timeout.0)
        .enable_connect_protocol();
    match (
        http2.initial_stream_window_bytes,
        http2.initial_connection_window_bytes,
    ) {
        (None, None) => {
            builder.adaptive_window(crate::upstream::H2_ADAPTIVE_WINDOW);
        }
        (stream, connection) => {
            builder
                .initial_stream_window_size(stream)
                .initial_connection_window_size(connection);
        }
    }
    builder
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpn_h2_is_http2_and_anything_else_http1() {
        assert_eq!(Protocol::of_alpn(Some(b"h2")), Protocol::Http2);
        assert_eq!(Protocol::of_alpn(Some(b"http/1.1")), Protocol::Http1);
        assert_eq!(Protocol::of_alpn(None), Protocol::Http1);
    }

    /// What `sniff` says of a client that sends `first`, and then, once `sniff` has looked at
    /// `first` alone and is waiting for more, `rest` (when not empty).
    async fn sniffed(first: &[u8], rest: &[u8]) -> Protocol {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        client.write_all(first).await.unwrap();
        let mut arrived = [0u8; PREFACE.len()];
        while server.peek(&mut arrived).await.unwrap() < first.len() {
            tokio::task::yield_now().await;
        }
        let mut sniffing = std::pin::pin!(sniff(&server));
        if !rest.is_empty() {
            let first_look = std::future::poll_fn(|cx| {
                std::task::Poll::Ready(sniffing.as_mut().poll(cx).is_pending())
            });
            assert!(first_look.await, "a part of the preface is waited on");
            client.write_all(rest).await.unwrap();
        }
        sniffing.await.unwrap()
    }

    #[tokio::test]
    async fn the_preface_is_http2_and_a_request_line_http1() {
        assert_eq!(sniffed(PREFACE, b"").await, Protocol::Http2);
        assert_eq!(sniffed(b"GET / HTTP/1.1\r\n", b"").await, Protocol::Http1);
        assert_eq!(sniffed(b"PRI * HTTP/1.1\r\n", b"").await, Protocol::Http1);
    }

    #[tokio::test]
    async fn a_preface_in_two_parts_is_waited_for() {
        assert_eq!(sniffed(&PREFACE[..5], &PREFACE[5..]).await, Protocol::Http2);
        assert_eq!(sniffed(b"PRI", b" nonsense").await, Protocol::Http1);
    }
}
