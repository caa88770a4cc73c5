//! The certificates' metrics: how many domains are in each state, ACME orders by result, and
//! the time left on the certificate that expires first.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// The certificates' metrics, registered once per plane.
#[derive(Clone, Default)]
pub struct CertificateMetrics {
    states: Family<StateLabel, Gauge>,
    orders: Family<ResultLabel, Counter>,
    expiry: Gauge,
}

impl CertificateMetrics {
    /// Registers the metrics in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = CertificateMetrics::default();
        registry.register(
            "meridian_control_certificates",
            "Claimed public domains by the state of their certificate (pending, valid, failed)",
            metrics.states.clone(),
        );
        registry.register(
            "meridian_control_acme_orders",
            "ACME orders by result (issued, failed)",
            metrics.orders.clone(),
        );
        registry.register(
            "meridian_control_certificate_expiry_seconds",
            "Seconds until the first valid certificate expires (0 when there is none)",
            metrics.expiry.clone(),
        );
        metrics
    }

    /// Forgets every domain's state (a loop that starts over counts them again).
    pub fn reset(&self) {
        self.states.clear();
    }

    /// One more domain in `state`.
    pub fn enter(&self, state: &'static str) {
        self.states.get_or_create(&StateLabel { state }).inc();
    }

    /// One domain fewer in `state`.
    pub fn leave(&self, state: &'static str) {
        self.states.get_or_create(&StateLabel { state }).dec();
    }

    /// Counts an ACME order that `issued` a certificate or failed.
    pub fn order(&self, issued: bool) {
        let result = if issued { "issued" } else { "failed" };
        self.orders.get_or_create(&ResultLabel { result }).inc();
    }

    /// Sets the time left on the first certificate to expire.
    pub fn set_expiry(&self, seconds: i64) {
        self.expiry.set(seconds.max(0));
    }
}
