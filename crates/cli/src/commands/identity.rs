//! A component's identity for mutual TLS with its region's control plane: kept in
//! `<state_dir>/identity`, joined with a one-time token the first time, renewed in the
//! background before it expires.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use meridian_identity::enroll::{enrolled, keep_renewed, Renewal};
use meridian_identity::SpiffeId;

/// A component's enrolled identity.
pub struct Enrolled {
    /// A client config for the control plane, with the certificate (renewed in place).
    pub tls: Arc<rustls::ClientConfig>,
    /// Who the certificate says the component is.
    pub id: SpiffeId,
    /// Where the certificate, key and bundle files are.
    pub dir: std::path::PathBuf,
    /// Told after each renewal.
    pub renewed: Arc<tokio::sync::Notify>,
}

impl Enrolled {
    /// The certificate, key and bundle files, as a proxy's configuration names them.
    pub fn files(&self) -> meridian_proxy::Identity {
        let file = |name: &str| self.dir.join(name).display().to_string();
        meridian_proxy::Identity {
            cert_file: file("cert.pem"),
            key_file: file("key.pem"),
            bundle_file: file("bundle.pem"),
        }
    }
}

/// Enrolls through the control plane at `server` (joining with `token` if nothing valid is
/// stored) and keeps the certificate renewed in the background.
pub async fn enroll(server: &str, state_dir: &Path, token: Option<&str>) -> Result<Enrolled> {
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
    let renewed = Arc::new(tokio::sync::Notify::new());
    let renewal = Renewal {
        base: server.to_owned(),
        dir: dir.clone(),
        store,
        renewed: Some(renewed.clone()),
    };
    tokio::spawn(keep_renewed(renewal, credentials));
    Ok(Enrolled {
        tls: Arc::new(tls),
        id,
        dir,
        renewed,
    })
}
