//! Scale to zero in a definition (`scale.sleep`): with `scale.min: 0`, a region keeps a
//! service's instances placed but puts them to sleep once nothing used them for `after`;
//! the first request wakes one. What sleeping is (frozen or stopped) is the agent's; when
//! an instance is idle is its node proxy's.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration::HumanDuration;
use crate::error::ValidationErrors;

/// How an idle service's instances sleep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Sleep {
    /// How long an instance must go without a request or a held connection before it sleeps
    /// (1s to 24h).
    pub after: HumanDuration,
    /// How it sleeps: `light` (frozen, its memory kept: it wakes in microseconds) or `deep`
    /// (stopped: it wakes by starting again); defaults to `light`.
    #[serde(default)]
    pub mode: SleepMode,
    /// With `light`: how long it stays frozen before it is stopped (`deep`); absent: it stays
    /// frozen (1s to 7d).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deep_after: Option<HumanDuration>,
    /// Most requests an instance's node proxy holds while it wakes; those beyond are answered
    /// `503` with `Retry-After` (1 to 10000; defaults to 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<u32>,
    /// How long a request is held for an instance to wake before it is answered `503` with
    /// `Retry-After` (100ms to 5m; defaults to 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wake_timeout: Option<HumanDuration>,
}

/// How an instance sleeps, and the depth of one asleep.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum SleepMode {
    /// Frozen (cgroup freezer, or SIGSTOP without one): memory kept, no CPU.
    #[default]
    Light,
    /// Stopped: nothing kept but its name, address and routes.
    Deep,
}

impl SleepMode {
    /// The name written in a definition: `light` or `deep`.
    pub fn as_str(self) -> &'static str {
        match self {
            SleepMode::Light => "light",
            SleepMode::Deep => "deep",
        }
    }

    /// The state an instance asleep this way is reported in: `sleeping (light)` or
    /// `sleeping (deep)`.
    pub fn state(self) -> &'static str {
        match self {
            SleepMode::Light => SLEEPING_LIGHT,
            SleepMode::Deep => SLEEPING_DEEP,
        }
    }
}

/// The reported state of an instance frozen while idle.
pub const SLEEPING_LIGHT: &str = "sleeping (light)";
/// The reported state of an instance stopped while idle.
pub const SLEEPING_DEEP: &str = "sleeping (deep)";

/// Whether an instance reported in `state` takes requests: `healthy`, or asleep (the first
/// request wakes it, held by its node proxy meanwhile).
pub fn serves(state: &str) -> bool {
    matches!(state, "healthy" | SLEEPING_LIGHT | SLEEPING_DEEP)
}

