//! Autoscaling in a definition (`scale.targets`, `scale.down_window`) and what a region says
//! about its last decision ([`AutoscaleStatus`]). The decision itself is the regional control
//! plane's.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration::HumanDuration;
use crate::error::ValidationErrors;

/// What each instance should carry; exactly one field is set (checked by
/// [`crate::validate_definition`]). The region runs as many instances as the service's load
/// needs at this figure per instance, within `scale.min` and `scale.max`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ScaleTargets {
    /// Requests in flight per instance (1–10000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// Requests answered per second per instance (1–1000000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<u32>,
    /// CPU time used per instance, in percent of its `resources.cpu` (1–100; needs
    /// `resources.cpu`), from its cgroup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_percent: Option<u32>,
    /// Memory in use per instance, in percent of its `resources.memory` (1–100; needs
    /// `resources.memory`), from its cgroup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_percent: Option<u32>,
}

/// The one figure a service scales on, with its value per instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleTarget {
    /// Requests in flight per instance.
    Concurrency(u32),
    /// Requests answered per second per instance.
    RequestsPerSecond(u32),
    /// CPU time used per instance, in percent of its `resources.cpu`.
    CpuPercent(u32),
    /// Memory in use per instance, in percent of its `resources.memory`.
    MemoryPercent(u32),
}

impl ScaleTarget {
    /// The figure's name as written in a definition.
    pub fn name(self) -> &'static str {
        match self {
            ScaleTarget::Concurrency(_) => "concurrency",
            ScaleTarget::RequestsPerSecond(_) => "requests_per_second",
            ScaleTarget::CpuPercent(_) => "cpu_percent",
            ScaleTarget::MemoryPercent(_) => "memory_percent",
        }
    }

    /// The figure's value per instance.
    pub fn per_instance(self) -> u32 {
        match self {
            ScaleTarget::Concurrency(n)
            | ScaleTarget::RequestsPerSecond(n)
            | ScaleTarget::CpuPercent(n)
            | ScaleTarget::MemoryPercent(n) => n,
        }
    }
}

impl ScaleTargets {
    /// Most requests in flight per instance a target may name.
    pub const MAX_CONCURRENCY: u32 = 10_000;
    /// Most requests per second per instance a target may name.
    pub const MAX_REQUESTS_PER_SECOND: u32 = 1_000_000;
    /// Most percent of its CPU or memory an instance may be meant to use.
    pub const MAX_PERCENT: u32 = 100;

    /// The figure to scale on, once validated (`None` when none is usable).
    pub fn target(&self) -> Option<ScaleTarget> {
        let set = [
            self.concurrency.map(ScaleTarget::Concurrency),
            self.requests_per_second.map(ScaleTarget::RequestsPerSecond),
            self.cpu_percent.map(ScaleTarget::CpuPercent),
            self.memory_percent.map(ScaleTarget::MemoryPercent),
        ];
        let mut named = set.into_iter().flatten();
        match (named.next(), named.next()) {
            (Some(target), None) if target.per_instance() > 0 => Some(target),
            _ => None,
        }
    }

    /// Checks that the resources a percentage target is of are set: `resources` are the
    /// instances' where these targets apply, `prefix` where the targets are written.
    pub(crate) fn validate_resources(
        &self,
        errs: &mut ValidationErrors,
        prefix: &str,
        resources: &crate::Resources,
    ) {
        if self.cpu_percent.is_some() && resources.cpu.is_none() {
            errs.push(
                format!("{prefix}.cpu_percent"),
                "needs `resources.cpu`: the percentage is of it",
            );
        }
        if self.memory_percent.is_some() && resources.memory.is_none() {
            errs.push(
                format!("{prefix}.memory_percent"),
                "needs `resources.memory`: the percentage is of it",
            );
        }
    }

