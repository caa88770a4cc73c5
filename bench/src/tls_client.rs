//! `tls-client`: the TLS client of `bench/edge-tls.sh` (run by bench/edge_tls.py, pinned to its
//! own CPU); the server under test is measured from outside (its CPU time and RSS).
//!
//! - `handshakes`: TLS 1.3 handshakes for a fixed time from many concurrent tasks, each
//!   connecting, handshaking (full, or resumed with a ticket from an earlier connection of this
//!   process), sending close_notify and reading until the server closes — which also takes in
//!   the tickets a server sends after the handshake. No ALPN and no request: the figure is the
//!   handshake and TCP connection alone. Prints `RESULT handshakes=N resumed=R seconds=S
//!   errors=E suite=… group=…`.
//! - `idle-h2`: opens connections with ALPN h2, exchanges the connection preface and SETTINGS
//!   (both sides' SETTINGS acknowledged), prints `READY n`, keeps the connections open and idle
//!   until a line (or end of file) on standard input, then prints `OPEN n`: how many the server
//!   had not closed meanwhile.
//! - `h3`: HTTP/3 GET requests for a fixed time (see `http3_load`).
//!
//! The client checks the server's handshake signature but not its certificate chain: every
//! server under test gets the same self-signed certificate, and verifying the chain would only
//! spend this client's CPU, which bounds the rates.

mod http3_load;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, HandshakeKind, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// TLS client of the edge benchmark.
#[derive(Parser)]
struct Args {
    #[command(flatten)]
    target: Target,
    #[command(subcommand)]
    command: Mode,
}

/// The server under test.
#[derive(clap::Args, Clone)]
struct Target {
    /// Its address.
    #[arg(long)]
    server: SocketAddr,
    /// The name sent in SNI.
    #[arg(long, default_value = "bench.meridian.test")]
    sni: String,
}

#[derive(Subcommand)]
enum Mode {
    /// Handshakes per second, full or resumed.
    Handshakes {
        /// Connections in flight at once.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Seconds to run.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Resume sessions with tickets of earlier connections (one full handshake per task
        /// first).
        #[arg(long)]
        resume: bool,
    },
    /// HTTP/3 requests per second.
    H3 {
        /// QUIC connections.
        #[arg(long, default_value_t = 10)]
        connections: usize,
        /// Requests in flight on each connection.
        #[arg(long, default_value_t = 10)]
        streams: usize,
        /// Seconds to run.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
    },
    /// Idle HTTP/2 connections held open.
    IdleH2 {
        /// Connections to open.
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// Connections being opened at once.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
    },
}

/// Checks the server's handshake signature, as every client does, but not its certificate
/// chain: see the module documentation.
#[derive(Debug)]
struct AnyCertificate(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, signature, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, signature, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// A TLS 1.3 client config (ring, AES-128-GCM preferred as browsers and h2load do) offering
/// `alpn`, resuming sessions or not.
fn client_config(alpn: &[&[u8]], resume: bool) -> Result<ClientConfig> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|suite| suite.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    let algorithms = provider.signature_verification_algorithms;
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(algorithms)))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    if !resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Ok(config)
}

async fn connect(connector: &TlsConnector, target: &Target) -> Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(target.server).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(target.sni.clone())?;
    Ok(connector.connect(name, tcp).await?)
}

/// What one task of `handshakes` counted.
#[derive(Default)]
struct Counts {
    handshakes: u64,
    resumed: u64,
    errors: u64,
    suite: String,
    group: String,
}

/// One handshake, then close_notify, then reading until the server closes. Only the handshake
/// can fail: a server may close without its own close_notify (nginx does), which is no error
/// here, and any ticket it sent has been taken in by then.
async fn handshake(connector: &TlsConnector, target: &Target, counts: &mut Counts) -> Result<()> {
    let mut tls = connect(connector, target).await?;
    counts.handshakes += 1;
    let connection = tls.get_ref().1;
    if connection.handshake_kind() == Some(HandshakeKind::Resumed) {
        counts.resumed += 1;
    }
    if counts.suite.is_empty() {
        counts.suite = format!(
            "{:?}",
            connection.negotiated_cipher_suite().map(|s| s.suite())
        );
        counts.group = format!(
            "{:?}",
            connection.negotiated_key_exchange_group().map(|g| g.name())
        );
    }
    if tls.shutdown().await.is_ok() {
        let mut sink = [0u8; 256];
        while matches!(tls.read(&mut sink).await, Ok(n) if n > 0) {}
    }
    Ok(())
}

