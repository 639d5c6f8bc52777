//! Redis in front of Firestore: decisions in the cache, the truth in the
//! source (DESIGN.md §4).
//!
//! [`WriteThrough`] decides every charge in Redis (the [`RedisStore`]'s
//! scripts, one round trip) and makes each change reach Firestore, the
//! source of truth the app's UI reads:
//! - **Sync** ([`WriteMode::Sync`], the default): an allowed charge is
//!   answered once Firestore holds a state that includes it. Concurrent
//!   changes of one user share one Firestore write, and each user's document
//!   is written at most once per [write interval](WriteThroughBuilder::write_interval),
//!   so a burst costs about one write per user per second. When Firestore
//!   cannot be written, the charge is refunded in Redis and the store
//!   answers an error, which the layer turns into 503.
//! - **Async** ([`WriteMode::Async`]): an allowed charge is answered once
//!   Redis holds it and counts it as pending; each pending user is written at
//!   most once per interval. Pending counts live in Redis under the user's
//!   hash tag, so an instance that dies leaves them to the others' recovery
//!   scan; when Firestore is down, Redis keeps serving and Firestore catches
//!   up when it is back.
//!
//! Writes are versioned (see [`FirestoreSource::write`]): a late write never
//! undoes a newer one.
//!
//! **Cache misses.** A user Redis does not hold (never seen, flushed,
//! expired) is read from Firestore, seeded into Redis unless another request
//! did it first, and then charged; a user with no document gets one with the
//! initial balances. [`ensure_user`](TicketStore::ensure_user) (the sign-up
//! path) creates the document the same way. To tell a miss from a real
//! refusal in one round trip, the Redis store is handed each kind with an
//! initial balance of zero: a balance it creates on its own can pay for
//! nothing, and a refusal is checked against what was seeded.
//!
//! Only a standalone Redis is supported for now.

mod builder;
mod group_commit;
mod hydration;
mod recovery;
mod redis_state;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

pub use self::builder::{WriteMode, WriteThroughBuilder};
use self::group_commit::GroupCommit;
use self::hydration::Hydration;
use self::recovery::Recovery;
use self::redis_state::RedisState;
use crate::clock::Clock;
use crate::cost::{CheckedCost, Cost};
use crate::kind::TicketKind;
use crate::store::firestore::FirestoreSource;
use crate::store::{
    Adjustment, ChargeOutcome, ChargeRequest, KindBalance, Receipt, RedisStore, RefundOutcome,
    StoreError, StoreErrorKind, StoreFuture, TicketStore,
};
use crate::uid::Uid;

/// How many times an operation is decided again after filling a cache miss
/// (or after a refusal that a concurrent fill made stale).
const ATTEMPTS: usize = 3;

/// Balances decided in Redis and kept in Firestore. Cheap to clone.
///
/// ```no_run
/// use tower_tickets::store::{FirestoreSource, WriteMode, WriteThrough};
/// use tower_tickets::{TicketKind, Tickets};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let (upload, ai) = (TicketKind::new("upload", 5), TicketKind::new("ai", 3));
/// // The same kinds as the registry's: they name the document's fields.
/// let source = FirestoreSource::connect("my-project", [upload.clone(), ai.clone()]).await?;
/// let store = WriteThrough::builder("redis://127.0.0.1:6379", source)
///     .mode(WriteMode::Sync)
///     .connect()
///     .await?;
/// let tickets = Tickets::builder().kind(upload).kind(ai).store(store).build()?;
/// # let _ = tickets;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct WriteThrough {
    shared: Arc<Shared>,
}

struct Shared {
    redis: RedisStore,
    state: Arc<RedisState>,
    source: FirestoreSource,
    writer: GroupCommit,
    hydration: Hydration,
    mode: WriteMode,
    /// The source's kinds with an initial balance of zero, as handed to the
    /// Redis store (see the module docs).
    unseeded_kinds: Vec<Arc<TicketKind>>,
    _recovery: Recovery,
}

impl std::fmt::Debug for WriteThrough {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteThrough")
            .field("redis", &self.shared.redis)
            .field("source", &self.shared.source)
            .field("mode", &self.shared.mode)
            .finish_non_exhaustive()
    }
}

