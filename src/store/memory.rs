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

/// One stripe is visited for forgettable users every this many changes, in
/// turn: each stripe every 16,384 changes. A visit sweeps the stripe only
/// once one of its users may be forgettable (see [`Stripe::sweep_from`]).
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
    shards: Box<[Mutex<Stripe>]>,
    /// Changes made so far: every `SWEEP_EVERY`-th visits the next stripe.
    changes: AtomicU64,
    /// Keyed charges made so far: each one's id binds its key's record to it.
    keyed_charges: AtomicU64,
}

/// The users of one lock stripe.
struct Stripe {
    users: HashMap<Uid, UserRecord>,
    /// No user of the stripe is forgettable before this instant: the least
    /// [`UserRecord::forgettable_from`] of its users, lowered by every
    /// change. A sweep that would find nothing is skipped: with many active
    /// users, sweeping a stripe costs a cache miss per user.
    sweep_from: DateTime<Utc>,
}

impl Default for Stripe {
    fn default() -> Self {
        Self {
            users: HashMap::new(),
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
        self.users.retain(|_, user| !user.forgettable(now));
        self.sweep_from = self
            .users
            .values()
            .map(UserRecord::forgettable_from)
            .min()
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
    }
}

#[derive(Default)]
struct UserRecord {
    balances: KindBalances,
    /// Idempotency keys already used, by charges and adjustments.
    charged_keys: ChargedKeys,
}

/// A user's balance in each kind they used. The first kind lives in the
/// record itself: most users use one or two kinds, and a charge of a user
/// met at random then reads no other heap block (with many users, each
/// block read is a cache miss).
#[derive(Default)]
struct KindBalances {
    first: Option<(Arc<TicketKind>, KindBalance)>,
    /// The other kinds: a boxed slice (8 bytes smaller than a `Vec`), grown
    /// only when a user meets a kind for the first time.
    more: Box<[(Arc<TicketKind>, KindBalance)]>,
}

// A user's entry in a stripe's map fits in 64 bytes, one cache line when the
// table happens to align it (the key and its record; see `KindBalances` and
// `ChargedKeys`).
const _: () = assert!(std::mem::size_of::<(Uid, UserRecord)>() <= 64);

impl KindBalances {
    fn iter(&self) -> impl Iterator<Item = &(Arc<TicketKind>, KindBalance)> {
        self.first.iter().chain(self.more.iter())
    }

    /// `kind`'s stored balance, if any.
    fn get(&self, kind: &TicketKind) -> Option<KindBalance> {
        self.iter()
            .find(|(k, _)| same_kind(k, kind))
            .map(|(_, balance)| *balance)
    }

    /// Stores `balance` as `kind`'s.
    fn set(&mut self, kind: &Arc<TicketKind>, balance: KindBalance) {
        *self.entry(kind, balance) = balance;
    }

    /// `kind`'s balance, stored as `fresh` if absent.
    fn entry(&mut self, kind: &Arc<TicketKind>, fresh: KindBalance) -> &mut KindBalance {
        if !matches!(&self.first, Some((k, _)) if !same_kind(k, kind)) {
            return &mut self.first.get_or_insert_with(|| (kind.clone(), fresh)).1;
        }
        let index = match self.more.iter().position(|(k, _)| same_kind(k, kind)) {
            Some(index) => index,
            None => {
                let mut more = std::mem::take(&mut self.more).into_vec();
                more.push((kind.clone(), fresh));
                self.more = more.into_boxed_slice();
                self.more.len() - 1
            }
        };
        &mut self.more[index].1
    }
}

/// Whether two kinds are the same: usually the registry's one `Arc`, so the
/// pointers tell before the names.
fn same_kind(a: &TicketKind, b: &TicketKind) -> bool {
    std::ptr::eq(a, b) || a.name() == b.name()
}

/// The idempotency keys a user's charges and adjustments used, the map
/// allocated on first use: most users never send one, and the map itself
/// takes 48 bytes.
#[derive(Default)]
#[expect(
    clippy::box_collection,
    reason = "the box is the point: 8 bytes in the entry instead of the map's 48"
)]
struct ChargedKeys(Option<Box<HashMap<IdempotencyKey, KeyRecord>>>);

