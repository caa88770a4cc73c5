//! The body of a logs answer: the events a [`crate::LogSource`] gives, as JSON lines, with the
//! history (what comes before `caught_up`) ordered by time and bounded, and heartbeats while a
//! follower waits.

use std::time::Duration;

use axum::body::{Body, Bytes};
use meridian_model::{LogEvent, LogLine, LogNotice, NoticeKind};
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio::time::Instant;

/// Most bytes of line text of a history the API orders; the newest are kept.
pub const HISTORY_BYTES: usize = 8 << 20;
/// How long the history waits for every region to send theirs; then what came is sent and
/// the rest follows as it comes.
const CATCH_UP_WAIT: Duration = Duration::from_secs(15);
/// How long a follower may wait without an event before a heartbeat is sent.
const HEARTBEAT: Duration = Duration::from_secs(15);
/// Encoded events waiting for the client: past this, reading from the regions pauses.
const BODY_QUEUE: usize = 16;

/// The body streaming `events` (history first, ordered by time; then, when `follow`, the rest
/// with heartbeats); `permit` is held until the body ends or the client goes.
pub fn ndjson(
    events: mpsc::Receiver<LogEvent>,
    follow: bool,
    permit: OwnedSemaphorePermit,
) -> Body {
    let (body, chunks) = mpsc::channel::<Result<Bytes, std::convert::Infallible>>(BODY_QUEUE);
    tokio::spawn(async move {
        let _permit = permit;
        let mut out = Out { body };
        run(events, follow, &mut out).await;
    });
    Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(chunks))
}

/// Where encoded events go.
struct Out {
    body: mpsc::Sender<Result<Bytes, std::convert::Infallible>>,
}

impl Out {
    /// Sends `event` as one line; `false` once the client is gone.
    async fn send(&mut self, event: &LogEvent) -> bool {
        let Ok(mut line) = serde_json::to_vec(event) else {
            return true;
        };
        line.push(b'\n');
        self.body.send(Ok(Bytes::from(line))).await.is_ok()
    }
}

/// The history's lines, newest kept within [`HISTORY_BYTES`].
#[derive(Default)]
struct History {
    lines: Vec<LogLine>,
    bytes: usize,
}

impl History {
    fn push(&mut self, line: LogLine) {
        self.bytes += line.text.len();
        self.lines.push(line);
    }

    /// The lines ordered by time (times are RFC 3339 with nanoseconds, in UTC: their text
    /// orders as they do), without the oldest beyond the bound; how many were left out.
    fn ordered(mut self) -> (Vec<LogLine>, usize) {
        self.lines.sort_by(|a, b| a.time.cmp(&b.time));
        let mut cut = 0;
        while self.bytes > HISTORY_BYTES && cut < self.lines.len() {
            self.bytes -= self.lines[cut].text.len();
            cut += 1;
        }
        self.lines.drain(..cut);
        (self.lines, cut)
    }
}

async fn run(mut events: mpsc::Receiver<LogEvent>, follow: bool, out: &mut Out) {
    let mut history = History::default();
    let caught_up_by = Instant::now() + CATCH_UP_WAIT;
    let mut ended = false;
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            () = tokio::time::sleep_until(caught_up_by), if follow => None,
            () = out.body.closed() => return,
        };
        match event {
            Some(LogEvent::Line(line)) => {
                history.push(line);
                // Never more than twice the bound in memory: order and cut as it grows.
                if history.bytes > 2 * HISTORY_BYTES {
                    let (lines, cut) = std::mem::take(&mut history).ordered();
                    history = History::default();
                    lines.into_iter().for_each(|l| history.push(l));
                    if cut > 0 && !out.send(&truncated(cut)).await {
                        return;
                    }
                }
            }
            Some(LogEvent::Notice(notice)) => {
                if !out.send(&LogEvent::Notice(notice)).await {
                    return;
                }
            }
            Some(LogEvent::Heartbeat) => {}
            Some(LogEvent::CaughtUp) => break,
            None => {
                ended = true;
                break;
            }
        }
    }
    let (lines, cut) = history.ordered();
    if cut > 0 && !out.send(&truncated(cut)).await {
        return;
    }
    for line in lines {
        if !out.send(&LogEvent::Line(line)).await {
            return;
        }
    }
    if !follow || (ended && events.is_closed()) {
        return;
    }
    if !out.send(&LogEvent::CaughtUp).await {
        return;
    }
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            () = tokio::time::sleep(HEARTBEAT) => Some(LogEvent::Heartbeat),
            () = out.body.closed() => return,
        };
        let Some(event) = event else { return };
        if matches!(event, LogEvent::CaughtUp) {
            continue;
        }
        if !out.send(&event).await {
            return;
        }
    }
}

