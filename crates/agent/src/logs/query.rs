//! Answering a query of a service's output from the files of its instances on this node: the
//! history of every instance merged by time, then (when following) what they write next.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian_model::logs::{NoticeKind, MAX_TAIL};
use meridian_xds::logs::{
    Answering, LogAnswer, LogNotice, LogQuery, LogRecord, MAX_ANSWER_BYTES, MAX_ANSWER_LINES,
};
use regex::Regex;
use tokio::sync::mpsc;

use super::format::Stream;
use super::read::{history, Filter, Follower, Line};

/// Most bytes of line text one query's history holds (the newest are kept).
pub const HISTORY_BYTES: usize = 4 << 20;
/// How often a follower looks for new lines.
const FOLLOW_EVERY: Duration = Duration::from_millis(250);
/// How often a follower looks for new instances of the service.
const RESCAN_EVERY: Duration = Duration::from_secs(2);

/// A query of the output of a service's instances on this node.
pub struct LocalQuery {
    /// The org; `None`: every org's service of that app and name.
    pub org: Option<String>,
    /// The app.
    pub app: String,
    /// The service.
    pub service: String,
    /// Lines written before this (Unix nanoseconds) are left out; 0: none are.
    pub since_nanos: i64,
    /// The last lines of each instance to send before following.
    pub tail: usize,
    /// A pattern lines must match.
    pub grep: Option<Regex>,
    /// Whether to follow.
    pub follow: bool,
}

impl LocalQuery {
    /// The query a control plane sent, checked: names must be DNS labels, the tail at most
    /// [`MAX_TAIL`], the pattern a bounded regular expression.
    pub fn from_wire(query: LogQuery) -> Result<LocalQuery, String> {
        for (field, name) in [
            ("org", &query.org),
            ("app", &query.app),
            ("service", &query.service),
        ] {
            meridian_model::check_dns_label(name).map_err(|e| format!("{field}: {e}"))?;
        }
        if query.tail > MAX_TAIL {
            return Err(format!("tail: at most {MAX_TAIL}"));
        }
        let grep = match query.grep.as_str() {
            "" => None,
            pattern => {
                Some(meridian_model::compile_grep(pattern).map_err(|e| format!("grep: {e}"))?)
            }
        };
        Ok(LocalQuery {
            org: Some(query.org),
            app: query.app,
            service: query.service,
            since_nanos: query.since_unix_nanos,
            tail: query.tail as usize,
            grep,
            follow: query.follow,
        })
    }

    /// The instances of the service with logs under `state_dir`: each one's name (with its
    /// org when the query names none) and log directory.
    fn instances(&self, state_dir: &Path) -> Vec<(Arc<str>, PathBuf)> {
        let Ok(entries) = std::fs::read_dir(state_dir.join("logs")) else {
            return Vec::new();
        };
        let mut found = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            // `<org>.<app>.<service>-<n>`
            let mut parts = name.splitn(3, '.');
            let (Some(org), Some(app), Some(instance)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let Some((service, number)) = instance.rsplit_once('-') else {
                continue;
            };
            let numbered = !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit());
            let org_matches = self.org.as_deref().is_none_or(|o| o == org);
            if numbered && org_matches && app == self.app && service == self.service {
                let shown = match &self.org {
                    Some(_) => instance.to_owned(),
                    None => format!("{org}.{instance}"),
                };
                found.push((Arc::from(shown), entry.path()));
            }
        }
        found.sort();
        found
    }

    /// Whether the service has logs under `state_dir`.
    pub fn found(&self, state_dir: &Path) -> bool {
        !self.instances(state_dir).is_empty()
    }

    fn filter(&self) -> Filter<'_> {
        Filter {
            since_nanos: self.since_nanos,
            grep: self.grep.as_ref(),
        }
    }
}

/// A line with its instance and stream.
struct Tagged {
    instance: Arc<str>,
    stream: Stream,
    line: Line,
}

impl Tagged {
    fn record(self) -> LogRecord {
        LogRecord {
            instance: self.instance.to_string(),
            stream: self.stream.as_str().to_owned(),
            time_unix_nanos: self.line.time_nanos,
            text: self.line.text,
            partial: self.line.partial,
            ..LogRecord::default()
        }
    }
}

/// Groups records into answers of at most [`MAX_ANSWER_LINES`] lines and
/// [`MAX_ANSWER_BYTES`] of text, each handed to `send` (which says whether to go on).
struct Batches<'a> {
    answer: LogAnswer,
    bytes: usize,
    send: &'a mut dyn FnMut(LogAnswer) -> bool,
}

impl Batches<'_> {
    fn push(&mut self, record: LogRecord) -> bool {
        self.bytes += record.text.len();
        self.answer.lines.push(record);
        if self.answer.lines.len() >= MAX_ANSWER_LINES || self.bytes >= MAX_ANSWER_BYTES {
            return self.flush();
        }
        true
    }

    fn notice(&mut self, notice: LogNotice) -> bool {
        self.answer.notices.push(notice);
        true
    }

    /// Sends what is gathered, if anything (or `caught_up`).
    fn flush(&mut self) -> bool {
        if self.answer.is_empty() && !self.answer.caught_up {
            return true;
        }
        self.bytes = 0;
        (self.send)(std::mem::take(&mut self.answer))
    }
}

