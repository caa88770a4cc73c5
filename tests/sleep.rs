//! Scale to zero (`scale: {min: 0, sleep: …}`): an idle service's instance sleeps, light
//! (frozen) then deep (stopped), and the first request through the region's gateway is held by
//! its node proxy while the instance wakes, then answered; a WebSocket held open keeps it
//! awake, and so does a plain TCP connection to a `tcp` port; requests beyond the wake queue or past the wake timeout are answered `503` with
//! `Retry-After`. `meridian status` and the API show `sleeping (light)` / `sleeping (deep)`,
//! and the agent counts sleeps and wakes.

mod support;

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use support::{
    answers, gateway, logging_agent, said, through, Deployed, RegionalPlane, HELLO, HELLO_HOST,
};
use tokio_tungstenite::tungstenite::Message;

/// acme/shop/hello in fra with `scale.sleep` `sleep`, run as `process` (YAML), health-checked
/// every 200 ms with a grace period of `grace`.
fn sleepy_hello(sleep: &str, process: &str, grace: &str) -> String {
    format!(
        "\
org: acme
app: shop
name: hello
regions: [fra]
scale: {{min: 0, max: 1, sleep: {sleep}}}
runtime: {{process: {process}}}
ports: [{{name: http, port: 8080}}]
routes: [{{path_prefix: /, port: http}}]
domains: [{HELLO_HOST}]
health_checks: [{{http: {{port: http, path: /healthz}}, interval: 200ms, timeout: 200ms, grace_period: {grace}}}]
"
    )
}

/// meridian-hello as a process.
fn hello_process() -> String {
    format!("{{command: {HELLO}, env: {{GREETING: hello}}}}")
}

/// A platform with region fra, its gateway listening at `gateway_at` and one agent handing
/// out addresses from `addresses`, running `definition`; what a request through the gateway
/// reaches.
struct Platform {
    platform: Deployed,
    region: RegionalPlane,
    agent: support::Agent,
    _gateway: support::Killed,
    address: String,
}

impl Platform {
    async fn start(
        dir: &std::path::Path,
        definition: &str,
        gateway_at: &str,
        addresses: &str,
    ) -> Platform {
        let platform = Deployed::start(dir, definition);
        let region =
            RegionalPlane::start(&platform.global, &platform.token, "fra", Some(gateway_at));
        let agent = logging_agent(&region, "one", addresses, dir);
        let (gateway, address) = gateway(&region, dir).await;
        Platform {
            platform,
            region,
            agent,
            _gateway: gateway,
            address,
        }
    }

    /// Waits until hello's instance answers through the gateway.
    async fn hello_answers(&self) {
        answers(&self.address, HELLO_HOST, "/", "hello from hello hello-0").await;
    }

    /// Waits until the region's state of hello is `state`.
    async fn until_state(&self, state: &str) -> serde_json::Value {
        self.platform
            .status_until("hello", state, |row| row["state"] == state)
            .await
    }

