//! The request figures the regions report ([`TrafficWindow`]s), kept per service and region
//! for [`MAX_METRICS_WINDOW_SECONDS`] (soft state, in memory: a restarted global control plane
//! knows what the regions report from then on), and the answers of the metrics API made from
//! them: rates per step and over the window, percentiles from merged histograms.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::RwLock;

use meridian_model::{
    MetricsPoint, Rates, RegionMetrics, RequestFigures, ServiceMetrics, ServiceTraffic,
    TrafficWindow, MAX_METRICS_WINDOW_SECONDS, TRAFFIC_STEP_SECONDS,
};

/// A service: org, app and name.
type ServiceId = (String, String, String);

/// One service's figures in one region over one window.
#[derive(Debug, Clone)]
struct Sample {
    start: u64,
    served: RequestFigures,
    ingress: RequestFigures,
    open_connections: u64,
}

/// The figures of every service, by region, newest last.
#[derive(Debug, Default)]
pub struct TrafficHistory {
    inner: RwLock<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    by_service: HashMap<ServiceId, BTreeMap<String, VecDeque<Sample>>>,
    /// The end of the newest window any region reported, in Unix seconds.
    newest_end: u64,
}

impl TrafficHistory {
    /// Records `region`'s windows (already validated); a window reported again replaces the
    /// first report of it. Forgets what is older than [`MAX_METRICS_WINDOW_SECONDS`] before
    /// the newest window.
    pub fn record(&self, region: &str, windows: Vec<TrafficWindow>) {
        let mut inner = self
            .inner
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for window in windows {
            inner.newest_end = inner.newest_end.max(window.start + TRAFFIC_STEP_SECONDS);
            for traffic in window.services {
                let ServiceTraffic {
                    org,
                    app,
                    service,
                    served,
                    ingress,
                    open_connections,
                } = traffic;
                let samples = inner
                    .by_service
                    .entry((org, app, service))
                    .or_default()
                    .entry(region.to_owned())
                    .or_default();
                let sample = Sample {
                    start: window.start,
                    served,
                    ingress,
                    open_connections,
                };
                let at = samples.partition_point(|s| s.start < window.start);
                match samples.get_mut(at) {
                    Some(same) if same.start == window.start => *same = sample,
                    _ => samples.insert(at, sample),
                }
            }
        }
        let oldest = inner.newest_end.saturating_sub(MAX_METRICS_WINDOW_SECONDS);
        inner.by_service.retain(|_, regions| {
            regions.retain(|_, samples| {
                while samples.front().is_some_and(|s| s.start < oldest) {
                    samples.pop_front();
                }
                !samples.is_empty()
            });
            !regions.is_empty()
        });
    }

    /// Service `id`'s figures over the `window` seconds up to the end of the newest window
    /// any region reported, one point per `step` seconds (both checked by
    /// [`meridian_model::check_metrics_range`]), for `regions` (with the service's instances
    /// by state there) and any other region that reported figures of it.
    pub fn query(
        &self,
        id: &ServiceId,
        window: u64,
        step: u64,
        regions: BTreeMap<String, BTreeMap<String, u32>>,
        now: u64,
    ) -> ServiceMetrics {
        let inner = self
            .inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let end = if inner.newest_end == 0 {
            now / TRAFFIC_STEP_SECONDS * TRAFFIC_STEP_SECONDS
        } else {
            inner.newest_end
        };
        let start = end.saturating_sub(window);
        let empty = BTreeMap::new();
        let reported = inner.by_service.get(id).unwrap_or(&empty);
        let mut all = regions;
        for region in reported.keys() {
            all.entry(region.clone()).or_default();
        }
        let no_samples = VecDeque::new();
        let regions = all
            .into_iter()
            .map(|(region, instances)| {
                let samples = reported.get(&region).unwrap_or(&no_samples);
                let points = (0..window / step)
                    .map(|i| point(samples, start + i * step, step))
                    .collect();
                RegionMetrics {
                    total: point(samples, start, window),
                    region,
                    points,
                    instances,
                }
            })
            .collect();
        ServiceMetrics {
            window_seconds: window,
            step_seconds: step,
            end,
            regions,
        }
    }
}

