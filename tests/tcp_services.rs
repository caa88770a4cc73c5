//! TCP services: a port declared `protocol: tcp` is reached by name and by virtual IP from the
//! instances of services that may reach it, over mutual TLS between node proxies; bytes come
//! back intact (a large stream, a half-closed connection), and a caller of another org is
//! refused (it does not see the name, and its certificate is refused at the mesh port: the
//! connection is closed, counted and written to the audit log). Two services with a TCP port of
//! the same number are both reached, and one that comes later does not move the relay port of
//! another. A caller whose region has no
//! instance of the service reaches one in another region.

mod support;

use std::time::{Duration, Instant};

use support::tcp::{
    address_in, assert_other_org_refused, deploy_callers, hello_service, ECHO_PORT,
};
use support::{answers, gateway, namespaces_allowed, through, Deployed, RegionalPlane, HELLO};

/// meridian-hello as `org`/shop/`name` in fra, with its HTTP port, and its TCP echo port when
/// `echo`.
fn service(org: &str, name: &str, echo: bool) -> String {
    service_in(org, name, echo, "fra")
}

/// [`service`] in `regions`.
fn service_in(org: &str, name: &str, echo: bool, regions: &str) -> String {
    hello_service(
        org,
        name,
        &format!("{{process: {{command: {HELLO}}}}}"),
        echo,
        regions,
    )
}

