//! Compression of stored responses the origin did not compress: when a response may be
//! compressed (`meridian_cache::encoding::compressible`), its content is also kept gzip-coded,
//! made once when it is stored, off the async workers; answers pick the coding the request
//! accepts best.

use std::io::Write;

use bytes::Bytes;
use flate2::write::GzEncoder;
use flate2::Compression;
use http::HeaderMap;
use meridian_cache::encoding::{compressible, Coding};
use meridian_cache::Object;

/// `object` with its content gzip-coded too, if it may be compressed and that makes it
/// smaller.
pub async fn coded(object: Object) -> Object {
    let length = object.body.len();
    if !compressible(object.status, &object.headers(), &HeaderMap::new(), length) {
        return object;
    }
    let content = object.body.clone();
    match tokio::task::spawn_blocking(move || gzip(&content)).await {
        Ok(Ok(coded)) if coded.len() < length => object.with_coded(Coding::Gzip, coded),
        _ => object,
    }
}

fn gzip(content: &[u8]) -> std::io::Result<Bytes> {
    let mut encoder = GzEncoder::new(
        Vec::with_capacity(content.len() / 3),
        Compression::default(),
    );
    encoder.write_all(content)?;
    Ok(Bytes::from(encoder.finish()?))
}
