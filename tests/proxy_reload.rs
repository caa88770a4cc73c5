//! End to end: `meridian proxy --config FILE` as a process; editing the file swaps the config,
//! a broken edit changes nothing, SIGHUP applies the file again.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::MERIDIAN;

/// An upstream answering its name, on a thread of its own.
fn upstream(name: &'static str) -> SocketAddr {
    support::serve_on_thread(move || axum::Router::new().fallback(move || async move { name }))
}

fn config(upstream: SocketAddr) -> String {
    format!(
        "listeners:\n  - name: web\n    address: 127.0.0.1:0\n    virtual_hosts:\n      - name: all\n        domains: [\"*\"]\n        routes: [{{cluster: app}}]\nclusters:\n  - name: app\n    endpoints: [{{address: \"{upstream}\"}}]\naccess_log: true\n"
    )
}

fn fetch(url: &str) -> String {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async { reqwest::get(url).await.unwrap().text().await.unwrap() })
}

#[test]
fn editing_the_config_file_swaps_the_config_a_broken_edit_does_not_and_sighup_reloads() {
    let (blue, green) = (upstream("blue"), upstream("green"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("proxy.yaml");
    std::fs::write(&file, config(blue)).unwrap();
    let mut child = Command::new(MERIDIAN)
        .args(["proxy", "--admin", "127.0.0.1:0", "--config"])
        .arg(&file)
        .env("MERIDIAN_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, lines) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let (mut admin, mut web) = (None, None);
    while admin.is_none() || web.is_none() {
        let line = lines
            .recv_timeout(Duration::from_secs(60))
            .expect("proxy started");
        if let Some(rest) = line.strip_prefix("meridian proxy admin on ") {
            admin = Some(rest.to_owned());
        } else if let Some(rest) = line.strip_prefix("listener web on ") {
            web = Some(format!("http://{rest}/"));
        }
    }
    let (admin, web) = (admin.unwrap(), web.unwrap());
    assert_eq!(fetch(&format!("{admin}/healthz")), "ok\n");
    assert_eq!(fetch(&web), "blue");
    // The access log: one JSON line per request on standard output.
    let logged: serde_json::Value = loop {
        let line = lines
            .recv_timeout(Duration::from_secs(20))
            .expect("an access-log line");
        if line.starts_with('{') {
            break serde_json::from_str(&line).unwrap();
        }
    };
    assert_eq!(
        (logged["status"].as_u64(), logged["listener"].as_str()),
        (Some(200), Some("web"))
    );

    std::fs::write(&file, config(green)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while fetch(&web) != "green" {
        assert!(Instant::now() < deadline, "the edit was not picked up");
        std::thread::sleep(Duration::from_millis(50));
    }

    std::fs::write(&file, config(blue).replace("endpoints", "endpoint")).unwrap();
    let rejected = "meridian_proxy_config_reloads_total{result=\"rejected\"} 1";
    let deadline = Instant::now() + Duration::from_secs(20);
    while !fetch(&format!("{admin}/metrics")).contains(rejected) {
        assert!(Instant::now() < deadline, "the broken edit was not noticed");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(fetch(&web), "green", "a broken file changed the config");
    let live: serde_json::Value = serde_json::from_str(&fetch(&format!("{admin}/config"))).unwrap();
    assert_eq!(
        live["clusters"][0]["endpoints"][0]["address"],
        green.to_string()
    );

    // SIGHUP applies the file again even when its text is unchanged (e.g. to pick up renewed
    // certificate files).
    let applied = || {
        fetch(&format!("{admin}/metrics"))
            .lines()
            .find_map(|l| {
                l.strip_prefix("meridian_proxy_config_reloads_total{result=\"applied\"} ")?
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0)
    };
    std::fs::write(&file, config(green)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    // Applied so far: the first file, the green edit, and now the repair.
    while applied() != 3 {
        assert!(
            Instant::now() < deadline,
            "the repaired file was not applied"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = applied();
    // The shell's own `kill`: no procps needed on a minimal machine.
    let hangup = Command::new("sh")
        .args(["-c", &format!("kill -HUP {}", child.id())])
        .status()
        .unwrap();
    assert!(hangup.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    while applied() != before + 1 {
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not reload the config"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}
