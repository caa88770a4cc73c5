//! How long instances take to start: from the agent beginning a run (its cgroup, for an image
//! its pull from the node's store or a registry and its bundle, then the process or runc) to
//! its first passing health check, or to its start when it declares none.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The label of a start: how the instance runs, `process` or `image`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuntimeLabel {
    runtime: &'static str,
}

/// Upper bounds of the buckets, in seconds: fine below a second, where starts of cached
/// images and processes fall.
const BUCKETS: [f64; 16] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0,
];

fn histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// `meridian_agent_instance_start_seconds`, by runtime.
#[derive(Debug, Clone)]
pub struct StartMetrics(Family<RuntimeLabel, Histogram, fn() -> Histogram>);

impl StartMetrics {
    /// The histogram, registered in `registry`.
    pub fn new(registry: &mut Registry) -> StartMetrics {
        let family = Family::new_with_constructor(histogram as fn() -> Histogram);
        registry.register(
            "instance_start_seconds",
            "Time from the agent beginning a run of an instance to its first passing health check (or its start, without checks), by runtime",
            family.clone(),
        );
        StartMetrics(family)
    }

    /// Counts a start of `took`, of an image instance if `image`, else of a process.
    pub fn observe(&self, image: bool, took: Duration) {
        let runtime = if image { "image" } else { "process" };
        self.0
            .get_or_create(&RuntimeLabel { runtime })
            .observe(took.as_secs_f64());
    }
}
