//! End to end: the `meridian` binary as a user runs it — a control plane process on loopback and
//! the command-line client against it.

mod support;

use std::process::Command;

use support::{Cli, ControlPlane, MERIDIAN};

fn row<'a>(table: &'a str, first_cell: &str) -> Vec<&'a str> {
    table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&first_cell))
        .unwrap_or_else(|| panic!("no row {first_cell:?} in\n{table}"))
}

#[test]
fn the_readme_flow_works_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let control = ControlPlane::start(dir.path());
    let cli = Cli {
        api: control.api.clone(),
        token: control
            .token
            .clone()
            .expect("first start prints an admin token"),
    };

    let added = cli.ok(&["region", "add", "fra", "--lat", "50.11", "--lon", "8.68"]);
    assert_eq!(row(&added, "fra"), ["fra", "50.1100", "8.6800"]);
    cli.ok(&["region", "add", "iad", "--lat", "38.95", "--lon", "-77.45"]);
    // Each greeting is a new version; the same definition again changes nothing.
    let example =
        std::fs::read_to_string(support::repo_root().join("examples/hello.yaml")).unwrap();
    let file = dir.path().join("web.yaml");
    for version in 1..=3 {
        let greeting = format!("GREETING: hello-{version}");
        std::fs::write(&file, example.replace("GREETING: hello", &greeting)).unwrap();
        let out = cli.ok(&["deploy", "-f", file.to_str().unwrap()]);
        assert!(
            out.contains(&format!(
                "deployed demo/shop/web version {version} to fra, iad"
            )),
            "{out}"
        );
    }
    let again = cli.ok(&["deploy", "-f", file.to_str().unwrap()]);
    assert!(
        again.contains("demo/shop/web unchanged: version 3 already has this definition"),
        "{again}"
    );

    let services = cli.ok(&["get", "services"]);
    assert_eq!(
        &row(&services, "demo")[..5],
        ["demo", "shop", "web", "3", "fra,iad"]
    );
    let history = cli.ok(&["get", "deployments", "web", "--app", "shop"]);
    assert_eq!(history.lines().count(), 4, "{history}");
    assert_eq!(&row(&history, "3*")[..3], ["3*", "apply", "fra,iad"]);

    let status = cli.ok(&["status", "web", "--app", "shop"]);
    assert!(status.starts_with("demo/shop/web  version 3"), "{status}");
    assert_eq!(
        row(&status, "fra"),
        ["fra", "2", "3", "3", "-", "pending", "never"]
    );
    assert_eq!(
        row(&status, "iad"),
        ["iad", "2", "3", "3", "-", "pending", "never"]
    );

    let rolled = cli.ok(&["rollback", "web", "--app", "shop", "--to", "1"]);
    assert!(rolled.contains("now version 4"), "{rolled}");
    let history = cli.json(&["get", "deployments", "web", "--app", "shop"]);
    assert_eq!(history[3]["origin"], "rollback");
    assert_eq!(history[3]["rolled_back_from"], 1);
    let services = cli.json(&["get", "services"]);
    assert_eq!(services[0]["version"], 4);

    cli.ok(&["delete", "service", "web", "--app", "shop"]);
    assert_eq!(cli.json(&["get", "services"]), serde_json::json!([]));
}

#[test]
fn bad_input_and_missing_setup_get_errors_that_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let (control, cli) = with_fra(dir.path());
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "org: demo\napp: shop\nname: Web\nregions: [fra, mars]\nscale: {min: 3, max: 1}\n\
         runtime: {process: {command: x}}\nroutes: [{port: http}]\nextra: 1\n",
    )
    .unwrap();
    let err = cli.fails(&["deploy", "-f", bad.to_str().unwrap()]);
    assert!(err.contains("extra: unknown field"), "{err}");
    std::fs::write(
        &bad,
        "org: demo\napp: shop\nname: Web\nregions: [fra, mars]\nscale: {min: 3, max: 1}\n\
         runtime: {process: {command: x}}\nroutes: [{port: http}]\n",
    )
    .unwrap();
    let err = cli.fails(&["deploy", "-f", bad.to_str().unwrap()]);
    for expected in [
        "name: `Web` is not a DNS label",
        "regions[1]: unknown region `mars`",
        "scale.min: min (3) is greater than max (1)",
        "routes[0].port: refers to undeclared port `http`",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in {err}");
    }
    assert_eq!(cli.json(&["get", "services"]), serde_json::json!([]));

    let anonymous = Cli {
        api: control.api.clone(),
        token: String::new(),
    };
    let err = anonymous.fails(&["get", "services"]);
    assert!(err.contains("MERIDIAN_TOKEN"), "{err}");
    let nowhere = Cli {
        api: "http://127.0.0.1:1".into(),
        token: "x".into(),
    };
    let err = nowhere.fails(&["get", "regions"]);
    assert!(err.contains("cannot reach the Meridian API"), "{err}");
}

