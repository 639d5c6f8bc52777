//! A bounded memory of tokens that verified, so a client that sends the same
//! token request after request pays for its signature check once.
//!
//! Only a token whose signature and claims verified, and that was valid
//! when it verified, is remembered, keyed by its exact text, with its uid
//! and validity; validity is still checked on every request. Gateways do the same (Envoy's `jwt_authn` cache, for one). Each
//! of the 16 shards holds at most `capacity / 16` tokens and is emptied
//! when full, so memory stays bounded whatever clients send.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};

use parking_lot::Mutex;

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

    /// What `token` said when it verified, if it is remembered.
    pub(super) fn get(&self, token: &str) -> Option<Verified> {
        if self.per_shard == 0 {
            return None;
        }
        self.shard(token).lock().get(token).cloned()
    }

    /// Remembers a token that verified.
    pub(super) fn insert(&self, token: &str, verified: Verified) {
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
