//! Per-instance concurrency limits (`scale.concurrency`): above `soft` requests in flight to an
//! instance, the proxies that send to it (gateways, node proxies) prefer its other instances;
//! at `hard`, its node proxy lets no more reach it: a sender with another instance to try is
//! told at once to go there, others wait briefly. The senders count their own requests in
//! flight per instance (least-request balancing, as Envoy's), so `soft` is per sender; `hard`
//! is the instance's own count, enforced where it is received. See the proxy's `figures` and
//! `cluster` modules.

use serde::{Deserialize, Serialize};

use crate::error::ValidationErrors;

/// An instance's concurrency limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Concurrency {
    /// Above this many requests in flight from one proxy (1 up to `hard`, less than it), that
    /// proxy's new requests go to other instances of the service that are below it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soft: Option<u32>,
    /// Most requests in flight to one instance (1–10000): more go to another instance with
    /// room when the sender has one, else wait in its node proxy, up to as many again and
    /// each for at most [`Concurrency::WAIT`], then are answered `503` with `Retry-After`.
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
        match (self.soft, self.hard) {
            (Some(0), _) => errs.push(format!("{prefix}.soft"), "must be at least 1"),
            (Some(soft), Some(hard)) if soft >= hard => errs.push(
                format!("{prefix}.soft"),
                format!("must be less than `hard` ({hard})"),
            ),
            _ => {}
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
    fn a_hard_limit_is_between_1_and_10000_soft_below_it_and_a_region_may_replace_them() {
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
                r#"{"iad":{"scale":{"concurrency":{"soft":9,"hard":9}}}}"#
            ),
            [
                "scale.concurrency: give `hard`",
                "overrides.iad.scale.concurrency.soft: must be less than `hard` (9)"
            ]
        );
        assert!(errors(r#"{"concurrency":{"soft":4,"hard":5}}"#, "{}").is_empty());
        assert_eq!(
            errors(r#"{"concurrency":{"soft":0,"hard":5}}"#, "{}"),
            ["scale.concurrency.soft: must be at least 1"]
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
