//! The fixed ports of `meridian dev`, looked at before anything starts: a port that another
//! program holds is an error at once that names it, rather than a component that never serves
//! (gateways and edges get their listeners in their configuration, and refuse a configuration
//! whose port they cannot bind, while dev waits for them).

use std::net::SocketAddr;

use anyhow::{bail, Result};

use super::{Ports, EDGES, EDGE_LISTENER_OFFSET, REGIONS};

/// Every fixed address dev listens on, with what listens there: the API at `listen` (unless its
/// port is 0), the gateways from `gateway_port` (and their listeners for edges above them), the
/// edges from `edge` (plain HTTP) and `edge_https`.
pub fn used(listen: SocketAddr, ports: &Ports) -> Vec<(SocketAddr, String)> {
    let at = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let mut used = Vec::new();
    if listen.port() != 0 {
        used.push((listen, "the public API (--listen)".to_owned()));
    }
    for (i, (region, _, _)) in REGIONS.iter().enumerate() {
        let port = ports.gateway.saturating_add(i as u16);
        used.push((at(port), format!("gateway {region} (--gateway-port)")));
        used.push((
            at(port.saturating_add(EDGE_LISTENER_OFFSET)),
            format!(
                "gateway {region}'s listener for edges (--gateway-port + {EDGE_LISTENER_OFFSET})"
            ),
        ));
    }
    for (i, (edge, _, _)) in EDGES.iter().enumerate() {
        let port = ports.edge.saturating_add(i as u16);
        used.push((at(port), format!("edge {edge} (--edge-port)")));
        let https = ports.edge_https.saturating_add(i as u16);
        used.push((
            at(https),
            format!("edge {edge}'s HTTPS (--edge-https-port)"),
        ));
    }
    used
}

/// Fails, naming the address, what dev would run there and the system's reason, if one of
/// `used` cannot be listened on.
pub fn check_free(used: &[(SocketAddr, String)]) -> Result<()> {
    for (address, what) in used {
        if let Err(e) = listen(*address) {
            bail!(
                "cannot listen on {address} for {what}: {e}; stop what holds it, or choose \
                 other ports with --listen, --gateway-port, --edge-port and --edge-https-port"
            );
        }
    }
    Ok(())
}

/// Listens on `address` and lets it go: as the components listen (SO_REUSEADDR, so that the
/// connections a previous run left in TIME_WAIT do not count).
fn listen(address: SocketAddr) -> std::io::Result<()> {
    let socket = match address {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(1).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_held_port_is_named_with_the_reason() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = held.local_addr().unwrap();
        let free = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let free_address = free.local_addr().unwrap();
        drop(free);
        let used = [
            (free_address, "the free one".to_owned()),
            (address, "edge par (--edge-port)".to_owned()),
        ];
        let err = check_free(&used).unwrap_err().to_string();
        assert!(
            err.contains(&format!(
                "cannot listen on {address} for edge par (--edge-port)"
            )),
            "{err}"
        );
        assert!(err.contains("in use"), "{err}");
        check_free(&used[..1]).unwrap();
    }

    #[test]
    fn every_fixed_port_is_looked_at() {
        let listen: SocketAddr = "127.0.0.1:7070".parse().unwrap();
        let fixed = Ports {
            gateway: 18080,
            edge: 18090,
            edge_https: 18443,
        };
        let ports: Vec<u16> = used(listen, &fixed).iter().map(|(a, _)| a.port()).collect();
        assert_eq!(
            ports,
            [7070, 18080, 18180, 18081, 18181, 18082, 18182, 18090, 18443, 18091, 18444]
        );
        let any = "127.0.0.1:0".parse().unwrap();
        assert_eq!(used(any, &fixed).len(), 10);
    }
}
