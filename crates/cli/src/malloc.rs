//! The memory allocator of every Meridian process: mimalloc instead of the C library's malloc.
//!
//! The proxy allocates and frees a few small blocks per request (header maps, HTTP/2 stream
//! state, futures) and relays bulk data through buffers of up to 256 KiB. glibc's malloc spends
//! about an eighth of the proxy's instructions per HTTP/2 request on that (`_int_malloc`,
//! `_int_free`, consolidation), over lists spread across its arena; mimalloc's per-thread,
//! size-class pages serve the same blocks from a few cache lines and keep freed bulk buffers
//! for reuse instead of unmapping them (which glibc had to be tuned not to do, for
//! `bench/mesh-hop.sh`). Measured with `bench/edge-tls.sh`: CPU per HTTP/2 request through the
//! edge about 6% lower, idle RSS about 0.4 MiB higher.

/// The allocator every allocation of the process goes through.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
