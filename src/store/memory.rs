//! The embedded store: balances in this process's memory.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, TimeDelta, Utc};
use parking_lot::Mutex;

use super::{
    AdjustOutcome, AdjustRequest, ChargeOutcome, ChargeRequest, KindBalance, Receipt,
    RefundOutcome, StoreFuture, TicketStore, refund_across_refill,
};
use crate::idempotency::{IDEMPOTENCY_TTL, IdempotencyKey, RequestFingerprint};
use crate::kind::TicketKind;
use crate::uid::Uid;

/// Lock stripes: enough that 2 to 16 cores rarely contend on unrelated users.
const SHARDS: usize = 64;

/// A user is forgotten once idle this many of their kinds' refill periods,
/// when forgetting changes nothing (as the Redis store's idle expiry).
const IDLE_PERIODS: u32 = 3;

/// One stripe is swept for forgettable users every this many changes, in
/// turn: each stripe every 16,384 changes.
const SWEEP_EVERY: u64 = 256;

/// An in-process store, for one-node apps, the demo and examples.
///
/// Each decision holds one lock stripe for a few hundred nanoseconds and
/// never across an `.await`, so charges are atomic under any concurrency.
/// State lives as long as the process; a restart forgets every balance.
/// Clones share the same balances.
///
/// Memory follows active users: a user idle for three of their kinds'
/// refill periods is forgotten when that changes nothing (every kind
/// starts at its capacity, none holds more than it, and no idempotency key
/// is remembered), since coming back as a new user gives what the due
/// refill would have. Stripes are swept in turn, a little at a time.
#[derive(Clone)]
pub struct MemoryStore {
    shared: Arc<Shared>,
}

struct Shared {
    hasher: RandomState,
    shards: Box<[Mutex<HashMap<Uid, UserRecord>>]>,
    /// Changes made so far: every `SWEEP_EVERY`-th sweeps the next stripe.
    changes: AtomicU64,
}

#[derive(Default)]
struct UserRecord {
    balances: Vec<(Arc<TicketKind>, KindBalance)>,
    /// Idempotency keys already used, by charges and adjustments.
    charged_keys: HashMap<IdempotencyKey, KeyRecord>,
}

/// What a used idempotency key is bound to, and how far its request got.
struct KeyRecord {
    expires: DateTime<Utc>,
    fingerprint: RequestFingerprint,
    finished: bool,
    /// An adjustment's first answer (empty for a charge).
    answer: Vec<KindBalance>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self {
            shared: Arc::new(Shared {
                hasher: RandomState::new(),
                shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
                changes: AtomicU64::new(0),
            }),
        }
    }

    /// How many users the store holds (idle ones are forgotten in time).
    pub fn users(&self) -> usize {
        self.shared
            .shards
            .iter()
            .map(|shard| shard.lock().len())
            .sum()
    }

    /// The lock stripe that holds `uid`.
    fn shard(&self, uid: &Uid) -> &Mutex<HashMap<Uid, UserRecord>> {
        &self.shared.shards[self.shared.hasher.hash_one(uid) as usize % SHARDS]
    }

    /// Runs `f` on `uid`'s record (created empty if absent) under its lock,
    /// at `now`; now and then sweeps a stripe for forgettable users.
    fn with_user<T>(
        &self,
        uid: &Uid,
        now: DateTime<Utc>,
        f: impl FnOnce(&mut UserRecord) -> T,
    ) -> T {
        let result = f(self.shard(uid).lock().entry(uid.clone()).or_default());
        let change = self.shared.changes.fetch_add(1, Ordering::Relaxed);
        if change.is_multiple_of(SWEEP_EVERY) {
            let stripe = (change / SWEEP_EVERY) as usize % SHARDS;
            self.shared.shards[stripe]
                .lock()
                .retain(|_, user| !user.forgettable(now));
        }
        result
    }

    /// Reads `uid`'s record if present, without creating it.
    fn peek_user<T>(&self, uid: &Uid, f: impl FnOnce(Option<&UserRecord>) -> T) -> T {
        f(self.shard(uid).lock().get(uid))
    }

    /// Changes `uid`'s record if present, without creating it.
    fn peek_user_mut(&self, uid: &Uid, f: impl FnOnce(&mut UserRecord)) {
        if let Some(user) = self.shard(uid).lock().get_mut(uid) {
            f(user);
        }
    }
}

