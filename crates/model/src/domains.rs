//! Public domains and who may serve them: a domain is a host name (`shop.example.com`) or a
//! wildcard (`*.example.com`, which covers every name below `example.com`, at any depth, but not
//! `example.com` itself). Two claims overlap when they are equal or one is a wildcard that covers
//! the other; overlapping claims belong to one service across all orgs (docs/definition.md,
//! "Domains").

use std::collections::{HashMap, HashSet};

use crate::check_host_name;

/// Checks that `domain` is a host name or `*.` followed by one. Returns the reason when it is
/// not.
pub fn check_domain(domain: &str) -> Result<(), String> {
    match domain.strip_prefix("*.") {
        Some(base) => check_host_name(base).map_err(|reason| {
            format!("in wildcard `{domain}` (`*.` then a host name such as example.com): {reason}")
        }),
        None => check_host_name(domain),
    }
}

/// The wildcards that would cover `domain` (itself included when it is one), most specific
/// first: for `a.b.example.com` or `*.b.example.com`, `*.b.example.com` and `*.example.com`.
/// Wildcards of a single label (`*.com`) are never valid claims and are not listed.
pub fn covering_wildcards(domain: &str) -> Vec<String> {
    let Some((_, mut base)) = domain.split_once('.') else {
        return Vec::new();
    };
    let mut wildcards = Vec::new();
    while let Some((_, parent)) = base.split_once('.') {
        wildcards.push(format!("*.{base}"));
        base = parent;
    }
    wildcards
}

/// Whether claims `a` and `b` overlap: equal, or one a wildcard covering the other.
pub fn domains_overlap(a: &str, b: &str) -> bool {
    let covers = |wildcard: &str, other: &str| {
        wildcard
            .strip_prefix('*')
            .is_some_and(|suffix| other.len() > suffix.len() && other.ends_with(suffix))
    };
    a == b || covers(a, b) || covers(b, a)
}

/// Of the domains that services claim (`claims`: each service's key and its domains), those
/// that overlap a domain of another service: both sides of every overlap. A consumer that
/// serves none of them never sends one service's domain to another, whatever the input; the
/// store never accepts such claims, so this only matters when copies of the data disagree for a
/// moment. Work is linear in the number of domains (times their depth).
pub fn contested_domains<'a, K: PartialEq>(
    claims: impl IntoIterator<Item = (K, &'a [String])>,
) -> HashSet<String> {
    let claims: Vec<(K, &[String])> = claims.into_iter().collect();
    // Per domain, the claims (by index) that list it, one per distinct key.
    let mut holders: HashMap<&str, Vec<usize>> = HashMap::new();
    for (index, (key, domains)) in claims.iter().enumerate() {
        for domain in domains.iter() {
            let listed = holders.entry(domain.as_str()).or_default();
            if !listed.iter().any(|i| claims[*i].0 == *key) {
                listed.push(index);
            }
        }
    }
    let mut contested = HashSet::new();
    for (key, domains) in &claims {
        for domain in domains.iter() {
            let covering = covering_wildcards(domain);
            let rivals = std::iter::once(domain.as_str())
                .chain(covering.iter().map(String::as_str))
                .filter(|name| {
                    holders
                        .get(name)
                        .is_some_and(|listed| listed.iter().any(|i| claims[*i].0 != *key))
                });
            for rival in rivals {
                contested.insert(rival.to_owned());
                contested.insert(domain.clone());
            }
        }
    }
    contested
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_cover_names_below_them_only() {
        assert!(domains_overlap("a.example.com", "a.example.com"));
        assert!(domains_overlap("*.example.com", "a.example.com"));
        assert!(domains_overlap("a.b.example.com", "*.example.com"));
        assert!(domains_overlap("*.example.com", "*.b.example.com"));
        assert!(!domains_overlap("*.example.com", "example.com"));
        assert!(!domains_overlap("*.example.com", "a.example.org"));
        assert!(!domains_overlap("*.example.com", "aexample.com"));
        assert!(!domains_overlap("a.example.com", "b.example.com"));
        assert_eq!(
            covering_wildcards("a.b.example.com"),
            ["*.b.example.com", "*.example.com"]
        );
        assert_eq!(covering_wildcards("*.example.com"), ["*.example.com"]);
        assert!(covering_wildcards("example.com").is_empty());
    }

    #[test]
    fn wildcards_need_a_host_name_after_them() {
        assert!(check_domain("*.example.com").is_ok());
        assert!(check_domain("shop.example.com").is_ok());
        for bad in [
            "*.com",
            "*",
            "a.*.example.com",
            "**.example.com",
            "*example.com",
        ] {
            assert!(check_domain(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn both_sides_of_an_overlap_between_services_are_contested() {
        let owner = "acme".to_owned();
        let other = "evil".to_owned();
        let mine = ["*.example.com".to_owned(), "shop.example.org".to_owned()];
        let theirs = ["a.b.example.com".to_owned(), "own.example.net".to_owned()];
        let twice = ["shop.example.org".to_owned(), "shop.example.org".to_owned()];
        let claims: [(&String, &[String]); 3] =
            [(&owner, &mine), (&other, &theirs), (&owner, &twice)];
        let mut contested: Vec<String> = contested_domains(claims).into_iter().collect();
        contested.sort();
        // A service listed twice, or a domain listed twice by one service, is no rival.
        assert_eq!(contested, ["*.example.com", "a.b.example.com"]);
    }
}
