//! Calls to a region's control plane admin port (join tokens, nodes): the answer's JSON, or an
//! error saying who refused and why.

use anyhow::{Context, Result};

/// Sends `request` (to `url`, served by `what`) and returns the JSON it answers; an answer
/// that is not a success is an error with the reason the server gave.
pub async fn call(
    request: reqwest::RequestBuilder,
    url: &str,
    what: &str,
) -> Result<serde_json::Value> {
    let response = request
        .send()
        .await
        .with_context(|| format!("calling {url} (is {what} running?)"))?;
    let status = response.status();
    let body: serde_json::Value = response
        .json()
        .await
        .with_context(|| format!("reading the answer of {url}"))?;
    if !status.is_success() {
        let message = body["error"]["message"]
            .as_str()
            .unwrap_or("no reason given");
        anyhow::bail!("{url} refused ({status}): {message}");
    }
    Ok(body)
}