impl UserRecord {
    /// Whether forgetting the user at `now` changes nothing: idle for
    /// [`IDLE_PERIODS`] of every kind, each starting at its capacity and
    /// holding no more, no idempotency key remembered.
    fn forgettable(&mut self, now: DateTime<Utc>) -> bool {
        self.charged_keys.retain(|_, record| record.expires > now);
        self.charged_keys.is_empty()
            && self.balances.iter().all(|(kind, balance)| {
                let idle = TimeDelta::seconds(
                    i64::try_from(kind.refill_schedule().window_secs() * u64::from(IDLE_PERIODS))
                        .unwrap_or(i64::MAX),
                );
                kind.initial_balance() == kind.capacity()
                    && balance.remaining <= kind.capacity()
                    && balance.last_refill + idle <= now
            })
    }

    /// The kind's balance with a due refill applied, created on first use.
    fn refreshed(&mut self, kind: &Arc<TicketKind>, now: DateTime<Utc>) -> &mut KindBalance {
        let index = match self
            .balances
            .iter()
            .position(|(k, _)| k.name() == kind.name())
        {
            Some(index) => index,
            None => {
                let fresh = KindBalance {
                    remaining: kind.initial_balance(),
                    last_refill: now,
                };
                self.balances.push((kind.clone(), fresh));
                self.balances.len() - 1
            }
        };
        let balance = &mut self.balances[index].1;
        *balance = refreshed(*balance, kind, now);
        balance
    }

    /// Records that `key` served `fingerprint` at `now`: an adjustment's,
    /// finished with its `answer`, or a charge's, running.
    fn remember_key(
        &mut self,
        key: &IdempotencyKey,
        fingerprint: RequestFingerprint,
        now: DateTime<Utc>,
        answer: Option<Vec<KindBalance>>,
    ) {
        let ttl = TimeDelta::from_std(IDEMPOTENCY_TTL).unwrap_or(TimeDelta::MAX);
        let record = KeyRecord {
            expires: now
                .checked_add_signed(ttl)
                .unwrap_or(DateTime::<Utc>::MAX_UTC),
            fingerprint,
            finished: answer.is_some(),
            answer: answer.unwrap_or_default(),
        };
        self.charged_keys.insert(key.clone(), record);
    }

    /// What an adjustment under `key` for `fingerprint` must answer instead
    /// of changing anything, if the key already served and has not expired.
    fn already_adjusted(
        &mut self,
        key: &IdempotencyKey,
        fingerprint: &RequestFingerprint,
        now: DateTime<Utc>,
    ) -> Option<AdjustOutcome> {
        self.charged_keys.retain(|_, record| record.expires > now);
        let record = self.charged_keys.get(key)?;
        Some(if record.fingerprint != *fingerprint {
            AdjustOutcome::KeyReused
        } else {
            AdjustOutcome::Replayed {
                balances: record.answer.clone(),
            }
        })
    }

    /// What a charge under `key` for `fingerprint` must answer instead of
    /// charging, if the key already paid and has not expired; forgets
    /// expired keys.
    fn already_charged(
        &mut self,
        key: &IdempotencyKey,
        fingerprint: &RequestFingerprint,
        now: DateTime<Utc>,
        balances: &[KindBalance],
    ) -> Option<ChargeOutcome> {
        self.charged_keys.retain(|_, record| record.expires > now);
        let record = self.charged_keys.get(key)?;
        Some(if record.fingerprint != *fingerprint {
            ChargeOutcome::KeyReused
        } else if record.finished {
            ChargeOutcome::Replayed {
                balances: balances.to_vec(),
            }
        } else {
            ChargeOutcome::InProgress
        })
    }
}

/// `balance` with a due refill applied: topped up to capacity, never lowered.
fn refreshed(balance: KindBalance, kind: &TicketKind, now: DateTime<Utc>) -> KindBalance {
    if kind.refill_schedule().is_due(balance.last_refill, now) {
        KindBalance {
            remaining: balance.remaining.max(kind.capacity()),
            last_refill: now,
        }
    } else {
        balance
    }
}

fn ready<T: Send + 'static>(value: T) -> StoreFuture<T> {
    Box::pin(std::future::ready(Ok(value)))
}

