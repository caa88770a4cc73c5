//! A store with something in every table, and everything a store holds read through the
//! `Store` trait: what backups must carry over.

use meridian_model::{EndpointInput, Region, RolloutControl, RolloutMode, SecretOwner};
use meridian_store::{CertificateRecord, MissingOrg, NewToken, ServiceFilter, ServiceKey, Store};

/// The ACME directory of the stored account.
const ACME: &str = "https://ca.example/directory";

/// Fills `store` through the trait: rows in every table, several versions, a rollback,
/// deletions in the feed.
pub async fn fill(store: &dyn Store) {
    for (name, lat, lon) in [("fra", 50.11, 8.68), ("iad", 38.95, -77.45)] {
        let region = Region {
            name: name.into(),
            lat,
            lon,
        };
        store.put_region(&region).await.unwrap();
    }
    store.create_org("acme").await.unwrap();
    store.create_org("gone").await.unwrap();
    store.delete_org("gone").await.unwrap();
    for (id, org) in [("t-admin", None), ("t-acme", Some("acme"))] {
        let token = NewToken {
            id: id.into(),
            org: org.map(str::to_owned),
            label: format!("{id} label"),
            hash: format!("{id}-hash"),
        };
        store.create_token(token).await.unwrap();
    }
    store
        .put_secret(&SecretOwner::org("acme"), "TOKEN", b"org-sealed")
        .await
        .unwrap();
    store
        .put_secret(&SecretOwner::app("acme", "shop"), "DB", b"app-sealed")
        .await
        .unwrap();
    for command in ["v1", "v2"] {
        let json = serde_json::json!({
            "org": "acme", "app": "shop", "name": "web", "regions": ["fra", "iad"],
            "runtime": {"process": {"command": command, "env": {"DB": {"secret": "DB"}}}}
        });
        let mut definition =
            meridian_model::parse_definition_json(json.to_string().as_bytes()).unwrap();
        definition.domains = vec!["shop.example.com".into(), "*.shop.example.com".into()];
        let applied = store.apply_service(&definition, MissingOrg::Reject);
        applied.await.unwrap();
    }
    let web = web();
    store.rollback(&web, 1, None).await.unwrap();
    let endpoint = EndpointInput {
        region: "fra".into(),
        address: "10.0.0.7".into(),
        ports: [("http".to_owned(), 8081)].into(),
        health: Default::default(),
    };
    store.put_endpoint(&web, "i-1", &endpoint).await.unwrap();
    let rollout = serde_json::from_value(serde_json::json!({
        "version": 3, "previous": 2, "strategy": "rolling",
        "phase": "progressing", "started_at": 1, "updated_at": 2,
    }))
    .unwrap();
    store
        .record_rollout(&web, "fra", &rollout, None)
        .await
        .unwrap();
    let paused = RolloutControl {
        version: 3,
        mode: RolloutMode::Paused,
    };
    store.set_rollout_control(&web, Some(paused)).await.unwrap();
    let certificate = CertificateRecord {
        domain: "shop.example.com".into(),
        source: meridian_model::CertificateSource::Acme,
        state: meridian_model::CertificateState::Valid,
        issuer: Some("test CA".into()),
        not_before: Some(1),
        not_after: Some(2),
        chain_pem: Some("chain".into()),
        sealed_key: Some(vec![0, 1, 254, 255]),
        last_error: None,
        next_attempt: Some(3),
        attempts: 1,
        updated_at: 0,
    };
    store.put_certificate(&certificate, None).await.unwrap();
    store.put_acme_account(ACME, b"\x00account").await.unwrap();
    store.put_ticket_keys(b"keys\xff", 42, None).await.unwrap();
}

fn web() -> ServiceKey {
    ServiceKey {
        org: "acme".into(),
        app: "shop".into(),
        name: "web".into(),
    }
}

/// Everything `store` answers about what [`fill`] put in it, as text.
pub async fn contents(store: &dyn Store) -> String {
    let web = web();
    let mut out = Vec::new();
    out.push(format!("revision {:?}", store.revision().await.unwrap()));
    out.push(format!("{:?}", store.changes_after(0, 1000).await.unwrap()));
    out.push(format!("{:?}", store.list_orgs().await.unwrap()));
    out.push(format!("{:?}", store.list_tokens(None).await.unwrap()));
    out.push(format!(
        "{:?}",
        store.list_tokens(Some("acme")).await.unwrap()
    ));
    out.push(format!(
        "{:?}",
        store.find_token("t-acme-hash").await.unwrap()
    ));
    out.push(format!("{:?}", store.list_regions().await.unwrap()));
    out.push(format!("{:?}", store.list_apps(None).await.unwrap()));
    let all = ServiceFilter::default();
    out.push(format!("{:?}", store.list_services(&all).await.unwrap()));
    out.push(format!("{:?}", store.list_deployments(&web).await.unwrap()));
    out.push(format!(
        "{:?}",
        store.deployments_in_region("iad").await.unwrap()
    ));
    out.push(format!("{:?}", store.list_endpoints(&web).await.unwrap()));
    out.push(format!("{:?}", store.list_rollouts(&web).await.unwrap()));
    out.push(format!(
        "{:?}",
        store.get_rollout_control(&web).await.unwrap()
    ));
    out.push(format!("{:?}", store.list_domains(&all).await.unwrap()));
    out.push(format!("{:?}", store.get_acme_account(ACME).await.unwrap()));
    out.push(format!("{:?}", store.get_ticket_keys().await.unwrap()));
    for owner in [SecretOwner::org("acme"), SecretOwner::app("acme", "shop")] {
        out.push(format!("{:?}", store.list_secrets(&owner).await.unwrap()));
    }
    out.push(format!(
        "{:?}",
        store.resolve_secret("acme", "shop", "DB").await.unwrap()
    ));
    out.join("\n")
}
