//! One-time join tokens: made by an administrator for one identity, stored only as a digest with
//! their identity and expiry (in a file of the issuer's data directory), and redeemed at most
//! once. A region's control plane keeps those of its agents, gateways, edges and workloads; the
//! global control plane keeps those of regional control planes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::enroll::JoinToken;
use crate::SpiffeId;
use serde::{Deserialize, Serialize};

/// A token's record: who it admits and until when (seconds since the Unix epoch).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    spiffe_id: String,
    expires: u64,
}

/// Why the token store failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinTokensError {
    /// Reading or writing its file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file does not parse.
    #[error("{path}: {reason}")]
    Corrupt {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A token could not be made.
    #[error("making a token: {0}")]
    Token(#[from] crate::TlsError),
}

/// The region's outstanding join tokens, by digest.
#[derive(Debug)]
pub struct JoinTokens {
    path: PathBuf,
    entries: Mutex<BTreeMap<String, Entry>>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

impl JoinTokens {
    /// The tokens stored at `path` (none if the file does not exist yet).
    pub fn open(path: &Path) -> Result<JoinTokens, JoinTokensError> {
        let entries = match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| JoinTokensError::Corrupt {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => {
                return Err(JoinTokensError::Io {
                    path: path.display().to_string(),
                    source,
                })
            }
        };
        Ok(JoinTokens {
            path: path.to_owned(),
            entries: Mutex::new(entries),
        })
    }

    /// A new token admitting `id` for `ttl`, pinned to the installation of `bundle_pem`.
    pub fn create(
        &self,
        id: &SpiffeId,
        ttl: Duration,
        bundle_pem: &str,
    ) -> Result<JoinToken, JoinTokensError> {
        let token = JoinToken::generate(bundle_pem)?;
        let mut entries = self.lock();
        let now = unix_now();
        entries.retain(|_, entry| entry.expires > now);
        entries.insert(
            token.digest(),
            Entry {
                spiffe_id: id.to_string(),
                expires: now.saturating_add(ttl.as_secs()),
            },
        );
        self.persist(&entries)?;
        Ok(token)
    }

    /// Redeems `token`: the identity it admits, if it is known and unexpired; it is gone
    /// afterwards either way.
    pub fn redeem(&self, token: &JoinToken) -> Result<Option<SpiffeId>, JoinTokensError> {
        let mut entries = self.lock();
        let Some(entry) = entries.remove(&token.digest()) else {
            return Ok(None);
        };
        self.persist(&entries)?;
        if entry.expires <= unix_now() {
            return Ok(None);
        }
        Ok(SpiffeId::parse(&entry.spiffe_id).ok())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        // The map is valid after any panic (each change is one insert or remove).
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writes `entries` to a new file and renames it over the old one.
    fn persist(&self, entries: &BTreeMap<String, Entry>) -> Result<(), JoinTokensError> {
        let io = |source| JoinTokensError::Io {
            path: self.path.display().to_string(),
            source,
        };
        let text = serde_json::to_string_pretty(entries).map_err(|e| io(e.into()))?;
        let fresh = self.path.with_extension("json.new");
        std::fs::write(&fresh, text).map_err(io)?;
        std::fs::rename(&fresh, &self.path).map_err(io)
    }
}
