//! The public edge over HTTPS, end to end with real edges: a global control plane ordering from
//! pebble, a region with a gateway and an instance, and two `meridian edge` processes on
//! distinct loopback addresses with the same port numbers, which pebble reaches (its DNS
//! answers the domains with the edges' addresses in turn) to validate the challenges. Once the
//! domain is valid, each edge serves it over HTTPS (HTTP/2 by ALPN) and HTTP/3, advertises
//! HTTP/3 in `Alt-Svc`, and redirects plain HTTP to HTTPS.

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Buf;
use support::pebble::{Pebble, Validation};
use support::{
    agent, edge_at, gateway, tls_client, tls_connect, Deployed, Edge, RegionalPlane, AMSTERDAM,
    HELLO, PARIS,
};

const DOMAIN: &str = "shop.example.test";
/// A second domain, so that the edges pick certificates by SNI.
const OTHER: &str = "www.example.test";
const DEADLINE: Duration = Duration::from_secs(60);

fn shop(domains: &str) -> String {
    format!(
        "\
org: acme
app: shop
name: web
regions: [fra]
runtime: {{process: {{command: {HELLO}}}}}
ports: [{{name: http, port: 8080}}]
routes: [{{path_prefix: /, port: http}}]
domains: [{domains}]
health_checks: [{{http: {{port: http, path: /healthz}}, interval: 200ms, timeout: 200ms, grace_period: 5s}}]
"
    )
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
    let key = dir.path().join("secrets.key");
    let platform = Deployed::start_with(
        dir.path(),
        &shop(""),
        &[
            "--secrets-key",
            key.to_str().unwrap(),
            "--create-secrets-key",
            "--acme-directory",
            &pebble.directory,
            "--acme-ca-root",
            pebble.https_root.to_str().unwrap(),
            "--acme-email",
            "ops@example.test",
            "--acme-challenge",
            challenge,
        ],
    );
    let gateway_address = format!("127.0.{}.1:8080", subnet + 1);
    let region = RegionalPlane::start(
        &platform.global,
        &platform.token,
        "fra",
        Some(&gateway_address),
    );
    let _node = agent(&region, "fra-1", &format!("127.0.{subnet}.1"), dir.path());
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
    platform.deploy(&shop(&format!("{DOMAIN}, {OTHER}")));
    let pebble_log = || std::fs::read_to_string(dir.path().join("pebble.log")).unwrap_or_default();
    let (seen, row) = platform.cli.wait_valid(DOMAIN, pebble_log).await;
    assert_eq!(seen, ["pending", "valid"]);
    assert_eq!(row["source"], "acme", "{row}");
    platform.cli.wait_valid(OTHER, pebble_log).await;
    let valid = added.elapsed();
    for edge in &edges {
        for domain in [DOMAIN, OTHER] {
            serves_the_certificate(*edge, domain, &roots).await;
        }
    }
    let served = added.elapsed();
    eprintln!(
        "2 domains added -> valid in the API {valid:?}, served by every edge {served:?} \
         (ACME {challenge}, pebble, {} edges)",
        edges.len()
    );

    for edge in &edges {
        // The port of the URL, the address of the edge.
        let client = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(roots.as_bytes()).unwrap())
            .redirect(reqwest::redirect::Policy::none())
            .resolve(DOMAIN, *edge)
            .build()
            .unwrap();
        let answer = instance_answer(&client, &format!("https://{DOMAIN}:{https_port}/")).await;
        assert_eq!(answer.version(), http::Version::HTTP_2, "{answer:?}");
        assert_eq!(
            answer.headers()["alt-svc"].to_str().unwrap(),
            format!("h3=\":{https_port}\"; ma=86400")
        );
        assert!(answer.text().await.unwrap().contains(" in fra "));

        let plain = client
            .get(format!("http://{DOMAIN}:{http_port}/where?x=1"))
            .send()
            .await
            .unwrap();
        assert_eq!(plain.status(), 308, "{plain:?}");
        assert_eq!(
            plain.headers()["location"],
            format!("https://{DOMAIN}:{https_port}/where?x=1").as_str()
        );

        let (status, body) = http3_get(*edge, &roots).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains(" in fra "), "{body}");
    }
}

/// Waits until the edge at `https` completes a TLS handshake for `domain` that verifies
/// against `roots`.
async fn serves_the_certificate(https: SocketAddr, domain: &str, roots: &str) {
    let end = Instant::now() + DEADLINE;
    loop {
        let handshake = tls_connect(&https.to_string(), domain, roots, &[b"h2"]).await;
        match handshake {
            Ok(_) => return,
            Err(e) => assert!(Instant::now() < end, "{https} never served {domain}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
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

/// A GET of `/` for the domain over HTTP/3 (quinn and h3) at `address`, trusting `roots`:
/// the status and the body.
async fn http3_get(address: SocketAddr, roots: &str) -> (u16, String) {
    let tls = tls_client(roots, &[b"h3"]);
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
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
    let request = http::Request::get(format!("https://{DOMAIN}/"))
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
