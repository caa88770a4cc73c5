//! gRPC and WebSocket end to end: client → edge → gateway → node proxy → instance, the mesh hops
//! in mutual TLS and HTTP/2, the instance meridian-hello with its gRPC port and WebSocket:
//! streaming both ways, trailers and status intact, WebSocket over HTTP/1.1 and over HTTP/2
//! (RFC 8441; either way it crosses the mesh's HTTP/2 hops as extended CONNECTs). Each case
//! runs through the edge's plain listener and through its HTTPS one (TLS, the protocol chosen
//! by ALPN), with a certificate from the global control plane's local CA.

mod support;

use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use support::{
    agent, edge_at, gateway, h2_client, tls_connect, Agent, Deployed, Edge, Killed, RegionalPlane,
    HELLO, PARIS,
};

const DEADLINE: Duration = Duration::from_secs(60);

fn shop() -> String {
    format!(
        "\
org: acme
app: shop
name: web
regions: [fra]
runtime: {{process: {{command: {HELLO}}}}}
ports: [{{name: http, port: 8080}}, {{name: grpc, port: 9090, protocol: grpc}}]
routes: [{{path_prefix: /meridian.hello.Echo/, port: grpc}}, {{path_prefix: /, port: http}}]
domains: [shop.example.com]
https: {{redirect: false}}
health_checks: [{{http: {{port: http, path: /healthz}}, interval: 200ms, timeout: 200ms, grace_period: 5s}}]
"
    )
}

/// The shop in fra (node on 127.0.48.1, gateway on 127.0.49.1), and an edge at Paris with a
/// plain and an HTTPS listener (the shop keeps plain HTTP: `redirect: false`).
struct Platform {
    _platform: Deployed,
    _region: RegionalPlane,
    _node: Agent,
    _gateway: Killed,
    _edge: Edge,
    plain: Way,
    tls: Way,
    _dir: tempfile::TempDir,
}

/// How a client reaches the edge: its plain listener, or its HTTPS one trusting `roots` (PEM).
enum Way {
    Plain(String),
    Tls { address: String, roots: String },
}

/// A connection to the edge, whichever way.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> Io for T {}

impl Way {
    /// A connection to the edge for the shop; over TLS, one that negotiated `alpn`.
    async fn open(&self, alpn: &[u8]) -> std::io::Result<Box<dyn Io>> {
        Ok(match self {
            Way::Plain(address) => Box::new(tokio::net::TcpStream::connect(address).await?),
            Way::Tls { address, roots } => {
                let stream = tls_connect(address, "shop.example.com", roots, &[alpn]).await?;
                assert_eq!(stream.get_ref().1.alpn_protocol(), Some(alpn));
                Box::new(stream)
            }
        })
    }

    /// The URL scheme of the way (`http` or `https`), or of WebSockets (`ws` or `wss`).
    fn scheme(&self, websocket: bool) -> &'static str {
        match (self, websocket) {
            (Way::Plain(_), false) => "http",
            (Way::Plain(_), true) => "ws",
            (Way::Tls { .. }, false) => "https",
            (Way::Tls { .. }, true) => "wss",
        }
    }
}

