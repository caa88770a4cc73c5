//! A throwaway PostgreSQL cluster for tests (feature `testing`): `initdb` in a temporary
//! directory, the server on a loopback address the test names, stopped and removed on drop.
//!
//! PostgreSQL refuses to run as root; as root, the cluster belongs to and runs as the `postgres`
//! user (made by Debian's package) through `runuser`. Without PostgreSQL, [`TestPostgres::start`]
//! says the test is skipped and returns `None`, unless `MERIDIAN_TEST_STRICT=1` (as in CI), where
//! it fails the test.

use std::net::{IpAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The superuser of the test cluster (no password: it trusts loopback connections).
const SUPERUSER: &str = "postgres";
/// The system user a cluster runs as when the tests run as root.
const SYSTEM_USER: &str = "postgres";
/// How many ports are tried when the one picked was taken meanwhile by another process.
const PORT_ATTEMPTS: usize = 5;

/// A running PostgreSQL cluster of its own; stopped and deleted on drop.
pub struct TestPostgres {
    /// Holds the data directory and the server log.
    dir: tempfile::TempDir,
    /// Where `initdb`, `pg_ctl` and `createdb` are.
    bin: PathBuf,
    /// The user the cluster runs as, if not this process's.
    run_as: Option<&'static str>,
    host: IpAddr,
    port: u16,
    /// Whether commits reach the disk before they are acknowledged (`fsync` on), as in an
    /// installation, rather than only the server's memory.
    durable: bool,
}

impl TestPostgres {
    /// Starts a cluster listening on `host` (a loopback address) at a free port; `None` (the
    /// test is skipped) when PostgreSQL is not installed, unless `MERIDIAN_TEST_STRICT=1`.
    pub fn start(host: IpAddr) -> Option<TestPostgres> {
        Self::start_with(host, false)
    }

    /// [`TestPostgres::start`] with `fsync` on, as an installation runs PostgreSQL: a
    /// commit is acknowledged once it is on disk (for benchmarks; tests need not pay for it).
    pub fn start_durable(host: IpAddr) -> Option<TestPostgres> {
        Self::start_with(host, true)
    }

    fn start_with(host: IpAddr, durable: bool) -> Option<TestPostgres> {
        let Some(bin) = find_binaries() else {
            let why = "PostgreSQL is not installed (apt-get install postgresql)";
            assert!(!strict(), "{why} (MERIDIAN_TEST_STRICT=1)");
            eprintln!("skipped: {why}");
            return None;
        };
        let run_as = rustix::process::geteuid().is_root().then_some(SYSTEM_USER);
        let dir = tempfile::Builder::new()
            .prefix("meridian-postgres-")
            .tempdir_in("/tmp")
            .expect("a temporary directory for PostgreSQL");
        if let Some(user) = run_as {
            let (uid, gid) = (id_of(user, "-u"), id_of(user, "-g"));
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .expect("giving the cluster's directory to the postgres user");
        }
        let mut cluster = TestPostgres {
            dir,
            bin,
            run_as,
            host,
            port: 0,
            durable,
        };
        cluster.run(cluster.command("initdb").args([
            "--pgdata",
            &cluster.data().to_string_lossy(),
            "--username",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        ]));
        for attempt in 1..=PORT_ATTEMPTS {
            cluster.port = free_port(host);
            if cluster.pg_ctl_start().status.success() {
                return Some(cluster);
            }
            assert!(
                attempt < PORT_ATTEMPTS,
                "PostgreSQL did not start:\n{}",
                cluster.log()
            );
        }
        unreachable!("every attempt either returns or fails")
    }

    /// The URL of database `postgres` (the one initdb makes) as its superuser.
    pub fn url(&self) -> String {
        self.database_url("postgres")
    }

    /// The URL of database `name` as the superuser.
    pub fn database_url(&self, name: &str) -> String {
        format!("postgres://{SUPERUSER}@{}:{}/{name}", self.host, self.port)
    }

    /// Creates an empty database `name` and returns its URL.
    pub fn create_database(&self, name: &str) -> String {
        let port = self.port.to_string();
        self.run(self.command("createdb").args([
            "--host",
            &self.host.to_string(),
            "--port",
            &port,
            "--username",
            SUPERUSER,
            name,
        ]));
        self.database_url(name)
    }

    /// Stops the server, as an operator's restart would: fast shutdown (clients are
    /// disconnected, open transactions roll back, everything committed stays).
    pub fn stop(&self) {
        let stopped = self.pg_ctl_stop("fast");
        assert!(
            stopped.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&stopped.stderr)
        );
    }

    /// Starts the server again after [`TestPostgres::stop`], at the same address.
    pub fn start_again(&self) {
        let started = self.pg_ctl_start();
        assert!(
            started.status.success(),
            "PostgreSQL did not start again:\n{}",
            self.log()
        );
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    fn pg_ctl_start(&self) -> Output {
        let fsync = if self.durable { "on" } else { "off" };
        let options = format!(
            "-c listen_addresses={} -c port={} -c unix_socket_directories='' -c fsync={fsync} \
             -c shared_buffers=16MB",
            self.host, self.port
        );
        let log = self.dir.path().join("log");
        let mut command = self.command("pg_ctl");
        command.args(["start", "--wait", "--timeout=60", "--pgdata"]);
        command.arg(self.data()).arg("--log").arg(log);
        command.args(["--options", &options]);
        output(&mut command)
    }

    fn pg_ctl_stop(&self, mode: &str) -> Output {
        let mut command = self.command("pg_ctl");
        command.args(["stop", "--wait", "--timeout=60", "--mode", mode, "--pgdata"]);
        output(command.arg(self.data()))
    }

    /// `program` of the cluster's installation, run as the cluster's user.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        match self.run_as {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", user, "--"]).arg(path);
                command
            }
            None => Command::new(path),
        }
    }

    /// Runs `command`, failing the test if it fails.
    fn run(&self, command: &mut Command) {
        let done = output(command);
        assert!(
            done.status.success(),
            "{command:?}: {}{}",
            String::from_utf8_lossy(&done.stdout),
            String::from_utf8_lossy(&done.stderr)
        );
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        // Immediate: nothing of a throwaway cluster needs to reach the disk. The directory goes
        // with `dir`.
        let _ = self.pg_ctl_stop("immediate");
    }
}

