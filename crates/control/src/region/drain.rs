//! The regional control plane's part of draining an instance: once the instance left its
//! service's endpoints, wait until every proxy then subscribed to them (node proxies, the
//! gateway, proxyless gRPC clients) acknowledged the resources without it, at most
//! [`ACK_WAIT`]; then its assignment goes after the definition's `deploy.drain_delay`, and its
//! agent drains and stops it. A drain whose wait was cut short is counted.

use std::time::Duration;

use meridian_xds::Delivery;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::publish::Publisher;
use super::ServiceId;
use crate::fleet::InstanceKey;

/// The longest a drain waits for the proxies' acknowledgements; an instance leaving service
/// loses its assignment at most this (and its drain delay) after it left the endpoints.
pub const ACK_WAIT: Duration = Duration::from_secs(5);

/// One draining instance whose removal waits for the proxies' acknowledgements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckWait {
    /// The draining instance.
    pub instance: InstanceKey,
    /// The work that takes it out of its service's endpoints.
    pub(super) since: u64,
}

/// What drains waited for, as metrics.
#[derive(Clone)]
pub(super) struct DrainMetrics {
    /// Drains whose wait for acknowledgements reached [`ACK_WAIT`].
    pub timeouts: Counter,
    /// How long drains waited for acknowledgements.
    pub waits: Histogram,
}

impl DrainMetrics {
    pub fn new(registry: &mut Registry) -> DrainMetrics {
        let metrics = DrainMetrics {
            timeouts: Counter::default(),
            waits: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
        };
        registry.register(
            "meridian_control_drain_ack_timeouts",
            "Draining instances whose wait for the region's proxies to acknowledge their \
             removal from the endpoints reached its bound (some proxy did not answer)",
            metrics.timeouts.clone(),
        );
        registry.register(
            "meridian_control_drain_ack_wait_seconds",
            "How long a draining instance waited for the region's proxies to acknowledge its \
             removal from the endpoints",
            metrics.waits.clone(),
        );
        metrics
    }
}

/// Completes once the resources listing `service`'s endpoints, as published from work `since`
/// or a later one, are acknowledged by every stream that owed it. Looks again whenever a work
/// is published: a newer version that replaced one before it was pushed is waited for
/// instead (its streams would never acknowledge the one they were not sent).
pub(super) async fn acknowledged(publisher: &Publisher, service: &ServiceId, since: u64) {
    let mut landed = publisher.landed();
    loop {
        landed.borrow_and_update();
        // Not yet published from that work: wait for it.
        if let Some(names) = publisher.endpoint_resources(service, since) {
            let cache = publisher.cache();
            let owed: Vec<(Delivery, String)> = names
                .into_iter()
                .filter_map(|(type_url, name)| {
                    let delivery = cache.get(type_url, &name)?.delivery()?;
                    Some((delivery, name))
                })
                .collect();
            let all = async {
                for (delivery, name) in &owed {
                    delivery.acknowledged_name(name).await;
                }
            };
            tokio::select! {
                () = all => return,
                changed = landed.changed() => if changed.is_err() { break },
            }
        } else if landed.changed().await.is_err() {
            break;
        }
    }
    // Nothing is published any more: the wait ends by its bound.
    std::future::pending::<()>().await;
}
