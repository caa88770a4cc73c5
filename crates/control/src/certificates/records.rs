//! What the store is told after each step: the row of a domain that got a certificate, that
//! failed to get one, that cannot be ordered, or whose certificate expired.

use meridian_identity::{chain_facts, SealingKey};
use meridian_model::{CertificateSource, CertificateState};
use meridian_store::CertificateRecord;

use super::renew::{backoff, renew_at, renew_in_window};
use super::Issued;

/// The label a domain's sealed private key is bound to.
pub fn key_label(domain: &str) -> String {
    format!("certificate/{domain}")
}

/// The row of `domain` once `issued` by `source` at `now`: valid, renewed at two thirds of its
/// lifetime (or in the CA's suggested window). An error when the chain cannot be read or the
/// key not sealed.
pub fn issued(
    domain: &str,
    source: CertificateSource,
    issued: &Issued,
    key: &SealingKey,
    now: i64,
) -> Result<CertificateRecord, String> {
    let facts = chain_facts(&issued.chain_pem).map_err(|e| e.to_string())?;
    let sealed = key
        .seal(&key_label(domain), issued.key_pem.as_bytes())
        .map_err(|e| e.to_string())?;
    let renew = match issued.renew_window {
        Some((start, end)) => renew_in_window(start, end, now),
        None => renew_at(facts.not_before, facts.not_after),
    };
    Ok(CertificateRecord {
        domain: domain.to_owned(),
        source,
        state: CertificateState::Valid,
        issuer: Some(facts.issuer),
        not_before: Some(facts.not_before),
        not_after: Some(facts.not_after),
        chain_pem: Some(issued.chain_pem.clone()),
        sealed_key: Some(sealed),
        last_error: None,
        next_attempt: Some(renew),
        attempts: 0,
        updated_at: now,
    })
}

/// Whether `record` holds a certificate that is still valid at `now`.
pub fn serving(record: &CertificateRecord, now: i64) -> bool {
    record.state == CertificateState::Valid
        && record.chain_pem.is_some()
        && record.sealed_key.is_some()
        && record.not_after.is_some_and(|end| end > now)
}

/// The row of `domain` after an attempt by `source` failed with `error` at `now`: the current
/// certificate (if still valid) keeps being served with the error shown; otherwise the domain
/// is failed. The next attempt backs off.
pub fn failed(
    domain: &str,
    source: CertificateSource,
    previous: Option<&CertificateRecord>,
    error: &str,
    now: i64,
) -> CertificateRecord {
    let attempts = previous.map_or(0, |p| p.attempts).saturating_add(1);
    let retry = now.saturating_add(i64::try_from(backoff(attempts).as_secs()).unwrap_or(i64::MAX));
    match previous.filter(|p| serving(p, now)) {
        Some(current) => CertificateRecord {
            last_error: Some(format!("renewal failed: {error}")),
            next_attempt: Some(retry),
            attempts,
            updated_at: now,
            ..current.clone()
        },
        None => CertificateRecord {
            domain: domain.to_owned(),
            source,
            state: CertificateState::Failed,
            issuer: None,
            not_before: None,
            not_after: None,
            chain_pem: None,
            sealed_key: None,
            last_error: Some(error.to_owned()),
            next_attempt: Some(retry),
            attempts,
            updated_at: now,
        },
    }
}

/// The row of a domain that waits for an upload because no issuer can serve it (`why`).
pub fn waiting(domain: &str, source: CertificateSource, why: &str, now: i64) -> CertificateRecord {
    CertificateRecord {
        domain: domain.to_owned(),
        source,
        state: CertificateState::Pending,
        issuer: None,
        not_before: None,
        not_after: None,
        chain_pem: None,
        sealed_key: None,
        last_error: Some(why.to_owned()),
        next_attempt: None,
        attempts: 0,
        updated_at: now,
    }
}

/// The row of a certificate that expired without a replacement: failed, nothing served.
pub fn expired(current: &CertificateRecord, now: i64) -> CertificateRecord {
    let why = match (current.source, &current.last_error) {
        (CertificateSource::Upload, _) => {
            "the uploaded certificate expired; upload a new one (`meridian cert add`)".to_owned()
        }
        (_, Some(error)) => format!("the certificate expired: {error}"),
        (_, None) => "the certificate expired and no issuer renews it".to_owned(),
    };
    CertificateRecord {
        state: CertificateState::Failed,
        chain_pem: None,
        sealed_key: None,
        last_error: Some(why),
        next_attempt: None,
        updated_at: now,
        ..current.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid(not_after: i64) -> CertificateRecord {
        CertificateRecord {
            domain: "a.example".into(),
            source: CertificateSource::Acme,
            state: CertificateState::Valid,
            issuer: Some("CA".into()),
            not_before: Some(0),
            not_after: Some(not_after),
            chain_pem: Some("chain".into()),
            sealed_key: Some(vec![1]),
            last_error: None,
            next_attempt: Some(600),
            attempts: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn a_failed_renewal_keeps_the_current_certificate_until_it_expires() {
        let current = valid(1_000);
        let after = failed(
            "a.example",
            CertificateSource::Acme,
            Some(&current),
            "no",
            700,
        );
        assert_eq!(after.state, CertificateState::Valid);
        assert_eq!(after.chain_pem, current.chain_pem);
        assert_eq!(after.last_error.as_deref(), Some("renewal failed: no"));
        assert_eq!((after.attempts, after.next_attempt), (1, Some(760)));
        let again = failed(
            "a.example",
            CertificateSource::Acme,
            Some(&after),
            "no",
            760,
        );
        assert_eq!((again.attempts, again.next_attempt), (2, Some(880)));

        let late = failed(
            "a.example",
            CertificateSource::Acme,
            Some(&again),
            "no",
            1_000,
        );
        assert_eq!(late.state, CertificateState::Failed);
        assert_eq!(late.chain_pem, None);
        assert_eq!(late.attempts, 3);
    }

    #[test]
    fn an_expired_upload_says_to_upload_again() {
        let mut upload = valid(1_000);
        upload.source = CertificateSource::Upload;
        let gone = expired(&upload, 1_000);
        assert_eq!(gone.state, CertificateState::Failed);
        assert!(gone
            .last_error
            .as_deref()
            .unwrap()
            .contains("meridian cert add"));
        assert!(!serving(&gone, 999));
    }
}
