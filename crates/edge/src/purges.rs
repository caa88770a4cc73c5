//! The purges of the edge's cache: every purge the global control plane holds
//! (`meridian.v1.CachePurge`, the newest `meridian_model::PURGE_HISTORY`, numbered 1, 2, 3, …
//! without gaps) is applied once, in order, each within its app's domains as the region
//! summaries say (responses stored for other hosts are not the app's, or no route serves them
//! any more).
//!
//! The edge remembers the number of the last purge it applied. What it holds after each
//! response is the plane's history, oldest to newest; when that no longer continues from the
//! last one applied, the edge purges everything it caches instead of guessing: the first
//! history it sees since it started (its cache is as young as the process), a gap (it was
//! away while more purges were made than the history holds), or a newest purge older than
//! its own (a new history), and a purge it cannot read. So it never serves what a purge it
//! missed removed.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use meridian_model::check_dns_label;
use meridian_proxy::{CachePurge as Purged, Proxy, PurgeScope};
use meridian_xds::meridian::{purge_name, purge_sequence, CachePurge};
use meridian_xds::Held;
use prost::Message;

use crate::selection::RegionView;

/// The public domains of each app (`org/app`), as the region summaries say.
pub type AppDomains = HashMap<String, Vec<String>>;

/// The domains of each app deployed in `regions`.
pub fn app_domains(regions: &[RegionView]) -> AppDomains {
    let mut by_app: HashMap<String, BTreeSet<String>> = HashMap::new();
    for deployment in regions.iter().flat_map(|region| &region.deployments) {
        let app = format!("{}/{}", deployment.org, deployment.app);
        let domains = deployment.spec.domains.iter().cloned();
        by_app.entry(app).or_default().extend(domains);
    }
    by_app
        .into_iter()
        .map(|(app, domains)| (app, domains.into_iter().collect()))
        .collect()
}

/// What the edge knows of the purges it applied.
#[derive(Debug, Default)]
pub struct Purges {
    /// The number of the last purge applied; `None` until a first history was seen.
    applied: Option<u64>,
    /// The number last recorded beside the cache's disk tier.
    recorded: Option<u64>,
}

/// One purge, read.
#[derive(Debug, PartialEq, Eq)]
struct Purge {
    sequence: u64,
    /// Its app, `org/app`.
    app: String,
    purged: Purged,
}

/// What to do with the history held.
#[derive(Debug, PartialEq, Eq)]
enum Plan {
    /// Nothing new.
    Nothing,
    /// Apply these, in order, the last of them `newest`.
    Apply { purges: Vec<Purge>, newest: u64 },
    /// Purge everything and count the history as applied up to `newest`: `why`.
    Everything { newest: u64, why: String },
}

impl Purges {
    /// What an edge whose cache is `proxy`'s knows when it starts: the last purge applied to
    /// its cache's disk tier, if it has one that knows (its records are as old as that);
    /// otherwise nothing (its cache is as young as the process).
    pub fn of(proxy: &Proxy) -> Purges {
        Purges {
            applied: proxy.cache_disk_applied(),
            // Recorded again at the first follow: its metric is set then.
            recorded: None,
        }
    }

    /// [`Purges::apply`], then records the last purge applied beside the cache's disk tier
    /// and lets the tier serve: every purge it missed has been applied (or everything was
    /// purged).
    pub async fn follow(
        &mut self,
        proxy: &Proxy,
        held: Option<&BTreeMap<String, Held>>,
        domains: &AppDomains,
    ) -> Result<(), String> {
        let result = self.apply(proxy, held, domains).await;
        if self.applied != self.recorded {
            if let Some(number) = self.applied {
                proxy.cache_purge_applied(number);
            }
            self.recorded = self.applied;
        }
        proxy.cache_purges_caught_up();
        result
    }

