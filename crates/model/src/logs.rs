//! Instance output as the logs API serves it (`GET …/services/{service}/logs`): the query's
//! parameters and limits, and the events of its answer, one JSON object per line.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::ValidationErrors;

/// Longest line an agent keeps as one record, in bytes: a longer line is kept (and sent) as
/// several records, each but the last marked `partial`.
pub const MAX_LINE_BYTES: usize = 16 * 1024;
/// Most lines of each instance a query asks for before following.
pub const MAX_TAIL: u32 = 10_000;
/// The lines of each instance a query gets when it asks for no number and no `since`.
pub const DEFAULT_TAIL: u32 = 100;
/// Longest `grep` pattern, in bytes.
pub const MAX_GREP_BYTES: usize = 256;
/// Most memory a compiled `grep` pattern may take, in bytes.
const GREP_SIZE_LIMIT: usize = 1 << 20;

/// A query of a service's output, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRequest {
    /// Lines written before this are left out.
    pub since: Option<SystemTime>,
    /// The last lines of each instance before following (at most [`MAX_TAIL`]).
    pub tail: u32,
    /// A regular expression lines must match.
    pub grep: Option<String>,
    /// Whether new lines follow the history, until the client goes.
    pub follow: bool,
    /// Only this region (else every region of the service).
    pub region: Option<String>,
}

/// The query's parameters as given (`since`: a duration back from `now`, such as `10m`, or
/// an RFC 3339 time; `tail`: a number; `grep`: a regular expression).
#[derive(Debug, Default, Clone)]
pub struct LogParams<'a> {
    /// `since`.
    pub since: Option<&'a str>,
    /// `tail`.
    pub tail: Option<u32>,
    /// `grep`.
    pub grep: Option<&'a str>,
    /// `follow`.
    pub follow: bool,
    /// `region`.
    pub region: Option<&'a str>,
}

impl LogRequest {
    /// Checks `params`, reading durations back from `now`; every problem names its field.
    /// Without `tail`, the last [`DEFAULT_TAIL`] lines, or every line since `since` (up to
    /// [`MAX_TAIL`]).
    pub fn parse(params: &LogParams<'_>, now: SystemTime) -> Result<LogRequest, ValidationErrors> {
        let mut errors = ValidationErrors::default();
        let since = params.since.and_then(|text| match parse_since(text, now) {
            Ok(since) => Some(since),
            Err(e) => {
                errors.push("since", e);
                None
            }
        });
        let tail = match params.tail {
            Some(tail) if tail > MAX_TAIL => {
                errors.push("tail", format!("at most {MAX_TAIL} lines"));
                0
            }
            Some(tail) => tail,
            None if params.since.is_some() => MAX_TAIL,
            None => DEFAULT_TAIL,
        };
        let grep = params.grep.filter(|g| !g.is_empty());
        if let Some(pattern) = grep {
            if let Err(e) = compile_grep(pattern) {
                errors.push("grep", e);
            }
        }
        if let Some(region) = params.region {
            if let Err(e) = crate::check_dns_label(region) {
                errors.push("region", e.to_string());
            }
        }
        errors.into_result()?;
        Ok(LogRequest {
            since,
            tail,
            grep: grep.map(str::to_owned),
            follow: params.follow,
            region: params.region.map(str::to_owned),
        })
    }
}

/// `text` as a point in time: a duration back from `now` (`10m`, `1h 30m`) or an RFC 3339
/// time (`2024-05-01T12:00:00Z`).
pub fn parse_since(text: &str, now: SystemTime) -> Result<SystemTime, String> {
    if let Ok(back) = humantime::parse_duration(text) {
        return Ok(now.checked_sub(back).unwrap_or(UNIX_EPOCH));
    }
    humantime::parse_rfc3339_weak(text).map_err(|_| {
        format!("`{text}` is neither a duration (10m, 1h) nor a time (2024-05-01T12:00:00Z)")
    })
}

/// Compiles a `grep` pattern (Rust's regular expressions: linear time in the line, whatever the
/// pattern), at most [`MAX_GREP_BYTES`] long and of bounded size.
pub fn compile_grep(pattern: &str) -> Result<regex::Regex, String> {
    if pattern.len() > MAX_GREP_BYTES {
        return Err(format!("at most {MAX_GREP_BYTES} bytes"));
    }
    regex::RegexBuilder::new(pattern)
        .size_limit(GREP_SIZE_LIMIT)
        .build()
        .map_err(|e| format!("not a regular expression: {e}"))
}