/// The control plane of fra, following `platform`'s, with its gateway on loopback.
fn fra_with_gateway(platform: &Deployed) -> RegionalPlane {
    RegionalPlane::start(
        &platform.global,
        &platform.token,
        "fra",
        Some("127.0.0.1:0"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_service_is_reached_by_name_and_virtual_ip_and_other_orgs_are_refused() {
    if !namespaces_allowed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let platform = Deployed::start(dir.path(), &service("acme", "echo", true));
    deploy_callers(&platform, dir.path());
    // A second echo, its TCP port of the same number.
    let second = dir.path().join("echo2.yaml");
    std::fs::write(&second, service("acme", "echo2", true)).unwrap();
    platform.cli.ok(&["deploy", "-f", second.to_str().unwrap()]);
    let region = fra_with_gateway(&platform);
    // Room for one more service's instance, which comes later.
    let isolation = ["--isolation", "netns", "--instance-network", "100.64.222.0"];
    let args = [&isolation[..], &["--capacity", "5"]].concat();
    let node = support::agent_with(&region, "tcp-node", dir.path(), &args);
    let (_gateway, gateway) = gateway(&region, dir.path()).await;
    let web = "web.acme.example.com";

    // By name, from another service's instance, in its own namespace: the bytes come back
    // intact, after the caller's half-close went through both node proxies.
    let name = format!("echo.shop.internal:{ECHO_PORT}");
    let small = answers(
        &gateway,
        web,
        &format!("/tcp?addr={name}&bytes=1000"),
        "intact",
    )
    .await;
    assert!(
        small.contains("sent 1000, received 1000, intact"),
        "{small}"
    );
    // A large stream too.
    let large = 8 << 20;
    let (_, answer) = through(&gateway, web, &format!("/tcp?addr={name}&bytes={large}")).await;
    assert!(
        answer.contains(&format!("sent {large}, received {large}, intact")),
        "{answer}"
    );
    // The name resolved to the service's virtual IP, which reaches it too.
    let vip = address_in(&small, " (", ')');
    let socket: std::net::SocketAddrV4 = vip.parse().unwrap();
    let [a, b, _, _] = socket.ip().octets();
    assert!(
        a == 100 && b & 0xf0 == 112,
        "{vip} is not in 100.112.0.0/12"
    );
    assert_eq!(socket.port(), ECHO_PORT);
    let (_, by_vip) = through(&gateway, web, &format!("/tcp?addr={vip}&bytes=5000")).await;
    assert!(by_vip.contains("received 5000, intact"), "{by_vip}");
    // The second echo, on the same port number, by its name: its own virtual IP, intact.
    let path = format!("/tcp?addr=echo2.shop.internal:{ECHO_PORT}&bytes=2000");
    let other_echo = answers(&gateway, web, &path, "intact").await;
    assert!(
        other_echo.contains("sent 2000, received 2000"),
        "{other_echo}"
    );
    assert_ne!(address_in(&other_echo, " (", ')'), vip);
    let metrics = support::metrics(&node.admin).await;
    let second = r#"meridian_proxy_tcp_connections_total{listener="in/acme/shop/echo2-0/echo"}"#;
    assert!(metrics.contains(second), "{metrics}");

    // Another org's instance does not see the name, and reaches nothing at the virtual IP.
    let other = "client.other.example.com";
    answers(&gateway, other, "/healthz", "ok").await;
    let (_, hidden) = through(
        &gateway,
        other,
        &format!("/tcp?addr=echo.shop.acme.internal:{ECHO_PORT}"),
    )
    .await;
    assert!(hidden.contains("failed"), "{hidden}");
    let (_, by_vip) = through(&gateway, other, &format!("/tcp?addr={vip}")).await;
    assert!(
        by_vip.contains("failed") && !by_vip.contains("received"),
        "{by_vip}"
    );

    // With a genuine certificate of that org, straight at the echo's mesh port: the node proxy
    // closes the connection before relaying a byte, counts it and logs it.
    let greeting = answers(&gateway, "echo.acme.example.com", "/", "hello from echo").await;
    let instance: std::net::Ipv4Addr = address_in(&greeting, ", ", ')').parse().unwrap();
    let node_side = std::net::Ipv4Addr::from(u32::from(instance) - 1);
    // The three calls that got through were relayed, and their bytes counted.
    let metrics = assert_other_org_refused(&region, &node, node_side, 3).await;
    let bytes = r#"meridian_proxy_tcp_relayed_bytes_total{listener="in/acme/shop/echo-0/echo",direction="downstream"}"#;
    let counted = metrics
        .lines()
        .find_map(|l| l.strip_prefix(bytes)?.trim().parse::<u64>().ok());
    assert_eq!(counted, Some(1000 + (8 << 20) + 5000), "{metrics}");
    let caller = "caller=spiffe://meridian.local/org/other/app/shop/service/client";
    let end = Instant::now() + Duration::from_secs(10);
    while !node
        .log()
        .lines()
        .any(|l| l.contains("mesh call denied") && l.contains(caller))
    {
        assert!(Instant::now() < end, "no audit line in {}", node.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A TCP service whose name sorts before echo's comes: web's relay of echo keeps its port
    // (the namespace's map points there; relays numbered afresh gave it to the newcomer), and
    // echo's virtual IP still reaches echo, not the newcomer.
    let relay = format!("out/acme/shop/web-0/{vip}");
    let before = listened_at(&node.admin, &relay).await;
    let first = dir.path().join("aaa.yaml");
    std::fs::write(&first, service("acme", "aaa", true)).unwrap();
    platform.cli.ok(&["deploy", "-f", first.to_str().unwrap()]);
    let path = format!("/tcp?addr=aaa.shop.internal:{ECHO_PORT}&bytes=100");
    answers(&gateway, web, &path, "intact").await;
    assert_eq!(listened_at(&node.admin, &relay).await, before);
    let (_, by_vip) = through(&gateway, web, &format!("/tcp?addr={vip}&bytes=5000")).await;
    assert!(by_vip.contains("received 5000, intact"), "{by_vip}");
    let metrics = support::metrics(&node.admin).await;
    let counted = metrics
        .lines()
        .find_map(|l| l.strip_prefix(bytes)?.trim().parse::<u64>().ok());
    assert_eq!(counted, Some(1000 + (8 << 20) + 2 * 5000), "{metrics}");
}

/// The address the node proxy with admin port `admin` listens on for `listener`, once it does.
async fn listened_at(admin: &str, listener: &str) -> String {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = reqwest::get(format!("{admin}/listeners")).await.unwrap();
        let listeners: serde_json::Value = answer.json().await.unwrap();
        if let Some(address) = listeners[listener].as_str() {
            return address.to_owned();
        }
        assert!(
            Instant::now() < end,
            "no listener {listener} in {listeners}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_service_is_reached_in_another_region_when_the_callers_has_none() {
    if !namespaces_allowed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let platform = Deployed::start(dir.path(), &service("acme", "web", false));
    platform
        .cli
        .ok(&["region", "add", "iad", "--lat", "38.95", "--lon", "-77.45"]);
    let echo = dir.path().join("echo.yaml");
    std::fs::write(&echo, service_in("acme", "echo", true, "iad")).unwrap();
    platform.cli.ok(&["deploy", "-f", echo.to_str().unwrap()]);
    let start =
        |region, gateway| RegionalPlane::start(&platform.global, &platform.token, region, gateway);
    let (fra, iad) = (start("fra", Some("127.0.0.1:0")), start("iad", None));
    let _fra_node = support::netns_agent(&fra, "fra-tcp", dir.path(), "100.64.223.0");
    let _iad_node = support::agent(&iad, "iad-tcp", "127.0.221.1", dir.path());
    let (_gateway, gateway) = gateway(&fra, dir.path()).await;

    // web, in fra, reaches echo, which runs in iad only, by name: over mutual TLS from fra's
    // node proxy to iad's.
    let name = format!("echo.shop.internal:{ECHO_PORT}");
    let web = "web.acme.example.com";
    let path = format!("/tcp?addr={name}&bytes=100000");
    let answer = answers(&gateway, web, &path, "intact").await;
    assert!(
        answer.contains("sent 100000, received 100000, intact"),
        "{answer}"
    );
}

/// meridian-hello as `org`/shop/`name` in fra showing its `MERIDIAN_TCP_*` variables for the
/// echo (acme's name, and another org's) and for acme/shop/aaa's port `echo`.
fn host_caller(org: &str, name: &str) -> String {
    let show = format!("{ECHO_VARIABLE},{ECHO_VARIABLE_ELSEWHERE},{LATER_VARIABLE}");
    let runtime = format!("{{process: {{command: {HELLO}, env: {{HELLO_SHOW_ENV: '{show}'}}}}}}");
    hello_service(org, name, &runtime, false, "fra")
}

/// The variable acme/shop/aaa's port `echo` would have for an instance of acme: before
/// [`ECHO_VARIABLE`] in order.
const LATER_VARIABLE: &str = "MERIDIAN_TCP_AAA_SHOP_ECHO";

/// The variable naming acme/shop/echo's port `echo` for an instance of acme.
const ECHO_VARIABLE: &str = "MERIDIAN_TCP_ECHO_SHOP_ECHO";

/// The variable naming acme/shop/echo's port `echo` for an instance of another org.
const ECHO_VARIABLE_ELSEWHERE: &str = "MERIDIAN_TCP_ECHO_SHOP_ACME_ECHO";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_mode_instance_reaches_a_tcp_service_at_the_address_its_environment_names() {
    // Runs without root: the agent's instances are on loopback addresses of their own.
    let dir = tempfile::tempdir().unwrap();
    let allow_partner = "mesh: {allow: [partner/shop/client]}\n";
    let echo = service("acme", "echo", true) + allow_partner;
    let platform = Deployed::start(dir.path(), &echo);
    for (org, name) in [("acme", "web"), ("other", "client"), ("partner", "client")] {
        let file = dir.path().join(format!("{org}-{name}.yaml"));
        std::fs::write(&file, host_caller(org, name)).unwrap();
        platform.cli.ok(&["deploy", "-f", file.to_str().unwrap()]);
    }
    let region = fra_with_gateway(&platform);
    let host = ["--instance-addresses", "127.62.0.1", "--isolation", "host"];
    let node = support::agent_with(
        &region,
        "host-tcp",
        dir.path(),
        &[&host[..], &["--capacity", "5"]].concat(),
    );
    let (_gateway, gateway) = gateway(&region, dir.path()).await;

    // acme's web: the variable names a relay port on its own address, where the node proxy
    // relays over mutual TLS to the echo; the bytes come back intact.
    let web = "web.acme.example.com";
    let address = answers(&gateway, web, &format!("/env/{ECHO_VARIABLE}"), "127.62.0.").await;
    let relay: std::net::SocketAddrV4 = address.parse().unwrap();
    assert!(
        relay.port() >= 40000,
        "{address} is not a relay port on web's address"
    );
    let path = format!("/tcp?addr={address}&bytes=100000");
    let called = answers(&gateway, web, &path, "intact").await;
    assert!(
        called.contains("sent 100000, received 100000, intact"),
        "{called}"
    );
    // A service of its own org is not named with the org.
    let (status, _) = through(&gateway, web, &format!("/env/{ECHO_VARIABLE_ELSEWHERE}")).await;
    assert_eq!(status, 404);

    // partner, which echo's mesh.allow names, gets the name with acme's org in it.
    let partner = "client.partner.example.com";
    let elsewhere = format!("/env/{ECHO_VARIABLE_ELSEWHERE}");
    let address = answers(&gateway, partner, &elsewhere, "127.62.0.").await;
    let path = format!("/tcp?addr={address}&bytes=5000");
    let called = answers(&gateway, partner, &path, "intact").await;
    assert!(called.contains("received 5000, intact"), "{called}");

    // A TCP service deployed after web started, whose variable sorts first: web's
    // environment does not name it, and web's relay port stays the echo's as the node proxy's
    // configuration changes around it.
    let later = dir.path().join("aaa.yaml");
    std::fs::write(&later, service("acme", "aaa", true)).unwrap();
    platform.cli.ok(&["deploy", "-f", later.to_str().unwrap()]);
    answers(&gateway, "aaa.acme.example.com", "/", "hello from aaa").await;
    let (status, _) = through(&gateway, web, &format!("/env/{LATER_VARIABLE}")).await;
    assert_eq!(status, 404);
    let path = format!("/tcp?addr={relay}&bytes=3000");
    let called = answers(&gateway, web, &path, "intact").await;
    assert!(called.contains("received 3000, intact"), "{called}");
    let metrics = support::metrics(&node.admin).await;
    assert!(
        !metrics.contains("listener=\"in/acme/shop/aaa-0/echo\"} 1"),
        "{metrics}"
    );

    // Another org, not allowed: no variable at all.
    let other = "client.other.example.com";
    answers(&gateway, other, "/healthz", "ok").await;
    for variable in [ECHO_VARIABLE, ECHO_VARIABLE_ELSEWHERE] {
        let (status, body) = through(&gateway, other, &format!("/env/{variable}")).await;
        assert_eq!(
            (status, body.as_str()),
            (404, &*format!("{variable}: not set\n"))
        );
    }
    // With a genuine certificate of that org, straight at the echo's mesh port on its
    // address: closed before a byte is relayed.
    let greeting = answers(&gateway, "echo.acme.example.com", "/", "hello from echo").await;
    let instance: std::net::Ipv4Addr = address_in(&greeting, ", ", ')').parse().unwrap();
    // Relayed: web's two calls and the partner's, all to the echo.
    assert_other_org_refused(&region, &node, instance, 3).await;
}
