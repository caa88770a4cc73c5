//! Image tags resolved to digests when a definition is applied: the stored definition names
//! `REPOSITORY:TAG@sha256:…`, so that every region and instance of a version runs the same
//! bytes whatever the tag names later.

use std::time::Duration;

use meridian_model::{Definition, ImageRef, RegistryOptions, ValidationErrors};

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
    /// tag to the digest the registry has for it. A reference the registry does not know, or a
    /// registry that cannot be reached, is an error at its field; then `definition` is
    /// unchanged. Assumes the definition is valid.
    pub async fn pin(&self, definition: &mut Definition) -> Result<(), ValidationErrors> {
        let mut wanted: Vec<(String, String)> = Vec::new();
        if let Some(image) = &definition.runtime.image {
            wanted.push(("runtime.image.ref".into(), image.reference.clone()));
        }
        for (region, o) in &definition.overrides {
            let image = o.runtime.as_ref().and_then(|r| r.image.as_ref());
            if let Some(reference) = image.and_then(|i| i.reference.as_ref()) {
                wanted.push((
                    format!("overrides.{region}.runtime.image.ref"),
                    reference.clone(),
                ));
            }
        }
        let mut errs = ValidationErrors::default();
        let mut pinned = Vec::with_capacity(wanted.len());
        for (field, reference) in wanted {
            match self.resolve(&reference).await {
                Ok(reference) => pinned.push(reference),
                Err(reason) => errs.push(field, reason),
            }
        }
        errs.into_result()?;
        let mut pinned = pinned.into_iter();
        if let Some(image) = definition.runtime.image.as_mut() {
            image.reference = pinned.next().unwrap_or_default();
        }
        for o in definition.overrides.values_mut() {
            let image = o.runtime.as_mut().and_then(|r| r.image.as_mut());
            if let Some(reference) = image.and_then(|i| i.reference.as_mut()) {
                *reference = pinned.next().unwrap_or_default();
            }
        }
        Ok(())
    }

    /// `reference` pinned to the digest it names now, or why not.
    async fn resolve(&self, reference: &str) -> Result<String, String> {
        let parsed = ImageRef::parse(reference)?;
        let asked = meridian_registry::resolve(&self.client, &self.options, &parsed);
        match tokio::time::timeout(RESOLVE_TIMEOUT, asked).await {
            Ok(Ok(digest)) => Ok(parsed.pinned(&digest).to_string()),
            Ok(Err(e)) => Err(format!("cannot resolve `{reference}` to a digest: {e}")),
            Err(_) => Err(format!(
                "cannot resolve `{reference}` to a digest: the registry did not answer within {}s",
                RESOLVE_TIMEOUT.as_secs()
            )),
        }
    }
}
