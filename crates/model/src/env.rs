//! Environment values: a plain string, or a reference to a secret (`{secret: NAME}`: the app's
//! secret of that name, else its org's), which the agent resolves into the instance's
//! environment at start.
//!
//! A plain string serializes as a JSON string, as it always did; a reference as
//! `{"secret": "NAME"}`. Secret names follow environment variable names (see
//! [`check_secret_name`]).

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::{Definition, RegistryCredentials};

/// Longest secret name.
pub const SECRET_NAME_MAX: usize = 128;
/// Largest secret value, in bytes.
pub const SECRET_VALUE_MAX: usize = 64 * 1024;

/// One environment variable's value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(untagged)]
pub enum EnvValue {
    /// The value itself.
    Plain(String),
    /// The value of a secret (the app's of that name, else its org's), resolved by the agent
    /// at start.
    Secret(SecretRef),
}

/// A reference to a secret: `{secret: NAME}`, the app's secret of that name if it has one,
/// else its org's.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SecretRef {
    /// The secret's name (see [`check_secret_name`]).
    pub secret: String,
}

impl EnvValue {
    /// The secret named, if this is a reference.
    pub fn secret(&self) -> Option<&str> {
        match self {
            EnvValue::Plain(_) => None,
            EnvValue::Secret(r) => Some(&r.secret),
        }
    }
}

impl From<&str> for EnvValue {
    fn from(value: &str) -> Self {
        EnvValue::Plain(value.to_owned())
    }
}

impl<'de> Deserialize<'de> for EnvValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(EnvValueVisitor)
    }
}

struct EnvValueVisitor;

impl<'de> Visitor<'de> for EnvValueVisitor {
    type Value = EnvValue;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string or {secret: NAME}")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<EnvValue, E> {
        Ok(EnvValue::Plain(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<EnvValue, E> {
        Ok(EnvValue::Plain(v))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<EnvValue, A::Error> {
        let mut secret = None;
        while let Some(key) = map.next_key::<String>()? {
            if key != "secret" {
                return Err(de::Error::custom(format!(
                    "unknown field `{key}`: an environment value is a string or {{secret: NAME}}"
                )));
            }
            if secret.is_some() {
                return Err(de::Error::duplicate_field("secret"));
            }
            secret = Some(map.next_value::<String>()?);
        }
        let secret = secret.ok_or_else(|| {
            de::Error::custom(
                "an environment value is a string or {secret: NAME}; `secret` is missing",
            )
        })?;
        Ok(EnvValue::Secret(SecretRef { secret }))
    }
}

/// Whether `name` is an environment variable name: letters, digits and `_`, not starting with
/// a digit (and not empty).
pub fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Checks a secret name: 1–128 characters, letters, digits and `_`, not starting with a digit
/// (an environment variable name). The error says why, without the name's owner.
pub fn check_secret_name(name: &str) -> Result<(), String> {
    if !is_env_name(name) {
        return Err(format!(
            "`{name}` is not a secret name (letters, digits and _, not starting with a digit)"
        ));
    }
    if name.len() > SECRET_NAME_MAX {
        return Err(format!(
            "is {} characters long; at most {SECRET_NAME_MAX} are allowed",
            name.len()
        ));
    }
    Ok(())
}

/// Every reference to a secret in `definition` (the runtime's `env`, and each override's `env`
/// and runtime `env`; then the image's registry credentials, and each override's), as (field,
/// secret name), in the order of the fields: e.g.
/// `("runtime.process.env.DB_PASSWORD", "DB_PASSWORD")` or
/// `("runtime.image.credentials.password", "REGISTRY_PASSWORD")`.
pub fn secret_references(definition: &Definition) -> Vec<(String, &str)> {
    let runtime = &definition.runtime;
    let mut envs: Vec<(String, &BTreeMap<String, EnvValue>)> = [
        (
            "runtime.process.env",
            runtime.process.as_ref().map(|p| &p.env),
        ),
        ("runtime.image.env", runtime.image.as_ref().map(|i| &i.env)),
    ]
    .into_iter()
    .filter_map(|(field, env)| Some((field.to_owned(), env?)))
    .collect();
    for (region, o) in &definition.overrides {
        let runtime = o.runtime.as_ref();
        let process = runtime.and_then(|r| r.process.as_ref()?.env.as_ref());
        let image = runtime.and_then(|r| r.image.as_ref()?.env.as_ref());
        for (field, env) in [
            ("env", o.env.as_ref()),
            ("runtime.process.env", process),
            ("runtime.image.env", image),
        ] {
            if let Some(env) = env {
                envs.push((format!("overrides.{region}.{field}"), env));
            }
        }
    }
    let mut credentials: Vec<(String, &RegistryCredentials)> = Vec::new();
    if let Some(c) = runtime.image.as_ref().and_then(|i| i.credentials.as_ref()) {
        credentials.push(("runtime.image.credentials".to_owned(), c));
    }
    for (region, o) in &definition.overrides {
        let image = o.runtime.as_ref().and_then(|r| r.image.as_ref());
        if let Some(c) = image.and_then(|i| i.credentials.as_ref()) {
            credentials.push((format!("overrides.{region}.runtime.image.credentials"), c));
        }
    }
    envs.into_iter()
        .flat_map(|(prefix, env)| {
            env.iter()
                .filter_map(move |(key, value)| Some((format!("{prefix}.{key}"), value.secret()?)))
        })
        .chain(
            credentials
                .into_iter()
                .flat_map(|(prefix, c)| c.secret_references(&prefix)),
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_is_a_string_or_a_secret_reference_and_reads_back_as_written() {
        let env: BTreeMap<String, EnvValue> =
            serde_json::from_str(r#"{"A":"plain","B":{"secret":"DB_PASSWORD"}}"#).unwrap();
        assert_eq!(env["A"], EnvValue::Plain("plain".into()));
        assert_eq!(env["B"].secret(), Some("DB_PASSWORD"));
        assert_eq!(
            serde_json::to_string(&env).unwrap(),
            r#"{"A":"plain","B":{"secret":"DB_PASSWORD"}}"#
        );
    }

    #[test]
    fn anything_else_is_refused_with_what_is_expected() {
        for (json, words) in [
            (r#"{"secret":"A","x":1}"#, "unknown field `x`"),
            (r#"{}"#, "`secret` is missing"),
            (r#"1"#, "a string or {secret: NAME}"),
            (r#"{"secret":1}"#, "a string"),
        ] {
            let err = serde_json::from_str::<EnvValue>(json)
                .unwrap_err()
                .to_string();
            assert!(err.contains(words), "{json}: {err}");
        }
    }

    #[test]
    fn secret_names_are_environment_variable_names() {
        assert!(check_secret_name("DB_PASSWORD").is_ok());
        assert!(check_secret_name("_x1").is_ok());
        for bad in ["", "1A", "A-B", "A B", "é"] {
            assert!(check_secret_name(bad).is_err(), "{bad}");
        }
        assert!(check_secret_name(&"A".repeat(SECRET_NAME_MAX + 1)).is_err());
    }
}
