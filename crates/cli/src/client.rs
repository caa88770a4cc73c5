//! A small client of the public API: JSON in and out, bearer token, errors a person can act on.

use anyhow::{anyhow, bail, Context, Result};
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::connection::{ClientArgs, Connection};

/// How long one API call may take.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Longest wait for a streamed answer's next bytes (a following log stream sends a heartbeat
/// every 15 s).
const STREAM_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Talks to one API endpoint with one token.
pub struct Client {
    http: reqwest::Client,
    /// For answers read as they come: no limit on the whole.
    streaming: reqwest::Client,
    connection: Connection,
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
    /// A client for the API and token that `args` and the config file's context give.
    pub async fn new(args: &ClientArgs) -> Result<Self> {
        Client::connect(args.connection().await?)
    }

    /// A client of `connection`.
    pub fn connect(connection: Connection) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .context("building the HTTP client")?;
        let streaming = reqwest::Client::builder()
            .connect_timeout(REQUEST_TIMEOUT)
            .read_timeout(STREAM_READ_TIMEOUT)
            .build()
            .context("building the HTTP client")?;
        Ok(Client {
            http,
            streaming,
            connection,
        })
    }

    /// The org to act on when a command is given none: the context's.
    pub fn default_org(&self) -> Option<&str> {
        self.connection.org.as_deref()
    }

    /// `` (from context `prod` (/…/config.yaml))`` when `from_context`, for messages.
    fn source(&self, from_context: bool) -> String {
        match &self.connection.context {
            Some(context) if from_context => format!(" (from {context})"),
            _ => String::new(),
        }
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
        let url = format!("{}{path}", self.connection.api);
        let mut request = self.http.request(method, &url).bearer_auth(self.token()?);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| self.unreachable(e))?;
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
        Err(self.failed(status, &bytes))
    }

    /// `GET path`, whose answer is read as it comes (no time limit on the whole, one on each
    /// read): the response, if it succeeded.
    pub async fn open_stream(&self, path: &str) -> Result<reqwest::Response> {
        let url = format!("{}{path}", self.connection.api);
        let response = self
            .streaming
            .get(&url)
            .bearer_auth(self.token()?)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let bytes = response.bytes().await.context("reading the API's answer")?;
        Err(self.failed(status, &bytes))
    }

    /// The token, or what to do without one.
    fn token(&self) -> Result<&str> {
        if let Some(token) = &self.connection.token {
            return Ok(token);
        }
        let context = match &self.connection.context {
            Some(context) if self.connection.token_withheld => format!(
                " (the token of {context} goes to its own API only, not to {})",
                self.connection.api
            ),
            Some(context) => format!(" ({context} has none)"),
            None => String::new(),
        };
        bail!(
            "no API token{context}: set MERIDIAN_TOKEN (the control plane prints an admin \
             token at first start), pass --token, or give a context one (`meridian context \
             set NAME --token …`)"
        );
    }

    /// The error of a request that got no answer.
    fn unreachable(&self, e: reqwest::Error) -> anyhow::Error {
        anyhow!(
            "cannot reach the Meridian API at {}{}: {e}\n  is `meridian control --global` \
             running there? (set MERIDIAN_API or --api, or the context's api-url)",
            self.connection.api,
            self.source(self.connection.api_from_context)
        )
    }

    /// The error of an answer with `status` and `bytes` (the API's JSON error, if it is one).
    fn failed(&self, status: StatusCode, bytes: &[u8]) -> anyhow::Error {
        let message = match serde_json::from_slice::<ErrorBody>(bytes) {
            Ok(body) if body.error.details.len() > 1 => {
                let lines: Vec<String> = body
                    .error
                    .details
                    .iter()
                    .map(|d| format!("  {}: {}", d.field, d.message))
                    .collect();
                format!(
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
            }) if !message.starts_with(&field) => format!("{status}: {field}: {message}"),
            Ok(body) => format!("{status}: {}", body.error.message),
            Err(_) => format!("{status}: {}", String::from_utf8_lossy(bytes)),
        };
        if status == StatusCode::UNAUTHORIZED {
            return anyhow!(
                "{message}\n  the token{} is not one the API at {} accepts",
                self.source(self.connection.token_from_context),
                self.connection.api
            );
        }
        anyhow!("{message}")
    }
}
