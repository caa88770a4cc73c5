//! HTTP/3 on TLS listeners: real QUIC clients (quinn + h3) through the proxy to a loopback
//! upstream, the `Alt-Svc` that advertises it, reloads, stream limits and garbage datagrams.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use meridian_proxy::Proxy;

type UpstreamBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// What the upstream has seen: of `/hold` requests, how many are waiting at once, the most
/// that ever were, and the gate that lets them all answer; of `/echo` requests, how many heads
/// arrived, how many body bytes so far (all requests together), and each body once it ended
/// (`None` if it broke off).
#[derive(Default)]
struct Held {
    now: AtomicUsize,
    most: AtomicUsize,
    open: tokio::sync::watch::Sender<bool>,
    echo_heads: AtomicUsize,
    echo_bytes: AtomicUsize,
    echoed: std::sync::Mutex<Vec<Option<Bytes>>>,
}

/// An upstream speaking HTTP/1.1 and h2c. `/echo` (at any depth) answers the request body, with
/// what framed it and its trailers in `x-seen-*` headers, recording it in [`Held`] as it reads
/// it; `/stream` answers in two parts with trailers (which reach HTTP/2 clusters); `/hold` waits
/// for the gate; anything else answers the request's headers, one per line, in its body.
async fn upstream() -> (SocketAddr, Arc<Held>) {
    let held = Arc::new(Held::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let state = held.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let state = state.clone();
            let service = hyper::service::service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(answer(request, &state).await) }
            });
            tokio::spawn(async move {
                let builder = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                );
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = builder.serve_connection(io, service).await;
            });
        }
    });
    (address, held)
}

async fn answer(
    request: http::Request<hyper::body::Incoming>,
    held: &Held,
) -> http::Response<UpstreamBody> {
    let (parts, body) = request.into_parts();
    let response = http::Response::builder().header("x-upstream", "yes");
    match parts.uri.path() {
        path if path.ends_with("/echo") => {
            held.echo_heads.fetch_add(1, Ordering::SeqCst);
            let seen = |name: &str| {
                parts
                    .headers
                    .get(name)
                    .map_or("none".to_owned(), |v| v.to_str().unwrap().to_owned())
            };
            let (length, coding) = (seen("content-length"), seen("transfer-encoding"));
            let (mut body, mut received, mut trailers) = (body, Vec::new(), String::from("none"));
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else {
                    held.echoed.lock().unwrap().push(None);
                    return response.status(500).body(Full::default().boxed()).unwrap();
                };
                if let Some(data) = frame.data_ref() {
                    received.extend_from_slice(data);
                    held.echo_bytes.fetch_add(data.len(), Ordering::SeqCst);
                }
                if let Some(fields) = frame.trailers_ref() {
                    trailers = fields
                        .iter()
                        .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap()))
                        .collect::<Vec<_>>()
                        .join(", ");
                }
            }
            let received = Bytes::from(received);
            held.echoed.lock().unwrap().push(Some(received.clone()));
            response
                .header("x-seen-content-length", length)
                .header("x-seen-transfer-encoding", coding)
                .header("x-seen-trailers", trailers)
                .body(Full::new(received).boxed())
                .unwrap()
        }
        "/stream" => {
            let frames = futures_util::stream::iter([
                Ok::<_, Infallible>(Frame::data(Bytes::from("first "))),
                Ok(Frame::data(Bytes::from("second"))),
                Ok(Frame::trailers(
                    [("grpc-status", "0")]
                        .into_iter()
                        .map(|(k, v)| (k.parse().unwrap(), v.parse().unwrap()))
                        .collect(),
                )),
            ]);
            response.body(StreamBody::new(frames).boxed()).unwrap()
        }
        "/hold" => {
            let now = held.now.fetch_add(1, Ordering::SeqCst) + 1;
            held.most.fetch_max(now, Ordering::SeqCst);
            let _ = held.open.subscribe().wait_for(|open| *open).await;
            held.now.fetch_sub(1, Ordering::SeqCst);
            response.body(Full::new(Bytes::new()).boxed()).unwrap()
        }
        _ => {
            let lines: String = parts
                .headers
                .iter()
                .map(|(k, v)| format!("{k}: {}\n", v.to_str().unwrap_or("")))
                .collect();
            response
                .body(Full::new(Bytes::from(lines)).boxed())
                .unwrap()
        }
    }
}

/// A certificate for `shop.example.com` in files, and what a client trusts it with.
struct Certificate {
    _dir: tempfile::TempDir,
    cert_file: String,
    key_file: String,
    roots: rustls::RootCertStore,
}

fn certificate() -> Certificate {
    let dir = tempfile::tempdir().unwrap();
    let (cert, cert_file, key_file) = common::certificate_files(dir.path());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    Certificate {
        cert_file: cert_file.display().to_string(),
        key_file: key_file.display().to_string(),
        roots,
        _dir: dir,
    }
}