    /// The agent's value of metric `line` (the text before the value), 0 if absent.
    async fn metric(&self, line: &str) -> f64 {
        support::metrics(&self.agent.admin)
            .await
            .lines()
            .find_map(|l| l.strip_prefix(line)?.trim().parse().ok())
            .unwrap_or(0.0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_service_sleeps_light_then_deep_and_the_first_request_wakes_it() {
    let dir = tempfile::tempdir().unwrap();
    let definition = sleepy_hello(
        "{after: 1s, mode: light, deep_after: 4s}",
        &hello_process(),
        "1s",
    );
    let platform =
        Platform::start(dir.path(), &definition, "127.0.150.1:8080", "127.0.150.10").await;
    platform.hello_answers().await;

    // Idle for 1 s: frozen, still routed to.
    let row = platform.until_state("sleeping (light)").await;
    assert_eq!(
        row["healthy"], 1,
        "an instance asleep takes requests: {row}"
    );
    let table = platform
        .platform
        .cli
        .ok(&["status", "hello", "--app", "shop"]);
    assert!(table.contains("sleeping (light)"), "{table}");
    let light = r#"meridian_agent_instance_sleeps_total{mode="light"}"#;
    assert_eq!(platform.metric(light).await, 1.0);

    // The first request is held while it thaws, then answered.
    let (status, body) = through(&platform.address, HELLO_HOST, "/").await;
    assert_eq!(
        (status, body.contains("hello from hello hello-0")),
        (200, true),
        "{body}"
    );
    assert_eq!(
        platform
            .metric(r#"meridian_agent_instance_wakes_total{mode="light"}"#)
            .await,
        1.0
    );

    // Idle again: frozen after 1 s, stopped 4 s later; a request starts it again.
    platform.until_state("sleeping (deep)").await;
    let (status, body) = through(&platform.address, HELLO_HOST, "/").await;
    assert_eq!(
        (status, body.contains("hello from hello hello-0")),
        (200, true),
        "{body}"
    );
    assert_eq!(
        platform
            .metric(r#"meridian_agent_instance_wakes_total{mode="deep"}"#)
            .await,
        1.0
    );
    let log = platform.agent.log();
    assert_eq!(said(&platform.agent, "instance awake"), 2, "{log}");
    let wake_seconds = r#"meridian_agent_instance_wake_seconds_count{mode="deep"}"#;
    assert_eq!(platform.metric(wake_seconds).await, 1.0);
    assert_eq!(said(&platform.agent, "restarting instance"), 0, "{log}");
    // The region logged the sleeps and wakes its agent reported.
    let region = platform.region.log();
    assert!(region.contains("instance asleep"), "{region}");
    assert!(region.contains("instance awake"), "{region}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_held_open_keeps_the_service_awake() {
    let dir = tempfile::tempdir().unwrap();
    let definition = sleepy_hello("{after: 1s}", &hello_process(), "1s");
    let platform =
        Platform::start(dir.path(), &definition, "127.0.150.2:8080", "127.0.150.20").await;
    platform.hello_answers().await;

    // A WebSocket (which wakes the instance if it slept already), quiet once open.
    let stream = tokio::net::TcpStream::connect(&platform.address)
        .await
        .unwrap();
    let request = support::websocket_request(&format!("ws://{HELLO_HOST}/ws"), HELLO_HOST);
    let (mut socket, response) = tokio_tungstenite::client_async(request, stream)
        .await
        .unwrap();
    assert_eq!(response.status(), 101);
    assert!(echoes(&mut socket, "first").await);
    // Awake (it may have slept before the socket opened: the upgrade woke it).
    platform.until_state("running").await;
    let asleep = said(&platform.agent, "instance asleep");

    // Three times `after` with the socket open and silent: it never sleeps, and still echoes.
    let held = Instant::now();
    while held.elapsed() < Duration::from_secs(3) {
        let row = platform.platform.first_region_status("hello");
        assert_eq!(row["state"], "running", "asleep under a WebSocket: {row}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        said(&platform.agent, "instance asleep"),
        asleep,
        "{}",
        platform.agent.log()
    );
    assert!(echoes(&mut socket, "still").await);

    // Closed: it sleeps.
    socket.close(None).await.unwrap();
    drop(socket);
    platform.until_state("sleeping (light)").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_connection_held_open_keeps_the_service_awake() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    // acme/shop/echo sleeps; acme/shop/web, awake, names its TCP port in its environment: a
    // relay port of web's on the host, where the node proxy relays to the echo's node proxy.
    let process = format!("{{process: {{command: {HELLO}}}}}");
    let echo = support::tcp::hello_service("acme", "echo", &process, true, "fra")
        + "scale: {min: 0, max: 1, sleep: {after: 1s}}\n";
    let platform = Platform::start(dir.path(), &echo, "127.0.182.5:8080", "127.0.182.30").await;
    let variable = "MERIDIAN_TCP_ECHO_SHOP_ECHO";
    let shows = format!("{{process: {{command: {HELLO}, env: {{HELLO_SHOW_ENV: {variable}}}}}}}");
    let web = support::tcp::hello_service("acme", "web", &shows, false, "fra");
    platform.platform.deploy(&web);
    let relay = answers(
        &platform.address,
        "web.acme.example.com",
        &format!("/env/{variable}"),
        "127.0.182.",
    )
    .await;
    let echo_state = |state: &'static str| {
        platform
            .platform
            .status_until("echo", state, move |row| row["state"] == state)
    };
    echo_state("sleeping (light)").await;

    // A connection wakes it and is echoed; quiet, it keeps the echo awake.
    let mut connection = tokio::net::TcpStream::connect(relay.trim()).await.unwrap();
    let mut echoed = [0u8; 5];
    connection.write_all(b"first").await.unwrap();
    connection.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"first");
    echo_state("running").await;
    let asleep = said(&platform.agent, "instance asleep");
    let held = Instant::now();
    while held.elapsed() < Duration::from_secs(3) {
        let row = platform.platform.first_region_status("echo");
        assert_eq!(row["state"], "running", "asleep under a connection: {row}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(said(&platform.agent, "instance asleep"), asleep);
    connection.write_all(b"still").await.unwrap();
    connection.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"still");

    // Closed: it sleeps.
    drop(connection);
    echo_state("sleeping (light)").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_wake_queue_or_past_the_wake_timeout_requests_get_503_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    // An application that takes 3 s to start, slept deep: a wake outlasts the 500 ms timeout.
    let process = format!("{{command: sh, args: ['-c', 'sleep 3; exec {HELLO}']}}");
    let definition = sleepy_hello(
        "{after: 1s, mode: deep, queue: 1, wake_timeout: 500ms}",
        &process,
        "30s",
    );
    let platform =
        Platform::start(dir.path(), &definition, "127.0.150.3:8080", "127.0.150.30").await;
    platform.hello_answers().await;
    platform.until_state("sleeping (deep)").await;

    // Two at once: one is held (the queue's one place) until the timeout, the other finds the
    // queue full.
    let failed_before = support::inbound_5xx(&platform.agent.admin).await;
    let (first, second) = tokio::join!(
        support::root_with_retry_after(&platform.address, HELLO_HOST),
        support::root_with_retry_after(&platform.address, HELLO_HOST)
    );
    let mut reasons: Vec<String> = [&first, &second]
        .iter()
        .map(|(status, retry_after, body)| {
            assert_eq!(*status, 503, "{body}");
            assert_eq!(retry_after.as_deref(), Some("1"), "{body}");
            body.trim().to_owned()
        })
        .collect();
    reasons.sort();
    assert_eq!(reasons, ["503 wake_queue_full", "503 wake_timeout"]);
    // Counted by the node proxy's route (not as the instance's failures).
    let failed = support::inbound_5xx(&platform.agent.admin).await;
    assert_eq!(failed - failed_before, 2.0);

    // The held request woke it: once started, it answers.
    platform.hello_answers().await;
}

/// Whether `socket` echoes `word` (meridian-hello's `/ws` answers `echo: <word>`).
async fn echoes(
    socket: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    word: &str,
) -> bool {
    socket.send(Message::text(word)).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), socket.next()).await;
    matches!(answer, Ok(Some(Ok(Message::Text(t)))) if t.as_str() == format!("echo: {word}"))
}

/// hello's row for `region` in `meridian status hello --app shop -o json`.
fn region_row(platform: &Deployed, region: &str) -> serde_json::Value {
    let status = platform.cli.json(&["status", "hello", "--app", "shop"]);
    let regions = status["regions"].as_array().cloned().unwrap_or_default();
    let row = regions.into_iter().find(|r| r["region"] == region);
    row.unwrap_or_default()
}

/// The region that answered `GET /` of hello through `edge` (`… in <region> …`), with the
/// status.
async fn answered_from(edge: &str) -> (u16, String) {
    let (status, body) = through(edge, HELLO_HOST, "/").await;
    let region = body
        .split(" in ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_default();
    (status, region.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_elsewhere_the_first_request_goes_to_the_warm_region_and_later_ones_stay_local_once_awake(
) {
    let dir = tempfile::tempdir().unwrap();
    // hello sleeps deep in fra after 2 s idle, and stays awake in nue (an hour), a little
    // farther from the edge in Paris (about 480 and 640 km: under 2 ms more round trip, far
    // less than a deep wake).
    let definition = format!(
        "\
org: acme
app: shop
name: hello
regions: [fra, nue]
scale: {{min: 0, max: 1, sleep: {{after: 2s, mode: deep}}}}
overrides: {{nue: {{scale: {{min: 0, max: 1, sleep: {{after: 1h, mode: light}}}}}}}}
runtime: {{process: {}}}
ports: [{{name: http, port: 8080}}]
routes: [{{path_prefix: /, port: http}}]
domains: [{HELLO_HOST}]
health_checks: [{{http: {{port: http, path: /healthz}}, interval: 200ms, timeout: 200ms, grace_period: 1s}}]
",
        hello_process()
    );
    let fra_only = definition.replace("[fra, nue]", "[fra]").replace(
        "overrides: {nue: {scale: {min: 0, max: 1, sleep: {after: 1h, mode: light}}}}\n",
        "",
    );
    let platform = Deployed::start_on(dir.path(), &fra_only, "127.0.184.40");
    platform
        .cli
        .ok(&["region", "add", "nue", "--lat", "49.45", "--lon", "11.08"]);
    platform.deploy(&definition);
    let (global, token) = (&platform.global, platform.token.as_str());
    let fra = RegionalPlane::start_on(
        global,
        token,
        "fra",
        Some("127.0.184.41:8080"),
        "127.0.184.41",
    );
    let nue = RegionalPlane::start_on(
        global,
        token,
        "nue",
        Some("127.0.184.42:8080"),
        "127.0.184.42",
    );
    let _fra_agent = logging_agent(&fra, "fra-1", "127.0.184.50", dir.path());
    let _nue_agent = logging_agent(&nue, "nue-1", "127.0.184.60", dir.path());
    let (_fra_gateway, _) = gateway(&fra, dir.path()).await;
    let (_nue_gateway, _) = gateway(&nue, dir.path()).await;
    let edge = support::edge_at(
        &platform,
        &fra,
        dir.path(),
        &support::PARIS,
        "127.0.184.43:0",
        None,
    );
    let edge = edge.http.clone();
    let end = Instant::now() + Duration::from_secs(90);
    let mut first = None;
    while first.is_none() {
        // Asleep in fra with a wake measured (the first request of a sleep, while none was
        // measured, wakes it where it is): once the edge knows, a request goes to nue.
        let row = region_row(&platform, "fra");
        if row["state"] == "sleeping (deep)" && row["wake_ms"].as_u64().is_some() {
            let (status, region) = answered_from(&edge).await;
            assert_eq!(status, 200, "{region}");
            if region == "nue" {
                first = Some(row.clone());
            }
        } else if row["state"] == "sleeping (deep)" {
            let (status, region) = answered_from(&edge).await;
            assert_eq!((status, region.as_str()), (200, "fra"), "the first wake");
        }
        assert!(Instant::now() < end, "never answered from nue: {row}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The request nudged fra awake: the next ones are answered there, not one failing.
    loop {
        let (status, region) = answered_from(&edge).await;
        assert_eq!(status, 200, "{region}");
        if region == "fra" {
            break;
        }
        assert!(
            Instant::now() < end,
            "fra never took the requests back after {first:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
