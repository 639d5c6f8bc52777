//! The reference model: what every store must answer, built on the crate's
//! own rules (`Refill::is_due`, the kinds' capacity and initial balance,
//! `refund_across_refill`), not on a copy of any store.
//!
//! Per user it keeps each kind's raw state (balance and last refill, as a
//! store holds it before a due refill is applied), the idempotency keys,
//! and the states the user went through since the last point at which
//! Firestore was known to hold the model's state: a write-through store that
//! loses its Redis state reloads one of them.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tower_tickets::TicketKind;
use tower_tickets::store::{Adjustment, KindBalance, refund_across_refill};

use crate::idempotency::{KeyUse, Keys};

/// A cost as the model sees it: `(kind index, amount)` pairs.
pub type Cost = Vec<(usize, u32)>;

/// One user's raw state: per kind (by index), `None` until the store
/// records it.
pub type UserState = Vec<Option<KindBalance>>;

/// When a store records a user's kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Birth {
    /// Each kind when an operation first touches it (memory, Redis).
    PerKind,
    /// Every kind when an operation first touches the user (write-through:
    /// the document is created whole).
    WholeUser,
}

/// How many of a user's latest states the model keeps for reloads.
const KEPT_STATES: usize = 256;

/// A charge's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    Refused,
    Replayed,
    /// The key paid for another request: no balances are answered.
    KeyReused,
    /// The key's request has not finished: the harness never leaves one
    /// unfinished, so the model never expects this.
    InProgress,
}

/// What the model answers to a charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub decision: Decision,
    /// Balances of the cost's kinds, after the charge.
    pub balances: Vec<KindBalance>,
}

/// The model's record of an allowed charge, for its refund.
#[derive(Debug, Clone)]
pub struct Charged {
    pub uid: String,
    pub cost: Cost,
    pub key: Option<String>,
    /// Until when the key was bound to this charge (a later binding of the
    /// same key is another request's).
    pub key_until: Option<DateTime<Utc>>,
    /// The user's state sequence number the charge produced.
    pub seq: u64,
    pub last_refills: Vec<DateTime<Utc>>,
    pub remaining_after: Vec<u32>,
}

/// A state the user went through.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub seq: u64,
    pub state: UserState,
    /// Whether the operation that made it writes through to Firestore (a
    /// refusal's refill does not).
    pub written: bool,
}

#[derive(Debug, Clone)]
struct User {
    state: UserState,
    keys: Keys,
    seq: u64,
    /// States since the last checkpoint, oldest first; never empty.
    history: Vec<Recorded>,
    /// Sequence ranges `(after, up_to]` whose charges a reload lost.
    lost: Vec<(u64, u64)>,
}

/// Every user's balances and keys.
#[derive(Debug, Clone)]
pub struct Model {
    kinds: Vec<Arc<TicketKind>>,
    birth: Birth,
    users: BTreeMap<String, User>,
}

/// `balance` with a due refill applied: topped up to capacity, never lowered.
pub fn refreshed(kind: &TicketKind, balance: KindBalance, now: DateTime<Utc>) -> KindBalance {
    if kind.refill_schedule().is_due(balance.last_refill, now) {
        KindBalance {
            remaining: balance.remaining.max(kind.capacity()),
            last_refill: now,
        }
    } else {
        balance
    }
}

impl Model {
    pub fn new(kinds: Vec<Arc<TicketKind>>, birth: Birth) -> Self {
        Self {
            kinds,
            birth,
            users: BTreeMap::new(),
        }
    }

    pub fn kinds(&self) -> &[Arc<TicketKind>] {
        &self.kinds
    }

    /// The users any operation touched.
    pub fn users(&self) -> impl Iterator<Item = &str> {
        self.users.keys().map(String::as_str)
    }

    /// Balances as a read at `now` shows them (a due refill applied, an
    /// unrecorded kind at its initial balance), for `kinds`.
    pub fn view(&self, uid: &str, kinds: &[usize], now: DateTime<Utc>) -> Vec<KindBalance> {
        let state = self.users.get(uid).map(|u| &u.state);
        kinds
            .iter()
            .map(|&k| {
                let kind = &self.kinds[k];
                match state.and_then(|s| s[k]) {
                    Some(balance) => refreshed(kind, balance, now),
                    None => KindBalance {
                        remaining: kind.initial_balance(),
                        last_refill: now,
                    },
                }
            })
            .collect()
    }

    /// The user's raw state (all `None` for a user never touched).
    pub fn raw(&self, uid: &str) -> UserState {
        self.users
            .get(uid)
            .map_or_else(|| vec![None; self.kinds.len()], |u| u.state.clone())
    }

