//! The conformance suite of the [`Store`] trait: every test runs on each backend (see
//! `conformance!` in main.rs) and must pass on all alike.

use std::sync::Arc;
use std::time::Duration;

use meridian_model::{ChangeKind, ChangeOp, Definition, DeploymentOrigin, Region, SecretOwner};
use meridian_store::{
    wait_for_changes, Applied, MissingOrg, ServiceFilter, ServiceKey, Store, StoreError, Watch,
};

use crate::backend::Backend;
use crate::contents::{contents, fill};

fn definition(name: &str, regions: &[&str], command: &str) -> Definition {
    let json = serde_json::json!({
        "org": "acme", "app": "shop", "name": name, "regions": regions,
        "runtime": {"process": {"command": command}}
    });
    meridian_model::parse_definition_json(json.to_string().as_bytes()).unwrap()
}

async fn with_regions(store: &dyn Store) {
    for (name, lat, lon) in [("fra", 50.1, 8.7), ("iad", 38.9, -77.0)] {
        store
            .put_region(&Region {
                name: name.into(),
                lat,
                lon,
            })
            .await
            .unwrap();
    }
}

fn key(name: &str) -> ServiceKey {
    ServiceKey {
        org: "acme".into(),
        app: "shop".into(),
        name: name.into(),
    }
}

