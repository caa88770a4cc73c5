//! The ACME challenges the edge answers while the global control plane orders a certificate
//! (`meridian.v1.AcmeChallenge`, named `challenge/<token>`): HTTP-01 on the plain listener
//! (through the proxy's [`Http01Answers`]) and TLS-ALPN-01 on the HTTPS listener (a
//! self-signed certificate for the domain with the `acmeIdentifier` extension, RFC 8737).

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use meridian_proxy::Http01Answers;
use meridian_xds::meridian::{AcmeChallenge, CHALLENGE_PREFIX};
use prost::Message;
use rustls::sign::CertifiedKey;
use rustls_pki_types::PrivateKeyDer;

/// The key authorizations of the HTTP-01 challenges held, by token; swapped whole on change.
#[derive(Debug, Default)]
pub struct Http01 {
    tokens: ArcSwap<HashMap<String, Bytes>>,
}

impl Http01 {
    /// Answers `tokens` (token → key authorization) from now on.
    pub fn set(&self, tokens: HashMap<String, Bytes>) {
        self.tokens.store(Arc::new(tokens));
    }
}

impl Http01Answers for Http01 {
    fn key_authorization(&self, token: &str) -> Option<Bytes> {
        self.tokens.load().get(token).cloned()
    }
}

/// A challenge held, ready to answer.
#[derive(Debug, Clone)]
pub enum Challenge {
    /// HTTP-01: the token and its key authorization.
    Http01 {
        /// The token.
        token: String,
        /// What `GET /.well-known/acme-challenge/<token>` answers.
        key_authorization: Bytes,
    },
    /// TLS-ALPN-01: the domain and the certificate shown to a validation of it.
    TlsAlpn01 {
        /// The domain validated.
        domain: String,
        /// The challenge certificate.
        certificate: Arc<CertifiedKey>,
    },
}

/// Whether `token` may be an ACME token: base64url characters (RFC 8555 §8.3), at most 256.
fn check_token(token: &str) -> Result<(), String> {
    let ok = !token.is_empty()
        && token.len() <= 256
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    ok.then_some(())
        .ok_or_else(|| format!("token `{token}`: must be 1-256 base64url characters"))
}

/// The challenge named `name` (`challenge/<token>`) with body `body`, ready to answer; or why it
/// cannot be.
pub fn challenge(name: &str, body: &[u8]) -> Result<Challenge, String> {
    let held = AcmeChallenge::decode(body).map_err(|e| format!("does not decode: {e}"))?;
    if name.strip_prefix(CHALLENGE_PREFIX) != Some(held.token.as_str()) {
        return Err(format!(
            "token: `{}` is not the one its name gives",
            held.token
        ));
    }
    check_token(&held.token)?;
    meridian_model::check_host_name(&held.domain)
        .map_err(|e| format!("domain `{}`: {e}", held.domain))?;
    let expected = format!("{}.", held.token);
    let thumbprint = held.key_authorization.strip_prefix(&expected);
    if thumbprint.is_none_or(|t| check_token(t).is_err()) {
        return Err("key_authorization: must be `<token>.<account key thumbprint>`".to_owned());
    }
    match held.kind.as_str() {
        "http-01" => Ok(Challenge::Http01 {
            token: held.token,
            key_authorization: Bytes::from(held.key_authorization),
        }),
        "tls-alpn-01" => Ok(Challenge::TlsAlpn01 {
            certificate: alpn_certificate(&held.domain, &held.key_authorization)?,
            domain: held.domain,
        }),
        other => Err(format!("kind: `{other}` is not http-01 or tls-alpn-01")),
    }
}

