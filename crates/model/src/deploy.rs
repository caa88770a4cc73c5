//! How a new version of a service replaces the running one: `deploy` in a definition.
//!
//! Every field and default is documented in `docs/definition.md`; keep the two in step.

use serde::{Deserialize, Serialize};

use crate::analysis::Analysis;
use crate::duration::HumanDuration;
use crate::ValidationErrors;

/// How a new version replaces the running one in each region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Deploy {
    /// The strategy; defaults to `rolling`.
    #[serde(default)]
    pub strategy: Strategy,
    /// Instances the rollout may run above `scale.min` (a count, or a percentage of
    /// `scale.min` rounded up); defaults to `25%`, at least 1.
    #[serde(default = "Amount::quarter")]
    pub max_surge: Amount,
    /// Ready instances the rollout may go below `scale.min` (a count, or a percentage of
    /// `scale.min` rounded down); defaults to 0.
    #[serde(default = "Amount::none")]
    pub max_unavailable: Amount,
    /// How long an instance leaving service stays running after the region's proxies
    /// acknowledged that they no longer send it requests, before it is stopped; defaults to
    /// `1s`, at most `1m`.
    #[serde(default = "Deploy::default_drain_delay")]
    pub drain_delay: HumanDuration,
    /// How long the connections to an instance leaving service may stay open once it lost its
    /// assignment (requests in flight finish at once, idle connections close, HTTP/2 gets
    /// GOAWAY; WebSockets and other upgraded or TCP connections get this long), before they are
    /// closed and the instance gets SIGTERM; defaults to `30s`, at most [`Deploy::MAX_DRAIN`].
    #[serde(default = "Deploy::default_drain_timeout")]
    pub drain_timeout: HumanDuration,
    /// How long an instance may take to exit after SIGTERM before it gets SIGKILL; defaults to
    /// `10s`, at most [`Deploy::MAX_STOP`].
    #[serde(default = "Deploy::default_stop_timeout")]
    pub stop_timeout: HumanDuration,
    /// How long the new version may take to have `scale.min` instances ready in a region
    /// before the rollout fails and the region returns to the previous version; defaults to
    /// `5m`, from `1s` to `1h`.
    #[serde(default = "Deploy::default_progress_deadline")]
    pub progress_deadline: HumanDuration,
    /// With `blue_green` or `canary`: how long the previous set keeps running after the
    /// switch, out of service, for an instant return to it; defaults to `1m`, at most `1h`.
    /// Only with those strategies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_previous: Option<HumanDuration>,
    /// The regions in the order they take a new version: each wave starts only once every
    /// region of the one before runs the new version to the full. Regions named in no wave
    /// form a last wave; no waves (the default) means every region at once. Not overridable
    /// per region.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waves: Vec<Vec<String>>,
    /// With `canary`: the share of requests the new version gets, step by step (a last step
    /// of 100 is implied). Only with `canary`, which needs at least one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<CanaryStep>,
    /// The metric gates: each step (and each wave) passes only once the new version's
    /// success rate and p99 latency over a window are within these bounds. None: the health
    /// gates alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<Analysis>,
}

/// One step of a canary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CanaryStep {
    /// The new version's share of requests, in percent (1 to 100, more than the step before).
    pub weight: u32,
    /// How long the step lasts once the new version is ready; defaults to `0s`, at most `1h`.
    #[serde(default = "CanaryStep::no_pause")]
    pub pause: HumanDuration,
}

impl CanaryStep {
    fn no_pause() -> HumanDuration {
        HumanDuration(std::time::Duration::ZERO)
    }
}

impl Default for Deploy {
    fn default() -> Self {
        Deploy {
            strategy: Strategy::default(),
            max_surge: Amount::quarter(),
            max_unavailable: Amount::none(),
            drain_delay: Deploy::default_drain_delay(),
            drain_timeout: Deploy::default_drain_timeout(),
            stop_timeout: Deploy::default_stop_timeout(),
            progress_deadline: Deploy::default_progress_deadline(),
            keep_previous: None,
            waves: Vec::new(),
            steps: Vec::new(),
            analysis: None,
        }
    }
}

impl Deploy {
    /// The longest `drain_timeout`.
    pub const MAX_DRAIN: std::time::Duration = std::time::Duration::from_secs(3600);
    /// The longest `stop_timeout`.
    pub const MAX_STOP: std::time::Duration = std::time::Duration::from_secs(600);

    fn default_drain_delay() -> HumanDuration {
        HumanDuration(std::time::Duration::from_secs(1))
    }

