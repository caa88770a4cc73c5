//! A control plane's own certificate: made from its CA with a key made here (it never leaves),
//! and renewed at two thirds of its lifetime.

use std::sync::Arc;
use std::time::Duration;

use meridian_identity::{request_for, Authority, CertStore, SpiffeId};
use rustls::sign::CertifiedKey;

/// A certificate for `id` issued by `ca` for `lifetime`, with a fresh key.
pub fn issue_own_certificate(
    ca: &Authority,
    id: &SpiffeId,
    lifetime: Duration,
) -> Result<Arc<CertifiedKey>, String> {
    let (csr, key) = request_for(id).map_err(|e| e.to_string())?;
    let issued = ca.issue(&csr, id, lifetime).map_err(|e| e.to_string())?;
    meridian_identity::certified_key(&issued.chain_pem, &key).map_err(|e| e.to_string())
}

/// Puts a certificate from `renew` into `store` at two thirds of `lifetime`, for as long as the
/// task runs; a failure is logged and retried soon.
pub async fn keep_own_certificate(
    store: Arc<CertStore>,
    lifetime: Duration,
    renew: impl Fn() -> Result<Arc<CertifiedKey>, String>,
) {
    let mut wait = lifetime * 2 / 3;
    loop {
        tokio::time::sleep(wait).await;
        match renew() {
            Ok(key) => {
                store.rotate(key);
                wait = lifetime * 2 / 3;
            }
            Err(e) => {
                tracing::error!(error = %e, "renewing the control plane's certificate failed");
                wait = Duration::from_secs(1).max(lifetime / 100);
            }
        }
    }
}
