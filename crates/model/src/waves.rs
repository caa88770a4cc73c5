//! Regions in waves (`deploy.waves`): which regions of a service take its current version now.
//! A wave is released once every region of every earlier wave runs the current version to the
//! full; a region that took the current version keeps it, whatever happens to the others
//! since. Regions not released keep the version they had. The global control plane publishes
//! by it; the API's status shows it.

use crate::{RegionReport, RegionalDeployment, ServiceHealth};

/// Where one region stands with a service's current version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    /// Its wave (0 first).
    pub wave: usize,
    /// Whether it runs the current version to the full.
    pub complete: bool,
    /// Whether it took the current version already (published to it, or reported by it).
    pub started: bool,
}

/// Where the region of `rd` (a regional deployment of the current version) stands, from what
/// it reports of the service (`health`) and whether it is known to have taken the version
/// otherwise (`taken`: published to it).
pub fn standing(rd: &RegionalDeployment, health: Option<&ServiceHealth>, taken: bool) -> Standing {
    Standing {
        wave: rd.spec.deploy.wave_of(&rd.region),
        complete: health.is_some_and(|h| complete(h, rd.version, rd.spec.scale.min)),
        started: taken || health.is_some_and(|h| h.version == rd.version),
    }
}

/// Whether each region of `standings` takes the current version now: those of the first
/// wave not complete and of the waves before it, and those that started.
pub fn released(standings: &[Standing]) -> Vec<bool> {
    let open = standings
        .iter()
        .filter(|s| !s.complete)
        .map(|s| s.wave)
        .min()
        .unwrap_or(usize::MAX);
    standings
        .iter()
        .map(|s| s.wave <= open || s.started)
        .collect()
}

/// What `report` says of the service of `rd`.
pub fn service_in<'a>(
    report: &'a RegionReport,
    rd: &RegionalDeployment,
) -> Option<&'a ServiceHealth> {
    report
        .services
        .iter()
        .find(|s| s.org == rd.org && s.app == rd.app && s.service == rd.service)
}

/// Whether a region's report of a service says it runs `version` to the full: no instance of
/// another version in service, at least `scale_min` healthy, and its rollout did not fail (a
/// region that rolled back runs the previous version's instances).
pub fn complete(health: &ServiceHealth, version: u64, scale_min: u32) -> bool {
    let failed = health
        .rollout
        .as_ref()
        .is_some_and(|r| r.version == version && r.phase.failed());
    health.version == version
        && health.versions.is_empty()
        && health.healthy >= scale_min
        && !failed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn standing(wave: usize, complete: bool, started: bool) -> Standing {
        Standing {
            wave,
            complete,
            started,
        }
    }

    #[test]
    fn a_wave_starts_once_every_earlier_one_is_complete() {
        // Nothing complete: the first wave only.
        let start = [
            standing(0, false, false),
            standing(1, false, false),
            standing(1, false, false),
            standing(2, false, false),
        ];
        assert_eq!(released(&start), [true, false, false, false]);
        // The first complete: the second starts; the third waits for all of the second.
        let second = [
            standing(0, true, true),
            standing(1, true, true),
            standing(1, false, true),
            standing(2, false, false),
        ];
        assert_eq!(released(&second), [true, true, true, false]);
        let all = [
            standing(0, true, true),
            standing(1, true, true),
            standing(1, true, true),
            standing(2, false, false),
        ];
        assert_eq!(released(&all), [true, true, true, true]);
    }

    #[test]
    fn a_region_that_started_keeps_the_new_version_when_an_earlier_one_falls_back() {
        let fallen = [standing(0, false, true), standing(1, false, true)];
        assert_eq!(released(&fallen), [true, true]);
        let never = [standing(0, false, true), standing(1, false, false)];
        assert_eq!(released(&never), [true, false]);
    }

    #[test]
    fn complete_means_the_version_alone_and_enough_healthy() {
        let health: ServiceHealth = serde_json::from_value(serde_json::json!({
            "org": "acme", "app": "shop", "service": "web",
            "version": 3, "placed": 2, "healthy": 2,
        }))
        .unwrap();
        assert!(complete(&health, 3, 2));
        assert!(!complete(&health, 4, 2));
        assert!(!complete(&health, 3, 3));
        let mut rolling = health.clone();
        rolling.versions = vec![crate::VersionHealth {
            version: 2,
            placed: 1,
            healthy: 1,
        }];
        assert!(!complete(&rolling, 3, 2));
        let mut rolled_back = health.clone();
        rolled_back.rollout = Some(
            serde_json::from_value(serde_json::json!({
                "version": 3, "previous": 2, "strategy": "rolling", "phase": "rolled_back",
                "started_at": 1, "updated_at": 2,
            }))
            .unwrap(),
        );
        assert!(!complete(&rolled_back, 3, 2));
    }
}
