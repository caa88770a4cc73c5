//! Several global control planes (replicas) on one PostgreSQL database, in a cluster the test
//! starts (skipped without PostgreSQL, unless MERIDIAN_TEST_STRICT=1). Each serves the API and
//! the federation xDS port; one holds the lease and does the singleton work (here: the local
//! CA's certificates), and when it is killed another takes the lease and the work goes on. A
//! region given every replica (`--global-xds A,B`) reports to each and, when the replica it
//! follows is killed, follows another. With SQLite the only replica holds the lease. And the
//! chaos test: three replicas and a region, several clients applying through alternating
//! replicas while replicas are killed in turn and PostgreSQL restarts: nothing acknowledged is
//! lost, the feed has no gap, the region converges, and the lease's terms never interleave.
//!
//! Loopback addresses: 127.0.183.1 (PostgreSQL), 127.0.183.2-4 (replicas), 127.0.183.5 (the
//! SQLite plane); the region on 127.0.0.1 port 0.

mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian_store::testing::TestPostgres;
use serde_json::Value;
use support::{Cli, ControlPlane, RegionalPlane};

const POSTGRES_HOST: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 183, 1));
const REPLICA_IPS: [&str; 3] = ["127.0.183.2", "127.0.183.3", "127.0.183.4"];
const DEADLINE: Duration = Duration::from_secs(30);

/// Replicas of one installation on one database.
struct Replicas {
    planes: Vec<ControlPlane>,
    /// Which of `planes` still run.
    alive: Vec<bool>,
    token: String,
    cluster: TestPostgres,
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
            cluster,
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