/// A configuration with one TLS listener (HTTP/3 on if `http3`) on `address`, routing to
/// `upstream` over HTTP/1.1, and `/stream` and `/h2/…` over HTTP/2; `response_header` is added
/// to answers and `limits` is the `limits` section.
fn config(
    cert: &Certificate,
    address: &str,
    http3: bool,
    upstream: SocketAddr,
    response_header: &str,
    limits: &str,
) -> String {
    format!(
        r#"{{
  "listeners": [{{
    "name": "public", "address": "{address}", "trust_forwarded": "none",
    "tls": {{"cert_file": "{}", "key_file": "{}", "http3": {http3}}},
    "virtual_hosts": [{{"name": "shop", "domains": ["shop.example.com"], "routes": [
      {{"match": {{"path": "/stream"}}, "cluster": "h2"}},
      {{"match": {{"prefix": "/h2/"}}, "cluster": "h2"}},
      {{"cluster": "h1", "response_headers_add": {{"x-route": "{response_header}"}}}}
    ]}}]
  }}],
  "clusters": [
    {{"name": "h1", "endpoints": [{{"address": "{upstream}"}}]}},
    {{"name": "h2", "protocol": "http2", "endpoints": [{{"address": "{upstream}"}}]}}
  ],
  "limits": {{{limits}}}
}}"#,
        cert.cert_file, cert.key_file
    )
}

async fn start(text: &str) -> (Arc<Proxy>, SocketAddr) {
    let proxy = Arc::new(Proxy::default());
    proxy.apply_text(text).await.unwrap();
    let address = proxy.listeners().await[0].1;
    (proxy, address)
}

type SendRequest = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;

/// An HTTP/3 client connection to `address` for `shop.example.com`.
struct Client {
    requests: SendRequest,
    /// Resolves when the connection closes, with why.
    closed: tokio::task::JoinHandle<h3::error::ConnectionError>,
    quic: quinn::Connection,
    _endpoint: quinn::Endpoint,
}

async fn connect(address: SocketAddr, roots: &rustls::RootCertStore) -> Result<Client, String> {
    connect_within(address, roots, Duration::from_secs(10)).await
}

/// Whether a client's handshake with `address` fails, or does not finish within a second.
async fn refused(address: SocketAddr, roots: &rustls::RootCertStore) -> bool {
    connect_within(address, roots, Duration::from_secs(1))
        .await
        .is_err()
}

/// A QUIC client endpoint on loopback that trusts `roots` and offers `h3`.
fn quic_client(roots: &rustls::RootCertStore) -> quinn::Endpoint {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    endpoint
}

async fn connect_within(
    address: SocketAddr,
    roots: &rustls::RootCertStore,
    timeout: Duration,
) -> Result<Client, String> {
    let endpoint = quic_client(roots);
    let connecting = endpoint.connect(address, "shop.example.com").unwrap();
    let connection = tokio::time::timeout(timeout, connecting)
        .await
        .map_err(|_| "handshake timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let quic = connection.clone();
    let (mut driver, requests) = h3::client::new(h3_quinn::Connection::new(connection))
        .await
        .map_err(|e| e.to_string())?;
    let closed =
        tokio::spawn(async move { std::future::poll_fn(|cx| driver.poll_close(cx)).await });
    Ok(Client {
        requests,
        closed,
        quic,
        _endpoint: endpoint,
    })
}

/// An answer: status, headers, body and trailers.
struct Answer {
    status: u16,
    headers: http::HeaderMap,
    body: Bytes,
    trailers: Option<http::HeaderMap>,
}

impl Client {
    /// Whether the connection closes within ten seconds.
    async fn closes(&mut self) -> bool {
        tokio::time::timeout(Duration::from_secs(10), &mut self.closed)
            .await
            .is_ok()
    }
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map_or("", |v| v.to_str().unwrap_or(""))
    }

    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }
}

/// Sends `method path` with `headers` and the body `parts` (each sent on its own), and reads
/// the whole answer.
async fn send(
    requests: &mut SendRequest,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    parts: &[&[u8]],
) -> Result<Answer, h3::error::StreamError> {
    let mut stream = open(requests, method, path, headers).await?;
    for part in parts {
        stream.send_data(Bytes::copy_from_slice(part)).await?;
    }
    stream.finish().await?;
    answer_of(stream).await
}

/// A client's request stream.
type RequestStream = h3::client::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;

