//! The announcement's metrics (`meridian_edge_anycast_*`): whether the prefixes are announced,
//! why (one series per reason, 1 for the current one), withdrawals by reason, the hold-down in
//! force, the regions reachable and the BGP sessions established.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::driver::Status;
use super::machine::Reason;

/// A reason label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// The metrics, in a registry of their own.
pub struct AnycastMetrics {
    registry: Registry,
    announced: Gauge,
    reason: Family<ReasonLabel, Gauge>,
    withdrawals: Family<ReasonLabel, Counter>,
    hold_down: Gauge<f64, AtomicU64>,
    regions: Gauge,
    sessions: Gauge,
}

impl AnycastMetrics {
    /// The metrics, at zero.
    pub fn new() -> AnycastMetrics {
        let mut registry = Registry::with_prefix("meridian_edge_anycast");
        let announced = Gauge::default();
        registry.register(
            "announced",
            "Whether the edge announces its anycast prefixes (1) or not (0)",
            announced.clone(),
        );
        let reason = Family::<ReasonLabel, Gauge>::default();
        registry.register(
            "reason",
            "Why the prefixes are announced or not: 1 for the current reason",
            reason.clone(),
        );
        let withdrawals = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "withdrawals",
            "Withdrawals of the anycast prefixes, by reason",
            withdrawals.clone(),
        );
        let hold_down = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "hold_down_seconds",
            "How long the checks must pass before the prefixes are announced again",
            hold_down.clone(),
        );
        let regions = Gauge::default();
        registry.register(
            "regions_reachable",
            "Regions with healthy instances whose gateway the edge reaches",
            regions.clone(),
        );
        let sessions = Gauge::default();
        registry.register(
            "bgp_sessions_established",
            "BGP sessions of the edge's BIRD that are established",
            sessions.clone(),
        );
        for reason_now in Reason::ALL {
            drop(reason.get_or_create(&ReasonLabel {
                reason: reason_now.as_str(),
            }));
        }
        AnycastMetrics {
            registry,
            announced,
            reason,
            withdrawals,
            hold_down,
            regions,
            sessions,
        }
    }

    /// Shows `status`.
    pub fn record(&self, status: &Status) {
        self.announced.set(i64::from(status.announced));
        for reason in Reason::ALL {
            self.reason
                .get_or_create(&ReasonLabel {
                    reason: reason.as_str(),
                })
                .set(i64::from(reason == status.reason));
        }
        self.hold_down.set(status.hold_down.as_secs_f64());
        self.regions
            .set(i64::try_from(status.regions.reachable.len()).unwrap_or(i64::MAX));
        self.sessions
            .set(i64::try_from(status.speaker.established).unwrap_or(i64::MAX));
    }

    /// Counts a withdrawal for `reason`.
    pub fn withdrawn(&self, reason: Reason) {
        self.withdrawals
            .get_or_create(&ReasonLabel {
                reason: reason.as_str(),
            })
            .inc();
    }

    /// The metrics in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!(error = %e, "encoding the anycast metrics");
        }
        text
    }
}

impl Default for AnycastMetrics {
    fn default() -> Self {
        AnycastMetrics::new()
    }
}

#[cfg(test)]
mod tests {
    use tokio::time::Instant;

    use super::*;

    #[tokio::test]
    async fn the_current_reason_is_the_one_at_one() {
        let metrics = AnycastMetrics::new();
        let mut status = Status::starting(Instant::now());
        status.reason = Reason::NoRegion;
        metrics.record(&status);
        metrics.withdrawn(Reason::NoRegion);
        let text = metrics.render();
        for line in [
            "meridian_edge_anycast_announced 0",
            "meridian_edge_anycast_reason{reason=\"no_region\"} 1",
            "meridian_edge_anycast_reason{reason=\"healthy\"} 0",
            "meridian_edge_anycast_withdrawals_total{reason=\"no_region\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line} in\n{text}");
        }
    }
}
