//! The model's view of idempotency keys, in one place so that a change of
//! their semantics is one change here.
//!
//! Today's rule: a key that paid for a charge of the same user within
//! [`IDEMPOTENCY_TTL`] answers `Replayed` and charges nothing; a refund
//! forgets the charge's key; Redis forgets keys with the rest of its state.

use std::collections::HashMap;

use chrono::{DateTime, TimeDelta, Utc};
use tower_tickets::IDEMPOTENCY_TTL;

/// What a charge carrying a key amounts to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyUse {
    /// No key, or a key that paid for nothing still remembered: charge.
    Charge,
    /// The key already paid for `paid_for`: answer `Replayed`, charge
    /// nothing.
    Replay { paid_for: Vec<(usize, u32)> },
}

/// One user's keys and the request each paid for.
#[derive(Debug, Clone, Default)]
pub struct Keys {
    paid: HashMap<String, Paid>,
}

/// The request a key paid for, and until when it counts.
#[derive(Debug, Clone)]
struct Paid {
    cost: Vec<(usize, u32)>,
    until: DateTime<Utc>,
}

impl Keys {
    /// How a charge under `key` at `now` is to be treated.
    pub fn classify(&self, key: Option<&str>, now: DateTime<Utc>) -> KeyUse {
        match key.and_then(|k| self.paid.get(k)) {
            Some(paid) if paid.until > now => KeyUse::Replay {
                paid_for: paid.cost.clone(),
            },
            _ => KeyUse::Charge,
        }
    }

    /// Records that `key` paid for `cost` at `now`.
    pub fn bind(&mut self, key: Option<&str>, cost: &[(usize, u32)], now: DateTime<Utc>) {
        if let Some(key) = key {
            let ttl = TimeDelta::from_std(IDEMPOTENCY_TTL).expect("a day fits");
            let paid = Paid {
                cost: cost.to_vec(),
                until: now + ttl,
            };
            self.paid.insert(key.to_string(), paid);
        }
    }

    /// A refund forgets the key of the charge it gives back.
    pub fn forget(&mut self, key: Option<&str>) {
        if let Some(key) = key {
            self.paid.remove(key);
        }
    }

    /// Redis lost every key.
    pub fn clear(&mut self) {
        self.paid.clear();
    }
}
