//! The flags of `meridian edge` for the anycast announcement (docs/anycast.md), and the
//! options they make.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use meridian_edge::anycast::options::parse_asn;
use meridian_edge::anycast::{
    AnycastOptions, Bfd, BgpOptions, Community, HealthOptions, Peer, Prefix,
};

/// The anycast flags.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Anycast (BGP through a local BIRD 2; see docs/anycast.md)")]
pub struct AnycastArgs {
    /// Anycast addresses with the prefix to announce for each (`198.18.0.10/32,2001:db8::10/128`;
    /// `198.18.0.10/24` binds .10 and announces the /24). The edge binds them on
    /// --anycast-interface and has BIRD announce them while it is healthy.
    #[arg(long, value_delimiter = ',', value_parser = Prefix::parse, value_name = "PREFIXES")]
    anycast: Vec<Prefix>,
    /// The interface the anycast addresses are bound on (`lo`, or a dummy interface).
    #[arg(long, default_value = "lo", value_name = "NAME")]
    anycast_interface: String,
    /// How long every check must pass before the prefixes are announced (again).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    anycast_hold_down: Duration,
    /// The longest hold-down: a withdrawal that ends an announcement shorter than this doubles
    /// the next hold-down, up to this; a longer one resets it.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    anycast_hold_down_max: Duration,
    /// How long the edge may serve its last configuration without the global control plane
    /// and still announce. Every edge loses it at once when it is down: cover your longest
    /// expected outage of it.
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    anycast_max_stale: Duration,
    /// How often the edge probes its own listener (at each anycast address) and the gateways of
    /// the regions with healthy instances.
    #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
    anycast_probe_interval: Duration,
    /// How long a probe may take.
    #[arg(long, default_value = "300ms", value_parser = humantime::parse_duration)]
    anycast_probe_timeout: Duration,
    /// How many probes in a row must fail before a check fails.
    #[arg(long, default_value = "2")]
    anycast_probe_fall: u32,
    /// How long the guard (a process of its own) waits for a sign of life from the edge before
    /// it withdraws for it (a frozen edge); it also withdraws at once when the edge dies.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    anycast_guard_timeout: Duration,
    /// BIRD's control socket.
    #[arg(long, default_value = "/run/bird/bird.ctl", value_name = "PATH")]
    bgp_socket: PathBuf,
    /// Where the edge writes its part of BIRD's configuration (`anycast.conf`, which BIRD's
    /// configuration includes, and `anycast.state`).
    #[arg(long, default_value = "/run/meridian/bird", value_name = "DIR")]
    bgp_dir: PathBuf,
    /// The prefix of the names of the protocols and filter the edge adds to BIRD.
    #[arg(long, default_value = "meridian", value_name = "NAME")]
    bgp_name: String,
    /// The edge's AS number.
    #[arg(long, value_parser = parse_asn, value_name = "ASN")]
    bgp_local_as: Option<u32>,
    /// A BGP peer: `address=IP,as=ASN[,source=IP][,interface=NAME]` (repeat for more). An IPv4
    /// peer carries the IPv4 prefixes, an IPv6 peer the IPv6 ones.
    #[arg(long = "bgp-peer", value_parser = Peer::parse, value_name = "FIELDS")]
    bgp_peers: Vec<Peer>,
    /// Communities added to the announced routes: `A:B` (standard) or `A:B:C` (large),
    /// separated by commas or repeated.
    #[arg(long = "bgp-community", value_delimiter = ',', value_parser = Community::parse, value_name = "COMMUNITY")]
    bgp_communities: Vec<Community>,
    /// BGP hold time (keepalives every third of it).
    #[arg(long, default_value = "9s", value_parser = humantime::parse_duration)]
    bgp_hold_time: Duration,
    /// BFD on every BGP session (the peers must run it too): a dead or frozen edge is noticed
    /// in --bgp-bfd-interval × --bgp-bfd-multiplier.
    #[arg(long)]
    bgp_bfd: bool,
    /// BFD's transmit and receive interval.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    bgp_bfd_interval: Duration,
    /// BFD's detection multiplier.
    #[arg(long, default_value = "3")]
    bgp_bfd_multiplier: u8,
}

