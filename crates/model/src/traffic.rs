//! Request figures of services, as the proxies count them and the control planes add them up:
//! counts by status class and a latency histogram with fixed buckets ([`LATENCY_BOUNDS_MS`]),
//! so that the figures of many proxies merge by adding counts, and percentiles are computed
//! from the merged histogram (never averaged).
//!
//! A regional control plane cuts its proxies' cumulative figures into windows of
//! [`TRAFFIC_STEP_SECONDS`] ([`TrafficWindow`]) and reports them upward; the global API answers
//! a window of them per region as rates ([`ServiceMetrics`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The bounds of the latency buckets, in milliseconds, ascending; a last bucket holds what is
/// slower than the last bound. Every proxy and control plane shares them.
pub const LATENCY_BOUNDS_MS: [u64; 19] = [
    1, 2, 5, 10, 20, 50, 100, 150, 200, 300, 400, 500, 750, 1000, 1500, 2000, 3000, 5000, 10000,
];

/// How many latency buckets there are: one per bound, and one for slower requests.
pub const LATENCY_BUCKETS: usize = LATENCY_BOUNDS_MS.len() + 1;

/// The length of one window of figures, in seconds: regions count per window aligned on
/// multiples of it (Unix time), and the API's `step` is a multiple of it.
pub const TRAFFIC_STEP_SECONDS: u64 = 10;

/// Requests by the class of their response status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct StatusClasses {
    /// Informational (1xx).
    #[serde(rename = "1xx", default)]
    pub informational: u64,
    /// Success (2xx).
    #[serde(rename = "2xx", default)]
    pub success: u64,
    /// Redirection (3xx).
    #[serde(rename = "3xx", default)]
    pub redirection: u64,
    /// Client error (4xx).
    #[serde(rename = "4xx", default)]
    pub client_error: u64,
    /// Server error (5xx), the proxy's own included (the instance unreachable or too slow).
    #[serde(rename = "5xx", default)]
    pub server_error: u64,
}

impl StatusClasses {
    /// The counts of classes 1xx to 5xx, in that order.
    pub fn from_counts(counts: [u64; 5]) -> StatusClasses {
        let [informational, success, redirection, client_error, server_error] = counts;
        StatusClasses {
            informational,
            success,
            redirection,
            client_error,
            server_error,
        }
    }

    /// The counts of classes 1xx to 5xx, in that order.
    pub fn counts(&self) -> [u64; 5] {
        [
            self.informational,
            self.success,
            self.redirection,
            self.client_error,
            self.server_error,
        ]
    }

    /// Every request counted.
    pub fn total(&self) -> u64 {
        self.counts()
            .iter()
            .fold(0, |sum, n| sum.saturating_add(*n))
    }

    /// Adds `other`'s counts.
    pub fn merge(&mut self, other: &StatusClasses) {
        let mut sum = self.counts();
        for (mine, theirs) in sum.iter_mut().zip(other.counts()) {
            *mine = mine.saturating_add(theirs);
        }
        *self = StatusClasses::from_counts(sum);
    }
}

/// Request figures that add up: counts by status class and the latency histogram.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RequestFigures {
    /// Requests answered, by status class.
    #[serde(default)]
    pub status: StatusClasses,
    /// Requests by time from request head to response head: one count per bucket of
    /// [`LATENCY_BOUNDS_MS`] (a request of exactly a bound counts in its bucket), then one for
    /// the slower ones ([`LATENCY_BUCKETS`] in all; empty when there were none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub latency_buckets: Vec<u64>,
}

impl RequestFigures {
    /// Whether nothing was counted.
    pub fn is_empty(&self) -> bool {
        self.status.total() == 0 && self.latency_buckets.iter().all(|n| *n == 0)
    }

    /// Adds `other`'s figures: counts class by class and bucket by bucket.
    pub fn merge(&mut self, other: &RequestFigures) {
        self.status.merge(&other.status);
        if self.latency_buckets.len() < other.latency_buckets.len() {
            self.latency_buckets.resize(other.latency_buckets.len(), 0);
        }
        for (mine, theirs) in self.latency_buckets.iter_mut().zip(&other.latency_buckets) {
            *mine = mine.saturating_add(*theirs);
        }
    }

    /// The latency under which `per_mille` thousandths of the requests were answered (see
    /// [`quantile_ms`]).
    pub fn quantile_ms(&self, per_mille: u64) -> Option<f64> {
        quantile_ms(&self.latency_buckets, per_mille)
    }
}

