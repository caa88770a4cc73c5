//! An instance's output, kept by its agent in files that rotate, and read back for queries.
//!
//! Each stream has its files under `<state>/logs/<org>.<app>.<instance>/`: `stdout.log` and
//! `stderr.log`, each moved to `.1` (and `.1` to `.2`, the oldest dropped) once it holds
//! [`MAX_LOG_BYTES`]: at most three files of 10 MiB per stream, 60 MiB per instance. Each
//! line is one record in the CRI logging format (as Kubernetes' kubelet writes them):
//! `<RFC 3339 time with nanoseconds> <stream> <F|P> <line>`, where `P` marks part of a line
//! longer than [`MAX_LINE_BYTES`] that goes on in the next record.

mod format;
mod keep;
mod query;
mod read;

pub use format::Stream;
pub use keep::{keep, MAX_LOG_BYTES};
pub use query::{answer_locally, AgentLogs, LocalQuery};

use std::path::{Path, PathBuf};

pub use meridian_model::logs::MAX_LINE_BYTES;

/// Rotated files kept besides the current one.
pub const KEPT: u32 = 2;

/// Where the logs of `instance` (`<org>.<app>.<instance>`) go under the agent's state
/// directory.
pub fn log_dir(state_dir: &Path, instance: &str) -> PathBuf {
    state_dir.join("logs").join(instance)
}

/// The files of `stream` in `dir`, oldest first: `stdout.log.2`, `stdout.log.1`,
/// `stdout.log`.
pub fn files(dir: &Path, stream: Stream) -> Vec<PathBuf> {
    let current = dir.join(stream.file_name());
    let mut files: Vec<PathBuf> = (1..=KEPT).rev().map(|n| numbered(&current, n)).collect();
    files.push(current);
    files
}

/// `path.n`.
fn numbered(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}