pub async fn every_write_bumps_the_revision_by_one_and_failures_by_none(backend: &Backend) {
    let store = backend.open().await;
    assert_eq!(store.revision().await.unwrap(), 0);
    store.create_org("acme").await.unwrap();
    assert_eq!(store.revision().await.unwrap(), 1);
    assert!(matches!(
        store.create_org("acme").await,
        Err(StoreError::AlreadyExists(_))
    ));
    assert!(matches!(
        store.delete_region("nowhere").await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.rollback(&key("web"), 1, None).await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(store.revision().await.unwrap(), 1);
    with_regions(&store).await;
    store
        .apply_service(&definition("web", &["fra"], "a"), MissingOrg::Reject)
        .await
        .unwrap();
    assert_eq!(store.revision().await.unwrap(), 4);
    let feed = store.changes_after(0, 100).await.unwrap();
    let revisions: Vec<u64> = feed.iter().map(|c| c.revision).collect();
    assert_eq!(revisions, [1, 2, 3, 4]);
    assert_eq!(
        (
            feed[3].kind,
            feed[3].key.as_str(),
            feed[3].op,
            feed[3].version
        ),
        (ChangeKind::Service, "acme/shop/web", ChangeOp::Put, Some(1))
    );
}

pub async fn an_apply_that_changes_nothing_writes_nothing(backend: &Backend) {
    let store = backend.open().await;
    with_regions(&store).await;
    let first = store
        .apply_service(&definition("web", &["fra"], "v1"), MissingOrg::Create)
        .await
        .unwrap();
    assert!(first.changed);
    let revision = store.revision().await.unwrap();
    let again = store
        .apply_service(&definition("web", &["fra"], "v1"), MissingOrg::Create)
        .await
        .unwrap();
    assert!(!again.changed);
    assert_eq!(again.deployment, first.deployment);
    assert_eq!(store.revision().await.unwrap(), revision);
    assert_eq!(store.list_deployments(&key("web")).await.unwrap().len(), 1);
    // Any difference is a new version.
    let changed = store
        .apply_service(&definition("web", &["fra"], "v2"), MissingOrg::Create)
        .await
        .unwrap();
    assert_eq!((changed.changed, changed.deployment.version), (true, 2));
}

pub async fn a_rollout_control_is_kept_per_service_fed_as_a_change_and_goes_with_the_service(
    backend: &Backend,
) {
    use meridian_model::{RolloutControl, RolloutMode};
    let store = backend.open().await;
    with_regions(&store).await;
    let web = key("web");
    let paused = RolloutControl {
        version: 1,
        mode: RolloutMode::Paused,
    };
    assert!(matches!(
        store.set_rollout_control(&web, Some(paused)).await,
        Err(StoreError::NotFound(_))
    ));
    store
        .apply_service(&definition("web", &["fra"], "v1"), MissingOrg::Create)
        .await
        .unwrap();
    assert_eq!(store.get_rollout_control(&web).await.unwrap(), None);
    let revision = store.revision().await.unwrap();
    assert!(store.set_rollout_control(&web, Some(paused)).await.unwrap());
    assert!(!store.set_rollout_control(&web, Some(paused)).await.unwrap());
    assert_eq!(store.get_rollout_control(&web).await.unwrap(), Some(paused));
    let promoted = RolloutControl {
        mode: RolloutMode::Promoted,
        ..paused
    };
    assert!(store
        .set_rollout_control(&web, Some(promoted))
        .await
        .unwrap());
    assert!(store.set_rollout_control(&web, None).await.unwrap());
    assert!(!store.set_rollout_control(&web, None).await.unwrap());
    let feed = store.changes_after(revision, 10).await.unwrap();
    let kinds: Vec<(ChangeKind, &str, ChangeOp)> = feed
        .iter()
        .map(|c| (c.kind, c.key.as_str(), c.op))
        .collect();
    assert_eq!(
        kinds,
        [
            (ChangeKind::RolloutControl, "acme/shop/web", ChangeOp::Put),
            (ChangeKind::RolloutControl, "acme/shop/web", ChangeOp::Put),
            (
                ChangeKind::RolloutControl,
                "acme/shop/web",
                ChangeOp::Delete
            ),
        ]
    );
    store.set_rollout_control(&web, Some(paused)).await.unwrap();
    store.delete_service(&web).await.unwrap();
    store
        .apply_service(&definition("web", &["fra"], "v1"), MissingOrg::Create)
        .await
        .unwrap();
    assert_eq!(store.get_rollout_control(&web).await.unwrap(), None);
}

pub async fn rollouts_are_recorded_per_region_and_version_with_their_events_and_go_with_the_service(
    backend: &Backend,
) {
    let store = backend.open().await;
    with_regions(&store).await;
    let rollout = |version: u64, phase: &str| -> meridian_model::RolloutStatus {
        serde_json::from_value(serde_json::json!({
            "version": version, "previous": version - 1, "strategy": "rolling",
            "phase": phase, "started_at": 1, "updated_at": 2,
        }))
        .unwrap()
    };
    assert!(matches!(
        store
            .record_rollout(&key("web"), "fra", &rollout(2, "progressing"), None)
            .await,
        Err(StoreError::NotFound(_))
    ));
    for command in ["v1", "v2"] {
        store
            .apply_service(
                &definition("web", &["fra", "iad"], command),
                MissingOrg::Create,
            )
            .await
            .unwrap();
    }
    let web = key("web");
    assert!(store
        .record_rollout(&web, "fra", &rollout(2, "progressing"), None)
        .await
        .unwrap());
    let revision = store.revision().await.unwrap();
    assert!(!store
        .record_rollout(&web, "fra", &rollout(2, "progressing"), None)
        .await
        .unwrap());
    assert_eq!(store.revision().await.unwrap(), revision);
    assert!(store
        .record_rollout(&web, "fra", &rollout(2, "succeeded"), None)
        .await
        .unwrap());
    assert!(store
        .record_rollout(&web, "iad", &rollout(2, "rolled_back"), None)
        .await
        .unwrap());
    assert!(store
        .record_rollout(&web, "fra", &rollout(1, "succeeded"), None)
        .await
        .unwrap());
    let history = store.list_rollouts(&web).await.unwrap();
    let rows: Vec<(u64, &str, meridian_model::RolloutPhase)> = history
        .iter()
        .map(|r| (r.rollout.version, r.region.as_str(), r.rollout.phase))
        .collect();
    use meridian_model::RolloutPhase::*;
    assert_eq!(
        rows,
        [
            (2, "fra", Succeeded),
            (2, "iad", RolledBack),
            (1, "fra", Succeeded)
        ]
    );
    // fra's rollout of version 2: what happened to it, in order.
    let events: Vec<meridian_model::RolloutPhase> =
        history[0].events.iter().map(|e| e.phase).collect();
    assert_eq!(events, [Progressing, Succeeded]);
    let feed = store.changes_after(revision, 10).await.unwrap();
    assert_eq!(feed[0].kind, ChangeKind::Rollout);
    assert_eq!(feed[0].key, "acme/shop/web/fra");
    store.delete_service(&web).await.unwrap();
    store
        .apply_service(&definition("web", &["fra"], "v1"), MissingOrg::Create)
        .await
        .unwrap();
    assert_eq!(store.list_rollouts(&web).await.unwrap(), Vec::new());
}

pub async fn applies_create_versions_and_rollback_copies_an_old_one(backend: &Backend) {
    let store = backend.open().await;
    with_regions(&store).await;
    assert!(matches!(
        store
            .apply_service(&definition("web", &["fra"], "v1"), MissingOrg::Reject)
            .await,
        Err(StoreError::NotFound(_))
    ));
    for command in ["v1", "v2", "v3"] {
        store
            .apply_service(&definition("web", &["fra"], command), MissingOrg::Create)
            .await
            .unwrap();
    }
    let rolled = store.rollback(&key("web"), 1, None).await.unwrap();
    assert_eq!(rolled.version, 4);
    assert_eq!(rolled.origin, DeploymentOrigin::Rollback);
    assert_eq!(rolled.rolled_back_from, Some(1));
    assert_eq!(
        rolled.definition.runtime.process.as_ref().unwrap().command,
        "v1"
    );
    let history = store.list_deployments(&key("web")).await.unwrap();
    let commands: Vec<&str> = history
        .iter()
        .map(|d| {
            d.definition
                .runtime
                .process
                .as_ref()
                .unwrap()
                .command
                .as_str()
        })
        .collect();
    assert_eq!(commands, ["v1", "v2", "v3", "v1"]);
    let current = store.get_service(&key("web")).await.unwrap().unwrap();
    assert_eq!(current.version, 4);
    assert!(matches!(
        store.rollback(&key("web"), 9, None).await,
        Err(StoreError::NotFound(_))
    ));
}

pub async fn regions_in_use_cannot_be_deleted_and_index_follows_the_current_version(
    backend: &Backend,
) {
    let store = backend.open().await;
    with_regions(&store).await;
    store
        .apply_service(&definition("web", &["fra", "iad"], "a"), MissingOrg::Create)
        .await
        .unwrap();
    store
        .apply_service(&definition("api", &["iad"], "a"), MissingOrg::Create)
        .await
        .unwrap();
    assert!(matches!(
        store.delete_region("fra").await,
        Err(StoreError::Conflict(_))
    ));
    let names = |ds: Vec<meridian_model::Deployment>| -> Vec<String> {
        ds.into_iter().map(|d| d.definition.name).collect()
    };
    assert_eq!(
        names(store.deployments_in_region("iad").await.unwrap()),
        ["api", "web"]
    );
    store
        .apply_service(&definition("web", &["iad"], "b"), MissingOrg::Create)
        .await
        .unwrap();
    assert!(store.deployments_in_region("fra").await.unwrap().is_empty());
    store.delete_region("fra").await.unwrap();
    let listed = store
        .list_services(&ServiceFilter::default())
        .await
        .unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[1].regions, ["iad"]);
    assert_eq!(listed[1].version, 2);
    store.delete_service(&key("web")).await.unwrap();
    assert!(store.get_service(&key("web")).await.unwrap().is_none());
    assert!(matches!(
        store.list_deployments(&key("web")).await,
        Err(StoreError::NotFound(_))
    ));
}

pub async fn watch_yields_every_change_in_order_under_concurrent_writes(backend: &Backend) {
    let store: Arc<dyn Store> = Arc::new(backend.open().await);
    store
        .put_region(&Region {
            name: "fra".into(),
            lat: 0.0,
            lon: 0.0,
        })
        .await
        .unwrap();
    let mut watch = Watch::new(store.clone(), 1);
    const WRITERS: usize = 8;
    const EACH: usize = 40;
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..EACH {
                let def = definition(&format!("s{w}-{i}"), &["fra"], "x");
                store.apply_service(&def, MissingOrg::Create).await.unwrap();
            }
        }));
    }
    let mut seen = Vec::new();
    while seen.len() < WRITERS * EACH {
        let change = tokio::time::timeout(Duration::from_secs(30), watch.next())
            .await
            .expect("watch stalled")
            .unwrap();
        seen.push(change);
    }
    for task in tasks {
        task.await.unwrap();
    }
    let revisions: Vec<u64> = seen.iter().map(|c| c.revision).collect();
    let expected: Vec<u64> = (2..2 + (WRITERS * EACH) as u64).collect();
    assert_eq!(revisions, expected, "gap or reordering in the feed");
    let mut keys: Vec<&str> = seen.iter().map(|c| c.key.as_str()).collect();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), WRITERS * EACH, "every write appears once");
}

