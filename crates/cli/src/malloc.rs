//! glibc malloc tuning for a data plane that moves bulk data through large buffers.
//!
//! By default glibc serves a block of 128 KiB or more with a fresh `mmap` (raising that threshold
//! as such blocks are freed) and gives the free memory at the top of the heap back to the system
//! as soon as it exceeds twice the threshold. A proxy relaying a bulk HTTP/2 stream allocates a
//! read buffer per frame (up to 256 KiB) and frees it once the frame is forwarded, so with the
//! defaults every frame lands on pages the kernel must map and zero again. In `bench/mesh-hop.sh`
//! that cost the receiving proxy about a fifth of its CPU on an mTLS bulk download (2.5 → 2.1
//! CPU s per GiB for both proxies). Fixed thresholds keep such buffers on the heap and keep up to
//! [`TRIM_THRESHOLD`] of freed heap for reuse.

#![allow(unsafe_code)]

/// Blocks at least this large get their own mapping; smaller ones (HTTP/2 frames) stay on the heap.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 1 << 20;
/// Free memory at the heap's top beyond this goes back to the system: twice an HTTP/2
/// connection's receive window, so that a window's worth of freed frames is reused.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: libc::c_int = 16 << 20;

/// Sets glibc's mmap and trim thresholds (a no-op with other C libraries). Call it first in
/// `main`. If glibc refuses a value, its defaults stay: slower for bulk relays, still correct.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters, under glibc's own arena lock; it is
    // called before any other thread exists and touches no memory of ours.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}
