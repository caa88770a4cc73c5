//! The gates a new version passes in a region before it takes over, as pure functions: its
//! instances must not fail their health checks or crash (either fails the gate at once), and
//! it must be ready within `deploy.progress_deadline`.

use std::time::Duration;

use meridian_model::{Gate, GateFailure};

/// One instance in service of the version rolled out, as its agent last reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed<'a> {
    /// Its id, `<service>-<n>`.
    pub id: &'a str,
    /// `starting`, `healthy`, `unhealthy` (it ended and is about to be restarted) or `failed`
    /// (past its restart limit); see `meridian_xds::meridian::InstanceReport`.
    pub state: &'a str,
    /// How often its agent restarted it.
    pub restarts: u32,
    /// The agent's reason for the state.
    pub detail: &'a str,
}

/// The first instance that failed its health checks or crashed: one that ended (its agent
/// restarts it, or gave up) or was restarted. The agent's words tell the two apart. The
/// failure's time is left to the caller.
pub fn health(instances: &[Observed<'_>]) -> Option<GateFailure> {
    let instance = instances
        .iter()
        .find(|i| matches!(i.state, "unhealthy" | "failed") || i.restarts > 0)?;
    let gate = if instance.detail.contains("health check") {
        Gate::HealthChecks
    } else {
        Gate::CrashLoop
    };
    let what = match gate {
        Gate::HealthChecks => "failed its health checks",
        _ => "crashed",
    };
    Some(GateFailure {
        gate,
        instance: Some(instance.id.to_owned()),
        observed: u64::from(instance.restarts),
        limit: 0,
        reason: format!(
            "{} {what} ({} restarts; agent: {})",
            instance.id, instance.restarts, instance.detail
        ),
        at: 0,
    })
}

/// Fails when `waited` reached `deadline` with fewer than `wanted` instances ready; the
/// failure's time is left to the caller.
pub fn progress(
    waited: Duration,
    deadline: Duration,
    ready: u32,
    wanted: u32,
) -> Option<GateFailure> {
    if ready >= wanted || waited < deadline {
        return None;
    }
    let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    Some(GateFailure {
        gate: Gate::ProgressDeadline,
        instance: None,
        observed: millis(waited),
        limit: millis(deadline),
        reason: format!(
            "{ready} of {wanted} instances ready after {:.1}s (progress_deadline {:.1}s)",
            waited.as_secs_f64(),
            deadline.as_secs_f64()
        ),
        at: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed<'a>(id: &'a str, state: &'a str, restarts: u32, detail: &'a str) -> Observed<'a> {
        Observed {
            id,
            state,
            restarts,
            detail,
        }
    }

    #[test]
    fn starting_and_healthy_instances_pass() {
        let fine = [
            observed("web-2", "starting", 0, "started"),
            observed("web-3", "healthy", 0, "passing its health checks"),
        ];
        assert_eq!(health(&fine), None);
    }

    #[test]
    fn a_failed_health_check_or_a_crash_fails_at_once_and_says_which() {
        let checks = observed(
            "web-2",
            "unhealthy",
            0,
            "failed 3 health checks in a row; restarting in 1s",
        );
        let failure = health(&[observed("web-3", "starting", 0, "started"), checks]).unwrap();
        assert_eq!(failure.gate, Gate::HealthChecks);
        assert_eq!(failure.instance.as_deref(), Some("web-2"));
        assert!(
            failure.reason.contains("failed 3 health checks"),
            "{}",
            failure.reason
        );

        let crash = observed(
            "web-2",
            "unhealthy",
            0,
            "exited (exit status: 1); restarting in 1s",
        );
        let failure = health(&[crash]).unwrap();
        assert_eq!(failure.gate, Gate::CrashLoop);
        assert!(
            failure.reason.contains("web-2 crashed"),
            "{}",
            failure.reason
        );
        // Restarted since, and starting again: still a crash loop.
        let again = observed("web-2", "starting", 1, "started");
        assert_eq!(health(&[again]).unwrap().observed, 1);
    }

    #[test]
    fn the_deadline_fails_a_version_not_ready_in_time() {
        let minute = Duration::from_secs(60);
        assert_eq!(progress(minute, minute, 2, 2), None);
        assert_eq!(progress(minute / 2, minute, 0, 2), None);
        let failure = progress(minute, minute, 1, 2).unwrap();
        assert_eq!((failure.observed, failure.limit), (60_000, 60_000));
        assert!(failure
            .reason
            .starts_with("1 of 2 instances ready after 60.0s"));
    }
}
