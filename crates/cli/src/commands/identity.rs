//! A component's identity for mutual TLS with its region's control plane: kept in
//! `<state_dir>/identity`, joined with a one-time token the first time, renewed in the
//! background before it expires.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use meridian_identity::enroll::{enrolled, keep_renewed, Renewal};
use meridian_identity::SpiffeId;

/// Enrolls through the control plane at `server` (joining with `token` if nothing valid is
/// stored) and returns a client config for it (with the certificate, renewed in place) and the
/// identity.
pub async fn enroll(
    server: &str,
    state_dir: &Path,
    token: Option<&str>,
) -> Result<(Arc<rustls::ClientConfig>, SpiffeId)> {
    let dir = state_dir.join("identity");
    let (credentials, joined) = enrolled(server, &dir, token)
        .await
        .context("getting this component's identity")?;
    println!(
        "identity {} ({}, valid until {}), key in {}",
        credentials.id,
        if joined { "joined now" } else { "stored" },
        humantime::format_rfc3339_seconds(credentials.not_after),
        dir.display()
    );
    let id = credentials.id.clone();
    let store = meridian_identity::CertStore::new(credentials.certified_key()?);
    let tls = meridian_identity::control_client_config(Some(store.clone()), credentials.bundle()?)?;
    let renewal = Renewal {
        base: server.to_owned(),
        dir,
        store,
    };
    tokio::spawn(keep_renewed(renewal, credentials));
    Ok((Arc::new(tls), id))
}
