//! The resources edges get from the global control plane's xDS cache (names in
//! [`EDGE_NAMESPACE`], which only edges see): a domain's certificate, the shared session ticket
//! keys, and the ACME challenges being validated. One change, one resource.

use envoy_types::pb::envoy::config::core::v3::{data_source::Specifier, DataSource};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    secret, Secret, TlsCertificate, TlsSessionTicketKeys,
};
use envoy_types::pb::google::protobuf::Any;
use meridian_xds::meridian::{
    AcmeChallenge, ACME_CHALLENGE, CERTIFICATE_PREFIX, CHALLENGE_PREFIX, EDGE_NAMESPACE, SECRET,
    SESSION_TICKET_KEYS,
};
use meridian_xds::{Cache, Update};
use prost::Message;

/// The cache name of `domain`'s certificate: `edge/certificate/<domain>`.
pub fn certificate_name(domain: &str) -> String {
    format!("{EDGE_NAMESPACE}{CERTIFICATE_PREFIX}{domain}")
}

fn inline(bytes: &[u8]) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(Specifier::InlineBytes(bytes.to_vec())),
        ..Default::default()
    })
}

fn secret(name: &str, kind: secret::Type) -> Any {
    let secret = Secret {
        // The name the edge sees (without the namespace).
        name: name.strip_prefix(EDGE_NAMESPACE).unwrap_or(name).to_owned(),
        r#type: Some(kind),
    };
    Any {
        type_url: SECRET.to_owned(),
        value: secret.encode_to_vec(),
    }
}

/// Publishes `domain`'s certificate (chain and key, PEM).
pub fn put_certificate(cache: &Cache, domain: &str, chain_pem: &str, key_pem: &[u8]) {
    let name = certificate_name(domain);
    let resource = secret(
        &name,
        secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: inline(chain_pem.as_bytes()),
            private_key: inline(key_pem),
            ..Default::default()
        }),
    );
    cache.apply(
        SECRET,
        Update {
            put: vec![(name, resource)],
            remove: Vec::new(),
        },
    );
}

/// Withdraws `domain`'s certificate (if it was published).
pub fn remove_certificate(cache: &Cache, domain: &str) {
    cache.apply(
        SECRET,
        Update {
            put: Vec::new(),
            remove: vec![certificate_name(domain)],
        },
    );
}

/// Publishes the session ticket keys (80 bytes each, newest first).
pub fn put_ticket_keys(cache: &Cache, keys: &[[u8; 80]]) {
    let name = format!("{EDGE_NAMESPACE}{SESSION_TICKET_KEYS}");
    let resource = secret(
        &name,
        secret::Type::SessionTicketKeys(TlsSessionTicketKeys {
            keys: keys.iter().filter_map(|key| inline(key)).collect(),
        }),
    );
    cache.apply(
        SECRET,
        Update {
            put: vec![(name, resource)],
            remove: Vec::new(),
        },
    );
}

/// The cache name of the challenge with `token`: `edge/challenge/<token>`.
fn challenge_name(token: &str) -> String {
    format!("{EDGE_NAMESPACE}{CHALLENGE_PREFIX}{token}")
}

/// Publishes `challenges` for the edges to answer.
pub fn put_challenges(cache: &Cache, challenges: &[AcmeChallenge]) {
    let put = challenges
        .iter()
        .map(|challenge| {
            let resource = Any {
                type_url: ACME_CHALLENGE.to_owned(),
                value: challenge.encode_to_vec(),
            };
            (challenge_name(&challenge.token), resource)
        })
        .collect();
    cache.apply(
        ACME_CHALLENGE,
        Update {
            put,
            remove: Vec::new(),
        },
    );
}

/// Withdraws `challenges`.
pub fn remove_challenges(cache: &Cache, challenges: &[AcmeChallenge]) {
    let remove = challenges
        .iter()
        .map(|challenge| challenge_name(&challenge.token))
        .collect();
    cache.apply(
        ACME_CHALLENGE,
        Update {
            put: Vec::new(),
            remove,
        },
    );
}
