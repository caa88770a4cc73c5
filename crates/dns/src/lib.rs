//! Meridian's `.internal` DNS server. It answers names of the mesh from a table kept by its
//! owner (the agent), per caller: the same name may answer differently to two callers, and a
//! name a caller may not reach does not exist for it (NXDOMAIN). Reverse lookups of the
//! platform's network are answered from the same table. Other names are forwarded to an upstream
//! resolver and its answer relayed unchanged; without one, or when it refuses them or stops
//! answering, they fail fast (SERVFAIL).
//!
//! It holds no state of its own beyond the table, which its owner swaps whole, and whether the
//! upstream failed recently.

mod reverse;
mod server;
mod table;
mod upstream;

pub use reverse::PLATFORM_NETWORK;
pub use server::{serve_udp, DnsMetrics};
pub use table::{Entry, Table, Tables};
pub use upstream::{Upstream, TIMEOUTS_TO_FAIL};
