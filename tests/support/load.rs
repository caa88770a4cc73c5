//! A steady, bounded load through a gateway or an edge: a few loops, each one request at a
//! time, counting answers and failures.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long [`Load::goes_on_for`] and [`serving`] wait.
const DEADLINE: Duration = Duration::from_secs(60);

/// How one loop sends its requests.
#[derive(Debug, Clone, Copy)]
pub struct Lane {
    /// `POST /` with a small body instead of `GET /`.
    pub post: bool,
    /// A new connection for every request instead of one kept alive.
    pub fresh_connections: bool,
}

impl Lane {
    /// One lane of each kind: `GET` and `POST`, on a connection kept alive and on new ones.
    pub fn every() -> Vec<Lane> {
        [(false, false), (false, true), (true, false), (true, true)]
            .into_iter()
            .map(|(post, fresh_connections)| Lane {
                post,
                fresh_connections,
            })
            .collect()
    }
}

/// Requests for one host through a gateway, in loops until stopped.
pub struct Load {
    answered: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    answers: Arc<Mutex<Vec<String>>>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Starts sending `GET /` for `host` through `gateway`, one request at a time, on a
    /// connection kept alive.
    pub fn start(gateway: &str, host: &str) -> Load {
        let lane = Lane {
            post: false,
            fresh_connections: false,
        };
        Load::start_lanes(gateway, host, &[lane])
    }

    /// Starts one loop per lane, each sending its requests for `host` through `gateway` one at
    /// a time. A request fails when it gets no answer or an answer other than 200.
    pub fn start_lanes(gateway: &str, host: &str, lanes: &[Lane]) -> Load {
        let answered = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let tasks = lanes
            .iter()
            .map(|lane| {
                let (url, host, lane) = (format!("http://{gateway}/"), host.to_owned(), *lane);
                let (answered, failures) = (answered.clone(), failures.clone());
                let (answers, mut stopped) = (answers.clone(), stopped.clone());
                tokio::spawn(async move {
                    let mut client = reqwest::Client::builder();
                    if lane.fresh_connections {
                        client = client.pool_max_idle_per_host(0);
                    }
                    let client = client.build().unwrap();
                    while !*stopped.borrow_and_update() {
                        let request = if lane.post {
                            client.post(&url).body("a small body")
                        } else {
                            client.get(&url)
                        };
                        match request.header("host", &host).send().await {
                            Ok(answer) if answer.status() == 200 => {
                                let text = answer.text().await.unwrap_or_default();
                                answers.lock().unwrap().push(text);
                            }
                            Ok(answer) => {
                                let status = answer.status();
                                let body = answer.text().await.unwrap_or_default();
                                let failure = format!("{status}: {body}");
                                failures.lock().unwrap().push(failure);
                            }
                            Err(e) => failures.lock().unwrap().push(e.to_string()),
                        }
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Load {
            answered,
            failures,
            answers,
            stop,
            tasks,
        }
    }

    /// Waits until `more` further requests were answered.
    pub async fn goes_on_for(&self, more: u64) {
        let count = || self.answered.load(Ordering::Relaxed);
        let (from, end) = (count(), Instant::now() + DEADLINE);
        while count() < from + more {
            assert!(
                Instant::now() < end,
                "the load stalled at {} requests",
                count()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The failures so far.
    pub fn failures(&self) -> Vec<String> {
        self.failures.lock().unwrap().clone()
    }

    /// Takes the bodies of the successful answers since the last call.
    pub fn take_answers(&self) -> Vec<String> {
        std::mem::take(&mut *self.answers.lock().unwrap())
    }

    /// The bodies of the successful answers among the next `count` requests answered (those
    /// before are forgotten).
    pub async fn answers_of_next(&self, count: u64) -> Vec<String> {
        self.take_answers();
        self.goes_on_for(count).await;
        self.take_answers()
    }

    /// Stops the load; returns how many requests were answered.
    pub async fn stop(self) -> u64 {
        self.stop.send_replace(true);
        for task in self.tasks {
            task.await.unwrap();
        }
        self.answered.load(Ordering::Relaxed)
    }
}

/// The texts of the `200` answers to a dozen `GET /` of `hello` (host `hello.example.com`)
/// through `gateway`.
pub async fn dozen_answers(client: &reqwest::Client, gateway: &str) -> Vec<String> {
    let mut texts = Vec::new();
    for _ in 0..12 {
        let answer = client
            .get(format!("http://{gateway}/"))
            .header("host", "hello.example.com")
            .send()
            .await;
        if let Ok(answer) = answer.and_then(|a| a.error_for_status()) {
            texts.push(answer.text().await.unwrap_or_default());
        }
    }
    texts
}

/// Waits until the instances of `hello` (app `shop`, host `hello.example.com`) answering
/// `GET /` through `gateway` with `greeting` satisfy `wanted`, by the text after
/// `<greeting> from hello `: `<instance> in <region> (node <node>, <address>)`; returns them.
pub async fn serving(
    gateway: &str,
    greeting: &str,
    wanted: impl Fn(&BTreeSet<String>) -> bool,
    what: &str,
) -> BTreeSet<String> {
    let client = reqwest::Client::new();
    let prefix = format!("{greeting} from hello ");
    let end = Instant::now() + DEADLINE;
    loop {
        let seen: BTreeSet<String> = dozen_answers(&client, gateway)
            .await
            .iter()
            .filter_map(|text| text.trim().strip_prefix(&prefix))
            .map(str::to_owned)
            .collect();
        if wanted(&seen) {
            return seen;
        }
        assert!(
            Instant::now() < end,
            "waited in vain for {what}; serving {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The instances (`hello-<n>`) in `answers` that greeted with `greeting`.
pub fn greeted_by(answers: &[String], greeting: &str) -> BTreeSet<String> {
    answers
        .iter()
        .filter_map(|a| a.strip_prefix(&format!("{greeting} from hello ")))
        .filter_map(|rest| rest.split(' ').next())
        .map(str::to_owned)
        .collect()
}

/// Waits until the instances answering through `gateway` with `greeting` are `wanted`.
pub async fn serving_exactly(gateway: &str, greeting: &str, wanted: &BTreeSet<String>) {
    let ids = |seen: &BTreeSet<String>| -> BTreeSet<String> {
        seen.iter()
            .filter_map(|s| s.split(' ').next())
            .map(str::to_owned)
            .collect()
    };
    serving(
        gateway,
        greeting,
        |seen| ids(seen) == *wanted,
        "the instances",
    )
    .await;
}
