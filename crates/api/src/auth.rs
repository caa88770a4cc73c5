//! Bearer-token authentication: admin tokens for the installation, org tokens for one tenant.
//!
//! Secrets are random, shown once, and stored only as a SHA-256 hash.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::HeaderMap;
use meridian_store::{NewToken, Store};
use sha2::{Digest, Sha256};

use crate::{ApiError, ApiState};

/// Who is calling: resolved from the request's bearer token.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The org the token is scoped to; `None` for an admin token.
    pub org: Option<String>,
}

impl Caller {
    /// Whether the caller holds an installation admin token.
    pub fn is_admin(&self) -> bool {
        self.org.is_none()
    }

    /// Fails with 403 unless the caller is an admin.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(ApiError::forbidden(
                "this needs the installation's admin token",
            ))
        }
    }

    /// The org a listing is narrowed to when `asked` for: an org token's own (`None` when it
    /// asked for another org: it sees nothing), or whatever an admin asked for (`Some(None)`:
    /// every org).
    pub(crate) fn listing_org(&self, asked: Option<String>) -> Option<Option<String>> {
        match (&self.org, asked) {
            (Some(own), Some(asked)) if *own != asked => None,
            (Some(own), _) => Some(Some(own.clone())),
            (None, asked) => Some(asked),
        }
    }

    /// Fails with 404 (as if it did not exist) unless the caller may see `org`.
    pub fn require_org(&self, org: &str) -> Result<(), ApiError> {
        match &self.org {
            Some(own) if own != org => Err(ApiError::not_found(format!("org `{org}`"))),
            _ => Ok(()),
        }
    }
}

/// The hash under which a token's secret is stored.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn random_hex(bytes: usize) -> Result<String, ApiError> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(ApiError::internal)?;
    Ok(hex::encode(buf))
}

/// A newly minted token: the secret to hand out once, and what to store.
pub struct MintedToken {
    /// The bearer secret; never stored.
    pub secret: String,
    /// The record to store (holding only the secret's hash).
    pub record: NewToken,
}

/// Creates a token scoped to `org` (`None`: admin) with a random secret.
pub fn mint_token(org: Option<String>, label: String) -> Result<MintedToken, ApiError> {
    let secret = format!("mrd_{}", random_hex(32)?);
    Ok(MintedToken {
        record: NewToken {
            id: random_hex(6)?,
            org,
            label,
            hash: hash_secret(&secret),
        },
        secret,
    })
}

/// On first start (no admin token stored yet), creates one and returns its secret for printing.
pub async fn bootstrap_admin_token(store: &dyn Store) -> Result<Option<String>, ApiError> {
    if !store.list_tokens(None).await?.is_empty() {
        return Ok(None);
    }
    let minted = mint_token(None, "admin (created at first start)".to_owned())?;
    store.create_token(minted.record).await?;
    Ok(Some(minted.secret))
}

/// The bearer token of a request.
pub(crate) fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let header = headers
        .get(AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing `Authorization: Bearer <token>` header"))?;
    header
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::unauthorized("the Authorization header must be `Bearer <token>`"))
}

impl Caller {
    /// The caller whose API token is `secret`.
    pub(crate) async fn of(secret: &str, state: &ApiState) -> Result<Caller, ApiError> {
        let token = state
            .store
            .find_token(&hash_secret(secret))
            .await?
            .ok_or_else(|| ApiError::unauthorized("unknown or revoked token"))?;
        Ok(Caller { org: token.org })
    }
}

impl FromRequestParts<ApiState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        Caller::of(bearer(&parts.headers)?, state).await
    }
}
