//! An edge routes each host to the nearest region with healthy instances and fails over to the
//! next region by distance when that region's gateway goes away, or its instances do (requests
//! that reach its gateway first are retried in the next region).

mod support;

use std::time::{Duration, Instant};

use support::{agent, edge, gateway, paris_edge, Agent, Deployed, Killed, RegionalPlane, HELLO};

const DEADLINE: Duration = Duration::from_secs(60);

fn web(regions: &str) -> String {
    format!(
        "\
org: acme
app: shop
name: web
regions: [{regions}]
runtime: {{process: {{command: {HELLO}}}}}
ports: [{{name: http, port: 8080}}]
routes: [{{path_prefix: /, port: http}}]
domains: [shop.example.com]
health_checks: [{{http: {{port: http, path: /healthz}}, interval: 200ms, timeout: 200ms, grace_period: 5s}}]
"
    )
}

/// Waits until the edge answers for the shop with a greeting from `region`.
async fn served_from(edge: &str, region: &str) {
    let from = format!(" in {region} ");
    let what = format!("from {region}");
    support::until_the_shop_answers(edge, &what, |body| body.contains(&from)).await;
}

/// Web in fra and iad, each region with one node and a gateway, and an edge at Paris.
struct TwoRegions {
    _platform: Deployed,
    _regions: (RegionalPlane, RegionalPlane),
    fra_node: Agent,
    iad_node: Agent,
    fra_gateway: Killed,
    _iad_gateway: Killed,
    _edge: Killed,
    edge: String,
    _dir: tempfile::TempDir,
}

