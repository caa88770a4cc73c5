//! Certificates of public domains: where one came from and what state it is in
//! (docs/edge.md, "How a domain gets its certificate").

use serde::{Deserialize, Serialize};

/// Where a domain's certificate comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum CertificateSource {
    /// Ordered from an ACME CA and renewed by the control plane.
    Acme,
    /// Uploaded by a user (`meridian cert add`); never renewed by the control plane.
    Upload,
    /// Issued by the control plane's local CA for public names (`--local-ca`).
    Local,
}

impl CertificateSource {
    /// The source's name as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            CertificateSource::Acme => "acme",
            CertificateSource::Upload => "upload",
            CertificateSource::Local => "local",
        }
    }

    /// The source named `name`, if any.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "acme" => CertificateSource::Acme,
            "upload" => CertificateSource::Upload,
            "local" => CertificateSource::Local,
            _ => return None,
        })
    }
}

/// The state of a domain's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum CertificateState {
    /// No certificate yet: one is being obtained, or (a wildcard without a local CA, or no
    /// issuer configured) one must be uploaded; `last_error` says which.
    Pending,
    /// A current certificate is served; `last_error` says why a renewal failed, if one did.
    Valid,
    /// Nothing valid is left to serve: the last attempt failed (retried at the next attempt
    /// time) or an uploaded certificate expired.
    Failed,
}

impl CertificateState {
    /// The state's name as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            CertificateState::Pending => "pending",
            CertificateState::Valid => "valid",
            CertificateState::Failed => "failed",
        }
    }

    /// The state named `name`, if any.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "pending" => CertificateState::Pending,
            "valid" => CertificateState::Valid,
            "failed" => CertificateState::Failed,
            _ => return None,
        })
    }
}
