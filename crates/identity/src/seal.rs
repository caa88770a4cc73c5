//! Encryption at rest: private keys, ACME credentials and session ticket keys are sealed with
//! the control plane's secrets key (AES-256-GCM, ring) before they reach the store.
//!
//! A sealed value is `1 | nonce (12 bytes) | ciphertext and tag`. Each value is bound to a label
//! (e.g. `certificate/shop.example.com`) as associated data, so a sealed key copied onto another
//! row does not open there.

use std::io::Write;
use std::path::{Path, PathBuf};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

/// Length of a secrets key file, in bytes.
pub const SECRETS_KEY_LEN: usize = 32;
/// The format byte that starts every sealed value.
const FORMAT: u8 = 1;

/// Why a secrets key could not be loaded or made, or a value not sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The key file does not exist.
    #[error("secrets key {0} does not exist (make one with 32 random bytes, e.g. `head -c 32 /dev/urandom > FILE`, mode 0600)")]
    Missing(PathBuf),
    /// The key file is not 32 bytes long.
    #[error("secrets key {path} is {len} bytes long; it must be exactly {SECRETS_KEY_LEN}")]
    WrongSize {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: usize,
    },
    /// The key file could not be read or written.
    #[error("secrets key {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A sealed value does not open with this key.
    #[error("{0} cannot be opened with this secrets key (sealed with another key, or damaged)")]
    Unsealable(String),
    /// The system's random number generator failed.
    #[error("the system random number generator failed")]
    Random,
}

/// The control plane's secrets key. Its `Debug` does not show the key.
pub struct SealingKey {
    key: LessSafeKey,
}

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealingKey(..)")
    }
}

impl SealingKey {
    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: &[u8; SECRETS_KEY_LEN]) -> Self {
        // AES-256 takes any 32 bytes: this cannot fail.
        let unbound = UnboundKey::new(&AES_256_GCM, bytes).unwrap_or_else(|_| unreachable!());
        SealingKey {
            key: LessSafeKey::new(unbound),
        }
    }

    /// Loads the key file at `path`: it must exist and hold exactly 32 bytes.
    pub fn load(path: &Path) -> Result<Self, SealError> {
        let bytes = std::fs::read(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                SealError::Missing(path.to_owned())
            } else {
                SealError::Io {
                    path: path.to_owned(),
                    source,
                }
            }
        })?;
        let key: [u8; SECRETS_KEY_LEN] =
            bytes
                .as_slice()
                .try_into()
                .map_err(|_| SealError::WrongSize {
                    path: path.to_owned(),
                    len: bytes.len(),
                })?;
        Ok(Self::from_bytes(&key))
    }

    /// Loads the key file at `path`, first writing 32 random bytes there (mode 0600) when it
    /// does not exist. Returns the key and whether it was made now.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool), SealError> {
        let mut key = [0u8; SECRETS_KEY_LEN];
        random(&mut key)?;
        let io = |source| SealError::Io {
            path: path.to_owned(),
            source,
        };
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        match options.open(path) {
            Ok(mut file) => {
                file.write_all(&key)
                    .and_then(|()| file.sync_all())
                    .map_err(io)?;
                Ok((Self::from_bytes(&key), true))
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Ok((Self::load(path)?, false))
            }
            Err(e) => Err(io(e)),
        }
    }

    /// Seals `plain`, bound to `label`.
    pub fn seal(&self, label: &str, plain: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        random(&mut nonce)?;
        let mut sealed = Vec::with_capacity(1 + NONCE_LEN + plain.len() + AES_256_GCM.tag_len());
        sealed.push(FORMAT);
        sealed.extend_from_slice(&nonce);
        let mut body = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(label.as_bytes()),
                &mut body,
            )
            .map_err(|_| SealError::Unsealable(label.to_owned()))?;
        sealed.extend_from_slice(&body);
        Ok(sealed)
    }

    /// Opens a value sealed with [`SealingKey::seal`] under the same `label`; an error naming
    /// `label` when it was sealed with another key or another label, or is damaged.
    pub fn open(&self, label: &str, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        let unsealable = || SealError::Unsealable(label.to_owned());
        let rest = match sealed.split_first() {
            Some((&FORMAT, rest)) if rest.len() >= NONCE_LEN => rest,
            _ => return Err(unsealable()),
        };
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| unsealable())?;
        let mut body = body.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(label.as_bytes()), &mut body)
            .map_err(|_| unsealable())?;
        Ok(plain.to_vec())
    }
}

/// Fills `buf` from the system's random number generator.
pub fn random(buf: &mut [u8]) -> Result<(), SealError> {
    SystemRandom::new().fill(buf).map_err(|_| SealError::Random)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_with_its_key_and_label_only() {
        let key = SealingKey::from_bytes(&[7; 32]);
        let sealed = key.seal("certificate/a.example", b"secret").unwrap();
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert_eq!(
            key.open("certificate/a.example", &sealed).unwrap(),
            b"secret"
        );

        let other = SealingKey::from_bytes(&[8; 32]);
        let err = other.open("certificate/a.example", &sealed).unwrap_err();
        assert!(err.to_string().contains("certificate/a.example"), "{err}");
        assert!(key.open("certificate/b.example", &sealed).is_err());
        let mut damaged = sealed.clone();
        *damaged.last_mut().unwrap() ^= 1;
        assert!(key.open("certificate/a.example", &damaged).is_err());
        assert!(key.open("certificate/a.example", &[]).is_err());
        assert!(key.open("certificate/a.example", &[1, 2]).is_err());
    }

    #[test]
    fn a_key_file_must_exist_and_hold_32_bytes_unless_made() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.key");
        let missing = SealingKey::load(&path).unwrap_err();
        assert!(matches!(missing, SealError::Missing(_)), "{missing}");
        std::fs::write(&path, [0u8; 31]).unwrap();
        let short = SealingKey::load(&path).unwrap_err().to_string();
        assert!(
            short.contains("31 bytes") && short.contains("32"),
            "{short}"
        );
        std::fs::remove_file(&path).unwrap();

        let (made, created) = SealingKey::load_or_create(&path).unwrap();
        assert!(created);
        let sealed = made.seal("x", b"y").unwrap();
        let (loaded, created) = SealingKey::load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(loaded.open("x", &sealed).unwrap(), b"y");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
