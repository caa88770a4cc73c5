//! How a new version of a service replaces the running one: `deploy` in a definition.
//!
//! Every field and default is documented in `docs/definition.md`; keep the two in step.

use serde::{Deserialize, Serialize};

use crate::duration::HumanDuration;

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

    /// Whether every field has its default (then it is left out of documents).
    pub fn is_default(&self) -> bool {
        *self == Deploy::default()
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

/// A deploy strategy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// New instances start beside the old ones; an old one leaves only once a new one is ready.
    #[default]
    Rolling,
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
    fn reads_counts_and_percentages() {
        let deploy: Deploy =
            serde_json::from_str(r#"{"max_surge": 2, "max_unavailable": "10%"}"#).unwrap();
        assert_eq!(deploy.max_surge, Amount::Count(2));
        assert_eq!(deploy.max_unavailable, Amount::Percent("10%".to_owned()));
        assert_eq!(deploy.strategy, Strategy::Rolling);
    }
}
