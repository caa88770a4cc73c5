//! Request collapsing under real concurrency: many tasks on a multi-threaded runtime miss one
//! key at once; an "upstream" counts the requests that reach it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use meridian_cache::{Alone, CacheKey, CollapseLimits, Collapser, Join, QueryKey};
use tokio::sync::Notify;
use tokio::time::{sleep, Instant};

const CLIENTS: usize = 50;

fn key() -> CacheKey {
    CacheKey::of_uri("https", "shop.example.com", "/hot", &QueryKey::All)
}

/// What each client ended with: the upstream answer it served, and how it got it.
#[derive(Debug, Clone, PartialEq)]
enum Got {
    Led(u32),
    Shared(u32),
    Alone(Alone, u32),
}

struct Upstream {
    requests: AtomicUsize,
    open: Notify,
}

impl Upstream {
    /// One upstream request: counted, answered once the test opens the gate.
    async fn fetch(&self) -> u32 {
        self.requests.fetch_add(1, Ordering::SeqCst);
        self.open.notified().await;
        200
    }
}

/// Waits until `condition` holds, failing after a deadline.
async fn until(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(Duration::from_millis(5)).await;
    }
}

/// Starts `CLIENTS` clients missing the same key; the leader shares its answer when
/// `shareable`, else releases the others.
async fn clients(
    collapser: &Arc<Collapser<u32>>,
    upstream: &Arc<Upstream>,
    shareable: bool,
) -> Vec<tokio::task::JoinHandle<Got>> {
    (0..CLIENTS)
        .map(|_| {
            let (collapser, upstream) = (Arc::clone(collapser), Arc::clone(upstream));
            tokio::spawn(async move {
                match collapser.join(&key()).await {
                    Join::Lead(leader) => {
                        let answer = upstream.fetch().await;
                        if shareable {
                            leader.share(answer);
                        } else {
                            leader.release();
                        }
                        Got::Led(answer)
                    }
                    Join::Shared(answer) => Got::Shared(answer),
                    Join::Alone(why) => {
                        // Going upstream alone is not collapsed: answered at once.
                        upstream.requests.fetch_add(1, Ordering::SeqCst);
                        Got::Alone(why, 200)
                    }
                }
            })
        })
        .collect()
}

async fn outcomes(handles: Vec<tokio::task::JoinHandle<Got>>) -> Vec<Got> {
    let mut got = Vec::new();
    for handle in handles {
        got.push(handle.await.unwrap());
    }
    got
}

fn upstream() -> Arc<Upstream> {
    Arc::new(Upstream {
        requests: AtomicUsize::new(0),
        open: Notify::new(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_misses_on_one_key_make_one_upstream_request() {
    let limits = CollapseLimits {
        max_waiters: 1000,
        max_wait: Duration::from_secs(30),
    };
    let collapser = Arc::new(Collapser::new(limits));
    let upstream = upstream();
    let handles = clients(&collapser, &upstream, true).await;
    until("every other client to wait", || {
        collapser.waiters(&key()) == CLIENTS - 1
    })
    .await;
    upstream.open.notify_one();
    let got = outcomes(handles).await;
    assert_eq!(upstream.requests.load(Ordering::SeqCst), 1);
    assert_eq!(got.iter().filter(|g| **g == Got::Led(200)).count(), 1);
    assert_eq!(
        got.iter().filter(|g| **g == Got::Shared(200)).count(),
        CLIENTS - 1
    );
    assert_eq!(collapser.waiters(&key()), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_response_that_cannot_be_shared_releases_the_waiters_upstream() {
    let limits = CollapseLimits {
        max_waiters: 1000,
        max_wait: Duration::from_secs(30),
    };
    let collapser = Arc::new(Collapser::new(limits));
    let upstream = upstream();
    let handles = clients(&collapser, &upstream, false).await;
    until("every other client to wait", || {
        collapser.waiters(&key()) == CLIENTS - 1
    })
    .await;
    upstream.open.notify_one();
    let got = outcomes(handles).await;
    assert_eq!(upstream.requests.load(Ordering::SeqCst), CLIENTS);
    let released = got
        .iter()
        .filter(|g| **g == Got::Alone(Alone::Released, 200))
        .count();
    assert_eq!(released, CLIENTS - 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waiters_beyond_the_limit_go_upstream_on_their_own() {
    let limits = CollapseLimits {
        max_waiters: 10,
        max_wait: Duration::from_secs(30),
    };
    let collapser = Arc::new(Collapser::new(limits));
    let upstream = upstream();
    let handles = clients(&collapser, &upstream, true).await;
    // The clients over the limit finish on their own while the leader is still upstream.
    until("the clients over the limit to go upstream", || {
        upstream.requests.load(Ordering::SeqCst) == CLIENTS - 10
    })
    .await;
    assert_eq!(collapser.waiters(&key()), 10);
    upstream.open.notify_one();
    let got = outcomes(handles).await;
    assert_eq!(got.iter().filter(|g| **g == Got::Shared(200)).count(), 10);
    let alone = got
        .iter()
        .filter(|g| **g == Got::Alone(Alone::TooManyWaiters, 200))
        .count();
    assert_eq!(alone, CLIENTS - 11);
}

#[tokio::test(start_paused = true)]
async fn a_waiter_gives_up_after_the_longest_wait_and_a_vanished_leader_releases() {
    let limits = CollapseLimits {
        max_waiters: 10,
        max_wait: Duration::from_secs(2),
    };
    let collapser: Collapser<u32> = Collapser::new(limits);
    let Join::Lead(leader) = collapser.join(&key()).await else {
        panic!("the first request leads");
    };
    // The leader never answers: the waiter goes upstream after max_wait (paused time).
    assert!(matches!(
        collapser.join(&key()).await,
        Join::Alone(Alone::TimedOut)
    ));
    assert_eq!(collapser.waiters(&key()), 0);
    // A leader dropped (its request cancelled) releases whoever waits.
    let waiter = async { collapser.join(&key()).await };
    let (join, ()) = tokio::join!(waiter, async {
        tokio::task::yield_now().await;
        drop(leader);
    });
    assert!(matches!(join, Join::Alone(Alone::Released)));
    // The key is free again: the next request leads.
    assert!(matches!(collapser.join(&key()).await, Join::Lead(_)));
}
