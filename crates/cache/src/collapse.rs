//! Request collapsing: concurrent misses on one key make one upstream request. The first
//! request leads (goes upstream); the others wait for its outcome, up to a number of
//! waiters and a time. A response the leader shares answers them all; one it cannot share
//! (not storable, an error, the leader gone) releases them to go upstream themselves.
//!
//! A flight is keyed by a cache key, or by whatever else its caller does once for many (the
//! edge codes a stored response's content once per coding: a key and a coding).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;

use crate::key::CacheKey;

/// Bounds on waiting for another request's response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CollapseLimits {
    /// Most requests waiting on one key; more go upstream on their own.
    pub max_waiters: usize,
    /// Longest a request waits before going upstream on its own.
    pub max_wait: Duration,
}

/// Why a request goes upstream on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alone {
    /// The leader's response could not be shared (or the leader went away).
    Released,
    /// The leader took longer than [`CollapseLimits::max_wait`].
    TimedOut,
    /// [`CollapseLimits::max_waiters`] were already waiting.
    TooManyWaiters,
}

/// What a request that missed does.
pub enum Join<T, K: Hash + Eq = CacheKey> {
    /// Go upstream, then [`Leader::share`] the response (or drop the leader to release the
    /// others).
    Lead(Leader<T, K>),
    /// The leader's shared response. It may be of another variant than this request
    /// selects: the caller checks.
    Shared(T),
    /// Go upstream without collapsing.
    Alone(Alone),
}

#[derive(Clone)]
enum Outcome<T> {
    Pending,
    Shared(T),
    Released,
}

struct Flight<T> {
    outcome: watch::Receiver<Outcome<T>>,
    waiters: usize,
}

type Flights<T, K> = Arc<Mutex<HashMap<K, Flight<T>>>>;

/// The requests in flight, by key.
pub struct Collapser<T, K = CacheKey> {
    flights: Flights<T, K>,
    limits: CollapseLimits,
}

impl<T: Clone + Send + Sync + 'static, K: Hash + Eq + Clone> Collapser<T, K> {
    /// No request in flight.
    pub fn new(limits: CollapseLimits) -> Collapser<T, K> {
        Collapser {
            flights: Arc::default(),
            limits,
        }
    }

    /// Joins the flight for `key`: leads it if there is none, else waits for its outcome
    /// (within the limits).
    pub async fn join(&self, key: &K) -> Join<T, K> {
        let mut outcome = {
            let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
            match flights.get_mut(key) {
                None => {
                    let (sender, receiver) = watch::channel(Outcome::Pending);
                    flights.insert(
                        key.clone(),
                        Flight {
                            outcome: receiver,
                            waiters: 0,
                        },
                    );
                    return Join::Lead(Leader {
                        key: key.clone(),
                        sender: Some(sender),
                        flights: Arc::clone(&self.flights),
                    });
                }
                Some(flight) if flight.waiters >= self.limits.max_waiters => {
                    return Join::Alone(Alone::TooManyWaiters);
                }
                Some(flight) => {
                    flight.waiters += 1;
                    flight.outcome.clone()
                }
            }
        };
        let done = |o: &Outcome<T>| !matches!(o, Outcome::Pending);
        let result = match tokio::time::timeout(self.limits.max_wait, outcome.wait_for(done)).await
        {
            Err(_) => Join::Alone(Alone::TimedOut),
            // The leader dropped without a word: released.
            Ok(Err(_)) => Join::Alone(Alone::Released),
            Ok(Ok(state)) => match &*state {
                Outcome::Shared(value) => Join::Shared(value.clone()),
                _ => Join::Alone(Alone::Released),
            },
        };
        if matches!(result, Join::Alone(Alone::TimedOut)) {
            self.leave(key, &outcome);
        }
        result
    }

    /// Requests waiting on `key` (for tests and metrics).
    pub fn waiters(&self, key: &K) -> usize {
        let flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
        flights.get(key).map_or(0, |f| f.waiters)
    }

    /// Requests waiting on any key (for tests and metrics).
    pub fn waiting(&self) -> usize {
        let flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
        flights.values().map(|f| f.waiters).sum()
    }

    /// A waiter that gave up leaves the count of the flight it waited on (if still that one).
    fn leave(&self, key: &K, outcome: &watch::Receiver<Outcome<T>>) {
        let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(flight) = flights.get_mut(key) {
            if flight.outcome.same_channel(outcome) {
                flight.waiters = flight.waiters.saturating_sub(1);
            }
        }
    }
}

/// The request that goes upstream for a key. Dropping it without sharing releases the
/// waiters.
pub struct Leader<T, K: Hash + Eq = CacheKey> {
    key: K,
    sender: Option<watch::Sender<Outcome<T>>>,
    flights: Flights<T, K>,
}

impl<T, K: Hash + Eq> Leader<T, K> {
    /// Answers every waiter with `value` (store it first: requests that arrive from now on
    /// look in the store, not at this flight).
    pub fn share(mut self, value: T) {
        self.finish(Outcome::Shared(value));
    }

    /// Sends the waiters upstream on their own (the response cannot be shared).
    pub fn release(mut self) {
        self.finish(Outcome::Released);
    }

    fn finish(&mut self, outcome: Outcome<T>) {
        let Some(sender) = self.sender.take() else {
            return;
        };
        self.flights
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.key);
        sender.send_replace(outcome);
    }
}

impl<T, K: Hash + Eq> Drop for Leader<T, K> {
    fn drop(&mut self) {
        self.finish(Outcome::Released);
    }
}
