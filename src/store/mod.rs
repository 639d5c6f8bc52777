//! Where balances live, and the one contract every backend obeys.
//!
//! A [`TicketStore`] applies the ticket rules atomically: a due refill, then
//! an all-or-nothing charge, in one step that no concurrent request can
//! interleave with. Every backend passes the same contract test suite
//! (`tests/contract/`).
//!
//! Stores never read the clock: the instant of each decision is passed in,
//! so all backends agree on one time source and tests control it.

#[cfg(feature = "redis")]
mod breaker;
mod error;
#[cfg(feature = "firestore")]
mod firestore;
mod memory;
#[cfg(feature = "redis")]
mod redis;
mod refusal_cache;
pub mod source;
#[cfg(feature = "redis")]
mod write_through;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use chrono::{DateTime, Utc};

pub use self::error::{StoreError, StoreErrorKind};
#[cfg(feature = "firestore")]
pub use self::firestore::{DEFAULT_FIRESTORE_TIMEOUT, FirestoreSource};
pub use self::memory::MemoryStore;
#[cfg(feature = "redis")]
pub use self::redis::{
    ChangeSubscription, RedisSetupError, RedisStore, RedisStoreBuilder, TimeSource,
};
pub use self::refusal_cache::RefusalCache;
#[cfg(feature = "redis")]
pub use self::source::MemorySource;
pub use self::source::{SourceOfTruth, UserSnapshot, WriteCondition, WriteOutcome};
#[cfg(feature = "redis")]
pub use self::write_through::{WriteMode, WriteThrough, WriteThroughBuilder};
use crate::config_error::ConfigError;
use crate::cost::CheckedCost;
use crate::idempotency::{IdempotencyKey, RequestFingerprint};
use crate::kind::TicketKind;
use crate::uid::Uid;

/// The future a store operation returns. It owns what it needs (`'static`),
/// so the layer's response future can hold it.
pub type StoreFuture<T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send>>;

/// One kind's balance for one user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KindBalance {
    /// Tickets left.
    pub remaining: u32,
    /// When the balance was last refilled (or created).
    pub last_refill: DateTime<Utc>,
}

/// A charge to decide; made by [`ChargeRequest::new`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ChargeRequest {
    /// Whose tickets.
    pub uid: Uid,
    /// What to charge, all-or-nothing.
    pub cost: CheckedCost,
    /// The instant of the decision.
    pub now: DateTime<Utc>,
    /// A retry-safe key: a second charge with the same key (same user,
    /// within [`IDEMPOTENCY_TTL`](crate::idempotency::IDEMPOTENCY_TTL)) is
    /// never charged: it is [`InProgress`](ChargeOutcome::InProgress) until
    /// the first is [finished](TicketStore::finish), then
    /// [`Replayed`](ChargeOutcome::Replayed), or
    /// [`KeyReused`](ChargeOutcome::KeyReused) when its fingerprint differs.
    pub idempotency_key: Option<IdempotencyKey>,
    /// The request the key is bound to (stored with the key on an allowed
    /// charge); the default, empty, one when not given.
    pub fingerprint: RequestFingerprint,
}

impl ChargeRequest {
    /// A charge of `cost` to `uid` at `now`, without an idempotency key.
    pub fn new(uid: Uid, cost: CheckedCost, now: DateTime<Utc>) -> Self {
        Self {
            uid,
            cost,
            now,
            idempotency_key: None,
            fingerprint: RequestFingerprint::default(),
        }
    }

    /// Makes the charge retry-safe under `key` (see
    /// [`idempotency_key`](Self::idempotency_key)).
    #[must_use]
    pub fn with_idempotency_key(mut self, key: Option<IdempotencyKey>) -> Self {
        self.idempotency_key = key;
        self
    }

    /// Binds the idempotency key to `fingerprint`, the request it pays for
    /// (see [`fingerprint`](Self::fingerprint)).
    #[must_use]
    pub fn with_fingerprint(mut self, fingerprint: RequestFingerprint) -> Self {
        self.fingerprint = fingerprint;
        self
    }
}

