//! Per-instance concurrency limits (`scale.concurrency`): how many requests an instance's node
//! proxy lets reach it at once (`hard`), and how many more it holds briefly while one of those
//! ends. The node proxy enforces them; see the proxy's `figures` module.

use serde::{Deserialize, Serialize};

use crate::error::ValidationErrors;

/// An instance's concurrency limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Concurrency {
    /// Above this many requests in flight, new requests would prefer other instances (not
    /// supported yet: rejected).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soft: Option<u32>,
    /// Most requests in flight to one instance (1–10000): more wait in its node proxy, up to
    /// as many again and each for at most [`Concurrency::WAIT`], then are answered `503` with
    /// `Retry-After`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hard: Option<u32>,
}

impl Concurrency {
    /// The most a limit may be.
    pub const MAX: u32 = 10_000;
    /// How long a request waits for room at the hard limit.
    pub const WAIT: std::time::Duration = std::time::Duration::from_secs(1);

    /// Checks the limits written at `prefix` (`scale.concurrency`).
    pub(crate) fn validate(&self, errs: &mut ValidationErrors, prefix: &str) {
        if self.soft.is_some() {
            errs.push(
                format!("{prefix}.soft"),
                "not supported yet: give `hard` only",
            );
        }
        match self.hard {
            None => errs.push(prefix, "give `hard`"),
            Some(0) => errs.push(format!("{prefix}.hard"), "must be at least 1"),
            Some(n) if n > Self::MAX => errs.push(
                format!("{prefix}.hard"),
                format!("must be at most {}", Self::MAX),
            ),
            Some(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{derive_spec, parse_definition_json};

    fn errors(scale: &str, overrides: &str) -> Vec<String> {
        crate::scale_errors::scale_errors(scale, overrides)
    }

    #[test]
    fn a_hard_limit_is_between_1_and_10000_and_a_region_may_replace_it() {
        assert!(errors(r#"{"concurrency":{"hard":50}}"#, "{}").is_empty());
        assert_eq!(
            errors(r#"{"concurrency":{"hard":0}}"#, "{}"),
            ["scale.concurrency.hard: must be at least 1"]
        );
        assert_eq!(
            errors(r#"{"concurrency":{"hard":10001}}"#, "{}"),
            ["scale.concurrency.hard: must be at most 10000"]
        );
        assert_eq!(
            errors(
                r#"{"concurrency":{}}"#,
                r#"{"iad":{"scale":{"concurrency":{"soft":5,"hard":9}}}}"#
            ),
            [
                "scale.concurrency: give `hard`",
                "overrides.iad.scale.concurrency.soft: not supported yet: give `hard` only"
            ]
        );
        let json = br#"{"org":"acme","app":"shop","name":"web","regions":["fra","iad"],
            "runtime":{"process":{"command":"x"}},"scale":{"concurrency":{"hard":8}},
            "overrides":{"iad":{"scale":{"concurrency":{"hard":20}}}}}"#;
        let definition = parse_definition_json(json).unwrap();
        let hard = |region: Option<&str>| {
            let o = region.and_then(|r| definition.overrides.get(r));
            derive_spec(&definition, o)
                .scale
                .concurrency
                .and_then(|c| c.hard)
        };
        assert_eq!((hard(None), hard(Some("iad"))), (Some(8), Some(20)));
    }
}
