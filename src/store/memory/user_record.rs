//! What the embedded store holds for one user: a balance per kind they
//! used, and the idempotency keys their charges and adjustments used.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};

use crate::idempotency::{IDEMPOTENCY_TTL, IdempotencyKey, RequestFingerprint};
use crate::kind::TicketKind;
use crate::store::{AdjustOutcome, ChargeOutcome, KindBalance};

/// A user is forgotten once idle this many of their kinds' refill periods,
/// when forgetting changes nothing (as the Redis store's idle expiry).
const IDLE_PERIODS: u32 = 3;

/// One user's balances and keys, in 32 bytes (half of the table entry's
/// cache line, see `user_table.rs`): the first kind the user used lives in
/// the record itself; what most users never need (more kinds, idempotency
/// keys) lives behind one pointer, allocated on first use. A charge of a
/// user met at random then reads no other heap block (with many users,
/// each block read is a cache miss).
#[derive(Default)]
pub(super) struct UserRecord {
    first: Option<(Arc<TicketKind>, KindBalance)>,
    rest: Option<Box<RecordRest>>,
}

const _: () = assert!(std::mem::size_of::<UserRecord>() <= 32);

/// The part of a record most users never need.
#[derive(Default)]
struct RecordRest {
    /// The kinds after the first.
    more: Vec<(Arc<TicketKind>, KindBalance)>,
    /// Idempotency keys already used, by charges and adjustments.
    keys: HashMap<IdempotencyKey, KeyRecord>,
}

/// What a used idempotency key is bound to, and how far its request got.
pub(super) struct KeyRecord {
    expires: DateTime<Utc>,
    fingerprint: RequestFingerprint,
    /// The charge that paid for it (0 for an adjustment): the key may
    /// expire and serve a new request, which a late refund or finish of the
    /// old charge must leave alone.
    pub(super) charge_id: u64,
    pub(super) finished: bool,
    /// An adjustment's first answer (empty for a charge).
    answer: Vec<KindBalance>,
}

impl UserRecord {
    fn kinds(&self) -> impl Iterator<Item = &(Arc<TicketKind>, KindBalance)> {
        let more = self.rest.iter().flat_map(|rest| rest.more.iter());
        self.first.iter().chain(more)
    }

    /// `kind`'s stored balance, if any.
    pub(super) fn balance(&self, kind: &TicketKind) -> Option<KindBalance> {
        self.kinds()
            .find(|(k, _)| same_kind(k, kind))
            .map(|(_, balance)| *balance)
    }

    /// Stores `balance` as `kind`'s.
    pub(super) fn set_balance(&mut self, kind: &Arc<TicketKind>, balance: KindBalance) {
        *self.balance_entry(kind, balance) = balance;
    }

    /// `kind`'s balance, stored as `fresh` if absent.
    fn balance_entry(&mut self, kind: &Arc<TicketKind>, fresh: KindBalance) -> &mut KindBalance {
        if !matches!(&self.first, Some((k, _)) if !same_kind(k, kind)) {
            return &mut self.first.get_or_insert_with(|| (kind.clone(), fresh)).1;
        }
        let more = &mut self.rest.get_or_insert_default().more;
        let index = match more.iter().position(|(k, _)| same_kind(k, kind)) {
            Some(index) => index,
            None => {
                more.push((kind.clone(), fresh));
                more.len() - 1
            }
        };
        &mut more[index].1
    }

    /// The kind's balance with a due refill applied, created on first use.
    pub(super) fn refreshed(
        &mut self,
        kind: &Arc<TicketKind>,
        now: DateTime<Utc>,
    ) -> &mut KindBalance {
        let fresh = KindBalance {
            remaining: kind.initial_balance(),
            last_refill: now,
        };
        let balance = self.balance_entry(kind, fresh);
        *balance = refreshed(*balance, kind, now);
        balance
    }