impl WriteThrough {
    /// Configures a store on the standalone Redis at `redis_url` (e.g.
    /// `redis://127.0.0.1:6379`) in front of `source`.
    pub fn builder(redis_url: impl Into<String>, source: FirestoreSource) -> WriteThroughBuilder {
        WriteThroughBuilder::new(redis_url.into(), source)
    }

    fn start(
        redis: RedisStore,
        state: RedisState,
        source: FirestoreSource,
        mode: WriteMode,
        write_interval: Duration,
        recovery_interval: Duration,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let state = Arc::new(state);
        let writer = GroupCommit::new(state.clone(), source.clone(), write_interval);
        let recovery = Recovery::start(state.clone(), writer.clone(), recovery_interval, clock);
        let hydration = Hydration::new(state.clone(), source.clone());
        let unseeded_kinds = source
            .kinds()
            .iter()
            .map(|kind| Arc::new((**kind).clone().initial(0)))
            .collect();
        Self {
            shared: Arc::new(Shared {
                redis,
                state,
                source,
                writer,
                hydration,
                mode,
                unseeded_kinds,
                _recovery: recovery,
            }),
        }
    }

    /// How many users have changes that this instance is about to write (a
    /// gauge for metrics: in async mode, how far Firestore is behind).
    pub fn pending_writes(&self) -> usize {
        self.shared.writer.pending_users()
    }

    /// How many writes this instance made to Firestore (a write that found
    /// a newer state stored, and so wrote nothing, does not count).
    pub fn firestore_writes(&self) -> u64 {
        self.shared.writer.writes()
    }
}

impl Shared {
    async fn charge(&self, request: ChargeRequest) -> Result<ChargeOutcome, StoreError> {
        let (cost, kinds) = self.unseeded_cost(&request.cost)?;
        let unseeded = ChargeRequest {
            cost,
            ..request.clone()
        };
        for _ in 0..ATTEMPTS {
            let (balances, refused) = match self.redis.charge(unseeded.clone()).await? {
                ChargeOutcome::Allowed { balances, receipt } => {
                    self.settle_charge(&receipt, request.now).await?;
                    return Ok(ChargeOutcome::Allowed {
                        balances,
                        receipt: Receipt {
                            cost: request.cost,
                            ..receipt
                        },
                    });
                }
                ChargeOutcome::Refused { balances } => (balances, true),
                ChargeOutcome::Replayed { balances } => (balances, false),
                // The key's request was seen, so its user was too.
                outcome @ (ChargeOutcome::InProgress | ChargeOutcome::KeyReused) => {
                    return Ok(outcome);
                }
            };
            let checked = self.state.check(&request.uid, &kinds).await?;
            if !checked.seeded {
                self.fill(&request.uid, request.now).await?;
                continue;
            }
            if refused
                && !checked
                    .stored
                    .iter()
                    .zip(&balances)
                    .all(|(s, b)| *s == Some(*b))
            {
                // Refused against balances that a concurrent fill replaced.
                continue;
            }
            return Ok(if refused {
                ChargeOutcome::Refused { balances }
            } else {
                ChargeOutcome::Replayed { balances }
            });
        }
        Err(unsettled(&request.uid))
    }

    /// Makes an allowed charge reach Firestore as the mode says; in sync
    /// mode, refunds it when Firestore cannot be written.
    async fn settle_charge(&self, receipt: &Receipt, now: DateTime<Utc>) -> Result<(), StoreError> {
        let Err(error) = self.persist(&receipt.uid, now).await else {
            return Ok(());
        };
        if self.mode == WriteMode::Sync {
            if let Err(refund_error) = self.redis.refund(receipt.clone(), now).await {
                tracing::error!(uid = %receipt.uid, %refund_error, "could not refund a charge Firestore did not take");
            }
            self.keep_pending(&receipt.uid).await;
        }
        Err(error)
    }

    /// Makes the user's latest change reach Firestore as the mode says.
    async fn persist(&self, uid: &Uid, now: DateTime<Utc>) -> Result<(), StoreError> {
        match self.mode {
            WriteMode::Sync => self.writer.demand(uid, now).wait().await,
            WriteMode::Async => {
                if !self.state.mark_pending(uid).await? {
                    return Err(lost(uid));
                }
                drop(self.writer.demand(uid, now));
                Ok(())
            }
        }
    }

