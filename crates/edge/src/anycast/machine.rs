//! Whether the edge announces its anycast prefixes, and why: a state machine over what the
//! checks last said. The prefixes are announced only while every check passes — the edge's
//! listeners answer, its configuration is fresh enough, a region with healthy instances is
//! reachable — and only once they have passed for a hold-down; they are withdrawn at the first
//! failure. An announcement that ends early (before `hold_down_max`) doubles the next
//! hold-down, up to `hold_down_max`; one that lasted that long sets it back to `hold_down`, so
//! that a flapping edge stays out longer each time. Pure: time is given, nothing is done here.

use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

/// Why the prefixes are announced or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Announced: every check passes.
    Healthy,
    /// Every check passes, for less than the hold-down yet.
    HoldDown,
    /// The edge's own listeners do not answer.
    ListenerDown,
    /// The configuration is too old: the global control plane was lost too long ago.
    ConfigStale,
    /// No region with healthy instances is reachable.
    NoRegion,
    /// BIRD cannot be reached, or withdrew the routes outside the edge.
    Bird,
    /// The edge is stopping.
    Draining,
}

impl Reason {
    /// Every reason, for metrics.
    pub const ALL: [Reason; 7] = [
        Reason::Healthy,
        Reason::HoldDown,
        Reason::ListenerDown,
        Reason::ConfigStale,
        Reason::NoRegion,
        Reason::Bird,
        Reason::Draining,
    ];

    /// Its name in metrics, status and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Healthy => "healthy",
            Reason::HoldDown => "hold_down",
            Reason::ListenerDown => "listener_down",
            Reason::ConfigStale => "config_stale",
            Reason::NoRegion => "no_region",
            Reason::Bird => "bird",
            Reason::Draining => "draining",
        }
    }
}

/// Where the edge stands with the global control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// It follows it (a session is open).
    Following,
    /// It lost it (or never had it) at this instant, and serves its last configuration.
    LostSince(Instant),
}

/// What the checks last said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checks {
    /// The edge's listeners answered the local probe.
    pub listener: bool,
    /// The global control plane.
    pub control: Control,
    /// How many regions with healthy instances are reachable.
    pub regions: usize,
}

/// The timers.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// The first hold-down.
    pub hold_down: Duration,
    /// The longest hold-down, and how long an announcement must last to reset it.
    pub hold_down_max: Duration,
    /// How long the configuration may go without the global control plane.
    pub max_stale: Duration,
}

/// What the machine says now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Whether the prefixes are to be announced.
    pub announce: bool,
    /// Why.
    pub reason: Reason,
    /// Since when (this reason and announcement).
    pub since: Instant,
    /// When to look again even if no check changes (a hold-down ends, the configuration
    /// becomes stale).
    pub wake: Option<Instant>,
    /// The hold-down now in force.
    pub hold_down: Duration,
}

/// The state machine.
#[derive(Debug)]
pub struct Machine {
    policy: Policy,
    announced: bool,
    draining: bool,
    reason: Reason,
    since: Instant,
    /// When the checks last started passing (the hold-down counts from there).
    passing_since: Option<Instant>,
    /// When the current announcement began.
    announced_at: Option<Instant>,
    hold_down: Duration,
}

impl Machine {
    /// A machine that has announced nothing, its listener not answering yet.
    pub fn new(policy: Policy, now: Instant) -> Machine {
        Machine {
            policy,
            announced: false,
            draining: false,
            reason: Reason::ListenerDown,
            since: now,
            passing_since: None,
            announced_at: None,
            hold_down: policy.hold_down,
        }
    }

    /// The verdict for `checks` at `now`.
    pub fn update(&mut self, now: Instant, checks: &Checks) -> Verdict {
        let (failing, stale_at) = self.failing(now, checks);
        let mut wake = stale_at;
        match failing {
            Some(reason) => {
                self.withdraw(now);
                self.passing_since = None;
                self.set(reason, now);
            }
            None if !self.announced => {
                let passing = *self.passing_since.get_or_insert(now);
                let end = passing + self.hold_down;
                if now >= end {
                    self.announced = true;
                    self.announced_at = Some(now);
                    self.set(Reason::Healthy, now);
                } else {
                    self.set(Reason::HoldDown, now);
                    wake = Some(wake.map_or(end, |w| w.min(end)));
                }
            }
            None => {}
        }
        Verdict {
            announce: self.announced,
            reason: self.reason,
            since: self.since,
            wake,
            hold_down: self.hold_down,
        }
    }