    pub(super) fn key(&self, key: &IdempotencyKey) -> Option<&KeyRecord> {
        self.rest.as_ref()?.keys.get(key)
    }

    pub(super) fn key_mut(&mut self, key: &IdempotencyKey) -> Option<&mut KeyRecord> {
        self.rest.as_mut()?.keys.get_mut(key)
    }

    pub(super) fn forget_key(&mut self, key: &IdempotencyKey) {
        if let Some(rest) = &mut self.rest {
            rest.keys.remove(key);
        }
    }

    fn forget_expired_keys(&mut self, now: DateTime<Utc>) {
        if let Some(rest) = &mut self.rest {
            rest.keys.retain(|_, record| record.expires > now);
            if rest.keys.is_empty() && rest.more.is_empty() {
                self.rest = None;
            }
        }
    }

    fn keys(&self) -> impl Iterator<Item = &KeyRecord> {
        self.rest.iter().flat_map(|rest| rest.keys.values())
    }

    /// Whether forgetting the user at `now` changes nothing: idle for
    /// [`IDLE_PERIODS`] of every kind, each starting at its capacity and
    /// holding no more, no idempotency key remembered.
    pub(super) fn forgettable(&mut self, now: DateTime<Utc>) -> bool {
        self.forget_expired_keys(now);
        self.keys().next().is_none()
            && self.kinds().all(|(kind, balance)| {
                kind.initial_balance() == kind.capacity()
                    && balance.remaining <= kind.capacity()
                    && idle_until(kind, balance.last_refill) <= now
            })
    }

    /// The earliest instant at which [`UserRecord::forgettable`] may hold,
    /// as long as the record does not change: once every kind has been idle
    /// long enough and every idempotency key has expired; never while a
    /// kind's balance is one that forgetting would change.
    pub(super) fn forgettable_from(&self) -> DateTime<Utc> {
        let mut from = DateTime::<Utc>::MIN_UTC;
        for (kind, balance) in self.kinds() {
            if kind.initial_balance() != kind.capacity() || balance.remaining > kind.capacity() {
                return DateTime::<Utc>::MAX_UTC;
            }
            from = from.max(idle_until(kind, balance.last_refill));
        }
        self.keys()
            .map(|record| record.expires)
            .fold(from, DateTime::max)
    }

    /// Records that `key` served `fingerprint` at `now`: an adjustment's,
    /// finished with its `answer`, or charge `charge_id`'s, running.
    pub(super) fn remember_key(
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
        let rest = self.rest.get_or_insert_default();
        rest.keys.insert(key.clone(), record);
    }

    /// What an adjustment under `key` for `fingerprint` must answer instead
    /// of changing anything, if the key already served and has not expired.
    pub(super) fn already_adjusted(
        &mut self,
        key: &IdempotencyKey,
        fingerprint: &RequestFingerprint,
        now: DateTime<Utc>,
    ) -> Option<AdjustOutcome> {
        self.forget_expired_keys(now);
        let record = self.key(key)?;
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
    pub(super) fn already_charged(
        &mut self,
        key: &IdempotencyKey,
        fingerprint: &RequestFingerprint,
        now: DateTime<Utc>,
        balances: &[KindBalance],
    ) -> Option<ChargeOutcome> {
        self.forget_expired_keys(now);
        let record = self.key(key)?;
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

/// Whether two kinds are the same: usually the registry's one `Arc`, so the
/// pointers tell before the names.
fn same_kind(a: &TicketKind, b: &TicketKind) -> bool {
    std::ptr::eq(a, b) || a.name() == b.name()
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
pub(super) fn refreshed(
    balance: KindBalance,
    kind: &TicketKind,
    now: DateTime<Utc>,
) -> KindBalance {
    if kind.refill_schedule().is_due(balance.last_refill, now) {
        KindBalance {
            remaining: balance.remaining.max(kind.capacity()),
            last_refill: now,
        }
    } else {
        balance
    }
}
