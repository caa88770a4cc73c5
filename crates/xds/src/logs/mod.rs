//! Instance output on demand, through the same mutual-TLS ports as the rest of Meridian's gRPC:
//! the service `meridian.v1.Logs`, whose one method ([`OFFER_PATH`]) is called *upward*, by
//! whoever holds the logs (an agent, at its regional control plane; a regional control plane,
//! at the global one), and answered *downward*: the caller offers to answer one query, the
//! server sends the query down the call when someone asks (an API client, another region), and
//! the answers come up the same call. Regions and nodes dial out; nothing dials into them.
//!
//! Each query has a call of its own, so HTTP/2 flow control applies to it alone: a slow reader
//! at the top slows its own query's answers down to the agent, which then reads its files more
//! slowly, and holds nothing more in memory. The server ends the call (dropping the [`Offer`])
//! to cancel the query.
//!
//! - [`Offers`] and [`OfferService`]: the server side, the open offers of each peer;
//! - [`answer_queries`]: the calling side, a few offers always open;
//! - [`fan_in`]: one query to many peers, their answers merged.

mod answer;
mod fan_in;
mod offers;

pub use answer::{answer_queries, AnswerOptions, Answering};
pub use fan_in::{fan_in, Branch};
pub use offers::{Answers, Authorize, Offer, OfferService, Offers};

/// The gRPC path of the offer method: `rpc Offer(stream LogAnswer) returns (stream LogQuery)`.
pub const OFFER_PATH: &str = "/meridian.v1.Logs/Offer";

/// Largest message of the log service, in bytes (an answer holds at most
/// [`MAX_ANSWER_BYTES`] of text, plus its fields).
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// Most bytes of line text one [`LogAnswer`] carries.
pub const MAX_ANSWER_BYTES: usize = 256 * 1024;

/// Most lines one [`LogAnswer`] carries.
pub const MAX_ANSWER_LINES: usize = 1024;

/// A query of a service's instance output.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LogQuery {
    /// The service's org.
    #[prost(string, tag = "1")]
    pub org: String,
    /// Its app.
    #[prost(string, tag = "2")]
    pub app: String,
    /// The service.
    #[prost(string, tag = "3")]
    pub service: String,
    /// Lines written before this time (Unix nanoseconds) are left out; 0: none are.
    #[prost(int64, tag = "4")]
    pub since_unix_nanos: i64,
    /// The last lines of each instance to send (before following).
    #[prost(uint32, tag = "5")]
    pub tail: u32,
    /// A regular expression lines must match; empty: every line.
    #[prost(string, tag = "6")]
    pub grep: String,
    /// Whether to keep sending new lines once the history is sent.
    #[prost(bool, tag = "7")]
    pub follow: bool,
}

/// Part of an answer to a [`LogQuery`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct LogAnswer {
    /// Lines, oldest first within each instance and stream.
    #[prost(message, repeated, tag = "1")]
    pub lines: Vec<LogRecord>,
    /// What the answerer could not do (a node that did not answer, lines dropped).
    #[prost(message, repeated, tag = "2")]
    pub notices: Vec<LogNotice>,
    /// The history is sent: what follows is new output.
    #[prost(bool, tag = "3")]
    pub caught_up: bool,
}

/// One line of an instance's output.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LogRecord {
    /// The region (set by the regional control plane).
    #[prost(string, tag = "1")]
    pub region: String,
    /// The node (set by the regional control plane, from the agent's certificate).
    #[prost(string, tag = "2")]
    pub node: String,
    /// The instance.
    #[prost(string, tag = "3")]
    pub instance: String,
    /// `stdout` or `stderr`.
    #[prost(string, tag = "4")]
    pub stream: String,
    /// When the agent read it, Unix nanoseconds.
    #[prost(int64, tag = "5")]
    pub time_unix_nanos: i64,
    /// The line, without its end (invalid UTF-8 replaced).
    #[prost(string, tag = "6")]
    pub text: String,
    /// Part of a longer line, which goes on in the next record.
    #[prost(bool, tag = "7")]
    pub partial: bool,
}

/// Something an answer could not hold: a peer that did not answer, lines dropped.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LogNotice {
    /// The region concerned, if one.
    #[prost(string, tag = "1")]
    pub region: String,
    /// The node concerned, if one.
    #[prost(string, tag = "2")]
    pub node: String,
    /// The instance concerned, if one.
    #[prost(string, tag = "3")]
    pub instance: String,
    /// [`meridian_model::NoticeKind`] as text: `missing`, `dropped`, `truncated`, `busy`.
    #[prost(string, tag = "4")]
    pub kind: String,
    /// What happened, for a person.
    #[prost(string, tag = "5")]
    pub text: String,
}

impl LogAnswer {
    /// An answer holding one notice.
    pub fn notice(notice: LogNotice) -> LogAnswer {
        LogAnswer {
            notices: vec![notice],
            ..LogAnswer::default()
        }
    }

    /// Whether it holds nothing but maybe `caught_up`.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty() && self.notices.is_empty()
    }
}

impl LogNotice {
    /// A notice of `kind` saying `text`.
    pub fn new(kind: &str, text: impl Into<String>) -> LogNotice {
        LogNotice {
            kind: kind.to_owned(),
            text: text.into(),
            ..LogNotice::default()
        }
    }
}
