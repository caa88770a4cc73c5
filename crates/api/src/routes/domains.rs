//! Public domains and their certificates: what each claimed domain is served with, and
//! uploading a certificate for one (docs/edge.md, "How a domain gets its certificate").

use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::Json;
use meridian_identity::check_upload;
use meridian_model::{check_domain, CertificateSource, CertificateState, ValidationErrors};
use meridian_store::{CertificateRecord, DomainClaim, ServiceFilter};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::error::ErrorResponses;
use crate::extract::{ApiPath, ApiQuery, JsonBody};
use crate::{ApiError, ApiState, Caller};

/// A claimed domain and the state of its certificate. Times are seconds since the Unix epoch.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DomainStatus {
    /// The domain (a wildcard keeps its `*.`).
    pub domain: String,
    /// The org of the service that claims it.
    pub org: String,
    /// The app of the service that claims it.
    pub app: String,
    /// The service that claims it.
    pub service: String,
    /// `pending` (no certificate yet), `valid` (one is served) or `failed` (nothing valid is
    /// left; `last_error` says why).
    pub state: CertificateState,
    /// Where the certificate comes from (`acme`, `upload`, `local`), once decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<CertificateSource>,
    /// Who issued the certificate served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// When the certificate served expires (an uploaded one is not renewed: upload a new one
    /// before then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<i64>,
    /// When the control plane next renews or retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt: Option<i64>,
    /// Why the last attempt failed, or why none is made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl From<DomainClaim> for DomainStatus {
    fn from(claim: DomainClaim) -> Self {
        let certificate = claim.certificate;
        let c = certificate.as_ref();
        DomainStatus {
            state: c.map_or(CertificateState::Pending, |c| c.state),
            source: c.map(|c| c.source),
            issuer: c.and_then(|c| c.issuer.clone()),
            not_after: c.and_then(|c| c.not_after),
            next_attempt: c.and_then(|c| c.next_attempt),
            last_error: c.and_then(|c| c.last_error.clone()),
            domain: claim.domain,
            org: claim.service.org,
            app: claim.service.app,
            service: claim.service.name,
        }
    }
}

/// Filters for listing domains.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DomainQuery {
    /// Only domains of this org (an org token sees only its own).
    org: Option<String>,
    /// Only domains of services of apps with this name.
    app: Option<String>,
}

/// Claimed domains and their certificates, by domain: an org token sees its org's, the admin
/// every org's.
#[utoipa::path(get, path = "/v1/domains", tag = "domains", params(DomainQuery),
    responses((status = 200, description = "Domains, by name", body = Vec<DomainStatus>), ErrorResponses))]
pub async fn list(
    State(state): State<ApiState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<DomainQuery>,
) -> Result<Json<Vec<DomainStatus>>, ApiError> {
    let Some(org) = caller.listing_org(query.org) else {
        return Ok(Json(Vec::new()));
    };
    let filter = ServiceFilter {
        org,
        app: query.app,
        name: None,
    };
    let claims = state.store.list_domains(&filter).await?;
    Ok(Json(claims.into_iter().map(DomainStatus::from).collect()))
}

/// Path of one domain.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct DomainPath {
    /// The domain, as claimed (a wildcard as `*.example.com`).
    domain: String,
}

/// A certificate to upload for a domain.
#[derive(Deserialize, ToSchema)]
pub struct CertificateUpload {
    /// The chain, PEM, leaf first: it must be valid now and its names must cover the domain.
    certificate: String,
    /// The leaf's private key, PEM (PKCS#8, SEC1 or PKCS#1).
    private_key: String,
}

/// Uploads a certificate and key for a domain claimed by one of the caller's services: checked
/// (the key matches, the chain is valid now, its names cover the domain), stored with the key
/// sealed, served by the edges at once. The control plane does not renew it.
#[utoipa::path(put, path = "/v1/domains/{domain}/certificate", tag = "domains",
    params(DomainPath), request_body = CertificateUpload,
    responses((status = 200, description = "The domain with its new certificate", body = DomainStatus), ErrorResponses))]
pub async fn upload(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(path): ApiPath<DomainPath>,
    JsonBody(upload): JsonBody<CertificateUpload>,
) -> Result<Json<DomainStatus>, ApiError> {
    let domain = path.domain.to_ascii_lowercase();
    check_domain(&domain).map_err(|reason| ApiError::bad_request(reason).with_field("domain"))?;
    let not_claimed = || ApiError::not_found(format!("a service of yours that claims `{domain}`"));
    let Some(claim) = state.store.get_domain(&domain).await? else {
        return Err(not_claimed());
    };
    if caller.require_org(&claim.service.org).is_err() {
        return Err(not_claimed());
    }
    let Some(secrets) = &state.secrets else {
        return Err(ApiError::not_found(
            "certificate uploads (this control plane runs without --secrets-key)",
        ));
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let facts =
        check_upload(&domain, &upload.certificate, &upload.private_key, now).map_err(|e| {
            let mut errors = ValidationErrors::default();
            errors.push(e.field, e.reason);
            ApiError::invalid(errors)
        })?;
    let sealed = secrets
        .seal(
            &format!("certificate/{domain}"),
            upload.private_key.as_bytes(),
        )
        .map_err(ApiError::internal)?;
    let record = CertificateRecord {
        domain: domain.clone(),
        source: CertificateSource::Upload,
        state: CertificateState::Valid,
        issuer: Some(facts.issuer),
        not_before: Some(facts.not_before),
        not_after: Some(facts.not_after),
        chain_pem: Some(upload.certificate),
        sealed_key: Some(sealed),
        last_error: None,
        next_attempt: None,
        attempts: 0,
        updated_at: now,
    };
    state.store.put_certificate(&record, None).await?;
    tracing::info!(%domain, service = %claim.service, not_after = facts.not_after,
        "certificate uploaded");
    Ok(Json(DomainStatus::from(DomainClaim {
        certificate: Some(record),
        ..claim
    })))
}
