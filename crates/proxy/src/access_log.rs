//! Access logs: one JSON object per request the proxy answered (the schema is in
//! `docs/observability.md`), written by a thread of its own. The request path formats its
//! line and hands it over a bounded queue without waiting: a line that finds the queue full
//! (the disk or the pipe is slower than the requests) is dropped and counted
//! (`meridian_proxy_access_log_dropped_lines_total`), so that logging never slows or blocks a
//! request. Off, it costs the request path one relaxed atomic load.

use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use http::{Method, Request, Response, Uri, Version};
use prometheus_client::metrics::counter::Counter;
use serde::Serialize;

use crate::answers::ERROR_HEADER;
use crate::body::ProxyBody;
use crate::forward::request_host;
use crate::peer::Peer;

/// Lines waiting for the writer at most; more are dropped.
const QUEUE_LINES: usize = 16 * 1024;

/// Where an access log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    /// Standard output.
    Stdout,
    /// A file, appended to (made if missing).
    File(PathBuf),
}

impl AccessLogTarget {
    /// `-` is standard output, anything else a file.
    pub fn parse(text: &str) -> AccessLogTarget {
        match text {
            "-" => AccessLogTarget::Stdout,
            path => AccessLogTarget::File(PathBuf::from(path)),
        }
    }
}

impl std::fmt::Display for AccessLogTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AccessLogTarget::Stdout => f.write_str("standard output"),
            AccessLogTarget::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// What every event of a process's access log says of who wrote it.
#[derive(Debug, Clone, Serialize)]
pub struct AccessLogSource {
    /// `edge`, `gateway`, `node-proxy` or `proxy`.
    pub component: String,
    /// The edge's location, the gateway's node id, the agent's node, the proxy's node id.
    pub node: String,
    /// The region, for gateways and node proxies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

/// The access log's counters.
#[derive(Debug, Clone, Default)]
pub struct AccessLogCounters {
    /// Lines handed to the writer.
    pub lines: Counter,
    /// Lines dropped: the queue was full, or writing failed.
    pub dropped: Counter,
}

/// A process's access log: a queue to its writer thread.
pub struct AccessLog {
    queue: SyncSender<Vec<u8>>,
    source: AccessLogSource,
    counters: AccessLogCounters,
}

impl AccessLog {
    /// An access log of `source` written to `target` (a file is opened now, so that a bad
    /// path is said at start), counted in `counters`.
    pub fn open(
        target: &AccessLogTarget,
        source: AccessLogSource,
        counters: AccessLogCounters,
    ) -> io::Result<AccessLog> {
        let writer: Box<dyn Write + Send> = match target {
            AccessLogTarget::Stdout => Box::new(io::stdout()),
            AccessLogTarget::File(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
        };
        AccessLog::with_writer(writer, QUEUE_LINES, source, counters)
    }

    /// An access log written to `writer` by a thread of its own, at most `queue` lines waiting.
    fn with_writer(
        writer: Box<dyn Write + Send>,
        queue: usize,
        source: AccessLogSource,
        counters: AccessLogCounters,
    ) -> io::Result<AccessLog> {
        let (sender, lines) = sync_channel(queue);
        let dropped = counters.dropped.clone();
        std::thread::Builder::new()
            .name("access-log".to_owned())
            .spawn(move || write_lines(lines, writer, &dropped))?;
        Ok(AccessLog {
            queue: sender,
            source,
            counters,
        })
    }

    /// Hands the line of `event` to the writer, or drops it (counted) if the queue is full.
    fn record(&self, event: &AccessEvent<'_>) {
        let mut line = Vec::with_capacity(384);
        if serde_json::to_writer(&mut line, event).is_err() {
            self.counters.dropped.inc();
            return;
        }
        line.push(b'\n');
        match self.queue.try_send(line) {
            Ok(()) => {
                self.counters.lines.inc();
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.counters.dropped.inc();
            }
        }
    }
}

/// Writes each line as it comes, flushing whenever the queue is empty; counts what it could
/// not write (said once until writing works again).
fn write_lines(lines: Receiver<Vec<u8>>, writer: Box<dyn Write + Send>, dropped: &Counter) {
    let mut out = BufWriter::with_capacity(64 * 1024, writer);
    let mut failing = false;
    while let Ok(line) = lines.recv() {
        let mut written = out.write_all(&line);
        while let Ok(line) = lines.try_recv() {
            written = written.and_then(|()| out.write_all(&line));
        }
        let result = written.and_then(|()| out.flush());
        match result {
            Ok(()) => failing = false,
            Err(e) => {
                dropped.inc();
                if !failing {
                    tracing::warn!(error = %e, "writing the access log failed; lines are dropped");
                }
                failing = true;
            }
        }
    }
}

/// Whether the proxy logs requests, and where: swapped with the configuration, or on for good
/// once a component asked for it.
#[derive(Default)]
pub struct AccessLogSwitch {
    on: AtomicBool,
    /// Asked for by the component (`--access-log`): on whatever the configuration says.
    always: AtomicBool,
    log: OnceLock<AccessLog>,
}

impl AccessLogSwitch {
    /// The log, when requests are logged.
    #[inline]
    pub(crate) fn get(&self) -> Option<&AccessLog> {
        if self.on.load(Ordering::Relaxed) {
            self.log.get()
        } else {
            None
        }
    }

