//! The model's view of idempotency keys, in one place so that a change of
//! their semantics is one change here.
//!
//! The rule (DESIGN.md §5): a key that paid for a charge of the same user
//! within [`IDEMPOTENCY_TTL`] is bound to that request (here, its cost): the
//! same request again answers `Replayed` (the harness finishes every
//! answered request at once, as the layer does once its handler answered),
//! another request answers `KeyReused`; neither charges. A refund forgets
//! the charge's key, unless the key serves another request by then (it
//! expired, and a new request took it); Redis forgets keys with the rest of
//! its state.

use std::collections::HashMap;

use chrono::{DateTime, TimeDelta, Utc};
use tower_tickets::IDEMPOTENCY_TTL;

/// What a charge carrying a key amounts to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyUse {
    /// No key, or a key that paid for nothing still remembered: charge.
    Charge,
    /// The key already paid for this very request: answer `Replayed`,
    /// charge nothing.
    Replay,
    /// The same, but that request never finished (its caller dropped it
    /// after it charged): answer `InProgress`, charge nothing.
    Running,
    /// The key already paid for another request: answer `KeyReused`,
    /// charge nothing.
    Reused,
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
    finished: bool,
}

impl Keys {
    /// How a charge of `cost` under `key` at `now` is to be treated.
    pub fn classify(&self, key: Option<&str>, cost: &[(usize, u32)], now: DateTime<Utc>) -> KeyUse {
        match key.and_then(|k| self.paid.get(k)) {
            Some(paid) if paid.until > now && paid.cost == cost && !paid.finished => {
                KeyUse::Running
            }
            Some(paid) if paid.until > now && paid.cost == cost => KeyUse::Replay,
            Some(paid) if paid.until > now => KeyUse::Reused,
            _ => KeyUse::Charge,
        }
    }

    /// Records that `key` paid for `cost` at `now`; the binding's end,
    /// which tells this binding from a later one of the same key.
    pub fn bind(
        &mut self,
        key: Option<&str>,
        cost: &[(usize, u32)],
        now: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let key = key?;
        let ttl = TimeDelta::from_std(IDEMPOTENCY_TTL).expect("a day fits");
        let paid = Paid {
            cost: cost.to_vec(),
            until: now + ttl,
            finished: true,
        };
        // Expired keys are as good as absent: dropping them keeps a long
        // run's model (cloned for every answer it weighs) small.
        self.paid.retain(|_, paid| paid.until > now);
        self.paid.insert(key.to_string(), paid);
        Some(now + ttl)
    }

    /// A refund forgets the key of the charge it gives back, bound until
    /// `until`, if the key still serves that charge.
    pub fn forget(&mut self, key: Option<&str>, until: Option<DateTime<Utc>>) {
        if let Some(key) = key
            && self.paid.get(key).map(|paid| paid.until) == until
        {
            self.paid.remove(key);
        }
    }

    /// The request `key` paid for never finished: its caller dropped it
    /// after it charged, so nobody marked it done.
    pub fn leave_running(&mut self, key: Option<&str>) {
        if let Some(paid) = key.and_then(|key| self.paid.get_mut(key)) {
            paid.finished = false;
        }
    }

    /// Redis lost every key.
    pub fn clear(&mut self) {
        self.paid.clear();
    }
}
