//! A client of the global control plane's public API: the regional control plane asks it for the
//! region's CA at its first start (with its join token), and whether a token an operator
//! presents is the installation's admin token.

use std::time::Duration;

/// Longest wait for one request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a request to the global API failed.
#[derive(Debug, thiserror::Error)]
pub enum GlobalApiError {
    /// The request did not complete.
    #[error("cannot reach the global API: {0}")]
    Unreachable(#[from] reqwest::Error),
    /// The API answered with an error status.
    #[error("the global API answered {status} to {path}: {body}")]
    Status {
        /// The status.
        status: reqwest::StatusCode,
        /// The request path.
        path: String,
        /// The answer's body.
        body: String,
    },
}

/// A client of the global control plane's API, with a bearer token.
#[derive(Clone)]
pub struct GlobalApi {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl GlobalApi {
    /// A client of the API at `base` (e.g. `http://127.0.0.1:7070`) using `token`.
    pub fn new(base: &str, token: &str) -> GlobalApi {
        GlobalApi {
            http: reqwest::Client::builder()
                .timeout(REQUEST_TIMEOUT)
                .build()
                .unwrap_or_default(),
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
        }
    }

    /// Whether it has a token at all.
    pub fn has_token(&self) -> bool {
        !self.token.is_empty()
    }

    /// Whether its token is the installation's admin token (`GET /v1/whoami`).
    pub async fn is_admin(&self) -> Result<bool, GlobalApiError> {
        #[derive(serde::Deserialize)]
        struct WhoAmI {
            admin: bool,
        }
        let path = "/v1/whoami";
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await?;
        let whoami: WhoAmI = succeeded(response, path).await?.json().await?;
        Ok(whoami.admin)
    }

    /// POSTs `body` as JSON to `path` and decodes the JSON answer.
    pub(crate) async fn post<B: serde::Serialize, T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, GlobalApiError> {
        let response = self.send(reqwest::Method::POST, path, body).await?;
        Ok(response.json().await?)
    }

    /// Sends `body` as JSON to `path`; the response if it succeeded, else the API's error.
    async fn send<B: serde::Serialize>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &B,
    ) -> Result<reqwest::Response, GlobalApiError> {
        let response = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await?;
        succeeded(response, path).await
    }
}

/// `response` if it succeeded, or the error the API gave for `path`.
async fn succeeded(
    response: reqwest::Response,
    path: &str,
) -> Result<reqwest::Response, GlobalApiError> {
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        return Err(GlobalApiError::Status {
            status,
            path: path.to_owned(),
            body,
        });
    }
    Ok(response)
}