/// Answers `query` from the logs under `state_dir`: hands each answer to `send` (the history
/// of every instance merged by time, the newest [`HISTORY_BYTES`] of it, then `caught_up`),
/// then, when following, the lines written next, looking every quarter of a second for as
/// long as `alive` says and `send` takes them. Blocking.
pub fn answer_locally(
    state_dir: &Path,
    query: &LocalQuery,
    send: &mut dyn FnMut(LogAnswer) -> bool,
    alive: &dyn Fn() -> bool,
) {
    let mut out = Batches {
        answer: LogAnswer::default(),
        bytes: 0,
        send,
    };
    let filter = query.filter();
    let mut followers: BTreeMap<(Arc<str>, Stream), Follower> = BTreeMap::new();
    let mut merged: VecDeque<Tagged> = VecDeque::new();
    let mut cut = 0;
    for (instance, dir) in query.instances(state_dir) {
        for stream in Stream::BOTH {
            match history(&dir, stream, &filter, query.tail, HISTORY_BYTES) {
                Ok((tail, follower)) => {
                    cut += tail.cut;
                    let lines = tail.lines.into_iter().map(|line| Tagged {
                        instance: instance.clone(),
                        stream,
                        line,
                    });
                    cut += merge(&mut merged, lines.collect());
                    followers.insert((instance.clone(), stream), follower);
                }
                Err(e) => {
                    let notice = LogNotice {
                        instance: instance.to_string(),
                        ..LogNotice::new(
                            NoticeKind::Missing.as_str(),
                            format!("its {} could not be read: {e}", stream.as_str()),
                        )
                    };
                    out.notice(notice);
                }
            }
        }
    }
    if cut > 0 {
        out.notice(LogNotice::new(
            NoticeKind::Truncated.as_str(),
            format!(
                "{cut} older lines left out: an answer holds at most {} MiB of lines from a node; \
                 narrow it with since, grep or tail",
                HISTORY_BYTES >> 20
            ),
        ));
    }
    for tagged in merged {
        if !out.push(tagged.record()) {
            return;
        }
    }
    out.answer.caught_up = true;
    if !out.flush() || !query.follow {
        return;
    }
    follow(state_dir, query, &mut followers, &mut out, alive);
}

/// Merges `lines` (oldest first) into `merged` by time, keeping the newest
/// [`HISTORY_BYTES`] of text; how many were dropped for it.
fn merge(merged: &mut VecDeque<Tagged>, lines: Vec<Tagged>) -> usize {
    let old = std::mem::take(merged);
    let (mut a, mut b) = (old.into_iter().peekable(), lines.into_iter().peekable());
    loop {
        let take_a = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) => x.line.time_nanos <= y.line.time_nanos,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        let next = if take_a { a.next() } else { b.next() };
        merged.extend(next);
    }
    let mut bytes: usize = merged.iter().map(|t| t.line.text.len()).sum();
    let mut dropped = 0;
    while bytes > HISTORY_BYTES {
        let Some(old) = merged.pop_front() else { break };
        bytes -= old.line.text.len();
        dropped += 1;
    }
    dropped
}

/// Sends what the instances write next until `alive` or `out` says stop; instances that
/// appear are followed from their first line.
fn follow(
    state_dir: &Path,
    query: &LocalQuery,
    followers: &mut BTreeMap<(Arc<str>, Stream), Follower>,
    out: &mut Batches<'_>,
    alive: &dyn Fn() -> bool,
) {
    let filter = query.filter();
    let mut scanned = Instant::now();
    while alive() {
        if scanned.elapsed() >= RESCAN_EVERY {
            scanned = Instant::now();
            for (instance, dir) in query.instances(state_dir) {
                for stream in Stream::BOTH {
                    followers
                        .entry((instance.clone(), stream))
                        .or_insert_with(|| Follower::new(&dir, stream));
                }
            }
        }
        for ((instance, stream), follower) in followers.iter_mut() {
            let mut go_on = true;
            let read = follower.read_new(&filter, &mut |line| {
                let tagged = Tagged {
                    instance: instance.clone(),
                    stream: *stream,
                    line,
                };
                go_on = out.push(tagged.record());
                go_on
            });
            let problem = match read {
                Ok(false) => None,
                Ok(true) => Some((
                    NoticeKind::Dropped,
                    "lines may be missing: this follower fell behind the rotation of its log"
                        .to_owned(),
                )),
                Err(e) => Some((NoticeKind::Missing, format!("reading its log failed: {e}"))),
            };
            if let Some((kind, text)) = problem {
                go_on &= out.notice(LogNotice {
                    instance: instance.to_string(),
                    ..LogNotice::new(kind.as_str(), format!("{}: {text}", stream.as_str()))
                });
            }
            if !go_on {
                return;
            }
        }
        if !out.flush() {
            return;
        }
        std::thread::sleep(FOLLOW_EVERY);
    }
}

