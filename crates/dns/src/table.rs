//! What each caller sees.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use arc_swap::ArcSwap;

/// The answers for one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The address of an `A` query.
    pub address: Ipv4Addr,
    /// The service's ports by name, for `SRV` queries `_<port>._tcp.<name>`.
    pub ports: Vec<(String, u16)>,
}

/// The names a caller sees: lower-case names without the trailing dot
/// (`api.shop.internal`).
pub type Table = HashMap<String, Entry>;

/// Each caller's table, by the caller's address; swapped whole, read without locks.
#[derive(Debug, Default)]
pub struct Tables(ArcSwap<HashMap<IpAddr, Arc<Table>>>);

impl Tables {
    /// Replaces every table.
    pub fn replace(&self, tables: HashMap<IpAddr, Arc<Table>>) {
        self.0.store(Arc::new(tables));
    }

    /// The table of `caller`, if it has one.
    pub fn of(&self, caller: IpAddr) -> Option<Arc<Table>> {
        self.0.load().get(&caller).cloned()
    }

    /// The address `name` has for `caller`, if the caller sees that name (without taking a
    /// reference to the table: the hot path of plain `A` queries).
    pub fn address(&self, caller: IpAddr, name: &str) -> Option<Ipv4Addr> {
        self.0
            .load()
            .get(&caller)?
            .get(name)
            .map(|entry| entry.address)
    }
}
