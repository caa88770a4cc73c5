//! `meridian secret …`: set, list and delete an app's or an org's secrets. Values go to the API
//! once and are never shown again; `list` shows names and versions.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use meridian_model::SecretInfo;
use reqwest::Method;
use serde_json::json;

use crate::client::Client;
use crate::output::{print, timestamp, Format};

use super::resources::default_org;

/// Whose secrets: an app's (--app), or else an org's.
#[derive(Args, Clone)]
pub struct SecretScope {
    /// The app whose secrets these are. Without it, the secrets are the org's: every app of
    /// the org sees them, unless it has a secret of the same name (the app's wins).
    #[arg(long)]
    app: Option<String>,
    /// The org; defaults to the context's, else the token's org (an admin token must name it).
    #[arg(long, env = "MERIDIAN_ORG")]
    org: Option<String>,
}

impl SecretScope {
    /// The API path of the secrets: `/v1/orgs/{org}/apps/{app}/secrets` or
    /// `/v1/orgs/{org}/secrets`.
    async fn path(&self, api: &Client) -> Result<String> {
        let org = default_org(api, self.org.clone()).await?;
        Ok(match &self.app {
            Some(app) => format!("/v1/orgs/{org}/apps/{app}/secrets"),
            None => format!("/v1/orgs/{org}/secrets"),
        })
    }
}

/// `meridian secret …`
#[derive(Subcommand)]
pub enum SecretCommand {
    /// Set a secret of an app (--app) or of an org (no --app).
    ///
    /// The value comes from `NAME=VALUE`, from --from-file, or else from standard input (one
    /// trailing newline removed). A changed value is a new version, and each service that uses
    /// it gets a new deployment version (`secret changed`) that rolls its instances over to the
    /// new value as its deploy.strategy says. Reference it in a definition's env, or in an
    /// image's credentials, as `{secret: NAME}`: the app's secret of that name if it has one,
    /// else the org's. An admin token must name the org (--org).
    Set {
        /// `NAME=VALUE`, or `NAME` with --from-file or standard input. NAME: letters, digits
        /// and _, not starting with a digit.
        secret: String,
        #[command(flatten)]
        scope: SecretScope,
        /// Read the value from this file, as it is.
        #[arg(long, value_name = "PATH")]
        from_file: Option<PathBuf>,
    },
    /// List an app's or an org's secrets: names and versions, never values.
    List {
        #[command(flatten)]
        scope: SecretScope,
    },
    /// Delete a secret no service uses any more (for an org's: no service of an app without
    /// a secret of that name). An app's secret in use may go when the org has one of that
    /// name: the services that use it roll over to the org's.
    Delete {
        /// The secret's name.
        name: String,
        #[command(flatten)]
        scope: SecretScope,
    },
}

/// Runs `meridian secret …`.
pub async fn secret(api: &Client, format: Format, cmd: SecretCommand) -> Result<()> {
    match cmd {
        SecretCommand::Set {
            secret,
            scope,
            from_file,
        } => {
            let (name, value) = value_of(&secret, from_file)?;
            let path = scope.path(api).await?;
            let info: SecretInfo = api
                .send(
                    Method::PUT,
                    &format!("{path}/{name}"),
                    &json!({ "value": value }),
                )
                .await?;
            print(format, &info, &HEADERS, |i| rows(std::slice::from_ref(i)))
        }
        SecretCommand::List { scope } => {
            let path = scope.path(api).await?;
            let secrets: Vec<SecretInfo> = api.get(&path).await?;
            print(format, &secrets, &HEADERS, |list| rows(list))
        }
        SecretCommand::Delete { name, scope } => {
            let path = scope.path(api).await?;
            api.delete(&format!("{path}/{name}")).await?;
            println!("deleted secret {name}");
            Ok(())
        }
    }
}

const HEADERS: [&str; 3] = ["NAME", "VERSION", "UPDATED"];

fn rows(secrets: &[SecretInfo]) -> Vec<Vec<String>> {
    secrets
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.version.to_string(),
                timestamp(s.updated_at),
            ]
        })
        .collect()
}

/// The name and value `secret` (and `from_file`, or standard input) give.
fn value_of(secret: &str, from_file: Option<PathBuf>) -> Result<(String, String)> {
    match (secret.split_once('='), from_file) {
        (Some(_), Some(_)) => bail!("give the value as NAME=VALUE or with --from-file, not both"),
        (Some((name, value)), None) => Ok((name.to_owned(), value.to_owned())),
        (None, Some(path)) => {
            let value = std::fs::read_to_string(&path)
                .with_context(|| format!("--from-file {}", path.display()))?;
            Ok((secret.to_owned(), value))
        }
        (None, None) => {
            if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                eprintln!("value of {secret} (end with Ctrl-D):");
            }
            let mut value = String::new();
            std::io::stdin()
                .read_to_string(&mut value)
                .context("reading the value from standard input")?;
            let trimmed = value
                .strip_suffix('\n')
                .map(|v| v.strip_suffix('\r').unwrap_or(v));
            Ok((secret.to_owned(), trimmed.unwrap_or(&value).to_owned()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_comes_from_name_equals_value_or_a_file_as_it_is() {
        assert_eq!(
            value_of("DB=a=b", None).unwrap(),
            ("DB".to_owned(), "a=b".to_owned())
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("v");
        std::fs::write(&file, "line\n").unwrap();
        assert_eq!(
            value_of("DB", Some(file.clone())).unwrap(),
            ("DB".to_owned(), "line\n".to_owned())
        );
        assert!(value_of("DB=x", Some(file)).is_err());
    }
}