#[test]
fn deploy_refuses_an_over_deep_file_and_names_the_line_of_a_mistyped_value() {
    let dir = tempfile::tempdir().unwrap();
    let (_control, cli) = with_fra(dir.path());
    let file = dir.path().join("web.yaml");
    let head =
        "org: demo\napp: shop\nname: web\nregions: [fra]\nruntime: {process: {command: x}}\n";
    // 100,000 levels deep: the YAML parser would take minutes.
    let n = 100_000;
    std::fs::write(
        &file,
        format!("{head}env: {}1{}\n", "{a: ".repeat(n), "}".repeat(n)),
    )
    .unwrap();
    let err = cli.fails(&["deploy", "-f", file.to_str().unwrap()]);
    assert!(
        err.contains("web.yaml: line 6 column 258: collections nest deeper than 64 levels"),
        "{err}"
    );
    std::fs::write(
        &file,
        format!("{head}ports:\n  - name: http\n    port: eighty\n"),
    )
    .unwrap();
    let err = cli.fails(&["deploy", "-f", file.to_str().unwrap()]);
    assert!(
        err.contains("web.yaml: ports[0].port: invalid type: string \"eighty\", expected u32 at line 8 column 11"),
        "{err}"
    );
    assert_eq!(cli.json(&["get", "services"]), serde_json::json!([]));
}

#[test]
fn every_subcommand_has_help() {
    let cli = Cli {
        api: String::new(),
        token: String::new(),
    };
    let commands: &[&[&str]] = &[
        &[],
        &["control"],
        &["dev"],
        &["proxy"],
        &["region"],
        &["region", "add"],
        &["org"],
        &["org", "create"],
        &["token"],
        &["token", "create"],
        &["deploy"],
        &["get"],
        &["get", "services"],
        &["get", "deployments"],
        &["status"],
        &["rollback"],
        &["delete"],
        &["delete", "service"],
    ];
    for command in commands {
        let mut args = command.to_vec();
        args.push("--help");
        let out = cli.ok(&args);
        assert!(out.contains("Usage: meridian"), "{args:?}: {out}");
    }
}

/// A control plane with its data in `dir` and region fra; and the CLI with its admin token.
fn with_fra(dir: &std::path::Path) -> (ControlPlane, Cli) {
    let control = ControlPlane::start(dir);
    let cli = Cli {
        api: control.api.clone(),
        token: control.token.clone().unwrap(),
    };
    cli.ok(&["region", "add", "fra", "--lat", "50.11", "--lon", "8.68"]);
    (control, cli)
}

/// A control plane with its data in `dir`, regions fra and iad, and examples/hello.yaml
/// deployed; and the CLI with its admin token.
fn with_web_deployed(dir: &std::path::Path) -> (ControlPlane, Cli) {
    let (control, cli) = with_fra(dir);
    cli.ok(&["region", "add", "iad", "--lat", "38.95", "--lon", "-77.45"]);
    cli.ok(&["deploy", "-f", "examples/hello.yaml"]);
    (control, cli)
}

#[test]
fn a_restarted_control_plane_keeps_state_and_prints_no_new_token() {
    let dir = tempfile::tempdir().unwrap();
    let (first, cli) = with_web_deployed(dir.path());
    let token = cli.token.clone();
    // The root CA was made at the first start; its key is the owner's only.
    use std::os::unix::fs::PermissionsExt;
    let key = std::fs::metadata(dir.path().join("ca/ca.key")).unwrap();
    assert_eq!(key.permissions().mode() & 0o777, 0o600);
    let bundle = get(&first.api, "/v1/trust-bundle", &token);
    assert!(
        bundle.contains("200 OK") && bundle.contains("BEGIN CERTIFICATE"),
        "{bundle}"
    );
    drop(first);

    let second = ControlPlane::start(dir.path());
    assert!(second.token.is_none(), "printed a second admin token");
    let cli = Cli {
        api: second.api.clone(),
        token: token.clone(),
    };
    let services = cli.json(&["get", "services"]);
    assert_eq!(services[0]["name"], "web");
    assert_eq!(services[0]["version"], 1);
    let again = get(&second.api, "/v1/trust-bundle", &token);
    let pem = |answer: &str| answer[answer.find("-----BEGIN").unwrap()..].to_owned();
    assert_eq!(pem(&again), pem(&bundle), "a restart made a new root CA");
}

