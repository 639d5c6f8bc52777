//! A bounded memory of tokens that verified, so a client that sends the same
//! token request after request pays for its signature check once.
//!
//! Only a token whose signature and claims verified, and that was valid
//! when it verified, is remembered, keyed by its exact text, with its uid
//! and validity; validity is still checked on every request. Gateways do
//! the same (Envoy's `jwt_authn` cache, for one). Each of the 16 shards
//! holds at most `capacity / 16` tokens (of at most 8 KiB) and is emptied
//! when full, so memory stays bounded whatever clients send.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};

use chrono::{DateTime, Utc};
use parking_lot::Mutex;

use super::IdentityError;
use crate::uid::Uid;

const SHARDS: usize = 16;

/// Verified tokens by their text.
type Shard = Mutex<HashMap<Box<str>, Verified>>;

/// What a verified token said.
#[derive(Clone)]
pub(super) struct Verified {
    pub(super) uid: Uid,
    /// Expiry, in seconds since the epoch.
    pub(super) exp: i64,
    /// Not before, in seconds since the epoch, if the token says.
    pub(super) nbf: Option<i64>,
}

impl Verified {
    /// Whether the token is valid at `now`: not expired, and not before its
    /// `nbf`, each give or take `leeway_secs`.
    fn check_at(&self, now: DateTime<Utc>, leeway_secs: i64) -> Result<(), IdentityError> {
        let now = now.timestamp();
        if self.exp.saturating_add(leeway_secs) <= now {
            return Err(IdentityError::Invalid {
                reason: "the token has expired".into(),
            });
        }
        if self
            .nbf
            .is_some_and(|nbf| nbf.saturating_sub(leeway_secs) > now)
        {
            return Err(IdentityError::Invalid {
                reason: "the token is not valid yet (nbf)".into(),
            });
        }
        Ok(())
    }
}

pub(super) struct VerifiedTokens {
    capacity: usize,
    hasher: RandomState,
    per_shard: usize,
    shards: Box<[Shard]>,
}

impl VerifiedTokens {
    /// A memory of at most about `capacity` tokens; 0 remembers none.
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            hasher: RandomState::new(),
            per_shard: capacity.div_ceil(SHARDS),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    /// The capacity it was made with.
    pub(super) fn capacity(&self) -> usize {
        self.capacity
    }

    fn shard(&self, token: &str) -> &Shard {
        &self.shards[self.hasher.hash_one(token) as usize % SHARDS]
    }

    /// The uid of `token`, valid at `now` give or take `leeway_secs`: what
    /// it said when it verified, if it is remembered, or else what `verify`
    /// finds now (remembered if the token is valid at `now`).
    pub(super) fn uid_of(
        &self,
        token: &str,
        now: DateTime<Utc>,
        leeway_secs: i64,
        verify: impl FnOnce(&str) -> Result<Verified, IdentityError>,
    ) -> Result<Uid, IdentityError> {
        if let Some(verified) = self.get(token) {
            verified.check_at(now, leeway_secs)?;
            return Ok(verified.uid);
        }
        let verified = verify(token)?;
        verified.check_at(now, leeway_secs)?;
        self.insert(token, verified.clone());
        Ok(verified.uid)
    }

    /// What `token` said when it verified, if it is remembered.
    fn get(&self, token: &str) -> Option<Verified> {
        if self.per_shard == 0 {
            return None;
        }
        self.shard(token).lock().get(token).cloned()
    }

    /// Remembers a token that verified.
    fn insert(&self, token: &str, verified: Verified) {
        if self.per_shard == 0 {
            return;
        }
        let mut shard = self.shard(token).lock();
        // Full: start over rather than track ages (a miss costs one check).
        if shard.len() >= self.per_shard {
            shard.clear();
        }
        shard.insert(token.into(), verified);
    }
}
