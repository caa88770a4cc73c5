//! Name rules shared by every resource: DNS labels and host names.

/// Checks that `name` is a DNS label: 1–63 characters of `a-z`, `0-9` and `-`, not starting or
/// ending with `-`. Returns the reason when it is not.
pub fn check_dns_label(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > 63 {
        return Err(format!("`{name}` is longer than 63 characters"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(format!(
            "`{name}` is not a DNS label: {c:?} is not allowed (use a-z, 0-9 and -)"
        ));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(format!(
            "`{name}` is not a DNS label: it starts or ends with -"
        ));
    }
    Ok(())
}

/// Checks that `host` is a fully qualified host name: dot-separated DNS labels, at least two,
/// 253 characters at most. Returns the reason when it is not.
pub fn check_host_name(host: &str) -> Result<(), String> {
    if host.len() > 253 {
        return Err(format!("`{host}` is longer than 253 characters"));
    }
    let labels: Vec<&str> = host.split('.').collect();
    if labels.len() < 2 {
        return Err(format!(
            "`{host}` is not a fully qualified host name (e.g. shop.example.com)"
        ));
    }
    for label in labels {
        check_dns_label(label).map_err(|reason| format!("in host name `{host}`: {reason}"))?;
    }
    Ok(())
}

/// Checks that `path` is an absolute URL path: starts with `/`, no whitespace or control
/// characters. Returns the reason when it is not.
pub fn check_url_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("`{path}` must start with /"));
    }
    if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("`{path}` must not contain whitespace"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert!(check_dns_label("web-1").is_ok());
        assert!(check_dns_label("").is_err());
        assert!(check_dns_label("Web").is_err());
        assert!(check_dns_label("-web").is_err());
        assert!(check_dns_label("web_1").is_err());
        assert!(check_dns_label(&"a".repeat(64)).is_err());
    }

    #[test]
    fn hosts() {
        assert!(check_host_name("shop.example.com").is_ok());
        assert!(check_host_name("localhost").is_err());
        assert!(check_host_name("shop..com").is_err());
    }
}
