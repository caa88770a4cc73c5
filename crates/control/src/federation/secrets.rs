//! The secrets a service's regional deployments reference: the global control plane opens
//! them (sealed in the store with its secrets key) when it publishes the deployments, writes
//! each one's version into the spec (`ServiceSpec::secrets`, so that a new version changes what
//! the instances run and they are replaced), and sends the values beside the spec, to the
//! regions that run the service only.

use std::collections::BTreeMap;

use meridian_identity::SealingKey;
use meridian_model::RegionalDeployment;
use meridian_store::{ServiceKey, Store, StoreError};
use meridian_xds::meridian::SecretValue;

/// Fills in the `secrets` versions of each of `deployments` (all of service `key`) and returns
/// the values each references, in the same order. A secret that does not exist, or does not
/// open with `key` (or there is no key), is left out and logged by name: instances that need it
/// do not start, and say so.
pub(super) async fn resolve(
    store: &dyn Store,
    sealing: Option<&SealingKey>,
    key: &ServiceKey,
    deployments: &mut [RegionalDeployment],
) -> Result<Vec<Vec<SecretValue>>, StoreError> {
    let mut opened: BTreeMap<String, Option<SecretValue>> = BTreeMap::new();
    let mut out = Vec::with_capacity(deployments.len());
    for deployment in deployments.iter_mut() {
        let names: Vec<String> = deployment.spec.secret_names().map(str::to_owned).collect();
        let mut values = Vec::new();
        for name in names {
            if !opened.contains_key(&name) {
                let value = open(store, sealing, key, &name).await?;
                opened.insert(name.clone(), value);
            }
            if let Some(Some(value)) = opened.get(&name) {
                deployment.spec.secrets.insert(name, value.version);
                values.push(value.clone());
            }
        }
        values.sort_by(|a, b| a.name.cmp(&b.name));
        values.dedup_by(|a, b| a.name == b.name);
        out.push(values);
    }
    Ok(out)
}

/// The secret `name` resolves to for `key` (its app's, else its org's), opened; `None`
/// (logged) when it cannot be.
async fn open(
    store: &dyn Store,
    sealing: Option<&SealingKey>,
    key: &ServiceKey,
    name: &str,
) -> Result<Option<SecretValue>, StoreError> {
    let Some((owner, info, sealed)) = store.resolve_secret(&key.org, &key.app, name).await? else {
        tracing::warn!(service = %key, secret = name,
            "the service references a secret neither its app nor its org has; \
             its instances cannot start");
        return Ok(None);
    };
    let Some(sealing) = sealing else {
        tracing::warn!(service = %key, secret = name,
            "a secret cannot be opened: this control plane runs without --secrets-key");
        return Ok(None);
    };
    let label = owner.seal_label(name);
    match sealing.open(&label, &sealed) {
        Ok(plain) => match String::from_utf8(plain) {
            Ok(value) => Ok(Some(SecretValue {
                name: name.to_owned(),
                version: info.version,
                value,
            })),
            Err(_) => {
                tracing::warn!(service = %key, secret = name, "a secret's value is not UTF-8");
                Ok(None)
            }
        },
        Err(e) => {
            tracing::warn!(service = %key, secret = name, error = %e,
                "a secret cannot be opened; set it again");
            Ok(None)
        }
    }
}