/// The figures of `samples` from `start` for `seconds`.
fn point(samples: &VecDeque<Sample>, start: u64, seconds: u64) -> MetricsPoint {
    let mut served = RequestFigures::default();
    let mut ingress = RequestFigures::default();
    let mut open_connections = 0;
    let from = samples.partition_point(|s| s.start < start);
    for sample in samples
        .range(from..)
        .take_while(|s| s.start < start + seconds)
    {
        served.merge(&sample.served);
        ingress.merge(&sample.ingress);
        open_connections = sample.open_connections;
    }
    MetricsPoint {
        start,
        seconds,
        served: Rates::of(&served, seconds),
        ingress: Rates::of(&ingress, seconds),
        open_connections,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_model::{StatusClasses, LATENCY_BUCKETS};

    fn web(start: u64, ok: u64, failed: u64, bucket: usize) -> TrafficWindow {
        let mut latency_buckets = vec![0; LATENCY_BUCKETS];
        latency_buckets[bucket] = ok + failed;
        let served = RequestFigures {
            status: StatusClasses::from_counts([0, ok, 0, 0, failed]),
            latency_buckets,
        };
        TrafficWindow {
            start,
            services: vec![ServiceTraffic {
                org: "acme".into(),
                app: "shop".into(),
                service: "web".into(),
                served,
                ingress: RequestFigures::default(),
                open_connections: start / 10,
            }],
        }
    }

    fn id() -> ServiceId {
        ("acme".into(), "shop".into(), "web".into())
    }

    #[test]
    fn points_add_up_the_windows_of_their_step_and_regions_stay_apart() {
        let history = TrafficHistory::default();
        history.record("fra", vec![web(1000, 10, 0, 2), web(1010, 5, 5, 2)]);
        history.record("ams", vec![web(1010, 1, 0, 12)]);
        // A window reported again replaces the first report of it.
        history.record("fra", vec![web(1010, 8, 2, 2)]);
        let metrics = history.query(&id(), 20, 20, BTreeMap::new(), 5000);
        assert_eq!(metrics.end, 1020);
        assert_eq!(metrics.regions.len(), 2);
        let fra = metrics.regions.iter().find(|r| r.region == "fra").unwrap();
        assert_eq!(fra.points.len(), 1);
        assert_eq!(fra.total.served.requests, 20);
        assert_eq!(fra.total.served.status.server_error, 2);
        assert!((fra.total.served.requests_per_second - 1.0).abs() < 1e-9);
        assert!((fra.total.served.error_ratio_5xx - 0.1).abs() < 1e-9);
        assert_eq!(fra.total.open_connections, 101, "the last window's");
        let ams = metrics.regions.iter().find(|r| r.region == "ams").unwrap();
        assert_eq!(ams.total.served.requests, 1);
        // Two steps of 10 s: one window each.
        let metrics = history.query(&id(), 20, 10, BTreeMap::new(), 5000);
        let fra = metrics.regions.iter().find(|r| r.region == "fra").unwrap();
        let counts: Vec<u64> = fra.points.iter().map(|p| p.served.requests).collect();
        assert_eq!(counts, [10, 10]);
        assert_eq!(fra.points[0].start, 1000);
    }

    #[test]
    fn regions_that_run_the_service_show_without_figures_and_old_windows_go() {
        let history = TrafficHistory::default();
        history.record("fra", vec![web(1000, 10, 0, 2)]);
        history.record("fra", vec![web(1000 + MAX_METRICS_WINDOW_SECONDS, 1, 0, 2)]);
        let instances = BTreeMap::from([("healthy".to_owned(), 2)]);
        let wanted = BTreeMap::from([("sfo".to_owned(), instances.clone())]);
        let metrics = history.query(&id(), 3600, 3600, wanted, 0);
        assert_eq!(metrics.regions.len(), 2);
        let sfo = metrics.regions.iter().find(|r| r.region == "sfo").unwrap();
        assert_eq!((sfo.total.served.requests, &sfo.instances), (0, &instances));
        let fra = metrics.regions.iter().find(|r| r.region == "fra").unwrap();
        assert_eq!(
            fra.total.served.requests, 1,
            "the first window is forgotten"
        );
    }
}