    fn default_drain_timeout() -> HumanDuration {
        HumanDuration(std::time::Duration::from_secs(30))
    }

    fn default_stop_timeout() -> HumanDuration {
        HumanDuration(std::time::Duration::from_secs(10))
    }

    fn default_progress_deadline() -> HumanDuration {
        HumanDuration(std::time::Duration::from_secs(300))
    }

    /// How long the previous version's instances keep running after they left service: with
    /// `blue_green` or `canary`, `keep_previous` (default 1 minute); else nothing beyond
    /// `drain_delay`.
    pub fn keep_previous(&self) -> std::time::Duration {
        match self.strategy {
            Strategy::BlueGreen | Strategy::Canary => self
                .keep_previous
                .map_or(std::time::Duration::from_secs(60), |k| k.0),
            Strategy::Rolling => std::time::Duration::ZERO,
        }
    }

    /// The canary's weights step by step, ending with 100 (empty for the other strategies).
    pub fn canary_weights(&self) -> Vec<(u32, std::time::Duration)> {
        if self.strategy != Strategy::Canary {
            return Vec::new();
        }
        let mut weights: Vec<(u32, std::time::Duration)> =
            self.steps.iter().map(|s| (s.weight, s.pause.0)).collect();
        if weights.last().is_none_or(|(w, _)| *w < 100) {
            weights.push((100, std::time::Duration::ZERO));
        }
        weights
    }

    /// Whether every field has its default (then it is left out of documents).
    pub fn is_default(&self) -> bool {
        *self == Deploy::default()
    }

    /// The wave of each of `regions` (0 first), as [`Deploy::waves`] orders them: a region
    /// named in no wave is in the wave after the last one named.
    pub fn wave_of(&self, region: &str) -> usize {
        self.waves
            .iter()
            .position(|wave| wave.iter().any(|r| r == region))
            .unwrap_or(self.waves.len())
    }

    /// This deploy with `o` merged in. Errors (an unknown field, a value of the wrong type)
    /// name the field relative to `deploy` (`max_surge`, `analysis.window`).
    pub fn with_override(&self, o: &DeployOverride) -> Result<Deploy, ValidationErrors> {
        let mut merged = serde_json::to_value(self).map_err(|e| {
            let mut errors = ValidationErrors::default();
            errors.push("deploy", e.to_string());
            errors
        })?;
        merge(&mut merged, &o.0);
        crate::parse_json(merged.to_string().as_bytes())
    }

    /// The bounds of a rolling deploy to `scale` instances: (surge, unavailable) as counts.
    /// Percentages of `scale` round up for the surge, down for unavailability; when both come
    /// to 0 the surge is 1, so that a rollout can always move.
    pub fn bounds(&self, scale: u32) -> (u32, u32) {
        let surge = self.max_surge.of(scale, true);
        let unavailable = self.max_unavailable.of(scale, false).min(scale);
        if surge == 0 && unavailable == 0 {
            (1, 0)
        } else {
            (surge, unavailable)
        }
    }
}

/// A partial [`Deploy`], as a region's override writes it: objects merge into the definition's
/// `deploy` by key (recursively), everything else replaces. Kept as written, so that it stays
/// in step with every field `deploy` has; [`Deploy::with_override`] reads the merged result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DeployOverride(pub serde_json::Map<String, serde_json::Value>);

impl DeployOverride {
    /// Whether the override names `field`.
    pub fn names(&self, field: &str) -> bool {
        self.0.contains_key(field)
    }
}

/// Merges `from` into `into` when it is an object: objects by key, recursively; anything else
/// replaces.
fn merge(into: &mut serde_json::Value, from: &serde_json::Map<String, serde_json::Value>) {
    let serde_json::Value::Object(target) = into else {
        return;
    };
    for (key, value) in from {
        match (target.get_mut(key), value) {
            (Some(existing @ serde_json::Value::Object(_)), serde_json::Value::Object(fields)) => {
                merge(existing, fields);
            }
            _ => {
                target.insert(key.clone(), value.clone());
            }
        }
    }
}

/// A deploy strategy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// New instances start beside the old ones; an old one leaves only once a new one is ready.
    #[default]
    Rolling,
    /// A full set of new instances starts beside the old one, which keeps every request until
    /// all of them are ready; then the old set leaves service at once, and keeps running for
    /// `keep_previous`.
    BlueGreen,
    /// A full set of new instances starts beside the old one; once it is ready, the proxies
    /// send it the share of requests of each of `steps` in turn, then all of them, as
    /// blue-green.
    Canary,
}

