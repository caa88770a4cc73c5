//! Reverse lookups (`PTR`, `<d>.<c>.<b>.<a>.in-addr.arpa`) of the platform's own network,
//! [`PLATFORM_NETWORK`]: instances' addresses and services' virtual IPs. They are answered here,
//! never forwarded: no upstream resolver knows them, and a program that looks up its own address
//! at start must not wait on one.

use std::net::Ipv4Addr;

use crate::table::Table;

/// The platform's network: instance networks (100.64.0.0 to 100.111.255.255) and service
/// virtual IPs (100.112.0.0/12) — the shared address space of RFC 6598, which Meridian claims
/// whole on its nodes. Its first address and prefix length.
pub const PLATFORM_NETWORK: (Ipv4Addr, u8) = (Ipv4Addr::new(100, 64, 0, 0), 10);

/// The suffix of IPv4 reverse names.
const REVERSE_ZONE: &str = ".in-addr.arpa";

/// What a name under the platform's reverse zones is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reverse {
    /// The reverse name of one address.
    Address(Ipv4Addr),
    /// A name above the addresses (`1.64.100.in-addr.arpa`): it exists, with no records.
    Above,
    /// Any other name below the platform's reverse zones: it does not exist.
    Nothing,
}

/// Whether `name` (lower case, no trailing dot) is under the platform's reverse zones
/// (`64.100.in-addr.arpa` to `127.100.in-addr.arpa`), and what it names; `None` for any other
/// name.
pub(crate) fn platform_name(name: &str) -> Option<Reverse> {
    let labels = name.strip_suffix(REVERSE_ZONE)?;
    // The octets from the first: `a`, `b`, ...
    let mut octets = labels.rsplit('.');
    let (network, prefix) = PLATFORM_NETWORK;
    let [first, second, ..] = network.octets();
    if octets.next().and_then(octet) != Some(first) {
        return None;
    }
    let b = octets.next().and_then(octet)?;
    if b & (0xff << (16 - prefix)) != second {
        return None;
    }
    let rest: Vec<Option<u8>> = octets.map(octet).collect();
    Some(match rest.as_slice() {
        [Some(c), Some(d)] => Reverse::Address(Ipv4Addr::new(first, b, *c, *d)),
        [] | [Some(_)] => Reverse::Above,
        _ => Reverse::Nothing,
    })
}

/// The octet `label` is in canonical decimal form (`7`, not `07` or `+7`).
fn octet(label: &str) -> Option<u8> {
    let value: u8 = label.parse().ok()?;
    (value.to_string() == label).then_some(value)
}

/// The name `table` gives `address`: the shortest of the names it resolves to that address, the
/// first in alphabetical order among equals (`api.shop.internal` before
/// `fra.api.shop.internal`). A scan of the caller's table: reverse lookups are rare.
pub(crate) fn name_of(table: &Table, address: Ipv4Addr) -> Option<&str> {
    table
        .iter()
        .filter(|(_, entry)| entry.address == address)
        .map(|(name, _)| name.as_str())
        .min_by(|a, b| a.len().cmp(&b.len()).then_with(|| a.cmp(b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reverse_names_of_the_platform_network_and_only_those_are_its_own() {
        let address = |a, b, c, d| Some(Reverse::Address(Ipv4Addr::new(a, b, c, d)));
        assert_eq!(
            platform_name("3.1.64.100.in-addr.arpa"),
            address(100, 64, 1, 3)
        );
        assert_eq!(
            platform_name("9.0.112.100.in-addr.arpa"),
            address(100, 112, 0, 9)
        );
        assert_eq!(
            platform_name("255.255.127.100.in-addr.arpa"),
            address(100, 127, 255, 255)
        );
        assert_eq!(platform_name("1.64.100.in-addr.arpa"), Some(Reverse::Above));
        assert_eq!(platform_name("127.100.in-addr.arpa"), Some(Reverse::Above));
        for nothing in [
            "x.3.1.64.100.in-addr.arpa",
            "1.3.1.64.100.in-addr.arpa",
            "03.1.64.100.in-addr.arpa",
            "256.1.64.100.in-addr.arpa",
            "x.64.100.in-addr.arpa",
        ] {
            assert_eq!(platform_name(nothing), Some(Reverse::Nothing), "{nothing}");
        }
        for other in [
            "3.1.63.100.in-addr.arpa",
            "3.1.128.100.in-addr.arpa",
            "3.1.064.100.in-addr.arpa",
            "100.in-addr.arpa",
            "in-addr.arpa",
            "1.0.0.127.in-addr.arpa",
            "3.1.64.100.in-addr.arpa.example",
            "api.shop.internal",
        ] {
            assert_eq!(platform_name(other), None, "{other}");
        }
    }
}