impl ChargedKeys {
    fn forget_expired(&mut self, now: DateTime<Utc>) {
        if let Some(keys) = &mut self.0 {
            keys.retain(|_, record| record.expires > now);
            if keys.is_empty() {
                self.0 = None;
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|keys| keys.is_empty())
    }

    fn expiries(&self) -> impl Iterator<Item = DateTime<Utc>> {
        self.0
            .iter()
            .flat_map(|keys| keys.values().map(|record| record.expires))
    }

    fn get(&self, key: &IdempotencyKey) -> Option<&KeyRecord> {
        self.0.as_ref()?.get(key)
    }

    fn get_mut(&mut self, key: &IdempotencyKey) -> Option<&mut KeyRecord> {
        self.0.as_mut()?.get_mut(key)
    }

    fn insert(&mut self, key: IdempotencyKey, record: KeyRecord) {
        self.0.get_or_insert_default().insert(key, record);
    }

    fn remove(&mut self, key: &IdempotencyKey) {
        if let Some(keys) = &mut self.0 {
            keys.remove(key);
        }
    }
}

/// What a used idempotency key is bound to, and how far its request got.
struct KeyRecord {
    expires: DateTime<Utc>,
    fingerprint: RequestFingerprint,
    /// The charge that paid for it (0 for an adjustment): the key may
    /// expire and serve a new request, which a late refund or finish of the
    /// old charge must leave alone.
    charge_id: u64,
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

    /// The lock stripe that holds `uid`.
    fn shard(&self, uid: &Uid) -> &Mutex<Stripe> {
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
        let result = {
            let mut stripe = self.shard(uid).lock();
            // Looked up before inserting: the usual hit clones no uid.
            let user = match stripe.users.get_mut(uid) {
                Some(user) => user,
                None => stripe.users.entry(uid.clone()).or_default(),
            };
            let result = f(user);
            let from = user.forgettable_from();
            stripe.sweep_from = stripe.sweep_from.min(from);
            result
        };
        let change = self.shared.changes.fetch_add(1, Ordering::Relaxed);
        if change.is_multiple_of(SWEEP_EVERY) {
            let stripe = (change / SWEEP_EVERY) as usize % SHARDS;
            self.shared.shards[stripe].lock().sweep(now);
        }
        result
    }

    /// Reads `uid`'s record if present, without creating it.
    fn peek_user<T>(&self, uid: &Uid, f: impl FnOnce(Option<&UserRecord>) -> T) -> T {
        f(self.shard(uid).lock().users.get(uid))
    }

    /// Changes `uid`'s record if present, without creating it.
    fn peek_user_mut(&self, uid: &Uid, f: impl FnOnce(&mut UserRecord)) {
        let mut stripe = self.shard(uid).lock();
        if let Some(user) = stripe.users.get_mut(uid) {
            f(user);
            let from = user.forgettable_from();
            stripe.sweep_from = stripe.sweep_from.min(from);
        }
    }
}

impl UserRecord {
    /// Whether forgetting the user at `now` changes nothing: idle for
    /// [`IDLE_PERIODS`] of every kind, each starting at its capacity and
    /// holding no more, no idempotency key remembered.
    fn forgettable(&mut self, now: DateTime<Utc>) -> bool {
        self.charged_keys.forget_expired(now);
        self.charged_keys.is_empty()
            && self.balances.iter().all(|(kind, balance)| {
                kind.initial_balance() == kind.capacity()
                    && balance.remaining <= kind.capacity()
                    && idle_until(kind, balance.last_refill) <= now
            })
    }

