//! A long-lived WebSocket to meridian-hello's `/ws` echo (through a gateway or an edge), kept
//! echoing in the background until its connection closes; and the check that a drain closed it
//! at its deadline: not before the definition's `deploy.drain_timeout` had passed since its
//! instance began draining (by the agents' logs), with every echo before answered.

use std::time::{Duration, SystemTime};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::{Error, Message};

use super::Agent;

/// How long [`Held::ended`] and [`closed_at_drain_deadline`] wait.
const DEADLINE: Duration = Duration::from_secs(60);
/// How long an echo may take.
const ECHO_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a word is sent.
const PACE: Duration = Duration::from_millis(50);

type Socket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// A WebSocket that a background task keeps echoing, a word every 50 ms, until its connection
/// closes or an echo fails.
pub struct Held {
    task: tokio::task::JoinHandle<Ended>,
}

/// How a [`Held`] WebSocket ended.
#[derive(Debug)]
pub struct Ended {
    /// How many words it echoed.
    pub words: u64,
    /// When it last echoed one.
    pub last_echo: SystemTime,
    /// When its connection was seen closed (a Close frame, the end of the stream, a reset).
    pub closed_at: SystemTime,
    /// What went wrong with an echo, if one did (then it ended there, not closed): a wrong
    /// answer, or none within 10 s.
    pub failure: Option<String>,
}

impl Held {
    /// Opens a WebSocket to `host`'s `/ws` through `address` (HTTP/1.1 `Upgrade`), checks that
    /// it echoes, and keeps it echoing in the background.
    pub async fn open(address: &str, host: &str) -> Held {
        let stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let request = super::websocket_request(&format!("ws://{host}/ws"), host);
        let (mut socket, response) = tokio_tungstenite::client_async(request, stream)
            .await
            .unwrap();
        assert_eq!(response.status(), 101);
        let first = echo(&mut socket, "first").await;
        assert!(matches!(first, Seen::Echo), "the first echo: {first:?}");
        Held {
            task: tokio::spawn(keep_echoing(socket)),
        }
    }

    /// Whether it still echoes (its connection open, no echo failed).
    pub fn echoes(&self) -> bool {
        !self.task.is_finished()
    }

    /// Waits (at most a minute) until its connection closed or an echo failed; how it ended.
    pub async fn ended(self) -> Ended {
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("the WebSocket was never closed")
            .unwrap()
    }
}

/// What the socket gave: an echo, the end of its connection, or something else.
#[derive(Debug)]
enum Seen {
    Echo,
    Closed,
    Failed(String),
}

/// Sends `word` and waits for its echo.
async fn echo(socket: &mut Socket, word: &str) -> Seen {
    if socket.send(Message::text(word)).await.is_err() {
        return Seen::Closed;
    }
    let wanted = format!("echo: {word}");
    loop {
        let Ok(next) = tokio::time::timeout(ECHO_TIMEOUT, socket.next()).await else {
            return Seen::Failed(format!("no echo of `{word}` within {ECHO_TIMEOUT:?}"));
        };
        match next {
            Some(Ok(Message::Text(text))) if text.as_str() == wanted => return Seen::Echo,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            next => return closed_or_not(next, &format!("the echo of `{word}`")),
        }
    }
}

/// [`Seen::Closed`] if `next` (from the socket, instead of `wanted`) ends its connection;
/// otherwise [`Seen::Failed`].
fn closed_or_not(next: Option<Result<Message, Error>>, wanted: &str) -> Seen {
    match next {
        None
        | Some(Ok(Message::Close(_)))
        | Some(Err(
            Error::ConnectionClosed
            | Error::AlreadyClosed
            | Error::Io(_)
            | Error::Protocol(ProtocolError::ResetWithoutClosingHandshake),
        )) => Seen::Closed,
        Some(other) => Seen::Failed(format!("{other:?} instead of {wanted}")),
    }
}

/// Echoes a word every [`PACE`] on `socket`, watching it in between, until it closes or an
/// echo fails.
async fn keep_echoing(mut socket: Socket) -> Ended {
    let (mut words, mut last_echo) = (1, SystemTime::now());
    let mut pace = tokio::time::interval(PACE);
    let seen = loop {
        let between = tokio::select! {
            _ = pace.tick() => None,
            next = socket.next() => Some(next),
        };
        let seen = match between {
            Some(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Some(next) => closed_or_not(next, "nothing"),
            None => echo(&mut socket, &format!("word {words}")).await,
        };
        if !matches!(seen, Seen::Echo) {
            break seen;
        }
        words += 1;
        last_echo = SystemTime::now();
    };
    Ended {
        words,
        last_echo,
        closed_at: SystemTime::now(),
        failure: match seen {
            Seen::Failed(failure) => Some(failure),
            Seen::Echo | Seen::Closed => None,
        },
    }
}

/// Checks that the WebSocket that `ended` was closed by its instance's drain at the drain's
/// deadline, with every echo answered: of `instances` (run by `agents`), the one whose drain
/// closed connections at its deadline (the one nearest the close, should there be several)
/// began draining at least `drain_timeout` before the close, and the WebSocket echoed after
/// that. Waits (at most a minute) for the agents to log that deadline. Returns the instance
/// and how long after it began draining the WebSocket closed.
pub async fn closed_at_drain_deadline(
    ended: &Ended,
    agents: &[Agent],
    instances: &[&str],
    drain_timeout: Duration,
) -> (String, Duration) {
    assert_eq!(ended.failure, None, "after {} echoes", ended.words);
    let logs = || -> String { agents.iter().map(Agent::log).collect() };
    let end = std::time::Instant::now() + DEADLINE;
    let (instance, log) = loop {
        let log = logs();
        let at_deadline = instances.iter().filter_map(|instance| {
            let closed = logged(&log, "still open at the drain deadline", instance)?;
            Some((distance(closed, ended.closed_at), *instance))
        });
        if let Some((_, instance)) = at_deadline.min() {
            break (instance, log);
        }
        let stopped = instances
            .iter()
            .all(|instance| logged(&log, "stopping instance", instance).is_some());
        assert!(
            !stopped && std::time::Instant::now() < end,
            "no drain of {instances:?} closed a connection at its deadline, yet the WebSocket \
             closed after {} echoes:\n{log}",
            ended.words
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let draining = logged(&log, "draining instance", instance).unwrap();
    let open_for = ended.closed_at.duration_since(draining).unwrap_or_default();
    assert!(
        open_for >= drain_timeout,
        "{instance}'s WebSocket closed {open_for:?} after it began draining, before its \
         drain_timeout {drain_timeout:?}:\n{log}"
    );
    assert!(
        ended.last_echo > draining,
        "the WebSocket echoed nothing once {instance} began draining"
    );
    (instance.to_owned(), open_for)
}

/// How far apart `a` and `b` are.
fn distance(a: SystemTime, b: SystemTime) -> Duration {
    a.duration_since(b)
        .or_else(|_| b.duration_since(a))
        .unwrap_or_default()
}

/// When `log` (an agent's, one timestamped line an event) first said `what` about `instance`
/// (its field `instance=` naming it, possibly after its org and app).
fn logged(log: &str, what: &str, instance: &str) -> Option<SystemTime> {
    let about = |line: &str| {
        line.split_whitespace()
            .filter_map(|field| field.strip_prefix("instance="))
            .any(|name| name == instance || name.ends_with(&format!("/{instance}")))
    };
    let line = log.lines().find(|l| l.contains(what) && about(l))?;
    let stamp = line.split_whitespace().next()?;
    Some(humantime::parse_rfc3339(stamp).unwrap())
}