/// The notice that `cut` older lines were left out.
fn truncated(cut: usize) -> LogEvent {
    LogEvent::Notice(LogNotice {
        kind: NoticeKind::Truncated,
        region: None,
        node: None,
        instance: None,
        text: format!(
            "{cut} older lines left out: an answer holds at most {} MiB of lines; narrow it \
             with since, grep, tail or region",
            HISTORY_BYTES >> 20
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(region: &str, time: &str, text: &str) -> LogEvent {
        LogEvent::Line(LogLine {
            region: region.into(),
            node: "n".into(),
            instance: "web-0".into(),
            stream: "stdout".into(),
            time: time.into(),
            text: text.into(),
            partial: false,
        })
    }

    /// The events the body holds once `events` are given and the source ends.
    async fn body_of(events: Vec<LogEvent>, follow: bool) -> Vec<serde_json::Value> {
        let (tx, rx) = mpsc::channel(64);
        for event in events {
            tx.send(event).await.unwrap();
        }
        drop(tx);
        let permit = std::sync::Arc::new(tokio::sync::Semaphore::new(1))
            .try_acquire_owned()
            .unwrap();
        let body = ndjson(rx, follow, permit);
        let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        bytes
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn the_history_is_ordered_by_time_notices_first_and_new_lines_follow_as_they_come() {
        let events = vec![
            line("fra", "2024-05-01T12:00:02.000000000Z", "fra 2"),
            line("sin", "2024-05-01T12:00:01.000000000Z", "sin 1"),
            LogEvent::Notice(LogNotice {
                kind: NoticeKind::Missing,
                region: Some("lon".into()),
                node: None,
                instance: None,
                text: "region lon did not answer".into(),
            }),
            line("fra", "2024-05-01T12:00:03.000000000Z", "fra 3"),
            LogEvent::CaughtUp,
            line("sin", "2024-05-01T12:00:05.000000000Z", "sin 5"),
            line("fra", "2024-05-01T12:00:04.000000000Z", "fra 4"),
        ];
        let got = body_of(events, true).await;
        let shown: Vec<String> = got
            .iter()
            .map(|e| match e["type"].as_str().unwrap() {
                "line" => e["text"].as_str().unwrap().to_owned(),
                other => other.to_owned(),
            })
            .collect();
        assert_eq!(
            shown,
            [
                "notice",
                "sin 1",
                "fra 2",
                "fra 3",
                "caught_up",
                "sin 5",
                "fra 4"
            ]
        );
    }

    #[tokio::test]
    async fn without_follow_the_answer_ends_with_the_history() {
        let events = vec![
            line("fra", "2024-05-01T12:00:02.000000000Z", "b"),
            line("fra", "2024-05-01T12:00:01.000000000Z", "a"),
        ];
        let got = body_of(events, false).await;
        let texts: Vec<&str> = got.iter().map(|e| e["text"].as_str().unwrap()).collect();
        assert_eq!(texts, ["a", "b"]);
    }

    #[test]
    fn a_history_over_its_bound_keeps_the_newest() {
        let mut history = History::default();
        let big = "x".repeat(HISTORY_BYTES / 2);
        for (second, text) in [(3, &big), (1, &big), (2, &big)] {
            if let LogEvent::Line(line) = line(
                "fra",
                &format!("2024-05-01T12:00:0{second}.000000000Z"),
                text,
            ) {
                history.push(line);
            }
        }
        let (lines, cut) = history.ordered();
        assert_eq!(cut, 1);
        let times: Vec<&str> = lines.iter().map(|l| &l.time[17..19]).collect();
        assert_eq!(times, ["02", "03"]);
    }
}