/// A raw `GET` on the API; the whole answer (status line, headers, body).
fn get(api: &str, path: &str, token: &str) -> String {
    request(api, &format!("GET {path}"), token, "")
}

/// A raw request (`method_path`, e.g. `PUT /v1/...`) on the API with a JSON `body`; the whole
/// answer (status line, headers, body).
fn request(api: &str, method_path: &str, token: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let address = api.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(
        stream,
        "{method_path} HTTP/1.1\r\nhost: {address}\r\nauthorization: Bearer {token}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

#[test]
fn status_says_how_old_a_region_s_report_is_and_stops_counting_when_it_stops() {
    let dir = tempfile::tempdir().unwrap();
    let (control, cli) = with_web_deployed(dir.path());
    let token = cli.token.clone();
    // fra's control plane reports its two instances healthy, once; then it is gone.
    let report = r#"{"nodes": 2, "capacity": 16, "services": [{"org": "demo", "app": "shop",
        "service": "web", "version": 1, "placed": 2, "healthy": 2}]}"#;
    let answer = request(&control.api, "PUT /v1/regions/fra/report", &token, report);
    assert!(answer.starts_with("HTTP/1.1 204"), "{answer}");
    let status = cli.ok(&["status", "web", "--app", "shop"]);
    let fra = row(&status, "fra");
    assert_eq!(fra[4..6], ["2/2", "running"], "{status}");
    assert!(fra[6].ends_with("s") && fra[7] == "ago", "{status}");

    let end = std::time::Instant::now() + std::time::Duration::from_secs(40);
    let status = loop {
        let status = cli.ok(&["status", "web", "--app", "shop"]);
        if row(&status, "fra")[5] != "running" {
            break status;
        }
        assert!(std::time::Instant::now() < end, "still running: {status}");
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    let fra = row(&status, "fra");
    assert_eq!(fra[4..6], ["-", "unknown"], "{status}");
    let age: u64 = fra[6].trim_end_matches('s').parse().unwrap();
    assert!((11..40).contains(&age), "{status}");
    assert_eq!(row(&status, "iad")[4..], ["-", "pending", "never"]);
}

/// A running `meridian dev`, killed if the test ends without stopping it (a failed assertion):
/// its children notice and stop, so a failure leaves no platform behind for the next test.
struct Dev(std::process::Child);

impl std::ops::Deref for Dev {
    type Target = std::process::Child;

    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Dev {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `meridian dev` with its data in `data`, waits until it is up and has printed its
/// status; returns it, what it printed, and what it prints from then on.
fn start_dev(data: &std::path::Path) -> (Dev, String, std::sync::mpsc::Receiver<String>) {
    let (dev, lines) = support::spawn_with_lines(
        Command::new(MERIDIAN)
            .args(["dev", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data)
            .env("MERIDIAN_LOG", "warn"),
    );
    let dev = Dev(dev);
    let mut stdout = String::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !stdout.contains("Ctrl-C stops everything") {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = lines
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("meridian dev was not up in time:\n{stdout}"));
        stdout.push_str(&line);
        stdout.push('\n');
    }
    (dev, stdout, lines)
}

/// The process whose command line holds `data` and `part` (e.g. `control --region fra`).
fn pid_of(data: &std::path::Path, part: &str) -> rustix::process::Pid {
    let data_text = data.display().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .find_map(|p| {
            let cmdline = std::fs::read(p.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            let pid = p.file_name().to_str()?.parse().ok()?;
            (cmdline.contains(&data_text) && cmdline.contains(part))
                .then(|| rustix::process::Pid::from_raw(pid))
                .flatten()
        })
        .unwrap_or_else(|| panic!("no process of {part}"))
}

/// What dev printed after `prefix` on the line that starts with it.
fn printed<'a>(stdout: &'a str, prefix: &str) -> &'a str {
    stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} in\n{stdout}"))
}

