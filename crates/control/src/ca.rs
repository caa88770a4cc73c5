//! The region's intermediate CA: requested from the global control plane at the first start
//! with a one-time join token (the key is made here and never leaves; the installation's root
//! must match the token's fingerprint), kept in the region's data directory, loaded later.

use std::path::Path;

use meridian_identity::enroll::{bundle_fingerprint, JoinToken};
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
    /// The region cannot get its CA as configured (no credential, or a root that does not
    /// match the join token); asking again will not help.
    #[error("{0}")]
    Refused(String),
}

impl RegionalCaError {
    /// Whether asking again may succeed (the global control plane is away or failing).
    pub fn is_transient(&self) -> bool {
        match self {
            RegionalCaError::Request(GlobalApiError::Status { status, .. }) => {
                !status.is_client_error()
            }
            RegionalCaError::Request(GlobalApiError::Unreachable(_)) => true,
            RegionalCaError::Authority(_) | RegionalCaError::Refused(_) => false,
        }
    }
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
/// plane to `api`'s credential and stored there, with the installation's trust bundle; with
/// `pin` (the join token used), the bundle must be the root the token names.
pub async fn regional_ca(
    api: &GlobalApi,
    region: &str,
    dir: &Path,
    pin: Option<&JoinToken>,
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
    if !api.has_token() {
        return Err(RegionalCaError::Refused(format!(
            "region {region} has no CA yet: pass --join-token with a token made by \
             `meridian join-token control/{region}` (global API, admin token)"
        )));
    }
    let (csr, key) = blank_request().map_err(|e| failed(&e))?;
    let issued: IntermediateIssued = api
        .post(
            &format!("/v1/regions/{region}/intermediate"),
            &IntermediateRequest { csr: &csr },
        )
        .await?;
    if let Some(pin) = pin {
        let fingerprint = bundle_fingerprint(&issued.bundle_pem).map_err(|e| failed(&e))?;
        if fingerprint != pin.fingerprint() {
            return Err(RegionalCaError::Refused(format!(
                "the global control plane's root ({fingerprint}) is not the one the join token \
                 names ({}): is --api the right installation?",
                pin.fingerprint()
            )));
        }
    }
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
