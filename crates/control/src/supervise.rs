//! Supervision of a control plane's tasks. Each task is either *restarted*: when it ends or
//! panics it is logged, counted (`meridian_control_task_restarts_total{task}`) and started again
//! after a backoff (200 ms doubling to 10 s, back to 200 ms after a minute of good running); or
//! *essential*: when it ends or panics before the plane is told to stop, the plane stops, and
//! [`Supervisor::run`] returns an error naming it. Nothing runs detached: when the plane
//! stops, every task is told (servers drain for up to [`GRACE`]) and then aborted.

use std::future::Future;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio::task::{JoinError, JoinSet};

/// First and longest wait before a restart.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(10));
/// A task that ran this long before it ended is restarted after the first backoff again.
const STABLE: Duration = Duration::from_secs(60);
/// How long servers may drain once the plane stops, before they are aborted.
pub const GRACE: Duration = Duration::from_secs(5);

/// A task of a plane ended when it should not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{task} stopped: {reason}")]
pub struct TaskEnded {
    /// The task's name.
    pub task: &'static str,
    /// Why: it returned, failed with an error, or panicked.
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabel {
    task: &'static str,
}

/// Resolves once the plane stops; cheap to clone, one per server.
#[derive(Clone)]
pub struct Stop(watch::Receiver<bool>);

impl Stop {
    /// Waits until the plane stops.
    pub async fn wait(mut self) {
        // An error means the supervisor is gone, which also stops the plane.
        let _ = self.0.wait_for(|stopped| *stopped).await;
    }
}

/// Runs a plane's tasks; see the module's documentation.
pub struct Supervisor {
    tasks: JoinSet<Result<(), TaskEnded>>,
    stop: watch::Sender<bool>,
    restarts: Family<TaskLabel, Counter>,
}

impl Supervisor {
    /// A supervisor with no task yet, counting restarts in `registry`.
    pub fn new(registry: &mut Registry) -> Supervisor {
        let restarts = Family::default();
        registry.register(
            "meridian_control_task_restarts",
            "Tasks of the control plane that ended or panicked and were restarted, by task",
            restarts.clone(),
        );
        Supervisor {
            tasks: JoinSet::new(),
            stop: watch::Sender::new(false),
            restarts,
        }
    }

    /// What resolves once the plane stops (for servers' graceful shutdown).
    pub fn stop(&self) -> Stop {
        Stop(self.stop.subscribe())
    }

    /// Runs `task`; if it ends (or panics) before the plane stops, the plane stops with an
    /// error naming `name`.
    pub fn essential<E: std::fmt::Display + Send + 'static>(
        &mut self,
        name: &'static str,
        task: impl Future<Output = Result<(), E>> + Send + 'static,
    ) {
        let stop = self.stop();
        let inner = AbortOnDrop(tokio::spawn(task));
        self.tasks.spawn(async move {
            let ended = inner.join().await;
            if *stop.0.borrow() {
                return Ok(());
            }
            let reason = match ended {
                Ok(Ok(())) => "it returned".to_owned(),
                Ok(Err(e)) => e.to_string(),
                Err(e) => panic_reason(e),
            };
            Err(TaskEnded { task: name, reason })
        });
    }

    /// Runs the task `make` makes, and a new one each time it ends or panics, after a
    /// backoff, until the plane stops.
    pub fn restarting<F>(
        &mut self,
        name: &'static str,
        mut make: impl FnMut() -> F + Send + 'static,
    ) where
        F: Future<Output = ()> + Send + 'static,
    {
        let stop = self.stop();
        let restarts = self
            .restarts
            .get_or_create(&TaskLabel { task: name })
            .clone();
        self.tasks.spawn(async move {
            let mut backoff = BACKOFF.0;
            loop {
                let started = tokio::time::Instant::now();
                let task = AbortOnDrop(tokio::spawn(make()));
                let reason = tokio::select! {
                    () = stop.clone().wait() => return Ok(()),
                    ended = task.join() => match ended {
                        Ok(()) => "it returned".to_owned(),
                        Err(e) => panic_reason(e),
                    },
                };
                if started.elapsed() >= STABLE {
                    backoff = BACKOFF.0;
                }
                restarts.inc();
                tracing::error!(task = name, %reason, restart_in = ?backoff,
                    "a control plane task stopped; restarting it");
                tokio::select! {
                    () = stop.clone().wait() => return Ok(()),
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF.1);
            }
        });
    }

