//! TCP services in the tests: meridian-hello with its TCP echo port, the addresses its
//! answers name, and a caller of another org at the echo's mesh port.

use std::path::Path;
use std::time::Duration;

use super::{Agent, Deployed, RegionalPlane, HELLO};

/// The TCP echo port of the echo service (meridian-hello's `echo` port).
pub const ECHO_PORT: u16 = 7000;

/// meridian-hello as `org`/shop/`name` in `regions`, run as `runtime` (a YAML flow map:
/// `{process: …}` or `{image: …}`), with its HTTP port (routed, at domain
/// `<name>.<org>.example.com`, health-checked), and its TCP echo port when `echo`.
pub fn hello_service(org: &str, name: &str, runtime: &str, echo: bool, regions: &str) -> String {
    let echo_port = if echo {
        format!(", {{name: echo, port: {ECHO_PORT}, protocol: tcp}}")
    } else {
        String::new()
    };
    format!(
        "\
org: {org}
app: shop
name: {name}
regions: [{regions}]
runtime: {runtime}
ports: [{{name: http, port: 8080}}{echo_port}]
routes: [{{path_prefix: /, port: http}}]
domains: [{name}.{org}.example.com]
health_checks: [{{http: {{port: http, path: /healthz}}, interval: 200ms, timeout: 200ms, grace_period: 5s}}]
"
    )
}

/// Deploys the callers of the echo, meridian-hello processes in fra without an echo port:
/// acme/shop/web (the echo's org) and other/shop/client (another org); their definitions are
/// written in `dir`.
pub fn deploy_callers(platform: &Deployed, dir: &Path) {
    let process = format!("{{process: {{command: {HELLO}}}}}");
    for (org, name) in [("acme", "web"), ("other", "client")] {
        let file = dir.join(format!("{org}-{name}.yaml"));
        std::fs::write(&file, hello_service(org, name, &process, false, "fra")).unwrap();
        platform.cli.ok(&["deploy", "-f", file.to_str().unwrap()]);
    }
}

/// The address in a meridian-hello greeting or `/tcp` answer: `… (…, <address>)` or
/// `tcp <addr> (<address>): …`.
pub fn address_in(answer: &str, before: &str, after: char) -> String {
    let start = answer.find(before).map_or(0, |at| at + before.len());
    answer[start..]
        .split(after)
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// Connects to `address`:`port` over mutual TLS with a genuine workload certificate of
/// other/shop/client (from the region, as a rogue agent would get one), sends some bytes,
/// half-closes, and returns what came back before the connection closed.
pub async fn other_org_exchange(
    region: &RegionalPlane,
    address: std::net::Ipv4Addr,
    port: u16,
) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let trust_domain = "meridian.local";
    let other = meridian_identity::SpiffeId::workload(trust_domain, "other", "shop", "client");
    let echo = meridian_identity::SpiffeId::workload(trust_domain, "acme", "shop", "echo");
    let tls = super::rogue_client(region, &other, echo).await;
    let tcp = tokio::net::TcpStream::connect((address, port))
        .await
        .unwrap();
    let mut stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
        .connect(meridian_identity::mesh_server_name(), tcp)
        .await
        .unwrap();
    let _ = stream.write_all(b"let me in").await;
    let _ = stream.shutdown().await;
    let mut received = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut received))
        .await
        .expect("the connection closed in time");
    if let Err(e) = read {
        // Closed without close_notify, or reset: closed all the same.
        assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
            ),
            "{e}"
        );
    }
    received
}

/// Asserts that a caller of another org ([`other_org_exchange`]) at the echo's mesh port on
/// `address`, the node side of instance acme/shop/echo-0 on `node`, is closed before a byte is
/// relayed, and counted: the port's first denial, after `relayed` connections relayed; returns
/// the node's metrics.
pub async fn assert_other_org_refused(
    region: &RegionalPlane,
    node: &Agent,
    address: std::net::Ipv4Addr,
    relayed: u32,
) -> String {
    let refused = other_org_exchange(region, address, meridian_agent::mesh_port(1)).await;
    assert_eq!(refused, b"");
    let metrics = super::metrics(&node.admin).await;
    let denied = r#"meridian_proxy_mesh_denied_total{listener="in/acme/shop/echo-0/echo"} 1"#;
    assert!(metrics.contains(denied), "{metrics}");
    let connections =
        r#"meridian_proxy_tcp_connections_total{listener="in/acme/shop/echo-0/echo"}"#;
    assert!(
        metrics.contains(&format!("{connections} {relayed}\n")),
        "{metrics}"
    );
    metrics
}