    /// Records the user and `kinds` as the store does on first touch, and
    /// applies their due refills.
    fn touch(&mut self, uid: &str, kinds: &[usize], now: DateTime<Utc>) -> &mut User {
        let count = self.kinds.len();
        let user = self.users.entry(uid.to_string()).or_insert_with(|| User {
            state: vec![None; count],
            keys: Keys::default(),
            seq: 0,
            history: vec![Recorded {
                seq: 0,
                state: vec![None; count],
                written: true,
            }],
            lost: Vec::new(),
        });
        let born: Vec<usize> = match self.birth {
            Birth::WholeUser if user.state.iter().all(Option::is_none) => (0..count).collect(),
            _ => kinds.to_vec(),
        };
        let whole = born.len() == count && user.state.iter().all(Option::is_none);
        for k in born {
            user.state[k].get_or_insert(KindBalance {
                remaining: self.kinds[k].initial_balance(),
                last_refill: now,
            });
        }
        if whole && self.birth == Birth::WholeUser {
            // The document is created before anything is decided on it.
            user.seq += 1;
            user.history.push(Recorded {
                seq: user.seq,
                state: user.state.clone(),
                written: true,
            });
        }
        for &k in kinds {
            let balance = user.state[k].expect("touched kinds are recorded");
            user.state[k] = Some(refreshed(&self.kinds[k], balance, now));
        }
        user
    }

    /// What a charge's refills do even when nothing is charged (an answered
    /// refusal or replay, or an error that got as far as the script).
    pub fn touch_only(&mut self, uid: &str, cost: &Cost, now: DateTime<Utc>) {
        let kinds: Vec<usize> = cost.iter().map(|&(k, _)| k).collect();
        self.touch(uid, &kinds, now);
        self.record(uid, false);
    }

    /// A refund that gave nothing back still forgets the charge's key (if
    /// the key still serves it), as every store's refund does.
    pub fn forget_key_of(&mut self, charged: &Charged) {
        if let Some(user) = self.users.get_mut(&charged.uid) {
            user.keys.forget(charged.key.as_deref(), charged.key_until);
        }
    }

    /// A keyed charge whose caller dropped it after it charged: its key
    /// stays running (nobody marked its request finished).
    pub fn leave_key_running(&mut self, uid: &str, key: Option<&str>) {
        if let Some(user) = self.users.get_mut(uid) {
            user.keys.leave_running(key);
        }
    }

    /// Decides a charge and applies it.
    pub fn charge(
        &mut self,
        uid: &str,
        cost: &Cost,
        key: Option<&str>,
        now: DateTime<Utc>,
    ) -> (Expected, Option<Charged>) {
        let kinds: Vec<usize> = cost.iter().map(|&(k, _)| k).collect();
        let user = self.touch(uid, &kinds, now);
        let balances = |user: &User| -> Vec<KindBalance> {
            kinds
                .iter()
                .map(|&k| user.state[k].expect("touched"))
                .collect()
        };
        let affordable = cost
            .iter()
            .all(|&(k, amount)| user.state[k].expect("touched").remaining >= amount);
        let decision = match user.keys.classify(key, cost, now) {
            KeyUse::Replay => Decision::Replayed,
            KeyUse::Running => Decision::InProgress,
            KeyUse::Reused => Decision::KeyReused,
            KeyUse::Charge if affordable => Decision::Allowed,
            KeyUse::Charge => Decision::Refused,
        };
        if decision != Decision::Allowed {
            let expected = Expected {
                decision,
                balances: match decision {
                    Decision::KeyReused | Decision::InProgress => Vec::new(),
                    _ => balances(user),
                },
            };
            self.record(uid, false);
            return (expected, None);
        }
        for &(k, amount) in cost {
            if let Some(balance) = user.state[k].as_mut() {
                balance.remaining -= amount;
            }
        }
        let key_until = user.keys.bind(key, cost, now);
        let after = balances(user);
        let seq = self.record(uid, true);
        let charged = Charged {
            uid: uid.to_string(),
            cost: cost.clone(),
            key: key.map(str::to_string),
            key_until,
            seq,
            last_refills: after.iter().map(|b| b.last_refill).collect(),
            remaining_after: after.iter().map(|b| b.remaining).collect(),
        };
        let expected = Expected {
            decision,
            balances: after,
        };
        (expected, Some(charged))
    }

