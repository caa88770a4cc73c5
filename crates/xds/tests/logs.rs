//! The log service end to end over real gRPC on loopback: an answerer offers, a query goes
//! down its call and the answers come up; a slow reader holds the answerer back (it produces
//! no more than flow control lets through), dropping the answers cancels the query at the
//! answerer, and a fan-in says which peer did not answer while the others do.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian_xds::logs::{
    answer_queries, fan_in, AnswerOptions, Answering, Branch, LogAnswer, LogNotice, LogQuery,
    LogRecord, OfferService, Offers,
};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

const DEADLINE: Duration = Duration::from_secs(30);
/// The text of each answer the endless answerer sends.
const ANSWER_BYTES: usize = 64 * 1024;

/// What the answerer did, seen from the test.
#[derive(Default)]
struct Seen {
    produced: AtomicUsize,
    waiting: AtomicBool,
    ended: AtomicBool,
}

/// Sets `ended` when the answer's future is dropped (finished or cancelled).
struct Ends(Arc<Seen>);

impl Drop for Ends {
    fn drop(&mut self) {
        self.0.ended.store(true, Ordering::SeqCst);
    }
}

/// Answers `tail: 0` with answers of 64 KiB for ever, anything else with `tail` lines.
#[derive(Clone)]
struct Answerer(Arc<Seen>);

impl Answering for Answerer {
    async fn answer(&self, query: LogQuery, answers: mpsc::Sender<LogAnswer>) {
        let _ends = Ends(self.0.clone());
        let line = |text: String| LogRecord {
            instance: "web-0".into(),
            stream: "stdout".into(),
            text,
            ..LogRecord::default()
        };
        if query.tail > 0 {
            for n in 0..query.tail {
                let answer = LogAnswer {
                    lines: vec![line(format!("line {n}"))],
                    ..LogAnswer::default()
                };
                let _ = answers.send(answer).await;
            }
            return;
        }
        loop {
            let answer = LogAnswer {
                lines: vec![line("x".repeat(ANSWER_BYTES))],
                ..LogAnswer::default()
            };
            self.0.waiting.store(true, Ordering::SeqCst);
            if answers.send(answer).await.is_err() {
                return;
            }
            self.0.waiting.store(false, Ordering::SeqCst);
            self.0.produced.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// A server keeping its callers' offers (every caller is `peer`), and one answerer offering
/// there.
async fn start() -> (Offers, Arc<Seen>) {
    let offers = Offers::default();
    let service = OfferService::new(offers.clone(), Arc::new(|_| Ok("peer".to_owned())));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let seen = Arc::new(Seen::default());
    let options = AnswerOptions {
        url,
        tls: None,
        concurrency: 2,
        who: "test".into(),
    };
    tokio::spawn(answer_queries(options, Answerer(seen.clone())));
    (offers, seen)
}

fn query(tail: u32) -> LogQuery {
    LogQuery {
        org: "acme".into(),
        app: "shop".into(),
        service: "web".into(),
        tail,
        ..LogQuery::default()
    }
}

async fn until(what: &str, done: impl Fn() -> bool) {
    let end = Instant::now() + DEADLINE;
    while !done() {
        assert!(Instant::now() < end, "never {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_holds_the_answerer_back_and_dropping_the_answers_cancels_it() {
    let (offers, seen) = start().await;
    let mut answers = offers
        .ask("peer", query(0), DEADLINE)
        .await
        .expect("the answerer takes the query");
    // The acknowledgement, then the first answer.
    let ack = answers.next().await.unwrap().unwrap();
    assert!(ack.is_empty());
    let first = answers.next().await.unwrap().unwrap();
    assert_eq!(first.lines[0].text.len(), ANSWER_BYTES);
    // Nobody reads: the answerer ends up waiting to send, having produced no more than the
    // queues and HTTP/2 windows on the way hold (a few MiB), not what it would for ever.
    until("waiting to send", || seen.waiting.load(Ordering::SeqCst)).await;
    let produced = seen.produced.load(Ordering::SeqCst);
    assert!(produced < 100, "{produced} answers of 64 KiB in flight");
    // Reading lets it go on.
    for _ in 0..produced + 10 {
        answers.next().await.unwrap().unwrap();
    }
    assert!(seen.produced.load(Ordering::SeqCst) > produced);
    // Dropping the answers ends the call: the answer is cancelled at the answerer.
    drop(answers);
    until("cancelled", || seen.ended.load(Ordering::SeqCst)).await;
}

/// Peers' answers marked with the peer's name in `node`.
struct Nodes;

impl Branch for Nodes {
    fn mark(&self, peer: &str, answer: &mut LogAnswer) {
        answer
            .lines
            .iter_mut()
            .for_each(|l| l.node = peer.to_owned());
    }

    fn missing(&self, peer: &str, why: &str) -> LogNotice {
        LogNotice {
            node: peer.to_owned(),
            ..LogNotice::new("missing", format!("node {peer} did not answer: {why}"))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_in_says_which_peer_did_not_answer_and_gives_the_others_answers() {
    let (offers, _seen) = start().await;
    let (out, mut merged) = mpsc::channel(16);
    let peers = vec!["absent".to_owned(), "peer".to_owned()];
    let wait = Duration::from_millis(500);
    let asked = tokio::spawn(async move {
        fan_in(&offers, peers, query(3), wait, out, &Nodes).await;
    });
    let mut lines = Vec::new();
    let mut notices = Vec::new();
    let mut caught_up = 0;
    while let Some(answer) = tokio::time::timeout(DEADLINE, merged.recv()).await.unwrap() {
        lines.extend(
            answer
                .lines
                .iter()
                .map(|l| format!("{} {}", l.node, l.text)),
        );
        notices.extend(
            answer
                .notices
                .iter()
                .map(|n| (n.node.clone(), n.text.clone())),
        );
        caught_up += usize::from(answer.caught_up);
    }
    asked.await.unwrap();
    assert_eq!(lines, ["peer line 0", "peer line 1", "peer line 2"]);
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert_eq!(notices[0].0, "absent");
    assert!(notices[0]
        .1
        .starts_with("node absent did not answer: it took no query"));
    assert_eq!(caught_up, 1, "once, when every peer had answered");
}