    /// Checks the targets written at `prefix` (`scale.targets`).
    pub(crate) fn validate(&self, errs: &mut ValidationErrors, prefix: &str) {
        let set = [
            ("concurrency", self.concurrency),
            ("requests_per_second", self.requests_per_second),
            ("cpu_percent", self.cpu_percent),
            ("memory_percent", self.memory_percent),
        ];
        let named: Vec<&str> = set
            .iter()
            .filter(|(_, v)| v.is_some())
            .map(|(n, _)| *n)
            .collect();
        if named.is_empty() {
            errs.push(
                prefix,
                "name one target: `concurrency`, `requests_per_second`, `cpu_percent` or `memory_percent`",
            );
        } else if named.len() > 1 {
            errs.push(
                prefix,
                format!("name one target, not {}", named.join(" and ")),
            );
        }
        let bounded = [
            ("concurrency", self.concurrency, Self::MAX_CONCURRENCY),
            (
                "requests_per_second",
                self.requests_per_second,
                Self::MAX_REQUESTS_PER_SECOND,
            ),
            ("cpu_percent", self.cpu_percent, Self::MAX_PERCENT),
            ("memory_percent", self.memory_percent, Self::MAX_PERCENT),
        ];
        for (name, value, max) in bounded {
            match value {
                Some(0) => errs.push(format!("{prefix}.{name}"), "must be at least 1"),
                Some(v) if v > max => {
                    errs.push(format!("{prefix}.{name}"), format!("must be at most {max}"));
                }
                _ => {}
            }
        }
    }
}

/// The stabilisation window of scale-down when `scale.down_window` is not given.
pub const DEFAULT_DOWN_WINDOW: Duration = Duration::from_secs(300);
/// The longest stabilisation window of scale-down.
pub const MAX_DOWN_WINDOW: Duration = Duration::from_secs(3600);

/// Checks `scale.down_window` written at `field`.
pub(crate) fn validate_down_window(
    errs: &mut ValidationErrors,
    field: &str,
    window: Option<HumanDuration>,
) {
    if window.is_some_and(|w| w.0 > MAX_DOWN_WINDOW) {
        errs.push(field, "must be at most 1h");
    }
}

/// A region's last autoscaling decision for a service: how many instances it runs and wants,
/// and why, with the inputs it decided from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AutoscaleStatus {
    /// Instances in service when it decided.
    pub current: u32,
    /// Instances it wants now (within `scale.min` and `scale.max`).
    pub desired: u32,
    /// Why, with the inputs (`concurrency 7.5 over 1 instance, target 2 each: 3 wanted`).
    pub reason: String,
    /// When it decided, in milliseconds since the Unix epoch.
    pub decided_at: u64,
}

impl AutoscaleStatus {
    /// Longest reason reported, in bytes.
    pub const REASON_LEN: usize = 512;