    /// The edge is stopping: withdraw, for good.
    pub fn drain(&mut self, now: Instant) {
        self.draining = true;
        self.withdraw(now);
        self.passing_since = None;
        self.set(Reason::Draining, now);
    }

    /// BIRD no longer announces what the machine announced (restarted without the edge,
    /// disabled by someone else, or the guard withdrew while the edge was stalled): a
    /// withdrawal like any other, and the hold-down starts over.
    pub fn lost(&mut self, now: Instant) {
        if self.announced {
            self.withdraw(now);
            self.passing_since = Some(now);
            self.set(Reason::HoldDown, now);
        }
    }

    /// The failing check that matters most, if any, and when the configuration becomes stale
    /// if it is not yet.
    fn failing(&self, now: Instant, checks: &Checks) -> (Option<Reason>, Option<Instant>) {
        let stale_at = match checks.control {
            Control::Following => None,
            Control::LostSince(at) => Some(at + self.policy.max_stale),
        };
        let reason = if self.draining {
            Some(Reason::Draining)
        } else if !checks.listener {
            Some(Reason::ListenerDown)
        } else if stale_at.is_some_and(|at| now >= at) {
            Some(Reason::ConfigStale)
        } else if checks.regions == 0 {
            Some(Reason::NoRegion)
        } else {
            None
        };
        (reason, stale_at.filter(|at| now < *at))
    }

    /// Ends the announcement, if there is one, and sets the next hold-down.
    fn withdraw(&mut self, now: Instant) {
        if !self.announced {
            return;
        }
        self.announced = false;
        let lasted = self
            .announced_at
            .take()
            .map_or(Duration::ZERO, |at| now.saturating_duration_since(at));
        self.hold_down = if lasted >= self.policy.hold_down_max {
            self.policy.hold_down
        } else {
            (self.hold_down * 2).min(self.policy.hold_down_max)
        };
    }

