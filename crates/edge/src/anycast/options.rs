//! What an operator says about the anycast announcement: the prefixes, the BGP peers, the
//! communities to tag them with, BFD, and how health is judged. Each value parses from the
//! text of its command-line flag, and says what is wrong with a bad one.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// One anycast prefix: the address the edge binds, and the prefix it announces (the address's
/// network at `len`: `198.18.0.10/24` binds 198.18.0.10 and announces 198.18.0.0/24).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    /// The address bound on the edge (clients connect to it).
    pub address: IpAddr,
    /// The prefix length announced.
    pub len: u8,
}

impl Prefix {
    /// Parses `ADDRESS[/LEN]` (a host prefix without `/LEN`).
    pub fn parse(text: &str) -> Result<Prefix, String> {
        let (address, len) = match text.split_once('/') {
            Some((address, len)) => (address, Some(len)),
            None => (text, None),
        };
        let address: IpAddr = address
            .parse()
            .map_err(|_| format!("`{text}`: `{address}` is not an IP address"))?;
        let most = if address.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => most,
            Some(len) => len
                .parse::<u8>()
                .ok()
                .filter(|len| *len <= most)
                .ok_or_else(|| format!("`{text}`: the prefix length must be 0 to {most}"))?,
        };
        if address.is_unspecified() || address.is_loopback() || address.is_multicast() {
            return Err(format!(
                "`{text}`: an anycast address must be a unicast address clients can reach"
            ));
        }
        Ok(Prefix { address, len })
    }

    /// Whether it is an IPv4 prefix.
    pub fn is_ipv4(&self) -> bool {
        self.address.is_ipv4()
    }

    /// The announced network, `NETWORK/LEN` (host bits cleared).
    pub fn network(&self) -> String {
        let network = match self.address {
            IpAddr::V4(address) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                IpAddr::from((u32::from(address) & mask).to_be_bytes())
            }
            IpAddr::V6(address) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                IpAddr::from((u128::from(address) & mask).to_be_bytes())
            }
        };
        format!("{network}/{}", self.len)
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.len)
    }
}

/// A BGP neighbour of the edge's BIRD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its address. An IPv4 peer carries the IPv4 prefixes, an IPv6 peer the IPv6 ones.
    pub address: IpAddr,
    /// Its AS number.
    pub asn: u32,
    /// The local address of the session, if not the one routing picks.
    pub source: Option<IpAddr>,
    /// The interface it is on (needed for IPv6 link-local peers).
    pub interface: Option<String>,
}

impl Peer {
    /// Parses `address=IP,as=ASN[,source=IP][,interface=NAME]`.
    pub fn parse(text: &str) -> Result<Peer, String> {
        let (mut address, mut asn, mut source, mut interface) = (None, None, None, None);
        for pair in text.split(',') {
            let (key, value) = pair.split_once('=').ok_or_else(|| {
                format!("`{pair}`: expected KEY=VALUE (address, as, source, interface)")
            })?;
            let ip = |what: &str| {
                value
                    .parse::<IpAddr>()
                    .map_err(|_| format!("{what}: `{value}` is not an IP address"))
            };
            match key {
                "address" => address = Some(ip("address")?),
                "as" => asn = Some(parse_asn(value).map_err(|e| format!("as: {e}"))?),
                "source" => source = Some(ip("source")?),
                "interface" => {
                    if !valid_interface(value) {
                        return Err(format!("interface: `{value}` is not an interface name"));
                    }
                    interface = Some(value.to_owned());
                }
                other => {
                    return Err(format!(
                        "`{other}` is not a peer field (address, as, source, interface)"
                    ))
                }
            }
        }
        let address = address.ok_or("address: missing (address=IP)")?;
        let asn = asn.ok_or("as: missing (as=ASN)")?;
        if source.is_some_and(|s| s.is_ipv4() != address.is_ipv4()) {
            return Err("source: must be of the same family as address".to_owned());
        }
        Ok(Peer {
            address,
            asn,
            source,
            interface,
        })
    }
}

/// An AS number, 1 to 4294967294 (0 and 65535's 4-byte twin are reserved).
pub fn parse_asn(text: &str) -> Result<u32, String> {
    text.parse::<u32>()
        .ok()
        .filter(|asn| *asn != 0 && *asn != u32::MAX)
        .ok_or_else(|| format!("`{text}` is not an AS number (1 to 4294967294)"))
}

/// An interface name as Linux takes it: 1 to 15 bytes, no `/`, blank or quote.
pub fn valid_interface(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name
            .chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '/' | '"' | '\'' | '\\'))
}

