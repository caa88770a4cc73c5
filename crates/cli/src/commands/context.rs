//! `meridian context …`: list, choose, create, change and delete the contexts of the config file
//! (see [`crate::config`]). A change that is refused writes nothing.

use anyhow::{anyhow, bail, Result};
use clap::Subcommand;

use crate::config::{self, Config, Context};
use crate::output::table;

/// `meridian context` subcommands.
#[derive(Subcommand)]
pub enum ContextCommand {
    /// List the contexts, the current one marked with `*` (never their tokens).
    List,
    /// Make a context the current one: client commands use it when given no `--context`.
    Use {
        /// The context.
        name: String,
    },
    /// Create a context, or change the values given of one (the first becomes the current one).
    Set {
        /// The context's name (letters, digits, `-`, `_`, `.`).
        name: String,
        /// Base URL of the public API (required for a new context).
        #[arg(long, value_name = "URL")]
        api_url: Option<String>,
        /// The API token; `""` removes it.
        #[arg(long)]
        token: Option<String>,
        /// The org commands act on when not given one; `""` removes it.
        #[arg(long)]
        org: Option<String>,
    },
    /// Delete a context (when it is the current one, there is no current one any more).
    Delete {
        /// The context.
        name: String,
    },
}

/// Runs a `meridian context` subcommand.
pub async fn run(command: ContextCommand) -> Result<()> {
    let path = config::path()?;
    let file = path.display();
    let mut config = config::load(&path).await?;
    let said = match command {
        ContextCommand::List => {
            print!("{}", list(&config));
            return Ok(());
        }
        ContextCommand::Use { name } => {
            config.get(&name).map_err(|e| anyhow!("{file}: {e}"))?;
            config.current_context = Some(name.clone());
            format!("current context: {name}")
        }
        ContextCommand::Set {
            name,
            api_url,
            token,
            org,
        } => set(&mut config, &name, api_url, token, org)?,
        ContextCommand::Delete { name } => {
            config.get(&name).map_err(|e| anyhow!("{file}: {e}"))?;
            config.contexts.remove(&name);
            if config.current_context.as_deref() == Some(name.as_str()) {
                config.current_context = None;
                format!("deleted context {name}; there is no current context now")
            } else {
                format!("deleted context {name}")
            }
        }
    };
    config::save(&path, &config).await?;
    println!("{said} ({file})");
    Ok(())
}

/// Creates or changes context `name`; what to say about it.
fn set(
    config: &mut Config,
    name: &str,
    api_url: Option<String>,
    token: Option<String>,
    org: Option<String>,
) -> Result<String> {
    config::check_name(name)?;
    let existed = config.contexts.contains_key(name);
    let mut context = match (config.contexts.get(name), api_url) {
        (Some(old), api_url) => Context {
            api_url: api_url.unwrap_or_else(|| old.api_url.clone()),
            ..old.clone()
        },
        (None, Some(api_url)) => Context {
            api_url,
            token: None,
            org: None,
        },
        (None, None) => bail!("a new context needs --api-url"),
    };
    // An empty value removes the field.
    if let Some(token) = token {
        context.token = Some(token).filter(|t| !t.is_empty());
    }
    if let Some(org) = org {
        context.org = Some(org).filter(|o| !o.is_empty());
    }
    context
        .check()
        .map_err(|(field, e)| anyhow!("--{field}: {e}"))?;
    config.contexts.insert(name.to_owned(), context);
    let verb = if existed { "updated" } else { "created" };
    if config.current_context.is_none() {
        config.current_context = Some(name.to_owned());
        return Ok(format!("{verb} context {name}, now the current context"));
    }
    Ok(format!("{verb} context {name}"))
}

/// The contexts as a table: the current one marked, whether each has a token, never the token.
fn list(config: &Config) -> String {
    let rows: Vec<Vec<String>> = config
        .contexts
        .iter()
        .map(|(name, context)| {
            let current = config.current_context.as_deref() == Some(name.as_str());
            vec![
                if current { "*" } else { "" }.to_owned(),
                name.clone(),
                context.api_url.clone(),
                context.org.clone().unwrap_or_else(|| "-".to_owned()),
                if context.token.is_some() { "yes" } else { "no" }.to_owned(),
            ]
        })
        .collect();
    table(&["CURRENT", "NAME", "API", "ORG", "TOKEN"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_creates_changes_and_refuses_without_changing() {
        let mut config = Config::default();
        let said = set(&mut config, "prod", None, None, None).unwrap_err();
        assert!(said.to_string().contains("--api-url"), "{said}");
        let said = set(
            &mut config,
            "prod",
            Some("https://api.example.com".into()),
            Some("mrd_x".into()),
            Some("shop".into()),
        )
        .unwrap();
        assert!(said.contains("now the current context"), "{said}");
        set(&mut config, "prod", None, Some(String::new()), None).unwrap();
        assert_eq!(config.contexts["prod"].token, None);
        assert_eq!(config.contexts["prod"].org.as_deref(), Some("shop"));
        let bad = set(&mut config, "prod", Some("nope".into()), None, None).unwrap_err();
        assert!(bad.to_string().contains("--api-url"), "{bad}");
        assert_eq!(config.contexts["prod"].api_url, "https://api.example.com");
        let listed = list(&config);
        assert!(listed.contains("*        prod"), "{listed}");
        assert!(!listed.contains("mrd_x"), "{listed}");
    }
}