/// Sends the head of `method path` with `headers`; the stream, for the body.
async fn open(
    requests: &mut SendRequest,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<RequestStream, h3::error::StreamError> {
    let mut request = http::Request::builder()
        .method(method)
        .uri(format!("https://shop.example.com{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    requests.send_request(request.body(()).unwrap()).await
}

/// Reads the whole answer on `stream`.
async fn answer_of(mut stream: RequestStream) -> Result<Answer, h3::error::StreamError> {
    let response = stream.recv_response().await?;
    let mut body = Vec::new();
    while let Some(mut chunk) = stream.recv_data().await? {
        body.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
    }
    let trailers = stream.recv_trailers().await?;
    Ok(Answer {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: body.into(),
        trailers,
    })
}

async fn get(requests: &mut SendRequest, path: &str) -> Answer {
    send(requests, "GET", path, &[], &[]).await.unwrap()
}

/// Waits until `condition` holds, for at most ten seconds.
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn http3_requests_take_the_same_path_as_the_others() {
    let (upstream, _) = upstream().await;
    let cert = certificate();
    let (proxy, address) = start(&config(&cert, "127.0.0.1:0", true, upstream, "one", "")).await;
    let mut client = connect(address, &cert.roots).await.unwrap();

    // A GET is routed (the route's header), forwarded as HTTPS from this client, without body.
    let answer = get(&mut client.requests, "/headers").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("x-upstream"), "yes");
    assert_eq!(answer.header("x-route"), "one");
    assert!(answer.text().contains("x-forwarded-proto: https\n"));
    assert!(answer.text().contains("x-forwarded-for: 127.0.0.1\n"));
    assert!(answer.text().contains("host: shop.example.com\n"));
    let answer = get(&mut client.requests, "/echo").await;
    assert_eq!(
        (
            answer.header("x-seen-content-length"),
            answer.header("x-seen-transfer-encoding"),
            answer.text()
        ),
        ("none", "none", "")
    );

    // A POST whose body streams in parts of unknown total length arrives whole.
    let part = vec![b'x'; 40_000];
    let parts: Vec<&[u8]> = vec![&part, b"middle", &part];
    let answer = send(&mut client.requests, "POST", "/echo", &[], &parts)
        .await
        .unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, parts.concat());
    // One with a length keeps it.
    let answer = send(
        &mut client.requests,
        "POST",
        "/echo",
        &[("content-length", "11")],
        &[b"hello", b" world"],
    )
    .await
    .unwrap();
    assert_eq!(
        (answer.text(), answer.header("x-seen-content-length")),
        ("hello world", "11")
    );

    // A streamed answer from an HTTP/2 cluster keeps its trailers.
    let answer = get(&mut client.requests, "/stream").await;
    assert_eq!(answer.text(), "first second");
    let trailers = answer.trailers.expect("no trailers");
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");

    // A body longer than its content-length is malformed: never forwarded as it is.
    let malformed = send(
        &mut client.requests,
        "POST",
        "/echo",
        &[("content-length", "2")],
        &[b"more than two"],
    )
    .await;
    assert!(
        malformed.as_ref().map_or(true, |a| a.status == 400),
        "a body longer than its length was answered {}",
        malformed.map(|a| a.status).unwrap()
    );

    // Requests are counted by protocol.
    let counted = r#"meridian_proxy_client_requests_total{listener="public",protocol="http3"} 6"#;
    assert!(
        proxy.metrics_text().contains(counted),
        "{}",
        proxy.metrics_text()
    );
}

#[tokio::test]
async fn http3_applies_the_client_limits() {
    let (upstream, _) = upstream().await;
    let cert = certificate();
    let limits =
        r#""max_header_bytes": 8192, "max_request_body_bytes": 1000, "idle_timeout": "300ms""#;
    let text = config(&cert, "127.0.0.1:0", true, upstream, "one", limits);
    let (_proxy, address) = start(&text).await;
    let mut client = connect(address, &cert.roots).await.unwrap();
    assert_eq!(get(&mut client.requests, "/").await.status, 200);

    // A head over the limit is refused: by the client, which knows the proxy's limit from its
    // settings, or by the proxy (431).
    let big = "v".repeat(16_384);
    match send(&mut client.requests, "GET", "/", &[("x-big", &big)], &[]).await {
        Ok(answer) => assert_eq!(answer.status, 431),
        Err(h3::error::StreamError::HeaderTooBig { max_size, .. }) => assert_eq!(max_size, 8192),
        Err(e) => panic!("{e}"),
    }

    // A body over the limit is answered 413.
    let body = vec![b'x'; 5000];
    let answer = send(&mut client.requests, "POST", "/echo", &[], &[&body])
        .await
        .unwrap();
    assert_eq!(answer.status, 413);

    // An idle connection is closed.
    assert!(client.closes().await, "the idle connection stayed open");
}

/// A proxy serving HTTP/3 with the `limits` section, in front of its own upstream, and a
/// client connected to it.
struct Served {
    proxy: Arc<Proxy>,
    held: Arc<Held>,
    client: Client,
    _cert: Certificate,
}

async fn served(limits: &str) -> Served {
    let (upstream, held) = upstream().await;
    let cert = certificate();
    let text = config(&cert, "127.0.0.1:0", true, upstream, "one", limits);
    let (proxy, address) = start(&text).await;
    let client = connect(address, &cert.roots).await.unwrap();
    Served {
        proxy,
        held,
        client,
        _cert: cert,
    }
}

/// The HTTP/3 requests `proxy` has counted so far.
fn http3_requests(proxy: &Proxy) -> usize {
    let counted = r#"meridian_proxy_client_requests_total{listener="public",protocol="http3"} "#;
    proxy
        .metrics_text()
        .lines()
        .find_map(|line| line.strip_prefix(counted))
        .map_or(0, |n| n.parse().unwrap())
}

/// What the upstream saw of an echoed request: its `Content-Length`, `Transfer-Encoding`,
/// trailers and body.
fn seen(answer: &Answer) -> (u16, &str, &str, &str, &[u8]) {
    (
        answer.status,
        answer.header("x-seen-content-length"),
        answer.header("x-seen-transfer-encoding"),
        answer.header("x-seen-trailers"),
        &answer.body,
    )
}

#[tokio::test]
async fn http3_request_bodies_reach_the_upstream_however_their_frames_arrive() {
    let mut served = served("").await;
    let (proxy, held, client) = (&served.proxy, &served.held, &mut served.client);
    let bytes = || held.echo_bytes.load(Ordering::SeqCst);
    let big = vec![b'x'; 100_000];

    // Of unknown length: the head reaches the upstream before any of the body is sent, then
    // the body in DATA frames, each sent once the upstream has the one before, and the end of
    // the stream after that.
    let mut stream = open(&mut client.requests, "POST", "/echo", &[])
        .await
        .unwrap();
    eventually("the head reaches the upstream", || {
        held.echo_heads.load(Ordering::SeqCst) == 1
    })
    .await;
    stream.send_data(Bytes::from("first ")).await.unwrap();
    eventually("the first part reaches the upstream", || bytes() == 6).await;
    stream.send_data(Bytes::from(big.clone())).await.unwrap();
    eventually("the second part reaches the upstream", || {
        bytes() == 6 + big.len()
    })
    .await;
    stream.finish().await.unwrap();
    let answer = answer_of(stream).await.unwrap();
    assert_eq!(
        seen(&answer),
        (
            200,
            "none",
            "chunked",
            "none",
            &[b"first ", &big[..]].concat()[..]
        )
    );

    // With a length, small enough to be read whole first: the body comes after the proxy
    // has taken the head, in two DATA frames.
    let before = http3_requests(proxy);
    let length = [("content-length", "11")];
    let mut stream = open(&mut client.requests, "POST", "/echo", &length)
        .await
        .unwrap();
    eventually("the proxy takes the head", || {
        http3_requests(proxy) == before + 1
    })
    .await;
    stream.send_data(Bytes::from("hello ")).await.unwrap();
    stream.send_data(Bytes::from("world")).await.unwrap();
    stream.finish().await.unwrap();
    let answer = answer_of(stream).await.unwrap();
    assert_eq!(
        seen(&answer),
        (200, "11", "none", "none", &b"hello world"[..])
    );

    // With a length too large to be read whole first: the upstream gets all of it before the
    // stream ends.
    let at = bytes();
    let length = big.len().to_string();
    let headers = [("content-length", length.as_str())];
    let mut stream = open(&mut client.requests, "PUT", "/echo", &headers)
        .await
        .unwrap();
    for part in big.chunks(30_000) {
        stream
            .send_data(Bytes::copy_from_slice(part))
            .await
            .unwrap();
    }
    eventually("the body reaches the upstream", || {
        bytes() == at + big.len()
    })
    .await;
    stream.finish().await.unwrap();
    let answer = answer_of(stream).await.unwrap();
    assert_eq!(
        seen(&answer),
        (200, length.as_str(), "none", "none", &big[..])
    );

    // A GET whose stream ends after the proxy has taken its head has no body.
    let before = http3_requests(proxy);
    let mut stream = open(&mut client.requests, "GET", "/echo", &[])
        .await
        .unwrap();
    eventually("the proxy takes the head", || {
        http3_requests(proxy) == before + 1
    })
    .await;
    stream.finish().await.unwrap();
    let answer = answer_of(stream).await.unwrap();
    assert_eq!(seen(&answer), (200, "none", "none", "none", &b""[..]));

    // Empty DATA frames (which a client may send) end nothing.
    let mut stream = open(&mut client.requests, "POST", "/echo", &[])
        .await
        .unwrap();
    for part in ["", "after an empty frame", "", " and another", ""] {
        stream.send_data(Bytes::from(part)).await.unwrap();
    }
    stream.finish().await.unwrap();
    let answer = answer_of(stream).await.unwrap();
    let body = b"after an empty frame and another";
    assert_eq!(seen(&answer), (200, "none", "chunked", "none", &body[..]));

    // Trailers after a body of unknown length reach an HTTP/2 upstream; an HTTP/1.1 upstream
    // gets those the request declares in `Trailer` (an end-to-end field, RFC 9110 §6.6.2,
    // which HTTP/1.1 needs to send them), in a chunked body.
    let cases = [
        ("/h2/echo", &[][..], "none"),
        ("/echo", &[("trailer", "x-checksum")][..], "chunked"),
    ];
    for (path, headers, coding) in cases {
        let mut stream = open(&mut client.requests, "POST", path, headers)
            .await
            .unwrap();
        stream
            .send_data(Bytes::from("with trailers"))
            .await
            .unwrap();
        let trailers = [("x-checksum", "42")]
            .into_iter()
            .map(|(k, v)| (k.parse().unwrap(), v.parse().unwrap()))
            .collect();
        stream.send_trailers(trailers).await.unwrap();
        stream.finish().await.unwrap();
        let answer = answer_of(stream).await.unwrap();
        assert_eq!(
            seen(&answer),
            (200, "none", coding, "x-checksum: 42", &b"with trailers"[..]),
            "{path}"
        );
    }
}

#[tokio::test]
async fn http3_request_bodies_are_held_to_the_body_limits_as_they_stream() {
    let limits = r#""max_request_body_bytes": 1000, "request_body_timeout": "300ms""#;
    let mut served = served(limits).await;
    let (proxy, held, client) = (&served.proxy, &served.held, &mut served.client);
    let broken = |count: usize| {
        let echoed = held.echoed.lock().unwrap();
        echoed.len() == count && echoed.iter().all(Option::is_none)
    };

    // A body of unknown length streams to the upstream until it goes over the limit: 413, and
    // the upstream's body breaks off instead of ending.
    let mut stream = open(&mut client.requests, "POST", "/echo", &[])
        .await
        .unwrap();
    stream
        .send_data(Bytes::from(vec![b'x'; 600]))
        .await
        .unwrap();
    eventually("the first part reaches the upstream", || {
        held.echo_bytes.load(Ordering::SeqCst) == 600
    })
    .await;
    stream
        .send_data(Bytes::from(vec![b'x'; 600]))
        .await
        .unwrap();
    let answer = answer_of(stream).await.unwrap();
    assert_eq!(
        (answer.status, answer.header("x-meridian-error")),
        (413, "request_body_too_large")
    );
    eventually("the upstream's body breaks off", || broken(1)).await;

    // A body that pauses for longer than the body timeout before the upstream answers: 408,
    // whether it streams (unknown length) or is read whole first (a small length).
    for headers in [&[][..], &[("content-length", "10")]] {
        let mut stream = open(&mut client.requests, "POST", "/echo", headers)
            .await
            .unwrap();
        stream.send_data(Bytes::from("first")).await.unwrap();
        let answer = answer_of(stream).await.unwrap();
        assert_eq!(
            (answer.status, answer.header("x-meridian-error")),
            (408, "request_body_timeout")
        );
    }
    eventually("the upstream's body breaks off", || broken(2)).await;
    assert!(proxy
        .metrics_text()
        .contains(r#"meridian_proxy_request_body_timeouts_total{listener="public"} 2"#));

    // The connection goes on.
    assert_eq!(get(&mut client.requests, "/").await.status, 200);
}

/// An HTTP/3 frame of type `kind` carrying `payload` (shorter than 16 KiB).
fn h3_frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let length = u16::try_from(payload.len()).unwrap() | 0x4000;
    [&[kind][..], &length.to_be_bytes(), payload].concat()
}

/// The HEADERS frame of a POST to `path` at shop.example.com, encoded with QPACK's static
/// table and literals only.
fn post_head(path: &str) -> Vec<u8> {
    let authority = b"shop.example.com";
    let fields = [
        &[0, 0, 0xd4, 0xd7, 0x50, authority.len() as u8][..],
        authority,
        &[0x51, path.len() as u8],
        path.as_bytes(),
    ]
    .concat();
    h3_frame(0x1, &fields)
}

/// Writes `bytes` on `stream` and waits until they have left: whatever is written next goes
/// in a later packet.
async fn write_alone(quic: &quinn::Connection, stream: &mut quinn::SendStream, bytes: &[u8]) {
    let sent = quic.stats().frame_tx.stream;
    stream.write_all(bytes).await.unwrap();
    eventually("the bytes leave", || quic.stats().frame_tx.stream > sent).await;
}

#[tokio::test]
async fn http3_request_frames_may_be_cut_anywhere_and_may_be_empty() {
    let mut served = served("").await;
    let (held, client) = (&served.held, &mut served.client);
    let quic = client.quic.clone();
    let last_echoed = || held.echoed.lock().unwrap().last().cloned();

    // A request stream written by hand: its head, then DATA frames whose headers and payloads
    // arrive apart, a header cut in two, empty frames, and the end on its own.
    let (mut send, mut receive) = quic.open_bi().await.unwrap();
    write_alone(&quic, &mut send, &post_head("/echo")).await;
    eventually("the head reaches the upstream", || {
        held.echo_heads.load(Ordering::SeqCst) == 1
    })
    .await;
    let data = h3_frame(0x0, b"0123456789");
    let (header, payload) = data.split_at(3);
    let cut = h3_frame(0x0, b"abc");
    let pieces: [&[u8]; 7] = [
        &h3_frame(0x0, b""),
        header,
        &payload[..5],
        &payload[5..],
        &[0x00, 0x00],
        &cut[..2],
        &cut[2..],
    ];
    for piece in pieces {
        write_alone(&quic, &mut send, piece).await;
    }
    eventually("the body reaches the upstream", || {
        held.echo_bytes.load(Ordering::SeqCst) == 13
    })
    .await;
    send.finish().unwrap();
    eventually("the body ends", || last_echoed().is_some()).await;
    assert_eq!(last_echoed(), Some(Some(Bytes::from("0123456789abc"))));
    receive.read_to_end(1 << 16).await.unwrap();
    assert_eq!(get(&mut client.requests, "/").await.status, 200);
}

#[tokio::test]
async fn a_request_stream_that_ends_inside_a_frame_is_malformed() {
    let mut served = served("").await;
    let (held, client) = (&served.held, &mut served.client);
    let quic = client.quic.clone();

    // The body streams to the upstream, until the stream ends 87 bytes short of its frame.
    let (mut send, mut receive) = quic.open_bi().await.unwrap();
    write_alone(&quic, &mut send, &post_head("/echo")).await;
    let truncated = h3_frame(0x0, &[b'x'; 100]);
    write_alone(&quic, &mut send, &truncated[..13]).await;
    eventually("the upstream has the part sent", || {
        held.echo_bytes.load(Ordering::SeqCst) == 10
    })
    .await;
    send.finish().unwrap();

    // Never taken for whole: the upstream's body breaks off, and the client is told why (the
    // answer's DATA is plain text).
    let answer = receive.read_to_end(1 << 16).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.contains("400 request_body_failed"), "{answer}");
    eventually("the upstream's body breaks off", || {
        held.echoed.lock().unwrap().as_slice() == [None]
    })
    .await;
    assert_eq!(get(&mut client.requests, "/").await.status, 200);

    // So is a body longer than its length, found out while the client is still sending.
    let length = [("content-length", "2")];
    let mut stream = open(&mut client.requests, "POST", "/echo", &length)
        .await
        .unwrap();
    stream
        .send_data(Bytes::from("more than two"))
        .await
        .unwrap();
    let answer = answer_of(stream).await.unwrap();
    assert_eq!(
        (answer.status, answer.header("x-meridian-error")),
        (400, "request_body_failed")
    );
    assert_eq!(get(&mut client.requests, "/").await.status, 200);
}

#[tokio::test]
async fn tcp_answers_advertise_http3_while_it_is_served() {
    let (upstream, _) = upstream().await;
    let cert = certificate();
    let (proxy, address) = start(&config(&cert, "127.0.0.1:0", true, upstream, "one", "")).await;
    let alt_svc = format!("h3=\":{}\"; ma=86400", address.port());
    assert_eq!(tcp_get(address, &cert.roots).await, Some(alt_svc));

    proxy
        .apply_text(&config(&cert, "127.0.0.1:0", false, upstream, "one", ""))
        .await
        .unwrap();
    assert_eq!(proxy.listeners().await[0].1, address);
    assert_eq!(tcp_get(address, &cert.roots).await, None);
    assert!(
        refused(address, &cert.roots).await,
        "HTTP/3 was still served once turned off"
    );
}

/// A TLS connection to `address` for `shop.example.com` that negotiated HTTP/2.
async fn h2_over_tls(
    address: SocketAddr,
    roots: &rustls::RootCertStore,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("shop.example.com").unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    stream
}

/// The `Alt-Svc` of an HTTP/2 answer over TLS from `address`.
async fn tcp_get(address: SocketAddr, roots: &rustls::RootCertStore) -> Option<String> {
    let stream = h2_over_tls(address, roots).await;
    let request = http::Request::get("https://shop.example.com/")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let response = common::h2_send(stream, request).await;
    assert_eq!(response.status(), 200);
    response
        .headers()
        .get(http::header::ALT_SVC)
        .map(|v| v.to_str().unwrap().to_owned())
}

#[tokio::test]
async fn a_reload_keeps_open_quic_connections_and_removing_the_listener_stops_it() {
    let (upstream, _) = upstream().await;
    let cert = certificate();
    // A port free for both TCP and UDP, since the listener is configured with it.
    let address = loop {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = tcp.local_addr().unwrap();
        if std::net::UdpSocket::bind(address).is_ok() {
            break address.to_string();
        }
    };
    let text = config(&cert, &address, true, upstream, "one", "");
    let (proxy, address) = start(&text).await;
    let mut client = connect(address, &cert.roots).await.unwrap();
    assert_eq!(
        get(&mut client.requests, "/").await.header("x-route"),
        "one"
    );

    // The same listener: the connection goes on, with the new routes and limits.
    let limits = r#""max_concurrent_streams": 8"#;
    let text = config(&cert, &address.to_string(), true, upstream, "two", limits);
    proxy.apply_text(&text).await.unwrap();
    assert_eq!(
        get(&mut client.requests, "/").await.header("x-route"),
        "two"
    );

    // Renamed at the same address: the socket is handed over; the connection still goes on.
    let renamed = text.replace(r#""name": "public""#, r#""name": "renamed""#);
    proxy.apply_text(&renamed).await.unwrap();
    assert_eq!(get(&mut client.requests, "/").await.status, 200);
    let mut fresh = connect(address, &cert.roots).await.unwrap();
    assert_eq!(get(&mut fresh.requests, "/").await.status, 200);

    // Removed: its connections are told to go away and close; new ones are not served.
    let other = config(&cert, "127.0.0.1:0", false, upstream, "three", "");
    proxy.apply_text(&other).await.unwrap();
    assert!(client.closes().await, "the connection stayed open");
    assert!(refused(address, &cert.roots).await);
}

#[tokio::test]
async fn draining_finishes_http3_requests_in_flight_then_closes() {
    let (upstream, held) = upstream().await;
    let cert = certificate();
    let (proxy, address) = start(&config(&cert, "127.0.0.1:0", true, upstream, "one", "")).await;
    let mut client = connect(address, &cert.roots).await.unwrap();
    let mut requests = client.requests.clone();
    let in_flight = tokio::spawn(async move { get(&mut requests, "/hold").await.status });
    eventually("the request reaches the upstream", || {
        held.now.load(Ordering::SeqCst) == 1
    })
    .await;
    let drained = {
        let proxy = proxy.clone();
        tokio::spawn(async move { proxy.drain(Duration::from_secs(10)).await })
    };
    held.open.send_replace(true);
    assert_eq!(in_flight.await.unwrap(), 200);
    assert_eq!(drained.await.unwrap(), 0, "a connection outlived the drain");
    assert!(client.closes().await, "the connection stayed open");
}

#[tokio::test]
async fn a_client_is_held_to_its_streams_without_harming_others() {
    let (upstream, held) = upstream().await;
    let cert = certificate();
    let limits = r#""max_concurrent_streams": 4"#;
    let text = config(&cert, "127.0.0.1:0", true, upstream, "one", limits);
    let (_proxy, address) = start(&text).await;
    let greedy = connect(address, &cert.roots).await.unwrap();
    let requests: Vec<_> = (0..12)
        .map(|_| {
            let mut requests = greedy.requests.clone();
            tokio::spawn(async move { get(&mut requests, "/hold").await.status })
        })
        .collect();
    eventually("four requests reach the upstream", || {
        held.now.load(Ordering::SeqCst) == 4
    })
    .await;

    // Another client is served meanwhile.
    let mut other = connect(address, &cert.roots).await.unwrap();
    assert_eq!(get(&mut other.requests, "/").await.status, 200);
    assert_eq!(held.now.load(Ordering::SeqCst), 4);

    held.open.send_replace(true);
    for request in requests {
        assert_eq!(request.await.unwrap(), 200);
    }
    assert_eq!(held.most.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn garbage_datagrams_do_not_harm_the_listener() {
    let (upstream, _) = upstream().await;
    let cert = certificate();
    let text = config(&cert, "127.0.0.1:0", true, upstream, "one", "");
    let (proxy, address) = start(&text).await;
    let mut before = connect(address, &cert.roots).await.unwrap();

    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut datagram = [0u8; 1500];
    for i in 0..20_000usize {
        let length = 1 + i % datagram.len();
        datagram[..length]
            .iter_mut()
            .for_each(|b| *b = fastrand::u8(..));
        // Some look like the long header of an Initial packet of QUIC version 1.
        if i % 3 == 0 {
            datagram[..5].copy_from_slice(&[0xc0, 0, 0, 0, 1]);
        }
        socket.send_to(&datagram[..length], address).await.unwrap();
    }

    assert_eq!(get(&mut before.requests, "/").await.status, 200);
    let mut after = connect(address, &cert.roots).await.unwrap();
    assert_eq!(get(&mut after.requests, "/").await.status, 200);
    assert_eq!(proxy.listeners().await[0].1, address);
}

#[tokio::test]
async fn quic_connections_count_against_max_connections() {
    let (upstream, _) = upstream().await;
    let cert = certificate();
    let text = config(&cert, "127.0.0.1:0", true, upstream, "one", "").replace(
        r#""trust_forwarded""#,
        r#""max_connections": 1, "trust_forwarded""#,
    );
    let (proxy, address) = start(&text).await;
    let mut first = connect(address, &cert.roots).await.unwrap();
    assert_eq!(get(&mut first.requests, "/").await.status, 200);
    assert!(refused(address, &cert.roots).await);
    assert!(proxy
        .metrics_text()
        .contains(r#"meridian_proxy_overloaded_connections_total{listener="public"} 1"#));
    first.quic.close(0u32.into(), b"done");
    // Once the first has closed, its slot serves another.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut next) = connect(address, &cert.roots).await {
            assert_eq!(get(&mut next.requests, "/").await.status, 200);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot never came free"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Requests per second of `tasks` loops of `request` for `run`, each loop with its own copy of
/// `client`; every answer must be 200.
async fn rate<C, F>(client: C, tasks: usize, run: Duration, request: fn(C) -> F) -> f64
where
    C: Clone + Send + 'static,
    F: std::future::Future<Output = u16> + Send + 'static,
{
    let deadline = tokio::time::Instant::now() + run;
    let loops: Vec<_> = (0..tasks)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut done = 0u64;
                while tokio::time::Instant::now() < deadline {
                    assert_eq!(request(client.clone()).await, 200);
                    done += 1;
                }
                done
            })
        })
        .collect();
    let mut done = 0;
    for counted in loops {
        done += counted.await.unwrap();
    }
    done as f64 / run.as_secs_f64()
}

/// A rough figure, not a benchmark (bench/ owns those): GET requests per second over HTTP/3
/// and over HTTP/2 (TLS) through the same proxy listener to the same upstream, one client
/// connection with 32 requests in flight each, client and proxy in this process. Run with
/// `cargo nextest run --release -p meridian-proxy --test http3 --run-ignored only --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "prints a rough figure; run on demand"]
async fn rough_requests_per_second_over_http3_and_http2() {
    const TASKS: usize = 32;
    const RUN: Duration = Duration::from_secs(5);
    let (upstream, _) = upstream().await;
    let cert = certificate();
    let (_proxy, address) = start(&config(&cert, "127.0.0.1:0", true, upstream, "one", "")).await;

    let client = connect(address, &cert.roots).await.unwrap();
    let http3 = rate(
        client.requests.clone(),
        TASKS,
        RUN,
        |mut requests| async move { get(&mut requests, "/").await.status },
    )
    .await;

    let stream = h2_over_tls(address, &cert.roots).await;
    let (h2, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let http2 = rate(h2, TASKS, RUN, |mut h2| async move {
        let request = http::Request::get("https://shop.example.com/")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let response = h2.send_request(request).await.unwrap();
        let status = response.status().as_u16();
        response.into_body().collect().await.unwrap();
        status
    })
    .await;
    println!(
        "rough, in-process, {TASKS} in flight on one connection: HTTP/3 {http3:.0} req/s, \
         HTTP/2 {http2:.0} req/s, ratio {:.2}",
        http3 / http2
    );
}

#[tokio::test]
async fn a_flood_of_handshakes_from_forged_addresses_does_not_lock_clients_out() {
    let (upstream, _) = upstream().await;
    let cert = certificate();
    let stalled = meridian_proxy::HANDSHAKES_BEFORE_RETRY + 16;
    let text = config(&cert, "127.0.0.1:0", true, upstream, "one", "").replace(
        r#""trust_forwarded""#,
        &format!(r#""max_connections": {stalled}, "trust_forwarded""#),
    );
    let (_proxy, address) = start(&text).await;

    // Real Initial packets, captured from clients that connect to a socket that never answers,
    // then sent to the proxy from an address that never answers either: each is a handshake
    // that stalls, as one from a forged address does.
    let blackhole = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let forger = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let endpoint = quic_client(&cert.roots);
    let target = blackhole.local_addr().unwrap();
    let mut initials = std::collections::HashSet::new();
    let mut connecting = Vec::new();
    let mut datagram = vec![0u8; 65536];
    while initials.len() < stalled {
        connecting.push(endpoint.connect(target, "shop.example.com").unwrap());
        let (length, _) = blackhole.recv_from(&mut datagram).await.unwrap();
        initials.insert(datagram[..length].to_vec());
    }
    for initial in &initials {
        forger.send_to(initial, address).await.unwrap();
    }

    let mut client = connect(address, &cert.roots).await.unwrap();
    assert_eq!(get(&mut client.requests, "/").await.status, 200);
}
