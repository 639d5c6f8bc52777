//! The embedded store: balances in this process's memory.

mod user_record;
mod user_table;

use std::cell::Cell;
use std::hash::RandomState;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use chrono::{DateTime, Utc};
use parking_lot::Mutex;

use self::user_record::{UserRecord, refreshed};
use self::user_table::{UserTable, hash_uid};
use super::{
    AdjustOutcome, AdjustRequest, ChargeOutcome, ChargeRequest, KindBalance, Receipt,
    RefundOutcome, StoreFuture, TicketStore, refund_across_refill,
};
use crate::kind::TicketKind;
use crate::uid::Uid;

/// Lock stripes: enough that 2 to 16 cores rarely contend on unrelated users.
const SHARDS: usize = 64;

/// One stripe is visited for forgettable users every this many changes
/// (made by one thread), in turn: each stripe every 16,384 changes. A visit
/// sweeps the stripe only once one of its users may be forgettable (see
/// [`Stripe::sweep_from`]).
const SWEEP_EVERY: u64 = 256;

thread_local! {
    /// Changes this thread made, in any store. Counted per thread: a count
    /// shared by every thread would be one more cache line that all of them
    /// write on every request.
    static CHANGES: Cell<u64> = const { Cell::new(0) };
}

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
    shards: Box<[Mutex<Stripe>]>,
    /// The stripe the next visit sweeps (see [`SWEEP_EVERY`]).
    next_sweep: AtomicUsize,
    /// Keyed charges made so far: each one's id binds its key's record to it.
    keyed_charges: AtomicU64,
}

/// The users of one lock stripe.
struct Stripe {
    users: UserTable,
    /// No user of the stripe is forgettable before this instant: the least
    /// [`UserRecord::forgettable_from`] of its users, lowered by every
    /// change. A sweep that would find nothing is skipped: with many active
    /// users, sweeping a stripe costs a cache miss per user.
    sweep_from: DateTime<Utc>,
}

impl Default for Stripe {
    fn default() -> Self {
        Self {
            users: UserTable::default(),
            sweep_from: DateTime::<Utc>::MAX_UTC,
        }
    }
}

impl Stripe {
    /// Forgets the users whom forgetting at `now` changes nothing, if any
    /// may be; then raises `sweep_from` to the least bound of those kept.
    fn sweep(&mut self, now: DateTime<Utc>) {
        if now < self.sweep_from {
            return;
        }
        self.users.retain(|user| !user.forgettable(now));
        self.sweep_from = self
            .users
            .records()
            .map(UserRecord::forgettable_from)
            .min()
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
    }
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
                next_sweep: AtomicUsize::new(0),
                keyed_charges: AtomicU64::new(0),
            }),
        }
    }

    /// How many users the store holds (idle ones are forgotten in time).
    pub fn users(&self) -> usize {
        self.shared
            .shards
            .iter()
            .map(|shard| shard.lock().users.len())
            .sum()
    }

    /// `uid`'s hash, and the lock stripe that holds it (chosen by bits of
    /// the hash that the stripe's table does not use for its slots).
    fn shard(&self, uid: &Uid) -> (u64, &Mutex<Stripe>) {
        let hash = hash_uid(&self.shared.hasher, uid);
        (hash, &self.shared.shards[(hash >> 40) as usize % SHARDS])
    }

    /// Runs `f` on `uid`'s record (created empty if absent) under its lock,
    /// at `now`; now and then sweeps a stripe for forgettable users.
    fn with_user<T>(
        &self,
        uid: &Uid,
        now: DateTime<Utc>,
        f: impl FnOnce(&mut UserRecord) -> T,
    ) -> T {
        let result = {
            let (hash, stripe) = self.shard(uid);
            let mut stripe = stripe.lock();
            let user = stripe.users.get_or_insert(hash, uid, &self.shared.hasher);
            let result = f(user);
            let from = user.forgettable_from();
            stripe.sweep_from = stripe.sweep_from.min(from);
            result
        };
        let change = CHANGES.with(|changes| changes.replace(changes.get().wrapping_add(1)));
        if change.is_multiple_of(SWEEP_EVERY) {
            let stripe = self.shared.next_sweep.fetch_add(1, Ordering::Relaxed) % SHARDS;
            self.shared.shards[stripe].lock().sweep(now);
        }
        result
    }

    /// Reads `uid`'s record if present, without creating it.
    fn peek_user<T>(&self, uid: &Uid, f: impl FnOnce(Option<&UserRecord>) -> T) -> T {
        let (hash, stripe) = self.shard(uid);
        f(stripe.lock().users.get(hash, uid))
    }

    /// Changes `uid`'s record if present, without creating it.
    fn peek_user_mut(&self, uid: &Uid, f: impl FnOnce(&mut UserRecord)) {
        let (hash, stripe) = self.shard(uid);
        let mut stripe = stripe.lock();
        if let Some(user) = stripe.users.get_mut(hash, uid) {
            f(user);
            let from = user.forgettable_from();
            stripe.sweep_from = stripe.sweep_from.min(from);
        }
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
        // Decided under the lock; the receipt is built after it, taking the
        // request's uid and cost rather than cloning them.
        let decided = self.with_user(&uid, now, |user| {
            let mut balances: Vec<KindBalance> = cost
                .items()
                .iter()
                .map(|item| *user.refreshed(&item.kind, now))
                .collect();
            if let Some(replay) = idempotency_key
                .as_ref()
                .and_then(|key| user.already_charged(key, &fingerprint, now, &balances))
            {
                return ControlFlow::Break(replay);
            }
            let affordable = cost
                .items()
                .iter()
                .zip(&balances)
                .all(|(item, balance)| balance.remaining >= item.amount);
            if !affordable {
                return ControlFlow::Break(ChargeOutcome::Refused { balances });
            }
            // Refreshed above: the stored balances are those just read.
            for (item, balance) in cost.items().iter().zip(&mut balances) {
                balance.remaining -= item.amount;
                user.set_balance(&item.kind, *balance);
            }
            let charge_id = match &idempotency_key {
                Some(key) => {
                    let id = self.shared.keyed_charges.fetch_add(1, Ordering::Relaxed) + 1;
                    user.remember_key(key, (fingerprint, id), now, None);
                    id
                }
                None => 0,
            };
            ControlFlow::Continue((balances, charge_id))
        });
        ready(match decided {
            ControlFlow::Break(answer) => answer,
            ControlFlow::Continue((balances, charge_id)) => ChargeOutcome::Allowed {
                receipt: Receipt {
                    uid,
                    cost,
                    last_refills: balances.iter().map(|b| b.last_refill).collect(),
                    remaining_after: balances.iter().map(|b| b.remaining).collect(),
                    idempotency_key,
                    made_at: None,
                    charge_id,
                },
                balances,
            },
        })
    }

    fn refund(&self, receipt: Receipt, now: DateTime<Utc>) -> StoreFuture<RefundOutcome> {
        let outcome = self.with_user(&receipt.uid, now, |user| {
            if let Some(key) = &receipt.idempotency_key
                && user
                    .key(key)
                    .is_some_and(|record| record.charge_id == receipt.charge_id)
            {
                user.forget_key(key);
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
                if let Some(record) = user.key_mut(key)
                    && record.charge_id == receipt.charge_id
                {
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
                    let stored = user.and_then(|u| u.balance(kind));
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
                user.remember_key(key, (fingerprint, 0), now, Some(balances.clone()));
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