/// The store's decision on a [`ChargeRequest`]. Balances are given for the
/// cost's kinds, in the cost's order, after any refill that was due.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ChargeOutcome {
    /// Every kind could pay; all were charged.
    Allowed {
        /// Balances after the charge.
        balances: Vec<KindBalance>,
        /// What to hand back to [`TicketStore::refund`] if the request fails.
        receipt: Receipt,
    },
    /// At least one kind could not pay; nothing was charged.
    Refused {
        /// Balances as they stand.
        balances: Vec<KindBalance>,
    },
    /// The idempotency key already paid for this request, which finished
    /// (its response was produced and kept the charge); nothing was charged
    /// again.
    Replayed {
        /// Balances as they stand.
        balances: Vec<KindBalance>,
    },
    /// The idempotency key already paid for this request, which has not
    /// finished yet; nothing was charged again.
    InProgress,
    /// The idempotency key already paid for another request (another
    /// method, route or cost: see
    /// [`RequestFingerprint`]); nothing was
    /// charged.
    KeyReused,
}

/// Proof of an allowed charge, needed to refund it. Only stores make one.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Receipt {
    /// Whose tickets.
    pub uid: Uid,
    /// What was charged.
    pub cost: CheckedCost,
    /// Each kind's last refill as it stood after the charge, in the cost's
    /// order; a refund is void for a kind whose refill moved since.
    pub last_refills: Vec<DateTime<Utc>>,
    /// Each kind's balance right after the charge, in the cost's order: a
    /// refund across a refill gives back only what the refill did not
    /// restore (see [`refund_across_refill`]).
    pub remaining_after: Vec<u32>,
    /// The charge's idempotency key, forgotten on refund so that a retry of
    /// the failed request is charged again, and marked finished by
    /// [`TicketStore::finish`].
    pub idempotency_key: Option<IdempotencyKey>,
    /// See [`Receipt::made_at`].
    pub(crate) made_at: Option<source::Point>,
    /// A random id of the charge, for such a cache: a refund retried after
    /// a failed write gives nothing back twice.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) charge_id: u64,
}

impl Receipt {
    /// Where in the user's history the charge was made: set by a cache in
    /// front of a source of truth (the write-through), whose refund gives
    /// nothing back for a charge the state it meets does not include.
    pub fn made_at(&self) -> Option<source::Point> {
        self.made_at
    }
}

/// What a refund did, per kind of the receipt's cost.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RefundOutcome {
    /// Tickets given back per kind: the amount charged when no refill
    /// happened since the charge, otherwise what the refill did not restore
    /// (see [`refund_across_refill`]).
    pub refunded: Vec<u32>,
    /// Balances after the refund.
    pub balances: Vec<KindBalance>,
}

impl RefundOutcome {
    /// What a refund did: `refunded` tickets per kind, leaving `balances`.
    pub fn new(refunded: Vec<u32>, balances: Vec<KindBalance>) -> Self {
        Self { refunded, balances }
    }
}

/// What a refund gives back of `amount` charged from a balance left at
/// `remaining_after`, when the kind was refilled (to `capacity`) since the
/// charge (DESIGN.md §2): only what the refill did not already restore.
/// Nothing for a balance the refill topped up to capacity anyway (refunding
/// would mint); the full amount for a granted balance that stayed above
/// capacity; the part above capacity for one in between. Computed as if the
/// refill had come right after the charge.
pub fn refund_across_refill(remaining_after: u32, amount: u32, capacity: u32) -> u32 {
    let without_charge = remaining_after.saturating_add(amount).max(capacity);
    without_charge - remaining_after.max(capacity)
}

/// An administrative change to one kind's balance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Adjustment {
    /// Adds tickets (may go above capacity; a refill never takes them away).
    Grant(u32),
    /// Sets the balance.
    Set(u32),
    /// Refills now: the balance becomes at least the capacity (a granted
    /// balance above it is kept), and the last refill becomes the decision
    /// instant (never earlier than it was).
    Reset,
}