impl AnycastArgs {
    /// The anycast options, if --anycast is given; checked, with errors naming the flag.
    pub fn options(&self) -> Result<Option<AnycastOptions>> {
        if self.anycast.is_empty() {
            return Ok(None);
        }
        let local_as = self
            .bgp_local_as
            .ok_or_else(|| anyhow::anyhow!("--bgp-local-as: needed with --anycast"))?;
        let options = AnycastOptions {
            prefixes: self.anycast.clone(),
            interface: self.anycast_interface.clone(),
            bgp: BgpOptions {
                socket: self.bgp_socket.clone(),
                dir: self.bgp_dir.clone(),
                name: self.bgp_name.clone(),
                local_as,
                peers: self.bgp_peers.clone(),
                communities: self.bgp_communities.clone(),
                hold_time: self.bgp_hold_time,
                bfd: self.bgp_bfd.then_some(Bfd {
                    interval: self.bgp_bfd_interval,
                    multiplier: self.bgp_bfd_multiplier,
                }),
            },
            health: HealthOptions {
                probe_interval: self.anycast_probe_interval,
                probe_timeout: self.anycast_probe_timeout,
                fall: self.anycast_probe_fall,
                hold_down: self.anycast_hold_down,
                hold_down_max: self.anycast_hold_down_max,
                max_stale: self.anycast_max_stale,
                guard_timeout: self.anycast_guard_timeout,
            },
        };
        options.check().map_err(anyhow::Error::msg)?;
        Ok(Some(options))
    }
}

/// Checks that `listen` takes the clients of the anycast addresses: it listens on every
/// address, or on one of them.
pub fn check_listener(flag: &str, listen: SocketAddr, options: &AnycastOptions) -> Result<()> {
    let ip = listen.ip();
    if ip.is_unspecified() || options.prefixes.iter().any(|p| p.address == ip) {
        return Ok(());
    }
    anyhow::bail!(
        "{flag}: {listen} is not on an anycast address; listen on one of them, or on every \
         address ({}), so that the clients of {} reach the edge",
        if ip.is_ipv4() { "0.0.0.0" } else { "[::]" },
        options.prefixes[0].address
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        args: AnycastArgs,
    }

    fn options(flags: &[&str]) -> Result<Option<AnycastOptions>> {
        let all = [&["edge"][..], flags].concat();
        Flags::try_parse_from(all)
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .args
            .options()
    }

    #[test]
    fn anycast_flags_make_the_options_and_bad_ones_name_the_flag() {
        assert!(options(&[]).unwrap().is_none());
        let made = options(&[
            "--anycast",
            "198.18.0.10/32,2001:db8::10/128",
            "--bgp-local-as",
            "65001",
            "--bgp-peer",
            "address=198.18.1.1,as=65000",
            "--bgp-peer",
            "address=2001:db8:1::1,as=65000",
            "--bgp-community",
            "65000:100,65000:1:2",
            "--bgp-bfd",
            "--bgp-bfd-interval",
            "20ms",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(made.prefixes.len(), 2);
        assert_eq!(made.bgp.peers.len(), 2);
        assert_eq!(made.bgp.communities.len(), 2);
        assert_eq!(made.bgp.bfd.unwrap().interval, Duration::from_millis(20));
        let error = |flags: &[&str]| options(flags).unwrap_err().to_string();
        let anycast = ["--anycast", "198.18.0.10/32"];
        assert!(error(&anycast).starts_with("--bgp-local-as:"));
        let with_as = [&anycast[..], &["--bgp-local-as", "65001"]].concat();
        assert!(error(&with_as).starts_with("--bgp-peer:"));
        let v6_peer = [
            &with_as[..],
            &["--bgp-peer", "address=2001:db8:1::1,as=65000"],
        ]
        .concat();
        assert!(
            error(&v6_peer).starts_with("--bgp-peer 1: an IPv6 peer"),
            "{}",
            error(&v6_peer)
        );
        assert!(error(&["--anycast", "198.18.0.10/40"]).contains("--anycast"));
        assert!(error(&["--bgp-peer", "address=198.18.1.1"]).contains("as: missing"));
    }

    #[test]
    fn the_listener_must_take_the_anycast_addresses() {
        let made = options(&[
            "--anycast",
            "198.18.0.10/32",
            "--bgp-local-as",
            "65001",
            "--bgp-peer",
            "address=198.18.1.1,as=65000",
        ])
        .unwrap()
        .unwrap();
        for ok in ["0.0.0.0:80", "[::]:80", "198.18.0.10:80"] {
            check_listener("--listen", ok.parse().unwrap(), &made).unwrap();
        }
        let error = check_listener("--listen", "127.0.0.1:8000".parse().unwrap(), &made)
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("--listen: 127.0.0.1:8000 is not on an anycast address"),
            "{error}"
        );
    }
}