/// Unix nanoseconds of `time` (0 before 1970, saturated after 2262).
pub fn unix_nanos(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// `nanos` after 1970 as an RFC 3339 time with nanoseconds (`2024-05-01T12:00:00.123456789Z`).
pub fn format_unix_nanos(nanos: i64) -> String {
    let time = UNIX_EPOCH + Duration::from_nanos(u64::try_from(nanos).unwrap_or(0));
    humantime::format_rfc3339_nanos(time).to_string()
}

/// One event of a log stream: a line of JSON of `application/x-ndjson`, told apart by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LogEvent {
    /// A line an instance wrote.
    Line(LogLine),
    /// Something the answer lacks: a region or node that did not answer, lines dropped.
    Notice(LogNotice),
    /// The history is complete; the lines that follow are new (`follow` only).
    CaughtUp,
    /// Nothing new for a while; the stream is alive (`follow` only).
    Heartbeat,
}

/// A line an instance wrote, and where it comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LogLine {
    /// The region.
    pub region: String,
    /// The node.
    pub node: String,
    /// The instance.
    pub instance: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// When its agent read it, RFC 3339 with nanoseconds.
    pub time: String,
    /// The line, without its end; invalid UTF-8 replaced by U+FFFD.
    pub text: String,
    /// Part of a line longer than the agents keep in one record; it goes on in the next line
    /// of the same instance and stream.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub partial: bool,
}

/// What an answer lacks, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LogNotice {
    /// What kind of lack.
    pub kind: NoticeKind,
    /// The region concerned, if one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// The node concerned, if one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The instance concerned, if one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// What happened, for a person.
    pub text: String,
}

/// The kinds of [`LogNotice`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum NoticeKind {
    /// A region or node did not answer: its lines are missing.
    Missing,
    /// Lines were lost: a follower fell behind its instance's log rotation.
    Dropped,
    /// More lines matched than one answer holds: the oldest are left out.
    Truncated,
}

impl NoticeKind {
    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            NoticeKind::Missing => "missing",
            NoticeKind::Dropped => "dropped",
            NoticeKind::Truncated => "truncated",
        }
    }

    /// The kind named `name` (an unknown name is `missing`: something is).
    pub fn parse(name: &str) -> NoticeKind {
        match name {
            "dropped" => NoticeKind::Dropped,
            "truncated" => NoticeKind::Truncated,
            _ => NoticeKind::Missing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    #[test]
    fn since_is_a_duration_back_or_a_time_and_tail_defaults_by_it() {
        let back = LogParams {
            since: Some("10m"),
            ..LogParams::default()
        };
        let request = LogRequest::parse(&back, now()).unwrap();
        assert_eq!(request.since, Some(now() - Duration::from_secs(600)));
        assert_eq!(request.tail, MAX_TAIL);
        let at = LogParams {
            since: Some("2023-11-14T22:00:00Z"),
            tail: Some(5),
            ..LogParams::default()
        };
        let request = LogRequest::parse(&at, now()).unwrap();
        assert_eq!(
            request.since,
            Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000 - 800))
        );
        assert_eq!(request.tail, 5);
        let plain = LogRequest::parse(&LogParams::default(), now()).unwrap();
        assert_eq!((plain.since, plain.tail), (None, DEFAULT_TAIL));
    }

    #[test]
    fn every_bad_parameter_is_named() {
        let bad = LogParams {
            since: Some("yesterday"),
            tail: Some(MAX_TAIL + 1),
            grep: Some("(unclosed"),
            region: Some("Not_A_Label"),
            follow: true,
        };
        let errors = LogRequest::parse(&bad, now()).unwrap_err();
        let fields: Vec<&str> = errors.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["since", "tail", "grep", "region"], "{errors}");
        let long = "a".repeat(MAX_GREP_BYTES + 1);
        assert!(compile_grep(&long).unwrap_err().contains("at most"));
    }

    #[test]
    fn events_are_tagged_json_objects() {
        let line = LogEvent::Line(LogLine {
            region: "fra".into(),
            node: "one".into(),
            instance: "web-0".into(),
            stream: "stdout".into(),
            time: format_unix_nanos(1_700_000_000_123_456_789),
            text: "hello".into(),
            partial: false,
        });
        let json = serde_json::to_value(&line).unwrap();
        assert_eq!(json["type"], "line");
        assert_eq!(json["time"], "2023-11-14T22:13:20.123456789Z");
        assert!(json.get("partial").is_none());
        let caught_up = serde_json::to_string(&LogEvent::CaughtUp).unwrap();
        assert_eq!(caught_up, r#"{"type":"caught_up"}"#);
        let notice = LogEvent::Notice(LogNotice {
            kind: NoticeKind::Missing,
            region: Some("lon".into()),
            node: None,
            instance: None,
            text: "region lon did not answer".into(),
        });
        let back: LogEvent =
            serde_json::from_value(serde_json::to_value(&notice).unwrap()).unwrap();
        assert_eq!(back, notice);
    }
}
