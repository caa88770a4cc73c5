//! The dev supervisor's children: each component a process of the same binary (see
//! [`component`](super::component)), started in order (each waits for the line that says it
//! serves), started again when it exits (after a delay that doubles with each exit in a row, up
//! to a cap, with the same options, ports and data), and stopped in reverse order with SIGTERM,
//! so that agents stop their instances.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::process::Child;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::component::{self, Component, Started};

/// The delay before a component that exited is started again, the first time in a row.
const FIRST_DELAY: Duration = Duration::from_secs(1);
/// The longest delay before a component is started again.
const MAX_DELAY: Duration = Duration::from_secs(30);
/// A component that ran this long before it exited starts again after [`FIRST_DELAY`].
const STABLE: Duration = Duration::from_secs(60);

/// The running components, in start order.
pub struct Children {
    exe: PathBuf,
    logs: PathBuf,
    running: Vec<Supervised>,
    /// The component being started (its first start), in a task of its own so that a stop
    /// asked for meanwhile (which drops [`Children::spawn`]) still stops it with SIGTERM, at
    /// once: the sender cancels the start.
    starting: Option<(oneshot::Sender<()>, JoinHandle<StartResult>)>,
    /// What each printed up to the line it was waited for, at its first start.
    outputs: HashMap<String, String>,
    /// Set once everything stops: no component starts again.
    stopping: Arc<AtomicBool>,
}

/// What a start gives: the started component, or `None` when it was cancelled.
type StartResult = Result<Option<Started>>;

/// A component and the task that keeps it running.
struct Supervised {
    name: String,
    /// How it starts again (shared with its task).
    component: Arc<Mutex<Component>>,
    /// Tells its task to stop it.
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Children {
    /// No children yet; `exe` is the binary to run, `logs` the directory of their logs.
    pub fn new(exe: &Path, logs: &Path) -> Result<Children> {
        std::fs::create_dir_all(logs).with_context(|| format!("creating {}", logs.display()))?;
        Ok(Children {
            exe: exe.to_owned(),
            logs: logs.to_owned(),
            running: Vec::new(),
            starting: None,
            outputs: HashMap::new(),
            stopping: Arc::default(),
        })
    }

    /// Starts `name`: `args`, then each `(flag, path)` and `(flag, value)`; returns the first
    /// line of its standard output that contains `ready`. From then on it is started again
    /// whenever it exits, until [`Children::stop_all`].
    pub async fn spawn(
        &mut self,
        name: &str,
        args: &[&str],
        paths: &[(&str, PathBuf)],
        options: &[(&str, String)],
        ready: &str,
    ) -> Result<String> {
        let mut component = Component::new(name, args, ready);
        for (flag, path) in paths {
            component.set(flag, path);
        }
        for (flag, value) in options {
            component.set(flag, value);
        }
        let (exe, logs, first) = (self.exe.clone(), self.logs.clone(), component.clone());
        let (cancel, cancelled) = oneshot::channel::<()>();
        let task =
            tokio::spawn(async move { component::start(&exe, &logs, &first, cancelled).await });
        let (_, task) = self.starting.insert((cancel, task));
        let started = task.await;
        self.starting = None;
        let Some(started) = started.context("starting a component")?? else {
            bail!("{name} was stopped while it started");
        };
        self.outputs.insert(name.to_owned(), started.output);
        let component = Arc::new(Mutex::new(component.again()));
        let (stop, stopped) = oneshot::channel();
        let restarts = Restarts {
            exe: self.exe.clone(),
            logs: self.logs.clone(),
            component: component.clone(),
            stopping: self.stopping.clone(),
        };
        let task = tokio::spawn(restarts.supervise(started.child, stopped));
        self.running.push(Supervised {
            name: name.to_owned(),
            component,
            stop,
            task,
        });
        Ok(started.line)
    }

    /// Starts `name` with `flag` set to `value` whenever it starts again: e.g. the address it
    /// chose on a port 0 at its first start, which the others now use.
    pub fn keep(&self, name: &str, flag: &str, value: &str) {
        if let Some(s) = self.running.iter().find(|s| s.name == name) {
            s.component
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .set(flag, value);
        }
    }

    /// What `name` printed up to its ready line at its first start.
    pub fn last_output(&self, name: &str) -> String {
        self.outputs.get(name).cloned().unwrap_or_default()
    }

    /// Stops every child, the last started first: SIGTERM, then SIGKILL after a grace period.
    /// None starts again from then on.
    pub async fn stop_all(&mut self) {
        println!("stopping");
        self.stopping.store(true, Ordering::SeqCst);
        if let Some((cancel, task)) = self.starting.take() {
            let _ = cancel.send(());
            let _ = task.await;
        }
        while let Some(supervised) = self.running.pop() {
            let _ = supervised.stop.send(());
            let _ = supervised.task.await;
        }
    }
}

/// What a component's task needs to start it again.
struct Restarts {
    exe: PathBuf,
    logs: PathBuf,
    component: Arc<Mutex<Component>>,
    stopping: Arc<AtomicBool>,
}

impl Restarts {
    /// Keeps the component of `child` (which said it serves) running: when it exits, says so
    /// and starts it again after [`delay`]; stops it when `stop` fires.
    async fn supervise(self, mut child: Child, mut stop: oneshot::Receiver<()>) {
        let name = self.component().name;
        let mut exits_in_a_row = 0;
        loop {
            let since = Instant::now();
            let status = tokio::select! {
                status = child.wait() => status,
                _ = &mut stop => return component::stop(&name, child).await,
            };
            if since.elapsed() >= STABLE {
                exits_in_a_row = 0;
            }
            let mut why = match status {
                Ok(status) => format!("exited ({status})"),
                Err(e) => format!("cannot be waited for ({e})"),
            };
            child = loop {
                exits_in_a_row += 1;
                let delay = delay(exits_in_a_row);
                println!(
                    "{name} {why}; starting it again in {} (attempt {exits_in_a_row})",
                    humantime::format_duration(delay)
                );
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    _ = &mut stop => return,
                }
                if self.stopping.load(Ordering::SeqCst) {
                    let _ = stop.await;
                    return;
                }
                // A stop that comes while it starts stops it with SIGTERM, at once.
                let again = self.component();
                match component::start(&self.exe, &self.logs, &again, &mut stop).await {
                    Ok(Some(started)) => {
                        println!("{name} is running again");
                        break started.child;
                    }
                    Ok(None) => return,
                    Err(e) => why = format!("did not start again: {e:#}"),
                }
            };
        }
    }

