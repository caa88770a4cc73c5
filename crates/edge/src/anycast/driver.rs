//! The announcement's driver: feeds what the checks say to the [`Machine`], tells the speaker
//! to announce or withdraw when the verdict changes, checks every so often that the speaker
//! does what it was told (BIRD restarted, someone disabled the routes), keeps the guard
//! informed that the edge lives, and publishes the status. Thin: the decisions are the
//! machine's.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::guard::Guard;
use super::machine::{Checks, Control, Machine, Policy, Reason, Verdict};
use super::metrics::AnycastMetrics;
use super::probe::{ListenerCheck, RegionCheck};
use super::replace;
use super::speaker::{Speaker, SpeakerState};

/// How long after telling the speaker something its state is trusted to show it.
const SETTLE: Duration = Duration::from_millis(500);

/// What the driver watches.
pub struct Inputs {
    /// The listener probe.
    pub listener: watch::Receiver<ListenerCheck>,
    /// The region probe.
    pub regions: watch::Receiver<RegionCheck>,
    /// Whether the edge follows the global control plane.
    pub following: watch::Receiver<bool>,
}

/// The machine's timers and the driver's.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// The machine's.
    pub policy: Policy,
    /// The driver's.
    pub timing: Timing,
}

/// How often the driver looks at the speaker and signs of life to the guard.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How often the speaker's state is checked.
    pub reconcile: Duration,
    /// How often the guard hears from the edge.
    pub heartbeat: Duration,
}

/// The announcement's state, as published.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    /// Whether the prefixes are announced (the speaker confirmed it was told so).
    pub announced: bool,
    /// Why.
    pub reason: Reason,
    /// What that means here, for people.
    pub detail: String,
    /// Since when.
    pub since: Instant,
    /// The hold-down in force.
    pub hold_down: Duration,
    /// What the speaker said last.
    pub speaker: SpeakerState,
    /// The regions reachable.
    pub regions: RegionCheck,
}

impl Status {
    /// The status before anything was checked.
    pub fn starting(now: Instant) -> Status {
        Status {
            announced: false,
            reason: Reason::ListenerDown,
            detail: "starting".to_owned(),
            since: now,
            hold_down: Duration::ZERO,
            speaker: SpeakerState::default(),
            regions: RegionCheck::default(),
        }
    }
}

/// A request to withdraw for good (the edge is stopping); answered once withdrawn.
pub type DrainRequest = oneshot::Sender<Result<(), String>>;

/// The driver's state between rounds.
struct Driver<S> {
    speaker: S,
    machine: Machine,
    policy: Policy,
    timing: Timing,
    /// What the speaker was last told, and when; `None`: unknown (tell it again).
    applied: Option<(bool, Instant)>,
    /// The speaker's last failure, until it works again.
    speaker_error: Option<String>,
    /// When to tell the speaker again after a failure.
    retry_at: Instant,
    next_reconcile: Instant,
    lost_since: Option<Instant>,
    speaker_state: SpeakerState,
    guard: Option<Guard>,
    metrics: std::sync::Arc<AnycastMetrics>,
    status: watch::Sender<Status>,
}