/// Whether tests must fail rather than skip when a prerequisite is missing (as in CI).
fn strict() -> bool {
    std::env::var("MERIDIAN_TEST_STRICT").as_deref() == Ok("1")
}

/// The directory of PostgreSQL's server programs: the newest Debian installation
/// (`/usr/lib/postgresql/<version>/bin`, not on PATH there), else the first on PATH.
fn find_binaries() -> Option<PathBuf> {
    let has_all = |dir: &Path| {
        ["initdb", "pg_ctl", "createdb"]
            .iter()
            .all(|p| dir.join(p).is_file())
    };
    let mut debian: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, bin)| has_all(bin))
        .collect();
    debian.sort();
    if let Some((_, bin)) = debian.pop() {
        return Some(bin);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).find(|dir| has_all(dir))
}

/// The id (`-u`: user, `-g`: group) of system user `user`.
fn id_of(user: &str, which: &str) -> u32 {
    let out = output(Command::new("id").args([which, user]));
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("no system user `{user}` to run PostgreSQL as"))
}

/// A port free on `host` now (the server binds it right after; another process may take it
/// meanwhile, hence the retries).
fn free_port(host: IpAddr) -> u16 {
    TcpListener::bind((host, 0))
        .and_then(|listener| listener.local_addr())
        .unwrap_or_else(|e| panic!("no free port on {host}: {e}"))
        .port()
}

fn output(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|e| panic!("running {command:?}: {e}"))
}
