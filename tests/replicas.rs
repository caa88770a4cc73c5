//! Several global control planes (replicas) on one PostgreSQL database, in a cluster the test
//! starts (skipped without PostgreSQL, unless MERIDIAN_TEST_STRICT=1). Each serves the API and
//! the federation xDS port; one holds the lease and does the singleton work (here: the local
//! CA's certificates), and when it is killed another takes the lease and the work goes on. A
//! region given every replica (`--global-xds A,B`) reports to each and, when the replica it
//! follows is killed, follows another. With SQLite the only replica holds the lease.
//!
//! Loopback addresses: 127.0.160.1 (PostgreSQL), 127.0.160.2-4 (replicas), 127.0.160.5 (the
//! SQLite plane); the region on 127.0.0.1 port 0.

mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::{Duration, Instant};

use meridian_store::testing::TestPostgres;
use serde_json::Value;
use support::{Cli, ControlPlane, RegionalPlane};

const POSTGRES_HOST: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 160, 1));
const REPLICA_IPS: [&str; 3] = ["127.0.160.2", "127.0.160.3", "127.0.160.4"];
const DEADLINE: Duration = Duration::from_secs(30);

/// Replicas of one installation on one database.
struct Replicas {
    planes: Vec<ControlPlane>,
    /// Which of `planes` still run.
    alive: Vec<bool>,
    token: String,
    _cluster: TestPostgres,
    _dir: tempfile::TempDir,
}

impl Replicas {
    /// `count` replicas started with `extra`, the first one's data directory (its root CA,
    /// local CA) copied to the others as an operator would; region `fra` added.
    fn start(count: usize, extra: &[&str]) -> Option<Replicas> {
        let cluster = TestPostgres::start(POSTGRES_HOST)?;
        let dir = tempfile::tempdir().unwrap();
        let url = cluster.url();
        let key = dir.path().join("secrets.key");
        let args: Vec<&str> = ["--store", &url, "--secrets-key", key.to_str().unwrap()]
            .into_iter()
            .chain(["--create-secrets-key"])
            .chain(extra.iter().copied())
            .collect();
        let first_dir = dir.path().join("replica-0");
        let first = ControlPlane::start_on_with(&first_dir, REPLICA_IPS[0], &args);
        let token = first.token.clone().expect("a first start shows the token");
        let mut planes = vec![first];
        for (i, ip) in REPLICA_IPS.iter().enumerate().take(count).skip(1) {
            let data = dir.path().join(format!("replica-{i}"));
            copy_dir(&first_dir, &data);
            planes.push(ControlPlane::start_on_with(&data, ip, &args));
        }
        let replicas = Replicas {
            alive: vec![true; planes.len()],
            planes,
            token,
            _cluster: cluster,
            _dir: dir,
        };
        replicas
            .cli(0)
            .ok(&["region", "add", "fra", "--lat", "50.11", "--lon", "8.68"]);
        Some(replicas)
    }

    /// The admin CLI through replica `i`.
    fn cli(&self, i: usize) -> Cli {
        Cli {
            api: self.planes[i].api.clone(),
            token: self.token.clone(),
        }
    }

    /// Kills replica `i` (SIGKILL).
    fn kill(&mut self, i: usize) {
        self.planes[i].stop();
        self.alive[i] = false;
    }

