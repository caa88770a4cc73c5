//! Retries: what one attempt came to, whether the route's policy retries it, and the pause
//! before the next.

use http::header::{HeaderMap, HeaderValue};
use http::{Method, Response};

use crate::cluster::Outcome;
use crate::config::{RetryOn, RetryPolicy};
use crate::pool::ConnectionBody;

/// The pause before retry number `retry` (1, 2, …): exponential from `base`, capped at ten times
/// `base`, with full jitter so that retries of many requests spread out.
pub(crate) fn backoff(base: std::time::Duration, retry: u32) -> std::time::Duration {
    let ceiling = base
        .saturating_mul(1 << retry.saturating_sub(1).min(8))
        .min(base.saturating_mul(10));
    ceiling.mul_f64(fastrand::f64())
}

/// gRPC codes worth another try: cancelled, deadline-exceeded, resource-exhausted, unavailable.
fn retriable_grpc(headers: &HeaderMap) -> bool {
    matches!(
        headers.get("grpc-status").map(HeaderValue::as_bytes),
        Some(b"1" | b"4" | b"8" | b"14")
    )
}

/// What one attempt came to.
// One per request, on its stack: boxing the response would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Attempt {
    Answered(Response<ConnectionBody>),
    Failed { connect: bool },
    TimedOut,
}

/// Whether `response` is a `503` with `Retry-After`: the upstream says when to come back (a
/// sleeping instance's node proxy that could not hold the request while it wakes). Neither
/// retried at once nor held against the endpoint.
fn come_back_later(response: &Response<ConnectionBody>) -> bool {
    response.status() == http::StatusCode::SERVICE_UNAVAILABLE
        && response.headers().contains_key(http::header::RETRY_AFTER)
}

impl Attempt {
    pub(crate) fn outcome(&self) -> Outcome {
        match self {
            Attempt::Answered(response) if come_back_later(response) => Outcome::Inconclusive,
            _ if self.turned_away() => Outcome::Inconclusive,
            Attempt::Answered(response) => Outcome::of_status(response.status().as_u16()),
            Attempt::Failed { .. } | Attempt::TimedOut => Outcome::GatewayError,
        }
    }

    /// Whether an instance at its hard limit turned this attempt away (see
    /// [`crate::elsewhere`]).
    pub(crate) fn turned_away(&self) -> bool {
        matches!(self, Attempt::Answered(response) if crate::elsewhere::turned_away(response))
    }

    /// Whether `policy` retries this attempt of a `method` request whose body can be replayed.
    /// A connection that could not be made carried nothing, so any method may retry it; after
    /// that the upstream may have acted on the request, so only idempotent methods retry
    /// (RFC 9110 §9.2.2), unless the policy opts in for the others. An attempt an instance at
    /// its hard limit turned away (it asked to be, see [`crate::elsewhere`]) reached nothing
    /// either.
    pub(crate) fn retriable(&self, policy: &RetryPolicy, method: &Method) -> bool {
        let on = |condition| policy.on.contains(&condition);
        match self {
            Attempt::Failed { connect: true } => return on(RetryOn::ConnectFailure),
            _ if self.turned_away() => return true,
            _ => {}
        }
        if !(policy.non_idempotent || method.is_idempotent()) {
            return false;
        }
        match self {
            Attempt::Failed { .. } | Attempt::TimedOut => on(RetryOn::GatewayError),
            Attempt::Answered(response) if come_back_later(response) => false,
            Attempt::Answered(response) => {
                let status = response.status().as_u16();
                (on(RetryOn::ServerError) && status >= 500)
                    || (on(RetryOn::GatewayError) && (502..=504).contains(&status))
                    || (on(RetryOn::RetriableGrpc) && retriable_grpc(response.headers()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_backoff_grows_and_is_capped() {
        let base = std::time::Duration::from_millis(25);
        for retry in 1..=10u32 {
            let ceiling = (base * 2u32.pow(retry - 1)).min(base * 10);
            for _ in 0..50 {
                assert!(backoff(base, retry) <= ceiling, "retry {retry}");
            }
        }
        assert!(
            (0..50).any(|_| backoff(base, 4) > base * 2),
            "never above the early ceiling"
        );
    }
}