/// Applies that arrive together may share a transaction (group commit): each still commits or
/// fails on its own, refused ones write nothing, and the others get consecutive revisions.
pub async fn applies_arriving_together_commit_or_fail_each_on_their_own(backend: &Backend) {
    let store: Arc<dyn Store> = Arc::new(backend.open().await);
    with_regions(&*store).await;
    let before = store.revision().await.unwrap();
    const APPLIES: usize = 48;
    let mut tasks = Vec::new();
    for i in 0..APPLIES {
        let store = store.clone();
        let mut def = definition(&format!("s{i}"), &["fra"], "x");
        match i % 3 {
            // Into an org that does not exist, which it may not create: refused.
            0 => def.org = format!("ghost{i}"),
            // All claim one domain: one of them gets it, the others are refused.
            1 => def.domains = vec!["shared.example.com".to_owned()],
            _ => {}
        }
        let missing_org = if i % 3 == 0 {
            MissingOrg::Reject
        } else {
            MissingOrg::Create
        };
        tasks.push(tokio::spawn(async move {
            (i, store.apply_service(&def, missing_org).await)
        }));
    }
    let mut applied = Vec::new();
    let mut claimed = 0;
    for task in tasks {
        let (i, outcome) = task.await.unwrap();
        match (i % 3, outcome) {
            (0, outcome) => assert!(matches!(outcome, Err(StoreError::NotFound(_))), "{i}"),
            (1, Err(StoreError::DomainTaken { .. })) => {}
            (1, Ok(done)) => {
                claimed += 1;
                applied.push(done.deployment);
            }
            (_, outcome) => applied.push(outcome.unwrap().deployment),
        }
    }
    assert_eq!(claimed, 1, "one service holds the domain");
    assert_eq!(applied.len(), APPLIES / 3 + 1);
    let feed = store.changes_after(before, 1000).await.unwrap();
    let revisions: Vec<u64> = feed.iter().map(|c| c.revision).collect();
    // The service that claimed the domain has a domains change too.
    let expected: Vec<u64> = (before + 1..=before + applied.len() as u64 + claimed).collect();
    assert_eq!(
        revisions, expected,
        "one change per apply that succeeded, and one for the claim, no gap"
    );
    for deployment in &applied {
        let change = &feed[(deployment.revision - before - 1) as usize];
        let key = ServiceKey::of(&deployment.definition).to_string();
        assert_eq!(
            (change.key.as_str(), change.version),
            (key.as_str(), Some(1))
        );
    }
    let orgs = store.list_orgs().await.unwrap();
    assert!(
        orgs.iter().all(|o| !o.name.starts_with("ghost")),
        "{orgs:?}"
    );
    assert_eq!(
        store.revision().await.unwrap(),
        expected[expected.len() - 1]
    );
}

