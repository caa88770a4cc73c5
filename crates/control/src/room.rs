//! Room on a node: what it offers its instances (CPU and memory, from its agent's report), what
//! the instances placed there ask for (their definitions' `resources`), whether one more fits,
//! and, when one fits nowhere, why — in the words `meridian status` shows.

use meridian_model::{Cpu, Memory, Resources};

/// CPU (thousandths of a core) and memory (bytes): a node's offer, or what instances ask.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Amounts {
    /// CPU, in thousandths of a core.
    pub cpu_millis: u64,
    /// Memory, in bytes.
    pub memory_bytes: u64,
}

impl Amounts {
    /// What an instance with `resources` asks for (nothing for a field not set).
    pub fn asked(resources: &Resources) -> Amounts {
        Amounts {
            cpu_millis: resources.cpu.map_or(0, |cpu| u64::from(cpu.millis())),
            memory_bytes: resources.memory.map_or(0, Memory::bytes),
        }
    }

    /// The sum of `self` and `other`.
    pub fn plus(self, other: Amounts) -> Amounts {
        Amounts {
            cpu_millis: self.cpu_millis.saturating_add(other.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_add(other.memory_bytes),
        }
    }
}

/// What is free on a node that offers `offer` (0: not said, not counted) when `used` is placed:
/// `None` for an amount not counted.
fn free(offer: Amounts, used: Amounts) -> (Option<u64>, Option<u64>) {
    let left = |offer: u64, used: u64| (offer > 0).then(|| offer.saturating_sub(used));
    (
        left(offer.cpu_millis, used.cpu_millis),
        left(offer.memory_bytes, used.memory_bytes),
    )
}

/// Whether one more instance asking `asks` fits on a node offering `offer` with `used` placed.
pub fn fits(offer: Amounts, used: Amounts, asks: Amounts) -> bool {
    let (cpu, memory) = free(offer, used);
    cpu.is_none_or(|free| asks.cpu_millis <= free)
        && memory.is_none_or(|free| asks.memory_bytes <= free)
}

/// Why an instance asking `asks` fits on none of `nodes` (name, offer, used), which have room
/// for one more instance by count: the amount no node has free, with the most any has.
pub fn no_room(nodes: &[(&str, Amounts, Amounts)], asks: Amounts) -> String {
    // Each node's free CPU and memory (`None`: not counted).
    let frees: Vec<(&str, [Option<u64>; 2])> = nodes
        .iter()
        .map(|(name, offer, used)| {
            let (cpu, memory) = free(*offer, *used);
            (*name, [cpu, memory])
        })
        .collect();
    let fits = |free: Option<u64>, asked: u64| free.is_none_or(|free| asked <= free);
    let cpu_fits = |cpu: Option<u64>| fits(cpu, asks.cpu_millis);
    let memory_fits = |memory: Option<u64>| fits(memory, asks.memory_bytes);
    // The most of amount `i` free on a node, and that node.
    let most = |i: usize| {
        frees
            .iter()
            .filter_map(|(name, free)| Some((free[i]?, *name)))
            .max()
    };
    let cpu = Cpu::from_millis(u32::try_from(asks.cpu_millis).unwrap_or(u32::MAX));
    let memory = Memory::from_bytes(asks.memory_bytes);
    let cpu_words = |millis: u64| Cpu::from_millis(u32::try_from(millis).unwrap_or(u32::MAX));
    if !frees.iter().any(|n| cpu_fits(n.1[0])) {
        let (left, node) = most(0).unwrap_or_default();
        return format!(
            "no node has {cpu} cpu free (the most: {} on node {node})",
            cpu_words(left)
        );
    }
    if !frees.iter().any(|n| memory_fits(n.1[1])) {
        let (left, node) = most(1).unwrap_or_default();
        return format!(
            "no node has {memory} memory free (the most: {} on node {node})",
            Memory::from_bytes(left)
        );
    }
    format!("no node has both {cpu} cpu and {memory} memory free")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn amounts(cpu_millis: u64, memory_mib: u64) -> Amounts {
        Amounts {
            cpu_millis,
            memory_bytes: memory_mib << 20,
        }
    }

    #[test]
    fn an_instance_fits_where_every_counted_amount_is_free() {
        let offer = amounts(4000, 8192);
        assert!(fits(offer, amounts(3000, 0), amounts(1000, 8192)));
        assert!(!fits(offer, amounts(3001, 0), amounts(1000, 0)));
        assert!(!fits(offer, amounts(0, 8000), amounts(0, 256)));
        // A node that says nothing (an older agent) counts nothing.
        assert!(fits(
            Amounts::default(),
            amounts(9000, 9000),
            amounts(1000, 1000)
        ));
    }

    #[test]
    fn the_reason_names_what_no_node_has_free_and_the_most_there_is() {
        let nodes = [
            ("a", amounts(4000, 8192), amounts(3000, 0)),
            ("b", amounts(2000, 1024), amounts(500, 512)),
        ];
        assert_eq!(
            no_room(&nodes, amounts(2000, 0)),
            "no node has 2 cpu free (the most: 1.5 on node b)"
        );
        assert_eq!(
            no_room(&nodes, amounts(1000, 16384)),
            "no node has 16Gi memory free (the most: 8Gi on node a)"
        );
        assert_eq!(
            no_room(&nodes, amounts(1200, 1024)),
            "no node has both 1.2 cpu and 1Gi memory free"
        );
    }
}
