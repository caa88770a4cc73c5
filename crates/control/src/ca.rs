//! The region's intermediate CA: requested from the global control plane at the first start
//! (the key is made here and never leaves), kept in the region's data directory, loaded later.

use std::path::Path;

use meridian_identity::{blank_request, Authority};
use serde::{Deserialize, Serialize};

use crate::global_api::{GlobalApi, GlobalApiError};

/// The file that records the installation's trust domain next to the CA.
const TRUST_DOMAIN_FILE: &str = "trust-domain";
/// The file that holds the installation's trust bundle (its root certificate).
const BUNDLE_FILE: &str = "bundle.pem";

/// Why the region has no CA.
#[derive(Debug, thiserror::Error)]
pub enum RegionalCaError {
    /// The global control plane did not issue it.
    #[error("asking the global control plane for the intermediate: {0}")]
    Request(#[from] GlobalApiError),
    /// Making the request, or reading or storing the CA, failed.
    #[error("the intermediate CA: {0}")]
    Authority(String),
}

#[derive(Serialize)]
struct IntermediateRequest<'a> {
    csr: &'a str,
}

#[derive(Deserialize)]
struct IntermediateIssued {
    trust_domain: String,
    chain_pem: String,
    bundle_pem: String,
}

/// A region's CA and the installation's trust bundle.
pub struct RegionalCa {
    /// The region's intermediate CA.
    pub ca: Authority,
    /// The installation's root certificate, PEM.
    pub bundle_pem: String,
    /// Whether it was issued at this start (rather than loaded).
    pub issued_now: bool,
}

/// The region's intermediate CA from `dir`, or, at the first start, issued by the global control
/// plane and stored there, with the installation's trust bundle.
pub async fn regional_ca(
    api: &GlobalApi,
    region: &str,
    dir: &Path,
) -> Result<RegionalCa, RegionalCaError> {
    let failed = |e: &dyn std::fmt::Display| RegionalCaError::Authority(e.to_string());
    let stored = (
        std::fs::read_to_string(dir.join(TRUST_DOMAIN_FILE)),
        std::fs::read_to_string(dir.join(BUNDLE_FILE)),
    );
    if let (Ok(trust_domain), Ok(bundle_pem)) = stored {
        if let Some(ca) = Authority::load(dir, trust_domain.trim()).map_err(|e| failed(&e))? {
            return Ok(RegionalCa {
                ca,
                bundle_pem,
                issued_now: false,
            });
        }
    }
    let (csr, key) = blank_request().map_err(|e| failed(&e))?;
    let issued: IntermediateIssued = api
        .post(
            &format!("/v1/regions/{region}/intermediate"),
            &IntermediateRequest { csr: &csr },
        )
        .await?;
    let ca = Authority::from_issued(&issued.trust_domain, &issued.chain_pem, &key)
        .map_err(|e| failed(&e))?;
    ca.save(dir).map_err(|e| failed(&e))?;
    std::fs::write(dir.join(BUNDLE_FILE), &issued.bundle_pem).map_err(|e| failed(&e))?;
    std::fs::write(dir.join(TRUST_DOMAIN_FILE), &issued.trust_domain).map_err(|e| failed(&e))?;
    Ok(RegionalCa {
        ca,
        bundle_pem: issued.bundle_pem,
        issued_now: true,
    })
}
