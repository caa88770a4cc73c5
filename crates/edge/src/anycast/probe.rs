//! The checks that need the network: the edge's own listener, asked over HTTP at each anycast
//! address (the way clients come), and the gateways of the regions that report healthy
//! instances, reached over TCP. Each runs every probe interval, bounded by the probe timeout;
//! a check fails after `fall` failed rounds in a row and passes again at the first good one.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use super::options::HealthOptions;
use super::replace;

/// What the listener probe says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerCheck {
    /// Whether the listener answers.
    pub ok: bool,
    /// The last failure, if it fails.
    pub detail: String,
}

/// What the region probe says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RegionCheck {
    /// The regions with healthy instances whose gateway answers.
    pub reachable: Vec<String>,
    /// The regions with healthy instances.
    pub known: usize,
}

/// A region with healthy instances and its gateway, as the edge's configuration has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gateway {
    /// The region.
    pub region: String,
    /// Where its gateway listens for edges.
    pub address: SocketAddr,
}

/// Probes the listener at `targets` (each anycast address at the listener's port) for as long
/// as the task runs, publishing what it finds.
pub async fn probe_listener(
    targets: Vec<SocketAddr>,
    health: HealthOptions,
    out: watch::Sender<ListenerCheck>,
) {
    let mut failures = 0;
    loop {
        let round = Instant::now();
        let mut failed = None;
        for target in &targets {
            if let Err(e) = ask(*target, health.probe_timeout).await {
                failed = Some(format!("http://{target}/: {e}"));
                break;
            }
        }
        match failed {
            None => {
                failures = 0;
                out.send_if_modified(|check| {
                    replace(
                        check,
                        ListenerCheck {
                            ok: true,
                            detail: String::new(),
                        },
                    )
                });
            }
            Some(detail) => {
                failures += 1;
                if failures >= health.fall {
                    if out.borrow().ok {
                        tracing::warn!(%detail, "the edge's listener does not answer");
                    }
                    out.send_if_modified(|check| {
                        replace(check, ListenerCheck { ok: false, detail })
                    });
                }
            }
        }
        tokio::time::sleep_until(round + health.probe_interval).await;
    }
}

/// One HTTP request to the listener: any HTTP answer (a 404 for the made-up host, say) shows
/// that it serves.
async fn ask(target: SocketAddr, timeout: Duration) -> Result<(), String> {
    let exchange = async {
        let mut stream = TcpStream::connect(target)
            .await
            .map_err(|e| e.to_string())?;
        stream
            .write_all(
                b"HEAD / HTTP/1.1\r\nHost: anycast-probe.invalid\r\nConnection: close\r\n\r\n",
            )
            .await
            .map_err(|e| e.to_string())?;
        let mut head = [0u8; 12];
        stream
            .read_exact(&mut head)
            .await
            .map_err(|e| format!("no answer: {e}"))?;
        if head.starts_with(b"HTTP/1.") {
            Ok(())
        } else {
            Err("the answer is not HTTP".to_owned())
        }
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "no answer within {}",
            humantime::format_duration(timeout)
        )),
    }
}

/// Probes the gateways that `gateways` lists (it changes with the configuration) for as long as
/// the task runs, publishing which regions are reachable. A probe starts every interval
/// whether the ones before finished or not, so that a region whose gateway stopped answering
/// (packets dropped: each probe takes the whole timeout) is found out in about
/// `(fall - 1) × interval + timeout`, not `fall × timeout`.
pub async fn probe_regions(
    mut gateways: watch::Receiver<Vec<Gateway>>,
    health: HealthOptions,
    out: watch::Sender<RegionCheck>,
) {
    // Failed probes in a row, per region; a region not probed yet counts as unreachable.
    let mut failures: BTreeMap<String, u32> = BTreeMap::new();
    let mut probes = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(health.probe_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                for (region, addresses) in by_region(&gateways.borrow_and_update()) {
                    probes.spawn(probe_region(region, addresses, health.probe_timeout));
                }
            }
            Some(Ok((region, answered))) = probes.join_next() => {
                let known = by_region(&gateways.borrow());
                if !known.contains_key(&region) {
                    continue;
                }
                let count = failures.entry(region).or_insert(health.fall);
                *count = if answered { 0 } else { count.saturating_add(1) };
            }
            // New gateways are probed at once.
            changed = gateways.changed() => {
                if changed.is_err() {
                    return;
                }
                tick.reset_immediately();
            }
        }
        let known = by_region(&gateways.borrow());
        failures.retain(|region, _| known.contains_key(region));
        let check = RegionCheck {
            reachable: failures
                .iter()
                .filter(|(_, count)| **count < health.fall)
                .map(|(region, _)| region.clone())
                .collect(),
            known: known.len(),
        };
        out.send_if_modified(|old| replace(old, check));
    }
}

