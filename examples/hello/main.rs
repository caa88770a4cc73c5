//! `meridian-hello`: the example service Meridian deploys in `meridian dev`. It answers with the
//! region, node and instance that served the request, so that routing and failover are visible
//! with `curl`.
//!
//! It listens on `$MERIDIAN_ADDRESS:$PORT` (default 127.0.0.1:8080) and serves:
//! - `GET /` — `<greeting> from <service> <instance> in <region> (node <node>, <address>)`,
//!   where the greeting is `$GREETING` (`hello` if unset: the definition in
//!   `examples/hello.yaml` sets it, so that a first edit and deploy shows); `POST /` reads
//!   the body and answers the same;
//! - `GET /healthz` — `ok`;
//! - `GET /whoami` — the caller's identity as the mesh passed it (`x-meridian-peer`), or
//!   `anonymous`;
//! - `GET /tagged/<tags>` — `tagged <tags>`, with `Cache-Tag: <tags>` (comma-separated), so
//!   that what an edge cached of it can be purged by tag;
//! - `GET /forwarded` — the forwarding and trace headers it received, one `name: value` line
//!   each (`forwarded`, `x-forwarded-for`, `x-forwarded-host`, `x-forwarded-proto`,
//!   `traceparent`, `tracestate`);
//! - `GET /call?url=<url>` — fetches `url` (e.g. `http://api.shop.internal:8080/`) and answers
//!   with what it got: a call to another service by name, through `HTTP_PROXY` if set; with
//!   `&direct=1`, without it (the name is resolved by DNS). The request's `traceparent` and
//!   `tracestate` go with the call, as a traced application's would;
//! - `POST /exit` — exits with status 1, to watch the agent restart it;
//! - `GET /slow?ms=N` — the answer of `GET /` after N more milliseconds (at most 60000): a
//!   request that stays in flight, to watch concurrency limits at work;
//! - `GET /burn?ms=N` — keeps a CPU busy for N milliseconds (at most 60000), then answers
//!   `burned N ms`: CPU load, to watch a `cpu_percent` target at work;
//! - `GET /print?line=<text>[&stream=stderr]` — writes `<text>` as a line of its standard
//!   output (or error), to watch `meridian logs`;
//! - `GET /env/<NAME>` — the value of environment variable `NAME`, only if `NAME` is listed
//!   in `$HELLO_SHOW_ENV` (names separated by commas; none by default), else `404`: to see
//!   what an instance's environment holds, e.g. a secret's value (`{secret: NAME}` in `env`);
//! - `GET /ws` — a WebSocket answering each text message `m` with `echo: m`;
//! - `GET /tcp?addr=<host:port>&bytes=N` — opens a TCP connection to `addr` (e.g.
//!   `echo.shop.internal:7000`), sends N bytes (default 1000) of a pattern that differs from
//!   byte to byte, half-closes it (shuts down its sending side) and reads until the other end
//!   closes, then answers `tcp <addr> (<address connected to>): sent N, received M, intact` (or
//!   `differ at byte K`, or `short`): a TCP echo, like the `echo` port's, sends back exactly
//!   what it got.
//!
//! Two knobs make a bad version, to watch a rollout's metric gates roll it back (requests to
//! `/` only; health checks stay fine):
//! - `HELLO_ERROR_PERCENT=N` (0–100): N of every 100 requests, spread evenly and
//!   deterministically by a counter, are answered `500` with `error: <the line above>`;
//! - `HELLO_DELAY_MS=N`: every request waits N milliseconds before its answer.
//!
//! One knob uses memory, to watch a memory limit (`resources.memory`) at work:
//! - `HELLO_ALLOCATE_MIB=N`: once listening, it allocates N MiB, touches every page, and keeps
//!   them.
//!
//! With a port named `grpc` (`$MERIDIAN_PORT_GRPC`), it serves there, over HTTP/2 cleartext,
//! the bidirectional gRPC stream `/meridian.hello.Echo/Chat`, which answers each message with
//! itself (see `grpc.rs`). With a port named `echo` (`$MERIDIAN_PORT_ECHO`, declare it
//! `protocol: tcp`), it serves there a TCP echo: each connection gets back every byte it sends,
//! and once it has half-closed (shut down its sending side), the echo closes its own.
//!
//! On SIGTERM it stops accepting connections, finishes the requests in flight and exits 0, as a
//! well-behaved service does. That matters most in a container, where it is the first process:
//! the kernel ignores a signal that the first process of a PID namespace has no handler for, so
//! without one a graceful stop would wait for its timeout and end in SIGKILL.

