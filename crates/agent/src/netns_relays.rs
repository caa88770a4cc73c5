//! The TCP relays of an instance in a network namespace. A TCP connection names no service,
//! only an address and a port: each `tcp` port of a service the instance sees by its virtual IP
//! gets a relay port of its own on the node side, where the node proxy relays it to the
//! service, and the namespace's nftables map sends that virtual IP and port there
//! ([`crate::netns::Netns::set_relays`]).
//!
//! A connection must never reach a relay of another service. So a (service, port) keeps its
//! relay number ([`RelayNumbers`]) for as long as the instance sees it, whatever services come
//! and go beside it; a number is given to another (service, port), or listened on for HTTP,
//! only once no entry of the map may still point to it; and the agent sets the map only once
//! the node proxy has applied the configuration the relays were made for. Then a map entry
//! points either to its own (service, port)'s relay, listened on before the entry was added,
//! or, once its service is gone (or its number moved), to a port nothing listens on, where
//! the connection is refused until the map is updated. A connection to a virtual IP and port
//! the map has no entry for (a service just come) goes to the node side at that same port:
//! relay numbers skip the port numbers of the services the instance sees, so that it finds no
//! relay there.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use meridian_model::Protocol;

use crate::node_proxy::{mesh_port, LocalInstance, Reach, ServiceKey, OUTBOUND_PORT};
use crate::relay_numbers::RelayNumbers;

/// A `tcp` port of a service that an instance in a namespace reaches by the service's virtual
/// IP: the namespace's rules send `vip:port` to the node side's `relay` port, where the node
/// proxy relays the connection to the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TcpRelay {
    /// The service's virtual IP.
    pub vip: Ipv4Addr,
    /// The service's port.
    pub port: u16,
    /// The node-side port it is relayed from.
    pub relay: u16,
}

/// The relays of one instance in a namespace, kept across the node proxy's configurations:
/// their numbers, and what the namespace's map may hold.
#[derive(Debug)]
pub struct NamespaceRelays {
    /// The instance's name on the node ([`LocalInstance::name`]): its node side's address
    /// serves another instance later, with a namespace of its own.
    instance: String,
    /// The relay number of each (service, port name).
    numbers: RelayNumbers<(ServiceKey, String)>,
    /// The entries the namespace's map may hold.
    mapped: BTreeSet<TcpRelay>,
}

impl NamespaceRelays {
    /// The relays of `instance`, in `namespaces` by its node side's address: those kept for it,
    /// or new ones (an instance no longer running at that address leaves its own).
    pub fn of<'n>(
        namespaces: &'n mut BTreeMap<Ipv4Addr, NamespaceRelays>,
        instance: &LocalInstance,
    ) -> &'n mut NamespaceRelays {
        let name = instance.name();
        let relays = namespaces
            .entry(instance.address)
            .or_insert_with(|| NamespaceRelays::new(name.clone()));
        if relays.instance != name {
            *relays = NamespaceRelays::new(name);
        }
        relays
    }

    fn new(instance: String) -> NamespaceRelays {
        NamespaceRelays {
            instance,
            numbers: RelayNumbers::default(),
            mapped: BTreeSet::new(),
        }
    }

    /// Whether the instance's name is `name`.
    pub fn is_of(&self, name: &str) -> bool {
        self.instance == name
    }

    /// The relays of the instance among `reaches` (what it sees), each with its reach and the
    /// index of its port: one per `tcp` port of each service reached by a name not pinned to a
    /// region and having a virtual IP. Numbers skip what the node side listens on for other
    /// things (HTTP ports of what the instance sees, its mesh ports, `HTTP_PROXY`) and the
    /// numbers of `tcp` ports it sees (a connection to a virtual IP and port the map does not
    /// have yet goes to the node side at that port: it must find no relay there). A
    /// (service, port) keeps the number it had unless that is now skipped; a new one gets the
    /// lowest from [`crate::node_proxy::RELAY_PORT_BASE`] up that is neither skipped, nor
    /// another's, nor one an entry of the map may point to.
    pub fn assign<'r, 'a>(
        &mut self,
        instance: &LocalInstance,
        reaches: &'r [Reach<'a>],
    ) -> Vec<(TcpRelay, &'r Reach<'a>, usize)> {
        let mut taken: BTreeSet<u16> = reaches
            .iter()
            .flat_map(|r| r.service.spec.ports.iter())
            .filter_map(|p| u16::try_from(p.port).ok())
            .collect();
        taken.insert(OUTBOUND_PORT);
        taken.extend((0..instance.spec.ports.len()).map(mesh_port));
        let mut seen = BTreeSet::new();
        let mut wanted = Vec::new();
        for reach in reaches {
            let (None, Some(vip)) = (reach.region, reach.service.vip) else {
                continue;
            };
            for (index, port) in reach.service.spec.ports.iter().enumerate() {
                let Ok(number) = u16::try_from(port.port) else {
                    continue;
                };
                if port.protocol == Protocol::Tcp && seen.insert((vip, number)) {
                    let key = (reach.target.clone(), port.name.clone());
                    wanted.push((key, vip, number, reach, index));
                }
            }
        }
        let held = self.mapped.iter().map(|r| r.relay).collect();
        let keys = wanted.iter().map(|(key, ..)| key.clone());
        let numbers: BTreeMap<_, u16> = self
            .numbers
            .update(keys, &taken, &held)
            .into_iter()
            .collect();
        wanted
            .into_iter()
            .filter_map(|(key, vip, port, reach, index)| {
                let relay = *numbers.get(&key)?;
                Some((TcpRelay { vip, port, relay }, reach, index))
            })
            .collect()
    }

    /// Whether an entry of the namespace's map may point to the node side's `port`: nothing
    /// else may listen there yet.
    pub fn holds(&self, port: u16) -> bool {
        self.mapped.iter().any(|r| r.relay == port)
    }

    /// Whether the namespace's map holds exactly `relays`.
    pub fn maps(&self, relays: &[TcpRelay]) -> bool {
        self.mapped.len() == relays.len() && relays.iter().all(|r| self.mapped.contains(r))
    }

    /// The namespace's map was set to `relays`.
    pub fn mapped(&mut self, relays: &[TcpRelay]) {
        self.mapped = relays.iter().copied().collect();
    }

    /// Setting the namespace's map to `relays` failed: as far as the agent knows, it may hold
    /// those as well as what it held.
    pub fn may_map(&mut self, relays: &[TcpRelay]) {
        self.mapped.extend(relays);
    }
}