/// Kills fra's regional control plane outright while dev runs: dev says so, starts it again on
/// the same ports and data, and a change deployed then reaches fra's gateway through it.
fn kill_and_follow_control_fra(
    data: &std::path::Path,
    dev: &mut std::process::Child,
    stdout: &str,
    lines: &std::sync::mpsc::Receiver<String>,
) {
    let killed = pid_of(data, "control --region fra");
    rustix::process::kill_process(killed, rustix::process::Signal::KILL).unwrap();
    let deadline = std::time::Duration::from_secs(60);
    support::wait_for_line(lines, deadline, "dev to see it exit", |l| {
        l.starts_with("control-fra exited (signal: 9")
            && l.ends_with("starting it again in 1s (attempt 1)")
    });
    support::wait_for_line(lines, deadline, "control-fra again", |l| {
        l == "control-fra is running again"
    });
    assert!(dev.try_wait().unwrap().is_none(), "dev stopped");
    assert_ne!(pid_of(data, "control --region fra"), killed);

    let exports = printed(stdout, "export MERIDIAN_API=");
    let (api, token) = exports.split_once(" MERIDIAN_TOKEN=").unwrap();
    let cli = Cli {
        api: api.to_owned(),
        token: token.to_owned(),
    };
    let edited = data.join("hello.yaml");
    let hello = std::fs::read_to_string(support::repo_root().join("examples/hello.yaml")).unwrap();
    std::fs::write(
        &edited,
        hello.replace("GREETING: hello", "GREETING: welcome back"),
    )
    .unwrap();
    cli.ok(&["deploy", "-f", edited.to_str().unwrap()]);
    let end = std::time::Instant::now() + std::time::Duration::from_secs(90);
    let mut last = String::new();
    while !last.starts_with("welcome back from web") {
        assert!(
            std::time::Instant::now() < end,
            "fra's gateway still answers {last:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
        last = greeting_at("127.0.0.1:18080");
    }
}

/// What the example host answers at `address` (the body of a 200, or the status line).
fn greeting_at(address: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(address) else {
        return "no connection".to_owned();
    };
    let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(5)));
    let _ = write!(
        stream,
        "GET / HTTP/1.1\r\nhost: shop.example.com\r\nconnection: close\r\n\r\n"
    );
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    match answer.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => body.trim().to_owned(),
        _ => answer.lines().next().unwrap_or_default().to_owned(),
    }
}

/// What dev with its data in `data` left behind: processes whose command line names it, and
/// its agents' network namespaces.
fn left_behind(data: &std::path::Path) -> Vec<String> {
    let data_text = data.display().to_string();
    let mut left: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|p| std::fs::read(p.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&data_text))
        .collect();
    if let Ok(namespaces) = Command::new("ip").args(["netns", "list"]).output() {
        let namespaces = String::from_utf8_lossy(&namespaces.stdout).into_owned();
        for region in ["fra", "iad", "sin"] {
            for node in 1..=2 {
                let state = data.join("agents").join(format!("{region}-{node}"));
                let prefix = meridian_agent::netns_prefix(&state);
                left.extend(
                    namespaces
                        .lines()
                        .filter(|l| l.starts_with(&prefix))
                        .map(str::to_owned),
                );
            }
        }
    }
    left
}

/// Waits until `dev` has exited (its status) and nothing it started is left.
fn gone(dev: &mut std::process::Child, data: &std::path::Path) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Some(status) = dev.try_wait().unwrap() {
            let left = left_behind(data);
            if left.is_empty() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "left running: {left:?}"
            );
        }
        assert!(
            std::time::Instant::now() < deadline,
            "meridian dev did not stop"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn dev_starts_a_platform_stops_it_on_ctrl_c_and_starts_again_from_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("dev");
    let (mut dev, stdout, _) = start_dev(&data);
    assert!(
        stdout.contains("deployed demo/shop/web version 1 to fra, iad"),
        "{stdout}"
    );
    assert!(
        stdout.contains("deployed demo/shop/api version 1 to fra, iad, sin"),
        "{stdout}"
    );
    // By the time dev says it is up, every region runs the api the printed example calls.
    let api_regions: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("demo/shop/api"))
        .skip(2)
        .take(3)
        .collect();
    assert!(
        api_regions.len() == 3 && api_regions.iter().all(|l| l.contains("running")),
        "{stdout}"
    );
    the_printed_curl_line_works(&stdout);

    // Ctrl-C stops every child, and the agents take their instances' namespaces with them.
    let pid = |dev: &std::process::Child| {
        rustix::process::Pid::from_raw(i32::try_from(dev.id()).unwrap()).unwrap()
    };
    rustix::process::kill_process(pid(&dev), rustix::process::Signal::INT).unwrap();
    let status = gone(&mut dev, &data);
    assert!(status.success(), "{status}");

    // A second start reuses the data directory: no new admin token, nothing deployed again,
    // and the example is served again.
    let (mut dev, second, lines) = start_dev(&data);
    assert!(!second.contains("deployed demo/shop"), "{second}");

    kill_and_follow_control_fra(&data, &mut dev, &second, &lines);

    // Killed outright, dev cannot stop its children: they notice it is gone and stop.
    rustix::process::kill_process(pid(&dev), rustix::process::Signal::KILL).unwrap();
    gone(&mut dev, &data);
}