    /// The replica that says it holds the lease, and its token, once exactly one running
    /// replica does.
    async fn holder(&self) -> (usize, u64) {
        let end = Instant::now() + DEADLINE;
        loop {
            let mut holders = Vec::new();
            for (i, plane) in self.planes.iter().enumerate() {
                if self.alive[i] {
                    if let Some(token) = held_token(&readyz(&plane.api).await) {
                        holders.push((i, token));
                    }
                }
            }
            if let [one] = holders[..] {
                return one;
            }
            assert!(
                holders.len() < 2,
                "two replicas hold the lease: {holders:?}"
            );
            assert!(Instant::now() < end, "no replica took the lease");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Copies directory `from` to `to` (created), recursively.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// What `/readyz` at `api` answers.
async fn readyz(api: &str) -> String {
    reqwest::get(format!("{api}/readyz"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The lease's token, if `readyz` says this replica holds it.
fn held_token(readyz: &str) -> Option<u64> {
    let line = readyz
        .lines()
        .find(|l| l.starts_with("lease: held by this replica"))?;
    let token = line.split("token ").nth(1)?.split(')').next()?;
    Some(token.parse().unwrap())
}

/// The value of the unlabelled metric `name` at `api`.
async fn metric(api: &str, name: &str) -> f64 {
    let text = support::metrics(api).await;
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no {name} in\n{text}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Deploys a service named `name` of app shop claiming `domain` through `cli`.
fn deploy(cli: &Cli, dir: &Path, name: &str, domain: &str) {
    let file = dir.join(format!("{name}.yaml"));
    let definition =
        support::shop_web("/bin/true", domain, "").replace("name: web", &format!("name: {name}"));
    std::fs::write(&file, definition).unwrap();
    cli.ok(&["deploy", "--detach", "-f", file.to_str().unwrap()]);
}

/// Waits until `domain` has a valid certificate, as `cli` lists it.
async fn wait_for_certificate(cli: &Cli, domain: &str) {
    let end = Instant::now() + DEADLINE;
    loop {
        let listed = cli.json(&["domains"]);
        let state = listed
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["domain"] == domain)
            .map(|d| d["state"].clone());
        if state == Some(Value::from("valid")) {
            return;
        }
        assert!(
            Instant::now() < end,
            "{domain} got no certificate: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_replica_holds_the_lease_and_when_it_is_killed_another_takes_it_and_the_work_goes_on() {
    let Some(mut replicas) = Replicas::start(2, &["--local-ca"]) else {
        return;
    };
    let (holder, token) = replicas.holder().await;
    let other = 1 - holder;
    assert_eq!(
        metric(&replicas.planes[holder].api, "meridian_control_lease_held").await,
        1.0
    );
    assert_eq!(
        metric(&replicas.planes[other].api, "meridian_control_lease_held").await,
        0.0
    );
    let standby = readyz(&replicas.planes[other].api).await;
    assert!(
        standby.starts_with("ready\nlease: not held by this replica"),
        "{standby}"
    );

    // A domain claimed through the replica that does not hold the lease is issued by the one
    // that does.
    let dir = tempfile::tempdir().unwrap();
    deploy(&replicas.cli(other), dir.path(), "one", "one.example.test");
    wait_for_certificate(&replicas.cli(other), "one.example.test").await;

    replicas.kill(holder);
    let killed = Instant::now();
    let (next, next_token) = replicas.holder().await;
    eprintln!("lease holder killed -> new holder: {:?}", killed.elapsed());
    assert_eq!(next, other);
    assert!(next_token > token, "{next_token} after {token}");
    assert_eq!(
        metric(&replicas.planes[next].api, "meridian_control_lease_token").await,
        next_token as f64
    );

    deploy(&replicas.cli(next), dir.path(), "two", "two.example.test");
    wait_for_certificate(&replicas.cli(next), "two.example.test").await;
}

/// The state of service shop/`name` in fra, as replica `api` reports it.
async fn state_in_fra(cli: &Cli, name: &str) -> String {
    let status = cli.json(&["status", name, "--app", "shop", "--org", "acme"]);
    status["regions"][0]["state"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_region_reports_to_every_replica_and_follows_another_when_its_replica_is_killed() {
    let Some(mut replicas) = Replicas::start(2, &[]) else {
        return;
    };
    let xds = format!("{},{}", replicas.planes[0].xds, replicas.planes[1].xds);
    let region =
        RegionalPlane::start_following(&replicas.planes[0].api, &xds, &replicas.token, "fra");
    let dir = tempfile::tempdir().unwrap();
    deploy(&replicas.cli(1), dir.path(), "web", "web.example.test");
    // The region has it (it runs nowhere: no agents) and both replicas hear so.
    for i in 0..2 {
        let end = Instant::now() + DEADLINE;
        while state_in_fra(&replicas.cli(i), "web").await != "starting" {
            assert!(
                Instant::now() < end,
                "replica {i} never heard of web in fra:\n{}",
                region.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let opened = |log: &str, server: &str| {
        log.lines()
            .filter(|l| l.contains("xDS stream open") && l.contains(server))
            .count()
    };
    assert_eq!(
        opened(&region.log(), &replicas.planes[0].xds),
        1,
        "{}",
        region.log()
    );

    replicas.kill(0);
    let killed = Instant::now();
    let end = killed + DEADLINE;
    while opened(&region.log(), &replicas.planes[1].xds) == 0 {
        assert!(
            Instant::now() < end,
            "the region never followed replica 1:\n{}",
            region.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "replica killed -> region following another: {:?}",
        killed.elapsed()
    );

    // It follows the survivor: a new version reaches the region.
    deploy(&replicas.cli(1), dir.path(), "api", "api.example.test");
    let end = Instant::now() + DEADLINE;
    while state_in_fra(&replicas.cli(1), "api").await != "starting" {
        assert!(
            Instant::now() < end,
            "the region never got api:\n{}",
            region.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn with_sqlite_the_only_replica_holds_the_lease() {
    let dir = tempfile::tempdir().unwrap();
    let plane = ControlPlane::start_on(dir.path(), "127.0.160.5");
    let end = Instant::now() + DEADLINE;
    while held_token(&readyz(&plane.api).await).is_none() {
        assert!(Instant::now() < end, "{}", readyz(&plane.api).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let said = readyz(&plane.api).await;
    assert!(said.contains("the only replica (SQLite)"), "{said}");
}
