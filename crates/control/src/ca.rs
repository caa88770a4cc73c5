//! The region's intermediate CA: requested from the global control plane at the first start
//! (the key is made here and never leaves), kept in the region's data directory, loaded later.

use std::path::Path;

use meridian_identity::{ca_request, Authority};
use serde::{Deserialize, Serialize};

use crate::follow::{FollowError, GlobalApi};

/// The file that records the installation's trust domain next to the CA.
const TRUST_DOMAIN_FILE: &str = "trust-domain";

/// Why the region has no CA.
#[derive(Debug, thiserror::Error)]
pub enum RegionalCaError {
    /// The global control plane did not issue it.
    #[error("asking the global control plane for the intermediate: {0}")]
    Request(#[from] FollowError),
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
}

/// The region's intermediate CA from `dir`, or, at the first start, issued by the global control
/// plane and stored there. Returns it and whether it was issued now.
pub async fn regional_ca(
    api: &GlobalApi,
    region: &str,
    dir: &Path,
) -> Result<(Authority, bool), RegionalCaError> {
    let failed = |e: &dyn std::fmt::Display| RegionalCaError::Authority(e.to_string());
    if let Ok(trust_domain) = std::fs::read_to_string(dir.join(TRUST_DOMAIN_FILE)) {
        if let Some(ca) = Authority::load(dir, trust_domain.trim()).map_err(|e| failed(&e))? {
            return Ok((ca, false));
        }
    }
    let (csr, key) = ca_request().map_err(|e| failed(&e))?;
    let issued: IntermediateIssued = api
        .post(
            &format!("/v1/regions/{region}/intermediate"),
            &IntermediateRequest { csr: &csr },
        )
        .await?;
    let ca = Authority::from_issued(&issued.trust_domain, &issued.chain_pem, &key)
        .map_err(|e| failed(&e))?;
    ca.save(dir).map_err(|e| failed(&e))?;
    std::fs::write(dir.join(TRUST_DOMAIN_FILE), &issued.trust_domain).map_err(|e| failed(&e))?;
    Ok((ca, true))
}