impl Sleep {
    /// The shortest `after` and `deep_after`.
    pub const SHORTEST: Duration = Duration::from_secs(1);
    /// The longest `after`.
    pub const LONGEST_AFTER: Duration = Duration::from_secs(24 * 3600);
    /// The longest `deep_after`.
    pub const LONGEST_DEEP_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);

    /// The requests held at most while waking when `queue` is not given.
    pub const DEFAULT_QUEUE: u32 = 100;
    /// The most `queue` may say.
    pub const MAX_QUEUE: u32 = 10_000;
    /// How long a request is held while waking when `wake_timeout` is not given.
    pub const DEFAULT_WAKE_TIMEOUT: Duration = Duration::from_secs(30);

    /// Most requests held while an instance wakes.
    pub fn queue(&self) -> u32 {
        self.queue.unwrap_or(Self::DEFAULT_QUEUE)
    }

    /// How long a request is held while an instance wakes.
    pub fn wake_timeout(&self) -> Duration {
        self.wake_timeout
            .map_or(Self::DEFAULT_WAKE_TIMEOUT, |t| t.0)
    }

    /// Checks the sleep written at `prefix` (`scale.sleep`) of a scale whose effective
    /// `min` is `min`.
    pub(crate) fn validate(&self, errs: &mut ValidationErrors, prefix: &str, min: u32) {
        if min != 0 {
            errs.push(
                prefix,
                format!("needs scale.min: 0 (min is {min}: that many instances never sleep)"),
            );
        }
        let bounded = [
            ("after", Some(self.after), Self::LONGEST_AFTER, "24h"),
            (
                "deep_after",
                self.deep_after,
                Self::LONGEST_DEEP_AFTER,
                "7d",
            ),
        ];
        for (name, value, longest, written) in bounded {
            match value {
                Some(d) if d.0 < Self::SHORTEST => {
                    errs.push(format!("{prefix}.{name}"), "must be at least 1s");
                }
                Some(d) if d.0 > longest => {
                    errs.push(
                        format!("{prefix}.{name}"),
                        format!("must be at most {written}"),
                    );
                }
                _ => {}
            }
        }
        match self.queue {
            Some(0) => errs.push(format!("{prefix}.queue"), "must be at least 1"),
            Some(q) if q > Self::MAX_QUEUE => errs.push(
                format!("{prefix}.queue"),
                format!("must be at most {}", Self::MAX_QUEUE),
            ),
            _ => {}
        }
        match self.wake_timeout.map(|t| t.0) {
            Some(t) if t < Duration::from_millis(100) => {
                errs.push(format!("{prefix}.wake_timeout"), "must be at least 100ms");
            }
            Some(t) if t > Duration::from_secs(300) => {
                errs.push(format!("{prefix}.wake_timeout"), "must be at most 5m");
            }
            _ => {}
        }
        if self.mode == SleepMode::Deep && self.deep_after.is_some() {
            errs.push(
                format!("{prefix}.deep_after"),
                "only with mode: light (a deep sleep is stopped from the start)",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::{derive_spec, parse_definition_json, SleepMode};

    fn errors(scale: &str, overrides: &str) -> Vec<String> {
        crate::scale_errors::scale_errors(scale, overrides)
    }

    #[test]
    fn a_sleep_needs_min_zero_and_bounded_durations() {
        assert!(errors(r#"{"min":0,"sleep":{"after":"5m"}}"#, "{}").is_empty());
        assert!(errors(
            r#"{"min":0,"max":3,"targets":{"concurrency":2},"sleep":{"after":"5m","mode":"light","deep_after":"1h"}}"#,
            "{}"
        )
        .is_empty());
        assert_eq!(
            errors(r#"{"min":1,"sleep":{"after":"5m"}}"#, "{}"),
            ["scale.sleep: needs scale.min: 0 (min is 1: that many instances never sleep)"]
        );
        assert_eq!(
            errors(
                r#"{"min":0,"sleep":{"after":"10ms","deep_after":"30d"}}"#,
                "{}"
            ),
            [
                "scale.sleep.after: must be at least 1s",
                "scale.sleep.deep_after: must be at most 7d"
            ]
        );
        assert_eq!(
            errors(
                r#"{"min":0,"sleep":{"after":"2d","mode":"deep","deep_after":"1m"}}"#,
                "{}"
            ),
            [
                "scale.sleep.after: must be at most 24h",
                "scale.sleep.deep_after: only with mode: light (a deep sleep is stopped from the start)"
            ]
        );
        assert_eq!(
            errors(
                r#"{"min":0,"sleep":{"after":"1m","queue":0,"wake_timeout":"10m"}}"#,
                "{}"
            ),
            [
                "scale.sleep.queue: must be at least 1",
                "scale.sleep.wake_timeout: must be at most 5m"
            ]
        );
        // A region that runs instances always may not sleep them.
        assert_eq!(
            errors(
                r#"{"min":0,"sleep":{"after":"5m"}}"#,
                r#"{"iad":{"scale":{"min":2,"max":2}}}"#
            ),
            ["overrides.iad.scale.sleep: needs scale.min: 0 (min is 2: that many instances never sleep)"]
        );
        assert_eq!(
            errors(
                r#"{"min":1}"#,
                r#"{"iad":{"scale":{"min":0,"sleep":{"after":"0s"}}}}"#
            ),
            ["overrides.iad.scale.sleep.after: must be at least 1s"]
        );
    }

    #[test]
    fn an_unknown_mode_is_refused_naming_the_field() {
        let json = br#"{"org":"acme","app":"shop","name":"web","regions":["fra"],
            "runtime":{"process":{"command":"x"}},"scale":{"min":0,"sleep":{"after":"1m","mode":"hibernate"}}}"#;
        let error = parse_definition_json(json).unwrap_err().to_string();
        assert!(error.contains("scale.sleep.mode"), "{error}");
    }

    #[test]
    fn a_region_override_replaces_the_sleep_and_places_one_instance() {
        let json = br#"{"org":"acme","app":"shop","name":"web","regions":["fra","iad"],
            "runtime":{"process":{"command":"x"}},
            "scale":{"min":0,"sleep":{"after":"5m"}},
            "overrides":{"iad":{"scale":{"sleep":{"after":"30s","mode":"deep"}}}}}"#;
        let definition = parse_definition_json(json).unwrap();
        let fra = derive_spec(&definition, None).scale;
        let sleep = fra.sleep.unwrap();
        assert_eq!(
            (sleep.after.0, sleep.mode, sleep.deep_after),
            (Duration::from_secs(300), SleepMode::Light, None)
        );
        assert_eq!(
            fra.fewest_placed(),
            1,
            "one instance placed, asleep when idle"
        );
        let iad = derive_spec(&definition, definition.overrides.get("iad")).scale;
        let sleep = iad.sleep.unwrap();
        assert_eq!(
            (sleep.after.0, sleep.mode),
            (Duration::from_secs(30), SleepMode::Deep)
        );
        let plain = crate::Scale {
            min: 0,
            ..crate::Scale::default()
        };
        assert_eq!(plain.fewest_placed(), 0, "scaled to zero: nothing placed");
        assert!(super::serves("sleeping (deep)") && !super::serves("starting"));
    }
}
