//! Helpers shared by the proxy's integration tests.

/// Sends `request` over a new HTTP/2 connection (prior knowledge) on `stream`; the response.
pub async fn h2_send<S, B>(
    stream: S,
    request: http::Request<B>,
) -> http::Response<hyper::body::Incoming>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    B: hyper::body::Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (mut client, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    client.send_request(request).await.unwrap()
}
