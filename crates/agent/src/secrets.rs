//! The values of the secrets an instance's environment references (`{secret: NAME}`), as its
//! assignment delivered them: resolved into the process's environment at each start, held in
//! memory only, never written to disk or shown (their `Debug` lists names only).

use std::collections::BTreeMap;

use meridian_model::{Credential, EnvValue, RegistryCredentials};
use meridian_xds::meridian::SecretValue;

/// Secret values by name.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretValues(BTreeMap<String, String>);

impl std::fmt::Debug for SecretValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl From<Vec<SecretValue>> for SecretValues {
    fn from(values: Vec<SecretValue>) -> Self {
        SecretValues(values.into_iter().map(|v| (v.name, v.value)).collect())
    }
}

impl SecretValues {
    /// The environment `env` describes: plain values as they are, references replaced by
    /// their secret's value; an error naming the variable and the secret when one was not
    /// delivered.
    pub fn resolve<'a>(
        &'a self,
        env: &'a BTreeMap<String, EnvValue>,
    ) -> Result<Vec<(&'a str, &'a str)>, String> {
        env.iter()
            .map(|(key, value)| Ok((key.as_str(), self.value(|| format!("env {key}"), value)?)))
            .collect()
    }

    /// The registry credential `credentials` names, its secrets replaced by their values; an
    /// error naming the field and the secret when one was not delivered.
    pub fn credential(&self, credentials: &RegistryCredentials) -> Result<Credential, String> {
        let field = "runtime.image.credentials";
        Ok(Credential {
            username: self
                .value(|| format!("{field}.username"), &credentials.username)?
                .to_owned(),
            password: self
                .value(|| format!("{field}.password"), &credentials.password)?
                .to_owned(),
        })
    }

    /// `value` itself, or the value of the secret it names; else an error naming `field()`.
    fn value<'a>(
        &'a self,
        field: impl FnOnce() -> String,
        value: &'a EnvValue,
    ) -> Result<&'a str, String> {
        match value {
            EnvValue::Plain(plain) => Ok(plain),
            EnvValue::Secret(reference) => self
                .0
                .get(&reference.secret)
                .map(String::as_str)
                .ok_or_else(|| {
                    format!(
                        "{}: secret `{}` was not delivered (it does not exist, or the \
                         control planes cannot open it or are away)",
                        field(),
                        reference.secret
                    )
                }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_resolve_to_delivered_values_and_debug_shows_names_only() {
        let values = SecretValues::from(vec![SecretValue {
            name: "DB".into(),
            version: 3,
            value: "hunter2".into(),
        }]);
        let env: BTreeMap<String, EnvValue> =
            serde_json::from_str(r#"{"A":"plain","PASSWORD":{"secret":"DB"}}"#).unwrap();
        assert_eq!(
            values.resolve(&env).unwrap(),
            [("A", "plain"), ("PASSWORD", "hunter2")]
        );
        assert!(!format!("{values:?}").contains("hunter2"));
        let missing: BTreeMap<String, EnvValue> =
            serde_json::from_str(r#"{"X":{"secret":"OTHER"}}"#).unwrap();
        let err = values.resolve(&missing).unwrap_err();
        assert!(err.contains("env X") && err.contains("`OTHER`"), "{err}");

        let credentials: RegistryCredentials =
            serde_json::from_str(r#"{"username":"robot","password":{"secret":"DB"}}"#).unwrap();
        let credential = values.credential(&credentials).unwrap();
        assert_eq!(
            (&*credential.username, &*credential.password),
            ("robot", "hunter2")
        );
        assert!(!format!("{credential:?}").contains("hunter2"));
        let credentials: RegistryCredentials =
            serde_json::from_str(r#"{"username":"robot","password":{"secret":"GONE"}}"#).unwrap();
        let err = values.credential(&credentials).unwrap_err();
        assert!(
            err.contains("runtime.image.credentials.password") && err.contains("`GONE`"),
            "{err}"
        );
    }
}
