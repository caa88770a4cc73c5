//! The edge's certificates: each domain's, from the global control plane's `Secret`s
//! (`certificate/<domain>`), picked per handshake by SNI, and the TLS-ALPN-01 certificates of
//! the ACME challenges held. Swapped whole on change, so that a handshake reads one consistent
//! set without a lock, and open connections keep the certificate they were made with.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::config::core::v3::DataSource;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::TlsCertificate;
use meridian_identity::TlsError;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::ServerName;

/// Certificates by name: exact domains, and wildcards by the name they are one level above
/// (`*.example.com` under `example.com`).
#[derive(Debug, Default)]
struct Table {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

impl Table {
    /// The certificate of `name`: its own, else the wildcard one level up.
    fn find(&self, name: &str) -> Option<&Arc<CertifiedKey>> {
        self.exact.get(name).or_else(|| {
            let (_, parent) = name.split_once('.')?;
            self.wildcard.get(parent)
        })
    }
}

/// The certificates a handshake may be shown: a [`ResolvesServerCert`] over swappable sets.
///
/// A ClientHello whose only ALPN protocol is `acme-tls/1` (RFC 8737 §3) gets the TLS-ALPN-01
/// certificate of its SNI, if a challenge for it is held, and nothing otherwise; any other gets
/// the certificate of its SNI (exact, else the wildcard one level up). No SNI, or an SNI no
/// certificate covers, gets nothing: the handshake is refused with an alert. There is no default
/// certificate: showing one would tell a scanner the names it covers and fail the client's
/// check anyway.
#[derive(Debug, Default)]
pub struct Certificates {
    domains: ArcSwap<Table>,
    challenges: ArcSwap<HashMap<String, Arc<CertifiedKey>>>,
}

impl Certificates {
    /// Serves `domains` (domain → certificate; wildcards keep their `*.`) from the next
    /// handshake on.
    pub fn set_domains(&self, domains: &HashMap<String, Arc<CertifiedKey>>) {
        let mut table = Table::default();
        for (domain, key) in domains {
            match domain.strip_prefix("*.") {
                Some(parent) => table.wildcard.insert(parent.to_owned(), key.clone()),
                None => table.exact.insert(domain.clone(), key.clone()),
            };
        }
        self.domains.store(Arc::new(table));
    }

    /// Answers TLS-ALPN-01 validations of `challenges` (domain → challenge certificate) from
    /// the next handshake on.
    pub fn set_challenges(&self, challenges: HashMap<String, Arc<CertifiedKey>>) {
        self.challenges.store(Arc::new(challenges));
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name()?;
        let lowered;
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = name.to_ascii_lowercase();
            lowered.as_str()
        } else {
            name
        };
        let mut alpn = hello.alpn().into_iter().flatten();
        let acme = alpn.next() == Some(meridian_proxy::ACME_TLS_ALPN) && alpn.next().is_none();
        if acme {
            return self.challenges.load().get(name).cloned();
        }
        self.domains.load().find(name).cloned()
    }
}

/// The PEM text of a secret's data source (inline bytes or string).
fn inline<'a>(source: Option<&'a DataSource>, field: &str) -> Result<&'a str, String> {
    match source.and_then(|s| s.specifier.as_ref()) {
        Some(Specifier::InlineBytes(bytes)) => {
            std::str::from_utf8(bytes).map_err(|e| format!("{field}: not PEM text: {e}"))
        }
        Some(Specifier::InlineString(text)) => Ok(text),
        Some(_) => Err(format!(
            "{field}: only inline_bytes or inline_string are read"
        )),
        None => Err(format!("{field}: missing")),
    }
}

