//! The dev supervisor's children: each component a process of the same binary, its output in
//! `<data>/logs/<name>.log`, started in order (each waits for the line that says it serves)
//! and stopped in reverse order with SIGTERM, so that agents stop their instances.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

/// How long a component may take to say it serves.
const START_DEADLINE: Duration = Duration::from_secs(60);
/// How long a component may take to stop after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(15);

/// The running components, in start order.
pub struct Children {
    exe: PathBuf,
    logs: PathBuf,
    running: Vec<(String, Child)>,
    /// What each printed up to the line it was waited for.
    outputs: HashMap<String, String>,
}

impl Children {
    /// No children yet; `exe` is the binary to run, `logs` the directory of their logs.
    pub fn new(exe: &Path, logs: &Path) -> Result<Children> {
        std::fs::create_dir_all(logs).with_context(|| format!("creating {}", logs.display()))?;
        Ok(Children {
            exe: exe.to_owned(),
            logs: logs.to_owned(),
            running: Vec::new(),
            outputs: HashMap::new(),
        })
    }

    /// Starts `name`: `args`, then each `(flag, path)` and `(flag, value)`; returns the first
    /// line of its standard output that contains `ready`.
    pub async fn spawn(
        &mut self,
        name: &str,
        args: &[&str],
        paths: &[(&str, PathBuf)],
        options: &[(&str, String)],
        ready: &str,
    ) -> Result<String> {
        let log_path = self.logs.join(format!("{name}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let mut command = Command::new(&self.exe);
        command.args(args);
        for (flag, path) in paths {
            command.arg(flag).arg(path);
        }
        for (flag, value) in options {
            command.arg(flag).arg(value);
        }
        // Instances find meridian-hello next to meridian.
        let dir = self.exe.parent().map(Path::to_path_buf).unwrap_or_default();
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
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log.try_clone()?))
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {name} ({})", self.exe.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        self.running.push((name.to_owned(), child));
        let mut lines = BufReader::new(stdout).lines();
        let mut log = tokio::fs::File::from_std(log);
        let mut output = String::new();
        let wait = async {
            while let Some(line) = lines.next_line().await? {
                log.write_all(format!("{line}\n").as_bytes()).await?;
                output.push_str(&line);
                output.push('\n');
                if line.contains(ready) {
                    return Ok::<_, std::io::Error>(Some(line));
                }
            }
            Ok(None)
        };
        let line = match tokio::time::timeout(START_DEADLINE, wait).await {
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None)) | Ok(Err(_)) => {
                bail!("{name} exited before it was up; see {}", log_path.display())
            }
            Err(_) => bail!(
                "{name} did not start within {}s; see {}",
                START_DEADLINE.as_secs(),
                log_path.display()
            ),
        };
        self.outputs.insert(name.to_owned(), output);
        // Keep draining its output into the log, so that it never blocks on a full pipe.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if log.write_all(format!("{line}\n").as_bytes()).await.is_err() {
                    break;
                }
            }
        });
        Ok(line)
    }

    /// What `name` printed up to its ready line.
    pub fn last_output(&self, name: &str) -> String {
        self.outputs.get(name).cloned().unwrap_or_default()
    }

    /// Waits until a child exits; returns its name.
    pub async fn any_exit(&mut self) -> String {
        loop {
            for (name, child) in &mut self.running {
                if !matches!(child.try_wait(), Ok(None)) {
                    return name.clone();
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Stops every child, the last started first: SIGTERM, then SIGKILL after a grace period.
    pub async fn stop_all(&mut self) {
        println!("stopping");
        while let Some((name, mut child)) = self.running.pop() {
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
    }
}

/// Set in the environment of dev's children: each stops (as on SIGTERM) when dev is gone, even
/// if dev could not stop it (it was killed).
pub const EXIT_WITH_PARENT: &str = "MERIDIAN_EXIT_WITH_PARENT";

/// How often a child of dev looks whether dev is still there.
const PARENT_CHECK: std::time::Duration = std::time::Duration::from_millis(500);

/// Sends this process SIGTERM once its parent is gone (it was given another parent), so that
/// it stops the way it stops on SIGTERM. Runs for as long as the process.
pub async fn exit_with_parent() {
    let parent = rustix::process::getppid();
    loop {
        tokio::time::sleep(PARENT_CHECK).await;
        if rustix::process::getppid() != parent {
            tracing::warn!("meridian dev is gone; stopping");
            let _ = rustix::process::kill_process(
                rustix::process::getpid(),
                rustix::process::Signal::TERM,
            );
            return;
        }
    }
}
