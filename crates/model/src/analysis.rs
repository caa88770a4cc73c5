//! The metric gates of a rollout: `deploy.analysis` in a definition, and the figures a region
//! measured against it (in [`crate::RolloutStatus::analysis`]).
//!
//! Every field and default is documented in `docs/definition.md`; keep the two in step.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration::HumanDuration;
use crate::ValidationErrors;

/// What the new version's requests, as the node proxies in front of its instances measured
/// them over a sliding window, must show for each step (and each wave) to pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Analysis {
    /// The window the figures are taken over; defaults to `30s`, from `1s` to `1h`.
    #[serde(default = "Analysis::default_window")]
    pub window: HumanDuration,
    /// Fewer requests of the new version than this in the window give no verdict yet (the
    /// step waits; `progress_deadline` bounds the wait); defaults to 20, at least 1.
    #[serde(default = "Analysis::default_min_requests")]
    pub min_requests: u64,
    /// The share of requests answered without a failure (a 5xx, or the instance unreachable
    /// or too slow).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_rate: Option<SuccessRateGate>,
    /// The 99th percentile of the time from request head to response head.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99: Option<LatencyGate>,
}

/// The success-rate gate: absolute and/or relative to the previous version in the same window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SuccessRateGate {
    /// The lowest success rate, a percentage (`"99%"`, `"99.5%"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<String>,
    /// How far below the previous version's success rate it may be, in percentage points
    /// (`"1%"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_drop: Option<String>,
}

/// The latency gate: absolute and/or relative to the previous version in the same window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct LatencyGate {
    /// The highest p99.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<HumanDuration>,
    /// How much above the previous version's p99 it may be: a duration (`"100ms"`) or a
    /// percentage of the previous version's (`"50%"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_increase: Option<String>,
}

/// How much a p99 may grow over the previous version's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Increase {
    /// By so much time.
    By(Duration),
    /// By this many basis points of the previous p99 (5000 = 50 %).
    Share(u32),
}

impl Analysis {
    fn default_window() -> HumanDuration {
        HumanDuration(Duration::from_secs(30))
    }

    fn default_min_requests() -> u64 {
        20
    }

    /// `success_rate.min` in basis points (10000 = 100 %).
    pub fn min_success(&self) -> Option<u32> {
        basis_points(self.success_rate.as_ref()?.min.as_deref()?)
    }

    /// `success_rate.max_drop` in basis points.
    pub fn max_drop(&self) -> Option<u32> {
        basis_points(self.success_rate.as_ref()?.max_drop.as_deref()?)
    }

    /// `p99.max`.
    pub fn max_p99(&self) -> Option<Duration> {
        Some(self.p99.as_ref()?.max?.0)
    }

    /// `p99.max_increase`.
    pub fn max_increase(&self) -> Option<Increase> {
        increase(self.p99.as_ref()?.max_increase.as_deref()?)
    }

    /// Checks the fields, naming them under `at` (`deploy.analysis`).
    pub(crate) fn validate(&self, errs: &mut ValidationErrors, at: &str) {
        let window = self.window.0;
        if window < Duration::from_secs(1) || window > Duration::from_secs(3600) {
            errs.push(format!("{at}.window"), "must be from 1s to 1h");
        }
        if self.min_requests == 0 {
            errs.push(format!("{at}.min_requests"), "must be at least 1");
        }
        if self.success_rate.is_none() && self.p99.is_none() {
            errs.push(
                at.to_owned(),
                "needs success_rate or p99 (or both): nothing to judge",
            );
        }
        if let Some(rate) = &self.success_rate {
            for (field, value) in [("min", &rate.min), ("max_drop", &rate.max_drop)] {
                if let Some(text) = value.as_deref().filter(|t| basis_points(t).is_none()) {
                    errs.push(
                        format!("{at}.success_rate.{field}"),
                        format!("`{text}` is not a percentage from 0% to 100% (e.g. \"99.5%\")"),
                    );
                }
            }
            if rate.min.is_none() && rate.max_drop.is_none() {
                errs.push(format!("{at}.success_rate"), "needs min or max_drop");
            }
        }
        if let Some(p99) = &self.p99 {
            if let Some(text) = p99
                .max_increase
                .as_deref()
                .filter(|t| increase(t).is_none())
            {
                errs.push(
                    format!("{at}.p99.max_increase"),
                    format!(
                        "`{text}` is neither a duration (\"100ms\") nor a percentage (\"50%\")"
                    ),
                );
            }
            if p99.max.is_none() && p99.max_increase.is_none() {
                errs.push(format!("{at}.p99"), "needs max or max_increase");
            }
        }
    }
}

