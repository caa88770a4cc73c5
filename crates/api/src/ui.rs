//! The web dashboard, served at `/ui`: hand-written HTML, CSS and JavaScript built into the
//! binary at compile time, so that it needs no build step and loads nothing from elsewhere.
//!
//! These routes serve the assets only and need no token: the page asks for one and reads
//! everything through the public API with it, as any client does. Every answer carries a strict
//! Content-Security-Policy (scripts, styles and images from this origin only, no inline script
//! or style, no framing). Assets are served under a path holding a digest of all of them
//! (`/ui/<digest>/app.js`), cached for a year there; the page itself is revalidated each time
//! (`no-cache` with an `ETag`), so a new binary's page brings its new assets at once.

use std::sync::LazyLock;

use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG, IF_NONE_MATCH, REFERRER_POLICY,
    X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::extract::ApiPath;
use crate::ApiError;

/// The policy of every dashboard answer: nothing but this origin's scripts, styles, images and
/// API, no inline code, no plugins, no framing, no form posted anywhere.
const CONTENT_SECURITY_POLICY_VALUE: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// How the page and an asset under an old digest are cached: kept, but asked again each time.
const REVALIDATE: &str = "no-cache";
/// How an asset under the current digest is cached: its content never changes there.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// A file of the dashboard.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const JS: &str = "text/javascript; charset=utf-8";

/// The dashboard's files besides the page. Scripts are ES modules importing each other by
/// relative path, so they all live under one digest.
const ASSETS: &[Asset] = &[
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../ui/style.css"),
    },
    Asset {
        name: "favicon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("../ui/favicon.svg"),
    },
    Asset {
        name: "app.js",
        content_type: JS,
        body: include_bytes!("../ui/app.js"),
    },
    Asset {
        name: "api.js",
        content_type: JS,
        body: include_bytes!("../ui/api.js"),
    },
    Asset {
        name: "dom.js",
        content_type: JS,
        body: include_bytes!("../ui/dom.js"),
    },
    Asset {
        name: "format.js",
        content_type: JS,
        body: include_bytes!("../ui/format.js"),
    },
    Asset {
        name: "chart.js",
        content_type: JS,
        body: include_bytes!("../ui/chart.js"),
    },
    Asset {
        name: "map.js",
        content_type: JS,
        body: include_bytes!("../ui/map.js"),
    },
    Asset {
        name: "rollout.js",
        content_type: JS,
        body: include_bytes!("../ui/rollout.js"),
    },
    Asset {
        name: "signin.js",
        content_type: JS,
        body: include_bytes!("../ui/signin.js"),
    },
    Asset {
        name: "services.js",
        content_type: JS,
        body: include_bytes!("../ui/services.js"),
    },
    Asset {
        name: "service.js",
        content_type: JS,
        body: include_bytes!("../ui/service.js"),
    },
    Asset {
        name: "regions.js",
        content_type: JS,
        body: include_bytes!("../ui/regions.js"),
    },
    Asset {
        name: "deployments.js",
        content_type: JS,
        body: include_bytes!("../ui/deployments.js"),
    },
    Asset {
        name: "logs.js",
        content_type: JS,
        body: include_bytes!("../ui/logs.js"),
    },
];

/// The page, with `{{assets}}` where the assets' path goes.
const INDEX_TEMPLATE: &str = include_str!("../ui/index.html");

/// What the dashboard serves, worked out once.
struct Built {
    /// The digest of every asset, naming the path they are served under.
    digest: String,
    /// The page, pointing at the assets under `digest`.
    index: String,
    /// The page's `ETag`.
    index_etag: HeaderValue,
    /// Each asset's `ETag`, in the order of [`ASSETS`].
    etags: Vec<HeaderValue>,
}

static BUILT: LazyLock<Built> = LazyLock::new(|| {
    let mut all = Sha256::new();
    for asset in ASSETS {
        all.update(asset.name.as_bytes());
        all.update([0]);
        all.update(asset.body);
    }
    let digest = hex::encode(&all.finalize()[..8]);
    let index = INDEX_TEMPLATE.replace("{{assets}}", &format!("/ui/{digest}"));
    Built {
        index_etag: etag(index.as_bytes()),
        etags: ASSETS.iter().map(|a| etag(a.body)).collect(),
        index,
        digest,
    }
});

/// A strong `ETag` of `body`: a digest of it, quoted.
fn etag(body: &[u8]) -> HeaderValue {
    let digest = hex::encode(&Sha256::digest(body)[..12]);
    // Hex digits in quotes are always a valid header value.
    HeaderValue::from_str(&format!("\"{digest}\"")).unwrap_or(HeaderValue::from_static("\"\""))
}

/// `GET /ui`, `GET /ui/`: the page.
pub async fn index(headers: HeaderMap) -> Response {
    let built = &*BUILT;
    answer(
        &headers,
        "text/html; charset=utf-8",
        &built.index_etag,
        REVALIDATE,
        built.index.clone().into_bytes(),
    )
}

/// The path of an asset.
#[derive(Deserialize)]
pub struct AssetPath {
    /// The digest of the assets the page was built with.
    digest: String,
    /// The asset's file name.
    file: String,
}

/// `GET /ui/{digest}/{file}`: an asset; cached for good under the current digest, revalidated
/// under another (a page of an earlier binary still open).
pub async fn asset(ApiPath(path): ApiPath<AssetPath>, headers: HeaderMap) -> Response {
    let built = &*BUILT;
    let Some(at) = ASSETS.iter().position(|a| a.name == path.file) else {
        return ApiError::not_found(format!("dashboard file `{}`", path.file)).into_response();
    };
    let asset = &ASSETS[at];
    let cache = if path.digest == built.digest {
        IMMUTABLE
    } else {
        REVALIDATE
    };
    answer(
        &headers,
        asset.content_type,
        &built.etags[at],
        cache,
        asset.body.to_vec(),
    )
}

/// `body` with its headers, or 304 when the client holds it already (`If-None-Match`).
fn answer(
    request: &HeaderMap,
    content_type: &'static str,
    etag: &HeaderValue,
    cache: &'static str,
    body: Vec<u8>,
) -> Response {
    let fresh = request
        .get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| tag.trim() == "*" || tag.trim().trim_start_matches("W/") == *etag);
    let headers = [
        (CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (ETAG, etag.clone()),
        (CACHE_CONTROL, HeaderValue::from_static(cache)),
        (
            CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY_VALUE),
        ),
        (X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
        (X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
    ];
    if fresh {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    (headers, body).into_response()
}
