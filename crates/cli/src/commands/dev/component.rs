//! One component of `meridian dev`: how its process is started (the same binary with the
//! component's arguments), its output into `<logs>/<name>.log`, the wait for the line that says
//! it serves, and how it is stopped. A start that fails says why: the exit status and the last
//! lines of the component's log, where its errors are.

use std::ffi::OsString;
use std::future::Future;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncSeekExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use super::children::EXIT_WITH_PARENT;

/// How long a component may take to say it serves.
const START_DEADLINE: Duration = Duration::from_secs(60);
/// How long a component may take to stop after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(15);
/// How many of the last lines of its log a failed start shows.
const TAIL_LINES: usize = 3;

/// The option that gives a component its one-time join token: the first start spends it and
/// keeps the identity it got in the component's state, which later starts use.
const JOIN_TOKEN: &str = "--join-token";

/// Variables of dev's environment that no component gets: the admin token a shell may have
/// exported for the CLI, and a join token, which dev hands each component as an option. An
/// agent runs instances as its own user, and nothing a component's user can read should hold
/// them.
const WITHHELD: [&str; 2] = ["MERIDIAN_TOKEN", "MERIDIAN_JOIN_TOKEN"];

/// How to start one component.
#[derive(Clone)]
pub struct Component {
    /// Its name, which also names its log.
    pub name: String,
    args: Vec<String>,
    options: Vec<(String, OsString)>,
    ready: String,
}

impl Component {
    /// `name`, run with `args`, serving once it prints a line that contains `ready`.
    pub fn new(name: &str, args: &[&str], ready: &str) -> Component {
        Component {
            name: name.to_owned(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            options: Vec::new(),
            ready: ready.to_owned(),
        }
    }

    /// Sets option `flag` to `value` (after the arguments), replacing an earlier value.
    pub fn set(&mut self, flag: &str, value: impl Into<OsString>) {
        let value = value.into();
        match self.options.iter_mut().find(|(f, _)| f == flag) {
            Some((_, old)) => *old = value,
            None => self.options.push((flag.to_owned(), value)),
        }
    }

    /// How to start it again after it ran: without its join token, already spent.
    pub fn again(&self) -> Component {
        let mut again = self.clone();
        again.options.retain(|(flag, _)| flag != JOIN_TOKEN);
        again
    }
}

/// A component whose process runs and said it serves.
pub struct Started {
    /// Its process.
    pub child: Child,
    /// What it printed up to its ready line.
    pub output: String,
    /// Its ready line.
    pub line: String,
}

/// Starts `component` as `exe` with its log in `logs` (and dev's environment but for
/// [`WITHHELD`]), and waits until it says it serves (its output keeps going to its log after
/// that). A component that exits first, or does not say it serves in time, is an error that
/// gives its exit status and the end of its log. When `cancel` completes first, the component
/// is stopped (SIGTERM, see [`stop`]) and the answer is `None`.
pub async fn start(
    exe: &Path,
    logs: &Path,
    component: &Component,
    cancel: impl Future,
) -> Result<Option<Started>> {
    let name = &component.name;
    let log_path = logs.join(format!("{name}.log"));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let mut command = Command::new(exe);
    command.args(&component.args);
    for variable in WITHHELD {
        command.env_remove(variable);
    }
    for (flag, value) in &component.options {
        command.arg(flag).arg(value);
    }
    // Instances find meridian-hello next to meridian.
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![dir];
    paths.extend(std::env::split_paths(&path));
    command
        .env("PATH", std::env::join_paths(paths)?)
        .env(EXIT_WITH_PARENT, "1")
        .env(
            "MERIDIAN_LOG",
            std::env::var("MERIDIAN_LOG").unwrap_or_else(|_| "info".to_owned()),
        )
        .env("MERIDIAN_LOG_FORMAT", crate::logging::format().as_str())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log.try_clone()?))
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {name} ({})", exe.display()))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let mut log = tokio::fs::File::from_std(log);
    let mut output = String::new();
    let wait = async {
        while let Some(line) = lines.next_line().await? {
            log.write_all(format!("{line}\n").as_bytes()).await?;
            output.push_str(&line);
            output.push('\n');
            if line.contains(&component.ready) {
                return Ok::<_, std::io::Error>(Some(line));
            }
        }
        Ok(None)
    };
    let waited = tokio::select! {
        waited = tokio::time::timeout(START_DEADLINE, wait) => Some(waited),
        _ = cancel => None,
    };
    let Some(waited) = waited else {
        stop(name, child).await;
        return Ok(None);
    };
    let line = match waited {
        Ok(Ok(Some(line))) => line,
        Ok(Ok(None)) | Ok(Err(_)) => {
            let status = child
                .wait()
                .await
                .map_or_else(|e| e.to_string(), |s| s.to_string());
            bail!(
                "{name} exited before it was up ({status}); its log {} ends:\n{}",
                log_path.display(),
                tail(&log_path).await
            )
        }
        Err(_) => {
            stop(name, child).await;
            bail!(
                "{name} did not start within {}s; its log {} ends:\n{}",
                START_DEADLINE.as_secs(),
                log_path.display(),
                tail(&log_path).await
            )
        }
    };
    // Keep draining its output into the log, so that it never blocks on a full pipe.
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if log.write_all(format!("{line}\n").as_bytes()).await.is_err() {
                break;
            }
        }
    });
    Ok(Some(Started {
        child,
        output,
        line,
    }))
}

/// Stops `child` (component `name`): SIGTERM, then SIGKILL after a grace period.
pub async fn stop(name: &str, mut child: Child) {
    if let Some(pid) = child
        .id()
        .and_then(|id| rustix::process::Pid::from_raw(id as i32))
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    if tokio::time::timeout(STOP_GRACE, child.wait())
        .await
        .is_err()
    {
        eprintln!(
            "{name} did not stop within {}s; killing it",
            STOP_GRACE.as_secs()
        );
        let _ = child.kill().await;
    }
}

/// The last [`TAIL_LINES`] lines of the log at `path`, indented (read from its last few KiB:
/// logs grow over many starts).
async fn tail(path: &Path) -> String {
    const LAST_BYTES: u64 = 8 * 1024;
    let mut text = Vec::new();
    let read = async {
        let mut file = tokio::fs::File::open(path).await?;
        let length = file.metadata().await?.len();
        file.seek(std::io::SeekFrom::Start(length.saturating_sub(LAST_BYTES)))
            .await?;
        file.read_to_end(&mut text).await
    };
    if let Err(e) = read.await {
        return format!("  (cannot read it: {e})");
    }
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(TAIL_LINES)..]
        .iter()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use std::future::pending;

    use super::*;

    #[tokio::test]
    async fn components_get_neither_the_admin_nor_a_join_token_of_devs_environment() {
        // Safe enough: nextest runs each test in a process of its own.
        std::env::set_var("MERIDIAN_TOKEN", "admin-secret");
        std::env::set_var("MERIDIAN_JOIN_TOKEN", "join-secret");
        let dir = tempfile::tempdir().unwrap();
        let script =
            "echo \"[$MERIDIAN_TOKEN|$MERIDIAN_JOIN_TOKEN|$MERIDIAN_EXIT_WITH_PARENT] up\"; \
                      exec sleep 600";
        let component = Component::new("part", &["-c", script], "] up");
        let started = start(
            Path::new("/bin/sh"),
            dir.path(),
            &component,
            pending::<()>(),
        )
        .await
        .unwrap()
        .unwrap();
        // Dev's own variables reach it, the tokens do not.
        assert_eq!(started.line, "[||1] up");
        stop("part", started.child).await;
    }
}