#![forbid(unsafe_code)]

mod grpc;

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::extract::Query;
use axum::routing::{get, post};
use axum::Router;

fn var(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let address = format!(
        "{}:{}",
        var("MERIDIAN_ADDRESS", "127.0.0.1"),
        var("PORT", "8080")
    );
    let greeting = format!(
        "{} from {} {} in {} (node {}, {})\n",
        var("GREETING", "hello"),
        var("MERIDIAN_SERVICE", "hello"),
        var("MERIDIAN_INSTANCE", "local"),
        var("MERIDIAN_REGION", "nowhere"),
        var("MERIDIAN_NODE", "localhost"),
        var("MERIDIAN_ADDRESS", "127.0.0.1"),
    );
    let answer = Answer::from_env(greeting);
    let posted = answer.clone();
    let slow = answer.clone();
    let app = Router::new()
        .route(
            "/",
            get(move || async move { answer.next().await })
                .post(move |_body: axum::body::Bytes| async move { posted.next().await }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/whoami", get(whoami))
        .route("/tagged/{tags}", get(tagged))
        .route("/forwarded", get(forwarded))
        .route("/call", get(call))
        .route("/exit", post(exit))
        .route(
            "/slow",
            get(
                move |Query(query): Query<HashMap<String, String>>| async move {
                    tokio::time::sleep(milliseconds(&query)).await;
                    slow.next().await
                },
            ),
        )
        .route("/burn", get(burn))
        .route("/env/{name}", get(show_env))
        .route("/print", get(print))
        .route("/ws", get(echo))
        .route("/tcp", get(tcp_call));
    let listener = match address.parse::<SocketAddr>() {
        Ok(socket) => tokio::net::TcpListener::bind(socket).await,
        Err(e) => {
            eprintln!("MERIDIAN_ADDRESS and PORT: `{address}` is not an address: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let listener = match listener {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("cannot listen on {address}: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    println!("meridian-hello listening on http://{address}");
    let held = allocate(var("HELLO_ALLOCATE_MIB", "0").trim().parse().unwrap_or(0));
    match extra_port("GRPC").await {
        Ok(Some(listener)) => drop(tokio::spawn(grpc::serve(listener))),
        Ok(None) => {}
        Err(code) => return code,
    }
    match extra_port("ECHO").await {
        Ok(Some(listener)) => drop(tokio::spawn(tcp_echo(listener))),
        Ok(None) => {}
        Err(code) => return code,
    }
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(terminated())
        .await;
    drop(held);
    match served {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("serving: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Resolves when the process gets SIGTERM (never, if the handler cannot be installed).
async fn terminated() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            term.recv().await;
            println!("SIGTERM: finishing the requests in flight, then exiting");
        }
        Err(e) => {
            eprintln!("cannot handle SIGTERM: {e}");
            std::future::pending::<()>().await;
        }
    }
}

/// `mib` MiB, every page written (so that it is resident), in 1 MiB blocks.
fn allocate(mib: usize) -> Vec<Vec<u8>> {
    if mib > 0 {
        println!("allocating {mib} MiB");
    }
    (0..mib).map(|_| vec![1u8; 1 << 20]).collect()
}

/// The answer to `/`: the greeting, delayed and sometimes an error as the knobs say.
#[derive(Clone)]
struct Answer {
    greeting: String,
    error_percent: u64,
    delay: std::time::Duration,
    served: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Answer {
    fn from_env(greeting: String) -> Answer {
        let number = |name: &str| var(name, "0").trim().parse::<u64>().unwrap_or(0);
        Answer {
            greeting,
            error_percent: number("HELLO_ERROR_PERCENT").min(100),
            delay: std::time::Duration::from_millis(number("HELLO_DELAY_MS")),
            served: Default::default(),
        }
    }

    async fn next(&self) -> (axum::http::StatusCode, String) {
        let n = self
            .served
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        // The n-th request fails when the count of failures due by it goes up.
        let failures = |n: u64| n * self.error_percent / 100;
        if failures(n + 1) > failures(n) {
            let error = format!("error: {}", self.greeting);
            return (axum::http::StatusCode::INTERNAL_SERVER_ERROR, error);
        }
        (axum::http::StatusCode::OK, self.greeting.clone())
    }
}

/// The `ms` of a query as a duration, at most a minute (0 if absent or not a number).
fn milliseconds(query: &HashMap<String, String>) -> std::time::Duration {
    let ms = query.get("ms").and_then(|ms| ms.parse::<u64>().ok());
    std::time::Duration::from_millis(ms.unwrap_or(0).min(60_000))
}

/// Keeps one CPU busy for the query's `ms` (on a blocking thread, so that other requests are
/// still answered).
async fn burn(Query(query): Query<HashMap<String, String>>) -> String {
    let busy = milliseconds(&query);
    let spin = move || {
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < busy {
            for i in 0..10_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
        }
    };
    match tokio::task::spawn_blocking(spin).await {
        Ok(()) => format!("burned {} ms\n", busy.as_millis()),
        Err(e) => format!("burn failed: {e}\n"),
    }
}

/// The caller's identity, as the node proxy passed it.
async fn whoami(headers: axum::http::HeaderMap) -> String {
    let peer = headers
        .get("x-meridian-peer")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("anonymous");
    format!("{peer}\n")
}

/// `tagged <tags>`, with the tags in `Cache-Tag`.
async fn tagged(
    axum::extract::Path(tags): axum::extract::Path<String>,
) -> ([(&'static str, String); 1], String) {
    let body = format!("tagged {tags}\n");
    ([("cache-tag", tags)], body)
}

/// The trace context fields a call passes on (W3C Trace Context).
const TRACE_FIELDS: [&str; 2] = ["traceparent", "tracestate"];

/// The forwarding and trace headers as they reached the instance, one `name: value` line each.
async fn forwarded(headers: axum::http::HeaderMap) -> String {
    [
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
    ]
    .iter()
    .chain(&TRACE_FIELDS)
    .map(|name| {
        let value = headers.get(*name).and_then(|v| v.to_str().ok());
        format!("{name}: {}\n", value.unwrap_or(""))
    })
    .collect()
}

/// A WebSocket answering each text message `m` with `echo: m`.
async fn echo(ws: axum::extract::WebSocketUpgrade) -> axum::response::Response {
    use axum::extract::ws::Message;
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
}

/// The value of environment variable `name` if `$HELLO_SHOW_ENV` lists it, else 404.
async fn show_env(
    axum::extract::Path(name): axum::extract::Path<String>,
) -> (axum::http::StatusCode, String) {
    let shown = var("HELLO_SHOW_ENV", "");
    if !shown.split(',').any(|listed| listed.trim() == name) {
        return (
            axum::http::StatusCode::NOT_FOUND,
            format!("{name}: not listed in HELLO_SHOW_ENV\n"),
        );
    }
    match std::env::var(&name) {
        Ok(value) => (axum::http::StatusCode::OK, value),
        Err(_) => (
            axum::http::StatusCode::NOT_FOUND,
            format!("{name}: not set\n"),
        ),
    }
}

/// Writes the query's `line` as a line of its output: standard error with `stream=stderr`,
/// else standard output.
async fn print(Query(query): Query<HashMap<String, String>>) -> (axum::http::StatusCode, String) {
    let Some(line) = query.get("line").filter(|l| !l.contains('\n')) else {
        return (
            axum::http::StatusCode::BAD_REQUEST,
            "line: give one line (?line=…)\n".to_owned(),
        );
    };
    match query.get("stream").map(String::as_str) {
        Some("stderr") => eprintln!("{line}"),
        None | Some("stdout") => println!("{line}"),
        Some(other) => {
            return (
                axum::http::StatusCode::BAD_REQUEST,
                format!("stream: `{other}` is neither stdout nor stderr\n"),
            )
        }
    }
    (axum::http::StatusCode::OK, "printed\n".to_owned())
}

/// Ends the process with status 1, as a crash would.
async fn exit() -> &'static str {
    println!("exiting on request");
    std::process::exit(1)
}

/// Fetches `url` (over the node proxy named by `HTTP_PROXY`, if set) with the request's trace
/// context and answers with its body; a call that takes over 5 s fails.
async fn call(
    headers: axum::http::HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> (axum::http::StatusCode, String) {
    let Some(url) = query.get("url") else {
        return (
            axum::http::StatusCode::BAD_REQUEST,
            "url: missing; call /call?url=http://<service>.<app>.internal:<port>/\n".to_owned(),
        );
    };
    let builder = reqwest::Client::builder().timeout(std::time::Duration::from_secs(5));
    let client = if query.contains_key("direct") {
        builder.no_proxy().build()
    } else {
        builder.build()
    };
    let Ok(client) = client else {
        return (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "no HTTP client\n".to_owned(),
        );
    };
    let mut request = client.get(url);
    for name in TRACE_FIELDS {
        if let Some(value) = headers.get(name) {
            request = request.header(name, value.as_bytes());
        }
    }
    match request.send().await {
        Ok(answer) => {
            let status = answer.status().as_u16();
            let body = answer.text().await.unwrap_or_default();
            (
                axum::http::StatusCode::OK,
                format!("{url} answered {status}: {body}"),
            )
        }
        Err(e) => (
            axum::http::StatusCode::BAD_GATEWAY,
            format!("calling {url} failed: {e}\n"),
        ),
    }
}

/// The listener of the port named `name` (`$MERIDIAN_PORT_<name>`), if the service has one.
async fn extra_port(name: &str) -> Result<Option<tokio::net::TcpListener>, std::process::ExitCode> {
    let Ok(port) = std::env::var(format!("MERIDIAN_PORT_{name}")) else {
        return Ok(None);
    };
    let address = format!("{}:{port}", var("MERIDIAN_ADDRESS", "127.0.0.1"));
    match tokio::net::TcpListener::bind(&address).await {
        Ok(listener) => {
            println!("meridian-hello serving port {name} on {address}");
            Ok(Some(listener))
        }
        Err(e) => {
            eprintln!("cannot listen on {address} (port {name}): {e}");
            Err(std::process::ExitCode::FAILURE)
        }
    }
}

/// A TCP echo: every byte a connection sends comes back; its end of stream ends the echo's.
async fn tcp_echo(listener: tokio::net::TcpListener) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let (mut reader, mut writer) = stream.split();
            if tokio::io::copy(&mut reader, &mut writer).await.is_ok() {
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut writer).await;
            }
        });
    }
}

/// The `i`-th byte `/tcp` sends: a pattern that differs from byte to byte, so that a lost or
/// repeated chunk shows.
fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(2_654_435_761) >> 13) as u8
}

/// Sends `bytes` bytes to `addr` over TCP, half-closes, reads until the other end closes, and
/// answers whether what came back is what was sent; a call that takes over 20 s fails.
async fn tcp_call(
    Query(query): Query<HashMap<String, String>>,
) -> (axum::http::StatusCode, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(addr) = query.get("addr") else {
        return (
            axum::http::StatusCode::BAD_REQUEST,
            "addr: missing; call /tcp?addr=<service>.<app>.internal:<port>&bytes=N\n".to_owned(),
        );
    };
    let Ok(bytes) = query.get("bytes").map_or(Ok(1000), |b| b.parse::<usize>()) else {
        return (
            axum::http::StatusCode::BAD_REQUEST,
            "bytes: not a number\n".to_owned(),
        );
    };
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(addr.as_str()).await?;
        let peer = stream.peer_addr()?;
        let (mut reader, mut writer) = stream.into_split();
        let sending = async move {
            let sent: Vec<u8> = (0..bytes).map(pattern).collect();
            writer.write_all(&sent).await?;
            writer.shutdown().await
        };
        let mut received = Vec::with_capacity(bytes);
        tokio::try_join!(sending, reader.read_to_end(&mut received))?;
        Ok::<_, std::io::Error>((peer, received))
    };
    match tokio::time::timeout(std::time::Duration::from_secs(20), exchange).await {
        Ok(Ok((peer, received))) => {
            let differ = (0..received.len()).find(|&i| received[i] != pattern(i));
            let verdict = match (differ, received.len() == bytes) {
                (Some(i), _) => format!("differ at byte {i}"),
                (None, true) => "intact".to_owned(),
                (None, false) => "short".to_owned(),
            };
            let received = received.len();
            let answer =
                format!("tcp {addr} ({peer}): sent {bytes}, received {received}, {verdict}\n");
            (axum::http::StatusCode::OK, answer)
        }
        Ok(Err(e)) => (
            axum::http::StatusCode::BAD_GATEWAY,
            format!("tcp {addr} failed: {e}\n"),
        ),
        Err(_) => (
            axum::http::StatusCode::GATEWAY_TIMEOUT,
            format!("tcp {addr} timed out\n"),
        ),
    }
}
