//! The API's error type and its JSON form: `{"error": {"code", "message", "field", "details"}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use meridian_model::{FieldError, ValidationErrors};
use meridian_store::StoreError;
use serde::Serialize;

use crate::Caller;
use utoipa::ToSchema;

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable, machine-readable code, e.g. `invalid`, `not_found`, `unauthorized`,
    /// `domain_taken`.
    pub code: &'static str,
    /// A sentence for the person who sent the request.
    pub message: String,
    /// The offending field (its path in the body, or a path or query parameter), if one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Every problem, when the request had several.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<FieldError>,
}

/// An error answered to an API client. Built by handlers; turned into JSON with its status code.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    detail: ErrorDetail,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            detail: ErrorDetail {
                code,
                message: message.into(),
                field: None,
                details: Vec::new(),
            },
        }
    }

    /// 409 `conflict`: the request does not fit the resource's state (`message` says why and
    /// what to do).
    pub fn conflict(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// Names the field the error is about.
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.detail.field = Some(field.into());
        self
    }

    /// 400: the request is malformed (bad JSON, bad parameter).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 400: query parameters that are not accepted, each problem named by its parameter.
    pub fn bad_parameters(errors: ValidationErrors) -> Self {
        let mut error = Self::bad_request(errors.to_string());
        error.detail.field = errors.errors.first().map(|e| e.field.clone());
        error.detail.details = errors.errors;
        error
    }

    /// 401: no token, or one that is not valid.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403: the token is valid but may not do this.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 404: no such resource (or not visible to this token).
    pub fn not_found(what: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    /// 413: the body is over the limit.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body is larger than {limit} bytes"),
        )
    }

    /// 422: the body is well-formed but its content is not accepted.
    pub fn invalid(errors: ValidationErrors) -> Self {
        let mut error = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            errors.to_string(),
        );
        error.detail.field = errors.errors.first().map(|e| e.field.clone());
        error.detail.details = errors.errors;
        error
    }

    /// 503 `unavailable`: the API cannot serve this now (`message` says why and what to do).
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// 500: something failed inside; the details go to the log, not the client.
    pub fn internal(err: impl std::fmt::Display) -> Self {
        tracing::error!(error = %err, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the control plane's log",
        )
    }

    /// 409 `domain_taken` for `err` (a [`StoreError::DomainTaken`]; anything else converts as
    /// usual), naming the holder as `caller` may see it: the admin is told which service of
    /// which org holds the domain, an org its own service, and nobody another org's.
    pub fn domain_taken(caller: &Caller, err: StoreError) -> Self {
        let StoreError::DomainTaken {
            index,
            domain,
            held,
            holder,
        } = err
        else {
            return err.into();
        };
        let by = match &caller.org {
            None => format!("service `{holder}`"),
            Some(org) if *org == holder.org => {
                format!("service `{}/{}` of this org", holder.app, holder.name)
            }
            Some(_) => "a service of another org".to_owned(),
        };
        let through = if held == domain {
            String::new()
        } else {
            format!(" (as `{held}`)")
        };
        ApiError::new(
            StatusCode::CONFLICT,
            "domain_taken",
            format!(
                "`{domain}` is already served by {by}{through}; a domain belongs to one service"
            ),
        )
        .with_field(format!("domains[{index}]"))
    }

    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound(what) => ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("{what} not found"),
            ),
            StoreError::AlreadyExists(what) => ApiError::new(
                StatusCode::CONFLICT,
                "already_exists",
                format!("{what} already exists"),
            ),
            StoreError::Conflict(message) => ApiError::conflict(message),
            taken @ StoreError::DomainTaken { .. } => ApiError::domain_taken(
                &Caller {
                    org: Some(String::new()),
                },
                taken,
            ),
            StoreError::SecretMissing { field, secret, app } => {
                let mut errors = ValidationErrors::default();
                errors.push(field, meridian_store::secret_missing(&secret, &app));
                ApiError::invalid(errors)
            }
            StoreError::Closed => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the control plane is shutting down",
            ),
            StoreError::Unavailable(e) => {
                tracing::warn!(error = %e, "the store's database is unreachable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the control plane's database is unreachable; try again shortly",
                )
            }
            other => ApiError::internal(other),
        }
    }
}

impl From<ValidationErrors> for ApiError {
    fn from(errors: ValidationErrors) -> Self {
        ApiError::invalid(errors)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(ErrorBody { error: self.detail })).into_response()
    }
}

/// The error responses every authenticated operation may give, for the OpenAPI document.
/// Only described, never built: handlers answer with [`ApiError`].
#[allow(dead_code)]
#[derive(utoipa::IntoResponses)]
pub enum ErrorResponses {
    /// Malformed request: bad JSON, or a bad path or query parameter.
    #[response(status = 400)]
    BadRequest(#[to_schema] ErrorBody),
    /// Missing or unknown token.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// The token may not do this (e.g. an org token doing admin work).
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// No such resource, or not visible to this token.
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// The resource exists already, or is still in use; or (`domain_taken`, applying or rolling
    /// back a service) a public domain in `field` is served by another service.
    #[response(status = 409)]
    Conflict(ErrorBody),
    /// The body is larger than the limit.
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// The body's content is not accepted; `details` lists every problem.
    #[response(status = 422)]
    Invalid(ErrorBody),
    /// The control plane's database cannot be reached (try again shortly), or the control
    /// plane is shutting down.
    #[response(status = 503)]
    Unavailable(ErrorBody),
}
