//! A small client of the public API: JSON in and out, bearer token, errors a person can act on.

use anyhow::{anyhow, bail, Context, Result};
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::ClientArgs;

/// How long one API call may take.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Talks to one API endpoint with one token.
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    message: String,
    #[serde(default)]
    field: Option<String>,
    #[serde(default)]
    details: Vec<meridian_model::FieldError>,
}

impl Client {
    /// A client for the API and token in `args`.
    pub fn new(args: &ClientArgs) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .context("building the HTTP client")?;
        Ok(Client {
            http,
            base: args.api.trim_end_matches('/').to_owned(),
            token: args.token.clone().filter(|t| !t.is_empty()),
        })
    }

    /// `GET path`, decoding the JSON answer.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call(Method::GET, path, None).await
    }

    /// `method path` with a JSON body, decoding the JSON answer.
    pub async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<T> {
        self.call(method, path, Some(body)).await
    }

    /// `method path` with a JSON body, decoding the JSON answer and keeping its headers.
    pub async fn send_keeping_headers<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<(T, HeaderMap)> {
        self.call_keeping_headers(method, path, Some(body)).await
    }

    /// `DELETE path`, expecting no body.
    pub async fn delete(&self, path: &str) -> Result<()> {
        self.call::<serde::de::IgnoredAny>(Method::DELETE, path, None)
            .await
            .map(|_| ())
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<T> {
        Ok(self.call_keeping_headers(method, path, body).await?.0)
    }

    async fn call_keeping_headers<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(T, HeaderMap)> {
        let Some(token) = &self.token else {
            bail!(
                "no API token: set MERIDIAN_TOKEN (the control plane prints an admin token at \
                 first start) or pass --token"
            );
        };
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, &url).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| {
            anyhow!(
                "cannot reach the Meridian API at {}: {e}\n  is `meridian control --global` \
                 running there? (set MERIDIAN_API or --api)",
                self.base
            )
        })?;
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.context("reading the API's answer")?;
        if status.is_success() {
            let body = if status == StatusCode::NO_CONTENT {
                serde_json::from_slice(b"null").context("empty answer")?
            } else {
                serde_json::from_slice(&bytes).with_context(|| {
                    format!("the API's answer to {path} is not what was expected")
                })?
            };
            return Ok((body, headers));
        }
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) if body.error.details.len() > 1 => {
                let lines: Vec<String> = body
                    .error
                    .details
                    .iter()
                    .map(|d| format!("  {}: {}", d.field, d.message))
                    .collect();
                bail!(
                    "{status}: the API rejected the request:\n{}",
                    lines.join("\n")
                )
            }
            Ok(ErrorBody {
                error:
                    ErrorDetail {
                        field: Some(field),
                        message,
                        ..
                    },
            }) if !message.starts_with(&field) => bail!("{status}: {field}: {message}"),
            Ok(body) => bail!("{status}: {}", body.error.message),
            Err(_) => bail!("{status}: {}", String::from_utf8_lossy(&bytes)),
        }
    }
}
