//! The region's certificate issuer: redeems join tokens for first certificates, issues
//! certificates to callers authenticated by their own (renewals, and an agent's requests for the
//! workloads of its region), and decides who may have which identity. Keys never come here:
//! only signing requests, and no answer ever holds a key.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use meridian_identity::enroll::{
    CertificateIssued, CertificateRequest, JoinRequest, JoinToken, BUNDLE_PATH, CERTIFICATES_PATH,
    JOIN_PATH,
};
use meridian_identity::{Authority, CertStore, SpiffeId, Subject};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::own_certificate::{issue_own_certificate, keep_own_certificate};
use crate::region::Region;
use crate::tls::Peer;
use meridian_identity::{JoinTokens, JoinTokensError};

/// Largest request body accepted (a signing request is about 1 KiB).
const MAX_BODY_BYTES: usize = 64 * 1024;

/// Why a request was refused; the message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    /// The request is malformed (names the field).
    #[error("{0}")]
    BadRequest(String),
    /// No valid credential: no client certificate, or an unknown, used or expired join token.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller may not have that identity.
    #[error("{0}")]
    Forbidden(String),
    /// Something failed here.
    #[error("{0}")]
    Internal(String),
    /// Something this depends on is away; the request may succeed later.
    #[error("{0}")]
    Unavailable(String),
}

impl From<JoinTokensError> for IssuerError {
    fn from(e: JoinTokensError) -> Self {
        IssuerError::Internal(e.to_string())
    }
}

impl IntoResponse for IssuerError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            IssuerError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            IssuerError::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "unauthenticated"),
            IssuerError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            IssuerError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            IssuerError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        };
        let body = serde_json::json!({"error": {"code": code, "message": self.to_string()}});
        (status, Json(body)).into_response()
    }
}

/// Labels of the issuer's counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    /// `join` or `certificate`.
    via: &'static str,
    /// `issued`, or why not: `bad_request`, `unauthenticated`, `forbidden`, `internal`,
    /// `unavailable`.
    outcome: &'static str,
}

/// The region's issuer.
pub struct Issuer {
    ca: Authority,
    bundle_pem: String,
    region: String,
    lifetime: Duration,
    tokens: JoinTokens,
    state: Arc<Region>,
    requests: Family<Outcome, Counter>,
}

impl Issuer {
    /// An issuer for `region` signing with `ca` (whose installation's root is `bundle_pem`),
    /// giving certificates `lifetime`, redeeming `tokens`, and checking agents' requests for
    /// workloads against the services of `state`. Counts in `registry`.
    pub fn new(
        ca: Authority,
        bundle_pem: String,
        lifetime: Duration,
        tokens: JoinTokens,
        state: Arc<Region>,
        registry: &mut Registry,
    ) -> Issuer {
        let requests = Family::default();
        registry.register(
            "meridian_control_certificate_requests",
            "Join and certificate requests, by outcome",
            requests.clone(),
        );
        let region = state.name().to_owned();
        Issuer {
            ca,
            bundle_pem,
            region,
            lifetime,
            tokens,
            state,
            requests,
        }
    }

    /// The installation's trust bundle, PEM.
    pub fn bundle_pem(&self) -> &str {
        &self.bundle_pem
    }

    /// A join token for `identity`, written relative to the region: `gateway`,
    /// `agent/<node>`, `edge/<location>` or `org/<org>/app/<app>/service/<service>`; valid for
    /// `ttl`.
    pub fn join_token(
        &self,
        identity: &str,
        ttl: Duration,
    ) -> Result<(JoinToken, SpiffeId), IssuerError> {
        let region = &self.region;
        let path = match identity.split('/').collect::<Vec<_>>().as_slice() {
            ["gateway"] => format!("gateway/{region}"),
            ["agent", node] => format!("agent/{region}/{node}"),
            ["edge", _] | ["org", _, "app", _, "service", _] => identity.to_owned(),
            _ => {
                return Err(IssuerError::BadRequest(format!(
                    "identity: `{identity}` must be gateway, agent/<node>, edge/<location> or \
                     org/<org>/app/<app>/service/<service> (a region's control plane joins \
                     with a token from the global API: `meridian join-token control/<region>`)"
                )))
            }
        };
        let id = SpiffeId::parse(&format!("spiffe://{}/{path}", self.ca.trust_domain()))
            .map_err(|e| IssuerError::BadRequest(format!("identity: {}", e.reason)))?;
        let token = self.tokens.create(&id, ttl, &self.bundle_pem)?;
        tracing::info!(%id, ?ttl, "join token created");
        Ok((token, id))
    }

    /// This control plane's own certificate (`control/<region>`), made here with a key that
    /// stays here.
    pub fn own_certificate(&self) -> Result<Arc<rustls::sign::CertifiedKey>, String> {
        let id = SpiffeId {
            trust_domain: self.ca.trust_domain().to_owned(),
            subject: Subject::Control {
                region: Some(self.region.clone()),
            },
        };
        issue_own_certificate(&self.ca, &id, self.lifetime)
    }

    /// Renews this control plane's own certificate in `store` at two thirds of its lifetime,
    /// for as long as the task runs.
    pub async fn keep_own_certificate(self: Arc<Self>, store: Arc<CertStore>) {
        keep_own_certificate(store, self.lifetime, || self.own_certificate()).await;
    }