    fn component(&self) -> Component {
        self.component
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// The delay before a component starts again after `exits_in_a_row` exits: [`FIRST_DELAY`],
/// doubled with each exit after the first, at most [`MAX_DELAY`].
fn delay(exits_in_a_row: u32) -> Duration {
    let doublings = exits_in_a_row.saturating_sub(1).min(16);
    FIRST_DELAY.saturating_mul(1 << doublings).min(MAX_DELAY)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Children run by `sh`, with their logs in `dir`.
    fn shells(dir: &Path) -> Children {
        Children::new(Path::new("/bin/sh"), &dir.join("logs")).unwrap()
    }

    /// Polls `done` every 20 ms for 20 s at most.
    async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
        let end = Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(Instant::now() < end, "waited in vain for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_component_that_exits_starts_again_with_what_it_keeps_and_stops_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let starts = dir.path().join("starts");
        // Each start notes its options and pid; the first exits once up, the second stays.
        let script = format!(
            "echo \"$$ $*\" >> {0}; echo up; \
             [ $(wc -l < {0}) -ge 2 ] || exit 3; exec sleep 600",
            starts.display()
        );
        let mut children = shells(dir.path());
        let options = [
            ("--join-token", "once".to_owned()),
            ("--port", "0".to_owned()),
        ];
        let line = children
            .spawn("part", &["-c", &script, "sh"], &[], &options, "up")
            .await
            .unwrap();
        assert_eq!(line, "up");
        children.keep("part", "--port", "4242");
        let read = || std::fs::read_to_string(&starts).unwrap_or_default();
        eventually("a second start", || read().lines().count() == 2).await;
        let text = read();
        let lines: Vec<(&str, &str)> = text.lines().map(|l| l.split_once(' ').unwrap()).collect();
        assert_eq!(lines[0].1, "--join-token once --port 0");
        // The join token was spent by the first start; the port is the one it kept.
        assert_eq!(lines[1].1, "--port 4242");
        let second = format!("/proc/{}", lines[1].0);
        eventually("the second start to be up", || {
            std::fs::read_to_string(Path::new(&second).join("cmdline"))
                .is_ok_and(|c| c.starts_with("sleep"))
        })
        .await;
        children.stop_all().await;
        assert!(!Path::new(&second).exists(), "still running after stop_all");
        assert_eq!(read().lines().count(), 2, "started again after stop_all");
    }

    /// A script in `dir` that notes each start in `began` (its pid) and a SIGTERM in `termed`.
    /// Its first `quick` starts are up (print `up`) at once, and exit then; later ones are up
    /// only once the file `go` exists, which the tests do not create: they stay starting.
    fn slow_starter(dir: &Path, quick: usize) -> String {
        format!(
            "trap 'touch termed; exit 0' TERM; echo $$ >> began; \
             if [ $(wc -l < began) -gt {quick} ]; then \
               while [ ! -e go ]; do sleep 0.05 & wait; done; \
             fi; \
             echo up; exit 3",
        )
        .replace("began", &dir.join("began").display().to_string())
        .replace("termed", &dir.join("termed").display().to_string())
        .replace(" go ", &format!(" {} ", dir.join("go").display()))
    }

    /// Stops `children`, failing if that waits for a start to give up (60 s).
    async fn stop_promptly(children: &mut Children) {
        tokio::time::timeout(Duration::from_secs(20), children.stop_all())
            .await
            .expect("stop_all waited for the start to give up");
    }

    #[tokio::test]
    async fn a_stop_while_a_component_starts_stops_it_with_sigterm() {
        let dir = tempfile::tempdir().unwrap();
        let (began, termed) = (dir.path().join("began"), dir.path().join("termed"));
        let script = slow_starter(dir.path(), 0);
        let args = ["-c", script.as_str()];
        let mut children = shells(dir.path());
        // The stop comes (and drops the start) while it starts.
        tokio::select! {
            _ = children.spawn("part", &args, &[], &[], "up") => panic!("up without go"),
            () = eventually("the start", || began.exists()) => {}
        }
        stop_promptly(&mut children).await;
        assert!(termed.exists(), "not stopped with SIGTERM");
    }

    #[tokio::test]
    async fn a_stop_while_a_component_starts_again_stops_it_at_once_with_sigterm() {
        let dir = tempfile::tempdir().unwrap();
        let (began, termed) = (dir.path().join("began"), dir.path().join("termed"));
        let script = slow_starter(dir.path(), 1);
        let mut children = shells(dir.path());
        children
            .spawn("part", &["-c", &script], &[], &[], "up")
            .await
            .unwrap();
        let read = || std::fs::read_to_string(&began).unwrap_or_default();
        // It exited once up, and starts again (after a second), waiting for `go`.
        eventually("a second start", || read().lines().count() == 2).await;
        stop_promptly(&mut children).await;
        assert!(termed.exists(), "not stopped with SIGTERM");
        assert_eq!(read().lines().count(), 2, "started again after stop_all");
    }

    #[tokio::test]
    async fn a_component_that_exits_before_it_is_up_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let script = "echo 'cannot listen on 127.0.0.1:7070: Address in use' >&2; exit 7";
        let err = shells(dir.path())
            .spawn("part", &["-c", script], &[], &[], "up")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("part exited before it was up (exit status: 7)"),
            "{err}"
        );
        assert!(
            err.contains("cannot listen on 127.0.0.1:7070: Address in use"),
            "{err}"
        );
    }

    #[test]
    fn the_delay_doubles_up_to_its_cap() {
        let delays: Vec<u64> = (1..=8).map(|n| delay(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(delay(u32::MAX), MAX_DELAY);
    }
}
