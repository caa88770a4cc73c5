//! Sleep and wake of an instance whose service sleeps (`scale.sleep`): when it is idle (its
//! node proxy's [`WakeGate`] counts what uses it: requests until their response ends,
//! WebSockets and other switched connections until they close), for how long ([`Sleeper::due`]),
//! how it is frozen and thawed ([`Pause`]: its cgroup's freezer, SIGSTOP and SIGCONT to its
//! process group without one), and the events and metrics of sleeps and wakes. The instance's
//! life ([`crate::instance`]) decides when to call each.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meridian_model::SleepMode;
use meridian_proxy::WakeGate;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::cgroups::Freezer;

/// How often a busy instance is looked at again (a use ending restarts its idle time).
const BUSY_LOOK: Duration = Duration::from_secs(1);

/// The label of a sleep or a wake: `light` or `deep`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModeLabel {
    mode: &'static str,
}

/// Upper bounds of the wake-duration buckets, in seconds: fine below 10 ms, where light wakes
/// fall.
const BUCKETS: [f64; 16] = [
    0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0,
];

fn histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// `meridian_agent_instance_sleeps_total`, `…_wakes_total` and `…_wake_seconds`, by mode.
#[derive(Debug, Clone)]
pub struct SleepMetrics {
    sleeps: Family<ModeLabel, Counter>,
    wakes: Family<ModeLabel, Counter>,
    durations: Family<ModeLabel, Histogram, fn() -> Histogram>,
}

impl SleepMetrics {
    /// The metrics, registered in `registry`.
    pub fn new(registry: &mut Registry) -> SleepMetrics {
        let metrics = SleepMetrics {
            sleeps: Family::default(),
            wakes: Family::default(),
            durations: Family::new_with_constructor(histogram as fn() -> Histogram),
        };
        registry.register(
            "instance_sleeps",
            "Instances put to sleep once idle (scale.sleep), by mode: light (frozen) or deep (stopped)",
            metrics.sleeps.clone(),
        );
        registry.register(
            "instance_wakes",
            "Instances woken by a request, by the mode they slept in",
            metrics.wakes.clone(),
        );
        registry.register(
            "instance_wake_seconds",
            "Time from the first request held for a sleeping instance to the instance taking it, by the mode it slept in",
            metrics.durations.clone(),
        );
        metrics
    }
}

/// One instance's sleeping: its service's `scale.sleep`, its gate in the node proxy, and
/// the wake under way.
#[derive(Debug)]
pub struct Sleeper {
    /// Its service's sleep.
    pub policy: meridian_model::Sleep,
    /// Its gate in the node proxy.
    pub gate: Arc<WakeGate>,
    metrics: SleepMetrics,
    /// Since when it is being woken, and from which sleep.
    waking: Mutex<Option<(Instant, SleepMode)>>,
    /// How long its last wake took, in microseconds (0: none yet).
    last_wake_micros: std::sync::atomic::AtomicU64,
}

impl Sleeper {
    /// The sleeping of an instance with `policy` and `gate`, counted in `metrics`; the gate
    /// holds requests as the policy says.
    pub fn new(policy: meridian_model::Sleep, gate: Arc<WakeGate>, metrics: SleepMetrics) -> Self {
        let queue = usize::try_from(policy.queue()).unwrap_or(usize::MAX);
        gate.set_hold(queue, policy.wake_timeout());
        Sleeper {
            policy,
            gate,
            metrics,
            waking: Mutex::new(None),
            last_wake_micros: Default::default(),
        }
    }

