//! Secrets end to end: a service whose instances show their `DB_PASSWORD` (a secret), what
//! they show, and the reads and files a secret's value must never appear in.

use std::path::Path;
use std::time::{Duration, Instant};

use super::{
    agent_with_env, files_containing, read, Agent, Cli, ControlPlane, RegionalPlane, HELLO,
};

const DEADLINE: Duration = Duration::from_secs(60);

/// `ORG/shop/hello` in fra, its `DB_PASSWORD` the secret `DB_PASSWORD`, shown at
/// `/env/DB_PASSWORD` (`HELLO_SHOW_ENV`).
pub fn hello(org: &str) -> String {
    format!(
        "\
org: {org}
app: shop
name: hello
regions: [fra]
runtime:
  process:
    command: {HELLO}
    env: {{HELLO_SHOW_ENV: DB_PASSWORD, DB_PASSWORD: {{secret: DB_PASSWORD}}}}
ports: [{{name: http, port: 8080}}]
routes: [{{path_prefix: /, port: http}}]
health_checks: [{{http: {{port: http, path: /healthz}}, interval: 200ms, timeout: 200ms, grace_period: 1s}}]
"
    )
}

/// Region `fra` of `global` (whose admin token is `token`) and its agent `one`, logging at
/// debug into `dir`, its instances on `NET.1` to `NET.4` (host isolation).
pub fn region_and_agent(
    global: &ControlPlane,
    token: &str,
    dir: &Path,
    net: &str,
) -> (RegionalPlane, Agent) {
    let region = RegionalPlane::start(global, token, "fra", None);
    let first = format!("{net}.1");
    let isolation = ["--instance-addresses", &first, "--isolation", "host"];
    let env = [("MERIDIAN_LOG", "debug")];
    let agent = agent_with_env(&region, "one", dir, &isolation, &env);
    (region, agent)
}

/// What the instances answer for their `DB_PASSWORD`, one entry per instance that answers,
/// on the four addresses `NET.1` to `NET.4` of an agent started with `--instance-addresses
/// NET.1 --isolation host`.
pub async fn shown(net: &str) -> Vec<String> {
    let mut values = Vec::new();
    for last in 1..=4 {
        let url = format!("http://{net}.{last}:8080/env/DB_PASSWORD");
        let answer = reqwest::Client::new()
            .get(url)
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        if let Ok(answer) = answer.and_then(reqwest::Response::error_for_status) {
            values.extend(answer.text().await.ok());
        }
    }
    values
}

/// Waits until the only instance answering on `NET.x` ([`shown`]) shows `value`; panics with
/// `context()` after a minute.
pub async fn until_shown(net: &str, value: &str, context: impl Fn() -> String) {
    let end = Instant::now() + DEADLINE;
    while shown(net).await != [value] {
        assert!(
            Instant::now() < end,
            "the instance never showed {value}: {}",
            context()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Where `acme/shop/hello`'s secrets must not show: its components and the one who reads.
pub struct Witnesses<'a> {
    /// The global API (`http://ip:port`) and its admin token.
    pub api: &'a str,
    /// The admin token.
    pub token: &'a str,
    /// The region that runs the service.
    pub region: &'a RegionalPlane,
    /// The agent that runs its instances.
    pub agent: &'a Agent,
    /// A CLI of the org.
    pub cli: &'a Cli,
}

impl Witnesses<'_> {
    /// What every read shows, by what was read: the service's API reads, the region's
    /// deployments, the change feed and metrics, `secrets` (more API paths), the agent's
    /// configuration dumps and metrics, the region's metrics, and the CLI's status, deployments
    /// and `commands`.
    pub async fn reads(&self, secrets: &[&str], commands: &[&[&str]]) -> Vec<(String, String)> {
        let api = self.api;
        let service = format!("{api}/v1/orgs/acme/apps/shop/services/hello");
        let mut urls = vec![
            service.clone(),
            format!("{service}/deployments"),
            format!("{service}/deployments/1"),
            format!("{service}/status"),
            format!("{api}/v1/regions/fra/deployments"),
            format!("{api}/v1/changes?after=0"),
            format!("{api}/metrics"),
        ];
        urls.extend(secrets.iter().map(|path| format!("{api}{path}")));
        let mut seen = Vec::new();
        for url in urls {
            seen.push((url.clone(), read(&url, Some(self.token)).await));
        }
        for path in ["/config", "/listeners", "/metrics"] {
            let url = format!("{}{path}", self.agent.admin);
            seen.push((url.clone(), read(&url, None).await));
        }
        let url = format!("{}/metrics", self.region.admin);
        seen.push((url.clone(), read(&url, None).await));
        let cli: [&[&str]; 2] = [
            &["status", "hello", "--app", "shop", "-o", "json"],
            &["get", "deployments", "hello", "--app", "shop", "-o", "json"],
        ];
        for args in cli.iter().chain(commands) {
            seen.push((format!("meridian {args:?}"), self.cli.ok(args)));
        }
        seen
    }

    /// Asserts that none of `values` is in `seen`, in any file under `dir` (the global plane's
    /// data and logs, the agent's state) or the region's directory, or in the region's or the
    /// agent's log.
    pub fn assert_nowhere(&self, seen: &[(String, String)], dir: &Path, values: &[&str]) {
        for value in values {
            for (what, body) in seen {
                assert!(!body.contains(value), "{what} shows the secret: {body}");
            }
            for dir in [dir, self.region.dir.path()] {
                assert_eq!(
                    files_containing(dir, value),
                    Vec::<String>::new(),
                    "files holding the secret"
                );
            }
            assert!(!self.region.log().contains(value) && !self.agent.log().contains(value));
        }
        assert!(
            self.region
                .dir
                .path()
                .join("region-fra/state.json")
                .exists(),
            "the region keeps a disk copy"
        );
    }
}