async fn handshakes(target: &Target, concurrency: usize, seconds: f64, resume: bool) -> Result<()> {
    let connector = TlsConnector::from(Arc::new(client_config(&[], resume)?));
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            // A session cache per task: a resumed handshake uses the ticket of the task's own
            // previous connection, which the server issued moments ago.
            let connector = if resume {
                TlsConnector::from(Arc::new(client_config(&[], true)?))
            } else {
                connector.clone()
            };
            let target = target.clone();
            Ok(tokio::spawn(async move {
                let mut counts = Counts::default();
                while Instant::now() < deadline {
                    if handshake(&connector, &target, &mut counts).await.is_err() {
                        counts.errors += 1;
                    }
                }
                counts
            }))
        })
        .collect::<Result<_>>()?;
    let mut total = Counts::default();
    for task in tasks {
        let counts = task.await?;
        total.handshakes += counts.handshakes;
        total.resumed += counts.resumed;
        total.errors += counts.errors;
        if total.suite.is_empty() {
            (total.suite, total.group) = (counts.suite, counts.group);
        }
    }
    println!(
        "RESULT handshakes={} resumed={} seconds={:.3} errors={} suite={} group={}",
        total.handshakes,
        total.resumed,
        started.elapsed().as_secs_f64(),
        total.errors,
        total
            .suite
            .replace(' ', "")
            .replace("Some(", "")
            .replace(')', ""),
        total
            .group
            .replace(' ', "")
            .replace("Some(", "")
            .replace(')', "")
    );
    Ok(())
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const SETTINGS: u8 = 0x4;
const ACK: u8 = 0x1;

/// An HTTP/2 frame header: 24-bit length, type, flags, stream 0.
fn frame_header(length: usize, kind: u8, flags: u8) -> [u8; 9] {
    let l = length.to_be_bytes();
    let n = l.len();
    [l[n - 3], l[n - 2], l[n - 1], kind, flags, 0, 0, 0, 0]
}

/// Opens one TLS connection with ALPN h2 and exchanges the preface and SETTINGS: ours (empty)
/// acknowledged by the server, the server's acknowledged by us.
async fn open_h2(connector: &TlsConnector, target: &Target) -> Result<TlsStream<TcpStream>> {
    let mut tls = connect(connector, target).await?;
    if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
        bail!("the server did not choose h2 by ALPN");
    }
    let mut hello = PREFACE.to_vec();
    hello.extend_from_slice(&frame_header(0, SETTINGS, 0));
    tls.write_all(&hello).await?;
    let (mut got_settings, mut got_ack) = (false, false);
    while !(got_settings && got_ack) {
        let mut header = [0u8; 9];
        tls.read_exact(&mut header).await?;
        let length =
            usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
        let mut payload = vec![0u8; length];
        tls.read_exact(&mut payload).await?;
        if header[3] == SETTINGS {
            if header[4] & ACK != 0 {
                got_ack = true;
            } else {
                got_settings = true;
                tls.write_all(&frame_header(0, SETTINGS, ACK)).await?;
            }
        }
    }
    tls.flush().await?;
    Ok(tls)
}

async fn idle_h2(target: &Target, connections: usize, concurrency: usize) -> Result<()> {
    let connector = TlsConnector::from(Arc::new(client_config(&[b"h2"], false)?));
    let open = Arc::new(AtomicUsize::new(0));
    let slots = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let (opened, mut results) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..connections {
        let permit = slots.clone().acquire_owned().await?;
        let (connector, target, open, opened) = (
            connector.clone(),
            target.clone(),
            open.clone(),
            opened.clone(),
        );
        tokio::spawn(async move {
            let tls = open_h2(&connector, &target).await;
            drop(permit);
            let mut tls = match tls {
                Ok(tls) => tls,
                Err(e) => {
                    let _ = opened.send(Err(e));
                    return;
                }
            };
            open.fetch_add(1, Ordering::Relaxed);
            let _ = opened.send(Ok(()));
            // Held until the server closes it (or this process exits); whatever it sends
            // meanwhile (a PING, a GOAWAY) is read and dropped.
            let mut sink = [0u8; 512];
            while matches!(tls.read(&mut sink).await, Ok(n) if n > 0) {}
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }
    for _ in 0..connections {
        let result = tokio::time::timeout(Duration::from_secs(60), results.recv())
            .await
            .context("connections still opening after 60 s")?;
        result.context("an opening task ended")??;
    }
    println!("READY {connections}");
    // A blocking read on its own thread: tokio's stdin is not among the features built here.
    tokio::task::spawn_blocking(|| std::io::stdin().read_line(&mut String::new()))
        .await?
        .context("reading standard input")?;
    println!("OPEN {}", open.load(Ordering::Relaxed));
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    match args.command {
        Mode::Handshakes {
            concurrency,
            seconds,
            resume,
        } => handshakes(&args.target, concurrency, seconds, resume).await,
        Mode::IdleH2 {
            connections,
            concurrency,
        } => idle_h2(&args.target, connections, concurrency).await,
        Mode::H3 {
            connections,
            streams,
            seconds,
        } => {
            let load = http3_load::Load {
                server: args.target.server,
                sni: args.target.sni.clone(),
                connections,
                streams,
                seconds,
            };
            http3_load::run(load, client_config(&[b"h3"], false)?).await
        }
    }
}