/// Answers the queries a regional control plane sends this agent, from its logs.
#[derive(Clone)]
pub struct AgentLogs {
    state_dir: Arc<Path>,
}

impl AgentLogs {
    /// Answers from the logs under `state_dir`.
    pub fn new(state_dir: &Path) -> AgentLogs {
        AgentLogs {
            state_dir: Arc::from(state_dir),
        }
    }
}

impl Answering for AgentLogs {
    async fn answer(&self, query: LogQuery, answers: mpsc::Sender<LogAnswer>) {
        let query = match LocalQuery::from_wire(query) {
            Ok(query) => query,
            Err(e) => {
                let refused = LogNotice::new(
                    NoticeKind::Missing.as_str(),
                    format!("the query was refused: {e}"),
                );
                let _ = answers.send(LogAnswer::notice(refused)).await;
                return;
            }
        };
        let state_dir = self.state_dir.clone();
        // Reading files blocks: a thread of the blocking pool, which stops when the answer
        // is complete or nobody reads it any more.
        let _ = tokio::task::spawn_blocking(move || {
            let alive = || !answers.is_closed();
            let mut send = |answer| answers.blocking_send(answer).is_ok();
            answer_locally(&state_dir, &query, &mut send, &alive);
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::super::format::{encode, record_time};
    use super::*;

    fn write(dir: &Path, instance: &str, stream: Stream, lines: &[(i64, &str)]) {
        let dir = dir.join("logs").join(instance);
        std::fs::create_dir_all(&dir).unwrap();
        let mut out = Vec::new();
        for (nanos, text) in lines {
            let time = std::time::UNIX_EPOCH + Duration::from_nanos(*nanos as u64);
            encode(&mut out, &record_time(time), stream, false, text.as_bytes());
        }
        use std::io::Write;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(stream.file_name()))
            .unwrap()
            .write_all(&out)
            .unwrap();
    }

    fn query(grep: Option<&str>) -> LocalQuery {
        LocalQuery {
            org: Some("acme".into()),
            app: "shop".into(),
            service: "web".into(),
            since_nanos: 0,
            tail: 100,
            grep: grep.map(|g| Regex::new(g).unwrap()),
            follow: false,
        }
    }

    /// `instance stream text` of each line answered, and whether caught_up came last.
    fn answered(state: &Path, query: &LocalQuery) -> (Vec<String>, bool) {
        let mut lines = Vec::new();
        let mut caught_up = false;
        answer_locally(
            state,
            query,
            &mut |answer| {
                assert!(!caught_up, "nothing after caught_up");
                lines.extend(
                    answer
                        .lines
                        .into_iter()
                        .map(|r| format!("{} {} {}", r.instance, r.stream, r.text)),
                );
                caught_up = answer.caught_up;
                true
            },
            &|| true,
        );
        (lines, caught_up)
    }

    #[test]
    fn the_services_instances_are_merged_by_time_and_others_left_out() {
        let state = tempfile::tempdir().unwrap();
        write(
            state.path(),
            "acme.shop.web-0",
            Stream::Stdout,
            &[(1, "a"), (4, "d GET")],
        );
        write(
            state.path(),
            "acme.shop.web-0",
            Stream::Stderr,
            &[(3, "c GET")],
        );
        write(state.path(), "acme.shop.web-1", Stream::Stdout, &[(2, "b")]);
        write(
            state.path(),
            "acme.shop.web-api-0",
            Stream::Stdout,
            &[(2, "other service")],
        );
        write(
            state.path(),
            "other.shop.web-0",
            Stream::Stdout,
            &[(2, "other org")],
        );
        let (lines, caught_up) = answered(state.path(), &query(None));
        assert_eq!(
            lines,
            [
                "web-0 stdout a",
                "web-1 stdout b",
                "web-0 stderr c GET",
                "web-0 stdout d GET"
            ]
        );
        assert!(caught_up);
        let (lines, _) = answered(state.path(), &query(Some("GET")));
        assert_eq!(lines, ["web-0 stderr c GET", "web-0 stdout d GET"]);
    }

    #[test]
    fn a_bad_query_from_the_wire_is_refused_with_its_field() {
        let bad = LogQuery {
            org: "acme".into(),
            app: "shop".into(),
            service: "web".into(),
            grep: "(".into(),
            ..LogQuery::default()
        };
        let error = LocalQuery::from_wire(bad.clone()).err().unwrap();
        assert!(error.starts_with("grep:"), "{error}");
        let error = LocalQuery::from_wire(LogQuery {
            org: "../etc".into(),
            grep: String::new(),
            ..bad
        })
        .err()
        .unwrap();
        assert!(error.starts_with("org:"), "{error}");
    }
}
