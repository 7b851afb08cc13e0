//! Sealed session state: the provider keeps no per-call routing state, so everything it needs
//! to route a later Accept, Reject or Cancel travels in the messages, encrypted and authenticated
//! under a provider key so that an endpoint can neither read nor alter what it echoes back.
//!
//! Token format: `v1.<key id>.<base64url(nonce ‖ ChaCha20-Poly1305 ciphertext)>`; the key id is
//! also the associated data. Keys rotate; the newest seals and the previous one still opens.

use std::sync::{Arc, RwLock};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{de::DeserializeOwned, Serialize};

use crate::db::{Db, StoreError};
use crate::shared::now_ms;

const VERSION: &str = "v1";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("state token is malformed")]
    Malformed,
    #[error("state token was sealed with a key that is no longer valid")]
    UnknownKey,
    #[error("state token failed authentication")]
    Forged,
}

struct SealKey {
    id: String,
    key: LessSafeKey,
}

/// The live keys, newest first.
#[derive(Clone)]
pub struct Sealer {
    keys: Arc<RwLock<Vec<SealKey>>>,
    rng: SystemRandom,
}

impl Default for Sealer {
    fn default() -> Self {
        Sealer {
            keys: Arc::new(RwLock::new(Vec::new())),
            rng: SystemRandom::new(),
        }
    }
}

impl Sealer {
    /// Makes a new key if the newest is older than `rotation_ms`, drops keys older than two
    /// periods, and loads what the database holds (shared by every replica).
    pub async fn refresh(&self, db: &Db, rotation_ms: i64) -> Result<(), StoreError> {
        self.refresh_at(db, rotation_ms, now_ms()).await
    }

    async fn refresh_at(&self, db: &Db, rotation_ms: i64, now: i64) -> Result<(), StoreError> {
        let mut secret = [0u8; 32];
        self.rng.fill(&mut secret).expect("system randomness");
        let mut id = [0u8; 6];
        self.rng.fill(&mut id).expect("system randomness");
        db.rotate_seal_key(
            &hex::encode(id),
            &URL_SAFE_NO_PAD.encode(secret),
            now,
            now - rotation_ms,
            now - 2 * rotation_ms,
        )
        .await?;
        let mut keys = Vec::new();
        for (id, secret, _) in db.seal_keys().await? {
            let bytes = URL_SAFE_NO_PAD
                .decode(&secret)
                .map_err(|_| StoreError::Corrupt(format!("seal key {id}")))?;
            let unbound = UnboundKey::new(&CHACHA20_POLY1305, &bytes)
                .map_err(|_| StoreError::Corrupt(format!("seal key {id}")))?;
            keys.push(SealKey {
                id,
                key: LessSafeKey::new(unbound),
            });
        }
        *self.keys.write().expect("seal keys lock") = keys;
        Ok(())
    }

    /// A sealer with fixed keys (id and 32-byte secret), newest first, without a database: for
    /// the fuzz target and tests.
    pub(crate) fn with_keys(keys: &[(&str, [u8; 32])]) -> Sealer {
        let keys = keys
            .iter()
            .map(|(id, secret)| SealKey {
                id: id.to_string(),
                key: LessSafeKey::new(
                    UnboundKey::new(&CHACHA20_POLY1305, secret).expect("a 32-byte key"),
                ),
            })
            .collect();
        Sealer {
            keys: Arc::new(RwLock::new(keys)),
            rng: SystemRandom::new(),
        }
    }

