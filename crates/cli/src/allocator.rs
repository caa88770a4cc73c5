//! The process's memory allocator: mimalloc, for every component.
//!
//! A proxy's request path allocates and frees many small blocks per request (header maps,
//! HPACK entries, frame queues, futures); glibc malloc spent about 9% of the edge's instructions
//! per HTTP/2 request on them, and mimalloc's per-thread free lists cut the edge's instructions per
//! request by about 7% (callgrind, `bench/edge-tls.sh`'s h2 load). Bulk relays keep their large
//! frame buffers in mimalloc's segments, reused without new mappings, as the glibc thresholds this
//! replaces did (`bench/mesh-hop.sh`).

/// Every allocation of the process goes through mimalloc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
