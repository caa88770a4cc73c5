//! Purges of an app's responses cached at the edges: one URL, one tag, or everything of the
//! app. A purge is stored first (numbered, durable, in order); the global control plane then
//! sends it to every edge, and the answer waits until every connected edge applied it (at most
//! [`PURGE_ACK_WAIT`] and a little more), with their count.

use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::Json;
use meridian_model::{
    check_dns_label, check_host_name, domains_overlap, PurgeAccepted, PurgeRequest, PurgeTarget,
    ValidationErrors, PURGE_URL_MAX,
};
use meridian_store::{NewPurge, ServiceFilter};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::error::ErrorResponses;
use crate::extract::{ApiPath, JsonBody};
use crate::purge_acks::PURGE_ACK_WAIT;
use crate::{ApiError, ApiState, Caller};

/// How much longer than [`PURGE_ACK_WAIT`] an answer waits for the publisher's record (it
/// starts when the publisher reads the purge from the store's change feed).
const RECORD_MARGIN: Duration = Duration::from_secs(2);

/// Path of an app's purges.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct PurgesPath {
    /// The org.
    #[param(pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
    org: String,
    /// The app.
    #[param(pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
    app: String,
}

fn invalid(field: &str, reason: impl Into<String>) -> ApiError {
    let mut errors = ValidationErrors::default();
    errors.push(field, reason);
    ApiError::invalid(errors)
}

/// Purges an app's responses from every edge's cache: those stored for one URL (`url`, whose
/// host is one of the app's domains; under both schemes), those its origin tagged so (`tag`,
/// from `Cache-Tag` or `Surrogate-Key`), or all of them (`all: true`). The purge is stored and
/// numbered, then sent to every edge; the answer comes once every connected edge applied it
/// (200), or after 5 seconds with how many did (202). An edge that was away applies what it
/// missed as soon as it is back, or purges everything it holds if it missed more than the
/// newest 10,000 purges.
#[utoipa::path(post, path = "/v1/orgs/{org}/apps/{app}/purges", tag = "cache",
    params(PurgesPath), request_body = PurgeRequest,
    responses(
        (status = 200, description = "Stored, and applied by every connected edge",
            body = PurgeAccepted),
        (status = 202, description = "Stored, not yet applied by every connected edge (see \
            `edges`): each applies it when it can", body = PurgeAccepted),
        ErrorResponses))]
pub async fn create(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(path): ApiPath<PurgesPath>,
    JsonBody(request): JsonBody<PurgeRequest>,
) -> Result<(StatusCode, Json<PurgeAccepted>), ApiError> {
    let (org, app) = (path.org.as_str(), path.app.as_str());
    caller.require_org(org)?;
    check_dns_label(org).map_err(|reason| invalid("org", reason))?;
    check_dns_label(app).map_err(|reason| invalid("app", reason))?;
    let target = request.target().map_err(ApiError::invalid)?;
    let store = &state.store;
    if store.get_app(org, app).await?.is_none() {
        return Err(ApiError::not_found(format!("app `{org}/{app}`")));
    }
    let filter = ServiceFilter {
        org: Some(org.to_owned()),
        app: Some(app.to_owned()),
        name: None,
    };
    let domains: Vec<String> = store
        .list_domains(&filter)
        .await?
        .into_iter()
        .map(|claim| claim.domain)
        .collect();
    if domains.is_empty() {
        return Err(invalid(
            "app",
            format!("app `{org}/{app}` serves no public domain: the edges cache nothing of it"),
        ));
    }
    if let PurgeTarget::Url(url) = &target {
        check_url(url, &domains).map_err(|reason| invalid("url", reason))?;
    }
    let purge = store
        .add_purge(&NewPurge {
            org: org.to_owned(),
            app: app.to_owned(),
            target,
        })
        .await?;
    tracing::info!(org, app, sequence = purge.sequence, target = ?purge.target, "purge accepted");
    let stored = std::time::Instant::now();
    let wait = PURGE_ACK_WAIT + RECORD_MARGIN;
    let edges = state.reports.purges().wait(purge.sequence, wait).await;
    (state.metrics.purges()).accepted(purge.sequence, stored.elapsed(), edges);
    let status = match edges {
        Some(acks) if acks.applied == acks.connected => StatusCode::OK,
        _ => StatusCode::ACCEPTED,
    };
    let accepted = PurgeAccepted {
        purge,
        domains,
        edges,
    };
    Ok((status, Json(accepted)))
}

/// Checks that `url` is an absolute `http://` or `https://` URL, without user info or
/// fragment, whose host one of `domains` covers.
fn check_url(url: &str, domains: &[String]) -> Result<(), String> {
    if url.len() > PURGE_URL_MAX {
        return Err(format!(
            "is {} bytes long; at most {PURGE_URL_MAX} are allowed",
            url.len()
        ));
    }
    if url.contains('#') {
        return Err(format!(
            "`{url}` has a fragment (#…), which a client never sends: leave it out"
        ));
    }
    let absolute = || format!("`{url}` is not an absolute http:// or https:// URL");
    let uri: Uri = url.parse().map_err(|_| absolute())?;
    let authority = match (uri.scheme_str(), uri.authority()) {
        (Some("http" | "https"), Some(authority)) => authority,
        _ => return Err(absolute()),
    };
    if authority.as_str().contains('@') {
        return Err(format!("`{url}` carries user info (…@): leave it out"));
    }
    let host = authority.host().to_ascii_lowercase();
    check_host_name(&host)?;
    if !domains.iter().any(|domain| domains_overlap(domain, &host)) {
        return Err(format!(
            "host `{host}` is not a domain of the app (its domains: {})",
            domains.join(", ")
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_is_absolute_and_of_one_of_the_apps_domains() {
        let domains = [
            "shop.example.com".to_owned(),
            "*.cdn.example.net".to_owned(),
        ];
        for good in [
            "https://shop.example.com/a?b=c",
            "http://SHOP.example.com:8080/",
            "https://img.cdn.example.net/x.png",
            "http://a.b.cdn.example.net",
        ] {
            assert_eq!(check_url(good, &domains), Ok(()), "{good}");
        }
        for (bad, says) in [
            ("/relative", "absolute"),
            ("ftp://shop.example.com/", "absolute"),
            ("https://other.example.com/", "not a domain of the app"),
            ("https://cdn.example.net/", "not a domain of the app"),
            ("https://user@shop.example.com/", "user info"),
            ("https://shop.example.com/#top", "fragment"),
            ("https://127.0.0.1/", "not a domain of the app"),
            ("https://shop.example.com/a b", "absolute"),
        ] {
            let reason = check_url(bad, &domains).unwrap_err();
            assert!(reason.contains(says), "{bad}: {reason}");
        }
        let long = format!("https://shop.example.com/{}", "a".repeat(PURGE_URL_MAX));
        assert!(check_url(&long, &domains).unwrap_err().contains("at most"));
    }
}