/// A BGP community added to the announced routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Community {
    /// RFC 1997: `ASN:VALUE`, each 16 bits.
    Standard(u16, u16),
    /// RFC 8092: `ASN:DATA1:DATA2`, each 32 bits.
    Large(u32, u32, u32),
}

impl Community {
    /// Parses `A:B` (standard) or `A:B:C` (large).
    pub fn parse(text: &str) -> Result<Community, String> {
        let parts: Vec<&str> = text.split(':').collect();
        let bad = || {
            format!("`{text}` is not a community (A:B, each 0-65535, or A:B:C, each 0-4294967295)")
        };
        match parts.as_slice() {
            [a, b] => Ok(Community::Standard(
                a.parse().map_err(|_| bad())?,
                b.parse().map_err(|_| bad())?,
            )),
            [a, b, c] => Ok(Community::Large(
                a.parse().map_err(|_| bad())?,
                b.parse().map_err(|_| bad())?,
                c.parse().map_err(|_| bad())?,
            )),
            _ => Err(bad()),
        }
    }
}

/// BFD on the BGP sessions: how often each side sends, and how many missed packets mean down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bfd {
    /// Minimum transmit and receive interval.
    pub interval: Duration,
    /// Detection multiplier.
    pub multiplier: u8,
}

/// The BGP side: which BIRD, the names of what the edge adds to it, and the sessions.
#[derive(Debug, Clone)]
pub struct BgpOptions {
    /// BIRD's control socket.
    pub socket: PathBuf,
    /// The directory where the edge writes its part of BIRD's configuration
    /// (`anycast.conf`, which BIRD's configuration includes, and `anycast.state`).
    pub dir: PathBuf,
    /// The prefix of the names of the protocols and filter the edge adds (`meridian`).
    pub name: String,
    /// The edge's AS number.
    pub local_as: u32,
    /// The sessions.
    pub peers: Vec<Peer>,
    /// Communities added to the announced routes.
    pub communities: Vec<Community>,
    /// BGP hold time (keepalives every third of it).
    pub hold_time: Duration,
    /// BFD on every session, if set.
    pub bfd: Option<Bfd>,
}

/// Checks a name prefix for BIRD's symbols: a letter, then letters, digits or `_` (at most 32).
pub fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    if !first_ok
        || name.len() > 32
        || !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(format!(
            "`{name}`: a lowercase letter, then lowercase letters, digits or `_`, at most 32"
        ));
    }
    Ok(())
}

/// How the edge judges its own health, and how it backs off.
#[derive(Debug, Clone, Copy)]
pub struct HealthOptions {
    /// How often the listener and the regions' gateways are probed.
    pub probe_interval: Duration,
    /// How long a probe may take.
    pub probe_timeout: Duration,
    /// How many probes in a row must fail before a check fails.
    pub fall: u32,
    /// How long the checks must pass before the prefixes are announced (again).
    pub hold_down: Duration,
    /// The longest hold-down: each withdrawal that ends an announcement shorter than this
    /// doubles it, up to this.
    pub hold_down_max: Duration,
    /// How long the edge may serve its last configuration once it lost the global control
    /// plane, and still announce.
    pub max_stale: Duration,
    /// How long the guard waits for a sign of life before it withdraws for the edge.
    pub guard_timeout: Duration,
}

/// Everything about the anycast announcement.
#[derive(Debug, Clone)]
pub struct AnycastOptions {
    /// The prefixes.
    pub prefixes: Vec<Prefix>,
    /// The interface the addresses are bound on (`lo`, or a dummy interface).
    pub interface: String,
    /// BGP.
    pub bgp: BgpOptions,
    /// Health.
    pub health: HealthOptions,
}