pub async fn versions_arriving_together_follow_each_other_and_index_their_regions(
    backend: &Backend,
) {
    let store: Arc<dyn Store> = Arc::new(backend.open().await);
    with_regions(&*store).await;
    store
        .apply_service(&definition("web", &["fra"], "a"), MissingOrg::Create)
        .await
        .unwrap();
    let before = store.revision().await.unwrap();
    // Queued in this order (join polls them in order): two versions of one service, one of
    // which moves it to other regions, and two of a new service.
    let apply = |name: &'static str, regions: &'static [&'static str], command: &'static str| {
        let store = store.clone();
        async move {
            let def = definition(name, regions, command);
            store.apply_service(&def, MissingOrg::Create).await.unwrap()
        }
    };
    let (web2, web3, api1, api2) = tokio::join!(
        apply("web", &["fra", "iad"], "b"),
        apply("web", &["iad"], "c"),
        apply("api", &["fra"], "x"),
        apply("api", &["fra"], "y"),
    );
    let versions = |applied: &[&Applied]| -> Vec<u64> {
        applied.iter().map(|a| a.deployment.version).collect()
    };
    assert_eq!(versions(&[&web2, &web3, &api1, &api2]), [2, 3, 1, 2]);
    let feed = store.changes_after(before, 100).await.unwrap();
    let fed: Vec<(u64, &str, Option<u64>)> = feed
        .iter()
        .map(|c| (c.revision, c.key.as_str(), c.version))
        .collect();
    let b = before;
    assert_eq!(
        fed,
        [
            (b + 1, "acme/shop/web", Some(2)),
            (b + 2, "acme/shop/web", Some(3)),
            (b + 3, "acme/shop/api", Some(1)),
            (b + 4, "acme/shop/api", Some(2)),
        ]
    );
    for (applied, revision) in [
        (&web2, b + 1),
        (&web3, b + 2),
        (&api1, b + 3),
        (&api2, b + 4),
    ] {
        assert_eq!(applied.deployment.revision, revision);
    }
    let in_region = |region: &'static str| {
        let store = store.clone();
        async move {
            let found = store.deployments_in_region(region).await.unwrap();
            found
                .iter()
                .map(|d| (d.definition.name.clone(), d.version))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(in_region("fra").await, [("api".to_owned(), 2)]);
    assert_eq!(in_region("iad").await, [("web".to_owned(), 3)]);
    let web = store
        .get_service(&ServiceKey::of(&web3.deployment.definition))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(web, web3.deployment);
}

pub async fn long_poll_returns_on_commit_or_times_out_empty(backend: &Backend) {
    let store: Arc<dyn Store> = Arc::new(backend.open().await);
    let empty = wait_for_changes(&*store, 0, 10, Duration::from_millis(20))
        .await
        .unwrap();
    assert!(empty.is_empty());
    let waiter = {
        let store = store.clone();
        tokio::spawn(async move { wait_for_changes(&*store, 0, 10, Duration::from_secs(30)).await })
    };
    store.create_org("acme").await.unwrap();
    let got = waiter.await.unwrap().unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].key, "acme");
}

pub async fn a_reopened_store_keeps_its_state_and_revision(backend: &Backend) {
    {
        let store = backend.open().await;
        with_regions(&store).await;
        store
            .apply_service(&definition("web", &["fra"], "a"), MissingOrg::Create)
            .await
            .unwrap();
    }
    let store = backend.open().await;
    assert_eq!(store.revision().await.unwrap(), 3);
    assert_eq!(store.list_regions().await.unwrap().len(), 2);
    let web = store.get_service(&key("web")).await.unwrap().unwrap();
    assert_eq!(web.version, 1);
    store.create_org("other").await.unwrap();
    assert_eq!(store.revision().await.unwrap(), 4);
}

fn certificate(domain: &str) -> meridian_store::CertificateRecord {
    meridian_store::CertificateRecord {
        domain: domain.into(),
        source: meridian_model::CertificateSource::Local,
        state: meridian_model::CertificateState::Valid,
        issuer: Some("test CA".into()),
        not_before: Some(1),
        not_after: Some(2),
        chain_pem: Some("chain".into()),
        sealed_key: Some(vec![1, 2, 3]),
        last_error: None,
        next_attempt: Some(3),
        attempts: 0,
        updated_at: 0,
    }
}

pub async fn a_certificate_lives_as_long_as_its_domain_claim(backend: &Backend) {
    let store = backend.open().await;
    with_regions(&store).await;
    let mut web = definition("web", &["fra"], "web");
    web.domains = vec!["shop.example.com".into(), "*.shop.example.com".into()];
    store.apply_service(&web, MissingOrg::Create).await.unwrap();

    let unclaimed = store
        .put_certificate(&certificate("other.example.com"), None)
        .await;
    assert!(
        matches!(unclaimed, Err(StoreError::NotFound(_))),
        "{unclaimed:?}"
    );
    let before = store.revision().await.unwrap();
    store
        .put_certificate(&certificate("shop.example.com"), None)
        .await
        .unwrap();
    store
        .put_certificate(&certificate("*.shop.example.com"), None)
        .await
        .unwrap();
    assert_eq!(store.revision().await.unwrap(), before + 2);
    let change = &store.changes_after(before, 1).await.unwrap()[0];
    assert_eq!(
        (change.kind, change.key.as_str()),
        (ChangeKind::Certificate, "shop.example.com")
    );

    let claim = store.get_domain("shop.example.com").await.unwrap().unwrap();
    assert_eq!(claim.service, key("web"));
    let stored = claim.certificate.unwrap();
    assert_eq!(stored.sealed_key.as_deref(), Some(&[1u8, 2, 3][..]));
    assert!(stored.updated_at > 0);

    // Dropping a domain releases its certificate; deleting the service releases the rest.
    web.domains = vec!["*.shop.example.com".into()];
    store.apply_service(&web, MissingOrg::Create).await.unwrap();
    assert!(store
        .get_domain("shop.example.com")
        .await
        .unwrap()
        .is_none());
    let listed = store.list_domains(&ServiceFilter::default()).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].certificate.is_some());
    web.domains = vec!["shop.example.com".into(), "*.shop.example.com".into()];
    store.apply_service(&web, MissingOrg::Create).await.unwrap();
    let again = store.get_domain("shop.example.com").await.unwrap().unwrap();
    assert_eq!(
        again.certificate, None,
        "a released domain's certificate is gone"
    );
    store.delete_service(&key("web")).await.unwrap();
    assert!(store
        .list_domains(&ServiceFilter::default())
        .await
        .unwrap()
        .is_empty());
}