/// A number of instances: a count (`2`) or a percentage of the scale (`"25%"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(untagged)]
pub enum Amount {
    /// So many instances.
    Count(u32),
    /// A percentage, written `"N%"` with N from 0 to 100.
    Percent(String),
}

impl Amount {
    fn quarter() -> Amount {
        Amount::Percent("25%".to_owned())
    }

    fn none() -> Amount {
        Amount::Count(0)
    }

    /// The percentage, when it is one and is well written (`0%` to `100%`).
    pub fn percent(&self) -> Option<u32> {
        match self {
            Amount::Count(_) => None,
            Amount::Percent(text) => text
                .strip_suffix('%')
                .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|n| n.parse().ok())
                .filter(|n| *n <= 100),
        }
    }

    /// The count for `scale` instances, a percentage rounded up or down (0 if it is not well
    /// written; validation rejects that).
    pub fn of(&self, scale: u32, round_up: bool) -> u32 {
        match self {
            Amount::Count(n) => *n,
            Amount::Percent(_) => {
                let scaled = u64::from(scale) * u64::from(self.percent().unwrap_or(0));
                let count = if round_up {
                    scaled.div_ceil(100)
                } else {
                    scaled / 100
                };
                u32::try_from(count).unwrap_or(u32::MAX)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deploy(surge: Amount, unavailable: Amount) -> Deploy {
        Deploy {
            max_surge: surge,
            max_unavailable: unavailable,
            ..Deploy::default()
        }
    }

    #[test]
    fn the_default_surges_a_quarter_rounded_up_and_keeps_every_instance() {
        assert_eq!(Deploy::default().bounds(1), (1, 0));
        assert_eq!(Deploy::default().bounds(4), (1, 0));
        assert_eq!(Deploy::default().bounds(5), (2, 0));
        assert_eq!(Deploy::default().bounds(0), (1, 0));
    }

    #[test]
    fn percentages_round_up_for_the_surge_and_down_for_unavailability() {
        let half = || Amount::Percent("50%".to_owned());
        assert_eq!(deploy(half(), half()).bounds(3), (2, 1));
        assert_eq!(deploy(Amount::Count(0), half()).bounds(1), (1, 0));
        assert_eq!(deploy(Amount::Count(0), Amount::Count(9)).bounds(3), (0, 3));
    }

    #[test]
    fn only_whole_percentages_up_to_100_are_read() {
        for bad in ["%", "-5%", "101%", "5", "5.5%", " 5%"] {
            assert_eq!(Amount::Percent(bad.to_owned()).percent(), None, "{bad}");
        }
        assert_eq!(Amount::Percent("100%".to_owned()).percent(), Some(100));
    }

    #[test]
    fn regions_named_in_no_wave_go_last() {
        let deploy = Deploy {
            waves: vec![
                vec!["fra".to_owned()],
                vec!["iad".to_owned(), "sin".to_owned()],
            ],
            ..Deploy::default()
        };
        let waves: Vec<usize> = ["fra", "iad", "sin", "syd"]
            .iter()
            .map(|r| deploy.wave_of(r))
            .collect();
        assert_eq!(waves, [0, 1, 1, 2]);
        assert_eq!(Deploy::default().wave_of("fra"), 0);
    }

    #[test]
    fn an_override_replaces_the_fields_it_names_and_keeps_the_others() {
        let base = Deploy {
            max_surge: Amount::Count(3),
            ..Deploy::default()
        };
        let o: DeployOverride =
            serde_json::from_str(r#"{"max_unavailable": "50%", "drain_delay": "3s"}"#).unwrap();
        let merged = base.with_override(&o).unwrap();
        assert_eq!(merged.max_surge, Amount::Count(3));
        assert_eq!(merged.max_unavailable, Amount::Percent("50%".to_owned()));
        assert_eq!(merged.drain_delay.0, std::time::Duration::from_secs(3));
        let bad: DeployOverride =
            serde_json::from_str(r#"{"max_surje": 1, "drain_delay": 5}"#).unwrap();
        let errors = base.with_override(&bad).unwrap_err();
        let fields: Vec<&str> = errors.errors.iter().map(|e| e.field.as_str()).collect();
        assert!(fields.contains(&"drain_delay"), "{errors}");
    }

    #[test]
    fn reads_counts_and_percentages() {
        let deploy: Deploy =
            serde_json::from_str(r#"{"max_surge": 2, "max_unavailable": "10%"}"#).unwrap();
        assert_eq!(deploy.max_surge, Amount::Count(2));
        assert_eq!(deploy.max_unavailable, Amount::Percent("10%".to_owned()));
        assert_eq!(deploy.strategy, Strategy::Rolling);
    }
}
