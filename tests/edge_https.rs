//! The public edge over HTTPS, end to end with real edges: a global control plane ordering from
//! pebble, a region with a gateway and an instance, and two `meridian edge` processes on
//! distinct loopback addresses with the same port numbers, which pebble reaches (its DNS
//! answers the domains with the edges' addresses in turn) to validate the challenges. Once the
//! domain is valid, each edge serves it over HTTPS (HTTP/2 by ALPN) and HTTP/3, advertises
//! HTTP/3 in `Alt-Svc`, redirects plain HTTP to HTTPS and tells the instance the client's
//! address and `https`; a TLS session made with one edge resumes on the other. While the
//! global control plane is away the edges serve on; after it is back, a domain the service
//! drops is withdrawn from every edge, and HSTS, once asked for, is sent over HTTPS.

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Buf;
use rustls::HandshakeKind;
use support::pebble::{Pebble, Validation};
use support::{
    agent_with_env, edge_at, gateway, shop_web, tls_client, tls_client_of, tls_connect,
    tls_connect_with, Deployed, Edge, RegionalPlane, AMSTERDAM, HELLO, LONDON, PARIS,
};

const DOMAIN: &str = "shop.example.test";
/// A second domain, so that the edges pick certificates by SNI.
const OTHER: &str = "www.example.test";
const DEADLINE: Duration = Duration::from_secs(60);