    /// Starts replica `i` again, at the same addresses.
    fn restart(&mut self, i: usize) {
        self.planes[i].start_again();
        self.alive[i] = true;
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

/// How a test takes the replica a region follows away.
#[derive(Clone, Copy, Debug)]
enum Loss {
    /// SIGKILL: its connections are reset.
    Killed,
    /// SIGSTOP: its connections stay open and nothing answers on them (as when a machine
    /// freezes or its network is cut); only the region's keep-alive pings notice.
    Frozen,
}

#[tokio::test(flavor = "multi_thread")]
async fn a_region_reports_to_every_replica_and_follows_another_when_its_replica_is_killed() {
    region_follows_another_replica(Loss::Killed).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_region_follows_another_replica_when_its_replica_freezes_without_a_reset() {
    region_follows_another_replica(Loss::Frozen).await;
}

/// A region given two replicas reports to both; when the one it follows is lost as `loss`
/// says, it follows the other, which sends it what changed.
async fn region_follows_another_replica(loss: Loss) {
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

    match loss {
        Loss::Killed => replicas.kill(0),
        Loss::Frozen => replicas.planes[0].signal(rustix::process::Signal::STOP),
    }
    let lost = Instant::now();
    let end = lost + DEADLINE;
    while opened(&region.log(), &replicas.planes[1].xds) == 0 {
        assert!(
            Instant::now() < end,
            "the region never followed replica 1:\n{}",
            region.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "replica {loss:?} -> region following another: {:?}",
        lost.elapsed()
    );

    // It follows the survivor: a new version reaches the region (and its report the
    // survivor, while the frozen replica takes none).
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
    if let Loss::Frozen = loss {
        // Let it go on, so that it stops like the others when the test ends.
        replicas.planes[0].signal(rustix::process::Signal::CONT);
    }
}

#[tokio::test]
async fn with_sqlite_the_only_replica_holds_the_lease() {
    let dir = tempfile::tempdir().unwrap();
    let plane = ControlPlane::start_on(dir.path(), "127.0.183.5");
    let end = Instant::now() + DEADLINE;
    while held_token(&readyz(&plane.api).await).is_none() {
        assert!(Instant::now() < end, "{}", readyz(&plane.api).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let said = readyz(&plane.api).await;
    assert!(said.contains("the only replica (SQLite)"), "{said}");
}

/// Clients applying at once in the chaos test, and how many applies each makes.
const CLIENTS: usize = 4;
const APPLIES: usize = 25;

/// The clients' progress: applies acknowledged, and whether one of them failed.
#[derive(Default)]
struct Progress {
    acked: AtomicUsize,
    failed: AtomicBool,
}

/// Marks `Progress::failed` when the client holding it panics.
struct FailsLoudly(Arc<Progress>);

impl Drop for FailsLoudly {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.failed.store(true, Ordering::SeqCst);
        }
    }
}

/// What one client's apply was acknowledged with.
struct Acked {
    service: String,
    step: usize,
    version: u64,
}

/// The definition client `client` applies at `step`: service `c<client>`, its step in an
/// environment variable, and a domain of its own (which the lease's holder issues a
/// certificate for: singleton work all along the test).
fn chaos_definition(client: usize, step: usize) -> Value {
    serde_json::json!({
        "org": "acme", "app": "shop", "name": format!("c{client}"), "regions": ["fra"],
        "runtime": {"process": {"command": "/bin/true", "env": {"STEP": step.to_string()}}},
        "ports": [{"name": "http", "port": 8080}],
        "routes": [{"path_prefix": "/", "port": "http"}],
        "domains": [format!("c{client}-{step}.example.test")],
    })
}

/// Applies `client`'s steps one after another, each through the next replica in turn (and
/// through the next again while one fails), until each is acknowledged; counts them in
/// `progress`.
async fn apply_steps(
    client: usize,
    apis: Vec<String>,
    token: String,
    progress: Arc<Progress>,
) -> Vec<Acked> {
    let _loud = FailsLoudly(progress.clone());
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut done = Vec::new();
    let mut replica = client;
    for step in 0..APPLIES {
        let end = Instant::now() + Duration::from_secs(120);
        let version = loop {
            replica = (replica + 1) % apis.len();
            let answer = http
                .post(format!("{}/v1/services", apis[replica]))
                .bearer_auth(&token)
                .json(&chaos_definition(client, step))
                .send()
                .await;
            match answer {
                Ok(answer) if answer.status().is_success() => {
                    let deployment: Value = answer.json().await.unwrap();
                    break deployment["version"].as_u64().unwrap();
                }
                Ok(answer) => {
                    let status = answer.status();
                    assert_eq!(status, 503, "{}", answer.text().await.unwrap_or_default());
                }
                Err(_) => {}
            }
            assert!(
                Instant::now() < end,
                "client {client} step {step} never acknowledged"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        progress.acked.fetch_add(1, Ordering::SeqCst);
        done.push(Acked {
            service: format!("c{client}"),
            step,
            version,
        });
    }
    done
}

/// Waits until `progress` counts `count` acknowledged applies; fails at once if a client
/// failed.
async fn acked_reach(progress: &Progress, count: usize) {
    let end = Instant::now() + Duration::from_secs(180);
    while progress.acked.load(Ordering::SeqCst) < count {
        assert!(
            !progress.failed.load(Ordering::SeqCst),
            "a client failed (see its panic above)"
        );
        assert!(
            Instant::now() < end,
            "the clients stalled below {count} acknowledged applies"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every change `api` feeds, in order.
async fn whole_feed(api: &str, token: &str) -> Vec<u64> {
    let http = reqwest::Client::new();
    let mut revisions = Vec::new();
    loop {
        let after = revisions.last().copied().unwrap_or(0);
        let page: Value = http
            .get(format!("{api}/v1/changes?after={after}&limit=1000"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let page = page["changes"].as_array().cloned().unwrap();
        if page.is_empty() {
            return revisions;
        }
        revisions.extend(page.iter().map(|c| c["revision"].as_u64().unwrap()));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn chaos_replicas_killed_in_turn_and_a_database_restart_lose_no_acknowledged_write() {
    let Some(mut replicas) = Replicas::start(3, &["--local-ca"]) else {
        return;
    };
    let xds: Vec<&str> = replicas.planes.iter().map(|p| p.xds.as_str()).collect();
    let region = RegionalPlane::start_following(
        &replicas.planes[0].api,
        &xds.join(","),
        &replicas.token,
        "fra",
    );
    let (first_holder, first_token) = replicas.holder().await;
    let apis: Vec<String> = replicas.planes.iter().map(|p| p.api.clone()).collect();
    let progress = Arc::new(Progress::default());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            tokio::spawn(apply_steps(
                client,
                apis.clone(),
                replicas.token.clone(),
                progress.clone(),
            ))
        })
        .collect();
    let total = CLIENTS * APPLIES;

    // The holder is killed, then started again once another holds the lease.
    acked_reach(&progress, total / 5).await;
    replicas.kill(first_holder);
    let (second_holder, second_token) = replicas.holder().await;
    assert!(second_token > first_token);
    replicas.restart(first_holder);

    // PostgreSQL restarts (fast shutdown) while the applies go on.
    acked_reach(&progress, 2 * total / 5).await;
    replicas.cluster.stop();
    let end = Instant::now() + DEADLINE;
    while reqwest::get(format!("{}/readyz", apis[second_holder]))
        .await
        .unwrap()
        .status()
        == 200
    {
        assert!(
            Instant::now() < end,
            "the replicas never noticed the database was down"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    replicas.cluster.start_again();

    // A replica that does not hold the lease, then the holder again.
    acked_reach(&progress, 3 * total / 5).await;
    let (holder, _) = replicas.holder().await;
    let follower = (holder + 1) % 3;
    replicas.kill(follower);
    replicas.restart(follower);
    acked_reach(&progress, 4 * total / 5).await;
    let (holder, _) = replicas.holder().await;
    replicas.kill(holder);
    let (_, last_token) = replicas.holder().await;
    replicas.restart(holder);

    let mut acks = Vec::new();
    for client in clients {
        acks.extend(client.await.unwrap());
    }
    assert_eq!(acks.len(), total);
    assert!(
        last_token > second_token,
        "the lease changed hands: {first_token}, {second_token}, {last_token}"
    );

    // Every acknowledged write is there, as acknowledged, through any replica.
    let http = reqwest::Client::new();
    for (i, ack) in acks.iter().enumerate() {
        let api = &apis[i % 3];
        let deployment: Value = http
            .get(format!(
                "{api}/v1/orgs/acme/apps/shop/services/{}/deployments/{}",
                ack.service, ack.version
            ))
            .bearer_auth(&replicas.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let step = &deployment["definition"]["runtime"]["process"]["env"]["STEP"];
        assert_eq!(
            step,
            &Value::from(ack.step.to_string()),
            "{} version {}: {deployment}",
            ack.service,
            ack.version
        );
    }

    // The feed has every revision once, in order, on every replica.
    for api in &apis {
        let feed = whole_feed(api, &replicas.token).await;
        let expected: Vec<u64> = (1..=feed.len() as u64).collect();
        assert_eq!(feed, expected, "a gap or a duplicate in the feed of {api}");
    }

    // The singleton work's writes, in commit order, carry tokens that never go back: no two
    // holders' terms interleaved.
    let db = sqlx::PgPool::connect(&replicas.cluster.url())
        .await
        .unwrap();
    let tokens: Vec<i64> = sqlx::query_scalar(
        "SELECT fence_token FROM changes WHERE fence_token IS NOT NULL ORDER BY revision",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    assert!(
        tokens.windows(2).all(|w| w[0] <= w[1]),
        "fenced writes interleaved: {tokens:?}"
    );
    let terms: std::collections::BTreeSet<i64> = tokens.iter().copied().collect();
    assert!(
        terms.len() >= 2,
        "the singleton work was done in one term only: {terms:?}"
    );
    eprintln!("fenced writes: {} in {} terms", tokens.len(), terms.len());

    // The region converges on the final state: every service's last version.
    for client in 0..CLIENTS {
        let cli = replicas.cli(client % 3);
        let name = format!("c{client}");
        let end = Instant::now() + DEADLINE;
        while state_in_fra(&cli, &name).await != "starting" {
            assert!(
                Instant::now() < end,
                "the region never converged on {name}:\n{}",
                region.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
