//! The admin tokens the global control plane confirmed to this region, kept only as SHA-256
//! digests in a file of the region's data directory: while the global control plane is away,
//! an administrator whose token it confirmed before can still make join tokens here (a region
//! keeps admitting nodes on its own). A token the global control plane refuses is forgotten.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

/// Digests of confirmed admin tokens, with the file that keeps them.
#[derive(Debug)]
pub struct KnownAdmins {
    path: PathBuf,
    digests: Mutex<BTreeSet<String>>,
}

impl KnownAdmins {
    /// The digests stored at `path` (none if the file is missing or unreadable, which is
    /// logged: it is only a fallback).
    pub fn open(path: &Path) -> KnownAdmins {
        let digests = match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "ignoring a bad file of known admin tokens");
                BTreeSet::new()
            }),
            Err(_) => BTreeSet::new(),
        };
        KnownAdmins {
            path: path.to_owned(),
            digests: Mutex::new(digests),
        }
    }

    /// Whether `token` was confirmed as the admin token.
    pub fn contains(&self, token: &str) -> bool {
        self.lock().contains(&digest(token))
    }

    /// Records that `token` is (`true`) or is not (`false`) the admin token.
    pub fn set(&self, token: &str, admin: bool) {
        let mut digests = self.lock();
        let changed = if admin {
            digests.insert(digest(token))
        } else {
            digests.remove(&digest(token))
        };
        if changed {
            if let Err(e) = self.persist(&digests) {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot keep the known admin tokens");
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        // The set is valid after any panic (each change is one insert or remove).
        self.digests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writes `digests` to a new file and renames it over the old one.
    fn persist(&self, digests: &BTreeSet<String>) -> std::io::Result<()> {
        let text = serde_json::to_string(digests).map_err(std::io::Error::other)?;
        let fresh = self.path.with_extension("json.new");
        std::fs::write(&fresh, text)?;
        std::fs::rename(&fresh, &self.path)
    }
}

fn digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirmed_tokens_are_kept_as_digests_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known-admins.json");
        let known = KnownAdmins::open(&path);
        known.set("mrd_secret", true);
        assert!(known.contains("mrd_secret"));
        assert!(!known.contains("mrd_other"));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("mrd_secret"));
        let again = KnownAdmins::open(&path);
        assert!(again.contains("mrd_secret"));
        again.set("mrd_secret", false);
        assert!(!KnownAdmins::open(&path).contains("mrd_secret"));
    }
}