/// The kinds of the changes after `revision`, with their keys and versions.
async fn kinds_after(store: &dyn Store, revision: u64) -> Vec<(ChangeKind, String, Option<u64>)> {
    let changes = store.changes_after(revision, 100).await.unwrap();
    changes
        .into_iter()
        .map(|c| (c.kind, c.key, c.version))
        .collect()
}

pub async fn a_version_that_changes_domain_claims_records_a_domains_change_first(
    backend: &Backend,
) {
    let store = backend.open().await;
    with_regions(&store).await;
    let service = |version: u64| {
        (
            ChangeKind::Service,
            "acme/shop/web".to_owned(),
            Some(version),
        )
    };
    let domains = |version: u64| {
        (
            ChangeKind::Domains,
            "acme/shop/web".to_owned(),
            Some(version),
        )
    };
    let mut web = definition("web", &["fra"], "one");
    let start = store.revision().await.unwrap();
    store.apply_service(&web, MissingOrg::Create).await.unwrap();
    let before = store.revision().await.unwrap();
    assert_eq!(
        kinds_after(&store, start).await.last(),
        Some(&service(1)),
        "no domains, no domains change"
    );

    web.domains = vec!["shop.example.com".into()];
    store.apply_service(&web, MissingOrg::Create).await.unwrap();
    assert_eq!(kinds_after(&store, before).await, [domains(2), service(2)]);
    let revision = store.revision().await.unwrap();

    // Same claims, another command: only the service changes.
    web = definition("web", &["fra"], "two");
    web.domains = vec!["shop.example.com".into()];
    store.apply_service(&web, MissingOrg::Create).await.unwrap();
    assert_eq!(kinds_after(&store, revision).await, [service(3)]);
    let revision = store.revision().await.unwrap();

    // A rollback to a version with other claims changes them again.
    store.rollback(&key("web"), 1, None).await.unwrap();
    assert_eq!(
        kinds_after(&store, revision).await,
        [domains(4), service(4)]
    );
    assert!(store
        .list_domains(&ServiceFilter::default())
        .await
        .unwrap()
        .is_empty());
}

pub async fn acme_accounts_and_ticket_keys_are_kept_and_replaced(backend: &Backend) {
    let store = backend.open().await;
    assert_eq!(
        store.get_acme_account("https://ca/dir").await.unwrap(),
        None
    );
    store
        .put_acme_account("https://ca/dir", b"one")
        .await
        .unwrap();
    store
        .put_acme_account("https://ca/dir", b"two")
        .await
        .unwrap();
    assert_eq!(
        store.get_acme_account("https://ca/dir").await.unwrap(),
        Some(b"two".to_vec())
    );
    assert_eq!(store.get_ticket_keys().await.unwrap(), None);
    store.put_ticket_keys(b"keys", 7, None).await.unwrap();
    store.put_ticket_keys(b"newer", 8, None).await.unwrap();
    assert_eq!(
        store.get_ticket_keys().await.unwrap(),
        Some((b"newer".to_vec(), 8))
    );
    drop(store);
    let reopened = backend.open().await;
    assert_eq!(
        reopened.get_ticket_keys().await.unwrap(),
        Some((b"newer".to_vec(), 8))
    );
}