/// Two regions whose gateways and nodes listen on 127.0.`subnet`.1 to 127.0.`subnet + 3`.1:
/// each test gives its own `subnet`, since tests run at the same time.
async fn two_regions(subnet: u8) -> TwoRegions {
    let dir = tempfile::tempdir().unwrap();
    let platform = Deployed::start(dir.path(), &web("fra"));
    platform
        .cli
        .ok(&["region", "add", "iad", "--lat", "38.95", "--lon", "-77.45"]);
    platform.deploy(&web("fra, iad"));
    // Gateways listen where their regions say (the edge reads it in the regions' reports), on
    // addresses of their own so that no port is chosen twice.
    let (global, token) = (&platform.global, &platform.token);
    let address = |offset: u8| format!("127.0.{}.1", subnet + offset);
    let (fra_gateway, iad_gateway) = (address(2) + ":8080", address(3) + ":8080");
    let fra = RegionalPlane::start(global, token, "fra", Some(fra_gateway.as_str()));
    let iad = RegionalPlane::start(global, token, "iad", Some(iad_gateway.as_str()));
    let fra_node = agent(&fra, "fra-1", &address(0), dir.path());
    let iad_node = agent(&iad, "iad-1", &address(1), dir.path());
    let (fra_gateway, _) = gateway(&fra, dir.path()).await;
    let (iad_gateway, _) = gateway(&iad, dir.path()).await;
    let (edge_process, edge) = edge(&platform, &fra, dir.path());
    // Both regions report their instance healthy: either can serve when the other fails.
    let end = Instant::now() + DEADLINE;
    loop {
        let status = platform.cli.json(&["status", "web", "--app", "shop"]);
        let regions = status["regions"].as_array().cloned().unwrap_or_default();
        if regions.len() == 2 && regions.iter().all(|r| r["healthy"].as_u64() >= Some(1)) {
            break;
        }
        assert!(Instant::now() < end, "not both regions healthy: {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    TwoRegions {
        _platform: platform,
        _regions: (fra, iad),
        fra_node,
        iad_node,
        fra_gateway,
        _iad_gateway: iad_gateway,
        _edge: edge_process,
        edge,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_serves_from_the_nearest_region_and_fails_over_to_the_next() {
    let regions = two_regions(40).await;
    // Paris is nearer Frankfurt than Washington.
    served_from(&regions.edge, "fra").await;
    the_clients_address_reaches_the_instance(&regions.edge).await;
    // Another org cannot take the shop's domain: its deploy (by the admin, who is told which
    // service holds it) is refused on the field, and the edge goes on serving the shop.
    let intruder = regions._dir.path().join("intruder.yaml");
    std::fs::write(&intruder, web("iad").replace("org: acme", "org: evil")).unwrap();
    let refused = regions
        ._platform
        .cli
        .fails(&["deploy", "-f", intruder.to_str().unwrap()]);
    assert!(
        refused.contains("409") && refused.contains("domains[0]: `shop.example.com`"),
        "{refused}"
    );
    assert!(refused.contains("`acme/shop/web`"), "{refused}");
    served_from(&regions.edge, "fra").await;
    // The edge reaches Frankfurt's gateway over mutual TLS: its listener for edges takes no
    // plain HTTP.
    let plain = reqwest::Client::new()
        .get("http://127.0.42.1:8080/")
        .header("host", "shop.example.com")
        .send()
        .await;
    assert!(plain.is_err(), "{plain:?}");
    // Frankfurt's gateway goes away: the edge serves from Washington.
    drop(regions.fra_gateway);
    served_from(&regions.edge, "iad").await;
}

/// A client at 127.0.0.77 that claims other forwarding headers: the instance behind the edge,
/// gateway and node proxy sees the edge's, which start at the client's address and protocol.
async fn the_clients_address_reaches_the_instance(edge: &str) {
    let client = reqwest::Client::builder()
        .local_address("127.0.0.77".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    let seen = client
        .get(format!("http://{edge}/forwarded"))
        .header("host", "shop.example.com")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "bank.example.com")
        .header("forwarded", "for=6.6.6.6;proto=https")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let header = |name: &str| {
        let prefix = format!("{name}: ");
        let line = seen.lines().find(|l| l.starts_with(&prefix));
        line.unwrap_or_else(|| panic!("no {name}: {seen}"))[prefix.len()..].to_owned()
    };
    // Then each hop's address: the edge's (for the gateway), the gateway's (for the node).
    assert!(
        header("x-forwarded-for").starts_with("127.0.0.77, "),
        "{seen}"
    );
    assert_eq!(header("x-forwarded-proto"), "http", "{seen}");
    assert_eq!(header("x-forwarded-host"), "shop.example.com", "{seen}");
    assert!(
        header("forwarded").starts_with("for=127.0.0.77;proto=http;host=\"shop.example.com\", "),
        "{seen}"
    );
    assert!(
        !seen.contains("6.6.6.6") && !seen.contains("bank"),
        "{seen}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_a_regions_instances_all_stop_the_edge_serves_from_the_next_region() {
    let regions = two_regions(44).await;
    served_from(&regions.edge, "fra").await;
    // Frankfurt's only node stops its instances; its gateway stays. Requests go on, one at a
    // time, and the edge moves to Washington.
    let client = reqwest::Client::new();
    let ask = || {
        client
            .get(format!("http://{}/", regions.edge))
            .header("host", "shop.example.com")
            .send()
    };
    let stopped = Instant::now();
    drop(regions.fra_node);
    let (mut failed, mut answered) = (Vec::new(), 0);
    let end = Instant::now() + DEADLINE;
    let moved = loop {
        let answer = ask().await;
        answered += 1;
        match answer {
            Ok(answer) if answer.status() == 200 => {
                let body = answer.text().await.unwrap_or_default();
                if body.contains(" in iad ") {
                    break stopped.elapsed();
                }
            }
            Ok(answer) => failed.push(answer.status().to_string()),
            Err(e) => failed.push(e.to_string()),
        }
        assert!(
            Instant::now() < end,
            "the edge never served from iad: {failed:?}"
        );
    };
    println!(
        "served from iad {} ms after fra's instances stopped; {} of {answered} requests failed \
         meanwhile: {failed:?}",
        moved.as_millis(),
        failed.len()
    );
    // Requests that reach Frankfurt's gateway first are retried in Washington: none fails,
    // then or after.
    for _ in 0..50 {
        let answer = ask().await.unwrap();
        assert_eq!(answer.status(), 200);
        assert!(answer.text().await.unwrap().contains(" in iad "));
    }
    assert_eq!(failed, Vec::<String>::new());

    // Washington's instances stop too: the service exists but no region can serve it, which
    // the edge says with a 503, not with the 404 of a domain it does not know. Once the status
    // shows no healthy instance anywhere, the edge keeps answering 503 (its configuration,
    // which follows the same reports, keeps the domain with no region to send it to).
    drop(regions.iad_node);
    let end = Instant::now() + DEADLINE;
    let mut in_a_row = 0;
    while in_a_row < 40 {
        let answer = ask().await.unwrap();
        assert_ne!(answer.status(), 404, "{:?}", answer.headers());
        let status = regions
            ._platform
            .cli
            .json(&["status", "web", "--app", "shop"]);
        let healthy_nowhere = status["regions"]
            .as_array()
            .is_some_and(|r| r.iter().all(|r| r["healthy"] == 0));
        in_a_row = if healthy_nowhere && answer.status() == 503 {
            in_a_row + 1
        } else {
            0
        };
        assert!(
            Instant::now() < end,
            "the edge never answered 503: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An edge whose public port someone else holds says so and exits, before it joins anything
/// (the proxy binds that port only when the first configuration arrives, where the failure
/// would only show as a refused configuration).
#[test]
fn an_edge_whose_public_port_is_held_names_it_and_exits() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = held.local_addr().unwrap().to_string();
    let plain = paris_edge(&address);
    let mut https = paris_edge("127.0.0.1:0");
    https.args(["--listen-https", &address]);
    for (flag, mut command) in [("--listen", plain), ("--listen-https", https)] {
        let output = command
            .args(["--control", "https://127.0.0.1:9", "--join-token", "unused"])
            .args(["--global-xds", "https://127.0.0.1:9"])
            .arg("--state-dir")
            .arg(tempfile::tempdir().unwrap().path().join("edge-par"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "the edge ran: {stderr}");
        assert!(
            stderr.contains(&format!("{flag}: cannot listen on {address}")),
            "{stderr}"
        );
    }
}