async fn platform() -> Platform {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("secrets.key");
    let local_ca = [
        "--secrets-key",
        key.to_str().unwrap(),
        "--create-secrets-key",
        "--local-ca",
    ];
    let platform = Deployed::start_with(dir.path(), &shop(), &local_ca);
    let (global, token) = (&platform.global, &platform.token);
    let region = RegionalPlane::start(global, token, "fra", Some("127.0.49.1:8080"));
    let node = agent(&region, "fra-1", "127.0.48.1", dir.path());
    let (gateway, _) = gateway(&region, dir.path()).await;
    let edge = edge_at(
        &platform,
        &region,
        dir.path(),
        &PARIS,
        "127.0.0.1:0",
        Some("127.0.0.1:0"),
    );
    let roots = std::fs::read_to_string(dir.path().join("data/public-ca/ca.pem")).unwrap();
    let https = edge.https.clone().unwrap();
    let plain = Way::Plain(edge.http.clone());
    let tls = Way::Tls {
        address: https,
        roots,
    };
    // Served both ways once the instance is healthy, every hop has its configuration and the
    // edge its certificate.
    for way in [&plain, &tls] {
        let end = Instant::now() + DEADLINE;
        while !answers(way).await {
            assert!(Instant::now() < end, "the edge never served the shop");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Platform {
        _platform: platform,
        _region: region,
        _node: node,
        _gateway: gateway,
        _edge: edge,
        plain,
        tls,
        _dir: dir,
    }
}

/// Whether a GET of `/` through the edge `way` (HTTP/1.1) is answered 200.
async fn answers(way: &Way) -> bool {
    let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_secs(2), way.open(b"http/1.1")).await
    else {
        return false;
    };
    let Ok((mut client, connection)) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await
    else {
        return false;
    };
    tokio::spawn(connection);
    let request = http::Request::get("/")
        .header("host", "shop.example.com")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    client
        .send_request(request)
        .await
        .is_ok_and(|answer| answer.status() == 200)
}

/// A gRPC message (RFC-less but fixed: a 0 flag, a 4-byte length, the bytes).
fn grpc_message(payload: &str) -> Bytes {
    let mut message = vec![0];
    message.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    message.extend_from_slice(payload.as_bytes());
    Bytes::from(message)
}

/// Calls the bidirectional stream `method` at the edge over HTTP/2 (prior knowledge in plain
/// HTTP, ALPN `h2` over TLS): sends
/// `messages` one at a time, each after the echo of the one before has come back; returns the
/// bytes received and the trailers.
async fn grpc_chat(way: &Way, method: &str, messages: &[&str]) -> (Bytes, http::HeaderMap) {
    let mut client = h2_client(way.open(b"h2").await.unwrap()).await;
    let (sender, outgoing) = tokio::sync::mpsc::channel::<Bytes>(1);
    let frames = tokio_stream::wrappers::ReceiverStream::new(outgoing)
        .map(|data| Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(data)));
    let scheme = way.scheme(false);
    let request = http::Request::post(format!("{scheme}://shop.example.com{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(http_body_util::StreamBody::new(frames))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), client.send_request(request))
        .await
        .expect("no answer")
        .unwrap();
    assert_eq!(response.status(), 200, "{:?}", response.headers());
    let mut body = response.into_body();
    let mut received = BytesMut::new();
    let mut trailers = None;
    let mut next_frame = async |received: &mut BytesMut, trailers: &mut Option<http::HeaderMap>| {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("the stream went quiet");
        match frame {
            Some(frame) => match frame.unwrap().into_data() {
                Ok(data) => received.extend_from_slice(&data),
                Err(frame) => *trailers = frame.into_trailers().ok(),
            },
            None => *trailers = Some(trailers.take().unwrap_or_default()),
        }
    };
    for message in messages {
        let message = grpc_message(message);
        let wanted = received.len() + message.len();
        sender.send(message).await.unwrap();
        // Streaming both ways: the echo comes back while the request is still open.
        while received.len() < wanted && trailers.is_none() {
            next_frame(&mut received, &mut trailers).await;
        }
    }
    drop(sender);
    while trailers.is_none() {
        next_frame(&mut received, &mut trailers).await;
    }
    (received.freeze(), trailers.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_and_websockets_cross_edge_gateway_and_node_proxy_in_plain_http_and_over_tls() {
    let platform = platform().await;
    for way in [&platform.plain, &platform.tls] {
        grpc_and_websockets_cross(way).await;
    }
}

/// gRPC (both ways streaming, trailers, an error status) and WebSockets over HTTP/1.1 and
/// HTTP/2 through the edge `way`.
async fn grpc_and_websockets_cross(way: &Way) {
    // The last message is larger than every hop's flow-control windows.
    let large = "x".repeat(3 << 20);
    let messages = ["ping 1", "ping 22", &large];
    let (mut echoed, trailers) = grpc_chat(way, "/meridian.hello.Echo/Chat", &messages).await;
    for word in messages {
        assert_eq!(echoed.get_u8(), 0);
        let length = echoed.get_u32() as usize;
        assert_eq!(echoed.split_to(length), word.as_bytes());
    }
    assert!(echoed.is_empty());
    assert_eq!(trailers["grpc-status"], "0");
    let sent = 2 * 5 + 13 + 5 + large.len();
    assert_eq!(trailers["echoed-bytes"], sent.to_string().as_str());
    // An error status arrives in the trailers too.
    let (_, trailers) = grpc_chat(way, "/meridian.hello.Echo/Missing", &[]).await;
    assert_eq!(trailers["grpc-status"], "12");

    // WebSocket over HTTP/1.1 and over HTTP/2 (RFC 8441), relayed both ways.
    websocket_echoes(http1_websocket(way).await).await;
    websocket_echoes(http2_websocket(way).await).await;
}

/// A WebSocket to the shop's `/ws` through the edge over HTTP/1.1 (`Upgrade`; ALPN
/// `http/1.1` over TLS).
async fn http1_websocket(way: &Way) -> tokio_tungstenite::WebSocketStream<Box<dyn Io>> {
    let stream = way.open(b"http/1.1").await.unwrap();
    let scheme = way.scheme(true);
    let url = format!("{scheme}://shop.example.com/ws");
    let request = support::websocket_request(&url, "shop.example.com");
    let (socket, response) = tokio_tungstenite::client_async(request, stream)
        .await
        .unwrap();
    assert_eq!(response.status(), 101);
    socket
}

/// A WebSocket to the shop's `/ws` through the edge over HTTP/2 (ALPN `h2` over TLS): an
/// extended CONNECT with `:protocol websocket`, answered 200, then WebSocket frames on the
/// stream.
async fn http2_websocket(
    way: &Way,
) -> tokio_tungstenite::WebSocketStream<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>> {
    let mut client = h2_client(way.open(b"h2").await.unwrap()).await;
    let scheme = way.scheme(false);
    let mut request = http::Request::connect(format!("{scheme}://shop.example.com/ws"))
        .header("sec-websocket-version", "13")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    request
        .extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let mut response = tokio::time::timeout(Duration::from_secs(10), client.send_request(request))
        .await
        .expect("no answer")
        .unwrap();
    assert_eq!(response.status(), 200);
    let stream = hyper::upgrade::on(&mut response).await.unwrap();
    tokio_tungstenite::WebSocketStream::from_raw_socket(
        hyper_util::rt::TokioIo::new(stream),
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        None,
    )
    .await
}

/// Sends two text messages on `socket`, checking that each is echoed, and closes it.
async fn websocket_echoes<S>(mut socket: tokio_tungstenite::WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    for word in ["hello", "again"] {
        socket
            .send(tokio_tungstenite::tungstenite::Message::text(word))
            .await
            .unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("no echo")
            .unwrap()
            .unwrap();
        assert_eq!(reply.into_text().unwrap().as_str(), format!("echo: {word}"));
    }
    socket.close(None).await.unwrap();
}