/// Runs the driver for as long as the task runs.
pub async fn drive<S: Speaker>(
    speaker: S,
    Settings { policy, timing }: Settings,
    mut inputs: Inputs,
    mut drains: mpsc::Receiver<DrainRequest>,
    guard: Option<Guard>,
    metrics: std::sync::Arc<AnycastMetrics>,
    status: watch::Sender<Status>,
) {
    let now = Instant::now();
    let mut driver = Driver {
        speaker,
        machine: Machine::new(policy, now),
        policy,
        timing,
        applied: None,
        speaker_error: None,
        retry_at: now,
        next_reconcile: now,
        lost_since: None,
        speaker_state: SpeakerState::default(),
        guard,
        metrics,
        status,
    };
    let mut drains_open = true;
    loop {
        let verdict = driver.round(&mut inputs).await;
        let now = Instant::now();
        let wake = [
            verdict.wake,
            Some(driver.next_reconcile),
            Some(now + driver.timing.heartbeat),
            driver.speaker_error.as_ref().map(|_| driver.retry_at),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(now + driver.timing.heartbeat);
        tokio::select! {
            () = tokio::time::sleep_until(wake) => {}
            changed = inputs.listener.changed() => if changed.is_err() { return },
            changed = inputs.regions.changed() => if changed.is_err() { return },
            changed = inputs.following.changed() => if changed.is_err() { return },
            request = drains.recv(), if drains_open => match request {
                Some(answer) => {
                    driver.machine.drain(Instant::now());
                    driver.round(&mut inputs).await;
                    let withdrawn = match &driver.speaker_error {
                        None => Ok(()),
                        Some(e) => Err(e.clone()),
                    };
                    let _ = answer.send(withdrawn);
                }
                None => drains_open = false,
            },
        }
    }
}

impl<S: Speaker> Driver<S> {
    /// One round: read the checks, look at the speaker if it is time, apply the verdict,
    /// publish, and sign of life to the guard.
    async fn round(&mut self, inputs: &mut Inputs) -> Verdict {
        let now = Instant::now();
        let following = *inputs.following.borrow_and_update();
        self.lost_since = match (following, self.lost_since) {
            (true, _) => None,
            (false, None) => Some(now),
            (false, since) => since,
        };
        let listener = inputs.listener.borrow_and_update().clone();
        let regions = inputs.regions.borrow_and_update().clone();
        let checks = Checks {
            listener: listener.ok,
            control: self
                .lost_since
                .map_or(Control::Following, Control::LostSince),
            regions: regions.reachable.len(),
        };
        if now >= self.next_reconcile {
            self.next_reconcile = now + self.timing.reconcile;
            self.reconcile(now).await;
        }
        let verdict = self.machine.update(now, &checks);
        let told = self.applied.map(|(announce, _)| announce);
        if told != Some(verdict.announce) && (self.speaker_error.is_none() || now >= self.retry_at)
        {
            match self.speaker.set(verdict.announce).await {
                Ok(()) => {
                    if verdict.announce {
                        tracing::info!("anycast prefixes announced");
                    } else if told == Some(true) {
                        tracing::warn!(
                            reason = verdict.reason.as_str(),
                            "anycast prefixes withdrawn"
                        );
                        self.metrics.withdrawn(verdict.reason);
                    }
                    self.applied = Some((verdict.announce, Instant::now()));
                    self.speaker_error = None;
                }
                Err(e) => self.speaker_failed(e),
            }
        }
        self.publish(&verdict, &listener, regions, checks);
        if let Some(guard) = &mut self.guard {
            guard.beat().await;
        }
        verdict
    }

    /// Compares what the speaker does with what it was told.
    async fn reconcile(&mut self, now: Instant) {
        match self.speaker.state().await {
            Ok(state) => {
                self.speaker_state = state;
                if self.speaker_error.take().is_some() {
                    tracing::info!("BIRD answers again");
                    // Whatever happened meanwhile, tell it again.
                    self.applied = None;
                }
                let Some((told, at)) = self.applied else {
                    return;
                };
                if told == state.announced || now.saturating_duration_since(at) < SETTLE {
                    return;
                }
                if told {
                    tracing::warn!("BIRD no longer announces the anycast prefixes (restarted, disabled by someone, or withdrawn by the guard); announcing again after the hold-down");
                    self.metrics.withdrawn(Reason::Bird);
                    self.machine.lost(now);
                }
                self.applied = None;
            }
            Err(e) => self.speaker_failed(e),
        }
    }

    fn speaker_failed(&mut self, error: String) {
        if self.speaker_error.is_none() {
            tracing::warn!(%error, "cannot drive BIRD; retrying");
        }
        self.speaker_error = Some(error);
        self.applied = None;
        self.retry_at = Instant::now() + self.timing.reconcile;
    }

    fn publish(
        &mut self,
        verdict: &Verdict,
        listener: &ListenerCheck,
        regions: RegionCheck,
        checks: Checks,
    ) {
        let now = Instant::now();
        let (reason, detail) = match &self.speaker_error {
            Some(error) => (Reason::Bird, error.clone()),
            None => (
                verdict.reason,
                self.detail(verdict, listener, &regions, checks, now),
            ),
        };
        let announced = self.speaker_error.is_none() && self.applied.is_some_and(|(a, _)| a);
        let since = match &self.speaker_error {
            None => verdict.since,
            Some(_) => {
                let old = self.status.borrow();
                if old.reason == Reason::Bird {
                    old.since
                } else {
                    now
                }
            }
        };
        let status = Status {
            announced,
            reason,
            detail,
            since,
            hold_down: verdict.hold_down,
            speaker: self.speaker_state,
            regions,
        };
        self.metrics.record(&status);
        self.status.send_if_modified(|old| replace(old, status));
    }

    /// What the verdict means here, for people.
    fn detail(
        &self,
        verdict: &Verdict,
        listener: &ListenerCheck,
        regions: &RegionCheck,
        checks: Checks,
        now: Instant,
    ) -> String {
        let reachable = if regions.reachable.is_empty() {
            "none".to_owned()
        } else {
            regions.reachable.join(", ")
        };
        match verdict.reason {
            Reason::Healthy => format!(
                "announced; regions reachable: {reachable}; BGP sessions established: {} of {}",
                self.speaker_state.established, self.speaker_state.sessions
            ),
            Reason::HoldDown => {
                let left = (verdict.since + verdict.hold_down).saturating_duration_since(now);
                format!(
                    "every check passes; announcing in {} (hold-down {})",
                    seconds(left),
                    seconds(verdict.hold_down)
                )
            }
            Reason::ListenerDown => listener.detail.clone(),
            Reason::ConfigStale => match checks.control {
                Control::LostSince(at) => format!(
                    "the global control plane was lost {} ago (at most {} allowed)",
                    seconds(now.saturating_duration_since(at)),
                    seconds(self.policy.max_stale)
                ),
                Control::Following => String::new(),
            },
            Reason::NoRegion if regions.known == 0 => {
                "no region reports healthy instances".to_owned()
            }
            Reason::NoRegion => format!(
                "none of the {} regions with healthy instances is reachable",
                regions.known
            ),
            Reason::Bird => String::new(),
            Reason::Draining => "the edge is stopping".to_owned(),
        }
    }
}

/// A duration in whole seconds (rounded up), as people read it.
fn seconds(duration: Duration) -> String {
    let secs = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A speaker that does what it is told, and can be made to forget it.
    #[derive(Clone, Default)]
    struct Fake(Arc<Mutex<FakeState>>);

    #[derive(Default)]
    struct FakeState {
        announced: bool,
        told: Vec<bool>,
    }

    impl Speaker for Fake {
        async fn set(&mut self, announce: bool) -> Result<(), String> {
            let mut state = self.0.lock().unwrap();
            state.announced = announce;
            state.told.push(announce);
            Ok(())
        }

        async fn state(&mut self) -> Result<SpeakerState, String> {
            let announced = self.0.lock().unwrap().announced;
            Ok(SpeakerState {
                announced,
                established: 1,
                sessions: 1,
            })
        }
    }

    struct Harness {
        speaker: Fake,
        listener: watch::Sender<ListenerCheck>,
        regions: watch::Sender<RegionCheck>,
        following: watch::Sender<bool>,
        drains: mpsc::Sender<DrainRequest>,
        status: watch::Receiver<Status>,
        _task: tokio::task::JoinHandle<()>,
    }

    fn start() -> Harness {
        let speaker = Fake::default();
        let (listener, listener_rx) = watch::channel(ListenerCheck {
            ok: true,
            detail: String::new(),
        });
        let (regions, regions_rx) = watch::channel(RegionCheck {
            reachable: vec!["fra".into()],
            known: 1,
        });
        let (following, following_rx) = watch::channel(true);
        let (drains, drains_rx) = mpsc::channel(1);
        let (status_tx, status) = watch::channel(Status::starting(Instant::now()));
        let policy = Policy {
            hold_down: Duration::from_secs(5),
            hold_down_max: Duration::from_secs(60),
            max_stale: Duration::from_secs(30),
        };
        let timing = Timing {
            reconcile: Duration::from_secs(1),
            heartbeat: Duration::from_millis(250),
        };
        let inputs = Inputs {
            listener: listener_rx,
            regions: regions_rx,
            following: following_rx,
        };
        let metrics = Arc::new(AnycastMetrics::new());
        let task = tokio::spawn(drive(
            speaker.clone(),
            Settings { policy, timing },
            inputs,
            drains_rx,
            None,
            metrics,
            status_tx,
        ));
        Harness {
            speaker,
            listener,
            regions,
            following,
            drains,
            status,
            _task: task,
        }
    }

    impl Harness {
        /// Lets the driver run `secs` seconds of paused time.
        async fn after(&self, secs: f64) {
            tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        }

        fn now(&self) -> (bool, Reason) {
            let status = self.status.borrow();
            (status.announced, status.reason)
        }

        fn told(&self) -> Vec<bool> {
            self.speaker.0.lock().unwrap().told.clone()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn it_announces_after_the_hold_down_and_withdraws_as_soon_as_a_check_fails() {
        let edge = start();
        edge.after(4.9).await;
        assert_eq!(edge.now(), (false, Reason::HoldDown));
        edge.after(0.2).await;
        assert_eq!(edge.now(), (true, Reason::Healthy));
        // The regions are lost: withdrawn at once, not at the next round.
        edge.regions.send_replace(RegionCheck {
            reachable: Vec::new(),
            known: 1,
        });
        edge.after(0.001).await;
        assert_eq!(edge.now(), (false, Reason::NoRegion));
        assert_eq!(
            edge.status.borrow().detail,
            "none of the 1 regions with healthy instances is reachable"
        );
        // Back: held down for twice as long (the announcement was short), then announced.
        edge.regions.send_replace(RegionCheck {
            reachable: vec!["fra".into()],
            known: 1,
        });
        edge.after(9.9).await;
        assert_eq!(edge.now(), (false, Reason::HoldDown));
        edge.after(0.2).await;
        assert_eq!(edge.now(), (true, Reason::Healthy));
        assert_eq!(edge.told(), [false, true, false, true]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_listener_going_quiet_withdraws_and_a_stale_configuration_too() {
        let edge = start();
        edge.after(5.1).await;
        edge.listener.send_replace(ListenerCheck {
            ok: false,
            detail: "http://198.18.0.10:80/: refused".into(),
        });
        edge.after(0.001).await;
        assert_eq!(edge.now(), (false, Reason::ListenerDown));
        assert_eq!(
            edge.status.borrow().detail,
            "http://198.18.0.10:80/: refused"
        );
        edge.listener.send_replace(ListenerCheck {
            ok: true,
            detail: String::new(),
        });
        edge.after(10.1).await;
        assert_eq!(edge.now(), (true, Reason::Healthy));
        // The global control plane goes away: announced for 30 s more, then withdrawn.
        edge.following.send_replace(false);
        edge.after(29.9).await;
        assert_eq!(edge.now(), (true, Reason::Healthy));
        edge.after(0.2).await;
        assert_eq!(edge.now(), (false, Reason::ConfigStale));
    }

    #[tokio::test(start_paused = true)]
    async fn routes_lost_in_bird_are_held_down_and_draining_withdraws_for_good() {
        let edge = start();
        edge.after(5.1).await;
        assert_eq!(edge.now(), (true, Reason::Healthy));
        // BIRD restarted without them: seen at the next reconciliation, held down again.
        edge.speaker.0.lock().unwrap().announced = false;
        edge.after(1.0).await;
        assert_eq!(edge.now(), (false, Reason::HoldDown));
        edge.after(10.0).await;
        assert_eq!(edge.now(), (true, Reason::Healthy));
        let (answer, withdrawn) = oneshot::channel();
        edge.drains.send(answer).await.unwrap();
        withdrawn.await.unwrap().unwrap();
        assert_eq!(edge.now(), (false, Reason::Draining));
        assert!(!edge.speaker.0.lock().unwrap().announced);
        edge.after(600.0).await;
        assert_eq!(edge.now(), (false, Reason::Draining));
    }
}