impl AnycastOptions {
    /// Checks what no single flag can: prefixes given, at least one peer, each peer with
    /// prefixes of its family to carry, names and timers in range. Names the flag at fault.
    pub fn check(&self) -> Result<(), String> {
        if self.prefixes.is_empty() {
            return Err("--anycast: at least one prefix".to_owned());
        }
        if !valid_interface(&self.interface) {
            return Err(format!(
                "--anycast-interface: `{}` is not an interface name",
                self.interface
            ));
        }
        check_name(&self.bgp.name).map_err(|e| format!("--bgp-name: {e}"))?;
        if self.bgp.peers.is_empty() {
            return Err("--bgp-peer: at least one peer when --anycast is set".to_owned());
        }
        for (i, peer) in self.bgp.peers.iter().enumerate() {
            if !self
                .prefixes
                .iter()
                .any(|p| p.is_ipv4() == peer.address.is_ipv4())
            {
                let family = if peer.address.is_ipv4() {
                    "IPv4"
                } else {
                    "IPv6"
                };
                return Err(format!(
                    "--bgp-peer {}: an {family} peer carries the {family} prefixes, and --anycast has none",
                    i + 1
                ));
            }
        }
        let hold = self.bgp.hold_time.as_secs();
        if !(3..=65535).contains(&hold) || self.bgp.hold_time.subsec_nanos() != 0 {
            return Err("--bgp-hold-time: whole seconds, 3s to 65535s".to_owned());
        }
        if let Some(bfd) = self.bgp.bfd {
            if bfd.interval < Duration::from_millis(1) || bfd.interval > Duration::from_secs(60) {
                return Err("--bgp-bfd-interval: 1ms to 60s".to_owned());
            }
            if bfd.multiplier == 0 {
                return Err("--bgp-bfd-multiplier: 1 to 255".to_owned());
            }
        }
        let health = &self.health;
        if health.probe_interval.is_zero() || health.probe_timeout.is_zero() {
            return Err(
                "--anycast-probe-interval and --anycast-probe-timeout: more than zero".to_owned(),
            );
        }
        if health.fall == 0 {
            return Err("--anycast-probe-fall: at least 1".to_owned());
        }
        if health.hold_down_max < health.hold_down {
            return Err("--anycast-hold-down-max: at least --anycast-hold-down".to_owned());
        }
        if health.guard_timeout <= health.probe_interval {
            return Err("--anycast-guard-timeout: more than --anycast-probe-interval".to_owned());
        }
        Ok(())
    }

    /// The prefixes of one family.
    pub fn prefixes_of(&self, ipv4: bool) -> impl Iterator<Item = &Prefix> {
        self.prefixes.iter().filter(move |p| p.is_ipv4() == ipv4)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_binds_its_address_and_announces_its_network() {
        let host = Prefix::parse("198.18.0.10/32").unwrap();
        assert_eq!(
            (host.to_string(), host.network()),
            ("198.18.0.10/32".into(), "198.18.0.10/32".into())
        );
        let wide = Prefix::parse("198.18.0.10/24").unwrap();
        assert_eq!(wide.network(), "198.18.0.0/24");
        let v6 = Prefix::parse("2001:db8::10").unwrap();
        assert_eq!((v6.len, v6.network()), (128, "2001:db8::10/128".into()));
        assert_eq!(
            Prefix::parse("2001:db8::10/48").unwrap().network(),
            "2001:db8::/48"
        );
        for bad in [
            "198.18.0.10/33",
            "nowhere/32",
            "0.0.0.0/0",
            "127.0.0.1",
            "2001:db8::/129",
        ] {
            assert!(Prefix::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn peers_parse_from_fields_and_bad_ones_name_the_field() {
        let peer = Peer::parse("address=198.18.1.1,as=65000,source=198.18.1.2").unwrap();
        assert_eq!(peer.asn, 65000);
        assert_eq!(peer.source, Some("198.18.1.2".parse().unwrap()));
        let v6 = Peer::parse("as=65000,address=fe80::1,interface=eth0").unwrap();
        assert_eq!(v6.interface.as_deref(), Some("eth0"));
        let error = |text: &str| Peer::parse(text).unwrap_err();
        assert!(error("address=198.18.1.1").starts_with("as:"));
        assert!(error("as=65000").starts_with("address:"));
        assert!(error("address=x,as=1").starts_with("address:"));
        assert!(error("address=198.18.1.1,as=0").starts_with("as:"));
        assert!(error("address=198.18.1.1,as=1,source=::1").starts_with("source:"));
        assert!(error("address=198.18.1.1,as=1,port=179").contains("not a peer field"));
        assert!(error("address=198.18.1.1,as=1,interface=a/b").starts_with("interface:"));
    }

    #[test]
    fn communities_are_standard_or_large() {
        assert_eq!(
            Community::parse("65000:100"),
            Ok(Community::Standard(65000, 100))
        );
        assert_eq!(
            Community::parse("4200000000:1:2"),
            Ok(Community::Large(4_200_000_000, 1, 2))
        );
        for bad in ["65536:1", "1", "a:b", "1:2:3:4"] {
            assert!(Community::parse(bad).is_err(), "{bad}");
        }
    }
}
