//! The edge's part of BIRD's configuration, as text: one static protocol per address family
//! holding the anycast routes, an export filter that lets only those out (with the
//! communities), BFD if asked, and one BGP session per peer. BIRD's own configuration includes
//! it (docs/anycast.md). The static protocols read whether they are disabled from the state
//! file, so that a `birdc configure` (the operator's, or BIRD starting again) keeps the state
//! the edge last chose. Pure: the text only.

use std::fmt::Write as _;
use std::path::Path;

use super::options::{AnycastOptions, Community};

/// The file the edge writes its configuration to, in its directory.
pub const CONFIG_FILE: &str = "anycast.conf";
/// The file that says whether the static protocols are disabled, in the same directory.
pub const STATE_FILE: &str = "anycast.state";

/// The state file's text.
pub fn state_text(announce: bool) -> &'static str {
    if announce {
        "disabled no;\n"
    } else {
        "disabled yes;\n"
    }
}

/// The names of the static protocols that hold the anycast routes (IPv4's, then IPv6's, for
/// the families that have prefixes).
pub fn static_protocols(options: &AnycastOptions) -> Vec<String> {
    families(options)
        .into_iter()
        .map(|(name, _)| name)
        .collect()
}

/// Each family that has prefixes: its static protocol's name, and whether it is IPv4.
fn families(options: &AnycastOptions) -> Vec<(String, bool)> {
    [(true, "4"), (false, "6")]
        .into_iter()
        .filter(|(ipv4, _)| options.prefixes_of(*ipv4).next().is_some())
        .map(|(ipv4, family)| (format!("{}_anycast{family}", options.bgp.name), ipv4))
        .collect()
}

/// The name of the BGP protocol of the `index`-th peer (from 1).
pub fn peer_protocol(options: &AnycastOptions, index: usize) -> String {
    format!("{}_peer{index}", options.bgp.name)
}