    /// Leaves the user's state counted as pending in Redis, for the recovery
    /// scan to write once Firestore answers again.
    async fn keep_pending(&self, uid: &Uid) {
        if let Err(error) = self.state.mark_pending(uid).await {
            tracing::error!(%uid, %error, "could not record a change Firestore lacks");
        }
    }

    /// Persists an administrative change (a refund, a grant): in sync mode,
    /// when Firestore cannot be written, it stays pending in Redis rather
    /// than being undone.
    async fn persist_admin(&self, uid: &Uid, now: DateTime<Utc>) -> Result<(), StoreError> {
        match self.persist(uid, now).await {
            Err(error) if self.mode == WriteMode::Sync => {
                if self.state.mark_pending(uid).await? {
                    tracing::warn!(%uid, %error, "Firestore write failed; the change is pending in Redis");
                    Ok(())
                } else {
                    Err(error)
                }
            }
            result => result,
        }
    }

    async fn refund(
        &self,
        receipt: Receipt,
        now: DateTime<Utc>,
    ) -> Result<RefundOutcome, StoreError> {
        let (cost, kinds) = self.unseeded_cost(&receipt.cost)?;
        let unseeded = Receipt {
            cost,
            ..receipt.clone()
        };
        // Fill first: a refund must never land on an unseeded balance, nor
        // be applied twice.
        if !self.state.check(&receipt.uid, &kinds).await?.seeded {
            self.fill(&receipt.uid, now).await?;
        }
        let outcome = self.redis.refund(unseeded, now).await?;
        self.persist_admin(&receipt.uid, now).await?;
        Ok(outcome)
    }

    async fn balances(
        &self,
        uid: &Uid,
        kinds: &[Arc<TicketKind>],
        now: DateTime<Utc>,
    ) -> Result<Vec<KindBalance>, StoreError> {
        let unseeded = self.unseeded(kinds)?;
        let read = self.redis.balances(uid, &unseeded, now).await?;
        // An unseeded kind reads as zero; a real zero is checked too.
        if read.iter().all(|b| b.remaining > 0) || self.state.check(uid, &unseeded).await?.seeded {
            return Ok(read);
        }
        match self.source.load(uid, now).await? {
            Some(stored) => {
                self.state.seed_state(uid, &stored).await?;
                self.redis.balances(uid, &unseeded, now).await
            }
            // No document: the balances a new user would start with; reading
            // creates nothing.
            None => Ok(kinds
                .iter()
                .map(|kind| KindBalance {
                    remaining: kind.initial_balance(),
                    last_refill: now,
                })
                .collect()),
        }
    }

    async fn adjust(
        &self,
        uid: &Uid,
        kind: &Arc<TicketKind>,
        adjustment: Adjustment,
        now: DateTime<Utc>,
    ) -> Result<KindBalance, StoreError> {
        let unseeded = self.unseeded(std::slice::from_ref(kind))?;
        // Fill first: a grant must never land on an unseeded balance.
        if !self.state.check(uid, &unseeded).await?.seeded {
            self.fill(uid, now).await?;
        }
        let balance = self
            .redis
            .adjust(uid, &unseeded[0], adjustment, now)
            .await?;
        self.persist_admin(uid, now).await?;
        Ok(balance)
    }

    async fn ensure_user(
        &self,
        uid: &Uid,
        kinds: &[Arc<TicketKind>],
        now: DateTime<Utc>,
    ) -> Result<Vec<KindBalance>, StoreError> {
        let unseeded = self.unseeded(kinds)?;
        let stored = self.source.load_or_create(uid, now).await?;
        self.state.seed_state(uid, &stored).await?;
        self.redis.balances(uid, &unseeded, now).await
    }

    async fn fill(&self, uid: &Uid, now: DateTime<Utc>) -> Result<(), StoreError> {
        self.hydration.fill(uid, now).await
    }

