//! Addresses for instances. In host mode each instance listens on a loopback address of its
//! own, so that instances of one service on one node can all use the service's port. With
//! network namespaces each instance gets a /31 of the instance network: the node side (handed
//! out here) and the instance side (the next address).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

/// A range of loopback addresses handed to instances.
#[derive(Debug, Clone)]
pub struct AddressPool {
    first: u32,
    size: u32,
    /// Distance between two addresses handed out (2 for /31 pairs).
    stride: u32,
    used: BTreeSet<u32>,
}

/// Why a pool cannot be made.
#[derive(Debug, thiserror::Error)]
#[error("--instance-addresses: {0}")]
pub struct BadPool(String);

impl AddressPool {
    /// `size` addresses from `first`, which must be in 127.0.0.0/8 and leave room for them.
    pub fn new(first: Ipv4Addr, size: u32) -> Result<AddressPool, BadPool> {
        if first.octets()[0] != 127 {
            return Err(BadPool(format!(
                "{first} is not a loopback address (127.0.0.0/8); host mode gives instances \
                 loopback addresses"
            )));
        }
        let start = u32::from(first);
        let last = u32::from(Ipv4Addr::new(127, 255, 255, 254));
        if size == 0 || start.checked_add(size - 1).is_none_or(|end| end > last) {
            return Err(BadPool(format!(
                "{size} addresses from {first} leave 127.0.0.0/8"
            )));
        }
        Ok(AddressPool {
            first: start,
            size,
            stride: 1,
            used: BTreeSet::new(),
        })
    }

    /// The node sides of the /31 pairs of `network` (a /24 from 100.64.0.0 to 100.111.255.0,
    /// given by its first address; service virtual IPs take the rest of 100.64.0.0/10): 126
    /// instances.
    pub fn pairs(network: Ipv4Addr) -> Result<AddressPool, BadPool> {
        let [a, b, _, d] = network.octets();
        if a != 100 || !(64..112).contains(&b) || d != 0 {
            return Err(BadPool(format!(
                "{network} is not the start of a /24 from 100.64.0.0 to 100.111.255.0 (e.g. \
                 100.64.1.0; 100.112.0.0/12 holds service virtual IPs)"
            )));
        }
        Ok(AddressPool {
            first: u32::from(network) + 2,
            size: 126,
            stride: 2,
            used: BTreeSet::new(),
        })
    }

    /// The lowest free address, now taken; `None` when all are in use.
    pub fn take(&mut self) -> Option<Ipv4Addr> {
        let offset = (0..self.size).find(|o| !self.used.contains(o))?;
        self.used.insert(offset);
        Some(Ipv4Addr::from(self.first + offset * self.stride))
    }

    /// Returns `address` to the pool.
    pub fn give_back(&mut self, address: Ipv4Addr) {
        if let Some(offset) = u32::from(address).checked_sub(self.first) {
            self.used.remove(&(offset / self.stride));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_handed_out_once_and_come_back() {
        let mut pool = AddressPool::new(Ipv4Addr::new(127, 0, 100, 1), 2).unwrap();
        let a = pool.take().unwrap();
        let b = pool.take().unwrap();
        assert_ne!(a, b);
        assert_eq!(pool.take(), None);
        pool.give_back(a);
        assert_eq!(pool.take(), Some(a));
        assert!(AddressPool::new(Ipv4Addr::new(10, 0, 0, 1), 2).is_err());
        assert!(AddressPool::new(Ipv4Addr::new(127, 255, 255, 250), 10).is_err());
        let mut pairs = AddressPool::pairs(Ipv4Addr::new(100, 64, 1, 0)).unwrap();
        assert_eq!(pairs.take(), Some(Ipv4Addr::new(100, 64, 1, 2)));
        assert_eq!(pairs.take(), Some(Ipv4Addr::new(100, 64, 1, 4)));
        pairs.give_back(Ipv4Addr::new(100, 64, 1, 2));
        assert_eq!(pairs.take(), Some(Ipv4Addr::new(100, 64, 1, 2)));
        assert!(AddressPool::pairs(Ipv4Addr::new(10, 0, 0, 0)).is_err());
        assert!(AddressPool::pairs(Ipv4Addr::new(100, 112, 0, 0)).is_err());
    }
}
