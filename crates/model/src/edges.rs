//! What the global control plane knows of its edges: where each serves its metrics and, for an
//! edge with anycast addresses, whether it announces them and why.

use serde::{Deserialize, Serialize};

/// The longest reason word, detail text and prefix an edge may report, and the most prefixes.
const MAX_REASON: usize = 32;
const MAX_DETAIL: usize = 1024;
const MAX_PREFIX: usize = 64;
const MAX_PREFIXES: usize = 64;

/// An edge's anycast announcement, as it reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct EdgeAnycast {
    /// Whether it announces its prefixes.
    pub announced: bool,
    /// Why: `healthy`, `hold_down`, `listener_down`, `config_stale`, `no_region`, `bird` or
    /// `draining`.
    pub reason: String,
    /// What that means at the edge, for people.
    pub detail: String,
    /// For how long it has been so, in seconds, when it reported.
    pub since_seconds: u64,
    /// The prefixes it announces while healthy.
    pub prefixes: Vec<String>,
}

/// An edge as the global control plane knows it (`GET /v1/edges`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct EdgeStatus {
    /// The edge's location.
    pub location: String,
    /// Where it serves `/metrics` (`ip:port`), if it said.
    pub metrics_address: Option<String>,
    /// How long ago it last reported, in seconds.
    pub reported_seconds_ago: u64,
    /// Its anycast announcement; none for an edge without anycast addresses.
    pub anycast: Option<EdgeAnycast>,
}

/// Checks what an edge reports of its announcement: a reason word, and a detail, prefixes and
/// their count within bounds.
pub fn validate_edge_anycast(anycast: &EdgeAnycast) -> Result<(), crate::ValidationErrors> {
    let mut errs = crate::ValidationErrors::default();
    let word = |c: char| c.is_ascii_lowercase() || c == '_';
    if anycast.reason.is_empty()
        || anycast.reason.len() > MAX_REASON
        || !anycast.reason.chars().all(word)
    {
        errs.push(
            "anycast.reason",
            format!("a lowercase word (letters and `_`), at most {MAX_REASON} bytes"),
        );
    }
    if anycast.detail.len() > MAX_DETAIL {
        errs.push("anycast.detail", format!("at most {MAX_DETAIL} bytes"));
    }
    if anycast.prefixes.len() > MAX_PREFIXES {
        errs.push("anycast.prefixes", format!("at most {MAX_PREFIXES}"));
    }
    for (i, prefix) in anycast.prefixes.iter().enumerate() {
        if prefix.is_empty()
            || prefix.len() > MAX_PREFIX
            || !prefix
                .chars()
                .all(|c| c.is_ascii_hexdigit() || ".:/".contains(c))
        {
            errs.push(
                format!("anycast.prefixes[{i}]"),
                "an IP prefix (`198.18.0.10/32`)",
            );
        }
    }
    errs.into_result()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_edges_report_is_bounded() {
        let good = EdgeAnycast {
            announced: true,
            reason: "healthy".into(),
            detail: "announced".into(),
            since_seconds: 3,
            prefixes: vec!["198.18.0.10/32".into(), "2001:db8::10/128".into()],
        };
        assert!(validate_edge_anycast(&good).is_ok());
        let bad = EdgeAnycast {
            reason: "Healthy!".into(),
            detail: "x".repeat(2000),
            prefixes: vec!["<script>".into()],
            ..good
        };
        let fields: Vec<String> = validate_edge_anycast(&bad)
            .unwrap_err()
            .errors
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(
            fields,
            ["anycast.reason", "anycast.detail", "anycast.prefixes[0]"]
        );
    }
}