/// The latency, in milliseconds, under which `per_mille` thousandths of the requests counted in
/// `buckets` (per bucket of [`LATENCY_BOUNDS_MS`], then the slower ones) were answered:
/// interpolated linearly within its bucket, as Prometheus' `histogram_quantile` does; the last
/// bound when it falls beyond it; `None` without requests.
pub fn quantile_ms(buckets: &[u64], per_mille: u64) -> Option<f64> {
    let total = buckets.iter().fold(0u64, |sum, n| sum.saturating_add(*n));
    if total == 0 {
        return None;
    }
    // The rank of the quantile, rounded up: of 100 requests, the 99th is the p99.
    let rank = u128::from(total) * u128::from(per_mille.clamp(1, 1000));
    let rank = rank.div_ceil(1000);
    let mut below: u128 = 0;
    for (i, count) in buckets.iter().enumerate() {
        let count = u128::from(*count);
        if count > 0 && below + count >= rank {
            let Some(upper) = LATENCY_BOUNDS_MS.get(i) else {
                break;
            };
            let lower = i.checked_sub(1).map_or(0, |j| LATENCY_BOUNDS_MS[j]);
            let within = (rank - below) as f64 / count as f64;
            return Some(lower as f64 + (upper - lower) as f64 * within);
        }
        below += count;
    }
    Some(LATENCY_BOUNDS_MS[LATENCY_BOUNDS_MS.len() - 1] as f64)
}

/// One service's figures in a region over one window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ServiceTraffic {
    /// Owning org.
    pub org: String,
    /// Owning app.
    pub app: String,
    /// The service.
    pub service: String,
    /// The requests its instances were asked, from the region's gateways and from other
    /// services, as the node proxies in front of the instances counted them.
    #[serde(default)]
    pub served: RequestFigures,
    /// The requests the region's gateways answered for it (from the edges), those no instance
    /// could take included.
    #[serde(default)]
    pub ingress: RequestFigures,
    /// Client connections open to its instances' node proxies at the window's end.
    #[serde(default)]
    pub open_connections: u64,
}

/// The figures of a region's services over one window of [`TRAFFIC_STEP_SECONDS`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TrafficWindow {
    /// When it starts, in seconds since the Unix epoch (a multiple of
    /// [`TRAFFIC_STEP_SECONDS`]).
    pub start: u64,
    /// The services that had requests or open connections in it.
    pub services: Vec<ServiceTraffic>,
}

/// The rates of some [`RequestFigures`] over a stretch of time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Rates {
    /// Requests answered, by status class.
    pub status: StatusClasses,
    /// All of them.
    pub requests: u64,
    /// Requests per second.
    pub requests_per_second: f64,
    /// The share of requests answered 4xx (0 to 1; 0 without requests).
    pub error_ratio_4xx: f64,
    /// The share of requests answered 5xx (0 to 1; 0 without requests).
    pub error_ratio_5xx: f64,
    /// Latency percentiles from the merged histogram (none without requests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<Percentiles>,
}

/// Latency percentiles, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Percentiles {
    /// The median.
    pub p50: f64,
    /// The 90th percentile.
    pub p90: f64,
    /// The 99th percentile.
    pub p99: f64,
}

impl Rates {
    /// The rates of `figures` counted over `seconds`.
    pub fn of(figures: &RequestFigures, seconds: u64) -> Rates {
        let requests = figures.status.total();
        let ratio = |n: u64| {
            if requests == 0 {
                0.0
            } else {
                n as f64 / requests as f64
            }
        };
        let latency_ms = match (
            figures.quantile_ms(500),
            figures.quantile_ms(900),
            figures.quantile_ms(990),
        ) {
            (Some(p50), Some(p90), Some(p99)) => Some(Percentiles { p50, p90, p99 }),
            _ => None,
        };
        Rates {
            status: figures.status,
            requests,
            requests_per_second: requests as f64 / seconds.max(1) as f64,
            error_ratio_4xx: ratio(figures.status.client_error),
            error_ratio_5xx: ratio(figures.status.server_error),
            latency_ms,
        }
    }
}

/// A service's figures in a region over one step (or over the whole window).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MetricsPoint {
    /// When it starts, in seconds since the Unix epoch.
    pub start: u64,
    /// How long it lasts, in seconds.
    pub seconds: u64,
    /// The requests its instances were asked (from gateways and other services), as the node
    /// proxies in front of them counted.
    pub served: Rates,
    /// The requests the region's gateways answered for it, those no instance could take
    /// included.
    pub ingress: Rates,
    /// Client connections open to its instances at the end (the last window reported in it).
    pub open_connections: u64,
}

