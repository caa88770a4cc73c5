//! The control planes assembled: [`run_regional`] and [`run_global`] start every task of a
//! plane under a [`Supervisor`](crate::supervise::Supervisor) and run until told to stop or
//! until an essential task ends. They hold no global state, so a test (or any program) can run
//! several planes in one process.

mod global;
mod regional;

use std::net::SocketAddr;
use std::sync::Arc;

pub use global::{run_global, GlobalOptions};
pub use regional::{run_regional, RegionalOptions};

use crate::supervise::TaskEnded;

/// Where a plane says, for an operator, what it does (where it listens, which CA it loaded, the
/// first admin token): one line at a time. `meridian control` prints the lines; tools read the
/// addresses chosen for port 0 from them.
pub type Say = Arc<dyn Fn(&str) + Send + Sync>;

/// Why a control plane did not start, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// An option is wrong (named as `meridian control` names it).
    #[error("{option}: {reason}")]
    Option {
        /// The option, e.g. `--region`.
        option: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A port could not be bound.
    #[error("listening for {what} on {address} (is the port in use?): {source}")]
    Listen {
        /// What the port is for.
        what: &'static str,
        /// The address.
        address: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// Something the plane needs at start could not be made or loaded.
    #[error("{what}: {reason}")]
    Start {
        /// What.
        what: String,
        /// Why.
        reason: String,
    },
    /// The plane was told to stop before it had started.
    #[error("stopped before {0}")]
    Stopped(&'static str),
    /// An essential task ended.
    #[error(transparent)]
    Task(#[from] TaskEnded),
}

impl RunError {
    /// A start failure: `what` could not be done because of `reason`.
    fn start(what: impl Into<String>, reason: impl std::fmt::Display) -> RunError {
        RunError::Start {
            what: what.into(),
            reason: reason.to_string(),
        }
    }
}

/// Binds `address` for `what`.
fn bind(address: SocketAddr, what: &'static str) -> Result<tokio::net::TcpListener, RunError> {
    meridian_xds::listen(address).map_err(|source| RunError::Listen {
        what,
        address,
        source,
    })
}

/// The address `listener` is bound to.
fn local(listener: &tokio::net::TcpListener) -> Result<SocketAddr, RunError> {
    listener
        .local_addr()
        .map_err(|e| RunError::start("reading a bound address", e))
}
