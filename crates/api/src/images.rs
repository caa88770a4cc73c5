//! Image tags resolved to digests when a definition is applied: the stored definition names
//! `REPOSITORY:TAG@sha256:…`, so that every region and instance of a version runs the same
//! bytes whatever the tag names later.

use std::time::Duration;

use meridian_identity::SealingKey;
use meridian_model::{
    Credential, Definition, EnvValue, ImageRef, RegistryCredentials, RegistryOptions,
    ValidationErrors,
};
use meridian_registry::RegistryError;
use meridian_store::Store;

/// Longest wait for a registry's answer about one reference.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The registries the control plane asks.
pub struct Registries {
    client: meridian_registry::oci_client::Client,
    options: RegistryOptions,
}

impl Registries {
    /// A client with `options` (plain HTTP to the insecure registries, credentials by registry).
    pub fn new(options: RegistryOptions) -> Registries {
        Registries {
            client: meridian_registry::client(&options),
            options,
        }
    }

    /// Pins every image reference of `definition` (the base and each override's) that names a
    /// tag to the digest the registry has for it, asked with the image's `credentials` (their
    /// secrets opened from `store` with `sealing`). A reference the registry does not know or
    /// refuses, a registry that cannot be reached, or a credential's secret that does not
    /// exist or does not open, is an error at its field; then `definition` is unchanged.
    /// Assumes the definition is valid.
    pub async fn pin(
        &self,
        definition: &mut Definition,
        store: &dyn Store,
        sealing: Option<&SealingKey>,
    ) -> Result<(), ValidationErrors> {
        let mut wanted: Vec<(String, String, Option<&RegistryCredentials>)> = Vec::new();
        if let Some(image) = &definition.runtime.image {
            let credentials = image.credentials.as_ref();
            wanted.push(("runtime.image".into(), image.reference.clone(), credentials));
        }
        for (region, o) in &definition.overrides {
            let Some(image) = o.runtime.as_ref().and_then(|r| r.image.as_ref()) else {
                continue;
            };
            let base = definition.runtime.image.as_ref();
            let reference = image.reference.as_ref().or(base.map(|i| &i.reference));
            let credentials = image
                .credentials
                .as_ref()
                .or(base.and_then(|i| i.credentials.as_ref()));
            // An override that changes neither the reference nor the credential asks nothing
            // the base has not; one that changes the credential asks the base's reference
            // with it (the agents there will).
            if let (Some(reference), true) = (
                reference,
                image.reference.is_some() || image.credentials.is_some(),
            ) {
                let field = format!("overrides.{region}.runtime.image");
                wanted.push((field, reference.clone(), credentials));
            }
        }
        let app = Secrets {
            store,
            sealing,
            org: &definition.org,
            app: &definition.app,
        };
        let mut errs = ValidationErrors::default();
        let mut pinned = Vec::with_capacity(wanted.len());
        for (field, reference, credentials) in wanted {
            let credential = match credentials {
                Some(c) => match app.credential(&format!("{field}.credentials"), c).await {
                    Ok(credential) => Some(credential),
                    Err((field, reason)) => {
                        errs.push(field, reason);
                        continue;
                    }
                },
                None => None,
            };
            match self.resolve(&reference, credential.as_ref()).await {
                Ok(reference) => pinned.push(reference),
                Err((at, reason)) => errs.push(format!("{field}.{at}"), reason),
            }
        }
        errs.into_result()?;
        let mut pinned = pinned.into_iter();
        if let Some(image) = definition.runtime.image.as_mut() {
            image.reference = pinned.next().unwrap_or_default();
        }
        for o in definition.overrides.values_mut() {
            let Some(image) = o.runtime.as_mut().and_then(|r| r.image.as_mut()) else {
                continue;
            };
            if image.reference.is_some() || image.credentials.is_some() {
                image.reference = pinned.next();
            }
        }
        Ok(())
    }

    /// `reference` pinned to the digest it names now, asked with `credential`; or why not, and
    /// the field to blame: `credentials` when the registry refused the credential given,
    /// else `ref`.
    async fn resolve(
        &self,
        reference: &str,
        credential: Option<&Credential>,
    ) -> Result<String, (&'static str, String)> {
        let parsed = ImageRef::parse(reference).map_err(|reason| ("ref", reason))?;
        let asked = meridian_registry::resolve(&self.client, &self.options, &parsed, credential);
        let why =
            |e: &dyn std::fmt::Display| format!("cannot resolve `{reference}` to a digest: {e}");
        match tokio::time::timeout(RESOLVE_TIMEOUT, asked).await {
            Ok(Ok(digest)) => Ok(parsed.pinned(&digest).to_string()),
            Ok(Err(e @ RegistryError::Unauthorized(_))) if credential.is_some() => {
                Err(("credentials", why(&e)))
            }
            Ok(Err(e)) => Err(("ref", why(&e))),
            Err(_) => Err((
                "ref",
                why(&format!(
                    "the registry did not answer within {}s",
                    RESOLVE_TIMEOUT.as_secs()
                )),
            )),
        }
    }
}

/// The secrets of one app, opened for a registry credential.
struct Secrets<'a> {
    store: &'a dyn Store,
    sealing: Option<&'a SealingKey>,
    org: &'a str,
    app: &'a str,
}

impl Secrets<'_> {
    /// The credential `credentials` (at `field`) names, its secrets opened; else the field of
    /// the secret that cannot be and why.
    async fn credential(
        &self,
        field: &str,
        credentials: &RegistryCredentials,
    ) -> Result<Credential, (String, String)> {
        Ok(Credential {
            username: self
                .value(format!("{field}.username"), &credentials.username)
                .await?,
            password: self
                .value(format!("{field}.password"), &credentials.password)
                .await?,
        })
    }

    /// `value` itself, or the value of the secret it names.
    async fn value(&self, field: String, value: &EnvValue) -> Result<String, (String, String)> {
        let name = match value {
            EnvValue::Plain(plain) => return Ok(plain.clone()),
            EnvValue::Secret(reference) => &reference.secret,
        };
        let (org, app) = (self.org, self.app);
        let (owner, sealed) = match self.store.resolve_secret(org, app, name).await {
            Ok(Some((owner, _, sealed))) => (owner, sealed),
            Ok(None) => {
                let reason = meridian_store::secret_missing(name, &format!("{org}/{app}"));
                return Err((field, reason));
            }
            Err(e) => return Err((field, format!("secret `{name}` cannot be read: {e}"))),
        };
        let Some(sealing) = self.sealing else {
            let reason = "secrets cannot be opened: this control plane runs without --secrets-key";
            return Err((field, reason.to_owned()));
        };
        sealing
            .open(&owner.seal_label(name), &sealed)
            .ok()
            .and_then(|plain| String::from_utf8(plain).ok())
            .ok_or_else(|| {
                let reason = format!("secret `{name}` cannot be opened; set it again");
                (field, reason)
            })
    }
}
