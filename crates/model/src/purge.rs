//! Purges of the edges' shared HTTP caches: what a purge removes (a URL, a tag, or everything of
//! an app), the request that asks for one, and the record the store keeps of it.
//!
//! Every purge gets a sequence number, 1, 2, 3, … without gaps across the installation; the
//! store keeps the newest [`PURGE_HISTORY`] of them. An edge remembers the last one it applied:
//! one that finds the history no longer reaches back to it purges everything it holds
//! (docs/definition.md, "Purging the edges' caches").

use serde::{Deserialize, Serialize};

use crate::ValidationErrors;

/// How many purges the store keeps, the newest (older ones are dropped as new ones come).
/// An edge away from the global control plane catches up from this history when it is back;
/// one that missed more purges than it holds purges everything instead. 10,000 purges take
/// about 2 MB (20 MiB at most) in the plane's memory and on a new edge's first connection, and
/// cover hours of purging at a sustained purge per second.
pub const PURGE_HISTORY: u64 = 10_000;

/// Longest URL a purge names, in bytes: the whole history fits in the one xDS response a new
/// edge gets (10,000 × 2 KiB = 20 MiB, under the 64 MiB an edge accepts).
pub const PURGE_URL_MAX: usize = 2048;

/// Longest tag a purge names, in bytes: the edges never index longer ones
/// (`meridian_cache::tags::MAX_TAG_LEN`).
pub const PURGE_TAG_MAX: usize = 256;

/// What a purge removes from the edges' caches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "PurgeRequest", into = "PurgeRequest")]
pub enum PurgeTarget {
    /// The responses stored for this absolute `http://` or `https://` URL, under either scheme.
    Url(String),
    /// Every response of the app that its origin tagged so (`Cache-Tag`, `Surrogate-Key`).
    Tag(String),
    /// Every response of the app.
    All,
}

/// A purge as asked for, and as shown: exactly one of `url`, `tag` or `all: true`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PurgeRequest {
    /// Remove the responses stored for this absolute `http://` or `https://` URL (under both
    /// schemes), whose host is one of the app's domains; no user info or fragment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Remove every response of the app that its origin tagged so in `Cache-Tag` or
    /// `Surrogate-Key`: 1–256 visible ASCII characters, no comma.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// `true`: remove every response of the app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all: Option<bool>,
}

impl PurgeRequest {
    /// The one target the request names, its tag checked; the URL is the caller's to check
    /// against the app's domains. Every problem names its field.
    pub fn target(&self) -> Result<PurgeTarget, ValidationErrors> {
        let invalid = |field: &str, reason: String| {
            let mut errs = ValidationErrors::default();
            errs.push(field, reason);
            errs
        };
        let given: Vec<&str> = [
            ("url", self.url.is_some()),
            ("tag", self.tag.is_some()),
            ("all", self.all.is_some()),
        ]
        .into_iter()
        .filter_map(|(field, given)| given.then_some(field))
        .collect();
        if let [first, second, ..] = given.as_slice() {
            return Err(invalid(
                second,
                format!("give only one of url, tag or all ({first} was given too)"),
            ));
        }
        match (&self.url, &self.tag, self.all) {
            (Some(url), _, _) => Ok(PurgeTarget::Url(url.clone())),
            (_, Some(tag), _) => match check_tag(tag) {
                Ok(()) => Ok(PurgeTarget::Tag(tag.clone())),
                Err(reason) => Err(invalid("tag", reason)),
            },
            (_, _, Some(true)) => Ok(PurgeTarget::All),
            (_, _, Some(false)) => Err(invalid(
                "all",
                "must be true to purge everything of the app".to_owned(),
            )),
            (None, None, None) => Err(invalid(
                "url",
                "give one of url, tag or all: true (none was given)".to_owned(),
            )),
        }
    }
}

/// Checks a purge's tag: what an origin can put in `Cache-Tag` or `Surrogate-Key` as one tag.
fn check_tag(tag: &str) -> Result<(), String> {
    if tag.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if tag.len() > PURGE_TAG_MAX {
        return Err(format!(
            "is {} bytes long; at most {PURGE_TAG_MAX} are allowed (the edges keep no longer tag)",
            tag.len()
        ));
    }
    if let Some(c) = tag.chars().find(|c| !c.is_ascii_graphic() || *c == ',') {
        return Err(format!(
            "`{tag}` contains {c:?}: a tag is visible ASCII without spaces or commas (Cache-Tag \
             separates tags by commas, Surrogate-Key by spaces)"
        ));
    }
    Ok(())
}

