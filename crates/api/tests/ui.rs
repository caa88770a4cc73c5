//! The web dashboard's assets as the API serves them: content types, cache headers, the
//! Content-Security-Policy, and that everything the page loads comes from the binary.

use std::collections::BTreeSet;
use std::sync::Arc;

use reqwest::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use reqwest::{Response, StatusCode};

/// The base URL of an API server on port 0 over a fresh store.
async fn serve(dir: &std::path::Path) -> String {
    let store = meridian_store::SqlStore::open_sqlite(&dir.join("meridian.db"))
        .await
        .unwrap();
    let router = meridian_api::router(Arc::new(store));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

async fn fetch(url: &str) -> Response {
    reqwest::get(url).await.unwrap()
}

fn header(answer: &Response, name: impl reqwest::header::AsHeaderName) -> &str {
    answer
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// The policy every dashboard answer carries.
fn assert_strict_policy(answer: &Response) {
    let csp = header(answer, "content-security-policy");
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{directive} missing from {csp}");
    }
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(header(answer, "x-content-type-options"), "nosniff");
}

/// The files a text refers to under `/ui/<digest>/`: the page's `src`/`href`, and modules'
/// relative imports (`from "./x.js"`).
fn referenced(text: &str, prefix: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (marker, end) in [(prefix, '"'), ("from \"./", '"')] {
        for piece in text.split(marker).skip(1) {
            if let Some(name) = piece.split(end).next() {
                found.insert(name.to_owned());
            }
        }
    }
    found
}

#[tokio::test]
async fn the_page_and_every_asset_it_loads_come_from_the_binary_with_strict_headers() {
    let dir = tempfile::tempdir().unwrap();
    let base = serve(dir.path()).await;

    // The page needs no token; it is revalidated each time, and a held copy is a 304.
    for path in ["/ui", "/ui/"] {
        let answer = fetch(&format!("{base}{path}")).await;
        assert_eq!(answer.status(), StatusCode::OK, "{path}");
        assert_eq!(header(&answer, CONTENT_TYPE), "text/html; charset=utf-8");
        assert_eq!(header(&answer, CACHE_CONTROL), "no-cache");
        assert_strict_policy(&answer);
    }
    let page = fetch(&format!("{base}/ui/")).await;
    let etag = header(&page, ETAG).to_owned();
    assert!(etag.starts_with('"'), "{etag}");
    let again = reqwest::Client::new()
        .get(format!("{base}/ui/"))
        .header(IF_NONE_MATCH, &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    assert_strict_policy(&again);
    let html = page.text().await.unwrap();

    // Every file the page and its modules load is served under the page's digest, with its
    // type, for good; none names another origin.
    let digest = html
        .split("/ui/")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap()
        .to_owned();
    let prefix = format!("/ui/{digest}/");
    let mut pending = referenced(&html, &prefix);
    let mut seen = BTreeSet::new();
    while let Some(name) = pending.pop_first() {
        if !seen.insert(name.clone()) {
            continue;
        }
        let answer = fetch(&format!("{base}{prefix}{name}")).await;
        assert_eq!(answer.status(), StatusCode::OK, "{name}");
        let wanted = match name.rsplit('.').next() {
            Some("js") => "text/javascript; charset=utf-8",
            Some("css") => "text/css; charset=utf-8",
            Some("svg") => "image/svg+xml",
            other => panic!("unexpected asset type {other:?}"),
        };
        assert_eq!(header(&answer, CONTENT_TYPE), wanted, "{name}");
        assert_eq!(
            header(&answer, CACHE_CONTROL),
            "public, max-age=31536000, immutable",
            "{name}"
        );
        assert_strict_policy(&answer);
        // The SVG namespace names no resource; nothing else may point outside.
        let text = answer.text().await.unwrap();
        let rest = text.replace("http://www.w3.org/2000/svg", "");
        for outside in ["http:", "https:", "url(", "@import"] {
            assert!(!rest.contains(outside), "{name} refers to `{outside}`");
        }
        pending.extend(referenced(&text, &prefix).difference(&seen).cloned());
    }
    for expected in ["app.js", "style.css", "favicon.svg", "chart.js", "map.js"] {
        assert!(seen.contains(expected), "{expected} not loaded: {seen:?}");
    }

    // Under another digest (a page of an earlier binary) a file is served but revalidated; an
    // unknown file is a 404 naming it.
    let stale = fetch(&format!("{base}/ui/0123456789abcdef/app.js")).await;
    assert_eq!(stale.status(), StatusCode::OK);
    assert_eq!(header(&stale, CACHE_CONTROL), "no-cache");
    let missing = fetch(&format!("{base}{prefix}nope.js")).await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let body: serde_json::Value = missing.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("nope.js"),
        "{body}"
    );

    // The data still needs a token.
    let services = fetch(&format!("{base}/v1/services")).await;
    assert_eq!(services.status(), StatusCode::UNAUTHORIZED);
}
