//! The edge's graceful stop, asked by SIGTERM or `meridian edge drain` (the admin port's
//! `POST /drain`): withdraw the anycast prefixes, wait for the routes to converge while still
//! serving whatever still arrives, then drain the connections — HTTP/1.1 answers with
//! `Connection: close`, HTTP/2 gets GOAWAY, long requests and WebSockets get up to the drain
//! timeout — and return. A deploy of the edge loses no request that way: new connections go
//! to other edges once the routes moved, and the ones here finish.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use meridian_proxy::Proxy;
use serde::Serialize;
use tokio::sync::watch;

use crate::anycast::Anycast;

/// How long `POST /drain` waits for the withdrawal before it answers anyway.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// Where the stop is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Serving; nobody asked for a stop.
    Serving,
    /// Asked: withdrawing the prefixes.
    Withdrawing,
    /// Withdrawn: waiting for the routes to converge, still serving.
    Converging,
    /// Draining the connections.
    Draining,
}

/// How long each step of the stop may take.
#[derive(Debug, Clone, Copy)]
pub struct StopTiming {
    /// How long to wait after the withdrawal for the routes to converge.
    pub converge: Duration,
    /// How long the connections get to finish.
    pub drain: Duration,
}

/// The stop: asked once, by whoever comes first.
pub struct Stop {
    stage: watch::Sender<Stage>,
    timing: StopTiming,
}

impl Stop {
    /// A stop not asked yet.
    pub fn new(timing: StopTiming) -> Arc<Stop> {
        Arc::new(Stop {
            stage: watch::Sender::new(Stage::Serving),
            timing,
        })
    }

    /// Asks for the stop (again: no matter).
    pub fn ask(&self) {
        self.stage.send_if_modified(|stage| {
            let first = *stage == Stage::Serving;
            if first {
                *stage = Stage::Withdrawing;
            }
            first
        });
    }

    /// Resolves once the stop is asked.
    pub async fn asked(&self) {
        let mut stage = self.stage.subscribe();
        let _ = stage.wait_for(|s| *s > Stage::Serving).await;
    }

    /// Stops gracefully once asked (or once `signal` resolves): withdraws through `anycast`
    /// and waits for convergence (if it announces), then drains `proxy`'s connections.
    /// Returns how many connections were still open at the end of the drain timeout.
    pub async fn run(
        &self,
        signal: impl std::future::Future<Output = ()>,
        proxy: &Proxy,
        anycast: Option<&Anycast>,
    ) -> usize {
        tokio::select! {
            () = signal => self.ask(),
            () = self.asked() => {}
        }
        if let Some(anycast) = anycast {
            match anycast.withdraw().await {
                Ok(()) => println!(
                    "anycast prefixes withdrawn; serving {} more while routes converge",
                    humantime::format_duration(self.timing.converge)
                ),
                Err(e) => eprintln!("the anycast prefixes could not be withdrawn: {e}"),
            }
            self.stage.send_replace(Stage::Converging);
            tokio::time::sleep(self.timing.converge).await;
        }
        self.stage.send_replace(Stage::Draining);
        println!(
            "draining connections (up to {})",
            humantime::format_duration(self.timing.drain)
        );
        let left = proxy.drain(self.timing.drain).await;
        println!("stopped ({left} connections cut off)");
        left
    }

    /// The admin port's routes: `POST /drain` asks for the stop and answers once the prefixes
    /// are withdrawn, with the stage and the timings.
    pub fn routes(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/drain", post(drain))
            .route("/stop", get(stage))
            .with_state(self.clone())
    }

    fn answer(&self) -> serde_json::Value {
        serde_json::json!({
            "stage": *self.stage.borrow(),
            "converge_seconds": self.timing.converge.as_secs_f64(),
            "drain_timeout_seconds": self.timing.drain.as_secs_f64(),
        })
    }
}

async fn drain(State(stop): State<Arc<Stop>>) -> impl IntoResponse {
    stop.ask();
    let mut stage = stop.stage.subscribe();
    let withdrawn = stage.wait_for(|s| *s >= Stage::Converging);
    let _ = tokio::time::timeout(ANSWER_WITHIN, withdrawn).await;
    (StatusCode::ACCEPTED, Json(stop.answer()))
}

async fn stage(State(stop): State<Arc<Stop>>) -> impl IntoResponse {
    Json(stop.answer())
}
