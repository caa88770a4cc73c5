//! Meridian's `.internal` DNS server. It answers names of the mesh from a table kept by its
//! owner (the agent), per caller: the same name may answer differently to two callers, and a
//! name a caller may not reach does not exist for it (NXDOMAIN). Other names are forwarded to an
//! upstream resolver and its answer relayed unchanged.
//!
//! It holds no state of its own beyond the table, which its owner swaps whole.

mod server;
mod table;

pub use server::{serve_udp, DnsMetrics};
pub use table::{Entry, Table, Tables};