pub async fn secrets_are_versioned_referenced_only_when_they_exist_and_kept_while_in_use(
    backend: &Backend,
) {
    let store = backend.open().await;
    let shop = SecretOwner::app("acme", "shop");
    with_regions(&store).await;
    assert!(matches!(
        store.put_secret(&shop, "DB", b"sealed-1").await,
        Err(StoreError::NotFound(_))
    ));
    store.create_org("acme").await.unwrap();
    let mut using = definition("web", &["fra"], "hello");
    using.runtime.env_mut().unwrap().insert(
        "DB_PASSWORD".into(),
        serde_json::from_str(r#"{"secret":"DB"}"#).unwrap(),
    );
    let before = store.revision().await.unwrap();
    match store.apply_service(&using, MissingOrg::Reject).await {
        Err(StoreError::SecretMissing { field, secret, .. }) => {
            assert_eq!(
                (field.as_str(), secret.as_str()),
                ("runtime.process.env.DB_PASSWORD", "DB")
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(store.revision().await.unwrap(), before, "nothing stored");

    let first = store.put_secret(&shop, "DB", b"sealed-1").await.unwrap();
    assert_eq!(first.version, 1);
    let second = store.put_secret(&shop, "DB", b"sealed-2").await.unwrap();
    assert_eq!(second.version, 2);
    let changes = store.changes_after(before, 10).await.unwrap();
    let last = changes.last().unwrap();
    assert_eq!(
        (last.kind, last.key.as_str(), last.version),
        (ChangeKind::Secret, "acme/shop/DB", Some(2))
    );
    let (info, sealed) = store.get_secret(&shop, "DB").await.unwrap().unwrap();
    assert_eq!((info.version, sealed.as_slice()), (2, &b"sealed-2"[..]));
    let listed = store.list_secrets(&shop).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].name.as_str(), listed[0].version), ("DB", 2));

    store
        .apply_service(&using, MissingOrg::Reject)
        .await
        .unwrap();
    // A new value gives the service that uses it a new version equal to the current one, in
    // the same transaction (the change feed's service change comes after the secret's).
    let before = store.revision().await.unwrap();
    store.put_secret(&shop, "DB", b"sealed-3").await.unwrap();
    let changes = store.changes_after(before, 10).await.unwrap();
    let kinds: Vec<(ChangeKind, Option<u64>)> =
        changes.iter().map(|c| (c.kind, c.version)).collect();
    assert_eq!(
        kinds,
        [
            (ChangeKind::Secret, Some(3)),
            (ChangeKind::Service, Some(2))
        ]
    );
    let renewed = store.get_service(&key("web")).await.unwrap().unwrap();
    assert_eq!(
        (renewed.version, renewed.origin),
        (2, DeploymentOrigin::Secret)
    );
    assert_eq!(renewed.definition, using);
    match store.delete_secret(&shop, "DB").await {
        Err(StoreError::Conflict(message)) => assert!(message.contains("web"), "{message}"),
        other => panic!("{other:?}"),
    }
    store.delete_service(&key("web")).await.unwrap();
    store.delete_secret(&shop, "DB").await.unwrap();
    assert!(store.list_secrets(&shop).await.unwrap().is_empty());
    assert!(matches!(
        store.delete_secret(&shop, "DB").await,
        Err(StoreError::NotFound(_))
    ));
}

/// `definition` of service `name` in app `app`, with env `DB_PASSWORD: {secret: DB}`.
fn using_db(app: &str, name: &str) -> Definition {
    let mut using = definition(name, &["fra"], "hello");
    using.app = app.into();
    using.runtime.env_mut().unwrap().insert(
        "DB_PASSWORD".into(),
        serde_json::from_str(r#"{"secret":"DB"}"#).unwrap(),
    );
    using
}

pub async fn an_org_secret_is_resolved_where_no_app_secret_shadows_it_and_rolls_only_those_services(
    backend: &Backend,
) {
    // (and an app's secret that shadows it may go, rolling its users over to the org's)
    let store = backend.open().await;
    with_regions(&store).await;
    let acme = SecretOwner::org("acme");
    assert!(matches!(
        store.put_secret(&acme, "DB", b"org-1").await,
        Err(StoreError::NotFound(_))
    ));
    store.create_org("acme").await.unwrap();
    store.create_org("other").await.unwrap();
    let before = store.revision().await.unwrap();
    assert_eq!(
        store
            .put_secret(&acme, "DB", b"org-1")
            .await
            .unwrap()
            .version,
        1
    );
    let changes = store.changes_after(before, 10).await.unwrap();
    assert_eq!(
        (changes[0].kind, changes[0].key.as_str(), changes[0].version),
        (ChangeKind::OrgSecret, "acme/DB", Some(1))
    );

    // shop/web resolves DB to the org's; admin/api to its app's, which shadows it.
    store
        .apply_service(&using_db("shop", "web"), MissingOrg::Reject)
        .await
        .unwrap();
    let admin = SecretOwner::app("acme", "admin");
    store.put_secret(&admin, "DB", b"app-1").await.unwrap();
    store
        .apply_service(&using_db("admin", "api"), MissingOrg::Reject)
        .await
        .unwrap();
    let (owner, info, sealed) = store
        .resolve_secret("acme", "shop", "DB")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (owner, info.version, sealed),
        (acme.clone(), 1, b"org-1".to_vec())
    );
    let (owner, _, sealed) = store
        .resolve_secret("acme", "admin", "DB")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((owner, sealed), (admin.clone(), b"app-1".to_vec()));
    // Another org does not see it.
    assert!(store
        .resolve_secret("other", "shop", "DB")
        .await
        .unwrap()
        .is_none());
    let mut elsewhere = using_db("shop", "web");
    elsewhere.org = "other".into();
    match store.apply_service(&elsewhere, MissingOrg::Reject).await {
        Err(e @ StoreError::SecretMissing { .. }) => {
            let message = e.to_string();
            assert!(
                message.starts_with("runtime.process.env.DB_PASSWORD: ")
                    && message.contains("org `other`"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }

    // A new value of the org's secret rolls shop/web, in the same transaction, not admin/api.
    let before = store.revision().await.unwrap();
    store.put_secret(&acme, "DB", b"org-2").await.unwrap();
    let changes: Vec<(ChangeKind, String, Option<u64>)> = store
        .changes_after(before, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.kind, c.key, c.version))
        .collect();
    assert_eq!(
        changes,
        [
            (ChangeKind::OrgSecret, "acme/DB".to_owned(), Some(2)),
            (ChangeKind::Service, "acme/shop/web".to_owned(), Some(2)),
        ]
    );
    let web = ServiceKey {
        org: "acme".into(),
        app: "shop".into(),
        name: "web".into(),
    };
    let renewed = store.get_service(&web).await.unwrap().unwrap();
    assert_eq!(
        (renewed.version, renewed.origin),
        (2, DeploymentOrigin::Secret)
    );

    // Kept while a service resolves to it; the app's own secret keeps admin/api going.
    match store.delete_secret(&acme, "DB").await {
        Err(StoreError::Conflict(message)) => {
            assert!(
                message.contains("shop/web") && !message.contains("admin/api"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    // The app's secret may go while in use, as the org's takes its place: admin/api is rolled
    // over to it in the same transaction.
    let before = store.revision().await.unwrap();
    store.delete_secret(&admin, "DB").await.unwrap();
    let changes: Vec<(ChangeKind, ChangeOp, String)> = store
        .changes_after(before, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.kind, c.op, c.key))
        .collect();
    assert_eq!(
        changes,
        [
            (
                ChangeKind::Secret,
                ChangeOp::Delete,
                "acme/admin/DB".to_owned()
            ),
            (
                ChangeKind::Service,
                ChangeOp::Put,
                "acme/admin/api".to_owned()
            ),
        ]
    );
    let (owner, _, _) = store
        .resolve_secret("acme", "admin", "DB")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(owner, acme);
    match store.delete_secret(&acme, "DB").await {
        Err(StoreError::Conflict(message)) => {
            assert!(message.contains("admin/api, shop/web"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    store.delete_service(&web).await.unwrap();
    let api = ServiceKey {
        name: "api".into(),
        app: "admin".into(),
        ..web
    };
    store.delete_service(&api).await.unwrap();
    store.delete_secret(&acme, "DB").await.unwrap();
    assert!(store.list_secrets(&acme).await.unwrap().is_empty());

    // Org secrets outlive a restart of the store.
    store.put_secret(&acme, "TOKEN", b"sealed").await.unwrap();
    drop(store);
    let reopened = backend.open().await;
    let listed = reopened.list_secrets(&acme).await.unwrap();
    assert_eq!((listed[0].name.as_str(), listed[0].version), ("TOKEN", 1));
}

pub async fn a_backup_restored_into_an_empty_store_reads_the_same(backend: &Backend) {
    let store = backend.open().await;
    fill(&store).await;
    let backup = store.backup().await.unwrap();
    let restored = backend.open_empty("restored").await;
    let revision = store.revision().await.unwrap();
    assert_eq!(restored.restore(&backup).await.unwrap(), revision);
    assert_eq!(contents(&restored).await, contents(&store).await);
    assert_eq!(restored.backup().await.unwrap(), backup);
    // It goes on from there, and takes a backup only when empty.
    restored.create_org("next").await.unwrap();
    assert_eq!(restored.revision().await.unwrap(), revision + 1);
    let again = restored.restore(&backup).await;
    assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
}

pub async fn a_bad_backup_is_refused_naming_what_is_wrong_and_restores_nothing(backend: &Backend) {
    let store = backend.open().await;
    fill(&store).await;
    let good: serde_json::Value = serde_json::from_slice(&store.backup().await.unwrap()).unwrap();
    let target = backend.open_empty("target").await;
    let refused = |mut backup: serde_json::Value, change: fn(&mut serde_json::Value)| {
        change(&mut backup);
        let target = &target;
        async move {
            let restored = target.restore(&serde_json::to_vec(&backup).unwrap()).await;
            assert_eq!(target.revision().await.unwrap(), 0);
            assert!(target.changes_after(0, 10).await.unwrap().is_empty());
            assert!(target.list_orgs().await.unwrap().is_empty());
            match restored {
                Err(e @ StoreError::InvalidBackup(_)) => e.to_string(),
                other => panic!("{other:?}"),
            }
        }
    };
    let message = refused(good.clone(), |b| {
        b["tables"]["orgs"][0]["created_at"] = serde_json::json!("yesterday")
    })
    .await;
    assert!(
        message.contains("tables.orgs[0].created_at: expected an integer"),
        "{message}"
    );
    // An app of an org that is not there.
    let message = refused(good.clone(), |b| {
        b["tables"]["orgs"] = serde_json::json!([])
    })
    .await;
    assert!(
        message.contains("tables.apps[0]: refused by the database"),
        "{message}"
    );
    let message = refused(good.clone(), |b| b["revision"] = serde_json::json!(7)).await;
    assert!(
        message.starts_with("not a valid backup: revision: 7"),
        "{message}"
    );
    let message = refused(good, |b| b["tables"]["users"] = serde_json::json!([])).await;
    assert!(message.contains("tables.users: no such table"), "{message}");
}

fn purge(target: meridian_model::PurgeTarget) -> meridian_store::NewPurge {
    meridian_store::NewPurge {
        org: "acme".into(),
        app: "shop".into(),
        target,
    }
}

pub async fn purges_are_numbered_without_gaps_kept_to_a_bound_and_fed_with_their_number(
    backend: &Backend,
) {
    use meridian_model::{PurgeTarget, PURGE_HISTORY};
    let store = backend.open().await;
    store.create_org("acme").await.unwrap();
    // Only an app's responses can be purged: no app, no purge, and nothing written.
    let before = store.revision().await.unwrap();
    assert!(matches!(
        store.add_purge(&purge(PurgeTarget::All)).await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(store.revision().await.unwrap(), before);
    store.create_app("acme", "shop").await.unwrap();
    let first = store
        .add_purge(&purge(PurgeTarget::Tag("catalog".into())))
        .await
        .unwrap();
    assert_eq!(
        (first.sequence, &first.target),
        (1, &PurgeTarget::Tag("catalog".into()))
    );
    let feed = store.changes_after(before, 10).await.unwrap();
    let last = feed.last().unwrap();
    assert_eq!(
        (last.kind, last.key.as_str(), last.version),
        (ChangeKind::Purge, "acme/shop", Some(1))
    );
    // The newest PURGE_HISTORY are kept, in order; the numbering goes on past the dropped ones.
    for _ in 0..PURGE_HISTORY + 1 {
        store.add_purge(&purge(PurgeTarget::All)).await.unwrap();
    }
    let kept = store.purges_after(0, u32::MAX).await.unwrap();
    let sequences: Vec<u64> = kept.iter().map(|p| p.sequence).collect();
    let expected: Vec<u64> = (3..=PURGE_HISTORY + 2).collect();
    assert_eq!(sequences, expected);
    let tail = store.purges_after(PURGE_HISTORY, 10).await.unwrap();
    assert_eq!(tail.len(), 2);
    assert_eq!(tail[1].target, PurgeTarget::All);
    // A reopened store numbers on from the newest kept.
    drop(store);
    let store = backend.open().await;
    let next = store.add_purge(&purge(PurgeTarget::All)).await.unwrap();
    assert_eq!(next.sequence, PURGE_HISTORY + 3);
}

pub async fn a_lease_has_one_holder_whose_token_grows_and_fences_its_writes(backend: &Backend) {
    const LEASE: &str = "global";
    const LONG: Duration = Duration::from_secs(60);
    let (a, b) = (backend.open().await, backend.open().await);
    assert_eq!(a.get_lease(LEASE).await.unwrap(), None);
    let first = a.acquire_lease(LEASE, "a", LONG).await.unwrap().unwrap();
    assert_eq!(b.acquire_lease(LEASE, "b", LONG).await.unwrap(), None);
    let renewed = a.acquire_lease(LEASE, "a", LONG).await.unwrap().unwrap();
    assert_eq!(renewed.token, first.token, "a renewal keeps the token");
    let info = b.get_lease(LEASE).await.unwrap().unwrap();
    assert_eq!((info.holder.as_str(), info.token), ("a", first.token));
    assert!(info.expires_in > Duration::from_secs(50), "{info:?}");
    let before = a.revision().await.unwrap();
    assert_eq!(
        before,
        b.revision().await.unwrap(),
        "leases write no change"
    );
    a.put_ticket_keys(b"by a", 1, Some(&first)).await.unwrap();

    // Handed over: the old holder's writes are refused and change nothing.
    a.release_lease(&first).await.unwrap();
    let second = b.acquire_lease(LEASE, "b", LONG).await.unwrap().unwrap();
    assert_eq!(second.token, first.token + 1);
    let revision = a.revision().await.unwrap();
    let late = a.put_ticket_keys(b"late", 2, Some(&first)).await;
    assert!(matches!(late, Err(StoreError::Fenced(_))), "{late:?}");
    assert_eq!(a.revision().await.unwrap(), revision);
    assert_eq!(
        a.get_ticket_keys().await.unwrap(),
        Some((b"by a".to_vec(), 1))
    );
    b.put_ticket_keys(b"by b", 3, Some(&second)).await.unwrap();

    // Expired: another takes it with the next token, and the expired holder is refused.
    let short = b
        .acquire_lease(LEASE, "b", Duration::from_millis(200))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(short.token, second.token);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let third = loop {
        if let Some(fence) = a.acquire_lease(LEASE, "a", LONG).await.unwrap() {
            break fence;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lease never expired"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(third.token, second.token + 1);
    let late = b.put_ticket_keys(b"late", 4, Some(&second)).await;
    assert!(matches!(late, Err(StoreError::Fenced(_))), "{late:?}");
    assert_eq!(
        b.get_ticket_keys().await.unwrap(),
        Some((b"by b".to_vec(), 3))
    );
}

pub async fn rollout_records_and_rollbacks_for_a_lease_term_that_is_over_are_refused(
    backend: &Backend,
) {
    const LEASE: &str = "global";
    const LONG: Duration = Duration::from_secs(60);
    let (a, b) = (backend.open().await, backend.open().await);
    with_regions(&a).await;
    for command in ["v1", "v2"] {
        a.apply_service(&definition("web", &["fra"], command), MissingOrg::Create)
            .await
            .unwrap();
    }
    let web = key("web");
    let failed: meridian_model::RolloutStatus = serde_json::from_value(serde_json::json!({
        "version": 2, "previous": 1, "strategy": "rolling",
        "phase": "rolled_back", "started_at": 1, "updated_at": 2,
    }))
    .unwrap();
    let first = a.acquire_lease(LEASE, "a", LONG).await.unwrap().unwrap();
    a.release_lease(&first).await.unwrap();
    let second = b.acquire_lease(LEASE, "b", LONG).await.unwrap().unwrap();

    // The old holder's record and rollback change nothing.
    let revision = a.revision().await.unwrap();
    let late = a.record_rollout(&web, "fra", &failed, Some(&first)).await;
    assert!(matches!(late, Err(StoreError::Fenced(_))), "{late:?}");
    let late = a.rollback(&web, 1, Some(&first)).await;
    assert!(matches!(late, Err(StoreError::Fenced(_))), "{late:?}");
    assert_eq!(a.revision().await.unwrap(), revision);
    assert!(a.list_rollouts(&web).await.unwrap().is_empty());
    assert_eq!(a.get_service(&web).await.unwrap().unwrap().version, 2);

    // The holder's are made.
    assert!(b
        .record_rollout(&web, "fra", &failed, Some(&second))
        .await
        .unwrap());
    let rolled = b.rollback(&web, 1, Some(&second)).await.unwrap();
    assert_eq!((rolled.version, rolled.rolled_back_from), (3, Some(1)));
    assert_eq!(b.list_rollouts(&web).await.unwrap().len(), 1);
}
