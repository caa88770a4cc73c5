//! The client's config file: named contexts (an API URL, a token, a default org) and which one
//! is current, in `$XDG_CONFIG_HOME/meridian/config.yaml` (else `~/.config/meridian/…`).
//!
//! It holds tokens, so it is written with mode 0600 (its folder 0700), whole and atomically (a
//! new file renamed over the old one). A file that is not what it should be is refused with its
//! path and the field at fault; nothing is written then.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::yaml_depth;

/// The largest config file read: a few contexts take a few hundred bytes.
const MAX_BYTES: u64 = 1 << 20;
/// How deep its collections may nest (a context's fields are three levels down).
const MAX_DEPTH: usize = 8;
/// The longest context name.
const MAX_NAME: usize = 63;

/// The whole file.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// The context client commands use when no `--context` is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_context: Option<String>,
    /// Contexts by name.
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

/// Where and as whom client commands talk to an API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Context {
    /// Base URL of the public API (`http://` or `https://`).
    pub api_url: String,
    /// The API token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The org commands act on when they are not given one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
}

/// Where the config file is: `$XDG_CONFIG_HOME/meridian/config.yaml` when that is an absolute
/// path (the XDG rule), else `$HOME/.config/meridian/config.yaml`.
pub fn path() -> Result<PathBuf> {
    let absolute = |var: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    let base = absolute("XDG_CONFIG_HOME")
        .or_else(|| absolute("HOME").map(|home| home.join(".config")))
        .context("cannot place the config file: neither XDG_CONFIG_HOME nor HOME is set")?;
    Ok(base.join("meridian").join("config.yaml"))
}

/// Reads the config file at `path`; no file is an empty config.
pub async fn load(path: &Path) -> Result<Config> {
    let file = path.display();
    let metadata = match tokio::fs::metadata(path).await {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Config::default()),
        Err(e) => return Err(anyhow!("cannot read the config file {file}: {e}")),
    };
    if metadata.len() > MAX_BYTES {
        bail!(
            "{file}: {} bytes, more than a config file may have ({MAX_BYTES})",
            metadata.len()
        );
    }
    let bytes = tokio::fs::read(path)
        .await
        .with_context(|| format!("cannot read the config file {file}"))?;
    let config = parse(path, &bytes)?;
    if metadata.permissions().mode() & 0o077 != 0 && config.has_tokens() {
        eprintln!(
            "warning: {file} holds API tokens and others may read it (mode {:o}); \
             `chmod 600 {file}`",
            metadata.permissions().mode() & 0o777
        );
    }
    Ok(config)
}

/// Parses and checks the text of the config file at `path` (named in errors).
pub fn parse(path: &Path, bytes: &[u8]) -> Result<Config> {
    let file = path.display();
    let text = std::str::from_utf8(bytes).map_err(|e| anyhow!("{file}: not UTF-8 text: {e}"))?;
    if text.trim().is_empty() {
        return Ok(Config::default());
    }
    if let Err(at) = yaml_depth::check(text, MAX_DEPTH) {
        bail!(
            "{file}: line {} column {}: collections nest deeper than {MAX_DEPTH} levels",
            at.line,
            at.column
        );
    }
    // serde names the field's path and where it is, e.g. `contexts.prod: unknown field
    // `apiurl`, expected one of `api-url`, `token`, `org` at line 3 column 5`.
    let config: Config = serde_yaml_ng::from_str(text).map_err(|e| anyhow!("{file}: {e}"))?;
    config.check().map_err(|e| anyhow!("{file}: {e}"))?;
    Ok(config)
}

/// Writes `config` to `path` with mode 0600 through a new file renamed over the old one.
pub async fn save(path: &Path, config: &Config) -> Result<()> {
    let file = path.display();
    let text = serde_yaml_ng::to_string(config).context("encoding the config file")?;
    let folder = path
        .parent()
        .with_context(|| format!("{file} has no folder"))?;
    tokio::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(folder)
        .await
        .with_context(|| format!("cannot create {}", folder.display()))?;
    let new = path.with_extension(format!("yaml.new-{}", std::process::id()));
    let written = write_private(&new, text.as_bytes()).await;
    let renamed = match written {
        Ok(()) => tokio::fs::rename(&new, path).await,
        Err(e) => Err(e),
    };
    if let Err(e) = renamed {
        // What is left of the new file is of no use; the old one is untouched.
        let _ = tokio::fs::remove_file(&new).await;
        bail!("cannot write the config file {file}: {e}");
    }
    Ok(())
}

/// Creates `path` (which must not exist) readable by its owner only, with `bytes`, on disk.
async fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .await?;
    file.write_all(bytes).await?;
    file.sync_all().await
}

