//! Which layers the image store evicts to fit its size bound: a pure choice over each layer's
//! size, last use and whether an instance uses it.

use std::time::SystemTime;

/// A layer as the store's garbage collection sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerUse {
    /// Its digest.
    pub digest: String,
    /// Bytes it takes (its blob and its unpacked files).
    pub bytes: u64,
    /// When an instance last started with it (or it was pulled).
    pub last_used: SystemTime,
    /// Whether a running or starting instance uses it (then it is never evicted).
    pub in_use: bool,
}

/// The layers to evict so that the store's total (the layers' bytes) is at most `max`: those
/// not in use, least recently used first (ties by digest, so the choice is repeatable), until
/// the total fits. When the layers in use alone exceed `max`, every layer not in use is
/// evicted and the store stays over its bound until some stop being used.
pub fn evictions(layers: &[LayerUse], max: u64) -> Vec<&str> {
    let mut total: u64 = layers.iter().map(|l| l.bytes).sum();
    if total <= max {
        return Vec::new();
    }
    let mut idle: Vec<&LayerUse> = layers.iter().filter(|l| !l.in_use).collect();
    idle.sort_by(|a, b| {
        a.last_used
            .cmp(&b.last_used)
            .then_with(|| a.digest.cmp(&b.digest))
    });
    let mut chosen = Vec::new();
    for layer in idle {
        if total <= max {
            break;
        }
        total -= layer.bytes;
        chosen.push(layer.digest.as_str());
    }
    chosen
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn layer(digest: &str, bytes: u64, age_secs: u64, in_use: bool) -> LayerUse {
        LayerUse {
            digest: digest.to_owned(),
            bytes,
            last_used: SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 - age_secs),
            in_use,
        }
    }

    #[test]
    fn nothing_is_evicted_within_the_bound() {
        let layers = [layer("a", 40, 100, false), layer("b", 60, 50, false)];
        assert!(evictions(&layers, 100).is_empty());
        assert!(evictions(&[], 0).is_empty());
    }

    #[test]
    fn the_least_recently_used_go_first_until_the_total_fits() {
        let layers = [
            layer("new", 30, 10, false),
            layer("oldest", 30, 300, false),
            layer("old", 30, 200, false),
            layer("middle", 30, 100, false),
        ];
        // 120 bytes, bound 70: the two oldest go (60 left).
        assert_eq!(evictions(&layers, 70), ["oldest", "old"]);
        // Bound 90: one is enough.
        assert_eq!(evictions(&layers, 90), ["oldest"]);
    }

    #[test]
    fn layers_in_use_are_never_evicted() {
        let layers = [
            layer("running", 500, 900, true),
            layer("idle-old", 100, 300, false),
            layer("starting", 200, 800, true),
            layer("idle-new", 100, 10, false),
        ];
        // 900 bytes, bound 800: the oldest idle layer goes, though older ones are in use.
        assert_eq!(evictions(&layers, 800), ["idle-old"]);
        // Bound 100: in use alone is 700; every idle layer goes, nothing in use does.
        assert_eq!(evictions(&layers, 100), ["idle-old", "idle-new"]);
    }

    #[test]
    fn a_large_old_layer_may_free_enough_alone() {
        let layers = [
            layer("small-old", 10, 500, false),
            layer("big", 1_000, 400, false),
            layer("small-new", 10, 1, false),
        ];
        assert_eq!(evictions(&layers, 500), ["small-old", "big"]);
    }

    #[test]
    fn ties_in_last_use_are_broken_by_digest() {
        let layers = [layer("b", 10, 5, false), layer("a", 10, 5, false)];
        assert_eq!(evictions(&layers, 10), ["a"]);
    }
}
