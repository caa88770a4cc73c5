//! Durations written the way people write them: `500ms`, `10s`, `1m 30s`.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A [`Duration`] that serializes as a human-readable string (`"10s"`) and parses the forms
/// accepted by the `humantime` crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(
    feature = "openapi",
    derive(utoipa::ToSchema),
    schema(value_type = String, example = "10s")
)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// Ten seconds, the default check interval and grace period.
    pub fn ten_seconds() -> Self {
        HumanDuration(Duration::from_secs(10))
    }

    /// Two seconds, the default check timeout.
    pub fn two_seconds() -> Self {
        HumanDuration(Duration::from_secs(2))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(&text)
            .map(HumanDuration)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "`{text}` is not a duration ({e}); write e.g. \"500ms\", \"10s\" or \"1m\""
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_text() {
        let d: HumanDuration = serde_json::from_str("\"1m 30s\"").unwrap();
        assert_eq!(d.0, Duration::from_secs(90));
        assert_eq!(serde_json::to_string(&d).unwrap(), "\"1m 30s\"");
    }

    #[test]
    fn rejects_garbage_with_a_hint() {
        let err = serde_json::from_str::<HumanDuration>("\"soon\"").unwrap_err();
        assert!(err.to_string().contains("not a duration"), "{err}");
    }
}
