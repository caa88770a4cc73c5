//! The fixed ports of `meridian dev`, looked at before anything starts: a port that another
//! program holds is an error at once that names it, rather than a component that never serves
//! (gateways and edges get their listeners in their configuration, and refuse a configuration
//! whose port they cannot bind, while dev waits for them).

use std::net::SocketAddr;

use anyhow::{bail, Result};

use super::{Ports, EDGES, EDGE_LISTENER_OFFSET, REGIONS};

/// What a fixed port is held with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A TCP listener.
    Tcp,
    /// A UDP socket (an edge's HTTP/3 beside its HTTPS port).
    Udp,
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Tcp => "TCP",
            Transport::Udp => "UDP",
        })
    }
}

/// Every fixed address dev listens on, with what listens there: the API at `listen` (unless its
/// port is 0), the gateways from `gateway_port` (and their listeners for edges above them), the
/// edges from `edge` (plain HTTP) and `edge_https` (TCP, and UDP for HTTP/3).
pub fn used(listen: SocketAddr, ports: &Ports) -> Vec<(SocketAddr, Transport, String)> {
    let at = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let mut used = Vec::new();
    if listen.port() != 0 {
        used.push((
            listen,
            Transport::Tcp,
            "the public API (--listen)".to_owned(),
        ));
    }
    for (i, (region, _, _)) in REGIONS.iter().enumerate() {
        let port = ports.gateway.saturating_add(i as u16);
        used.push((
            at(port),
            Transport::Tcp,
            format!("gateway {region} (--gateway-port)"),
        ));
        used.push((
            at(port.saturating_add(EDGE_LISTENER_OFFSET)),
            Transport::Tcp,
            format!(
                "gateway {region}'s listener for edges (--gateway-port + {EDGE_LISTENER_OFFSET})"
            ),
        ));
    }
    for (i, (edge, _, _)) in EDGES.iter().enumerate() {
        let port = ports.edge.saturating_add(i as u16);
        used.push((
            at(port),
            Transport::Tcp,
            format!("edge {edge} (--edge-port)"),
        ));
        let https = ports.edge_https.saturating_add(i as u16);
        for transport in [Transport::Tcp, Transport::Udp] {
            used.push((
                at(https),
                transport,
                format!("edge {edge}'s HTTPS (--edge-https-port)"),
            ));
        }
    }
    used
}

/// Fails, naming the address, what dev would run there and the system's reason, if one of
/// `used` cannot be listened on.
pub fn check_free(used: &[(SocketAddr, Transport, String)]) -> Result<()> {
    for (address, transport, what) in used {
        let free = match transport {
            Transport::Tcp => listen(*address),
            Transport::Udp => std::net::UdpSocket::bind(address).map(drop),
        };
        if let Err(e) = free {
            bail!(
                "cannot listen on {transport} {address} for {what}: {e}; stop what holds it, or choose \
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
            (free_address, Transport::Tcp, "the free one".to_owned()),
            (address, Transport::Tcp, "edge par (--edge-port)".to_owned()),
        ];
        let err = check_free(&used).unwrap_err().to_string();
        assert!(
            err.contains(&format!(
                "cannot listen on TCP {address} for edge par (--edge-port)"
            )),
            "{err}"
        );
        assert!(err.contains("in use"), "{err}");
        check_free(&used[..1]).unwrap();
    }

    #[test]
    fn a_held_udp_port_is_named_too() {
        let held = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let address = held.local_addr().unwrap();
        let used = [(address, Transport::Udp, "edge par's HTTPS".to_owned())];
        let err = check_free(&used).unwrap_err().to_string();
        assert!(
            err.contains(&format!(
                "cannot listen on UDP {address} for edge par's HTTPS"
            )),
            "{err}"
        );
        drop(held);
        check_free(&used).unwrap();
    }

    #[test]
    fn every_fixed_port_is_looked_at() {
        let listen: SocketAddr = "127.0.0.1:7070".parse().unwrap();
        let fixed = Ports {
            gateway: 18080,
            edge: 18090,
            edge_https: 18443,
        };
        let ports: Vec<(u16, Transport)> = used(listen, &fixed)
            .iter()
            .map(|(a, t, _)| (a.port(), *t))
            .collect();
        let tcp = |port| (port, Transport::Tcp);
        let udp = |port| (port, Transport::Udp);
        assert_eq!(
            ports,
            [
                tcp(7070),
                tcp(18080),
                tcp(18180),
                tcp(18081),
                tcp(18181),
                tcp(18082),
                tcp(18182),
                tcp(18090),
                tcp(18443),
                udp(18443),
                tcp(18091),
                tcp(18444),
                udp(18444)
            ]
        );
        let any = "127.0.0.1:0".parse().unwrap();
        assert_eq!(used(any, &fixed).len(), 12);
    }
}