    /// Applies the purges in `held` (every [`CachePurge`] the edge holds, by name) that are
    /// new, in order, to `proxy`'s cache, each within its app's `domains`, or purges everything
    /// as the module says. A purge that cannot be read is rejected (its name and why) once
    /// everything was purged.
    async fn apply(
        &mut self,
        proxy: &Proxy,
        held: Option<&BTreeMap<String, Held>>,
        domains: &AppDomains,
    ) -> Result<(), String> {
        let Some(held) = held.filter(|held| !held.is_empty()) else {
            // No purge was ever made: from now on, each one is new.
            self.applied.get_or_insert(0);
            return Ok(());
        };
        let plan = match plan(self.applied, held) {
            Ok(plan) => plan,
            Err((newest, reason)) => {
                everything(proxy, &format!("a purge could not be read: {reason}")).await;
                self.applied = Some(newest);
                return Err(reason);
            }
        };
        match plan {
            Plan::Nothing => {}
            Plan::Everything { newest, why } => {
                everything(proxy, &why).await;
                self.applied = Some(newest);
            }
            Plan::Apply { purges, newest } => {
                for purge in purges {
                    let app_domains = domains.get(&purge.app).map_or(&[][..], Vec::as_slice);
                    let scope = PurgeScope::Domains(app_domains);
                    match proxy.purge_cache(&purge.purged, scope).await {
                        Ok(removed) => tracing::debug!(sequence = purge.sequence, removed,
                            purge = ?purge.purged, "purge applied"),
                        Err(e) => {
                            let reason = format!("{}: {e}", purge_name(purge.sequence));
                            let why = format!("a purge could not be applied: {reason}");
                            everything(proxy, &why).await;
                            self.applied = Some(newest);
                            return Err(reason);
                        }
                    }
                    self.applied = Some(purge.sequence);
                }
            }
        }
        Ok(())
    }
}

/// Purges everything the edge caches, saying `why`.
async fn everything(proxy: &Proxy, why: &str) {
    match proxy.purge_cache(&Purged::All, PurgeScope::AnyHost).await {
        Ok(removed) => tracing::info!(removed, %why, "everything cached was purged"),
        // A purge of everything names no URL: it cannot fail.
        Err(e) => tracing::warn!(error = %e, "purging everything failed"),
    }
}

/// What to do with `held` (not empty) after applying up to `applied`; or the newest number held
/// and why a purge in it cannot be read.
fn plan(applied: Option<u64>, held: &BTreeMap<String, Held>) -> Result<Plan, (u64, String)> {
    let number = |name: Option<&String>| {
        let name = name.map_or("", String::as_str);
        purge_sequence(name).ok_or_else(|| format!("`{name}` is not the name of a purge"))
    };
    let (oldest, newest) = (held.keys().next(), held.keys().last());
    let newest = number(newest).map_err(|e| (applied.unwrap_or(0), e))?;
    let oldest = number(oldest).map_err(|e| (newest, e))?;
    let why = match applied {
        Some(last) if last == newest => return Ok(Plan::Nothing),
        Some(last) if last > newest => format!(
            "the control plane's purges end at {newest}, before the last one applied ({last}): \
             a new history"
        ),
        Some(last) if oldest <= last + 1 => {
            let mut purges = Vec::new();
            for (name, held) in held.range(purge_name(last + 1)..) {
                let purge = read(name, held).map_err(|e| (newest, e))?;
                let expected = last + 1 + purges.len() as u64;
                if purge.sequence != expected {
                    return Ok(Plan::Everything {
                        newest,
                        why: format!("purge {expected} is missing from the history held"),
                    });
                }
                purges.push(purge);
            }
            return Ok(Plan::Apply { purges, newest });
        }
        Some(last) => format!(
            "purges {} to {} were missed (the history held starts at {oldest})",
            last + 1,
            oldest - 1
        ),
        None => "the first purges since the edge started".to_owned(),
    };
    Ok(Plan::Everything { newest, why })
}