    /// Checks a region's report of it, at `prefix` (`services[0].autoscale`).
    pub(crate) fn validate(&self, errs: &mut ValidationErrors, prefix: &str) {
        if self.reason.len() > Self::REASON_LEN {
            errs.push(
                format!("{prefix}.reason"),
                format!("at most {} bytes", Self::REASON_LEN),
            );
        }
        for (name, count) in [("current", self.current), ("desired", self.desired)] {
            if count > crate::validate::Limits::SCALE_MAX {
                errs.push(
                    format!("{prefix}.{name}"),
                    format!("must be at most {}", crate::validate::Limits::SCALE_MAX),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{derive_spec, parse_definition_json, ScaleTarget};

    fn errors(scale: &str, overrides: &str) -> Vec<String> {
        crate::scale_errors::scale_errors(scale, overrides)
    }

    #[test]
    fn a_scale_with_only_min_and_max_stays_valid_and_unchanged() {
        assert!(errors(r#"{"min":1,"max":1}"#, "{}").is_empty());
        assert!(errors(r#"{"min":2}"#, "{}")[0].contains("min (2) is greater than max (1)"));
        let json = br#"{"org":"acme","app":"shop","name":"web","regions":["fra"],
            "runtime":{"process":{"command":"x"}},"scale":{"min":1,"max":2}}"#;
        let definition = parse_definition_json(json).unwrap();
        let written = serde_json::to_value(definition.scale).unwrap();
        assert_eq!(written, serde_json::json!({"min": 1, "max": 2}));
    }

    #[test]
    fn targets_name_exactly_one_usable_figure() {
        assert!(errors(r#"{"min":1,"max":3,"targets":{"concurrency":4}}"#, "{}").is_empty());
        assert_eq!(
            errors(r#"{"min":1,"max":3,"targets":{}}"#, "{}"),
            ["scale.targets: name one target: `concurrency`, `requests_per_second`, `cpu_percent` or `memory_percent`"]
        );
        assert_eq!(
            errors(
                r#"{"min":1,"max":3,"targets":{"concurrency":4,"requests_per_second":9}}"#,
                "{}"
            ),
            ["scale.targets: name one target, not concurrency and requests_per_second"]
        );
        assert_eq!(
            errors(r#"{"min":1,"max":3,"targets":{"concurrency":0}}"#, "{}"),
            ["scale.targets.concurrency: must be at least 1"]
        );
        assert_eq!(
            errors(r#"{"min":1,"max":3,"targets":{"cpu_percent":101}}"#, "{}"),
            [
                "scale.targets.cpu_percent: must be at most 100",
                "scale.targets.cpu_percent: needs `resources.cpu`: the percentage is of it"
            ]
        );
        assert_eq!(
            errors(
                r#"{"min":1,"max":3,"targets":{"requests_per_second":5},"down_window":"2h"}"#,
                "{}"
            ),
            ["scale.down_window: must be at most 1h"]
        );
        assert_eq!(
            errors(
                r#"{"min":1,"max":3}"#,
                r#"{"iad":{"scale":{"min":4,"targets":{"concurrency":0}}}}"#
            ),
            [
                "overrides.iad.scale.min: min (4) is greater than max (3)",
                "overrides.iad.scale.targets.concurrency: must be at least 1"
            ]
        );
    }

    #[test]
    fn a_percentage_target_needs_the_resource_it_is_of() {
        let with_resources = |resources: &str| {
            let json = format!(
                r#"{{"org":"acme","app":"shop","name":"web","regions":["fra","iad"],
                "runtime":{{"process":{{"command":"x"}}}},"resources":{resources},
                "scale":{{"min":1,"max":3,"targets":{{"cpu_percent":70}}}},
                "overrides":{{"iad":{{"scale":{{"targets":{{"memory_percent":80}}}}}}}}}}"#
            );
            let definition = parse_definition_json(json.as_bytes()).unwrap();
            match crate::validate_definition(&definition, &|_| true) {
                Ok(()) => Vec::new(),
                Err(errs) => errs.errors.into_iter().map(|e| e.field).collect(),
            }
        };
        assert!(with_resources(r#"{"cpu":0.5,"memory":"64Mi"}"#).is_empty());
        assert_eq!(
            with_resources(r#"{"cpu":0.5}"#),
            ["overrides.iad.scale.targets.memory_percent"]
        );
        assert_eq!(
            with_resources(r#"{"memory":"64Mi"}"#),
            ["scale.targets.cpu_percent"]
        );
        let json = br#"{"org":"acme","app":"shop","name":"web","regions":["fra"],
            "runtime":{"process":{"command":"x"}},"resources":{"memory":"64Mi"},
            "scale":{"min":1,"max":3,"targets":{"memory_percent":80}}}"#;
        let definition = parse_definition_json(json).unwrap();
        assert_eq!(
            derive_spec(&definition, None)
                .scale
                .targets
                .and_then(|t| t.target()),
            Some(ScaleTarget::MemoryPercent(80))
        );
    }

    #[test]
    fn a_region_override_replaces_the_targets_and_window() {
        let json = br#"{"org":"acme","app":"shop","name":"web","regions":["fra","iad"],
            "runtime":{"process":{"command":"x"}},
            "scale":{"min":1,"max":3,"targets":{"concurrency":4}},
            "overrides":{"iad":{"scale":{"max":6,"targets":{"requests_per_second":50},"down_window":"30s"}}}}"#;
        let definition = parse_definition_json(json).unwrap();
        let fra = derive_spec(&definition, None).scale;
        assert_eq!(
            fra.targets.and_then(|t| t.target()),
            Some(ScaleTarget::Concurrency(4))
        );
        assert_eq!(fra.down_window(), super::DEFAULT_DOWN_WINDOW);
        let iad = derive_spec(&definition, definition.overrides.get("iad")).scale;
        assert_eq!((iad.min, iad.max), (1, 6));
        assert_eq!(
            iad.targets.and_then(|t| t.target()),
            Some(ScaleTarget::RequestsPerSecond(50))
        );
        assert_eq!(iad.down_window(), std::time::Duration::from_secs(30));
    }
}