/// The gateways by region.
fn by_region(gateways: &[Gateway]) -> BTreeMap<String, Vec<SocketAddr>> {
    let mut by_region: BTreeMap<String, Vec<SocketAddr>> = BTreeMap::new();
    for gateway in gateways {
        by_region
            .entry(gateway.region.clone())
            .or_default()
            .push(gateway.address);
    }
    by_region
}

/// Whether one of a region's gateways accepts a TCP connection within `timeout`.
async fn probe_region(
    region: String,
    addresses: Vec<SocketAddr>,
    timeout: Duration,
) -> (String, bool) {
    let connected = futures_util::future::join_all(
        addresses
            .iter()
            .map(|address| tokio::time::timeout(timeout, TcpStream::connect(*address))),
    )
    .await;
    let answered = connected.into_iter().any(|c| matches!(c, Ok(Ok(_))));
    (region, answered)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health() -> HealthOptions {
        HealthOptions {
            probe_interval: Duration::from_millis(20),
            probe_timeout: Duration::from_millis(500),
            fall: 2,
            hold_down: Duration::from_secs(1),
            hold_down_max: Duration::from_secs(1),
            max_stale: Duration::from_secs(1),
            guard_timeout: Duration::from_secs(1),
        }
    }

    async fn until<T: Clone>(rx: &mut watch::Receiver<T>, done: impl Fn(&T) -> bool) -> T {
        let wait = rx.wait_for(|v| done(v));
        let value = tokio::time::timeout(Duration::from_secs(10), wait).await;
        value.expect("in time").expect("the probe runs").clone()
    }

    #[tokio::test]
    async fn the_listener_check_follows_an_http_listener() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let serving = tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let _ = stream
                    .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                    .await;
            }
        });
        let (tx, mut rx) = watch::channel(ListenerCheck {
            ok: false,
            detail: String::new(),
        });
        let probe = tokio::spawn(probe_listener(vec![address], health(), tx));
        until(&mut rx, |c| c.ok).await;
        serving.abort();
        let _ = serving.await;
        let failed = until(&mut rx, |c| !c.ok).await;
        assert!(
            failed.detail.starts_with(&format!("http://{address}/: ")),
            "{}",
            failed.detail
        );
        probe.abort();
    }

    #[tokio::test]
    async fn a_region_is_reachable_while_its_gateway_accepts() {
        let gateway = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = gateway.local_addr().unwrap();
        let (gateways_tx, gateways) = watch::channel(vec![Gateway {
            region: "fra".into(),
            address,
        }]);
        let (tx, mut rx) = watch::channel(RegionCheck::default());
        let probe = tokio::spawn(probe_regions(gateways, health(), tx));
        let check = until(&mut rx, |c| !c.reachable.is_empty()).await;
        assert_eq!((check.reachable, check.known), (vec!["fra".to_owned()], 1));
        drop(gateway);
        until(&mut rx, |c| c.reachable.is_empty() && c.known == 1).await;
        gateways_tx.send_replace(Vec::new());
        until(&mut rx, |c| c.known == 0).await;
        probe.abort();
    }
}
