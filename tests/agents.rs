//! Agents run a region's instances: a deployed service comes up on the region's nodes and is
//! served through the gateway; an instance that exits is restarted; when a node's agent goes
//! away its instances are placed on the node that is left.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::load::{serving, Load};
use support::{
    agent, answers, gateway, logging_agent, namespaces_allowed, said, through, Deployed,
    RegionalPlane,
};

use support::{HELLO, MERIDIAN};

const DEADLINE: Duration = Duration::from_secs(60);

fn hello(instances: u32) -> String {
    format!(
        "\
org: acme
app: shop
name: hello
regions: [fra]
scale: {{min: {instances}, max: {instances}}}
runtime: {{process: {{command: {HELLO}}}}}
ports: [{{name: http, port: 8080}}]
routes: [{{path_prefix: /, port: http}}]
domains: [hello.example.com]
health_checks: [{{http: {{port: http, path: /healthz}}, interval: 200ms, timeout: 200ms, grace_period: 5s}}]
"
    )
}

fn nodes(seen: &BTreeSet<String>) -> BTreeSet<String> {
    seen.iter()
        .filter_map(|s| s.split("(node ").nth(1))
        .filter_map(|n| n.split(',').next())
        .map(str::to_owned)
        .collect()
}

/// Whether some instance's log shows that it exited on request and was started again.
fn restarted_after_exit(dir: &Path) -> bool {
    let logs = ["one", "two"].iter().flat_map(|node| {
        std::fs::read_dir(dir.join(node).join("logs"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.path().join("stdout.log"))
    });
    logs.filter_map(|path| std::fs::read_to_string(path).ok())
        .any(|log| {
            log.split_once("exiting on request")
                .is_some_and(|(_, after)| after.contains("meridian-hello listening"))
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_run_the_regions_instances_and_heal_them() {
    let dir = tempfile::tempdir().unwrap();
    let platform = Deployed::start(dir.path(), &hello(2));
    let region = RegionalPlane::start(
        &platform.global,
        &platform.token,
        "fra",
        Some("127.0.0.1:0"),
    );
    let one = agent(&region, "one", "127.0.20.1", dir.path());
    let _two = agent(&region, "two", "127.0.21.1", dir.path());
    let (_gateway, address) = gateway(&region, dir.path()).await;

    // Two instances answer through the gateway.
    let first = serving(&address, "hello", |seen| seen.len() == 2, "two instances").await;
    assert!(first.iter().all(|s| s.contains(" in fra ")), "{first:?}");

    // An instance that exits is restarted by its agent (its log shows both lives), and the
    // same two instances answer again.
    let exit = reqwest::Client::new()
        .post(format!("http://{address}/exit"))
        .header("host", "hello.example.com")
        .send()
        .await;
    assert!(exit.is_err() || !exit.unwrap().status().is_success());
    let end = Instant::now() + DEADLINE;
    while !restarted_after_exit(dir.path()) {
        assert!(Instant::now() < end, "no instance was restarted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    serving(
        &address,
        "hello",
        |seen| *seen == first,
        "the same two instances after a restart",
    )
    .await;

    // A node's agent goes away (and stops its instances): after the node timeout they run on
    // the node that is left.
    drop(one);
    let moved = serving(
        &address,
        "hello",
        |seen| seen.len() == 2 && nodes(seen) == BTreeSet::from(["two".to_owned()]),
        "both instances on node two",
    )
    .await;
    assert_eq!(moved.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_is_in_service_only_once_its_node_proxy_listens_for_it() {
    // Something else holds the instance's mesh port on the node: its node proxy cannot listen
    // there, though the instance itself starts and passes its health checks.
    let mesh = std::net::TcpListener::bind("127.0.44.1:15443").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let platform = Deployed::start(dir.path(), &hello(1));
    let region = RegionalPlane::start(
        &platform.global,
        &platform.token,
        "fra",
        Some("127.0.0.1:0"),
    );
    let node = logging_agent(&region, "one", "127.0.44.1", dir.path());
    let (_gateway, address) = gateway(&region, dir.path()).await;
    let end = Instant::now() + DEADLINE;
    let direct = reqwest::Client::new();
    while said(&node, "the node proxy refused its configuration") == 0
        || !direct
            .get("http://127.0.44.1:8080/healthz")
            .send()
            .await
            .is_ok_and(|a| a.status().is_success())
    {
        assert!(
            Instant::now() < end,
            "the instance never ran: {}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Over several of its health checks (every 200 ms), the region never counts it healthy
    // and the gateway never sends it a request (it has no instance to send one to).
    let watched = Instant::now() + Duration::from_secs(2);
    while Instant::now() < watched {
        let status = platform.cli.json(&["status", "hello", "--app", "shop"]);
        assert_eq!(status["regions"][0]["healthy"], 0, "{status}");
        let (code, body) = through(&address, "hello.example.com", "/").await;
        assert_eq!(code, 503, "{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Once the port is free, the node proxy listens and the instance is served.
    drop(mesh);
    answers(&address, "hello.example.com", "/", "hello from hello").await;
}

/// The environment of an instance of the agent with `state`, from the process id that
/// `<state>/instances/<key>/pid` records, once it runs (`None` until then).
fn instance_environment(state: &Path) -> Option<BTreeMap<String, String>> {
    let instance = std::fs::read_dir(state.join("instances"))
        .ok()?
        .next()?
        .ok()?;
    let pid = std::fs::read_to_string(instance.path().join("pid")).ok()?;
    let environ = std::fs::read(format!("/proc/{}/environ", pid.trim())).ok()?;
    let variables: BTreeMap<String, String> = environ
        .split(|b| *b == 0)
        .filter_map(|v| {
            String::from_utf8_lossy(v)
                .split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        })
        .collect();
    variables
        .contains_key("MERIDIAN_INSTANCE")
        .then_some(variables)
}

/// A platform with region fra, where one instance of the hello service runs with `runtime`
/// (instead of meridian-hello) once an agent joins.
fn one_instance_of(dir: &Path, runtime: &str) -> (Deployed, RegionalPlane) {
    let definition = hello(1).replace(
        &format!("runtime: {{process: {{command: {HELLO}}}}}"),
        &format!("runtime: {runtime}"),
    );
    let platform = Deployed::start(dir, &definition);
    let region = RegionalPlane::start(&platform.global, &platform.token, "fra", None);
    (platform, region)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_get_their_definitions_environment_and_nothing_of_the_agents() {
    let dir = tempfile::tempdir().unwrap();
    let (platform, region) = one_instance_of(
        dir.path(),
        "{process: {command: meridian-hello, env: {GREETING: hi, FEATURE: on}}}",
    );
    // The agent runs from a shell that exported the admin token and another secret, and finds
    // meridian-hello through its own PATH.
    let programs = Path::new(HELLO)
        .parent()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let path = format!("{programs}:{}", std::env::var("PATH").unwrap_or_default());
    let _agent = support::agent_with_env(
        &region,
        "one",
        dir.path(),
        &["--instance-addresses", "127.0.22.1", "--isolation", "host"],
        &[
            ("MERIDIAN_TOKEN", &platform.token),
            ("DATABASE_PASSWORD", "hunter2"),
            ("PATH", &path),
        ],
    );
    let end = Instant::now() + DEADLINE;
    let environment = loop {
        if let Some(environment) = instance_environment(&dir.path().join("one")) {
            break environment;
        }
        assert!(Instant::now() < end, "the instance did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let names: BTreeSet<&str> = environment.keys().map(String::as_str).collect();
    let expected = BTreeSet::from([
        "PATH",
        "HOME",
        "PORT",
        "MERIDIAN_INSTANCE",
        "MERIDIAN_ORG",
        "MERIDIAN_APP",
        "MERIDIAN_SERVICE",
        "MERIDIAN_REGION",
        "MERIDIAN_NODE",
        "MERIDIAN_ADDRESS",
        "MERIDIAN_PORT_HTTP",
        "HTTP_PROXY",
        "http_proxy",
        "NO_PROXY",
        "no_proxy",
        "GREETING",
        "FEATURE",
    ]);
    assert_eq!(names, expected, "{environment:?}");
    assert_eq!(
        environment["PATH"],
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    );
    assert_eq!(environment["GREETING"], "hi");
    assert!(environment["MERIDIAN_INSTANCE"].starts_with("hello-"));
    assert_eq!(environment["MERIDIAN_ORG"], "acme");
    assert_eq!(environment["PORT"], "8080");
    assert!(
        environment
            .values()
            .all(|v| !v.contains(&platform.token) && v != "hunter2"),
        "{environment:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_cannot_read_its_agents_environment() {
    let dir = tempfile::tempdir().unwrap();
    // The instance, run as the agent's user, tries to read its parent's (the agent's)
    // environment, and says how that went.
    let (platform, region) = one_instance_of(
        dir.path(),
        "{process: {command: sh, args: [-c, 'cat /proc/$PPID/environ >environ; echo $? >read; exec sleep 600']}}",
    );
    // Not as root, whom nothing keeps from reading any process's memory: as nobody, with a
    // state directory of its own.
    let state = dir.path().join("one");
    std::fs::create_dir(&state).unwrap();
    let nobody = 65534;
    let root = rustix::process::getuid().is_root();
    // Nobody may not reach the test's own binary (CI builds under /root, which is 0700): it
    // runs a copy in the test's directory.
    let mut program = std::path::PathBuf::from(MERIDIAN);
    if root {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::chown(&state, Some(nobody), Some(nobody)).unwrap();
        program = dir.path().join("meridian");
        std::fs::copy(MERIDIAN, &program).unwrap();
    }
    let _agent = support::agent_with_command(
        &region,
        "one",
        dir.path(),
        &["--instance-addresses", "127.0.23.1", "--isolation", "host"],
        &program,
        |command| {
            command.env("MERIDIAN_TOKEN", &platform.token);
            if root {
                use std::os::unix::process::CommandExt;
                command.uid(nobody).gid(nobody);
            }
        },
    );
    let end = Instant::now() + DEADLINE;
    let (status, read) = loop {
        let home = std::fs::read_dir(state.join("instances"))
            .ok()
            .and_then(|mut instances| instances.next())
            .and_then(Result::ok)
            .map(|instance| instance.path());
        let status = home
            .as_ref()
            .and_then(|home| std::fs::read_to_string(home.join("read")).ok())
            .filter(|status| status.ends_with('\n'));
        if let (Some(status), Some(home)) = (status, home) {
            break (status, std::fs::read(home.join("environ")).unwrap());
        }
        assert!(Instant::now() < end, "the instance did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_ne!(
        status.trim(),
        "0",
        "the instance read the agent's environment"
    );
    let read = String::from_utf8_lossy(&read);
    assert!(!read.contains(&platform.token), "{read}");
    assert!(!read.contains("MERIDIAN_TOKEN"), "{read}");
}

/// A meridian-hello service definition of `org`/shop/`name` on `port`, with a public domain.
fn service(org: &str, name: &str, port: u16, allow: &str) -> String {
    format!(
        "\
org: {org}
app: shop
name: {name}
regions: [fra]
runtime: {{process: {{command: {HELLO}}}}}
ports: [{{name: http, port: {port}}}]
routes: [{{path_prefix: /, port: http}}]
domains: [{name}.{org}.example.com]
mesh: {{allow: [{allow}]}}
health_checks: [{{http: {{port: http, path: /healthz}}, interval: 200ms, timeout: 200ms, grace_period: 5s}}]
"
    )
}

/// Deploys meridian-hello as each of `services` (org, name, port) on `platform`, each from a
/// file of its own in `dir`.
fn deploy_services(platform: &Deployed, dir: &Path, services: &[(&str, &str, u16)]) {
    for (org, name, port) in services {
        let file = dir.join(format!("{org}-{name}.yaml"));
        std::fs::write(&file, service(org, name, *port, "")).unwrap();
        platform.cli.ok(&["deploy", "-f", file.to_str().unwrap()]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_call_each_other_by_name_over_mtls_and_other_orgs_need_a_policy() {
    let dir = tempfile::tempdir().unwrap();
    let platform = Deployed::start(dir.path(), &service("acme", "api", 9090, "'partner/*/*'"));
    let clients = [
        ("acme", "web", 8080),
        ("partner", "client", 8080),
        ("other", "client", 8080),
    ];
    deploy_services(&platform, dir.path(), &clients);
    let region = RegionalPlane::start(
        &platform.global,
        &platform.token,
        "fra",
        Some("127.0.0.1:0"),
    );
    let _one = agent(&region, "one", "127.0.30.1", dir.path());
    let _two = agent(&region, "two", "127.0.31.1", dir.path());
    let (_gateway, gateway) = gateway(&region, dir.path()).await;
    let trust_domain = "meridian.local";

    // A service of the same org calls api by name; api sees the caller's identity.
    let web = "web.acme.example.com";
    let seen = answers(
        &gateway,
        web,
        "/call?url=http://api.shop.internal:9090/whoami",
        "answered 200",
    )
    .await;
    assert!(
        seen.contains(&format!(
            "spiffe://{trust_domain}/org/acme/app/shop/service/web"
        )),
        "{seen}"
    );

    // Another org that api's policy allows reaches it by its full name.
    let partner = "client.partner.example.com";
    let seen = answers(
        &gateway,
        partner,
        "/call?url=http://api.shop.acme.internal:9090/whoami",
        "answered 200",
    )
    .await;
    assert!(
        seen.contains("/org/partner/app/shop/service/client"),
        "{seen}"
    );

    // An org the policy does not name does not even see the name.
    let (_, seen) = through(
        &gateway,
        "client.other.example.com",
        "/call?url=http://api.shop.acme.internal:9090/whoami",
    )
    .await;
    assert!(seen.contains("answered 404"), "{seen}");

    // Going straight to api's mesh port with a genuine certificate of that org is refused by
    // api's node proxy, which names the reason.
    let greeting = answers(
        &gateway,
        web,
        "/call?url=http://api.shop.internal:9090/",
        "hello from api",
    )
    .await;
    let address = greeting
        .rsplit(", ")
        .next()
        .unwrap()
        .trim()
        .trim_end_matches(')')
        .to_owned();
    let other = meridian_identity::SpiffeId::workload(trust_domain, "other", "shop", "client");
    let api = meridian_identity::SpiffeId::workload(trust_domain, "acme", "shop", "api");
    let mut tls = support::rogue_client(&region, &other, api).await;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(format!("{address}:15443"))
        .await
        .unwrap();
    let stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
        .connect(meridian_identity::mesh_server_name(), tcp)
        .await
        .unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = http::Request::get("/whoami")
        .header("host", "api.shop.internal")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let refused = sender.send_request(request).await.unwrap();
    assert_eq!(refused.status(), 403);
    assert_eq!(
        refused.headers()["x-meridian-error"].to_str().unwrap(),
        "forbidden_peer"
    );
    // The refusing node proxy writes an audit line with both identities.
    let caller = format!("caller=spiffe://{trust_domain}/org/other/app/shop/service/client");
    let callee = format!("callee=spiffe://{trust_domain}/org/acme/app/shop/service/api");
    let end = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let logs = _one.log() + &_two.log();
        let audit = logs.lines().find(|l| l.contains("mesh call denied"));
        if let Some(line) = audit {
            assert!(line.contains(&caller) && line.contains(&callee), "{line}");
            assert!(!logs.contains("PRIVATE KEY"), "a key in an agent's log");
            break;
        }
        assert!(std::time::Instant::now() < end, "no audit line in {logs}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The address in a greeting: `hello from … (node <node>, <address>)`.
fn greeted_from(greeting: &str) -> String {
    let address = greeting.rsplit(", ").next().unwrap_or_default();
    address.trim().trim_end_matches(')').to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_orgs_with_a_service_of_the_same_name_on_one_node_are_both_served() {
    let dir = tempfile::tempdir().unwrap();
    let platform = Deployed::start(dir.path(), &service("acme", "web", 8080, ""));
    platform.deploy(&service("other", "web", 8080, ""));
    let region = RegionalPlane::start(
        &platform.global,
        &platform.token,
        "fra",
        Some("127.0.0.1:0"),
    );
    let node = agent(&region, "one", "127.0.60.1", dir.path());
    let (_gateway, gateway) = gateway(&region, dir.path()).await;
    // Each org's web answers on its own domain from an instance of its own, and calls its own
    // org's web by name through the node proxy (both instances are `web-0` of app `shop`).
    let mut addresses = BTreeSet::new();
    for org in ["acme", "other"] {
        let host = format!("web.{org}.example.com");
        let greeting = answers(&gateway, &host, "/", "hello from web").await;
        addresses.insert(greeted_from(&greeting));
        let seen = answers(
            &gateway,
            &host,
            "/call?url=http://web.shop.internal:8080/whoami",
            "answered 200",
        )
        .await;
        assert!(
            seen.contains(&format!("/org/{org}/app/shop/service/web")),
            "{seen}"
        );
    }
    assert_eq!(addresses.len(), 2, "both orgs answered from {addresses:?}");
    assert!(
        !node.log().contains("refused its configuration"),
        "{}",
        node.log()
    );
}

/// The address `name` resolves to inside one of the namespaces of the agent with `state` (each
/// instance's DNS answers only the names its org may reach).
fn resolved_in_some_namespace(state: &Path, name: &str) -> Ipv4Addr {
    meridian_namespaces(state)
        .iter()
        .find_map(|ns| {
            let output = std::process::Command::new("ip")
                .args(["netns", "exec", ns, "getent", "ahostsv4", name])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&output.stdout);
            text.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no namespace resolves {name}"))
}

/// The network namespaces of the agent with `state` (other tests' agents, and `meridian dev`,
/// may have theirs at the same time).
fn meridian_namespaces(state: &Path) -> Vec<String> {
    let prefix = meridian_agent::netns_prefix(state);
    let output = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&prefix))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_network_namespaces_instances_call_each_other_by_name() {
    if !namespaces_allowed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let services = [
        ("acme", "api", 9090),
        ("acme", "web", 8080),
        ("other", "secret", 9090),
    ];
    // (Every part is kept until the end; the agent is stopped before.)
    let Installation {
        _platform,
        _region,
        node,
        _gateway,
        gateway,
    } = installation_with_namespaces(dir.path(), "100.64.60.0", &services).await;
    let state = dir.path().join("ns-node");

    // Each instance listens in its own namespace, on the instance side of its /31.
    let web = "web.acme.example.com";
    let greeting = answers(&gateway, web, "/", "hello from web").await;
    assert!(greeting.contains(", 100.64.60."), "{greeting}");
    // From inside its namespace, web calls api by name, over mutual TLS.
    let seen = answers(
        &gateway,
        web,
        "/call?url=http://api.shop.internal:9090/whoami",
        "answered 200",
    )
    .await;
    assert!(seen.contains("/org/acme/app/shop/service/web"), "{seen}");
    // Without the proxy variables too: the node's DNS answers the name inside the namespace.
    let seen = answers(
        &gateway,
        web,
        "/call?direct=1&url=http://api.shop.internal:9090/whoami",
        "answered 200",
    )
    .await;
    assert!(seen.contains("/org/acme/app/shop/service/web"), "{seen}");
    // A name web's org may not reach does not exist for it.
    let (_, hidden) = through(
        &gateway,
        web,
        "/call?direct=1&url=http://secret.shop.other.internal:9090/",
    )
    .await;
    assert!(
        hidden.contains("calling") && hidden.contains("failed"),
        "{hidden}"
    );

    // Each service has a virtual IP, which the instance's DNS answers for its name and which
    // reaches the service like the name.
    let api_vip = resolved_in_some_namespace(&state, "api.shop.internal");
    let secret_vip = resolved_in_some_namespace(&state, "secret.shop.internal");
    for vip in [api_vip, secret_vip] {
        let [a, b, _, _] = vip.octets();
        assert!(
            a == 100 && b & 0xf0 == 112,
            "{vip} is not in 100.112.0.0/12"
        );
    }
    assert_ne!(api_vip, secret_vip);
    // Reverse lookups of the platform's addresses are answered by the node's DNS: a virtual IP
    // gives its service's name, an instance's address does not exist (never asked upstream).
    let reverse = |address: Ipv4Addr| {
        meridian_namespaces(&state)
            .iter()
            .map(|ns| {
                let output = std::process::Command::new("ip")
                    .args(["netns", "exec", ns, "getent", "hosts", &address.to_string()])
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&output.stdout).into_owned()
            })
            .collect::<Vec<_>>()
            .concat()
    };
    assert!(
        reverse(api_vip).contains(" api.shop.internal"),
        "{}",
        reverse(api_vip)
    );
    let seen = answers(
        &gateway,
        web,
        &format!("/call?direct=1&url=http://{api_vip}:9090/whoami"),
        "answered 200",
    )
    .await;
    assert!(seen.contains("/org/acme/app/shop/service/web"), "{seen}");
    // Another org's service is not reached by its virtual IP, nor at its instance's address,
    // nor through its instance's listeners on the node.
    let (_, by_vip) = through(
        &gateway,
        web,
        &format!("/call?direct=1&url=http://{secret_vip}:9090/"),
    )
    .await;
    assert!(by_vip.contains("answered 404"), "{by_vip}");
    let greeting = answers(
        &gateway,
        "secret.other.example.com",
        "/",
        "hello from secret",
    )
    .await;
    let address: Ipv4Addr = greeting
        .trim()
        .rsplit(", ")
        .next()
        .and_then(|a| a.strip_suffix(')'))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {greeting}"));
    // The agent counts its instances and the DNS queries it answered.
    let metrics = support::metrics(&node.admin).await;
    assert!(
        metrics.contains("meridian_agent_instances{state=\"healthy\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("meridian_agent_dns_queries_total{outcome=\"answered\"}"),
        "{metrics}"
    );
    let node_side = Ipv4Addr::from(u32::from(address) - 1);
    assert_eq!(reverse(address), "");
    // (The call fails, or hangs until web gives up: either way the gateway answers an error.)
    for target in [address, node_side] {
        let (status, body) = through(
            &gateway,
            web,
            &format!("/call?direct=1&url=http://{target}:9090/"),
        )
        .await;
        assert!(
            status >= 500 && !body.contains("answered"),
            "{target}: {body}"
        );
    }
    assert!(!meridian_namespaces(&state).is_empty());

    // The agent stops: its instances and their namespaces go.
    drop(node);
    assert!(
        meridian_namespaces(&state).is_empty(),
        "left behind: {:?}",
        meridian_namespaces(&state)
    );
}

/// One installation on the host, kept running: a region (fra) with a gateway, and a node
/// `ns-node` whose instances run in network namespaces.
struct Installation {
    _platform: Deployed,
    _region: RegionalPlane,
    node: support::Agent,
    _gateway: support::Killed,
    /// The gateway's plain-HTTP address.
    gateway: String,
}

/// An [`Installation`] in `dir` running meridian-hello as each of `services` (org, name, port),
/// its instances in namespaces of `network`.
async fn installation_with_namespaces(
    dir: &Path,
    network: &str,
    services: &[(&str, &str, u16)],
) -> Installation {
    let ((org, name, port), others) = services.split_first().expect("a service");
    let platform = Deployed::start(dir, &service(org, name, *port, ""));
    deploy_services(&platform, dir, others);
    let region = RegionalPlane::start(
        &platform.global,
        &platform.token,
        "fra",
        Some("127.0.0.1:0"),
    );
    let node = support::netns_agent(&region, "ns-node", dir, network);
    let (gateway, address) = gateway(&region, dir).await;
    Installation {
        _platform: platform,
        _region: region,
        node,
        _gateway: gateway,
        gateway: address,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_of_another_installation_leaves_this_ones_namespaces_and_traffic_alone() {
    if !namespaces_allowed() {
        return;
    }
    // Two installations on one host, with the same region and node names.
    let (first, second) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let web = "web.acme.example.com";
    let web_service = [("acme", "web", 8080)];
    let first_one = installation_with_namespaces(first.path(), "100.64.63.0", &web_service).await;
    let gateway = &first_one.gateway;
    let greeting = answers(gateway, web, "/", "hello from web").await;
    let state = first.path().join("ns-node");
    let namespaces = meridian_namespaces(&state);
    assert_eq!(namespaces.len(), 1, "{namespaces:?}");

    // The second one's agent starts (cleaning up what its predecessors left) and serves.
    let second_one = installation_with_namespaces(second.path(), "100.64.64.0", &web_service).await;
    answers(&second_one.gateway, web, "/", "hello from web").await;
    let others = meridian_namespaces(&second.path().join("ns-node"));
    assert_eq!(others.len(), 1, "{others:?}");
    assert_ne!(others, namespaces);

    // The first one's namespace is still there, and its instance still answers.
    assert_eq!(meridian_namespaces(&state), namespaces);
    assert_eq!(through(gateway, web, "/").await, (200, greeting));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_restarted_without_its_global_control_plane_serves_from_its_disk_copy() {
    let dir = tempfile::tempdir().unwrap();
    let mut platform = Deployed::start(dir.path(), &hello(1));
    let region = RegionalPlane::start(
        &platform.global,
        &platform.token,
        "fra",
        Some("127.0.57.1:8080"),
    );
    let _node = agent(&region, "one", "127.0.58.1", dir.path());
    let (first_gateway, address) = gateway(&region, dir.path()).await;
    let before = serving(&address, "hello", |seen| seen.len() == 1, "one instance").await;
    drop(first_gateway);

    // The disk copy holds the regions' summaries too (how to reach other regions).
    // (It is written at most twice a second, so it may lag the last update briefly.)
    let path = region.dir.path().join("region-fra").join("state.json");
    let end = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let copy: serde_json::Value = std::fs::read_to_string(&path)
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default();
        if copy["regions"]["fra"]["lat"].is_number() {
            break;
        }
        assert!(
            std::time::Instant::now() < end,
            "no summary in the disk copy: {copy}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The global control plane goes away, then the region's restarts.
    platform.global.stop();
    let region = region.restart();
    // Ready at once: it serves its disk copy while it cannot reach the global control plane.
    let ready = reqwest::get(format!("{}/readyz", region.admin))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    // A gateway that joins now gets the region's configuration, and the instance that ran on
    // goes on answering (adopted where it runs).
    let late = tempfile::tempdir().unwrap();
    let (_gateway, address) = gateway(&region, late.path()).await;
    let after = serving(
        &address,
        "hello",
        |seen| seen.len() == 1,
        "the instance after the restart",
    )
    .await;
    assert_eq!(before, after);

    // The global control plane comes back: the region resumes its xDS stream, and a new
    // version of the service reaches it.
    platform.global.start_again();
    platform.deploy(&hello(2));
    serving(
        &address,
        "hello",
        |seen| seen.len() == 2 && seen.is_superset(&after),
        "two instances after the global control plane came back",
    )
    .await;
}

/// meridian-hello as `name` of acme/shop in `regions` (YAML list), on `port`, with a public
/// domain.
fn in_regions(name: &str, regions: &str, port: u16) -> String {
    service("acme", name, port, "").replace("regions: [fra]", &format!("regions: [{regions}]"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_reaches_other_regions_by_name_nearest_first_or_pinned_to_a_region() {
    let dir = tempfile::tempdir().unwrap();
    let platform = Deployed::start(dir.path(), &in_regions("web", "fra", 8080));
    for (region, lat, lon) in [("iad", "38.95", "-77.45"), ("sin", "1.35", "103.82")] {
        platform
            .cli
            .ok(&["region", "add", region, "--lat", lat, "--lon", lon]);
    }
    let api = dir.path().join("api.yaml");
    let deploy_api = |regions: &str| {
        std::fs::write(&api, in_regions("api", regions, 9090)).unwrap();
        platform.cli.ok(&["deploy", "-f", api.to_str().unwrap()]);
    };
    deploy_api("iad, sin");
    let start =
        |region, gateway| RegionalPlane::start(&platform.global, &platform.token, region, gateway);
    let fra = start("fra", Some("127.0.0.1:0"));
    let (iad, sin) = (start("iad", None), start("sin", None));
    let _fra_node = agent(&fra, "fra-1", "127.0.70.1", dir.path());
    let _iad_node = agent(&iad, "iad-1", "127.0.71.1", dir.path());
    let _sin_node = agent(&sin, "sin-1", "127.0.72.1", dir.path());
    let (_gateway, gateway) = gateway(&fra, dir.path()).await;
    let web = "web.acme.example.com";

    // api runs in iad and sin only: web in fra reaches the nearer one by name, over mTLS.
    let call = |url: &str| format!("/call?url={url}");
    let web_calls = |url: &'static str, wanted: &'static str| {
        let (gateway, path) = (gateway.clone(), call(url));
        async move { answers(&gateway, web, &path, wanted).await }
    };
    let seen = web_calls("http://api.shop.internal:9090/whoami", "answered 200").await;
    assert!(seen.contains("/org/acme/app/shop/service/web"), "{seen}");
    let seen = web_calls("http://api.shop.internal:9090/", "answered 200").await;
    assert!(seen.contains(" in iad "), "{seen}");

    // A name with a region in front reaches that region.
    web_calls("http://sin.api.shop.internal:9090/", " in sin ").await;

    // When api leaves iad, calls by name go to the next region.
    deploy_api("sin");
    web_calls("http://api.shop.internal:9090/", " in sin ").await;
    let (_, gone) = through(&gateway, web, &call("http://iad.api.shop.internal:9090/")).await;
    assert!(!gone.contains(" in iad "), "{gone}");
}

/// The pid files of the instances run by the agents of `nodes` with their state under `dir`.
fn instance_pids(dir: &Path, nodes: &[&str]) -> BTreeMap<PathBuf, i32> {
    nodes
        .iter()
        .flat_map(|node| {
            std::fs::read_dir(dir.join(node).join("instances"))
                .into_iter()
                .flatten()
                .flatten()
                .map(|entry| entry.path().join("pid"))
        })
        .filter_map(|file| {
            let pid = std::fs::read_to_string(&file).ok()?.trim().parse().ok()?;
            Some((file, pid))
        })
        .collect()
}

/// Kills one instance (SIGKILL) and waits until its agent has started it again and it answers
/// through `gateway` with the other one.
async fn kill_an_instance_and_see_it_restarted(dir: &Path, nodes: &[&str], gateway: &str) {
    let before = instance_pids(dir, nodes);
    let (file, pid) = before.iter().next().expect("a running instance");
    let process = rustix::process::Pid::from_raw(*pid).unwrap();
    rustix::process::kill_process(process, rustix::process::Signal::KILL).unwrap();
    let end = Instant::now() + DEADLINE;
    loop {
        let now = instance_pids(dir, nodes);
        if now.get(file).is_some_and(|new| new != pid) {
            break;
        }
        assert!(
            Instant::now() < end,
            "the killed instance was not restarted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    serving(
        gateway,
        "hello",
        |seen| seen.len() == 2,
        "both instances again",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_load_a_killed_instance_is_restarted_without_a_failed_request_even_without_control_planes(
) {
    let dir = tempfile::tempdir().unwrap();
    let mut platform = Deployed::start(dir.path(), &hello(2));
    let region = RegionalPlane::start(
        &platform.global,
        &platform.token,
        "fra",
        Some("127.0.0.1:0"),
    );
    let nodes = ["one", "two"];
    let _one = agent(&region, nodes[0], "127.0.80.1", dir.path());
    let _two = agent(&region, nodes[1], "127.0.81.1", dir.path());
    let (_gateway, address) = gateway(&region, dir.path()).await;
    serving(&address, "hello", |seen| seen.len() == 2, "two instances").await;
    let load = Load::start(&address, "hello.example.com");
    load.goes_on_for(50).await;

    // An instance killed under load is restarted; the gateway retries what it could not
    // deliver, so no request fails.
    kill_an_instance_and_see_it_restarted(dir.path(), &nodes, &address).await;
    load.goes_on_for(50).await;
    assert_eq!(load.failures(), Vec::<String>::new());

    // Without the global control plane, the same.
    platform.global.stop();
    kill_an_instance_and_see_it_restarted(dir.path(), &nodes, &address).await;
    load.goes_on_for(50).await;
    assert_eq!(load.failures(), Vec::<String>::new());

    // Without the region's control plane too: the gateway and the agents keep their last
    // configuration, and agents still heal their instances.
    drop(region);
    load.goes_on_for(200).await;
    kill_an_instance_and_see_it_restarted(dir.path(), &nodes, &address).await;
    load.goes_on_for(50).await;
    let failures = load.failures();
    let answered = load.stop().await;
    assert_eq!(failures, Vec::<String>::new(), "of {answered} requests");
}
