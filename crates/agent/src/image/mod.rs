//! Instances run from OCI images: a per-node content-addressed store of verified blobs and
//! unpacked layers ([`store`]), kept within a size bound ([`evict`]), layers unpacked with overlayfs whiteouts ([`unpack`]), a bundle
//! (overlayfs root, or a copy of the layers where overlayfs is refused: [`copy_root`];
//! `config.json`) per instance ([`bundle`], [`spec`]) that runc runs in the
//! foreground ([`runc`]), so that the instance's supervisor watches runc like a process.

pub mod bundle;
pub mod copy_root;
pub mod evict;
pub mod runc;
pub mod spec;
pub mod store;
pub mod unpack;

pub use store::{ImageStore, Lease, Pulled, StoreMetrics};
