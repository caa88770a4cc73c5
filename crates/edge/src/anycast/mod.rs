//! The anycast announcement: the edge binds the anycast addresses, and has its local BIRD
//! announce them over BGP while it is healthy — its listener answers at those addresses, its
//! configuration is fresh enough, a region with healthy instances is reachable — after a
//! hold-down, and withdraw them at the first failure, when it stops, or (through its guard)
//! when it dies or freezes. docs/anycast.md has the whole story and BIRD's configuration.
//!
//! The decisions are a pure state machine ([`machine`]); the driver feeds it the checks and
//! drives BIRD ([`speaker`], over [`bird`]'s control-socket client).

pub mod address;
pub mod bird;
pub mod bird_config;
mod driver;
mod guard;
pub mod machine;
mod metrics;
pub mod options;
mod probe;
pub mod speaker;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use driver::Status;
pub use guard::{run_guard, GuardOptions};
pub use machine::Reason;
pub use metrics::AnycastMetrics;
pub use options::{AnycastOptions, Bfd, BgpOptions, Community, HealthOptions, Peer, Prefix};
pub use probe::Gateway;

use driver::{DrainRequest, Inputs, Settings, Timing};
use machine::Policy;
use probe::{ListenerCheck, RegionCheck};
use speaker::BirdSpeaker;

/// How often the driver checks that BIRD does what it was told.
const RECONCILE: Duration = Duration::from_secs(1);

/// What the follower tells the announcement: whether a session with the global control plane
/// is open, and the gateways of the regions that report healthy instances. Cheap to clone.
#[derive(Clone)]
pub struct ControlFeed {
    following: Arc<watch::Sender<bool>>,
    gateways: Arc<watch::Sender<Vec<Gateway>>>,
}

impl ControlFeed {
    /// A feed that says: not following, no gateway.
    pub fn new() -> ControlFeed {
        ControlFeed {
            following: Arc::new(watch::Sender::new(false)),
            gateways: Arc::new(watch::Sender::new(Vec::new())),
        }
    }

    /// Says whether a session with the global control plane is open.
    pub fn set_following(&self, following: bool) {
        self.following
            .send_if_modified(|old| replace(old, following));
    }

    /// Says which gateways serve regions with healthy instances.
    pub fn set_gateways(&self, gateways: Vec<Gateway>) {
        self.gateways.send_if_modified(|old| replace(old, gateways));
    }
}

impl Default for ControlFeed {
    fn default() -> Self {
        ControlFeed::new()
    }
}

/// A running announcement. Its tasks stop when it is dropped.
pub struct Anycast {
    prefixes: Vec<Prefix>,
    status: watch::Receiver<Status>,
    drains: mpsc::Sender<DrainRequest>,
    metrics: Arc<AnycastMetrics>,
    tasks: Vec<JoinHandle<()>>,
}

impl Anycast {
    /// Sets BIRD up (the edge's configuration, withdrawn), starts the guard with
    /// `guard_command` (a program and the arguments that make it the guard: the guard's own
    /// follow), the probes of the listener at `listener_port` and of the gateways `feed`
    /// gives, and the driver. Fails if BIRD cannot be set up.
    pub async fn start(
        options: &AnycastOptions,
        location: &str,
        listener_port: u16,
        feed: &ControlFeed,
        guard_command: Option<(PathBuf, Vec<String>)>,
    ) -> Result<Anycast, String> {
        let speaker = BirdSpeaker::install(options, location)
            .await
            .map_err(|e| e.to_string())?;
        let health = options.health;
        let guard = match guard_command {
            Some((program, mut arguments)) => {
                let guard_options = GuardOptions {
                    socket: options.bgp.socket.clone(),
                    state_file: speaker.state_file().to_owned(),
                    protocols: speaker.statics().to_vec(),
                    timeout: health.guard_timeout,
                };
                arguments.extend(guard_options.arguments());
                Some(
                    guard::Guard::spawn(program, arguments)
                        .map_err(|e| format!("cannot start the anycast guard: {e}"))?,
                )
            }
            None => None,
        };
        let targets: Vec<SocketAddr> = options
            .prefixes
            .iter()
            .map(|p| SocketAddr::new(p.address, listener_port))
            .collect();
        let (listener_tx, listener) = watch::channel(ListenerCheck {
            ok: false,
            detail: "the listener has not answered yet".to_owned(),
        });
        let (regions_tx, regions) = watch::channel(RegionCheck::default());
        let (status_tx, status) = watch::channel(Status::starting(Instant::now()));
        let (drains, drains_rx) = mpsc::channel(4);
        let metrics = Arc::new(AnycastMetrics::new());
        let policy = Policy {
            hold_down: health.hold_down,
            hold_down_max: health.hold_down_max,
            max_stale: health.max_stale,
        };
        let timing = Timing {
            reconcile: RECONCILE,
            // Four signs of life per guard timeout.
            heartbeat: (health.guard_timeout / 4).min(health.probe_interval),
        };
        let inputs = Inputs {
            listener,
            regions,
            following: feed.following.subscribe(),
        };
        let tasks = vec![
            tokio::spawn(probe::probe_listener(targets, health, listener_tx)),
            tokio::spawn(probe::probe_regions(
                feed.gateways.subscribe(),
                health,
                regions_tx,
            )),
            tokio::spawn(driver::drive(
                speaker,
                Settings { policy, timing },
                inputs,
                drains_rx,
                guard,
                metrics.clone(),
                status_tx,
            )),
        ];
        Ok(Anycast {
            prefixes: options.prefixes.clone(),
            status,
            drains,
            metrics,
            tasks,
        })
    }

    /// Withdraws the prefixes for good (the edge is stopping); returns once BIRD was told.
    pub async fn withdraw(&self) -> Result<(), String> {
        let (answer, withdrawn) = oneshot::channel();
        self.drains
            .send(answer)
            .await
            .map_err(|_| "the anycast driver stopped".to_owned())?;
        withdrawn
            .await
            .map_err(|_| "the anycast driver stopped".to_owned())?
    }

    /// The status, as it changes.
    pub fn status(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// The prefixes.
    pub fn prefixes(&self) -> &[Prefix] {
        &self.prefixes
    }

    /// The metrics, in the OpenMetrics text format.
    pub fn metrics_text(&self) -> String {
        self.metrics.render()
    }

    /// The admin port's `GET /anycast`: the status as JSON.
    pub fn routes(self: &Arc<Self>) -> axum::Router {
        let anycast = self.clone();
        axum::Router::new().route(
            "/anycast",
            axum::routing::get(move || {
                let json = anycast.status_json();
                async move { axum::Json(json) }
            }),
        )
    }

    /// The status as JSON (the admin port's `/anycast`).
    pub fn status_json(&self) -> serde_json::Value {
        let status = self.status.borrow();
        serde_json::json!({
            "announced": status.announced,
            "reason": status.reason,
            "detail": status.detail,
            "since_seconds": status.since.elapsed().as_secs(),
            "hold_down_seconds": status.hold_down.as_secs(),
            "prefixes": self.prefixes.iter().map(Prefix::network).collect::<Vec<_>>(),
            "regions_reachable": status.regions.reachable,
            "regions_with_healthy_instances": status.regions.known,
            "bgp_sessions": {
                "established": status.speaker.established,
                "configured": status.speaker.sessions,
            },
        })
    }
}

impl Drop for Anycast {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Sets `slot` to `value`; whether that changed it.
fn replace<T: PartialEq>(slot: &mut T, value: T) -> bool {
    if *slot == value {
        return false;
    }
    *slot = value;
    true
}
