//! Memory per stored object, measured: the resident memory a store of many 1 KiB objects
//! takes, per object, against what the store counts for each ([`Object::weight`]). Its own
//! test binary, so that nothing else allocates meanwhile.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, DATE, ETAG};
use http::{HeaderMap, HeaderValue, StatusCode};
use meridian_cache::{CacheKey, Object, QueryKey, Store, StoreLimits, Timing, Variant};

const OBJECTS: usize = 50_000;
const BODY: usize = 1024;

/// The process's resident memory in bytes (Linux).
fn resident() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn object(i: usize) -> Object {
    let mut headers = HeaderMap::new();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    headers.insert(
        DATE,
        HeaderValue::from_static("Mon, 07 Dec 2026 04:00:00 GMT"),
    );
    headers.insert(ETAG, HeaderValue::from(i));
    Object::new(
        StatusCode::OK,
        headers,
        Bytes::from(vec![b'x'; BODY]),
        Timing::new(&HeaderMap::new(), SystemTime::now(), SystemTime::now()),
        Duration::from_secs(3600),
        Variant::default(),
        Vec::new(),
    )
}

#[test]
fn memory_per_stored_1kib_object_is_within_its_counted_weight() {
    let (Some(before), store) = (
        resident(),
        Store::new(StoreLimits {
            max_bytes: 1 << 30,
            max_object_bytes: 1 << 20,
        }),
    ) else {
        eprintln!("no /proc/self/status: nothing measured");
        return;
    };
    let weight = object(0).weight() as u64;
    for i in 0..OBJECTS {
        let key = CacheKey::of_uri(
            "https",
            "shop.example.com",
            &format!("/objects/{i}"),
            &QueryKey::All,
        );
        store.insert(key, Arc::new(object(i)));
    }
    assert_eq!(store.keys(), OBJECTS as u64);
    let after = resident().unwrap_or(before);
    let per_object = after.saturating_sub(before) / OBJECTS as u64;
    println!(
        "{OBJECTS} objects of {BODY} bytes: {per_object} bytes resident per object \
         ({} beyond the content), {weight} counted per object",
        per_object.saturating_sub(BODY as u64)
    );
    assert!(
        per_object <= weight,
        "{per_object} bytes per object, {weight} counted"
    );
}
