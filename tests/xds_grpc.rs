//! Proxyless gRPC clients we did not write — Python `grpcio` and Node `@grpc/grpc-js-xds` —
//! resolve a Meridian service through a regional control plane's xDS server: their RPCs reach
//! the registered endpoints, and when endpoints change (one added, one unhealthy, one removed)
//! their traffic moves to the new set.
//!
//! Needs python3 with `grpcio`, and node with tests/xds/node's packages (`npm ci` there); with
//! MERIDIAN_TEST_STRICT=1 a missing one fails the test instead of skipping it.

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use support::{
    repo_root, spawn_with_lines, strict, wait_for_line, Deployed, Killed, RegionalPlane,
};

const DEADLINE: Duration = Duration::from_secs(60);

const DEFINITION: &str = "\
org: acme
app: shop
name: api
regions: [fra]
runtime: {process: {command: /bin/true}}
ports: [{name: grpc, port: 8080, protocol: http2}]
mesh: {allow: [partner/*/*]}
";

/// gRPC servers answering their name, one port each.
struct GrpcServers {
    _child: Killed,
    ports: BTreeMap<String, u16>,
}

impl GrpcServers {
    fn start(names: &[&str]) -> GrpcServers {
        let (child, lines) = spawn_with_lines(
            Command::new("python3")
                .arg(repo_root().join("tests/xds/grpc_servers.py"))
                .args(names)
                .stdin(Stdio::piped()),
        );
        let mut ports = BTreeMap::new();
        loop {
            let line = wait_for_line(&lines, DEADLINE, "the gRPC servers", |_| true);
            if line == "ready" {
                break;
            }
            let (name, port) = line.split_once(' ').expect("NAME PORT");
            ports.insert(name.to_owned(), port.parse().expect("a port"));
        }
        GrpcServers {
            _child: Killed(child),
            ports,
        }
    }
}

/// A proxyless client speaking the line protocol of tests/xds/grpc_client.py.
struct XdsClient {
    child: Killed,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl XdsClient {
    fn start(mut command: Command, bootstrap: &std::path::Path) -> XdsClient {
        let (mut child, lines) = spawn_with_lines(
            command
                .env("GRPC_XDS_BOOTSTRAP", bootstrap)
                .stdin(Stdio::piped()),
        );
        let stdin = child.stdin.take().unwrap();
        XdsClient {
            child: Killed(child),
            stdin,
            lines,
        }
    }

    /// Waits until the client's calls are answered by exactly `servers`.
    fn converges_to(&mut self, servers: &str) {
        writeln!(self.stdin, "{servers}").unwrap();
        let line = wait_for_line(&self.lines, DEADLINE, "the client's verdict", |_| true);
        assert_eq!(
            line,
            format!("converged {servers}"),
            "client {:?}",
            self.child.0.id()
        );
    }
}

fn have(command: &mut Command) -> bool {
    command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn prerequisite(present: bool, what: &str) -> bool {
    assert!(present || !strict(), "{what} is missing");
    if !present {
        eprintln!("skipped: {what} is missing");
    }
    present
}

/// The scenario, with `client` as a proxyless gRPC client of `org`.
fn endpoints_reach_the_client_and_changes_move_its_traffic(client: Command, org: &str) {
    let dir = tempfile::tempdir().unwrap();
    let platform = Deployed::start(dir.path(), DEFINITION);
    let region = RegionalPlane::start(&platform.global, &platform.token, "fra", None);
    let servers = GrpcServers::start(&["a", "b", "c"]);
    let set = |name: &str, health: &str| {
        let port = format!("grpc={}", servers.ports[name]);
        platform.set_endpoint("api", &format!("i-{name}"), &port, health);
    };
    set("a", "healthy");
    set("b", "healthy");

    let bootstrap = dir.path().join("bootstrap.json");
    let bootstrap_json = serde_json::json!({
        "xds_servers": [{"server_uri": region.xds_plaintext, "channel_creds": [{"type": "insecure"}],
                         "server_features": ["xds_v3"]}],
        "node": {"id": "test-client", "locality": {"region": "fra"},
                 "metadata": {"org": org, "role": "grpc-client"}},
    });
    std::fs::write(&bootstrap, bootstrap_json.to_string()).unwrap();
    let mut client = XdsClient::start(client, &bootstrap);
    client.converges_to("a,b");

    set("c", "healthy");
    set("b", "unhealthy");
    client.converges_to("a,c");
    platform
        .cli
        .ok(&["endpoint", "remove", "api", "i-a", "--app", "shop"]);
    client.converges_to("c");
}

/// The Python grpcio client calling `target`, if python3 with grpcio is here.
fn python_client(target: &str) -> Option<Command> {
    let present = have(Command::new("python3").args(["-c", "import grpc"]));
    if !prerequisite(present, "python3 with grpcio (pip install grpcio)") {
        return None;
    }
    let mut client = Command::new("python3");
    client
        .arg(repo_root().join("tests/xds/grpc_client.py"))
        .arg(target);
    Some(client)
}

#[test]
fn python_grpcio_follows_endpoint_changes() {
    if let Some(client) = python_client("xds:///api.shop.internal:8080") {
        endpoints_reach_the_client_and_changes_move_its_traffic(client, "acme");
    }
}

#[test]
fn python_grpcio_of_an_org_that_mesh_allow_names_reaches_the_service_by_its_full_name() {
    if let Some(client) = python_client("xds:///api.shop.acme.internal:8080") {
        endpoints_reach_the_client_and_changes_move_its_traffic(client, "partner");
    }
}

#[test]
fn node_grpc_js_xds_follows_endpoint_changes() {
    let packages = repo_root().join("tests/xds/node/node_modules/@grpc/grpc-js-xds");
    let present = have(Command::new("node").arg("--version")) && packages.exists();
    if !prerequisite(
        present,
        "node with @grpc/grpc-js-xds (npm ci in tests/xds/node)",
    ) {
        return;
    }
    let mut client = Command::new("node");
    client
        .arg(repo_root().join("tests/xds/node/client.js"))
        .arg("xds:///api.shop.internal:8080");
    endpoints_reach_the_client_and_changes_move_its_traffic(client, "acme");
}
