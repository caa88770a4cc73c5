//! WebSockets through the proxy: over HTTP/1.1 (`Upgrade`) and over HTTP/2 (extended CONNECT,
//! RFC 8441), to an HTTP/1.1 upstream directly or across an HTTP/2 hop between two proxies (as
//! mesh hops are), relayed both ways.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use meridian_proxy::Proxy;

/// A WebSocket server (axum, HTTP/1.1) answering each text message `m` at `/echo` with
/// `echo: m`.
async fn websocket_echo() -> SocketAddr {
    use axum::extract::ws::{Message, WebSocketUpgrade};
    let app = axum::Router::new().route(
        "/echo",
        axum::routing::get(|ws: WebSocketUpgrade| async {
            ws.on_upgrade(|mut socket| async move {
                while let Some(Ok(message)) = socket.recv().await {
                    if let Message::Text(text) = message {
                        let reply = format!("echo: {}", text.as_str());
                        if socket.send(Message::Text(reply.into())).await.is_err() {
                            break;
                        }
                    }
                }
            })
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    address
}

/// A proxy whose one listener sends everything to `upstream`, spoken to as `protocol`.
async fn proxy_to(upstream: SocketAddr, protocol: &str) -> (Arc<Proxy>, SocketAddr) {
    let text = format!(
        "listeners:
  - name: l
    address: 127.0.0.1:0
    virtual_hosts: [{{name: all, domains: ['*'], routes: [{{cluster: c}}]}}]
clusters:
  - {{name: c, protocol: {protocol}, endpoints: [{{address: '{upstream}'}}]}}
"
    );
    let proxy = Arc::new(Proxy::default());
    proxy.apply_text(&text).await.unwrap();
    let address = proxy.listeners().await[0].1;
    (proxy, address)
}

/// Two proxies in a row, the first speaking HTTP/2 to the second (as mesh hops do), the second
/// HTTP/1.1 to [`websocket_echo`]; the first's address.
async fn two_hops() -> (Vec<Arc<Proxy>>, SocketAddr) {
    let (inner, inner_address) = proxy_to(websocket_echo().await, "http1").await;
    let (outer, address) = proxy_to(inner_address, "http2").await;
    (vec![inner, outer], address)
}

/// Talks to `/echo` at `address` as an HTTP/1.1 WebSocket client.
async fn http1_websocket_echoes(address: SocketAddr) {
    let url = format!("ws://{address}/echo");
    let (mut socket, response) = tokio_tungstenite::connect_async(url).await.unwrap();
    assert_eq!(response.status(), 101);
    for word in ["hello", "again"] {
        socket
            .send(tokio_tungstenite::tungstenite::Message::text(word))
            .await
            .unwrap();
        let reply = socket.next().await.unwrap().unwrap();
        assert_eq!(reply.into_text().unwrap().as_str(), format!("echo: {word}"));
    }
    socket.close(None).await.unwrap();
}

/// A masked WebSocket text frame (RFC 6455 §5.2) of `text` (under 126 bytes), as a client sends.
fn client_text_frame(text: &str) -> Bytes {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = vec![0x81, 0x80 | text.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    Bytes::from(frame)
}

/// Reads one unmasked text frame (under 126 bytes) from `body`, keeping what follows in `buffer`.
async fn server_text_frame(body: &mut h2::RecvStream, buffer: &mut BytesMut) -> String {
    loop {
        if buffer.len() >= 2 && buffer.len() >= 2 + usize::from(buffer[1] & 0x7f) {
            assert_eq!(buffer[0], 0x81, "not a final text frame: {buffer:?}");
            let length = usize::from(buffer[1] & 0x7f);
            buffer.advance(2);
            let text = buffer.split_to(length);
            return String::from_utf8(text.to_vec()).unwrap();
        }
        let data = tokio::time::timeout(Duration::from_secs(10), body.data())
            .await
            .expect("no WebSocket frame")
            .expect("the stream ended")
            .unwrap();
        let _ = body.flow_control().release_capacity(data.len());
        buffer.extend_from_slice(&data);
    }
}

/// Talks to `/echo` at `address` as an HTTP/2 WebSocket client (RFC 8441): an extended CONNECT
/// with `:protocol websocket`, answered 200, then WebSocket frames on the stream.
async fn http2_websocket_echoes(address: SocketAddr) {
    let stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let (client, connection) = h2::client::handshake(stream).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut client = client.ready().await.unwrap();
    // The proxy's SETTINGS, which allow extended CONNECT, arrive after the handshake.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !client.is_extended_connect_protocol_enabled() {
        assert!(
            Instant::now() < deadline,
            "the proxy never enabled extended CONNECT"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
        client = client.ready().await.unwrap();
    }
    let request = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("http://{address}/echo"))
        .extension(h2::ext::Protocol::from_static("websocket"))
        .header("sec-websocket-version", "13")
        .body(())
        .unwrap();
    let (response, mut send) = client.send_request(request, false).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .expect("no answer")
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut buffer = BytesMut::new();
    for word in ["hello", "again"] {
        send.send_data(client_text_frame(word), false).unwrap();
        assert_eq!(
            server_text_frame(&mut body, &mut buffer).await,
            format!("echo: {word}")
        );
    }
}

#[tokio::test]
async fn websockets_over_http1_are_tunnelled() {
    let (_proxy, address) = proxy_to(websocket_echo().await, "http1").await;
    http1_websocket_echoes(address).await;
}

#[tokio::test]
async fn websockets_over_http2_reach_an_http1_upstream() {
    let (_proxy, address) = proxy_to(websocket_echo().await, "http1").await;
    http2_websocket_echoes(address).await;
}

#[tokio::test]
async fn websockets_over_http1_cross_an_http2_hop() {
    let (_proxies, address) = two_hops().await;
    http1_websocket_echoes(address).await;
}

#[tokio::test]
async fn websockets_over_http2_cross_an_http2_hop() {
    let (_proxies, address) = two_hops().await;
    http2_websocket_echoes(address).await;
}