    /// Runs every task until `shutdown` resolves (`Ok`) or an essential task ends (the error
    /// naming it, also logged); then stops the plane: tasks are told, servers drain for up to
    /// [`GRACE`], the rest is aborted.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), TaskEnded> {
        let outcome = tokio::select! {
            () = shutdown => Ok(()),
            ended = first_failure(&mut self.tasks) => Err(ended),
        };
        if let Err(ended) = &outcome {
            tracing::error!(task = ended.task, reason = %ended.reason,
                "an essential control plane task stopped; stopping the control plane");
        }
        self.stop.send_replace(true);
        let drained = tokio::time::timeout(GRACE, async {
            while self.tasks.join_next().await.is_some() {}
        });
        if drained.await.is_err() {
            tracing::warn!(grace = ?GRACE, "tasks still running after the grace period; aborted");
        }
        self.tasks.shutdown().await;
        outcome
    }
}

/// The first task that ends with an error; pending forever if none does.
async fn first_failure(tasks: &mut JoinSet<Result<(), TaskEnded>>) -> TaskEnded {
    loop {
        match tasks.join_next().await {
            Some(Ok(Err(ended))) => return ended,
            Some(Ok(Ok(()))) => {}
            // The supervising wrappers do not panic and are aborted only by `run`.
            Some(Err(e)) => {
                return TaskEnded {
                    task: "supervisor",
                    reason: panic_reason(e),
                }
            }
            None => std::future::pending::<()>().await,
        }
    }
}

/// A spawned task that is aborted when its handle is dropped (when the supervisor's own task
/// for it is aborted).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> AbortOnDrop<T> {
    async fn join(mut self) -> Result<T, JoinError> {
        (&mut self.0).await
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What a task that did not return said: its panic message, or that it was cancelled.
fn panic_reason(error: JoinError) -> String {
    if !error.is_panic() {
        return "it was cancelled".to_owned();
    }
    let payload = error.into_panic();
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_owned());
    format!("it panicked: {message}")
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    use super::*;

    fn boom() -> Result<(), String> {
        panic!("boom")
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_panics_is_restarted_with_backoff() {
        let mut registry = Registry::default();
        let mut supervisor = Supervisor::new(&mut registry);
        let starts = Arc::new(AtomicU32::new(0));
        let counted = starts.clone();
        supervisor.restarting("flaky", move || {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 3 {
                    panic!("attempt {n} fails");
                }
                std::future::pending::<()>().await;
            }
        });
        let restarts = supervisor
            .restarts
            .get_or_create(&TaskLabel { task: "flaky" })
            .clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(supervisor.run(async {
            let _ = stopped.await;
        }));
        // Three failures: backoffs of 200, 400 and 800 ms before the fourth start.
        tokio::time::sleep(Duration::from_millis(1_300)).await;
        assert_eq!(starts.load(Ordering::SeqCst), 3, "not yet after 1.3 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(starts.load(Ordering::SeqCst), 4);
        assert_eq!(restarts.get(), 3);
        stop.send(()).unwrap();
        assert_eq!(run.await.unwrap(), Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn an_essential_task_that_ends_stops_the_plane_with_its_name() {
        let mut supervisor = Supervisor::new(&mut Registry::default());
        let stop = supervisor.stop();
        let drained = Arc::new(AtomicU32::new(0));
        let counted = drained.clone();
        // A server that drains when the plane stops.
        supervisor.essential("server", async move {
            stop.wait().await;
            counted.fetch_add(1, Ordering::SeqCst);
            Ok::<(), String>(())
        });
        supervisor.essential("listener", async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Err("the socket closed")
        });
        let outcome = supervisor.run(std::future::pending()).await;
        assert_eq!(
            outcome,
            Err(TaskEnded {
                task: "listener",
                reason: "the socket closed".to_owned()
            })
        );
        assert_eq!(
            drained.load(Ordering::SeqCst),
            1,
            "the server was told to stop"
        );

        let mut supervisor = Supervisor::new(&mut Registry::default());
        supervisor.essential("panicky", async { boom() });
        let outcome = supervisor.run(std::future::pending()).await;
        assert_eq!(outcome.unwrap_err().reason, "it panicked: boom");
    }
}