    /// Redeems a join token for a certificate of the identity it admits.
    fn join(&self, request: JoinRequest) -> Result<CertificateIssued, IssuerError> {
        let token = JoinToken::parse(&request.token)
            .map_err(|e| IssuerError::BadRequest(format!("token: {e}")))?;
        let id = self.tokens.redeem(&token)?.ok_or_else(|| {
            IssuerError::Unauthenticated(
                "token: unknown, already used or expired; ask an administrator for a new one \
                 (meridian join-token)"
                    .to_owned(),
            )
        })?;
        self.issue(&request.csr, &id)
    }

    /// Issues to an authenticated `caller` what it asks for, if it may have it.
    fn certificate(
        &self,
        caller: Option<&SpiffeId>,
        request: CertificateRequest,
    ) -> Result<CertificateIssued, IssuerError> {
        let caller = caller.ok_or_else(|| {
            IssuerError::Unauthenticated(
                "this call needs a client certificate of this installation; join with a join \
                 token first"
                    .to_owned(),
            )
        })?;
        let wanted = match &request.spiffe_id {
            Some(id) => SpiffeId::parse(id)
                .map_err(|e| IssuerError::BadRequest(format!("spiffe_id: {}", e.reason)))?,
            None => caller.clone(),
        };
        if let Err(reason) = self.may_have(caller, &wanted) {
            tracing::warn!(%caller, %wanted, %reason, "certificate request refused");
            return Err(IssuerError::Forbidden(reason));
        }
        self.issue(&request.csr, &wanted)
    }

    /// Whether `caller` may get a certificate for `wanted`: its own identity if it belongs to
    /// this region (or to no region), and, for an agent of this region, the identity of a
    /// service that runs in the region.
    fn may_have(&self, caller: &SpiffeId, wanted: &SpiffeId) -> Result<(), String> {
        let region_of = |id: &SpiffeId| match &id.subject {
            Subject::Gateway { region } | Subject::Agent { region, .. } => Some(region.clone()),
            Subject::Control { region } => Some(region.clone().unwrap_or_default()),
            Subject::Workload { .. } | Subject::Edge { .. } => None,
        };
        if let Some(region) = region_of(wanted) {
            if region != self.region {
                return Err(format!(
                    "{wanted} is not an identity of region {}; ask that region's control plane",
                    self.region
                ));
            }
        }
        if matches!(wanted.subject, Subject::Control { .. }) {
            return Err(format!(
                "{wanted} is a control plane's identity; it is not issued"
            ));
        }
        if caller == wanted {
            return Ok(());
        }
        match (&caller.subject, &wanted.subject) {
            (Subject::Agent { .. }, Subject::Workload { org, app, service }) => {
                let runs = self
                    .state
                    .runs(&(org.clone(), app.clone(), service.clone()));
                if runs {
                    Ok(())
                } else {
                    Err(format!(
                        "{wanted}: that service does not run in region {}",
                        self.region
                    ))
                }
            }
            _ => Err(format!("{caller} may not have certificates for {wanted}")),
        }
    }

    /// Signs `csr` for `id`.
    fn issue(&self, csr: &str, id: &SpiffeId) -> Result<CertificateIssued, IssuerError> {
        let issued = self.ca.issue(csr, id, self.lifetime).map_err(|e| match e {
            meridian_identity::IssueError::Signing(e) => IssuerError::Internal(e.to_string()),
            refused => IssuerError::BadRequest(format!("csr: {refused}")),
        })?;
        tracing::info!(%id, lifetime = ?self.lifetime, "certificate issued");
        Ok(CertificateIssued {
            spiffe_id: id.to_string(),
            chain_pem: issued.chain_pem,
            bundle_pem: self.bundle_pem.clone(),
        })
    }

    fn count<T>(&self, via: &'static str, result: &Result<T, IssuerError>) {
        let outcome = match result {
            Ok(_) => "issued",
            Err(IssuerError::BadRequest(_)) => "bad_request",
            Err(IssuerError::Unauthenticated(_)) => "unauthenticated",
            Err(IssuerError::Forbidden(_)) => "forbidden",
            Err(IssuerError::Internal(_)) => "internal",
            Err(IssuerError::Unavailable(_)) => "unavailable",
        };
        self.requests.get_or_create(&Outcome { via, outcome }).inc();
    }

    /// The issuer's routes, for the control plane's TLS port (each request carries its
    /// connection's [`Peer`]).
    pub fn routes(self: Arc<Self>) -> Router {
        Router::new()
            .route(BUNDLE_PATH, get(bundle))
            .route(JOIN_PATH, post(join))
            .route(CERTIFICATES_PATH, post(certificate))
            .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
            .with_state(self)
    }
}

async fn bundle(State(issuer): State<Arc<Issuer>>) -> impl IntoResponse {
    (
        [("content-type", "application/x-pem-file")],
        issuer.bundle_pem.clone(),
    )
}

async fn join(
    State(issuer): State<Arc<Issuer>>,
    Json(request): Json<JoinRequest>,
) -> Result<Json<CertificateIssued>, IssuerError> {
    let result = issuer.join(request);
    issuer.count("join", &result);
    result.map(Json)
}

async fn certificate(
    State(issuer): State<Arc<Issuer>>,
    peer: Option<Extension<Peer>>,
    Json(request): Json<CertificateRequest>,
) -> Result<Json<CertificateIssued>, IssuerError> {
    let caller = peer.and_then(|Extension(peer)| peer.id);
    let result = issuer.certificate(caller.as_ref(), request);
    issuer.count("certificate", &result);
    result.map(Json)
}