/// The configuration text, the state file being `state_file` (an absolute path).
pub fn render(options: &AnycastOptions, location: &str, state_file: &Path) -> String {
    let bgp = &options.bgp;
    let name = &bgp.name;
    let mut text = format!(
        "# Written by `meridian edge` (location {location}) at each start; do not edit.\n\
         # The anycast routes are announced while the edge is healthy (see docs/anycast.md).\n\n"
    );
    let statics = families(options);
    for (protocol, ipv4) in &statics {
        let ipv4 = *ipv4;
        let _ = writeln!(text, "protocol static {protocol} {{");
        // BIRD reads `include` only at the start of a line.
        let _ = writeln!(text, "include \"{}\";", state_file.display());
        let _ = writeln!(text, "  {};", if ipv4 { "ipv4" } else { "ipv6" });
        for prefix in options.prefixes_of(ipv4) {
            let _ = writeln!(text, "  route {} blackhole;", prefix.network());
        }
        text.push_str("}\n\n");
    }
    let _ = writeln!(text, "filter {name}_export {{");
    let from: Vec<String> = statics
        .iter()
        .map(|(p, _)| format!("proto != \"{p}\""))
        .collect();
    let _ = writeln!(text, "  if {} then reject;", from.join(" && "));
    for community in &bgp.communities {
        let _ = match community {
            Community::Standard(a, b) => writeln!(text, "  bgp_community.add(({a},{b}));"),
            Community::Large(a, b, c) => {
                writeln!(text, "  bgp_large_community.add(({a},{b},{c}));")
            }
        };
    }
    text.push_str("  accept;\n}\n\n");
    if let Some(bfd) = bgp.bfd {
        let interval = bfd.interval.as_millis();
        let _ = writeln!(
            text,
            "protocol bfd {name}_bfd {{\n  interface \"*\" {{\n    min rx interval {interval} ms;\n    \
             min tx interval {interval} ms;\n    multiplier {};\n  }};\n}}\n",
            bfd.multiplier
        );
    }
    let hold = bgp.hold_time.as_secs();
    for (i, peer) in bgp.peers.iter().enumerate() {
        let _ = writeln!(text, "protocol bgp {} {{", peer_protocol(options, i + 1));
        match peer.source {
            Some(source) => {
                let _ = writeln!(text, "  local {source} as {};", bgp.local_as);
            }
            None => {
                let _ = writeln!(text, "  local as {};", bgp.local_as);
            }
        }
        match &peer.interface {
            Some(interface) => {
                let _ = writeln!(
                    text,
                    "  neighbor {} % '{interface}' as {};",
                    peer.address, peer.asn
                );
            }
            None => {
                let _ = writeln!(text, "  neighbor {} as {};", peer.address, peer.asn);
            }
        }
        let _ = writeln!(
            text,
            "  hold time {hold};\n  keepalive time {};\n  connect delay time 1;\n  \
             connect retry time 5;\n  error wait time 1, 30;",
            (hold / 3).max(1)
        );
        if bgp.bfd.is_some() {
            text.push_str("  bfd on;\n");
        }
        let family = if peer.address.is_ipv4() {
            "ipv4"
        } else {
            "ipv6"
        };
        let _ = writeln!(
            text,
            "  {family} {{\n    import none;\n    export filter {name}_export;\n  }};\n}}\n"
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::anycast::options::{Bfd, BgpOptions, HealthOptions, Peer, Prefix};

    pub(crate) fn options() -> AnycastOptions {
        AnycastOptions {
            prefixes: vec![
                Prefix::parse("198.18.0.10/32").unwrap(),
                Prefix::parse("2001:db8::10/128").unwrap(),
            ],
            interface: "lo".into(),
            bgp: BgpOptions {
                socket: "/run/bird/bird.ctl".into(),
                dir: "/run/meridian/bird".into(),
                name: "meridian".into(),
                local_as: 65001,
                peers: vec![
                    Peer::parse("address=198.18.1.1,as=65000,source=198.18.1.2").unwrap(),
                    Peer::parse("address=fe80::1,as=65000,interface=eth0").unwrap(),
                ],
                communities: vec![
                    Community::parse("65000:100").unwrap(),
                    Community::parse("65000:1:2").unwrap(),
                ],
                hold_time: Duration::from_secs(9),
                bfd: Some(Bfd {
                    interval: Duration::from_millis(20),
                    multiplier: 3,
                }),
            },
            health: HealthOptions {
                probe_interval: Duration::from_millis(200),
                probe_timeout: Duration::from_millis(300),
                fall: 2,
                hold_down: Duration::from_secs(10),
                hold_down_max: Duration::from_secs(300),
                max_stale: Duration::from_secs(900),
                guard_timeout: Duration::from_secs(1),
            },
        }
    }

    #[test]
    fn the_configuration_announces_only_the_anycast_routes_to_each_peer() {
        let options = options();
        let text = render(
            &options,
            "par",
            Path::new("/run/meridian/bird/anycast.state"),
        );
        for expected in [
            "protocol static meridian_anycast4 {\ninclude \"/run/meridian/bird/anycast.state\";\n  ipv4;\n  route 198.18.0.10/32 blackhole;\n}",
            "protocol static meridian_anycast6 {",
            "  route 2001:db8::10/128 blackhole;",
            "  if proto != \"meridian_anycast4\" && proto != \"meridian_anycast6\" then reject;",
            "  bgp_community.add((65000,100));",
            "  bgp_large_community.add((65000,1,2));",
            "protocol bfd meridian_bfd {",
            "    min rx interval 20 ms;",
            "protocol bgp meridian_peer1 {\n  local 198.18.1.2 as 65001;\n  neighbor 198.18.1.1 as 65000;\n  hold time 9;\n  keepalive time 3;",
            "  neighbor fe80::1 % 'eth0' as 65000;",
            "  bfd on;",
            "  ipv4 {\n    import none;\n    export filter meridian_export;\n  };",
            "  ipv6 {\n    import none;\n    export filter meridian_export;\n  };",
        ] {
            assert!(text.contains(expected), "no {expected:?} in\n{text}");
        }
        assert_eq!(
            static_protocols(&options),
            ["meridian_anycast4", "meridian_anycast6"]
        );
    }

    #[test]
    fn without_bfd_or_ipv6_there_is_none_of_it() {
        let mut options = options();
        options.bgp.bfd = None;
        options.prefixes.truncate(1);
        options.bgp.peers.truncate(1);
        let text = render(&options, "par", Path::new("/s"));
        assert!(!text.contains("bfd"), "{text}");
        assert!(!text.contains("anycast6"), "{text}");
        assert!(text.contains("  if proto != \"meridian_anycast4\" then reject;"));
        assert_eq!(static_protocols(&options), ["meridian_anycast4"]);
    }
}