    /// The earliest instant at which [`UserRecord::forgettable`] may hold,
    /// as long as the record does not change: once every kind has been idle
    /// long enough and every idempotency key has expired; never while a
    /// kind's balance is one that forgetting would change.
    fn forgettable_from(&self) -> DateTime<Utc> {
        let mut from = DateTime::<Utc>::MIN_UTC;
        for (kind, balance) in self.balances.iter() {
            if kind.initial_balance() != kind.capacity() || balance.remaining > kind.capacity() {
                return DateTime::<Utc>::MAX_UTC;
            }
            from = from.max(idle_until(kind, balance.last_refill));
        }
        self.charged_keys.expiries().fold(from, DateTime::max)
    }

    /// The kind's balance with a due refill applied, created on first use.
    fn refreshed(&mut self, kind: &Arc<TicketKind>, now: DateTime<Utc>) -> &mut KindBalance {
        let fresh = KindBalance {
            remaining: kind.initial_balance(),
            last_refill: now,
        };
        let balance = self.balances.entry(kind, fresh);
        *balance = refreshed(*balance, kind, now);
        balance
    }

    /// Records that `key` served `fingerprint` at `now`: an adjustment's,
    /// finished with its `answer`, or charge `charge_id`'s, running.
    fn remember_key(
        &mut self,
        key: &IdempotencyKey,
        (fingerprint, charge_id): (RequestFingerprint, u64),
        now: DateTime<Utc>,
        answer: Option<Vec<KindBalance>>,
    ) {
        let ttl = TimeDelta::from_std(IDEMPOTENCY_TTL).unwrap_or(TimeDelta::MAX);
        let record = KeyRecord {
            expires: now
                .checked_add_signed(ttl)
                .unwrap_or(DateTime::<Utc>::MAX_UTC),
            fingerprint,
            charge_id,
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
        self.charged_keys.forget_expired(now);
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
        self.charged_keys.forget_expired(now);
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

/// When a user refilled at `last_refill` has been idle in `kind` long
/// enough to be forgettable: [`IDLE_PERIODS`] of its refill windows later.
fn idle_until(kind: &TicketKind, last_refill: DateTime<Utc>) -> DateTime<Utc> {
    i64::try_from(kind.refill_schedule().window_secs() * u64::from(IDLE_PERIODS))
        .ok()
        .and_then(TimeDelta::try_seconds)
        .and_then(|idle| last_refill.checked_add_signed(idle))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
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
            // Refreshed above: the stored balances are those just read.
            for (item, balance) in cost.items().iter().zip(&mut balances) {
                balance.remaining -= item.amount;
                user.balances.set(&item.kind, *balance);
            }
            let charge_id = match &idempotency_key {
                Some(key) => {
                    let id = self.shared.keyed_charges.fetch_add(1, Ordering::Relaxed) + 1;
                    user.remember_key(key, (fingerprint, id), now, None);
                    id
                }
                None => 0,
            };
            ChargeOutcome::Allowed {
                receipt: Receipt {
                    uid: uid.clone(),
                    cost: cost.clone(),
                    last_refills: balances.iter().map(|b| b.last_refill).collect(),
                    remaining_after: balances.iter().map(|b| b.remaining).collect(),
                    idempotency_key,
                    made_at: None,
                    charge_id,
                },
                balances,
            }
        });
        ready(outcome)
    }

    fn refund(&self, receipt: Receipt, now: DateTime<Utc>) -> StoreFuture<RefundOutcome> {
        let outcome = self.with_user(&receipt.uid, now, |user| {
            if let Some(key) = &receipt.idempotency_key
                && user
                    .charged_keys
                    .get(key)
                    .is_some_and(|record| record.charge_id == receipt.charge_id)
            {
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
                if let Some(record) = user.charged_keys.get_mut(key)
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
                    let stored = user.and_then(|u| u.balances.get(kind));
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
