//! TLS handshakes in progress per client address: one address may not hold more than a few
//! of a listener's connections in the costly, unauthenticated handshake phase, so that a flood
//! of half-open TLS connections from one address leaves room for everyone else.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// The handshakes in progress on one listener, by client address.
#[derive(Default)]
pub struct HandshakeSlots {
    in_progress: Mutex<HashMap<IpAddr, u32>>,
}

impl HandshakeSlots {
    /// A slot for a handshake from `ip`, held until dropped; `None` if `ip` has `max` already.
    pub fn take(self: &Arc<Self>, ip: IpAddr, max: u32) -> Option<HandshakeSlot> {
        let mut in_progress = self
            .in_progress
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let count = in_progress.entry(ip).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(HandshakeSlot {
            slots: self.clone(),
            ip,
        })
    }
}

/// One handshake in progress, counted against its client address until dropped.
pub struct HandshakeSlot {
    slots: Arc<HandshakeSlots>,
    ip: IpAddr,
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut in_progress = self
            .slots
            .in_progress
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = in_progress.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                // Addresses without a handshake take no memory.
                in_progress.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_has_its_own_slots_and_gets_them_back() {
        let slots = Arc::new(HandshakeSlots::default());
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.2".parse().unwrap(), "::1".parse().unwrap());
        let held: Vec<_> = (0..2).map(|_| slots.take(a, 2).unwrap()).collect();
        assert!(slots.take(a, 2).is_none());
        assert!(slots.take(b, 2).is_some());
        drop(held);
        assert!(slots.take(a, 2).is_some());
        assert!(slots.in_progress.lock().unwrap().is_empty());
    }
}