impl Adjustment {
    /// The operation's name, as the Redis script and the idempotency
    /// fingerprint take it.
    pub(crate) fn operation(self) -> &'static str {
        match self {
            Self::Grant(_) => "grant",
            Self::Set(_) => "set",
            Self::Reset => "reset",
        }
    }

    /// The operation's amount (none for a reset).
    pub(crate) fn amount(self) -> u32 {
        match self {
            Self::Grant(amount) | Self::Set(amount) => amount,
            Self::Reset => 0,
        }
    }

    /// `balance` changed as this adjustment says, at `now`, for `kind`
    /// (the due refill already applied).
    pub(crate) fn apply(
        self,
        balance: KindBalance,
        kind: &TicketKind,
        now: DateTime<Utc>,
    ) -> KindBalance {
        match self {
            Self::Grant(amount) => KindBalance {
                remaining: balance.remaining.saturating_add(amount),
                ..balance
            },
            Self::Set(value) => KindBalance {
                remaining: value,
                ..balance
            },
            Self::Reset => KindBalance {
                remaining: balance.remaining.max(kind.capacity()),
                last_refill: balance.last_refill.max(now),
            },
        }
    }
}

/// Administrative changes to decide atomically; made by
/// [`AdjustRequest::new`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AdjustRequest {
    /// Whose tickets.
    pub uid: Uid,
    /// One change per kind, each kind at most once.
    pub changes: Vec<(Arc<TicketKind>, Adjustment)>,
    /// The instant of the decision.
    pub now: DateTime<Utc>,
    /// A retry-safe key (a payment webhook retried grants once): a second
    /// adjustment with the same key (same user, within
    /// [`IDEMPOTENCY_TTL`](crate::idempotency::IDEMPOTENCY_TTL)) changes
    /// nothing. It is [`Replayed`](AdjustOutcome::Replayed) with the first
    /// answer when it asks for the same changes,
    /// [`KeyReused`](AdjustOutcome::KeyReused) otherwise (charges and
    /// adjustments share a user's keys).
    pub idempotency_key: Option<IdempotencyKey>,
}

impl AdjustRequest {
    /// The `changes` to `uid`'s balances at `now`, without an idempotency
    /// key. A kind named twice keeps its last change.
    pub fn new(
        uid: Uid,
        changes: impl IntoIterator<Item = (Arc<TicketKind>, Adjustment)>,
        now: DateTime<Utc>,
    ) -> Self {
        let mut kept: Vec<(Arc<TicketKind>, Adjustment)> = Vec::new();
        for (kind, adjustment) in changes {
            kept.retain(|(k, _)| k.name() != kind.name());
            kept.push((kind, adjustment));
        }
        Self {
            uid,
            changes: kept,
            now,
            idempotency_key: None,
        }
    }

    /// Makes the changes retry-safe under `key` (see
    /// [`idempotency_key`](Self::idempotency_key)).
    #[must_use]
    pub fn with_idempotency_key(mut self, key: Option<IdempotencyKey>) -> Self {
        self.idempotency_key = key;
        self
    }

    /// What the idempotency key is bound to: the changes asked for.
    pub fn fingerprint(&self) -> RequestFingerprint {
        RequestFingerprint::of_adjustments(&self.changes)
    }
}

/// The store's decision on an [`AdjustRequest`]. Balances are given for
/// the request's kinds, in its order.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AdjustOutcome {
    /// The changes were made (after any refill that was due).
    Applied {
        /// Balances after the changes.
        balances: Vec<KindBalance>,
    },
    /// The idempotency key already made these changes; nothing changed
    /// again.
    Replayed {
        /// The balances the first request was answered with.
        balances: Vec<KindBalance>,
    },
    /// The idempotency key already made these changes, which a store in
    /// front of a source of truth is still writing; nothing changed again.
    ///
    /// Such a store records the key as running when Redis makes the
    /// changes, finishes it once the source holds them, and forgets it when
    /// the source did not take them (so that a retry makes them). Two edges
    /// follow: an instance that stops in between leaves the key running
    /// until it expires, its retries answered `InProgress`; and a write that
    /// timed out yet landed in the source is forgotten like one that did
    /// not land, so its retry changes the balance again.
    InProgress,
    /// The idempotency key already served another request (other changes,
    /// or a charge); nothing changed.
    KeyReused,
}

impl AdjustOutcome {
    /// The balances answered: those after the changes, or the first
    /// answer's for a replay; `None` when nothing was answered.
    pub fn balances(&self) -> Option<&[KindBalance]> {
        match self {
            Self::Applied { balances } | Self::Replayed { balances } => Some(balances),
            Self::InProgress | Self::KeyReused => None,
        }
    }
}