/// The purge held as `name`, checked.
fn read(name: &str, held: &Held) -> Result<Purge, String> {
    let bad = |reason: String| format!("purge `{name}`: {reason}");
    let message =
        CachePurge::decode(held.resource.value.as_slice()).map_err(|e| bad(e.to_string()))?;
    if purge_sequence(name) != Some(message.sequence) {
        return Err(bad(format!("its sequence is {}", message.sequence)));
    }
    let purged = match (message.url.is_empty(), message.tag.is_empty(), message.all) {
        (false, true, false) => Purged::Url(message.url),
        (true, false, false) => Purged::Tag(message.tag),
        (true, true, true) => Purged::All,
        _ => return Err(bad("give exactly one of url, tag and all".to_owned())),
    };
    check_dns_label(&message.org).map_err(|e| bad(format!("org: {e}")))?;
    check_dns_label(&message.app).map_err(|e| bad(format!("app: {e}")))?;
    Ok(Purge {
        sequence: message.sequence,
        app: format!("{}/{}", message.org, message.app),
        purged,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use envoy_types::pb::google::protobuf::Any;
    use meridian_xds::meridian::CACHE_PURGE;

    use super::*;

    fn message(sequence: u64) -> CachePurge {
        CachePurge {
            sequence,
            org: "acme".into(),
            app: "shop".into(),
            tag: format!("t{sequence}"),
            ..CachePurge::default()
        }
    }

    fn held(messages: impl IntoIterator<Item = CachePurge>) -> BTreeMap<String, Held> {
        messages
            .into_iter()
            .map(|m| {
                let name = purge_name(m.sequence);
                let resource = Any {
                    type_url: CACHE_PURGE.to_owned(),
                    value: m.encode_to_vec(),
                };
                let held = Held {
                    version: m.sequence.to_string(),
                    resource: Arc::new(resource),
                };
                (name, held)
            })
            .collect()
    }

    fn history(numbers: std::ops::RangeInclusive<u64>) -> BTreeMap<String, Held> {
        held(numbers.map(message))
    }

    fn applied(plan: Plan) -> Vec<u64> {
        match plan {
            Plan::Apply { purges, newest } => {
                let numbers: Vec<u64> = purges.iter().map(|p| p.sequence).collect();
                assert_eq!(numbers.last(), Some(&newest));
                numbers
            }
            other => panic!("not applied: {other:?}"),
        }
    }

    fn everything_up_to(plan: Plan) -> u64 {
        match plan {
            Plan::Everything { newest, .. } => newest,
            other => panic!("not everything: {other:?}"),
        }
    }

    #[test]
    fn the_purges_after_the_last_applied_are_applied_in_order() {
        assert_eq!(applied(plan(Some(3), &history(1..=6)).unwrap()), [4, 5, 6]);
        // The history dropped older purges: it still continues from 3 when it starts at 4.
        assert_eq!(applied(plan(Some(3), &history(4..=5)).unwrap()), [4, 5]);
        assert_eq!(plan(Some(6), &history(1..=6)).unwrap(), Plan::Nothing);
        let first = plan(Some(0), &history(1..=1)).unwrap();
        let Plan::Apply { purges, .. } = first else {
            panic!("{first:?}")
        };
        assert_eq!(
            purges[0],
            Purge {
                sequence: 1,
                app: "acme/shop".into(),
                purged: Purged::Tag("t1".into()),
            }
        );
    }

    #[test]
    fn a_history_that_does_not_continue_from_the_last_applied_purges_everything() {
        // Away while more purges were made than the history holds.
        assert_eq!(everything_up_to(plan(Some(3), &history(5..=9)).unwrap()), 9);
        // The first history since the edge started.
        assert_eq!(everything_up_to(plan(None, &history(2..=4)).unwrap()), 4);
        // A history that ends before the last applied: a new one.
        assert_eq!(
            everything_up_to(plan(Some(50), &history(1..=3)).unwrap()),
            3
        );
        // A hole in what is held.
        let holed = held([1, 2, 4].map(message));
        assert_eq!(everything_up_to(plan(Some(1), &holed).unwrap()), 4);
    }

    #[test]
    fn a_purge_that_cannot_be_read_is_named() {
        let mut two = message(2);
        two.all = true;
        let (newest, reason) = plan(Some(1), &held([message(1), two])).unwrap_err();
        assert_eq!(newest, 2);
        assert!(reason.contains("purge/00000000000000000002"), "{reason}");
        let mut misnumbered = message(3);
        misnumbered.sequence = 4;
        let mut map = history(1..=2);
        map.extend(
            held([misnumbered])
                .into_values()
                .map(|h| (purge_name(3), h)),
        );
        assert!(plan(Some(2), &map).is_err());
        let mut bad_app = message(3);
        bad_app.app = "not an app".into();
        assert!(plan(Some(2), &held([bad_app])).is_err());
    }
}