    fn set(&mut self, reason: Reason, now: Instant) {
        if reason != self.reason {
            self.reason = reason;
            self.since = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: Policy = Policy {
        hold_down: Duration::from_secs(10),
        hold_down_max: Duration::from_secs(80),
        max_stale: Duration::from_secs(60),
    };

    const HEALTHY: Checks = Checks {
        listener: true,
        control: Control::Following,
        regions: 2,
    };

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[tokio::test(start_paused = true)]
    async fn it_announces_after_the_hold_down_and_withdraws_at_the_first_failure() {
        let start = Instant::now();
        let mut machine = Machine::new(POLICY, start);
        let verdict = machine.update(start, &HEALTHY);
        assert_eq!(
            (verdict.announce, verdict.reason, verdict.wake),
            (false, Reason::HoldDown, Some(start + secs(10)))
        );
        tokio::time::advance(secs(9)).await;
        assert!(!machine.update(Instant::now(), &HEALTHY).announce);
        tokio::time::advance(secs(1)).await;
        let verdict = machine.update(Instant::now(), &HEALTHY);
        assert_eq!((verdict.announce, verdict.reason), (true, Reason::Healthy));
        assert_eq!(verdict.since, start + secs(10));
        // Each check, failing alone, withdraws at once and says which.
        for (checks, reason) in [
            (
                Checks {
                    listener: false,
                    ..HEALTHY
                },
                Reason::ListenerDown,
            ),
            (
                Checks {
                    regions: 0,
                    ..HEALTHY
                },
                Reason::NoRegion,
            ),
        ] {
            let mut machine = Machine::new(POLICY, Instant::now());
            machine.update(Instant::now(), &HEALTHY);
            tokio::time::advance(secs(10)).await;
            assert!(machine.update(Instant::now(), &HEALTHY).announce);
            let verdict = machine.update(Instant::now(), &checks);
            assert_eq!((verdict.announce, verdict.reason), (false, reason));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_during_the_hold_down_starts_it_over() {
        let mut machine = Machine::new(POLICY, Instant::now());
        machine.update(Instant::now(), &HEALTHY);
        tokio::time::advance(secs(8)).await;
        let down = Checks {
            listener: false,
            ..HEALTHY
        };
        assert_eq!(
            machine.update(Instant::now(), &down).reason,
            Reason::ListenerDown
        );
        tokio::time::advance(secs(1)).await;
        let again = Instant::now();
        assert_eq!(machine.update(again, &HEALTHY).wake, Some(again + secs(10)));
        tokio::time::advance(secs(9)).await;
        assert!(!machine.update(Instant::now(), &HEALTHY).announce);
        tokio::time::advance(secs(1)).await;
        assert!(machine.update(Instant::now(), &HEALTHY).announce);
    }

    #[tokio::test(start_paused = true)]
    async fn flapping_doubles_the_hold_down_up_to_its_most_and_a_long_announcement_resets_it() {
        let mut machine = Machine::new(POLICY, Instant::now());
        let down = Checks {
            regions: 0,
            ..HEALTHY
        };
        let mut hold_downs = Vec::new();
        for _ in 0..5 {
            // Healthy until announced, then a failure after a second.
            let verdict = machine.update(Instant::now(), &HEALTHY);
            hold_downs.push(verdict.hold_down.as_secs());
            tokio::time::advance(verdict.hold_down).await;
            assert!(machine.update(Instant::now(), &HEALTHY).announce);
            tokio::time::advance(secs(1)).await;
            assert!(!machine.update(Instant::now(), &down).announce);
        }
        assert_eq!(hold_downs, [10, 20, 40, 80, 80]);
        // Announced for the longest hold-down: the next withdrawal starts from the first.
        machine.update(Instant::now(), &HEALTHY);
        tokio::time::advance(secs(80)).await;
        assert!(machine.update(Instant::now(), &HEALTHY).announce);
        tokio::time::advance(secs(80)).await;
        assert_eq!(machine.update(Instant::now(), &down).hold_down, secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_configuration_without_the_global_control_plane_is_good_for_max_stale() {
        let mut machine = Machine::new(POLICY, Instant::now());
        machine.update(Instant::now(), &HEALTHY);
        tokio::time::advance(secs(10)).await;
        assert!(machine.update(Instant::now(), &HEALTHY).announce);
        let lost = Instant::now();
        let alone = Checks {
            control: Control::LostSince(lost),
            ..HEALTHY
        };
        let verdict = machine.update(lost, &alone);
        assert_eq!(
            (verdict.announce, verdict.wake),
            (true, Some(lost + secs(60)))
        );
        tokio::time::advance(secs(60)).await;
        let verdict = machine.update(Instant::now(), &alone);
        assert_eq!(
            (verdict.announce, verdict.reason),
            (false, Reason::ConfigStale)
        );
        // Following again: the hold-down, then announced.
        let verdict = machine.update(Instant::now(), &HEALTHY);
        assert_eq!(
            (verdict.announce, verdict.reason),
            (false, Reason::HoldDown)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn draining_withdraws_for_good_and_a_lost_announcement_is_held_down() {
        let mut machine = Machine::new(POLICY, Instant::now());
        machine.update(Instant::now(), &HEALTHY);
        tokio::time::advance(secs(10)).await;
        assert!(machine.update(Instant::now(), &HEALTHY).announce);
        machine.lost(Instant::now());
        let verdict = machine.update(Instant::now(), &HEALTHY);
        assert_eq!(
            (verdict.announce, verdict.reason),
            (false, Reason::HoldDown)
        );
        assert_eq!(verdict.hold_down, secs(20));
        tokio::time::advance(secs(20)).await;
        assert!(machine.update(Instant::now(), &HEALTHY).announce);
        machine.drain(Instant::now());
        tokio::time::advance(secs(1000)).await;
        let verdict = machine.update(Instant::now(), &HEALTHY);
        assert_eq!(
            (verdict.announce, verdict.reason),
            (false, Reason::Draining)
        );
    }
}