/// The edges serve the example over HTTPS with dev's local CA, as the `curl --cacert …
/// --resolve …` line dev prints says, over HTTP/2, advertising HTTP/3.
fn the_printed_curl_line_works(stdout: &str) {
    let curl = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("curl --cacert"))
        .unwrap_or_else(|| panic!("no curl line for HTTPS:\n{stdout}"));
    let words: Vec<&str> = curl.split_whitespace().collect();
    let (ca, resolve, url) = (words[2], words[4], words[5]);
    let (host, rest) = resolve.split_once(':').unwrap();
    let (port, ip) = rest.split_once(':').unwrap();
    let edge = std::net::SocketAddr::new(ip.parse().unwrap(), port.parse().unwrap());
    let root = reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap();
    let client = reqwest::Client::builder()
        .no_proxy()
        .tls_built_in_root_certs(false)
        .add_root_certificate(root)
        .resolve(host, edge)
        .build()
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let answer = runtime.block_on(client.get(url).send()).unwrap();
    assert_eq!(answer.status(), 200, "{curl}");
    assert_eq!(answer.version(), reqwest::Version::HTTP_2, "{curl}");
    let alt_svc = answer.headers()["alt-svc"].to_str().unwrap().to_owned();
    assert_eq!(alt_svc, format!("h3=\":{port}\"; ma=86400"));
    let body = runtime.block_on(answer.text()).unwrap();
    assert!(!body.trim().is_empty(), "{curl}");
}

#[test]
fn dev_names_a_port_it_cannot_listen_on_at_once() {
    // Ports of gateways (three, and three 100 up) that are free, and an edge port that is not.
    let gateways = (30_000..40_000)
        .step_by(7)
        .find(|base| {
            let ports = [0, 1, 2, 100, 101, 102].map(|d| base + d);
            ports
                .iter()
                .all(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        })
        .unwrap();
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("dev");
    let mut dev = Dev(Command::new(MERIDIAN)
        .args(["dev", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .args(["--gateway-port", &gateways.to_string()])
        .args(["--edge-port", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap());
    let mut err = String::new();
    std::io::Read::read_to_string(dev.0.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(!dev.wait().unwrap().success());
    assert!(
        err.contains(&format!(
            "cannot listen on TCP 127.0.0.1:{port} for edge par (--edge-port)"
        )) && err.contains("in use"),
        "{err}"
    );
    assert!(left_behind(&data).is_empty());
}

#[test]
fn the_example_answers_with_the_greeting_its_definition_sets() {
    let definition: serde_json::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(support::repo_root().join("examples/hello.yaml")).unwrap(),
    )
    .unwrap();
    let set = definition["runtime"]["process"]["env"]["GREETING"]
        .as_str()
        .unwrap_or_else(|| panic!("examples/hello.yaml sets no GREETING: {definition}"));
    for greeting in [set, "bonjour"] {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let (hello, lines) = support::spawn_with_lines(
            Command::new(support::HELLO)
                .env("PORT", port.to_string())
                .env("MERIDIAN_ADDRESS", "127.0.0.1")
                .env("MERIDIAN_SERVICE", "web")
                .env("GREETING", greeting),
        );
        let _hello = support::Killed(hello);
        support::wait_for_line(&lines, std::time::Duration::from_secs(20), "hello", |l| {
            l.contains("listening")
        });
        let answer = greeting_at(&format!("127.0.0.1:{port}"));
        assert!(
            answer.starts_with(&format!("{greeting} from web ")),
            "{answer}"
        );
    }
}