/// A backend that keeps balances and decides charges atomically.
///
/// Users unknown to the store start with each kind's initial balance, last
/// refilled at the instant they are first seen.
pub trait TicketStore: Send + Sync + 'static {
    /// Applies due refills, then charges the cost if every kind can pay.
    fn charge(&self, request: ChargeRequest) -> StoreFuture<ChargeOutcome>;

    /// Gives back an allowed charge, except for kinds refilled since, and
    /// forgets its idempotency key.
    fn refund(&self, receipt: Receipt, now: DateTime<Utc>) -> StoreFuture<RefundOutcome>;

    /// Records that the request of an allowed charge finished and keeps the
    /// charge: a retry with its idempotency key is then
    /// [`Replayed`](ChargeOutcome::Replayed) instead of
    /// [`InProgress`](ChargeOutcome::InProgress). Nothing to do (and no
    /// round trip) for a charge without a key; a key the store no longer
    /// holds stays forgotten.
    fn finish(&self, receipt: &Receipt) -> StoreFuture<()>;

    /// Reads balances without spending or writing; a due refill shows as
    /// applied.
    fn balances(
        &self,
        uid: &Uid,
        kinds: &[Arc<TicketKind>],
        now: DateTime<Utc>,
    ) -> StoreFuture<Vec<KindBalance>>;

    /// Grants, sets or resets balances, after applying due refills, all
    /// kinds at once, at most once per idempotency key.
    fn adjust(&self, request: AdjustRequest) -> StoreFuture<AdjustOutcome>;

    /// Records a new user with the initial balances if the store does not
    /// know them yet; returns the balances either way.
    fn ensure_user(
        &self,
        uid: &Uid,
        kinds: &[Arc<TicketKind>],
        now: DateTime<Utc>,
    ) -> StoreFuture<Vec<KindBalance>>;

    /// Checks, when the registry is built, that the store can keep the
    /// registry's `kinds` (a store in front of a source of truth needs the
    /// same kinds as the source). Stores that keep any kind accept them all.
    fn check_kinds(&self, kinds: &[Arc<TicketKind>]) -> Result<(), ConfigError> {
        let _ = kinds;
        Ok(())
    }
}

impl<S: TicketStore + ?Sized> TicketStore for Arc<S> {
    fn charge(&self, request: ChargeRequest) -> StoreFuture<ChargeOutcome> {
        (**self).charge(request)
    }

    fn refund(&self, receipt: Receipt, now: DateTime<Utc>) -> StoreFuture<RefundOutcome> {
        (**self).refund(receipt, now)
    }

    fn finish(&self, receipt: &Receipt) -> StoreFuture<()> {
        (**self).finish(receipt)
    }

    fn balances(
        &self,
        uid: &Uid,
        kinds: &[Arc<TicketKind>],
        now: DateTime<Utc>,
    ) -> StoreFuture<Vec<KindBalance>> {
        (**self).balances(uid, kinds, now)
    }

    fn adjust(&self, request: AdjustRequest) -> StoreFuture<AdjustOutcome> {
        (**self).adjust(request)
    }

    fn ensure_user(
        &self,
        uid: &Uid,
        kinds: &[Arc<TicketKind>],
        now: DateTime<Utc>,
    ) -> StoreFuture<Vec<KindBalance>> {
        (**self).ensure_user(uid, kinds, now)
    }

    fn check_kinds(&self, kinds: &[Arc<TicketKind>]) -> Result<(), ConfigError> {
        (**self).check_kinds(kinds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kind_named_twice_in_an_adjustment_keeps_its_last_change() {
        let upload = Arc::new(TicketKind::new("upload", 5));
        let ai = Arc::new(TicketKind::new("ai", 3));
        let changes = [
            (upload.clone(), Adjustment::Grant(1)),
            (ai, Adjustment::Reset),
            (upload, Adjustment::Set(2)),
        ];
        let request = AdjustRequest::new(Uid::parse("u1").unwrap(), changes, DateTime::UNIX_EPOCH);
        let kept: Vec<_> = request
            .changes
            .iter()
            .map(|(kind, adjustment)| (kind.name(), *adjustment))
            .collect();
        assert_eq!(
            kept,
            [("ai", Adjustment::Reset), ("upload", Adjustment::Set(2))]
        );
    }
}