    pub fn seal<T: Serialize>(&self, value: &T) -> String {
        let keys = self.keys.read().expect("seal keys lock");
        let current = keys.first().expect("seal keys are loaded before serving");
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).expect("system randomness");
        let mut buffer = serde_json::to_vec(value).expect("state serializes");
        current
            .key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(current.id.as_bytes()),
                &mut buffer,
            )
            .expect("sealing cannot fail for in-range lengths");
        let mut out = Vec::with_capacity(NONCE_LEN + buffer.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buffer);
        format!("{VERSION}.{}.{}", current.id, URL_SAFE_NO_PAD.encode(out))
    }

    pub fn open<T: DeserializeOwned>(&self, token: &str) -> Result<T, SealError> {
        let mut parts = token.splitn(3, '.');
        let (Some(VERSION), Some(key_id), Some(body)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(SealError::Malformed);
        };
        let mut bytes = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| SealError::Malformed)?;
        if bytes.len() < NONCE_LEN + CHACHA20_POLY1305.tag_len() {
            return Err(SealError::Malformed);
        }
        let keys = self.keys.read().expect("seal keys lock");
        let key = keys
            .iter()
            .find(|k| k.id == key_id)
            .ok_or(SealError::UnknownKey)?;
        let nonce = Nonce::try_assume_unique_for_key(&bytes[..NONCE_LEN])
            .map_err(|_| SealError::Malformed)?;
        let plain = key
            .key
            .open_in_place(nonce, Aad::from(key_id.as_bytes()), &mut bytes[NONCE_LEN..])
            .map_err(|_| SealError::Forged)?;
        serde_json::from_slice(plain).map_err(|_| SealError::Forged)
    }

    pub fn key_ids(&self) -> Vec<String> {
        self.keys
            .read()
            .expect("seal keys lock")
            .iter()
            .map(|k| k.id.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct State {
        sid: String,
        n: u32,
    }

    async fn sealer_on_fresh_db() -> (Sealer, Db, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::connect(&format!("sqlite:{}", dir.path().join("t.db").display()), 2)
            .await
            .unwrap();
        let sealer = Sealer::default();
        sealer.refresh(&db, 3_600_000).await.unwrap();
        (sealer, db, dir)
    }

    #[tokio::test]
    async fn round_trip_and_tamper_detection() {
        let (sealer, _db, _dir) = sealer_on_fresh_db().await;
        let state = State {
            sid: "abc".into(),
            n: 7,
        };
        let token = sealer.seal(&state);
        assert_eq!(sealer.open::<State>(&token).unwrap(), state);

        let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
        let mut body = URL_SAFE_NO_PAD.decode(&parts[2]).unwrap();
        let last = body.len() - 20;
        body[last] ^= 1;
        parts[2] = URL_SAFE_NO_PAD.encode(body);
        assert_eq!(
            sealer.open::<State>(&parts.join(".")),
            Err(SealError::Forged)
        );
        assert_eq!(
            sealer.open::<State>("v1.zz.AAAA"),
            Err(SealError::Malformed)
        );
        assert_eq!(sealer.open::<State>("garbage"), Err(SealError::Malformed));
        let other_key = format!("v1.000000000000.{}", token.split('.').nth(2).unwrap());
        assert_eq!(sealer.open::<State>(&other_key), Err(SealError::UnknownKey));
    }

    #[tokio::test]
    async fn rotation_keeps_two_keys_live_and_drops_older() {
        let (sealer, db, _dir) = sealer_on_fresh_db().await;
        let first = sealer.seal(&State {
            sid: "a".into(),
            n: 1,
        });
        let hour = 3_600_000;
        let start = now_ms();
        sealer
            .refresh_at(&db, hour, start + hour / 2)
            .await
            .unwrap();
        assert_eq!(
            sealer.key_ids().len(),
            1,
            "a key younger than the period is kept as current"
        );
        sealer
            .refresh_at(&db, hour, start + hour + 1)
            .await
            .unwrap();
        assert_eq!(sealer.key_ids().len(), 2, "the previous key stays live");
        let second = sealer.seal(&State {
            sid: "b".into(),
            n: 2,
        });
        assert!(sealer.open::<State>(&first).is_ok());
        sealer
            .refresh_at(&db, hour, start + 2 * hour + 2)
            .await
            .unwrap();
        assert_eq!(sealer.open::<State>(&first), Err(SealError::UnknownKey));
        assert!(sealer.open::<State>(&second).is_ok());
    }
}
