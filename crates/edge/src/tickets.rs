//! TLS session tickets every edge can open: encrypted with keys the global control plane sends
//! all edges (the `session-ticket-keys` Secret), so that a client resumes its session on
//! whichever edge it reaches next. Until keys arrive, rustls' own ticketer (keys of this
//! process) is used.

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::server::ProducesTickets;

/// The length of a session ticket key (Envoy's format): a 16-byte name, a 32-byte HMAC secret
/// (unused: the AEAD authenticates) and a 32-byte AES key.
pub const KEY_LEN: usize = 80;
const NAME_LEN: usize = 16;

/// How long a client may keep a ticket, in seconds (a hint; the keys' rotation bounds it).
const LIFETIME: u32 = 6 * 60 * 60;

/// One key: its name (written in front of each ticket it seals) and its AES-256-GCM key.
struct TicketKey {
    name: [u8; NAME_LEN],
    key: LessSafeKey,
}

impl TicketKey {
    fn new(bytes: &[u8]) -> Result<TicketKey, String> {
        let bytes: &[u8; KEY_LEN] = bytes
            .try_into()
            .map_err(|_| format!("a key of {} bytes, not {KEY_LEN}", bytes.len()))?;
        let mut name = [0; NAME_LEN];
        name.copy_from_slice(&bytes[..NAME_LEN]);
        let unbound = UnboundKey::new(&AES_256_GCM, &bytes[KEY_LEN - 32..])
            .map_err(|_| "an AES key ring refuses".to_owned())?;
        Ok(TicketKey {
            name,
            key: LessSafeKey::new(unbound),
        })
    }
}

/// A [`ProducesTickets`] over shared keys that can be replaced at run time: a ticket is
/// `name ‖ nonce ‖ AES-256-GCM(state)` (the name authenticated as associated data); the first
/// key seals, every key opens. With no keys, rustls' own ticketer.
pub struct SharedTickets {
    keys: ArcSwapOption<Vec<TicketKey>>,
    fallback: Arc<dyn ProducesTickets>,
    random: SystemRandom,
}

impl std::fmt::Debug for SharedTickets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedTickets").finish_non_exhaustive()
    }
}

impl SharedTickets {
    /// A ticketer with no shared keys yet. Fails only if the system has no randomness.
    pub fn new() -> Result<SharedTickets, rustls::Error> {
        Ok(SharedTickets {
            keys: ArcSwapOption::empty(),
            fallback: rustls::crypto::ring::Ticketer::new()?,
            random: SystemRandom::new(),
        })
    }

    /// Checks `keys` (newest first, [`KEY_LEN`] bytes each) and uses them from the next ticket
    /// on; an empty list goes back to this process's own keys. On error (naming the key by its
    /// index) nothing changes.
    pub fn set_keys(&self, keys: &[impl AsRef<[u8]>]) -> Result<(), String> {
        let keys: Vec<TicketKey> = keys
            .iter()
            .enumerate()
            .map(|(i, key)| TicketKey::new(key.as_ref()).map_err(|e| format!("keys[{i}]: {e}")))
            .collect::<Result<_, _>>()?;
        self.keys.store((!keys.is_empty()).then(|| Arc::new(keys)));
        Ok(())
    }
}

impl ProducesTickets for SharedTickets {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        LIFETIME
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let keys = self.keys.load();
        let Some(key) = keys.as_ref().and_then(|keys| keys.first()) else {
            return self.fallback.encrypt(plain);
        };
        let mut nonce = [0; NONCE_LEN];
        self.random.fill(&mut nonce).ok()?;
        let mut ticket = Vec::with_capacity(NAME_LEN + NONCE_LEN + plain.len() + 16);
        ticket.extend_from_slice(&key.name);
        ticket.extend_from_slice(&nonce);
        ticket.extend_from_slice(plain);
        let (head, body) = ticket.split_at_mut(NAME_LEN + NONCE_LEN);
        let tag = key
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&head[..NAME_LEN]),
                body,
            )
            .ok()?;
        ticket.extend_from_slice(tag.as_ref());
        Some(ticket)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        let keys = self.keys.load();
        let Some(keys) = keys.as_ref() else {
            return self.fallback.decrypt(cipher);
        };
        let name = cipher.get(..NAME_LEN)?;
        let Some(key) = keys.iter().find(|k| k.name == name) else {
            // Perhaps one sealed before the shared keys arrived.
            return self.fallback.decrypt(cipher);
        };
        let nonce =
            Nonce::try_assume_unique_for_key(cipher.get(NAME_LEN..NAME_LEN + NONCE_LEN)?).ok()?;
        let mut body = cipher.get(NAME_LEN + NONCE_LEN..)?.to_vec();
        let plain = key
            .key
            .open_in_place(nonce, Aad::from(name), &mut body)
            .ok()?;
        let length = plain.len();
        body.truncate(length);
        Some(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> Vec<u8> {
        (0..KEY_LEN as u8).map(|i| i.wrapping_mul(seed)).collect()
    }

    #[test]
    fn tickets_round_trip_and_survive_one_rotation() {
        let edge_a = SharedTickets::new().unwrap();
        let edge_b = SharedTickets::new().unwrap();
        for edge in [&edge_a, &edge_b] {
            edge.set_keys(&[key(3)]).unwrap();
        }
        let ticket = edge_a.encrypt(b"session state").unwrap();
        assert_eq!(edge_b.decrypt(&ticket).unwrap(), b"session state");
        // A flipped byte, a cut ticket: refused.
        let mut forged = ticket.clone();
        forged[NAME_LEN + NONCE_LEN] ^= 1;
        assert!(edge_b.decrypt(&forged).is_none());
        assert!(edge_b.decrypt(&ticket[..NAME_LEN + 4]).is_none());
        // A new key first: new tickets use it, the old key still opens old tickets.
        edge_b.set_keys(&[key(5), key(3)]).unwrap();
        let newer = edge_b.encrypt(b"later").unwrap();
        assert_eq!(&newer[..NAME_LEN], &key(5)[..NAME_LEN]);
        assert_eq!(edge_b.decrypt(&ticket).unwrap(), b"session state");
        // Once the old key is gone, its tickets are not opened.
        edge_b.set_keys(&[key(5)]).unwrap();
        assert!(edge_b.decrypt(&ticket).is_none());
        assert_eq!(edge_b.decrypt(&newer).unwrap(), b"later");
    }

    #[test]
    fn without_keys_the_process_keys_serve_and_a_bad_key_changes_nothing() {
        let edge = SharedTickets::new().unwrap();
        let own = edge.encrypt(b"x").unwrap();
        assert_eq!(edge.decrypt(&own).unwrap(), b"x");
        let error = edge.set_keys(&[key(3), vec![0; 79]]).unwrap_err();
        assert_eq!(error, "keys[1]: a key of 79 bytes, not 80");
        assert_eq!(edge.decrypt(&own).unwrap(), b"x");
    }
}
