//! Which API, token and org a client command uses: its flags and environment variables first,
//! then the context named by `--context` (else the config file's current one), then the default
//! API address. Only client commands have these flags; servers (`control`, `dev`, `proxy`, …)
//! take their own.

use std::path::Path;

use anyhow::Result;

use crate::config;
use crate::output::Format;

/// The API address when no flag, environment variable or context gives one.
pub const DEFAULT_API: &str = "http://127.0.0.1:7070";

/// How to reach the API and how to print answers: the flags of every client command.
#[derive(clap::Args, Clone)]
#[command(next_help_heading = "API options")]
pub struct ClientArgs {
    /// Base URL of the public API [default: the context's api-url, else http://127.0.0.1:7070].
    #[arg(long, env = "MERIDIAN_API", global = true)]
    pub api: Option<String>,
    /// API token (printed by the control plane at first start, or from `meridian token
    /// create`) [default: the context's].
    #[arg(long, env = "MERIDIAN_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// The context of the config file to use instead of its current one (`meridian context
    /// list`).
    #[arg(long, env = "MERIDIAN_CONTEXT", global = true)]
    pub context: Option<String>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table, global = true)]
    pub output: Format,
}

/// What a client command talks to, and as whom.
#[derive(Debug, PartialEq)]
pub struct Connection {
    /// Base URL of the API, without a trailing `/`.
    pub api: String,
    /// The token, when there is one.
    pub token: Option<String>,
    /// The org commands act on when they are not given one (the context's).
    pub org: Option<String>,
    /// The context used and its file, for messages: ``context `prod` (/home/…/config.yaml)``.
    pub context: Option<String>,
    /// Whether `api` is the context's.
    pub api_from_context: bool,
    /// Whether `token` is the context's.
    pub token_from_context: bool,
    /// Whether the context has a token that was not used, as the API is not the context's.
    pub token_withheld: bool,
}

impl ClientArgs {
    /// Resolves the API, token and org: flags and environment variables win over the context.
    pub async fn connection(&self) -> Result<Connection> {
        let path = match (config::path(), &self.context) {
            (Ok(path), _) => Some(path),
            // No home: no contexts, unless one is asked for.
            (Err(_), None) => None,
            (Err(e), Some(_)) => return Err(e),
        };
        let file = match &path {
            Some(path) => Some((config::load(path).await?, path)),
            None => None,
        };
        let chosen = file.as_ref().and_then(|(config, path)| {
            let name = self.context.as_ref().or(config.current_context.as_ref())?;
            Some((name, config, path))
        });
        let context = match chosen {
            Some((name, config, path)) => Some((
                config
                    .get(name)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
                describe(name, path),
            )),
            None => None,
        };
        Ok(resolve(self, context))
    }
}

/// ``context `name` (path)``.
fn describe(name: &str, path: &Path) -> String {
    format!("context `{name}` ({})", path.display())
}

/// Each value from the flags (or environment), else from the context.
fn resolve(args: &ClientArgs, context: Option<(&config::Context, String)>) -> Connection {
    let (values, described) = match context {
        Some((values, described)) => (Some(values), Some(described)),
        None => (None, None),
    };
    let context_api = values
        .map(|c| c.api_url.clone())
        .filter(|_| args.api.is_none());
    let flag_token = args.token.clone().filter(|t| !t.is_empty());
    // A context's token goes only to the context's API: an API named by a flag gets none.
    let same_api = |c: &config::Context| {
        args.api
            .as_deref()
            .is_none_or(|api| api.trim_end_matches('/') == c.api_url.trim_end_matches('/'))
    };
    let context_token = values
        .filter(|c| same_api(c))
        .and_then(|c| c.token.clone())
        .filter(|_| flag_token.is_none());
    let token_withheld =
        flag_token.is_none() && values.is_some_and(|c| c.token.is_some() && !same_api(c));
    Connection {
        api_from_context: context_api.is_some(),
        token_from_context: context_token.is_some(),
        token_withheld,
        api: (args.api.clone().or(context_api))
            .unwrap_or_else(|| DEFAULT_API.to_owned())
            .trim_end_matches('/')
            .to_owned(),
        token: flag_token.or(context_token),
        org: values.and_then(|c| c.org.clone()),
        context: described,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(api: Option<&str>, token: Option<&str>) -> ClientArgs {
        ClientArgs {
            api: api.map(str::to_owned),
            token: token.map(str::to_owned),
            context: None,
            output: Format::Table,
        }
    }

    #[test]
    fn flags_win_over_the_context_field_by_field() {
        let context = config::Context {
            api_url: "https://api.example.com/".into(),
            token: Some("from-context".into()),
            org: Some("shop".into()),
        };
        let described = || Some((&context, "context `prod` (x)".to_owned()));
        let from_context = resolve(&args(None, None), described());
        assert_eq!(from_context.api, "https://api.example.com");
        assert_eq!(from_context.token.as_deref(), Some("from-context"));
        assert_eq!(from_context.org.as_deref(), Some("shop"));
        assert!(from_context.api_from_context && from_context.token_from_context);
        let flags = resolve(
            &args(Some("http://127.0.90.1:1"), Some("flag")),
            described(),
        );
        assert_eq!(flags.api, "http://127.0.90.1:1");
        assert_eq!(flags.token.as_deref(), Some("flag"));
        assert_eq!(flags.org.as_deref(), Some("shop"));
        assert!(!flags.api_from_context && !flags.token_from_context);
        let elsewhere = resolve(&args(Some("http://127.0.90.1:1"), None), described());
        assert_eq!(
            elsewhere.token, None,
            "the context's token went to another API"
        );
        assert!(elsewhere.token_withheld);
        let same = resolve(&args(Some("https://api.example.com"), None), described());
        assert_eq!(same.token.as_deref(), Some("from-context"));
        let nothing = resolve(&args(None, Some("")), None);
        assert_eq!(nothing.api, DEFAULT_API);
        assert_eq!(nothing.token, None);
        assert_eq!(nothing.context, None);
    }
}
