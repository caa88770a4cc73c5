//! The values of the secrets an instance's environment references (`{secret: NAME}`), as its
//! assignment delivered them: resolved into the process's environment at each start, held in
//! memory only, never written to disk or shown (their `Debug` lists names only).

use std::collections::BTreeMap;

use meridian_model::EnvValue;
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
            .map(|(key, value)| match value {
                EnvValue::Plain(plain) => Ok((key.as_str(), plain.as_str())),
                EnvValue::Secret(reference) => self
                    .0
                    .get(&reference.secret)
                    .map(|v| (key.as_str(), v.as_str()))
                    .ok_or_else(|| {
                        format!(
                            "env {key}: secret `{}` was not delivered (it does not exist, or \
                             the control planes cannot open it or are away)",
                            reference.secret
                        )
                    }),
            })
            .collect()
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
    }
}