/// A service's figures in one region.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RegionMetrics {
    /// The region.
    pub region: String,
    /// The whole window at once.
    pub total: MetricsPoint,
    /// One point per step, oldest first.
    pub points: Vec<MetricsPoint>,
    /// Its instances there now, by state (`pending`: placed, not reported yet; `starting`,
    /// `healthy`, `unhealthy`, `failed`, `stopped`), as the region last reported.
    pub instances: BTreeMap<String, u32>,
}

/// A service's figures per region over a window (`GET …/services/{service}/metrics`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ServiceMetrics {
    /// The window, in seconds.
    pub window_seconds: u64,
    /// The step between points, in seconds.
    pub step_seconds: u64,
    /// When the window ends, in seconds since the Unix epoch: the end of the last window the
    /// regions reported.
    pub end: u64,
    /// Each region that runs the service or reported figures of it in the window.
    pub regions: Vec<RegionMetrics>,
}

/// The longest window the API answers, in seconds (the history the global control plane
/// keeps).
pub const MAX_METRICS_WINDOW_SECONDS: u64 = 3600;
/// Checks a window and step asked of the metrics API: the step a multiple of
/// [`TRAFFIC_STEP_SECONDS`], the window a multiple of the step and at most
/// [`MAX_METRICS_WINDOW_SECONDS`] (so at most 360 points).
pub fn check_metrics_range(window: u64, step: u64) -> Result<(), crate::ValidationErrors> {
    let mut errs = crate::ValidationErrors::default();
    if step == 0 || !step.is_multiple_of(TRAFFIC_STEP_SECONDS) {
        errs.push(
            "step",
            format!("must be a positive multiple of {TRAFFIC_STEP_SECONDS}s"),
        );
    } else if window == 0 || !window.is_multiple_of(step) {
        errs.push("window", "must be a positive multiple of step");
    }
    if window > MAX_METRICS_WINDOW_SECONDS {
        errs.push(
            "window",
            format!("at most {MAX_METRICS_WINDOW_SECONDS}s (the history kept)"),
        );
    }
    errs.into_result()
}

/// A component whose admin port serves Prometheus metrics (`/metrics`), for service
/// discovery.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsTarget {
    /// Where its admin port listens, `ip:port`.
    pub address: String,
    /// What it is: `control`, `agent`, `gateway` or `edge`.
    pub role: String,
    /// Its node (agents), node id (gateways, edges) or region (control planes).
    pub node: String,
}

/// Most metrics targets one region may report.
pub const MAX_REPORTED_TARGETS: usize = 10_000;

/// Checks the metrics targets a region reports: at most [`MAX_REPORTED_TARGETS`], each at a
/// socket address, with a known role and a short node name.
pub fn validate_targets(targets: &[MetricsTarget]) -> Result<(), crate::ValidationErrors> {
    let mut errs = crate::ValidationErrors::default();
    if targets.len() > MAX_REPORTED_TARGETS {
        errs.push("targets", format!("at most {MAX_REPORTED_TARGETS}"));
        return errs.into_result();
    }
    for (i, target) in targets.iter().enumerate() {
        if target.address.parse::<std::net::SocketAddr>().is_err() {
            errs.push(format!("targets[{i}].address"), "must be ip:port");
        }
        if !["control", "agent", "gateway", "edge"].contains(&target.role.as_str()) {
            errs.push(
                format!("targets[{i}].role"),
                "must be control, agent, gateway or edge",
            );
        }
        if target.node.len() > 253 || target.node.chars().any(char::is_control) {
            errs.push(
                format!("targets[{i}].node"),
                "at most 253 characters, no control characters",
            );
        }
    }
    errs.into_result()
}

/// The window the metrics API answers when none is asked, in seconds.
pub const DEFAULT_METRICS_WINDOW_SECONDS: u64 = 300;