/// The certificate of `domain` in `tls`: its PEM chain (leaf first) and private key, which must
/// belong together and cover `domain`; the error says which part is bad and why.
pub fn certified_key(domain: &str, tls: &TlsCertificate) -> Result<Arc<CertifiedKey>, String> {
    meridian_model::check_domain(domain).map_err(|e| format!("domain `{domain}`: {e}"))?;
    let chain = inline(tls.certificate_chain.as_ref(), "certificate_chain")?;
    let key = inline(tls.private_key.as_ref(), "private_key")?;
    let key = meridian_identity::certified_key(chain, key).map_err(|e| match e {
        TlsError::Pem {
            what: "private key",
            reason,
        } => format!("private_key: not a PEM private key: {reason}"),
        TlsError::Pem { reason, .. } if reason == "no certificate" => {
            "certificate_chain: holds no certificate".to_owned()
        }
        TlsError::Pem { reason, .. } => {
            format!("certificate_chain: not PEM certificates: {reason}")
        }
        TlsError::Rustls(e) => format!("private_key: {e}"),
    })?;
    key.keys_match()
        .map_err(|e| format!("private_key: does not belong to the certificate: {e}"))?;
    // A wildcard is checked with a name it covers.
    let probe = match domain.strip_prefix("*.") {
        Some(parent) => format!("wildcard-probe.{parent}"),
        None => domain.to_owned(),
    };
    let leaf = key
        .end_entity_cert()
        .map_err(|e| format!("certificate_chain: {e}"))?;
    let parsed = rustls::server::ParsedCertificate::try_from(leaf)
        .map_err(|e| format!("certificate_chain: the leaf does not parse: {e}"))?;
    let name = ServerName::try_from(probe).map_err(|e| format!("domain `{domain}`: {e}"))?;
    rustls::client::verify_server_name(&parsed, &name)
        .map_err(|e| format!("certificate_chain: not a certificate for `{domain}`: {e}"))?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate for `names`, as a `TlsCertificate` with inline PEM.
    fn tls_certificate(names: &[&str]) -> TlsCertificate {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(names)
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let inline = |pem: String| DataSource {
            specifier: Some(Specifier::InlineBytes(pem.into_bytes())),
            ..Default::default()
        };
        TlsCertificate {
            certificate_chain: Some(inline(cert.pem())),
            private_key: Some(inline(key.serialize_pem())),
            ..Default::default()
        }
    }

    /// The certificate a handshake for `sni` is shown.
    fn served(certificates: &Certificates, sni: &str) -> Option<Arc<CertifiedKey>> {
        certificates.domains.load().find(sni).cloned()
    }

    #[test]
    fn sni_picks_the_exact_certificate_else_the_wildcard_one_level_up() {
        let exact =
            certified_key("shop.example.com", &tls_certificate(&["shop.example.com"])).unwrap();
        let wildcard =
            certified_key("*.example.com", &tls_certificate(&["*.example.com"])).unwrap();
        let certificates = Certificates::default();
        certificates.set_domains(&HashMap::from([
            ("shop.example.com".to_owned(), exact.clone()),
            ("*.example.com".to_owned(), wildcard.clone()),
        ]));
        let is = |sni, want: &Arc<CertifiedKey>| {
            assert!(
                Arc::ptr_eq(&served(&certificates, sni).unwrap(), want),
                "{sni}"
            );
        };
        is("shop.example.com", &exact);
        is("img.example.com", &wildcard);
        // Unknown names, names two levels below the wildcard, and the wildcard's parent: none.
        for unknown in ["example.com", "a.b.example.com", "shop.example.org", "com"] {
            assert!(served(&certificates, unknown).is_none(), "{unknown}");
        }
    }

    #[test]
    fn a_bad_certificate_is_refused_with_the_reason() {
        let good = tls_certificate(&["shop.example.com"]);
        let other = tls_certificate(&["shop.example.com"]);
        let mut mismatched = good.clone();
        mismatched.private_key = other.private_key.clone();
        let error = certified_key("shop.example.com", &mismatched).unwrap_err();
        assert!(error.starts_with("private_key: does not belong"), "{error}");
        let mut garbled = good.clone();
        garbled.certificate_chain = Some(DataSource {
            specifier: Some(Specifier::InlineString("not pem".into())),
            ..Default::default()
        });
        let error = certified_key("shop.example.com", &garbled).unwrap_err();
        assert!(error.starts_with("certificate_chain: holds no"), "{error}");
        let error = certified_key("img.example.com", &good).unwrap_err();
        assert!(
            error.contains("not a certificate for `img.example.com`"),
            "{error}"
        );
        let error = certified_key("bad name!", &good).unwrap_err();
        assert!(error.starts_with("domain `bad name!`"), "{error}");
        assert!(certified_key("shop.example.com", &good).is_ok());
    }
}