    /// Gives back a charge: in full when no refill happened since, else what
    /// the refill did not restore; nothing for a charge a reload lost.
    /// Returns what was given back per kind and the balances after.
    pub fn refund(
        &mut self,
        charged: &Charged,
        now: DateTime<Utc>,
    ) -> (Vec<u32>, Vec<KindBalance>) {
        let kinds: Vec<usize> = charged.cost.iter().map(|&(k, _)| k).collect();
        let capacities: Vec<u32> = kinds.iter().map(|&k| self.kinds[k].capacity()).collect();
        let user = self.touch(&charged.uid, &kinds, now);
        user.keys.forget(charged.key.as_deref(), charged.key_until);
        let lost = user
            .lost
            .iter()
            .any(|&(after, up_to)| after < charged.seq && charged.seq <= up_to);
        let mut refunded = Vec::new();
        let mut balances = Vec::new();
        for (i, &(k, amount)) in charged.cost.iter().enumerate() {
            let balance = user.state[k].as_mut().expect("touched");
            let back = if lost {
                0
            } else if balance.last_refill == charged.last_refills[i] {
                amount
            } else {
                refund_across_refill(charged.remaining_after[i], amount, capacities[i])
            };
            balance.remaining = balance.remaining.saturating_add(back);
            refunded.push(back);
            balances.push(*balance);
        }
        self.record(&charged.uid, true);
        (refunded, balances)
    }

    /// Grants or sets one kind's balance, after a due refill.
    pub fn adjust(
        &mut self,
        uid: &str,
        kind: usize,
        adjustment: Adjustment,
        now: DateTime<Utc>,
    ) -> KindBalance {
        let user = self.touch(uid, &[kind], now);
        let balance = user.state[kind].as_mut().expect("touched");
        balance.remaining = match adjustment {
            Adjustment::Grant(amount) => balance.remaining.saturating_add(amount),
            Adjustment::Set(value) => value,
            other => panic!("the model does not know {other:?}"),
        };
        let after = *balance;
        self.record(uid, true);
        after
    }

    /// Appends the user's state to its history if it changed; returns its
    /// sequence number.
    fn record(&mut self, uid: &str, written: bool) -> u64 {
        let user = self.users.get_mut(uid).expect("touched");
        let last = user.history.last().expect("never empty");
        if last.state == user.state {
            if written {
                user.history.last_mut().expect("never empty").written = true;
            }
            return user.seq;
        }
        user.seq += 1;
        user.history.push(Recorded {
            seq: user.seq,
            state: user.state.clone(),
            written,
        });
        // A reload brings back a recent state: keeping them all would make
        // every clone of the model, and so a long run, grow without bound.
        if user.history.len() > KEPT_STATES {
            user.history.drain(..user.history.len() - KEPT_STATES);
        }
        user.seq
    }

    /// The user's state may have been `state` for a while before it became
    /// what it is: a reload may bring that state back too.
    pub fn may_have_held(&mut self, uid: &str, state: UserState) {
        let Some(user) = self.users.get_mut(uid) else {
            return;
        };
        let now = std::mem::replace(&mut user.state, state);
        self.record(uid, false);
        self.users.get_mut(uid).expect("a known user").state = now;
        self.record(uid, false);
    }

    /// The states a reload from Firestore may bring back: in sync mode those
    /// since the last written one (a refusal's refill may not be written),
    /// in async mode any since the checkpoint.
    pub fn reloadable(&self, uid: &str, sync: bool) -> Vec<Recorded> {
        let Some(user) = self.users.get(uid) else {
            return Vec::new();
        };
        let from = if sync {
            user.history.iter().rposition(|r| r.written).unwrap_or(0)
        } else {
            0
        };
        user.history[from..].to_vec()
    }

    /// The user's store reloaded the recorded state `seq`: later charges
    /// are lost.
    pub fn adopt(&mut self, uid: &str, seq: u64) {
        let user = self.users.get_mut(uid).expect("a known user");
        let index = user
            .history
            .iter()
            .position(|r| r.seq == seq)
            .expect("a recorded state");
        if index + 1 < user.history.len() {
            user.lost.push((seq, user.seq));
        }
        user.state = user.history[index].state.clone();
        user.seq += 1;
        let state = user.state.clone();
        user.history.push(Recorded {
            seq: user.seq,
            state,
            written: true,
        });
    }

    /// The user's state as the model holds it, `None` for a user never
    /// touched.
    pub fn state(&self, uid: &str) -> Option<UserState> {
        self.users.get(uid).map(|user| user.state.clone())
    }

    /// Somebody edited the user's state in the source: `state` is the truth
    /// as of now; no earlier state can come back.
    pub fn edit(&mut self, uid: &str, state: UserState) {
        let user = self.users.get_mut(uid).expect("a known user");
        user.state = state;
        self.record(uid, true);
        self.checkpoint(uid);
    }

    /// Firestore holds the user's current state: forget older ones.
    pub fn checkpoint(&mut self, uid: &str) {
        if let Some(user) = self.users.get_mut(uid) {
            let last = user.history.pop().expect("never empty");
            user.history = vec![last];
        }
    }

    /// Redis alone lost every user: each starts over as new.
    pub fn forget_users(&mut self) {
        self.users.clear();
    }

    /// Redis lost every idempotency key.
    pub fn forget_keys(&mut self) {
        for user in self.users.values_mut() {
            user.keys.clear();
        }
    }
}