/// The window and step (`5m`, `10s`: humantime durations, whole seconds) asked of the metrics
/// API, in seconds, checked by [`check_metrics_range`]; a missing one is
/// [`DEFAULT_METRICS_WINDOW_SECONDS`] and [`TRAFFIC_STEP_SECONDS`].
pub fn parse_metrics_range(
    window: Option<&str>,
    step: Option<&str>,
) -> Result<(u64, u64), crate::ValidationErrors> {
    let mut errs = crate::ValidationErrors::default();
    let mut seconds = |field: &str, text: Option<&str>| -> Option<Option<u64>> {
        let text = text?;
        match humantime::parse_duration(text) {
            Ok(d) if d.subsec_nanos() == 0 => Some(Some(d.as_secs())),
            Ok(_) => {
                errs.push(field, "must be whole seconds");
                Some(None)
            }
            Err(e) => {
                errs.push(
                    field,
                    format!("`{text}` is not a duration (e.g. 5m, 10s): {e}"),
                );
                Some(None)
            }
        }
    };
    let window = seconds("window", window);
    let step = seconds("step", step);
    errs.into_result()?;
    let window = window.flatten().unwrap_or(DEFAULT_METRICS_WINDOW_SECONDS);
    let step = step.flatten().unwrap_or(TRAFFIC_STEP_SECONDS);
    check_metrics_range(window, step)?;
    Ok((window, step))
}

/// Most windows one report upward carries (a region that could not report for longer sends
/// its latest ones).
pub const MAX_REPORTED_WINDOWS: usize = 30;

