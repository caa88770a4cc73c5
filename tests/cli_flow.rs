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
    for version in 1..=3 {
        let out = cli.ok(&["deploy", "-f", "examples/hello.yaml"]);
        assert!(
            out.contains(&format!(
                "deployed demo/shop/web version {version} to fra, iad"
            )),
            "{out}"
        );
    }

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
    assert_eq!(row(&status, "fra"), ["fra", "2", "3", "3", "-", "pending"]);
    assert_eq!(row(&status, "iad"), ["iad", "2", "3", "3", "-", "pending"]);

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
    let control = ControlPlane::start(dir.path());
    let cli = Cli {
        api: control.api.clone(),
        token: control.token.clone().unwrap(),
    };
    cli.ok(&["region", "add", "fra", "--lat", "50.11", "--lon", "8.68"]);
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

#[test]
fn a_restarted_control_plane_keeps_state_and_prints_no_new_token() {
    let dir = tempfile::tempdir().unwrap();
    let first = ControlPlane::start(dir.path());
    let token = first.token.clone().unwrap();
    let cli = Cli {
        api: first.api.clone(),
        token: token.clone(),
    };
    cli.ok(&["region", "add", "fra", "--lat", "50.11", "--lon", "8.68"]);
    cli.ok(&["region", "add", "iad", "--lat", "38.95", "--lon", "-77.45"]);
    cli.ok(&["deploy", "-f", "examples/hello.yaml"]);
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
    use std::io::{Read, Write};
    let address = api.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: {address}\r\nauthorization: Bearer {token}\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
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
/// status; returns it and what it printed.
fn start_dev(data: &std::path::Path) -> (Dev, String) {
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
    (dev, stdout)
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
    let (mut dev, stdout) = start_dev(&data);
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

    // Ctrl-C stops every child, and the agents take their instances' namespaces with them.
    let pid = |dev: &std::process::Child| {
        rustix::process::Pid::from_raw(i32::try_from(dev.id()).unwrap()).unwrap()
    };
    rustix::process::kill_process(pid(&dev), rustix::process::Signal::INT).unwrap();
    let status = gone(&mut dev, &data);
    assert!(status.success(), "{status}");

    // A second start reuses the data directory: no new admin token, nothing deployed again,
    // and the example is served again.
    let (mut dev, second) = start_dev(&data);
    assert!(!second.contains("deployed demo/shop"), "{second}");

    // Killed outright, dev cannot stop its children: they notice it is gone and stop.
    rustix::process::kill_process(pid(&dev), rustix::process::Signal::KILL).unwrap();
    gone(&mut dev, &data);
}