impl Config {
    /// Checks every field: names, URLs, orgs, and that the current context exists. The error
    /// names the field (`contexts.prod.api-url: …`).
    pub fn check(&self) -> Result<()> {
        for (name, context) in &self.contexts {
            check_name(name).map_err(|e| anyhow!("contexts: {e}"))?;
            context
                .check()
                .map_err(|(field, e)| anyhow!("contexts.{name}.{field}: {e}"))?;
        }
        if let Some(current) = &self.current_context {
            if !self.contexts.contains_key(current) {
                bail!("current-context: there is no context `{current}`");
            }
        }
        Ok(())
    }

    /// The context named `name`, or an error listing those there are.
    pub fn get(&self, name: &str) -> Result<&Context> {
        self.contexts.get(name).with_context(|| {
            let known: Vec<&str> = self.contexts.keys().map(String::as_str).collect();
            if known.is_empty() {
                format!("there is no context `{name}` (there are none: `meridian context set`)")
            } else {
                format!(
                    "there is no context `{name}` (there are: {})",
                    known.join(", ")
                )
            }
        })
    }

    fn has_tokens(&self) -> bool {
        self.contexts.values().any(|c| c.token.is_some())
    }
}

impl Context {
    /// Checks the fields; on error, the field's name in the file and the reason.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        check_api_url(&self.api_url).map_err(|e| ("api-url", e))?;
        if self.token.as_deref().is_some_and(str::is_empty) {
            return Err(("token", "must not be empty (leave it out instead)".into()));
        }
        if let Some(org) = &self.org {
            meridian_model::check_dns_label(org).map_err(|e| ("org", e))?;
        }
        Ok(())
    }
}

/// A context name: 1–63 characters of letters, digits, `-`, `_` and `.`.
pub fn check_name(name: &str) -> Result<()> {
    let fine = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if name.is_empty() || name.len() > MAX_NAME || !name.chars().all(fine) {
        bail!("`{name}` is not a context name: 1 to {MAX_NAME} letters, digits, `-`, `_` or `.`");
    }
    Ok(())
}

/// An API URL: `http://` or `https://` with a host.
fn check_api_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") || !parsed.has_host() {
        return Err(format!(
            "`{url}` is not an http:// or https:// URL with a host"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> Result<Config> {
        parse(
            Path::new("/home/op/.config/meridian/config.yaml"),
            text.as_bytes(),
        )
    }

    fn error(text: &str) -> String {
        format!("{:#}", parsed(text).unwrap_err())
    }

    #[test]
    fn a_good_file_is_read() {
        let config = parsed(
            "current-context: prod\ncontexts:\n  prod:\n    api-url: https://api.example.com\n    \
             token: mrd_x\n    org: shop\n  dev:\n    api-url: http://127.0.0.1:7070\n",
        )
        .unwrap();
        assert_eq!(config.current_context.as_deref(), Some("prod"));
        assert_eq!(config.contexts["prod"].org.as_deref(), Some("shop"));
        assert_eq!(config.contexts["dev"].token, None);
        assert_eq!(parsed("").unwrap(), Config::default());
    }

    #[test]
    fn errors_name_the_file_and_the_field() {
        let file = "/home/op/.config/meridian/config.yaml";
        let bad_url = error("contexts:\n  prod:\n    api-url: not a url\n");
        assert!(bad_url.starts_with(file), "{bad_url}");
        assert!(bad_url.contains("contexts.prod.api-url"), "{bad_url}");
        let unknown = error("contexts:\n  prod:\n    apiurl: http://x\n");
        assert!(
            unknown.contains("contexts.prod") && unknown.contains("apiurl"),
            "{unknown}"
        );
        assert!(unknown.contains("line 3"), "{unknown}");
        let org = error("contexts:\n  prod:\n    api-url: http://x\n    org: Shop\n");
        assert!(org.contains("contexts.prod.org"), "{org}");
        let current = error("current-context: gone\ncontexts: {}\n");
        assert!(current.contains("current-context"), "{current}");
        let scheme = error("contexts:\n  prod:\n    api-url: ftp://x\n");
        assert!(scheme.contains("contexts.prod.api-url"), "{scheme}");
        let name = error("contexts:\n  'a b':\n    api-url: http://x\n");
        assert!(name.contains("not a context name"), "{name}");
        let deep = error(&format!("contexts: {}{}\n", "[".repeat(20), "]".repeat(20)));
        assert!(deep.contains("deeper than"), "{deep}");
    }

    #[tokio::test]
    async fn saved_files_are_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meridian").join("config.yaml");
        let mut config = Config::default();
        config.contexts.insert(
            "prod".into(),
            Context {
                api_url: "https://api.example.com".into(),
                token: Some("mrd_x".into()),
                org: None,
            },
        );
        config.current_context = Some("prod".into());
        save(&path, &config).await.unwrap();
        save(&path, &config).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let folder = std::fs::metadata(path.parent().unwrap()).unwrap();
        assert_eq!(folder.permissions().mode() & 0o777, 0o700);
        assert_eq!(load(&path).await.unwrap(), config);
        // Only the file itself is left in the folder.
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
    }
}