/// The shop, meridian-hello, claiming `domains`, with `more` YAML lines.
fn shop(domains: &str, more: &str) -> String {
    let health = "health_checks: [{http: {port: http, path: /healthz}, interval: 200ms, \
                  timeout: 200ms, grace_period: 5s}]\n";
    shop_web(HELLO, domains, &format!("{health}{more}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_edges_answer_http_01_then_serve_https_http2_and_http3() {
    edges_serve_https("http-01", 90).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_edges_answer_tls_alpn_01_then_serve_https_http2_and_http3() {
    edges_serve_https("tls-alpn-01", 94).await;
}

/// Whether `port` is free on each of `addresses`, over TCP and (if `udp`) UDP.
fn free_everywhere(port: u16, addresses: &[Ipv4Addr], udp: bool) -> bool {
    addresses.iter().all(|ip| {
        std::net::TcpListener::bind((*ip, port)).is_ok()
            && (!udp || std::net::UdpSocket::bind((*ip, port)).is_ok())
    })
}

/// A port number free on each of `addresses` (over UDP too if `udp`), other than `other`.
fn shared_port(addresses: &[Ipv4Addr], udp: bool, other: u16) -> u16 {
    loop {
        let probe = std::net::TcpListener::bind((addresses[0], 0)).unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        if port != other && free_everywhere(port, addresses, udp) {
            return port;
        }
    }
}

/// The whole scenario with pebble asking for `challenge`; the region's addresses start at
/// 127.0.`subnet`.1 (node), then 127.0.`subnet + 1`.1 (gateway) and 127.0.`subnet + 2`.2 and
/// .3 (the two edges), as tests run at the same time.
async fn edges_serve_https(challenge: &str, subnet: u8) {
    let dir = tempfile::tempdir().unwrap();
    let ips = [
        Ipv4Addr::new(127, 0, subnet + 2, 2),
        Ipv4Addr::new(127, 0, subnet + 2, 3),
    ];
    let http_port = shared_port(&ips, false, 0);
    let https_port = shared_port(&ips, true, http_port);
    let validation = Validation {
        addresses: ips.to_vec(),
        http_port,
        tls_port: https_port,
    };
    let Some(pebble) = Pebble::start_validating(dir.path(), validation).await else {
        return;
    };
    let args = pebble.control_args(&dir.path().join("secrets.key"), challenge);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut platform = Deployed::start_with(dir.path(), &shop("", ""), &args);
    let gateway_address = format!("127.0.{}.1:8080", subnet + 1);
    let region = RegionalPlane::start(
        &platform.global,
        &platform.token,
        "fra",
        Some(&gateway_address),
    );
    // The agent says when it stops an instance.
    let addresses = format!("127.0.{subnet}.1");
    let isolation = ["--instance-addresses", &addresses, "--isolation", "host"];
    let info = [("MERIDIAN_LOG", "info")];
    let node = agent_with_env(&region, "fra-1", dir.path(), &isolation, &info);
    let _gateway = gateway(&region, dir.path()).await;
    let _edges: Vec<Edge> = [PARIS, AMSTERDAM]
        .iter()
        .zip(ips)
        .map(|(location, ip)| {
            let (http, https) = (format!("{ip}:{http_port}"), format!("{ip}:{https_port}"));
            edge_at(
                &platform,
                &region,
                dir.path(),
                location,
                &http,
                Some(&https),
            )
        })
        .collect();
    // Each edge's HTTPS listener (HTTP/3 on its port over UDP; plain HTTP on the same IP).
    let edges: Vec<SocketAddr> = ips.map(|ip| SocketAddr::from((ip, https_port))).to_vec();
    let roots = pebble.issuing_root().await;

    // The domains are added: pending, then valid, then served by every edge. pebble validates
    // each challenge three times (its perspectives), each resolving the name anew, and its DNS
    // answers with the edges in turn: both edges answer.
    let added = Instant::now();
    platform.deploy(&shop(&format!("{DOMAIN}, {OTHER}"), ""));
    let pebble_log = || std::fs::read_to_string(dir.path().join("pebble.log")).unwrap_or_default();
    let (seen, row) = platform.cli.wait_valid(DOMAIN, pebble_log).await;
    assert_eq!(seen, ["pending", "valid"]);
    assert_eq!(row["source"], "acme", "{row}");
    assert!(row["issuer"].as_str().unwrap().contains("Pebble"), "{row}");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    assert!(
        row["not_after"].as_u64().unwrap() > now.unwrap().as_secs(),
        "{row}"
    );
    platform.cli.wait_valid(OTHER, pebble_log).await;
    let valid = added.elapsed();
    for edge in &edges {
        for domain in [DOMAIN, OTHER] {
            wait_serving(*edge, domain, &roots, true).await;
        }
    }
    let served = added.elapsed();
    eprintln!(
        "2 domains added -> valid in the API {valid:?}, served by every edge {served:?} \
         (ACME {challenge}, pebble, {} edges)",
        edges.len()
    );

    for edge in &edges {
        serves_https_http2_and_http3(*edge, http_port, &roots).await;
    }
    sessions_resume_across(&edges, &roots).await;

    // An edge that starts now serves the domain over HTTPS, and redirects, from the start.
    let late_ip = Ipv4Addr::new(127, 0, subnet + 2, 4);
    let late = edge_at(
        &platform,
        &region,
        dir.path(),
        &LONDON,
        &format!("{late_ip}:0"),
        Some(&format!("{late_ip}:0")),
    );
    let late_https: SocketAddr = late.https.as_deref().unwrap().parse().unwrap();
    let handshake = tls_connect(&late_https.to_string(), DOMAIN, &roots, &[b"h2"]).await;
    assert!(handshake.is_ok(), "{handshake:?}");
    let plain = client_of(late_https, &roots)
        .get(format!(
            "http://{DOMAIN}:{}/",
            late.http.rsplit(':').next().unwrap()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 308, "{plain:?}");
    // Both listeners were asked for port 0: the redirect names the port bound.
    let location = format!("https://{DOMAIN}:{}/", late_https.port());
    assert_eq!(plain.headers()["location"], location.as_str());
    drop(late);

    // Adding the domains changed only what the edges read: the instance ran on.
    assert_eq!(
        node.log().matches("stopping instance").count(),
        0,
        "{}",
        node.log()
    );

    // The global control plane goes away: the edges serve what they hold. Back, it shows the
    // same certificate, valid.
    platform.global.stop();
    for edge in &edges {
        let url = format!("https://{DOMAIN}:{https_port}/");
        instance_answer(&client_of(*edge, &roots), &url).await;
        assert_eq!(http3_get(*edge, "/", &roots).await.0, 200);
    }
    platform.global.start_again();
    let (_, again) = platform.cli.wait_valid(DOMAIN, pebble_log).await;
    assert_eq!(again["not_after"], row["not_after"], "{again}");

    // The service drops a domain and asks for HSTS.
    let hsts = "https: {hsts: {max_age: 1d}}\n";
    platform.deploy(&shop(DOMAIN, hsts));
    for edge in &edges {
        withdraws_the_dropped_domain_and_sends_hsts(*edge, http_port, &roots).await;
    }

    // A deploy that changes what the instance sees replaces it: a new instance starts, and
    // the old one stops once the new one serves; the deploy before changed only what the
    // edges read (a domain dropped, HSTS) and, like the global control plane's restart, left
    // it running.
    let greeting = "overrides: {fra: {env: {GREETING: howdy}}}\n";
    platform.deploy(&shop(DOMAIN, &format!("{hsts}{greeting}")));
    let client = client_of(edges[0], &roots);
    let url = format!("https://{DOMAIN}:{https_port}/");
    let end = Instant::now() + DEADLINE;
    while !instance_answer(&client, &url)
        .await
        .text()
        .await
        .unwrap()
        .starts_with("howdy ")
    {
        assert!(Instant::now() < end, "the new greeting never came");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stops = || node.log().matches("stopping instance").count();
    while stops() < 1 {
        assert!(Instant::now() < end, "the old instance never stopped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stops(), 1, "{}", node.log());
}

/// Once the service dropped `OTHER` and asked for HSTS, the edge whose HTTPS listener is
/// `https` (plain HTTP on its IP at `http_port`) withdraws `OTHER`'s certificate (TLS for it
/// is refused, its plain HTTP is not routed) and sends HSTS over HTTPS only.
async fn withdraws_the_dropped_domain_and_sends_hsts(
    https: SocketAddr,
    http_port: u16,
    roots: &str,
) {
    let port = https.port();
    wait_serving(https, OTHER, roots, false).await;
    let client = client_of(https, roots);
    // The certificate and the routes are separate xDS resources: the route to `OTHER` (its
    // redirect to HTTPS) may go a moment after the certificate.
    let end = Instant::now() + DEADLINE;
    loop {
        let other = client.get(format!("http://{OTHER}:{http_port}/")).send();
        let status = other.await.unwrap().status();
        if status == 404 {
            break;
        }
        assert!(
            Instant::now() < end,
            "{OTHER} still answers {status} over HTTP"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = format!("https://{DOMAIN}:{port}/");
    loop {
        let answer = instance_answer(&client, &url).await;
        let hsts = answer.headers().get("strict-transport-security");
        if hsts.is_some_and(|v| v == "max-age=86400") {
            break;
        }
        assert!(Instant::now() < end, "no HSTS from {https}: {hsts:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let plain = client.get(format!("http://{DOMAIN}:{http_port}/")).send();
    let plain = plain.await.unwrap();
    assert_eq!(plain.status(), 308);
    assert!(!plain.headers().contains_key("strict-transport-security"));
}

/// What the instance saw of the forwarding headers, in its answer to `/forwarded`: the value
/// of `name`.
fn forwarded<'a>(seen: &'a str, name: &str) -> &'a str {
    let prefix = format!("{name}: ");
    let line = seen.lines().find(|l| l.starts_with(&prefix));
    &line.unwrap_or_else(|| panic!("no {name}: {seen}"))[prefix.len()..]
}

/// The edge whose HTTPS listener is `https` (plain HTTP on its IP at `http_port`) serves the
/// domain over TLS with HTTP/2 (ALPN), advertising HTTP/3, which answers too; it redirects
/// plain HTTP; the instance sees the client's address and `https`.
async fn serves_https_http2_and_http3(https: SocketAddr, http_port: u16, roots: &str) {
    let port = https.port();
    let client = client_of(https, roots);
    let answer = instance_answer(&client, &format!("https://{DOMAIN}:{port}/")).await;
    assert_eq!(answer.version(), http::Version::HTTP_2, "{answer:?}");
    assert_eq!(
        answer.headers()["alt-svc"].to_str().unwrap(),
        format!("h3=\":{port}\"; ma=86400")
    );
    assert!(answer.text().await.unwrap().contains(" in fra "));
    let seen = instance_answer(&client, &format!("https://{DOMAIN}:{port}/forwarded"))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        forwarded(&seen, "x-forwarded-for").starts_with("127.0.0.77, "),
        "{seen}"
    );
    assert_eq!(forwarded(&seen, "x-forwarded-proto"), "https", "{seen}");
    let host = format!("{DOMAIN}:{port}");
    assert_eq!(forwarded(&seen, "x-forwarded-host"), host, "{seen}");
    let element = format!("for=127.0.0.77;proto=https;host=\"{host}\", ");
    assert!(
        forwarded(&seen, "forwarded").starts_with(&element),
        "{seen}"
    );

    let plain = client
        .get(format!("http://{DOMAIN}:{http_port}/where?x=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 308, "{plain:?}");
    assert_eq!(
        plain.headers()["location"],
        format!("https://{DOMAIN}:{port}/where?x=1").as_str()
    );

    let (status, body) = http3_get(https, "/", roots).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(" in fra "), "{body}");
    let (_, seen) = http3_get(https, "/forwarded", roots).await;
    assert!(
        forwarded(&seen, "x-forwarded-for").starts_with("127.0.0.78, "),
        "{seen}"
    );
    assert_eq!(forwarded(&seen, "x-forwarded-proto"), "https", "{seen}");
}

/// A TLS session (1.3, and 1.2) made with the first of `edges` resumes on every other: the
/// edges seal their tickets with the same keys (from the global control plane).
async fn sessions_resume_across(edges: &[SocketAddr], roots: &str) {
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let config = Arc::new(tls_client_of(&[version], roots, &[b"http/1.1"]));
        session_resumes_across(config, edges).await;
    }
}

/// A session made with `config` at the first of `edges` resumes on every other.
async fn session_resumes_across(config: Arc<rustls::ClientConfig>, edges: &[SocketAddr]) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut first = tls_connect_with(config.clone(), &edges[0].to_string(), DOMAIN)
        .await
        .unwrap();
    assert_eq!(
        first.get_ref().1.handshake_kind(),
        Some(HandshakeKind::Full)
    );
    // The tickets come after the handshake: read an answer.
    let request = format!("GET / HTTP/1.1\r\nhost: {DOMAIN}\r\nconnection: close\r\n\r\n");
    first.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    first.read_to_end(&mut answer).await.unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    for edge in &edges[1..] {
        let resumed = tls_connect_with(config.clone(), &edge.to_string(), DOMAIN)
            .await
            .unwrap();
        assert_eq!(
            resumed.get_ref().1.handshake_kind(),
            Some(HandshakeKind::Resumed),
            "the session made with {} did not resume on {edge} ({:?})",
            edges[0],
            resumed.get_ref().1.protocol_version()
        );
    }
}

/// Waits until the edge at `https` completes a TLS handshake for `domain` that verifies
/// against `roots` (if `serving`), or refuses it (if not).
async fn wait_serving(https: SocketAddr, domain: &str, roots: &str, serving: bool) {
    let end = Instant::now() + DEADLINE;
    loop {
        let handshake = tls_connect(&https.to_string(), domain, roots, &[b"h2"]).await;
        if handshake.is_ok() == serving {
            return;
        }
        assert!(
            Instant::now() < end,
            "{https} never went serving {domain}: {serving}; {:?}",
            handshake.err()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A client of the edge whose HTTPS listener is `https` (for every URL's host and port: the
/// edge's address, the URL's port), at 127.0.0.77, trusting `roots`, following no redirect.
fn client_of(https: SocketAddr, roots: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(roots.as_bytes()).unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .resolve(DOMAIN, https)
        .resolve(OTHER, https)
        .local_address("127.0.0.77".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap()
}

/// The first answer 200 to a GET of `url`, once the instance answers through the edge.
async fn instance_answer(client: &reqwest::Client, url: &str) -> reqwest::Response {
    let end = Instant::now() + DEADLINE;
    loop {
        let answer = client.get(url).send().await;
        match answer {
            Ok(answer) if answer.status() == 200 => return answer,
            other => assert!(Instant::now() < end, "{url} never answered: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A GET of `path` for the domain over HTTP/3 (quinn and h3) at `address` from 127.0.0.78,
/// trusting `roots`: the status and the body.
async fn http3_get(address: SocketAddr, path: &str, roots: &str) -> (u16, String) {
    let tls = tls_client(roots, &[b"h3"]);
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.78:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let connecting = endpoint.connect(address, DOMAIN).unwrap();
    let connection = tokio::time::timeout(Duration::from_secs(10), connecting)
        .await
        .expect("the QUIC handshake took too long")
        .unwrap();
    let (mut driver, mut requests) = h3::client::new(h3_quinn::Connection::new(connection))
        .await
        .unwrap();
    let drive = tokio::spawn(async move { std::future::poll_fn(|cx| driver.poll_close(cx)).await });
    let request = http::Request::get(format!("https://{DOMAIN}{path}"))
        .body(())
        .unwrap();
    let mut stream = requests.send_request(request).await.unwrap();
    stream.finish().await.unwrap();
    let response = stream.recv_response().await.unwrap();
    let mut body = Vec::new();
    while let Some(mut chunk) = stream.recv_data().await.unwrap() {
        body.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
    }
    drive.abort();
    (response.status().as_u16(), String::from_utf8(body).unwrap())
}
