//! Image references: `[REGISTRY/]REPOSITORY[:TAG][@sha256:DIGEST]`, as Docker and OCI
//! distribution write them.

use std::collections::BTreeMap;
use std::fmt;

/// A registry's user name and password (HTTP basic; exchanged for a token where the registry
/// uses a token service).
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    /// The user name.
    pub username: String,
    /// The password or token; never printed.
    pub password: String,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credential({}, <hidden>)", self.username)
    }
}

/// How registries are reached, by whoever asks them (the global control plane resolving tags,
/// agents pulling).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryOptions {
    /// Registries (`HOST:PORT`, as image references name them) spoken to over plain HTTP.
    pub insecure: Vec<String>,
    /// Credentials by registry (`HOST[:PORT]`); other registries are asked anonymously.
    pub credentials: BTreeMap<String, Credential>,
}

/// The registry a reference without one names (Docker Hub, as every container tool assumes).
pub const DEFAULT_REGISTRY: &str = "docker.io";

/// A parsed image reference, with the registry and tag defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// `HOST[:PORT]`; [`DEFAULT_REGISTRY`] when the reference names none.
    pub registry: String,
    /// The repository path inside the registry (`library/` is added to a one-component Docker
    /// Hub name, as Docker does).
    pub repository: String,
    /// The tag; `latest` when neither a tag nor a digest is given.
    pub tag: Option<String>,
    /// `sha256:` and 64 lowercase hex digits, when the reference pins one.
    pub digest: Option<String>,
}

impl ImageRef {
    /// Parses `reference`, or says what is wrong with it.
    pub fn parse(reference: &str) -> Result<ImageRef, String> {
        if reference.is_empty() {
            return Err("must not be empty".into());
        }
        if reference.len() > 512 {
            return Err("is longer than 512 bytes".into());
        }
        let (name, digest) = match reference.split_once('@') {
            Some((name, digest)) => {
                check_digest(digest)?;
                (name, Some(digest.to_owned()))
            }
            None => (reference, None),
        };
        let last_slash = name.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name[last_slash..].rfind(':') {
            Some(i) => {
                let tag = &name[last_slash + i + 1..];
                check_tag(tag)?;
                (&name[..last_slash + i], Some(tag.to_owned()))
            }
            None => (name, None),
        };
        let (registry, path) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                check_registry(first)?;
                (first.to_owned(), rest)
            }
            _ => (DEFAULT_REGISTRY.to_owned(), name),
        };
        if path.is_empty() {
            return Err("names no repository".into());
        }
        for component in path.split('/') {
            check_component(component)?;
        }
        let repository = if registry == DEFAULT_REGISTRY && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_owned()
        };
        let tag = match (&tag, &digest) {
            (None, None) => Some("latest".to_owned()),
            _ => tag,
        };
        Ok(ImageRef {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The same image pinned to `digest` (the tag is kept, for people to read).
    pub fn pinned(&self, digest: &str) -> ImageRef {
        ImageRef {
            digest: Some(digest.to_owned()),
            ..self.clone()
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// Checks a content digest: `sha256:` and 64 lowercase hex digits.
pub fn check_digest(digest: &str) -> Result<(), String> {
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| format!("digest `{digest}` is not sha256:<64 hex digits>"))?;
    if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(format!("digest `{digest}` is not sha256:<64 hex digits>"));
    }
    Ok(())
}

fn check_tag(tag: &str) -> Result<(), String> {
    let mut chars = tag.chars();
    let valid = tag.len() <= 128
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "tag `{tag}` is not a tag (letters, digits, `_`, `.`, `-`; at most 128)"
        ))
    }
}

fn check_registry(registry: &str) -> Result<(), String> {
    let (host, port) = match registry.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (registry, None),
    };
    let host_ok = !host.is_empty()
        && host
            .split('.')
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
    if host_ok && port_ok {
        Ok(())
    } else {
        Err(format!("registry `{registry}` is not HOST[:PORT]"))
    }
}

fn check_component(component: &str) -> Result<(), String> {
    let bytes = component.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let valid = bytes.first().is_some_and(alnum)
        && bytes.last().is_some_and(alnum)
        && bytes
            .iter()
            .all(|b| alnum(b) || matches!(b, b'.' | b'_' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "repository component `{component}` is not lowercase letters and digits separated by `.`, `_` or `-`"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn fills_in_the_registry_and_tag_defaults() {
        let r = ImageRef::parse("nginx").unwrap();
        assert_eq!(r.to_string(), "docker.io/library/nginx:latest");
        let r = ImageRef::parse("127.0.0.1:5000/team/hello:v1").unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "team/hello");
        assert_eq!(r.tag.as_deref(), Some("v1"));
        let r = ImageRef::parse(&format!("localhost/hello@{DIGEST}")).unwrap();
        assert_eq!((r.tag, r.digest.as_deref()), (None, Some(DIGEST)));
    }

    #[test]
    fn pins_a_tag_to_a_digest_and_reads_it_back() {
        let pinned = ImageRef::parse("reg.example:5000/hello:v1")
            .unwrap()
            .pinned(DIGEST);
        let text = pinned.to_string();
        assert_eq!(text, format!("reg.example:5000/hello:v1@{DIGEST}"));
        assert_eq!(ImageRef::parse(&text).unwrap(), pinned);
    }

    #[test]
    fn says_what_is_wrong() {
        for (bad, reason) in [
            ("", "empty"),
            ("Hello", "component `Hello`"),
            ("hello:", "tag ``"),
            ("hello@sha256:12", "digest"),
            ("reg.example:99999/hello", "registry"),
            ("reg.example/", "names no repository"),
            ("a//b", "component ``"),
        ] {
            let err = ImageRef::parse(bad).unwrap_err();
            assert!(err.contains(reason), "{bad}: {err}");
        }
    }
}
