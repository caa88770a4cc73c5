//! The TLS session ticket keys every edge shares, so that a client resumes its session on
//! whichever edge it reaches: made here, sealed in the store, rotated every [`ROTATE_EVERY`]
//! (the newest encrypts; the [`KEEP`] newest decrypt), published as the
//! `edge/session-ticket-keys` Secret.

use meridian_identity::{random, SealError, SealingKey};
use meridian_store::{Fence, Store, StoreError};

/// How often a new key is made.
pub const ROTATE_EVERY: i64 = 12 * 3600;
/// How many keys are kept (so a ticket stays resumable for up to `KEEP * ROTATE_EVERY`).
pub const KEEP: usize = 3;
/// Length of one key (Envoy's and the edges' format).
pub const KEY_LEN: usize = 80;
const LABEL: &str = "session-ticket-keys";

/// One ticket key.
pub type TicketKey = [u8; KEY_LEN];

/// Why the keys could not be read or rotated.
#[derive(Debug, thiserror::Error)]
pub enum TicketKeysError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Sealing or opening failed.
    #[error(transparent)]
    Seal(#[from] SealError),
}

/// The stored keys (newest first) and when they were rotated, if any.
pub async fn load(
    store: &dyn Store,
    key: &SealingKey,
) -> Result<Option<(Vec<TicketKey>, i64)>, TicketKeysError> {
    let Some((sealed, rotated_at)) = store.get_ticket_keys().await? else {
        return Ok(None);
    };
    let plain = key.open(LABEL, &sealed)?;
    let keys = plain
        .chunks_exact(KEY_LEN)
        .filter_map(|chunk| TicketKey::try_from(chunk).ok())
        .collect();
    Ok(Some((keys, rotated_at)))
}

/// Makes a new key in front of `keys` (keeping the [`KEEP`] newest), stores them sealed as
/// rotated at `now` by the lease's holder (`fence`), and returns them.
pub async fn rotate(
    store: &dyn Store,
    key: &SealingKey,
    mut keys: Vec<TicketKey>,
    now: i64,
    fence: &Fence,
) -> Result<Vec<TicketKey>, TicketKeysError> {
    let mut fresh = [0u8; KEY_LEN];
    random(&mut fresh)?;
    keys.insert(0, fresh);
    keys.truncate(KEEP);
    let sealed = key.seal(LABEL, &keys.concat())?;
    store.put_ticket_keys(&sealed, now, Some(fence)).await?;
    Ok(keys)
}

/// When keys rotated at `rotated_at` are next rotated.
pub fn next_rotation(rotated_at: i64) -> i64 {
    rotated_at.saturating_add(ROTATE_EVERY)
}
