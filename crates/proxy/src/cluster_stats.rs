//! Request figures per cluster ([`Figures`]), counted by every route target that sends to the
//! cluster: a gateway reports them to its region's control plane, which adds them up per
//! service (a gateway's clusters are its services' ports). The set is looked at only when a
//! configuration is applied and when the figures are read.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use meridian_xds::meridian::ClusterTraffic;

use crate::figures::Figures;
use crate::lock;

/// The clusters' figures, by cluster name. Cloning shares them.
#[derive(Debug, Clone, Default)]
pub struct ClusterStatsSet {
    by_name: Arc<Mutex<HashMap<String, Arc<Figures>>>>,
}

impl ClusterStatsSet {
    /// The figures of cluster `name`, made on first use.
    pub fn get(&self, name: &str) -> Arc<Figures> {
        let mut map = lock(&self.by_name);
        if let Some(figures) = map.get(name) {
            return figures.clone();
        }
        let figures = Arc::new(Figures::default());
        map.insert(name.to_owned(), figures.clone());
        figures
    }

    /// Forgets the clusters not in `keep`.
    pub fn retain(&self, keep: &HashSet<&str>) {
        lock(&self.by_name).retain(|name, _| keep.contains(name.as_str()));
    }

    /// Every cluster's figures so far (those with requests).
    pub fn traffic(&self) -> Vec<ClusterTraffic> {
        let map = lock(&self.by_name);
        let mut all: Vec<ClusterTraffic> = map
            .iter()
            .map(|(cluster, figures)| (cluster, figures.traffic(0)))
            .filter(|(_, traffic)| traffic.requests > 0)
            .map(|(cluster, traffic)| ClusterTraffic {
                cluster: cluster.clone(),
                traffic: Some(traffic),
            })
            .collect();
        all.sort_by(|a, b| a.cluster.cmp(&b.cluster));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clusters_share_their_figures_until_they_are_gone() {
        let set = ClusterStatsSet::default();
        set.get("acme/shop/web:http").record(200, 1_500);
        set.get("acme/shop/web:http").record(502, 1_500);
        set.get("acme/shop/idle:http");
        let traffic = set.traffic();
        assert_eq!(traffic.len(), 1, "clusters without requests are left out");
        assert_eq!(traffic[0].cluster, "acme/shop/web:http");
        let figures = traffic[0].traffic.as_ref().unwrap();
        assert_eq!((figures.requests, figures.by_class[4]), (2, 1));
        set.retain(&HashSet::new());
        assert!(set.traffic().is_empty());
    }
}
