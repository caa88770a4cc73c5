//! The client side of convergence: what it costs a proxy to take one endpoint change, with
//! 1,000 or 10,000 clusters. In this process, a proxy following the gateway fixture
//! (`meridian_proxy::xds_fixture`: N services, a Cluster and a ClusterLoadAssignment each)
//! takes one ClusterLoadAssignment change at a time as its xDS client does: the response applied
//! to what the client holds, then the proxy's handler (translation and apply). Reference, in the
//! same run: a full apply of the same configuration, which every update cost before (on top of
//! translating every resource through JSON and YAML).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryResponse, Resource};
use meridian_bench::percentile;
use meridian_proxy::{xds_fixture as fixture, Proxy, XdsHandler};
use meridian_xds::{apply_delta, Changes, Handler, ENDPOINT};
use rustix::time::{clock_gettime, ClockId};

/// CPU time of this process so far (all threads), to the nanosecond.
fn cpu_now() -> Duration {
    let t = clock_gettime(ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Wall and CPU time of `work`, in µs.
async fn timed<T>(work: impl std::future::Future<Output = T>) -> (T, f64, f64) {
    let (wall, cpu) = (Instant::now(), cpu_now());
    let out = work.await;
    let cpu = (cpu_now() - cpu).as_secs_f64() * 1e6;
    (out, wall.elapsed().as_secs_f64() * 1e6, cpu)
}

/// Medians (and the p99 of wall time) of one kind of apply, µs.
struct Cost {
    wall: f64,
    wall_p99: f64,
    cpu: f64,
}

fn cost(mut wall: Vec<f64>, mut cpu: Vec<f64>) -> Cost {
    Cost {
        wall: percentile(&mut wall, 50.0),
        wall_p99: percentile(&mut wall, 99.0),
        cpu: percentile(&mut cpu, 50.0),
    }
}

/// Measures one endpoint change against a full apply at `clusters` clusters.
async fn measure(clusters: usize, changes: usize, fulls: usize) -> Result<(Cost, Cost)> {
    let proxy = Arc::new(Proxy::default());
    let mut handler = XdsHandler::new(proxy.clone(), None);
    let mut held = fixture::resources(clusters, "127.0.0.1:0".parse()?);
    handler
        .accept(&held, ENDPOINT)
        .await
        .map_err(anyhow::Error::msg)?;
    let (mut wall, mut cpu) = (Vec::new(), Vec::new());
    for _ in 0..fulls {
        let config = proxy.config().await.context("nothing applied")?;
        let (applied, w, c) = timed(proxy.apply(config)).await;
        applied?;
        wall.push(w);
        cpu.push(c);
    }
    let full = cost(wall, cpu);
    let (mut wall, mut cpu) = (Vec::new(), Vec::new());
    for change in 0..changes {
        // A different service each time, its endpoint moved to a port it never had.
        let service = (change * 7919) % clusters;
        let name = fixture::service(service);
        let port = 20_000 + (change % 40_000) as u16;
        let mut response = DeltaDiscoveryResponse {
            type_url: ENDPOINT.to_owned(),
            resources: vec![Resource {
                name: name.clone(),
                version: format!("c{change}"),
                resource: Some(fixture::assignment(service, &[port])),
                ..Default::default()
            }],
            nonce: change.to_string(),
            ..Default::default()
        };
        let work = async {
            let applied = apply_delta(&mut held, &mut response).map_err(anyhow::Error::msg)?;
            let changes = Changes {
                type_url: ENDPOINT,
                names: &applied.names,
            };
            handler
                .accept_changes(&held, &changes)
                .await
                .map_err(anyhow::Error::msg)
        };
        let (accepted, w, c) = timed(work).await;
        accepted?;
        wall.push(w);
        cpu.push(c);
    }
    Ok((cost(wall, cpu), full))
}

/// Prints the table for each cluster count.
pub async fn report(counts: &[usize]) -> Result<()> {
    println!();
    println!("client side: one endpoint change applied by a proxy with N clusters (in process)");
    println!(
        "{:>7} {:>14} {:>14} {:>12} {:>16} {:>14} {:>8}",
        "N",
        "change µs p50",
        "change µs p99",
        "change CPU",
        "full apply µs",
        "full CPU µs",
        "ratio"
    );
    for n in counts {
        let (one, full) = measure(*n, 500, 5).await?;
        println!(
            "{:>7} {:>14.0} {:>14.0} {:>12.0} {:>16.0} {:>14.0} {:>7.0}x",
            n,
            one.wall,
            one.wall_p99,
            one.cpu,
            full.wall,
            full.cpu,
            full.cpu / one.cpu.max(0.001)
        );
    }
    println!("(change: the client applying the response and the proxy translating and applying it; full apply: Proxy::apply of the same configuration, the least every update cost before; ratio of CPU)");
    Ok(())
}
