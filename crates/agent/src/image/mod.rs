//! Instances run from OCI images: a per-node content-addressed store of verified blobs and
//! unpacked layers ([`store`]), layers unpacked with overlayfs whiteouts ([`unpack`]), a bundle
//! (overlayfs root, `config.json`) per instance ([`bundle`], [`spec`]) that runc runs in the
//! foreground ([`runc`]), so that the instance's supervisor watches runc like a process.

pub mod bundle;
pub mod runc;
pub mod spec;
pub mod store;
pub mod unpack;

pub use store::{ImageStore, Pulled};
