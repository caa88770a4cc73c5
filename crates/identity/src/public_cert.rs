//! Certificates of public domains (served by edges, not mesh identities): what a chain says
//! (issuer, validity, names) and whether an uploaded chain and key may serve a domain.

use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::certified_key;

/// What a certificate chain says about its leaf. Times are seconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainFacts {
    /// The leaf's issuer: its common name, else its organisation, else the whole name.
    pub issuer: String,
    /// Start of the leaf's validity.
    pub not_before: i64,
    /// End of the leaf's validity.
    pub not_after: i64,
    /// The leaf's DNS names (subject alternative names).
    pub names: Vec<String>,
}

/// Why an uploaded certificate may not serve a domain. `field` says which part of the upload
/// is wrong: `certificate` or `private_key`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct UploadError {
    /// `certificate` or `private_key`.
    pub field: &'static str,
    /// What is wrong.
    pub reason: String,
}

fn certificate_error(reason: impl Into<String>) -> UploadError {
    UploadError {
        field: "certificate",
        reason: reason.into(),
    }
}

/// Reads the leaf (the first certificate) of a PEM chain; checks that every certificate of the
/// chain parses.
pub fn chain_facts(chain_pem: &str) -> Result<ChainFacts, UploadError> {
    let chain = parse_chain(chain_pem)?;
    leaf_facts(&chain)
}

fn parse_chain(chain_pem: &str) -> Result<Vec<CertificateDer<'static>>, UploadError> {
    use rustls_pki_types::pem::PemObject;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| certificate_error(format!("not a PEM certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(certificate_error(
            "no PEM certificate (BEGIN CERTIFICATE) found",
        ));
    }
    Ok(chain)
}

fn parse<'a>(
    der: &'a CertificateDer<'_>,
    index: usize,
) -> Result<X509Certificate<'a>, UploadError> {
    X509Certificate::from_der(der)
        .map(|(_, cert)| cert)
        .map_err(|e| certificate_error(format!("certificate {index} of the chain: {e}")))
}

fn leaf_facts(chain: &[CertificateDer<'_>]) -> Result<ChainFacts, UploadError> {
    let leaf = parse(&chain[0], 0)?;
    let issuer = leaf.issuer();
    let first = |attrs: Option<&x509_parser::x509::AttributeTypeAndValue<'_>>| {
        attrs.and_then(|a| a.as_str().ok()).map(str::to_owned)
    };
    let issuer = first(issuer.iter_common_name().next())
        .or_else(|| first(issuer.iter_organization().next()))
        .unwrap_or_else(|| issuer.to_string());
    let mut names = Vec::new();
    if let Ok(Some(san)) = leaf.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                names.push(dns.to_ascii_lowercase());
            }
        }
    }
    Ok(ChainFacts {
        issuer,
        not_before: leaf.validity().not_before.timestamp(),
        not_after: leaf.validity().not_after.timestamp(),
        names,
    })
}

/// Whether a certificate name (`*.example.com` covers one label below `example.com`) covers
/// `domain` (a wildcard domain only by the same wildcard).
pub fn name_covers(name: &str, domain: &str) -> bool {
    let (name, domain) = (name.to_ascii_lowercase(), domain.to_ascii_lowercase());
    if name == domain {
        return true;
    }
    match name.strip_prefix("*.") {
        Some(suffix) if !domain.starts_with("*.") => domain
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        _ => false,
    }
}

/// Checks an upload for `domain` at time `now`: the chain parses, every certificate of it is
/// valid now, the leaf's names cover `domain`, and `key_pem` is the leaf's key. Returns what
/// the chain says.
pub fn check_upload(
    domain: &str,
    chain_pem: &str,
    key_pem: &str,
    now: i64,
) -> Result<ChainFacts, UploadError> {
    let chain = parse_chain(chain_pem)?;
    let facts = leaf_facts(&chain)?;
    for (index, der) in chain.iter().enumerate() {
        let validity = parse(der, index)?.validity().clone();
        let (from, to) = (validity.not_before, validity.not_after);
        if now < from.timestamp() {
            return Err(certificate_error(format!(
                "certificate {index} of the chain is not valid before {from}"
            )));
        }
        if now >= to.timestamp() {
            return Err(certificate_error(format!(
                "certificate {index} of the chain expired at {to}"
            )));
        }
    }
    if !facts.names.iter().any(|name| name_covers(name, domain)) {
        return Err(certificate_error(format!(
            "its names ({}) do not cover `{domain}`",
            if facts.names.is_empty() {
                "none".to_owned()
            } else {
                facts.names.join(", ")
            }
        )));
    }
    let key_error = |reason: String| UploadError {
        field: "private_key",
        reason,
    };
    let certified = certified_key(chain_pem, key_pem).map_err(|e| key_error(e.to_string()))?;
    certified
        .keys_match()
        .map_err(|e| key_error(format!("does not match the certificate's public key ({e})")))?;
    Ok(facts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair};

    const DAY: i64 = 86_400;

    fn issued(names: &[&str], from: i64, to: i64) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.not_before = time::OffsetDateTime::from_unix_timestamp(from).unwrap();
        params.not_after = time::OffsetDateTime::from_unix_timestamp(to).unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn a_matching_current_certificate_for_the_domain_is_accepted() {
        let (chain, key) = issued(&["shop.example.com"], NOW - DAY, NOW + 90 * DAY);
        let facts = check_upload("shop.example.com", &chain, &key, NOW).unwrap();
        assert_eq!(facts.not_after, NOW + 90 * DAY);
        assert_eq!(facts.names, ["shop.example.com"]);
        let (chain, key) = issued(&["*.example.com"], NOW - DAY, NOW + DAY);
        check_upload("shop.example.com", &chain, &key, NOW).unwrap();
        check_upload("*.example.com", &chain, &key, NOW).unwrap();
    }

    #[test]
    fn each_defect_is_refused_naming_its_field() {
        let (chain, key) = issued(&["shop.example.com"], NOW - DAY, NOW + DAY);
        let (_, other_key) = issued(&["shop.example.com"], NOW - DAY, NOW + DAY);
        let cases = [
            (
                check_upload("shop.example.com", &chain, &other_key, NOW),
                "private_key",
                "does not match",
            ),
            (
                check_upload("shop.example.com", &chain, "junk", NOW),
                "private_key",
                "",
            ),
            (
                check_upload("shop.example.com", "junk", &key, NOW),
                "certificate",
                "no PEM",
            ),
            (
                check_upload("shop.example.com", &chain, &key, NOW + 2 * DAY),
                "certificate",
                "expired",
            ),
            (
                check_upload("shop.example.com", &chain, &key, NOW - 2 * DAY),
                "certificate",
                "not valid before",
            ),
            (
                check_upload("www.example.com", &chain, &key, NOW),
                "certificate",
                "do not cover `www.example.com`",
            ),
            (
                check_upload("*.example.com", &chain, &key, NOW),
                "certificate",
                "do not cover",
            ),
        ];
        for (result, field, reason) in cases {
            let err = result.unwrap_err();
            assert_eq!(err.field, field, "{err}");
            assert!(err.reason.contains(reason), "{err}");
        }
    }

    #[test]
    fn wildcards_cover_one_label() {
        assert!(name_covers("*.example.com", "a.example.com"));
        assert!(name_covers("*.Example.com", "A.example.com"));
        assert!(!name_covers("*.example.com", "a.b.example.com"));
        assert!(!name_covers("*.example.com", "example.com"));
        assert!(!name_covers("*.example.com", "*.b.example.com"));
        assert!(!name_covers("a.example.com", "*.example.com"));
    }
}
