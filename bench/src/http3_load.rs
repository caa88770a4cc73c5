//! The `h3` mode of `tls-client`: HTTP/3 GET requests for a fixed time over a few QUIC
//! connections, each with several requests in flight, as h2load does for HTTP/2. Prints
//! `RESULT requests=N seconds=S errors=E`; the server under test is measured from outside.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::{Buf, Bytes};

type SendRequest = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;

/// What the load is: where, for how long, how wide.
pub struct Load {
    /// The server.
    pub server: SocketAddr,
    /// The name in SNI and `:authority`.
    pub sni: String,
    /// QUIC connections.
    pub connections: usize,
    /// Requests in flight on each.
    pub streams: usize,
    /// Seconds to run.
    pub seconds: f64,
}

/// Runs `load` with `tls` (which must offer ALPN `h3` and TLS 1.3) and prints the result.
pub async fn run(load: Load, tls: rustls::ClientConfig) -> Result<()> {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .context("a TLS configuration QUIC can use")?;
    let mut endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let requests = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut senders = Vec::new();
    let mut drivers = Vec::new();
    for _ in 0..load.connections {
        let connection = endpoint.connect(load.server, &load.sni)?.await?;
        let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(connection)).await?;
        drivers.push(tokio::spawn(async move {
            std::future::poll_fn(|cx| driver.poll_close(cx)).await
        }));
        senders.push(send);
    }
    let started = Instant::now();
    let end = started + Duration::from_secs_f64(load.seconds);
    let uri = format!("https://{}/", load.sni);
    let mut tasks = Vec::new();
    for send in &senders {
        for _ in 0..load.streams {
            let (mut send, uri) = (send.clone(), uri.clone());
            let (requests, errors) = (requests.clone(), errors.clone());
            tasks.push(tokio::spawn(async move {
                while Instant::now() < end {
                    match request(&mut send, &uri).await {
                        Ok(()) => requests.fetch_add(1, Ordering::Relaxed),
                        Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                    };
                }
            }));
        }
    }
    for task in tasks {
        task.await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    drop(senders);
    endpoint.close(0u32.into(), b"done");
    for driver in drivers {
        driver.abort();
    }
    println!(
        "RESULT requests={} seconds={seconds:.3} errors={}",
        requests.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed)
    );
    Ok(())
}

/// One GET, its answer read to the end; an answer other than 200 is an error.
async fn request(send: &mut SendRequest, uri: &str) -> Result<()> {
    let request = http::Request::get(uri).body(())?;
    let mut stream = send.send_request(request).await?;
    stream.finish().await?;
    let response = stream.recv_response().await?;
    while let Some(mut chunk) = stream.recv_data().await? {
        chunk.advance(chunk.remaining());
    }
    anyhow::ensure!(response.status() == 200, "status {}", response.status());
    Ok(())
}
