//! Service virtual IPs: the region gives each service its node proxies may reach one address
//! from [`VIP_NETWORK`], kept while the service is known and saved in the disk copy, so that a
//! name keeps its address across restarts. A service's first choice is derived from its name,
//! so that even a region that lost its disk copy most likely gives the same address again.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use meridian_xds::meridian::{VIP_NETWORK, VIP_PREFIX_LEN};
use serde::{Deserialize, Serialize};

use crate::region::ServiceId;

/// How many addresses [`VIP_NETWORK`] holds.
const SIZE: u32 = 1 << (32 - VIP_PREFIX_LEN);

/// The region's virtual IPs, by service.
#[derive(Debug, Default)]
pub struct Vips {
    by_service: BTreeMap<ServiceId, Ipv4Addr>,
    taken: HashMap<Ipv4Addr, ServiceId>,
}

/// One service's virtual IP, as the disk copy keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedVip {
    /// The service's org.
    pub org: String,
    /// Its app.
    pub app: String,
    /// Its name.
    pub service: String,
    /// Its address.
    pub vip: Ipv4Addr,
}

impl Vips {
    /// The virtual IP of `id`, given now if it had none: the first free address from the one
    /// its name hashes to.
    pub fn of(&mut self, id: &ServiceId) -> Ipv4Addr {
        if let Some(vip) = self.by_service.get(id) {
            return *vip;
        }
        let start = first_choice(id);
        let vip = (0..SIZE)
            .map(|step| address((start + step) % SIZE))
            .find(|vip| usable(*vip) && !self.taken.contains_key(vip))
            // A region never knows a million services; the first choice is shared then.
            .unwrap_or(address(start));
        self.by_service.insert(id.clone(), vip);
        self.taken.insert(vip, id.clone());
        vip
    }

    /// Frees the virtual IP of `id` (a service the region no longer knows).
    pub fn release(&mut self, id: &ServiceId) {
        if let Some(vip) = self.by_service.remove(id) {
            self.taken.remove(&vip);
        }
    }

    /// Every service's virtual IP, for the disk copy.
    pub fn saved(&self) -> Vec<SavedVip> {
        self.by_service
            .iter()
            .map(|((org, app, service), vip)| SavedVip {
                org: org.clone(),
                app: app.clone(),
                service: service.clone(),
                vip: *vip,
            })
            .collect()
    }

    /// Takes back the addresses of a disk copy (before anything is rendered); addresses outside
    /// [`VIP_NETWORK`] or given twice are ignored.
    pub fn restore(&mut self, saved: Vec<SavedVip>) {
        for SavedVip {
            org,
            app,
            service,
            vip,
        } in saved
        {
            let id = (org, app, service);
            let inside = u32::from(vip) & !(SIZE - 1) == u32::from(VIP_NETWORK);
            if inside && usable(vip) && !self.taken.contains_key(&vip) {
                self.release(&id);
                self.by_service.insert(id.clone(), vip);
                self.taken.insert(vip, id);
            }
        }
    }
}

/// The offset in [`VIP_NETWORK`] the name of `id` hashes to (FNV-1a: stable across builds).
fn first_choice(id: &ServiceId) -> u32 {
    let (org, app, service) = id;
    let mut hash: u32 = 0x811c_9dc5;
    for byte in [org, app, service]
        .iter()
        .flat_map(|part| part.bytes().chain([b'/']))
    {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash % SIZE
}

fn address(offset: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(VIP_NETWORK) + offset)
}

/// Addresses ending in .0 or .255 are left out: some programs take them for network or
/// broadcast addresses.
fn usable(vip: Ipv4Addr) -> bool {
    !matches!(vip.octets()[3], 0 | 255)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str) -> ServiceId {
        ("acme".to_owned(), "shop".to_owned(), name.to_owned())
    }

    #[test]
    fn each_service_keeps_one_address_of_its_own() {
        let mut vips = Vips::default();
        let api = vips.of(&id("api"));
        assert_eq!(vips.of(&id("api")), api);
        assert_eq!(api.octets()[0], 100);
        assert_eq!(api.octets()[1] & 0xf0, 112);
        let mut seen = std::collections::HashSet::new();
        for n in 0..2000 {
            assert!(seen.insert(vips.of(&id(&format!("s{n}")))));
        }
        assert!(!seen.contains(&api));
        // A fresh region derives the same first choice; a saved copy restores the rest.
        let mut again = Vips::default();
        again.restore(vips.saved());
        assert_eq!(again.of(&id("api")), api);
        assert_eq!(again.of(&id("s1999")), vips.of(&id("s1999")));
        let mut fresh = Vips::default();
        assert_eq!(fresh.of(&id("api")), api);
    }

    #[test]
    fn a_released_address_is_free_and_bad_saved_ones_are_ignored() {
        let mut vips = Vips::default();
        let api = vips.of(&id("api"));
        vips.release(&id("api"));
        assert!(vips.saved().is_empty());
        let outside = SavedVip {
            org: "acme".into(),
            app: "shop".into(),
            service: "web".into(),
            vip: Ipv4Addr::new(10, 0, 0, 1),
        };
        let twice = SavedVip {
            service: "db".into(),
            vip: api,
            ..outside.clone()
        };
        let first = SavedVip {
            service: "cache".into(),
            vip: api,
            ..outside.clone()
        };
        vips.restore(vec![outside, first, twice]);
        assert_eq!(vips.saved().len(), 1);
        assert_eq!(vips.of(&id("cache")), api);
        assert_ne!(vips.of(&id("web")), Ipv4Addr::new(10, 0, 0, 1));
    }
}