    /// Resolves once the instance has been idle for `after`.
    pub async fn due(&self) {
        let after = self.policy.after.0;
        loop {
            let wait = match self.gate.idle_for() {
                Some(idle) if idle >= after => return,
                Some(idle) => after - idle,
                None => BUSY_LOOK.min(after),
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// Counts and logs that `instance` fell asleep in `mode` (its gate closed).
    pub fn fell_asleep(&self, instance: &str, mode: SleepMode) {
        let mode_name = mode.as_str();
        self.metrics
            .sleeps
            .get_or_create(&ModeLabel { mode: mode_name })
            .inc();
        let idle_ms = self.gate.idle_for().map_or(0, |d| d.as_millis());
        tracing::info!(%instance, mode = mode_name, idle_ms, "instance asleep");
    }

    /// Waits for the first request held for the instance asleep in `mode`; from then on it is
    /// being woken.
    pub async fn woken(&self, mode: SleepMode) {
        self.gate.woken().await;
        *waking(&self.waking) = Some((Instant::now(), mode));
    }

    /// Opens the gate: the instance takes requests. Counts and logs the wake under way, if any.
    pub fn awake(&self, instance: &str) {
        self.gate.open_now();
        let Some((since, mode)) = waking(&self.waking).take() else {
            return;
        };
        let took = since.elapsed();
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
        self.last_wake_micros
            .store(micros, std::sync::atomic::Ordering::Relaxed);
        let label = ModeLabel {
            mode: mode.as_str(),
        };
        self.metrics.wakes.get_or_create(&label).inc();
        self.metrics
            .durations
            .get_or_create(&label)
            .observe(took.as_secs_f64());
        tracing::info!(%instance, mode = mode.as_str(), took_ms = took.as_secs_f64() * 1000.0,
            held = self.gate.held(), "instance awake");
    }
}

impl Sleeper {
    /// How long its last wake took (from the first request held to the gate open), in
    /// microseconds; 0 before its first.
    pub fn last_wake_micros(&self) -> u64 {
        self.last_wake_micros
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

fn waking(
    waking: &Mutex<Option<(Instant, SleepMode)>>,
) -> std::sync::MutexGuard<'_, Option<(Instant, SleepMode)>> {
    waking
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How a run's processes are frozen and thawed. Freezing returns once they are.
#[derive(Debug, Clone)]
pub enum Pause {
    /// Its cgroup's freezer.
    Cgroup(Freezer),
    /// SIGSTOP and SIGCONT to its process group (no freezer: a process that forks while
    /// stopped keeps its children running).
    Signal(rustix::process::Pid),
}

impl Pause {
    /// The way to pause a run in `freezer` (its cgroup's, if it has one) whose process group is
    /// led by `pid`.
    pub fn of(freezer: Option<Freezer>, pid: Option<u32>) -> Option<Pause> {
        match freezer {
            Some(freezer) => Some(Pause::Cgroup(freezer)),
            None => pid
                .and_then(|pid| rustix::process::Pid::from_raw(i32::try_from(pid).ok()?))
                .map(Pause::Signal),
        }
    }

    /// Freezes (`true`) or thaws the run, off the async threads.
    pub async fn set(&self, frozen: bool) -> std::io::Result<()> {
        match self {
            Pause::Cgroup(freezer) => {
                let freezer = freezer.clone();
                tokio::task::spawn_blocking(move || freezer.set(frozen))
                    .await
                    .map_err(std::io::Error::other)?
            }
            Pause::Signal(pid) => {
                let signal = if frozen {
                    rustix::process::Signal::STOP
                } else {
                    rustix::process::Signal::CONT
                };
                rustix::process::kill_process_group(*pid, signal).map_err(std::io::Error::from)?;
                if !frozen {
                    return Ok(());
                }
                let pid = *pid;
                tokio::task::spawn_blocking(move || until_stopped(pid))
                    .await
                    .map_err(std::io::Error::other)?
            }
        }
    }
}

/// Longest the leader of a stopped process group may take to stop.
const STOP_WAIT: Duration = Duration::from_secs(1);

/// Waits until process `pid` (the leader of a group sent SIGSTOP) is stopped, as a freeze
/// waits for its cgroup (the CPU it uses to stop is used by then); past [`STOP_WAIT`] the
/// group is continued and it is an error. Blocks: reads `/proc`.
fn until_stopped(pid: rustix::process::Pid) -> std::io::Result<()> {
    let stat = format!("/proc/{}/stat", pid.as_raw_nonzero());
    let end = Instant::now() + STOP_WAIT;
    loop {
        let text = std::fs::read_to_string(&stat)?;
        // The state follows the command name in parentheses, which may hold anything.
        let state = text
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next());
        if matches!(state, Some('T' | 't')) {
            return Ok(());
        }
        if Instant::now() >= end {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::CONT);
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("{stat}: not stopped within {STOP_WAIT:?}"),
            ));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Waits until `address:port` accepts a connection (the instance listens again after a
/// start): tried every millisecond at first, less often (up to every 100 ms) the longer it
/// refuses.
pub async fn accepts(address: std::net::IpAddr, port: u16) {
    let mut pause = Duration::from_millis(1);
    while tokio::net::TcpStream::connect((address, port))
        .await
        .is_err()
    {
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The state letter of process `pid` (`/proc/<pid>/stat`'s third field).
    fn state_of(pid: u32) -> char {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let after_name = stat.rsplit_once(") ").unwrap().1;
        after_name.chars().next().unwrap()
    }

    /// Waits (with a deadline) until process `pid`'s state letter is `wanted`.
    async fn until_state(pid: u32, wanted: char) {
        let end = Instant::now() + Duration::from_secs(20);
        while state_of(pid) != wanted {
            assert!(Instant::now() < end, "{pid} is {}", state_of(pid));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn without_a_freezer_the_process_group_is_stopped_and_continued() {
        let mut child = tokio::process::Command::new("sleep")
            .arg("600")
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let pid = child.id().unwrap();
        let pause = Pause::of(None, Some(pid)).unwrap();
        pause.set(true).await.unwrap();
        assert_eq!(state_of(pid), 'T', "stopped once the pause returned");
        pause.set(false).await.unwrap();
        until_state(pid, 'S').await;
        child.kill().await.unwrap();
    }

    #[tokio::test]
    async fn a_port_is_awaited_until_it_accepts() {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = socket.local_addr().unwrap().port();
        drop(socket);
        let waiting = tokio::spawn(accepts(std::net::Ipv4Addr::LOCALHOST.into(), port));
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(20), waiting)
            .await
            .unwrap()
            .unwrap();
        drop(listener);
    }

    #[tokio::test]
    async fn an_instance_is_due_to_sleep_once_idle_for_after() {
        let gate = Arc::new(WakeGate::default());
        let policy: meridian_model::Sleep =
            serde_json::from_value(serde_json::json!({"after": "1s"})).unwrap();
        let mut registry = Registry::default();
        let sleeper = Sleeper::new(policy, gate.clone(), SleepMetrics::new(&mut registry));
        let used = gate.use_now();
        let begun = Instant::now();
        let due = tokio::spawn(async move { sleeper.due().await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(used);
        due.await.unwrap();
        assert!(
            begun.elapsed() >= Duration::from_millis(1300),
            "{:?}",
            begun.elapsed()
        );
    }
}