/// Checks the windows a region reports: at most [`MAX_REPORTED_WINDOWS`], each starting on a
/// multiple of [`TRAFFIC_STEP_SECONDS`] with at most [`crate::MAX_REPORTED_SERVICES`]
/// services, whose names are DNS labels and whose histograms have [`LATENCY_BUCKETS`] buckets
/// (or none).
pub fn validate_traffic(windows: &[TrafficWindow]) -> Result<(), crate::ValidationErrors> {
    let mut errs = crate::ValidationErrors::default();
    if windows.len() > MAX_REPORTED_WINDOWS {
        errs.push(
            "windows",
            format!("at most {MAX_REPORTED_WINDOWS} per report"),
        );
        return errs.into_result();
    }
    for (w, window) in windows.iter().enumerate() {
        if !window.start.is_multiple_of(TRAFFIC_STEP_SECONDS) {
            errs.push(
                format!("windows[{w}].start"),
                format!("must be a multiple of {TRAFFIC_STEP_SECONDS}"),
            );
        }
        if window.services.len() > crate::MAX_REPORTED_SERVICES {
            errs.push(
                format!("windows[{w}].services"),
                format!("at most {} per window", crate::MAX_REPORTED_SERVICES),
            );
            continue;
        }
        for (i, service) in window.services.iter().enumerate() {
            let at = format!("windows[{w}].services[{i}]");
            for (name, value) in [
                ("org", &service.org),
                ("app", &service.app),
                ("service", &service.service),
            ] {
                if let Err(reason) = crate::check_dns_label(value) {
                    errs.push(format!("{at}.{name}"), reason);
                }
            }
            for (name, figures) in [("served", &service.served), ("ingress", &service.ingress)] {
                let buckets = figures.latency_buckets.len();
                if buckets != 0 && buckets != LATENCY_BUCKETS {
                    errs.push(
                        format!("{at}.{name}.latency_buckets"),
                        format!("must have {LATENCY_BUCKETS} buckets (or none)"),
                    );
                }
            }
        }
    }
    errs.into_result()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` requests in the bucket of `ms`.
    fn at(ms: u64, n: u64) -> RequestFigures {
        let mut latency_buckets = vec![0; LATENCY_BUCKETS];
        latency_buckets[LATENCY_BOUNDS_MS.partition_point(|b| *b < ms)] = n;
        RequestFigures {
            status: StatusClasses {
                success: n,
                ..Default::default()
            },
            latency_buckets,
        }
    }

    #[test]
    fn merging_adds_counts_class_by_class_and_bucket_by_bucket() {
        let mut merged = RequestFigures::default();
        merged.merge(&at(3, 10));
        merged.merge(&at(3, 5));
        let mut errors = at(250, 2);
        errors.status = StatusClasses::from_counts([0, 0, 0, 1, 1]);
        merged.merge(&errors);
        assert_eq!(merged.status, StatusClasses::from_counts([0, 15, 0, 1, 1]));
        assert_eq!(merged.status.total(), 17);
        assert_eq!(merged.latency_buckets.len(), LATENCY_BUCKETS);
        assert_eq!(merged.latency_buckets[2], 15, "2 to 5 ms");
        assert_eq!(merged.latency_buckets[9], 2, "200 to 300 ms");
        // Merging nothing changes nothing.
        let before = merged.clone();
        merged.merge(&RequestFigures::default());
        assert_eq!(merged, before);
    }

    #[test]
    fn percentiles_come_from_the_merged_histogram_not_from_averaged_percentiles() {
        // A fast proxy (98 requests at 1-2 ms) and a slow one (2 requests at 1-1.5 s): the
        // merged p99 is slow, the average of their p99s would be ~750 ms, their p50s ~1 ms.
        let fast = at(2, 98);
        let slow = at(1500, 2);
        let mut merged = fast.clone();
        merged.merge(&slow);
        let p99 = merged.quantile_ms(990).unwrap();
        assert!(p99 > 1000.0 && p99 <= 1500.0, "{p99}");
        let p50 = merged.quantile_ms(500).unwrap();
        assert!((1.0..=2.0).contains(&p50), "{p50}");
        let averaged = (fast.quantile_ms(990).unwrap() + slow.quantile_ms(990).unwrap()) / 2.0;
        assert!((p99 - averaged).abs() > 100.0);
    }

    #[test]
    fn percentiles_interpolate_within_their_bucket() {
        // 100 requests between 300 and 400 ms: the p99 is 99% of the way, the p50 halfway.
        let figures = at(400, 100);
        assert_eq!(figures.quantile_ms(990), Some(399.0));
        assert_eq!(figures.quantile_ms(500), Some(350.0));
        // Beyond the last bound: the last bound. No requests: none.
        assert_eq!(at(60_000, 10).quantile_ms(990), Some(10_000.0));
        assert_eq!(RequestFigures::default().quantile_ms(500), None);
        // Empty buckets before the rank are skipped.
        let mut spread = at(1, 1);
        spread.merge(&at(100, 1));
        assert_eq!(spread.quantile_ms(500), Some(1.0));
        assert_eq!(spread.quantile_ms(1000), Some(100.0));
    }

    #[test]
    fn rates_give_per_second_figures_and_error_ratios_by_class() {
        let mut figures = at(3, 6);
        figures.status = StatusClasses::from_counts([0, 3, 0, 2, 1]);
        let rates = Rates::of(&figures, 10);
        assert_eq!(rates.requests, 6);
        assert!((rates.requests_per_second - 0.6).abs() < 1e-9);
        assert!((rates.error_ratio_4xx - 2.0 / 6.0).abs() < 1e-9);
        assert!((rates.error_ratio_5xx - 1.0 / 6.0).abs() < 1e-9);
        assert!(rates.latency_ms.is_some());
        let none = Rates::of(&RequestFigures::default(), 10);
        assert_eq!((none.requests, none.error_ratio_5xx), (0, 0.0));
        assert_eq!(none.latency_ms, None);
    }

    #[test]
    fn status_classes_serialize_by_class_name() {
        let json = serde_json::to_value(StatusClasses::from_counts([1, 2, 3, 4, 5])).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"1xx": 1, "2xx": 2, "3xx": 3, "4xx": 4, "5xx": 5})
        );
    }

    #[test]
    fn windows_and_steps_parse_as_durations_with_defaults() {
        assert_eq!(parse_metrics_range(Some("5m"), Some("10s")), Ok((300, 10)));
        assert_eq!(parse_metrics_range(None, None), Ok((300, 10)));
        assert_eq!(parse_metrics_range(Some("1h"), None), Ok((3600, 10)));
        let field = |window, step| {
            parse_metrics_range(window, step).unwrap_err().errors[0]
                .field
                .clone()
        };
        assert_eq!(field(Some("soon"), Some("10s")), "window");
        assert_eq!(field(Some("5m"), Some("1.5s")), "step");
        assert_eq!(field(Some("5m"), Some("7s")), "step");
    }

    #[test]
    fn a_bad_window_or_step_names_its_parameter() {
        assert!(check_metrics_range(300, 10).is_ok());
        assert!(check_metrics_range(3600, 60).is_ok());
        let field = |window, step| {
            check_metrics_range(window, step).unwrap_err().errors[0]
                .field
                .clone()
        };
        assert_eq!(field(300, 15), "step");
        assert_eq!(field(300, 0), "step");
        assert_eq!(field(305, 10), "window");
        assert_eq!(field(0, 10), "window");
        assert_eq!(field(7200, 60), "window");
        assert!(check_metrics_range(3600, 10).is_ok(), "360 points at most");
    }
}