    /// The unseeded twins of `kinds`.
    fn unseeded(&self, kinds: &[Arc<TicketKind>]) -> Result<Vec<Arc<TicketKind>>, StoreError> {
        kinds
            .iter()
            .map(|kind| {
                self.unseeded_kinds
                    .iter()
                    .find(|k| k.name() == kind.name())
                    .cloned()
                    .ok_or_else(|| unknown_kind(kind.name(), &self.unseeded_kinds))
            })
            .collect()
    }

    /// `cost` over the unseeded twins of its kinds, and those kinds.
    fn unseeded_cost(
        &self,
        cost: &CheckedCost,
    ) -> Result<(CheckedCost, Vec<Arc<TicketKind>>), StoreError> {
        let kinds: Vec<_> = cost.items().iter().map(|i| i.kind.clone()).collect();
        let kinds = self.unseeded(&kinds)?;
        let mut amounts = cost.items().iter().map(|i| i.amount);
        let mut named = kinds.iter().zip(&mut amounts).map(|(k, a)| (k.name(), a));
        let (first, amount) = named
            .next()
            .ok_or_else(|| StoreError::new(StoreErrorKind::Unavailable, "a cost with no kind"))?;
        let cost = named.fold(Cost::of(first, amount), |cost, (k, a)| cost.and(k, a));
        let cost = CheckedCost::check(&cost, &kinds).map_err(|e| {
            StoreError::new(
                StoreErrorKind::Unavailable,
                format!("the write-through store cannot charge this cost: {e}"),
            )
        })?;
        Ok((cost, kinds))
    }
}

fn unknown_kind(name: &str, known: &[Arc<TicketKind>]) -> StoreError {
    let known: Vec<_> = known.iter().map(|k| k.name()).collect();
    StoreError::new(
        StoreErrorKind::Unavailable,
        format!(
            "the kind {name:?} is not stored in Firestore (the source knows {known:?}): \
             give FirestoreSource the same kinds as the Tickets registry"
        ),
    )
}

fn lost(uid: &Uid) -> StoreError {
    StoreError::new(
        StoreErrorKind::Unavailable,
        format!("Redis lost the balances of user {uid} during the request (flushed or expired)"),
    )
}

fn unsettled(uid: &Uid) -> StoreError {
    StoreError::new(
        StoreErrorKind::Unavailable,
        format!(
            "the balances of user {uid} kept changing while they were read from Firestore; \
             gave up after {ATTEMPTS} attempts"
        ),
    )
}

impl TicketStore for WriteThrough {
    fn charge(&self, request: ChargeRequest) -> StoreFuture<ChargeOutcome> {
        let shared = self.shared.clone();
        Box::pin(async move { shared.charge(request).await })
    }

    fn refund(&self, receipt: Receipt, now: DateTime<Utc>) -> StoreFuture<RefundOutcome> {
        let shared = self.shared.clone();
        Box::pin(async move { shared.refund(receipt, now).await })
    }

    fn finish(&self, receipt: &Receipt) -> StoreFuture<()> {
        // Keys live in Redis only: Firestore has nothing to record.
        self.shared.redis.finish(receipt)
    }

    fn balances(
        &self,
        uid: &Uid,
        kinds: &[Arc<TicketKind>],
        now: DateTime<Utc>,
    ) -> StoreFuture<Vec<KindBalance>> {
        let (shared, uid, kinds) = (self.shared.clone(), uid.clone(), kinds.to_vec());
        Box::pin(async move { shared.balances(&uid, &kinds, now).await })
    }

    fn adjust(
        &self,
        uid: &Uid,
        kind: &Arc<TicketKind>,
        adjustment: Adjustment,
        now: DateTime<Utc>,
    ) -> StoreFuture<KindBalance> {
        let (shared, uid, kind) = (self.shared.clone(), uid.clone(), kind.clone());
        Box::pin(async move { shared.adjust(&uid, &kind, adjustment, now).await })
    }

    fn ensure_user(
        &self,
        uid: &Uid,
        kinds: &[Arc<TicketKind>],
        now: DateTime<Utc>,
    ) -> StoreFuture<Vec<KindBalance>> {
        let (shared, uid, kinds) = (self.shared.clone(), uid.clone(), kinds.to_vec());
        Box::pin(async move { shared.ensure_user(&uid, &kinds, now).await })
    }
}