/// The TLS-ALPN-01 certificate of `domain` (RFC 8737 §3): self-signed, for `domain` alone, with
/// the critical `acmeIdentifier` extension holding the SHA-256 of `key_authorization`.
pub fn alpn_certificate(
    domain: &str,
    key_authorization: &str,
) -> Result<Arc<CertifiedKey>, String> {
    let failed = |e: rcgen::Error| format!("cannot make its certificate: {e}");
    let digest = ring::digest::digest(&ring::digest::SHA256, key_authorization.as_bytes());
    let mut params = rcgen::CertificateParams::new(vec![domain.to_owned()]).map_err(failed)?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest.as_ref())];
    let key = rcgen::KeyPair::generate().map_err(failed)?;
    let cert = params.self_signed(&key).map_err(failed)?;
    let der = PrivateKeyDer::try_from(key.serialize_der())
        .map_err(|e| format!("cannot make its certificate: {e}"))?;
    let signing = meridian_identity::provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| format!("cannot make its certificate: {e}"))?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signing,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The body of an `AcmeChallenge`.
    fn encoded(domain: &str, kind: &str, token: &str, thumbprint: &str) -> Vec<u8> {
        AcmeChallenge {
            domain: domain.into(),
            kind: kind.into(),
            token: token.into(),
            key_authorization: format!("{token}.{thumbprint}"),
        }
        .encode_to_vec()
    }

    /// Whether `der` holds the critical acmeIdentifier extension (id-pe-acmeIdentifier,
    /// 1.3.6.1.5.5.7.1.31) with `digest`: its DER encoding, OID, critical, OCTET STRING
    /// wrapping an OCTET STRING of 32 bytes.
    fn has_acme_identifier(der: &[u8], digest: &[u8]) -> bool {
        let mut extension = vec![0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x01, 0x1f];
        extension.extend_from_slice(&[0x01, 0x01, 0xff, 0x04, 0x22, 0x04, 0x20]);
        extension.extend_from_slice(digest);
        der.windows(extension.len()).any(|w| w == extension)
    }

    #[test]
    fn a_tls_alpn_01_certificate_carries_the_digest_of_the_key_authorization() {
        let held = challenge(
            "challenge/tok",
            &encoded("shop.example.com", "tls-alpn-01", "tok", "thumb"),
        )
        .unwrap();
        let Challenge::TlsAlpn01 {
            domain,
            certificate,
        } = held
        else {
            panic!("not a TLS-ALPN-01 challenge");
        };
        assert_eq!(domain, "shop.example.com");
        let digest = ring::digest::digest(&ring::digest::SHA256, b"tok.thumb");
        let der = certificate.cert[0].as_ref();
        assert!(has_acme_identifier(der, digest.as_ref()));
        let other = ring::digest::digest(&ring::digest::SHA256, b"tok.other");
        assert!(!has_acme_identifier(der, other.as_ref()));
    }

    #[test]
    fn a_bad_challenge_is_refused_naming_the_field() {
        // Name, domain, kind, token, thumbprint; the field the error names.
        #[rustfmt::skip]
        let bad = [
            ["challenge/other", "a.example", "http-01", "tok", "t", "token:"],
            ["challenge/tok", "a.example", "dns-01", "tok", "t", "kind:"],
            ["challenge/tok", "*.example", "http-01", "tok", "t", "domain `*.example`"],
            ["challenge/t/k", "a.example", "http-01", "t/k", "t", "token `t/k`"],
            ["challenge/tok", "a.example", "http-01", "tok", "", "key_authorization"],
        ];
        let undecodable = ("challenge/tok", b"\xff\xff".to_vec(), "does not decode");
        let bad = bad
            .map(|[name, domain, kind, token, thumbprint, field]| {
                (name, encoded(domain, kind, token, thumbprint), field)
            })
            .into_iter()
            .chain([undecodable]);
        for (name, body, field) in bad {
            let error = challenge(name, &body).unwrap_err();
            assert!(error.contains(field), "{name}: {error}");
        }
        let good = challenge(
            "challenge/tok",
            &encoded("a.example", "http-01", "tok", "t"),
        );
        assert!(matches!(good, Ok(Challenge::Http01 { .. })));
    }
}