    /// Logs every request to `log` from now on; `false` if a log was set already.
    pub(crate) fn always(&self, log: AccessLog) -> bool {
        let set = self.log.set(log).is_ok();
        self.always.store(true, Ordering::Relaxed);
        self.on.store(true, Ordering::Relaxed);
        set
    }

    /// Follows a configuration's `access_log`: on, to the log set or else to standard output
    /// (opened with `open_stdout`); off, unless the component asked for it.
    pub(crate) fn configure(
        &self,
        wanted: bool,
        open_stdout: impl FnOnce() -> io::Result<AccessLog>,
    ) {
        if wanted && self.log.get().is_none() {
            match open_stdout() {
                Ok(log) => {
                    let _ = self.log.set(log);
                }
                Err(e) => tracing::warn!(error = %e, "cannot start the access log"),
            }
        }
        let on = wanted || self.always.load(Ordering::Relaxed);
        self.on.store(on, Ordering::Relaxed);
    }
}

/// What is kept of a request while it is served, when requests are logged.
pub(crate) struct Logged<'a> {
    log: &'a AccessLog,
    method: Method,
    uri: Uri,
    host: Box<str>,
    version: Version,
}

impl<'a> Logged<'a> {
    /// Keeps what `log` will need of `request`.
    pub(crate) fn new<B>(log: &'a AccessLog, request: &Request<B>) -> Logged<'a> {
        Logged {
            log,
            method: request.method().clone(),
            uri: request.uri().clone(),
            host: request_host(request).into(),
            version: request.version(),
        }
    }

    /// Logs the request, answered with `response` after `elapsed` by `route` of `listener`
    /// (to `cluster`) for `peer`.
    pub(crate) fn answered(
        self,
        (listener, route, cluster): (&str, &str, &str),
        peer: &Peer,
        response: &Response<ProxyBody>,
        elapsed: Duration,
    ) {
        let event = AccessEvent {
            time: humantime::format_rfc3339_micros(SystemTime::now()),
            source: &self.log.source,
            listener,
            route,
            cluster,
            client: peer.addr,
            peer: peer.identity().map(|(id, _)| id.to_string()),
            protocol: protocol(self.version),
            method: self.method.as_str(),
            host: &self.host,
            path: self.uri.path(),
            status: response.status().as_u16(),
            duration_us: u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            proxy_error: response
                .headers()
                .get(ERROR_HEADER)
                .and_then(|v| v.to_str().ok()),
        };
        self.log.record(&event);
    }
}

/// The name of an HTTP version in the log.
fn protocol(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// One event of the access log (see `docs/observability.md`).
#[derive(Serialize)]
struct AccessEvent<'a> {
    /// When the response head was ready, RFC 3339 in UTC with microseconds.
    #[serde(serialize_with = "display")]
    time: humantime::Rfc3339Timestamp,
    #[serde(flatten)]
    source: &'a AccessLogSource,
    listener: &'a str,
    route: &'a str,
    cluster: &'a str,
    client: SocketAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    peer: Option<String>,
    protocol: &'static str,
    method: &'a str,
    host: &'a str,
    path: &'a str,
    status: u16,
    duration_us: u64,
    proxy_error: Option<&'a str>,
}

fn display<S: serde::Serializer>(
    value: &impl std::fmt::Display,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A writer that keeps what it is given, and blocks while `held` is locked.
    #[derive(Clone, Default)]
    struct Kept {
        bytes: Arc<Mutex<Vec<u8>>>,
        held: Arc<Mutex<()>>,
    }

    impl Write for Kept {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let _wait = self.held.lock().unwrap();
            self.bytes.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn source() -> AccessLogSource {
        AccessLogSource {
            component: "gateway".into(),
            node: "gateway-fra".into(),
            region: Some("fra".into()),
        }
    }

    fn answered(log: &AccessLog, path: &str, status: u16) {
        let request = Request::get(format!("http://shop.example.com{path}?secret=1"))
            .version(Version::HTTP_2)
            .body(())
            .unwrap();
        let mut response = Response::new(http_body_util::Either::Right(http_body_util::Full::new(
            bytes::Bytes::new(),
        )));
        *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
        if status == 503 {
            response
                .headers_mut()
                .insert(ERROR_HEADER, http::HeaderValue::from_static("no_endpoint"));
        }
        let peer = Peer::new("127.0.0.1:40000".parse().unwrap(), "https");
        Logged::new(log, &request).answered(
            ("public", "shop", "acme/shop/web:http"),
            &peer,
            &response,
            Duration::from_micros(1500),
        );
    }

    #[test]
    fn each_request_is_a_json_line_with_the_documented_fields() {
        let kept = Kept::default();
        let counters = AccessLogCounters::default();
        let log =
            AccessLog::with_writer(Box::new(kept.clone()), 8, source(), counters.clone()).unwrap();
        answered(&log, "/cart", 200);
        answered(&log, "/", 503);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let lines = loop {
            let text = String::from_utf8(kept.bytes.lock().unwrap().clone()).unwrap();
            if text.lines().count() == 2 {
                break text;
            }
            assert!(std::time::Instant::now() < deadline, "written: {text}");
            std::thread::yield_now();
        };
        let events: Vec<serde_json::Value> = lines
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let first = &events[0];
        for (field, value) in [
            ("component", "gateway"),
            ("node", "gateway-fra"),
            ("region", "fra"),
            ("listener", "public"),
            ("route", "shop"),
            ("cluster", "acme/shop/web:http"),
            ("client", "127.0.0.1:40000"),
            ("protocol", "HTTP/2"),
            ("method", "GET"),
            ("host", "shop.example.com"),
            ("path", "/cart"),
        ] {
            assert_eq!(first[field], value, "{field}: {first}");
        }
        assert_eq!(first["status"], 200);
        assert_eq!(first["duration_us"], 1500);
        assert!(first["proxy_error"].is_null());
        assert!(first.get("peer").is_none());
        assert!(humantime::parse_rfc3339(first["time"].as_str().unwrap()).is_ok());
        assert_eq!(events[1]["proxy_error"], "no_endpoint");
        assert_eq!(counters.lines.get(), 2);
    }

    #[test]
    fn a_full_queue_drops_lines_and_counts_them_without_waiting() {
        let kept = Kept::default();
        let counters = AccessLogCounters::default();
        // The writer is stuck once its buffer (64 KiB: a few hundred lines) is full: the queue
        // takes two more lines and the rest are dropped, none waited for.
        let held = kept.held.lock().unwrap();
        let log =
            AccessLog::with_writer(Box::new(kept.clone()), 2, source(), counters.clone()).unwrap();
        for _ in 0..10_000 {
            answered(&log, "/", 200);
        }
        let (lines, dropped) = (counters.lines.get(), counters.dropped.get());
        assert_eq!(lines + dropped, 10_000);
        assert!(lines < 1_000, "{lines} handed over");
        drop(held);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while String::from_utf8(kept.bytes.lock().unwrap().clone())
            .unwrap()
            .lines()
            .count()
            < lines as usize
        {
            assert!(std::time::Instant::now() < deadline);
            std::thread::yield_now();
        }
    }
}