impl TryFrom<PurgeRequest> for PurgeTarget {
    type Error = ValidationErrors;

    fn try_from(request: PurgeRequest) -> Result<Self, Self::Error> {
        request.target()
    }
}

impl From<PurgeTarget> for PurgeRequest {
    fn from(target: PurgeTarget) -> Self {
        match target {
            PurgeTarget::Url(url) => PurgeRequest {
                url: Some(url),
                ..PurgeRequest::default()
            },
            PurgeTarget::Tag(tag) => PurgeRequest {
                tag: Some(tag),
                ..PurgeRequest::default()
            },
            PurgeTarget::All => PurgeRequest {
                all: Some(true),
                ..PurgeRequest::default()
            },
        }
    }
}

/// A purge the store accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Purge {
    /// Its place among every purge of the installation: 1, 2, 3, … without gaps.
    pub sequence: u64,
    /// The org of the app.
    pub org: String,
    /// The app whose cached responses it removes.
    pub app: String,
    /// What it removes (of the responses stored for hosts the app's domains cover).
    #[cfg_attr(feature = "openapi", schema(value_type = PurgeRequest))]
    pub target: PurgeTarget,
    /// When it was accepted, seconds since the Unix epoch.
    pub created_at: i64,
}

/// How the edges took a purge by the time the API answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EdgeAcks {
    /// The edges connected to the global control plane when the purge was sent to them.
    pub connected: u32,
    /// How many of them applied it (the others apply it when they do, or purge everything
    /// they hold if they come back after it left the history).
    pub applied: u32,
}

/// The API's answer to a purge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PurgeAccepted {
    /// The purge, as stored.
    pub purge: Purge,
    /// The app's public domains: the edges remove only responses stored for hosts they cover.
    pub domains: Vec<String>,
    /// How the connected edges took it; absent when the control plane could not tell in time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edges: Option<EdgeAcks>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: &str) -> Result<PurgeTarget, ValidationErrors> {
        serde_json::from_str::<PurgeRequest>(json).unwrap().target()
    }

    fn field(errors: ValidationErrors) -> String {
        errors.errors[0].field.clone()
    }

    #[test]
    fn a_purge_names_exactly_one_of_url_tag_or_all() {
        assert_eq!(
            request(r#"{"url": "https://shop.example.com/a"}"#).unwrap(),
            PurgeTarget::Url("https://shop.example.com/a".into())
        );
        assert_eq!(
            request(r#"{"tag": "product-1"}"#).unwrap(),
            PurgeTarget::Tag("product-1".into())
        );
        assert_eq!(request(r#"{"all": true}"#).unwrap(), PurgeTarget::All);
        assert_eq!(field(request("{}").unwrap_err()), "url");
        assert_eq!(
            field(request(r#"{"url": "https://a.example.com/", "tag": "t"}"#).unwrap_err()),
            "tag"
        );
        assert_eq!(
            field(request(r#"{"tag": "t", "all": true}"#).unwrap_err()),
            "all"
        );
        assert_eq!(field(request(r#"{"all": false}"#).unwrap_err()), "all");
        assert!(serde_json::from_str::<PurgeRequest>(r#"{"tags": "t"}"#).is_err());
    }

    #[test]
    fn a_tag_is_what_an_origin_can_send_as_one_tag() {
        for bad in ["", "a b", "a,b", "é", &"t".repeat(PURGE_TAG_MAX + 1)] {
            let json = serde_json::json!({ "tag": bad }).to_string();
            assert_eq!(field(request(&json).unwrap_err()), "tag", "{bad:?}");
        }
        let longest = "t".repeat(PURGE_TAG_MAX);
        let json = serde_json::json!({ "tag": longest }).to_string();
        assert!(request(&json).is_ok());
    }

    #[test]
    fn a_target_shows_as_the_request_that_names_it() {
        for target in [
            PurgeTarget::Url("http://a.example.com/x".into()),
            PurgeTarget::Tag("t".into()),
            PurgeTarget::All,
        ] {
            let json = serde_json::to_string(&target).unwrap();
            assert_eq!(serde_json::from_str::<PurgeTarget>(&json).unwrap(), target);
        }
        assert_eq!(
            serde_json::to_string(&PurgeTarget::All).unwrap(),
            r#"{"all":true}"#
        );
    }
}
