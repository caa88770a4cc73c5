//! What the edge's HTTPS needs from the global control plane, kept from its xDS resources:
//! domains' certificates and the session ticket keys (`Secret`s), and ACME challenges. It is
//! registered on the edge's proxy as the certificate source [`CERTIFICATE_SOURCE`] and as its
//! HTTP-01 answers; a change is swapped in at once, for the next handshake or request.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::secret::Type;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use meridian_proxy::{Proxy, TlsSource};
use meridian_xds::meridian::{ACME_CHALLENGE, CERTIFICATE_PREFIX, SECRET, SESSION_TICKET_KEYS};
use meridian_xds::Resources;
use prost::Message;
use rustls::sign::CertifiedKey;

use crate::certificates::{certified_key, Certificates};
use crate::challenges::{challenge, Challenge, Http01};
use crate::selection::CERTIFICATE_SOURCE;
use crate::tickets::SharedTickets;

/// The edge's certificates, ticket keys and challenges.
pub struct EdgeTls {
    certificates: Arc<Certificates>,
    http01: Arc<Http01>,
    tickets: Arc<SharedTickets>,
    /// The certificate of each domain held.
    domains: HashMap<String, Arc<CertifiedKey>>,
    /// The challenges held, by resource name.
    challenges: HashMap<String, Challenge>,
}

/// What one `Secret` holds.
enum Held {
    Certificate(String, Arc<CertifiedKey>),
    TicketKeys(Vec<Vec<u8>>),
}

/// The secret named `name` with body `body`, checked; or why it is bad. `None`: a secret of
/// another kind, which this edge does not use.
fn secret(name: &str, body: &[u8]) -> Result<Option<Held>, String> {
    let secret = Secret::decode(body).map_err(|e| format!("does not decode: {e}"))?;
    if let Some(domain) = name.strip_prefix(CERTIFICATE_PREFIX) {
        let Some(Type::TlsCertificate(tls)) = &secret.r#type else {
            return Err("not a tls_certificate".to_owned());
        };
        return Ok(Some(Held::Certificate(
            domain.to_owned(),
            certified_key(domain, tls)?,
        )));
    }
    if name != SESSION_TICKET_KEYS {
        return Ok(None);
    }
    let Some(Type::SessionTicketKeys(keys)) = secret.r#type else {
        return Err("not session_ticket_keys".to_owned());
    };
    let keys: Vec<Vec<u8>> = keys
        .keys
        .into_iter()
        .enumerate()
        .map(|(i, key)| match key.specifier {
            Some(Specifier::InlineBytes(bytes)) if bytes.len() == crate::tickets::KEY_LEN => {
                Ok(bytes)
            }
            Some(Specifier::InlineBytes(bytes)) => Err(format!(
                "keys[{i}]: {} bytes, not {}",
                bytes.len(),
                crate::tickets::KEY_LEN
            )),
            _ => Err(format!("keys[{i}]: not inline_bytes")),
        })
        .collect::<Result<_, _>>()?;
    Ok(Some(Held::TicketKeys(keys)))
}

impl EdgeTls {
    /// Registers an empty set on `proxy`: the certificate source [`CERTIFICATE_SOURCE`] (with
    /// shared session tickets) and the HTTP-01 answers.
    pub fn register(proxy: &Proxy) -> Result<EdgeTls, rustls::Error> {
        let tls = EdgeTls {
            certificates: Arc::new(Certificates::default()),
            http01: Arc::new(Http01::default()),
            tickets: Arc::new(SharedTickets::new()?),
            domains: HashMap::new(),
            challenges: HashMap::new(),
        };
        let source = TlsSource {
            certificates: tls.certificates.clone(),
            tickets: Some(tls.tickets.clone()),
        };
        proxy.add_tls_source(CERTIFICATE_SOURCE, source)?;
        if !proxy.set_http01_answers(tls.http01.clone()) {
            tracing::warn!("the proxy already answers HTTP-01 challenges from elsewhere");
        }
        Ok(tls)
    }

    /// Whether a certificate held covers `domain`: its own, or (for a host name) the wildcard
    /// one level up.
    pub fn certified(&self, domain: &str) -> bool {
        self.domains.contains_key(domain)
            || domain
                .split_once('.')
                .is_some_and(|(_, parent)| self.domains.contains_key(&format!("*.{parent}")))
    }

    /// Takes the `Secret`s named `names` as they are now in `resources` (a name not there was
    /// removed); all or nothing: a bad one is refused, naming it and the reason, and nothing
    /// changes. Returns whether the set of domains with a certificate changed.
    pub fn apply_secrets(
        &mut self,
        resources: &Resources,
        names: &[String],
    ) -> Result<bool, String> {
        let held = resources.get(SECRET);
        let mut domains = self.domains.clone();
        let mut keys = None;
        for name in names {
            let parsed = match held.and_then(|held| held.get(name)) {
                Some(resource) => secret(name, &resource.resource.value)
                    .map_err(|reason| format!("secret `{name}`: {reason}"))?,
                None => {
                    if let Some(domain) = name.strip_prefix(CERTIFICATE_PREFIX) {
                        domains.remove(domain);
                    } else if name == SESSION_TICKET_KEYS {
                        keys = Some(Vec::new());
                    }
                    continue;
                }
            };
            match parsed {
                Some(Held::Certificate(domain, key)) => {
                    domains.insert(domain, key);
                }
                Some(Held::TicketKeys(new)) => keys = Some(new),
                None => tracing::debug!(secret = %name, "a secret the edge does not use"),
            }
        }
        if let Some(keys) = keys {
            self.tickets
                .set_keys(&keys)
                .map_err(|reason| format!("secret `{SESSION_TICKET_KEYS}`: {reason}"))?;
        }
        let changed = domains.len() != self.domains.len()
            || domains.keys().any(|d| !self.domains.contains_key(d));
        self.certificates.set_domains(&domains);
        self.domains = domains;
        Ok(changed)
    }

    /// Takes the ACME challenges named `names` as they are now in `resources` (a name not there
    /// was removed); all or nothing, as [`EdgeTls::apply_secrets`].
    pub fn apply_challenges(
        &mut self,
        resources: &Resources,
        names: &[String],
    ) -> Result<(), String> {
        let held = resources.get(ACME_CHALLENGE);
        let mut challenges = self.challenges.clone();
        for name in names {
            match held.and_then(|held| held.get(name)) {
                Some(resource) => {
                    let parsed = challenge(name, &resource.resource.value)
                        .map_err(|reason| format!("ACME challenge `{name}`: {reason}"))?;
                    challenges.insert(name.clone(), parsed);
                }
                None => {
                    challenges.remove(name);
                }
            }
        }
        let mut tokens: HashMap<String, Bytes> = HashMap::new();
        let mut certificates = HashMap::new();
        for held in challenges.values() {
            match held {
                Challenge::Http01 {
                    token,
                    key_authorization,
                } => tokens
                    .insert(token.clone(), key_authorization.clone())
                    .map(drop),
                Challenge::TlsAlpn01 {
                    domain,
                    certificate,
                } => certificates
                    .insert(domain.clone(), certificate.clone())
                    .map(drop),
            };
        }
        self.http01.set(tokens);
        self.certificates.set_challenges(certificates);
        self.challenges = challenges;
        Ok(())
    }
}