impl TicketStore for MemoryStore {
    fn charge(&self, request: ChargeRequest) -> StoreFuture<ChargeOutcome> {
        let ChargeRequest {
            uid,
            cost,
            now,
            idempotency_key,
            fingerprint,
        } = request;
        let outcome = self.with_user(&uid, now, |user| {
            let mut balances: Vec<KindBalance> = cost
                .items()
                .iter()
                .map(|item| *user.refreshed(&item.kind, now))
                .collect();
            if let Some(replay) = idempotency_key
                .as_ref()
                .and_then(|key| user.already_charged(key, &fingerprint, now, &balances))
            {
                return replay;
            }
            let affordable = cost
                .items()
                .iter()
                .zip(&balances)
                .all(|(item, balance)| balance.remaining >= item.amount);
            if !affordable {
                return ChargeOutcome::Refused { balances };
            }
            for (item, balance) in cost.items().iter().zip(&mut balances) {
                let stored = user.refreshed(&item.kind, now);
                stored.remaining -= item.amount;
                *balance = *stored;
            }
            if let Some(key) = &idempotency_key {
                user.remember_key(key, fingerprint, now, None);
            }
            ChargeOutcome::Allowed {
                receipt: Receipt {
                    uid: uid.clone(),
                    cost: cost.clone(),
                    last_refills: balances.iter().map(|b| b.last_refill).collect(),
                    remaining_after: balances.iter().map(|b| b.remaining).collect(),
                    idempotency_key,
                    made_at: None,
                    charge_id: 0,
                },
                balances,
            }
        });
        ready(outcome)
    }

    fn refund(&self, receipt: Receipt, now: DateTime<Utc>) -> StoreFuture<RefundOutcome> {
        let outcome = self.with_user(&receipt.uid, now, |user| {
            if let Some(key) = &receipt.idempotency_key {
                user.charged_keys.remove(key);
            }
            let mut refunded = Vec::with_capacity(receipt.last_refills.len());
            let mut balances = Vec::with_capacity(receipt.last_refills.len());
            let charged = receipt.last_refills.iter().zip(&receipt.remaining_after);
            for (item, (charged_at_refill, remaining_after)) in
                receipt.cost.items().iter().zip(charged)
            {
                let balance = user.refreshed(&item.kind, now);
                let amount = if balance.last_refill == *charged_at_refill {
                    item.amount
                } else {
                    refund_across_refill(*remaining_after, item.amount, item.kind.capacity())
                };
                balance.remaining = balance.remaining.saturating_add(amount);
                refunded.push(amount);
                balances.push(*balance);
            }
            RefundOutcome { refunded, balances }
        });
        ready(outcome)
    }

    fn finish(&self, receipt: &Receipt) -> StoreFuture<()> {
        if let Some(key) = &receipt.idempotency_key {
            self.peek_user_mut(&receipt.uid, |user| {
                if let Some(record) = user.charged_keys.get_mut(key) {
                    record.finished = true;
                }
            });
        }
        ready(())
    }

    fn balances(
        &self,
        uid: &Uid,
        kinds: &[Arc<TicketKind>],
        now: DateTime<Utc>,
    ) -> StoreFuture<Vec<KindBalance>> {
        let balances = self.peek_user(uid, |user| {
            kinds
                .iter()
                .map(|kind| {
                    let stored = user.and_then(|u| {
                        u.balances
                            .iter()
                            .find(|(k, _)| k.name() == kind.name())
                            .map(|(_, b)| *b)
                    });
                    match stored {
                        Some(balance) => refreshed(balance, kind, now),
                        None => KindBalance {
                            remaining: kind.initial_balance(),
                            last_refill: now,
                        },
                    }
                })
                .collect()
        });
        ready(balances)
    }

    fn adjust(&self, request: AdjustRequest) -> StoreFuture<AdjustOutcome> {
        let now = request.now;
        let outcome = self.with_user(&request.uid, now, |user| {
            let key = request.idempotency_key.as_ref();
            let fingerprint = key.map(|_| request.fingerprint());
            if let (Some(key), Some(fingerprint)) = (key, &fingerprint)
                && let Some(replay) = user.already_adjusted(key, fingerprint, now)
            {
                return replay;
            }
            let balances: Vec<KindBalance> = request
                .changes
                .iter()
                .map(|(kind, adjustment)| {
                    let balance = user.refreshed(kind, now);
                    *balance = adjustment.apply(*balance, kind, now);
                    *balance
                })
                .collect();
            if let (Some(key), Some(fingerprint)) = (key, fingerprint) {
                user.remember_key(key, fingerprint, now, Some(balances.clone()));
            }
            AdjustOutcome::Applied { balances }
        });
        ready(outcome)
    }

    fn ensure_user(
        &self,
        uid: &Uid,
        kinds: &[Arc<TicketKind>],
        now: DateTime<Utc>,
    ) -> StoreFuture<Vec<KindBalance>> {
        let balances = self.with_user(uid, now, |user| {
            kinds
                .iter()
                .map(|kind| *user.refreshed(kind, now))
                .collect()
        });
        ready(balances)
    }
}
