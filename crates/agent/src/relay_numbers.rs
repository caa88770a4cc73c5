//! The numbers of the node proxy's TCP relay ports, from [`RELAY_PORT_BASE`] up, kept for as
//! long as they are wanted: what points to a relay (a host-mode instance's environment, a
//! namespace's nftables map) must never find another service's relay there.

use std::collections::{BTreeMap, BTreeSet};

use crate::node_proxy::RELAY_PORT_BASE;

/// The relay numbers given to keys (a service's port), kept across [`RelayNumbers::update`]s.
#[derive(Debug, Clone)]
pub struct RelayNumbers<K> {
    numbers: BTreeMap<K, u16>,
}

impl<K> Default for RelayNumbers<K> {
    fn default() -> Self {
        RelayNumbers {
            numbers: BTreeMap::new(),
        }
    }
}

impl<K: Ord + Clone + std::fmt::Debug> RelayNumbers<K> {
    /// Numbers the keys `wanted`, and returns each with its number, in `wanted`'s order: a key
    /// numbered before keeps its number unless it is now `taken` (the node proxy listens there
    /// for something else); a key no longer wanted loses its number; the others get, in order,
    /// the lowest number from [`RELAY_PORT_BASE`] up that is neither `taken`, nor `held`
    /// (something may still point there), nor another key's. A key gets none when no number
    /// is left (logged); so does every new key after it.
    pub fn update(
        &mut self,
        wanted: impl IntoIterator<Item = K>,
        taken: &BTreeSet<u16>,
        held: &BTreeSet<u16>,
    ) -> Vec<(K, u16)> {
        let wanted: Vec<K> = wanted.into_iter().collect();
        let kept: BTreeSet<&K> = wanted.iter().collect();
        self.numbers
            .retain(|key, number| kept.contains(key) && !taken.contains(number));
        // Numbers are handed out upwards: the kept ones are all a new key must skip.
        let used: BTreeSet<u16> = self.numbers.values().copied().collect();
        let mut free = (RELAY_PORT_BASE..=u16::MAX)
            .filter(|n| !taken.contains(n) && !held.contains(n) && !used.contains(n));
        let mut numbered = Vec::with_capacity(wanted.len());
        for key in wanted {
            let number = match self.numbers.get(&key) {
                Some(number) => *number,
                None => {
                    let Some(number) = free.next() else {
                        tracing::warn!(?key, "no relay port left");
                        continue;
                    };
                    self.numbers.insert(key.clone(), number);
                    number
                }
            };
            numbered.push((key, number));
        }
        numbered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_keep_their_numbers_and_new_ones_skip_taken_held_and_used_numbers() {
        let mut numbers = RelayNumbers::default();
        let none = BTreeSet::new();
        let base = RELAY_PORT_BASE;
        let first = numbers.update(["b", "d"], &[base].into(), &none);
        assert_eq!(first, [("b", base + 1), ("d", base + 2)]);
        // a comes before b, b goes, e comes: d keeps its number; b's is held (something may
        // still point there), so the new ones skip it.
        let held = [base + 1].into();
        let second = numbers.update(["a", "d", "e"], &none, &held);
        assert_eq!(second, [("a", base), ("d", base + 2), ("e", base + 3)]);
        // d's number is taken for something else: d moves.
        let third = numbers.update(["a", "d", "e"], &[base + 2].into(), &none);
        assert_eq!(third, [("a", base), ("d", base + 1), ("e", base + 3)]);
    }

    #[test]
    fn keys_past_the_last_number_get_none() {
        let mut numbers = RelayNumbers::default();
        let taken: BTreeSet<u16> = (RELAY_PORT_BASE..u16::MAX).collect();
        let got = numbers.update([1, 2], &taken, &BTreeSet::new());
        assert_eq!(got, [(1, u16::MAX)]);
    }
}
