//! The store under a scan: ten times its size of objects asked for once each, while a hot set
//! keeps being asked for. The hot set stays, and the byte bound holds after every insert.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use meridian_cache::{CacheKey, Lookup, Object, QueryKey, Store, StoreLimits, Timing, Variant};

const MAX_BYTES: u64 = 1 << 20;

fn key(path: &str) -> CacheKey {
    CacheKey::of_uri("https", "shop.example.com", path, &QueryKey::All)
}

fn object() -> Object {
    Object::new(
        StatusCode::OK,
        HeaderMap::new(),
        Bytes::from(vec![b'x'; 1024]),
        Timing::new(&HeaderMap::new(), SystemTime::now(), SystemTime::now()),
        Duration::from_secs(60),
        Variant::default(),
        Vec::new(),
    )
}

/// A lookup, and an insert after a miss: what the edge does for each request.
fn request(store: &Store, path: &str) -> bool {
    let key = key(path);
    match store.lookup(&key, &HeaderMap::new()) {
        Lookup::Hit(_) => true,
        _ => {
            store.insert(key, Arc::new(object()));
            assert!(store.bytes() <= MAX_BYTES, "{} bytes held", store.bytes());
            false
        }
    }
}

#[test]
fn a_scan_of_ten_times_the_size_keeps_the_hot_set_and_the_byte_bound() {
    let store = Store::new(StoreLimits {
        max_bytes: MAX_BYTES,
        max_object_bytes: 64 << 10,
    });
    let weight = object().weight() as u64;
    let hot: Vec<String> = (0..100).map(|i| format!("/hot/{i}")).collect();
    for _ in 0..20 {
        for path in &hot {
            request(&store, path);
        }
    }
    let cold = 10 * MAX_BYTES / weight;
    let mut hot_hits = 0;
    for i in 0..cold {
        request(&store, &format!("/cold/{i}"));
        // The hot set keeps being asked for, one of it per cold request.
        hot_hits += u64::from(request(&store, &hot[i as usize % hot.len()]));
    }
    let kept = hot
        .iter()
        .filter(|path| matches!(store.lookup(&key(path), &HeaderMap::new()), Lookup::Hit(_)))
        .count();
    println!(
        "{cold} cold objects of {weight} bytes through {MAX_BYTES} bytes: {kept}/100 hot kept, \
         hot hit ratio during the scan {:.3}, {} bytes held",
        hot_hits as f64 / cold as f64,
        store.bytes()
    );
    assert!(kept >= 95, "only {kept} of the hot set survived the scan");
    assert!(store.bytes() <= MAX_BYTES);
}
