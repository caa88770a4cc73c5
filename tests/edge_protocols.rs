//! gRPC and WebSocket end to end: client → edge → gateway → node proxy → instance, the mesh hops
//! in mutual TLS and HTTP/2, the instance meridian-hello with its gRPC port and WebSocket:
//! streaming both ways, trailers and status intact, WebSocket over HTTP/1.1 and over HTTP/2
//! (RFC 8441; either way it crosses the mesh's HTTP/2 hops as extended CONNECTs). The edge's
//! plain listener is used.

mod support;

use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use support::{agent, edge, gateway, h2_client, Agent, Deployed, Killed, RegionalPlane, HELLO};

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
health_checks: [{{http: {{port: http, path: /healthz}}, interval: 200ms, timeout: 200ms, grace_period: 5s}}]
"
    )
}

/// The shop in fra (node on 127.0.48.1, gateway on 127.0.49.1), and an edge at Paris.
struct Platform {
    _platform: Deployed,
    _region: RegionalPlane,
    _node: Agent,
    _gateway: Killed,
    _edge: Killed,
    edge: String,
    _dir: tempfile::TempDir,
}

async fn platform() -> Platform {
    let dir = tempfile::tempdir().unwrap();
    let platform = Deployed::start(dir.path(), &shop());
    let (global, token) = (&platform.global, &platform.token);
    let region = RegionalPlane::start(global, token, "fra", Some("127.0.49.1:8080"));
    let node = agent(&region, "fra-1", "127.0.48.1", dir.path());
    let (gateway, _) = gateway(&region, dir.path()).await;
    let (edge_process, edge) = edge(&platform, &region, dir.path());
    // Served once the instance is healthy and every hop has its configuration.
    let client = reqwest::Client::new();
    let end = Instant::now() + DEADLINE;
    loop {
        let answer = client
            .get(format!("http://{edge}/"))
            .header("host", "shop.example.com")
            .send()
            .await;
        if answer.is_ok_and(|a| a.status() == 200) {
            break;
        }
        assert!(Instant::now() < end, "the edge never served the shop");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Platform {
        _platform: platform,
        _region: region,
        _node: node,
        _gateway: gateway,
        _edge: edge_process,
        edge,
        _dir: dir,
    }
}

/// A gRPC message (RFC-less but fixed: a 0 flag, a 4-byte length, the bytes).
fn grpc_message(payload: &str) -> Bytes {
    let mut message = vec![0];
    message.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    message.extend_from_slice(payload.as_bytes());
    Bytes::from(message)
}

/// Calls the bidirectional stream `method` at the edge over HTTP/2 (prior knowledge): sends
/// `messages` one at a time, each after the echo of the one before has come back; returns the
/// bytes received and the trailers.
async fn grpc_chat(edge: &str, method: &str, messages: &[&str]) -> (Bytes, http::HeaderMap) {
    let stream = tokio::net::TcpStream::connect(edge).await.unwrap();
    let mut client = h2_client(stream).await;
    let (sender, outgoing) = tokio::sync::mpsc::channel::<Bytes>(1);
    let frames = tokio_stream::wrappers::ReceiverStream::new(outgoing)
        .map(|data| Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(data)));
    let request = http::Request::post(format!("http://shop.example.com{method}"))
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
async fn grpc_and_websockets_cross_edge_gateway_and_node_proxy() {
    let platform = platform().await;

    let (mut echoed, trailers) = grpc_chat(
        &platform.edge,
        "/meridian.hello.Echo/Chat",
        &["ping 1", "ping 22"],
    )
    .await;
    for word in ["ping 1", "ping 22"] {
        assert_eq!(echoed.get_u8(), 0);
        let length = echoed.get_u32() as usize;
        assert_eq!(echoed.split_to(length), word.as_bytes());
    }
    assert!(echoed.is_empty());
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["echoed-bytes"], "23");
    // An error status arrives in the trailers too.
    let (_, trailers) = grpc_chat(&platform.edge, "/meridian.hello.Echo/Missing", &[]).await;
    assert_eq!(trailers["grpc-status"], "12");

    // WebSocket over HTTP/1.1 and over HTTP/2 (RFC 8441), relayed both ways.
    websocket_echoes(http1_websocket(&platform.edge).await).await;
    websocket_echoes(http2_websocket(&platform.edge).await).await;
}

/// A WebSocket to the shop's `/ws` through the edge over HTTP/1.1 (`Upgrade`).
async fn http1_websocket(edge: &str) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    let stream = tokio::net::TcpStream::connect(edge).await.unwrap();
    let request = http::Request::get("ws://shop.example.com/ws")
        .header("host", "shop.example.com")
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header(
            "sec-websocket-key",
            tokio_tungstenite::tungstenite::handshake::client::generate_key(),
        )
        .body(())
        .unwrap();
    let (socket, response) = tokio_tungstenite::client_async(request, stream)
        .await
        .unwrap();
    assert_eq!(response.status(), 101);
    socket
}

/// A WebSocket to the shop's `/ws` through the edge over HTTP/2: an extended CONNECT with
/// `:protocol websocket`, answered 200, then WebSocket frames on the stream.
async fn http2_websocket(
    edge: &str,
) -> tokio_tungstenite::WebSocketStream<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>> {
    let stream = tokio::net::TcpStream::connect(edge).await.unwrap();
    let mut client = h2_client(stream).await;
    let mut request = http::Request::connect("http://shop.example.com/ws")
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
