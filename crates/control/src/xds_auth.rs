//! xDS needs mutual TLS: the ADS service behind a check of each request's client certificate,
//! which decides the node's scope ([`Grant`]) instead of whatever the node declares.

use std::convert::Infallible;
use std::task::{Context, Poll};

use meridian_identity::{SpiffeId, Subject};
use meridian_xds::{AdsService, Grant};
use tonic::codegen::{http, Body, BoxFuture, StdError};
use tonic::server::NamedService;
use tonic::Status;

use crate::tls::Peer;

/// The ADS service, open only to clients with a certificate of this installation that may read
/// what this control plane serves.
#[derive(Clone)]
pub struct AuthenticatedAds {
    inner: AdsService,
    /// The region served; `None`: the global control plane.
    region: Option<String>,
}

impl AuthenticatedAds {
    /// `inner` behind the check, for the control plane of `region`: its proxies, agents and
    /// edges, and tenants' workloads.
    pub fn regional(inner: AdsService, region: &str) -> AuthenticatedAds {
        AuthenticatedAds {
            inner,
            region: Some(region.to_owned()),
        }
    }

    /// `inner` behind the check, for the global control plane: only regional control planes,
    /// each seeing its own region's share.
    pub fn global(inner: AdsService) -> AuthenticatedAds {
        AuthenticatedAds {
            inner,
            region: None,
        }
    }
}

impl NamedService for AuthenticatedAds {
    const NAME: &'static str = <AdsService as NamedService>::NAME;
}

/// What `id` may read of `region`'s configuration (`None`: of the global control plane's).
fn grant_for(id: Option<&SpiffeId>, region: Option<&str>) -> Result<Grant, Status> {
    let id = id.ok_or_else(|| {
        Status::unauthenticated(
            "xDS needs a client certificate of this installation: join with a join token first \
             (meridian proxy --join-token)",
        )
    })?;
    let role = |role: &str| Grant {
        role: role.to_owned(),
        org: None,
        node: None,
        region: None,
    };
    let Some(region) = region else {
        return match &id.subject {
            Subject::Control { region: Some(r) } => Ok(Grant {
                region: Some(r.clone()),
                ..role("control")
            }),
            Subject::Edge { .. } => Ok(role("edge")),
            _ => Err(Status::permission_denied(format!(
                "{id} may not follow the global control plane: only regional control planes and \
                 edges do"
            ))),
        };
    };
    match &id.subject {
        Subject::Gateway { region: r } if r == region => Ok(role("gateway")),
        Subject::Agent { region: r, node } if r == region => Ok(Grant {
            node: Some(node.clone()),
            ..role("node-proxy")
        }),
        Subject::Edge { .. } => Ok(role("edge")),
        Subject::Workload { org, .. } => Ok(Grant {
            org: Some(org.clone()),
            ..role("grpc")
        }),
        _ => Err(Status::permission_denied(format!(
            "{id} may not read the configuration of region {region}"
        ))),
    }
}

impl<B> tower::Service<http::Request<B>> for AuthenticatedAds
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        <AdsService as tower::Service<http::Request<B>>>::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let id = request
            .extensions()
            .get::<Peer>()
            .and_then(|p| p.id.as_ref());
        match grant_for(id, self.region.as_deref()) {
            Ok(grant) => {
                request.extensions_mut().insert(grant);
                self.inner.call(request)
            }
            Err(status) => {
                tracing::warn!(peer = ?request.extensions().get::<Peer>(), reason = %status.message(),
                    "xDS request refused");
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}
