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

/// A self-signed certificate for `shop.example.com`, written with its key to `cert.pem` and
/// `key.pem` in `dir`; the certificate and the two paths.
#[allow(dead_code)] // Not every test binary has TLS listeners.
pub fn certificate_files(
    dir: &std::path::Path,
) -> (rcgen::Certificate, std::path::PathBuf, std::path::PathBuf) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["shop.example.com".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    (cert, cert_file, key_file)
}