/// A percentage with at most two decimals (`"99%"`, `"99.95%"`) in basis points, at most
/// 10000.
fn basis_points(text: &str) -> Option<u32> {
    let number = text.strip_suffix('%')?;
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty()
        || whole.len() > 3
        || fraction.len() > 2
        || !digits(whole)
        || !digits(fraction)
    {
        return None;
    }
    let whole: u32 = whole.parse().ok()?;
    let fraction: u32 = format!("{fraction:0<2}").parse().ok()?;
    Some(whole * 100 + fraction).filter(|bp| *bp <= 10_000)
}

/// A percentage (of any size: `"150%"`) or a duration.
fn increase(text: &str) -> Option<Increase> {
    if let Some(number) = text.strip_suffix('%') {
        let share: u32 = number.parse().ok()?;
        return Some(Increase::Share(share.checked_mul(100)?));
    }
    humantime::parse_duration(text).ok().map(Increase::By)
}

/// What a region measured of one version over a rollout's analysis window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VersionFigures {
    /// The deployment version.
    pub version: u64,
    /// Requests answered by its instances in the window.
    pub requests: u64,
    /// Of which failed.
    pub failures: u64,
    /// The share answered without failure, in basis points (10000 = 100 %; 10000 without
    /// requests).
    pub success_rate: u32,
    /// The 99th percentile of their latency, in milliseconds (from the proxies' histogram
    /// buckets, interpolated; 0 without requests).
    pub p99_ms: u64,
}

/// A rollout's last analysis: each version's figures over the window ending at `at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AnalysisFigures {
    /// When the window ended, in Unix milliseconds.
    pub at: u64,
    /// The window's length, in milliseconds.
    pub window_ms: u64,
    /// The new version's figures, then the previous one's.
    pub versions: Vec<VersionFigures>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_read_as_basis_points() {
        assert_eq!(basis_points("99%"), Some(9_900));
        assert_eq!(basis_points("99.5%"), Some(9_950));
        assert_eq!(basis_points("0.05%"), Some(5));
        assert_eq!(basis_points("100%"), Some(10_000));
        for bad in ["101%", "99", "9.999%", "%", ".5%", "-1%", "1e2%"] {
            assert_eq!(basis_points(bad), None, "{bad}");
        }
        assert_eq!(increase("50%"), Some(Increase::Share(5_000)));
        assert_eq!(
            increase("100ms"),
            Some(Increase::By(Duration::from_millis(100)))
        );
        assert_eq!(increase("soon"), None);
    }

    #[test]
    fn bad_fields_are_named() {
        let analysis: Analysis = serde_json::from_str(
            r#"{"window": "0s", "min_requests": 0, "success_rate": {"min": "99"},
                "p99": {"max_increase": "a lot"}}"#,
        )
        .unwrap();
        let mut errs = ValidationErrors::default();
        analysis.validate(&mut errs, "deploy.analysis");
        let fields: Vec<&str> = errs.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "deploy.analysis.window",
                "deploy.analysis.min_requests",
                "deploy.analysis.success_rate.min",
                "deploy.analysis.p99.max_increase",
            ]
        );
        let empty: Analysis = serde_json::from_str("{}").unwrap();
        let mut errs = ValidationErrors::default();
        empty.validate(&mut errs, "deploy.analysis");
        assert_eq!(errs.errors[0].field, "deploy.analysis");
    }
}
